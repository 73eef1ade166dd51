"""Small helpers for the natural-gradient chapter: Fisher matrices, KL steps, conditioning.

* :func:`logistic_loss` and :func:`logistic_fisher`: binary logistic regression, whose
  Fisher information has the closed form ``X^T diag(p (1 - p)) X / N`` (equal to the
  Hessian of the mean log-loss, the canonical link), a
  :class:`~lib.operators.explicit.DenseOperator`. Used with
  :func:`lib.geometry.gradient_flow.gradient_descent` as its ``metric_field``, this is
  natural-gradient descent.
* :func:`fisher_diagonal`: the diagonal of the Fisher of a softmax classifier under the
  cross-entropy ``loss_fn`` over ``data``, from per-example Jacobians (``torch.func``), on the
  scale of ``lib.curvature.fisher(model, loss_fn, data)``, as a
  :class:`~lib.operators.explicit.DiagonalOperator`.
* :func:`fisher_matrix`: the same Fisher as a :class:`~lib.operators.explicit.DenseOperator`,
  for small networks.
* :func:`classifier_kl`: the mean KL divergence ``KL(p_theta || p_{theta + delta})`` of the
  predictive distributions over a set of inputs, for a flat parameter step ``delta``.
  For a small step it is ``1/2 delta^T F delta`` with that same Fisher.
* :func:`condition_number`: the condition number of a symmetric PSD matrix (or operator) on its range.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap

from .._checks import check_int
from ..book.batches import as_batches, is_pair
from ..operators import DenseOperator, DiagonalOperator, LinearOperator

__all__ = ["logistic_loss", "logistic_fisher", "fisher_diagonal", "fisher_matrix", "classifier_kl",
           "condition_number", "FISHER_DIAGONAL_KINDS"]

FISHER_DIAGONAL_KINDS = ("exact", "empirical")


def _check_matrix(X, name: str) -> Tensor:
    if not isinstance(X, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(X).__name__}")
    if X.ndim != 2 or X.shape[0] == 0 or not X.is_floating_point():
        raise ValueError(f"{name} must be a non-empty floating-point matrix (N, d), "
                         f"got shape {tuple(X.shape)} and dtype {X.dtype}")
    return X


def _check_theta(theta, d: int) -> Tensor:
    if not isinstance(theta, Tensor):
        raise TypeError(f"theta must be a tensor, got {type(theta).__name__}")
    if theta.shape != (d,):
        raise ValueError(f"theta must have shape ({d},) to match X, got {tuple(theta.shape)}")
    return theta


def logistic_loss(theta: Tensor, X: Tensor, y: Tensor) -> Tensor:
    """Mean log-loss of binary logistic regression, ``p = sigmoid(X theta)``.

    Args:
        theta: weights, shape ``(d,)`` (append a column of ones to ``X`` for a bias).
        X: inputs, shape ``(N, d)``.
        y: labels in ``{0, 1}``, shape ``(N,)``.

    Returns:
        0-d tensor ``-(1/N) sum_n [y_n log p_n + (1 - y_n) log(1 - p_n)]``, differentiable in
        ``theta``.
    """
    X = _check_matrix(X, "X")
    theta = _check_theta(theta, X.shape[1])
    if not isinstance(y, Tensor) or y.shape != (X.shape[0],):
        raise ValueError(f"y must be a tensor of shape ({X.shape[0]},)")
    if not bool(((y == 0) | (y == 1)).all()):
        raise ValueError("y must hold labels 0 and 1 only")
    return nn.functional.binary_cross_entropy_with_logits(X @ theta, y.to(X.dtype))


def logistic_fisher(theta: Tensor, X: Tensor) -> DenseOperator:
    """Fisher information of binary logistic regression per example, ``(d, d)``.

    ``F(theta) = (1/N) sum_n p_n (1 - p_n) x_n x_n^T`` with ``p_n = sigmoid(x_n^T theta)``;
    it is the expected outer product of the score under the model's own labels and does
    not depend on the observed labels. It equals the Hessian of :func:`logistic_loss`.

    Args:
        theta: weights, shape ``(d,)``.
        X: inputs, shape ``(N, d)``.

    Returns:
        A symmetric PSD :class:`~lib.operators.explicit.DenseOperator` of shape ``(d, d)``, dtype
        of ``X`` (``.to_dense()`` is the matrix).
    """
    X = _check_matrix(X, "X")
    theta = _check_theta(theta, X.shape[1])
    p = torch.sigmoid(X @ theta)
    return DenseOperator((X * (p * (1 - p))[:, None]).T @ X / X.shape[0], symmetric=True)


def _params(model: nn.Module) -> tuple[list[str], list[Tensor]]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("model has no trainable parameters")
    return [n for n, _ in named], [p.detach() for _, p in named]


def _check_inputs(X, batch_size) -> None:
    if not isinstance(X, Tensor) or X.ndim < 2 or X.shape[0] == 0:
        raise ValueError("X must be a non-empty batch of inputs, shape (N, ...)")
    if batch_size is not None:
        check_int(batch_size, "batch_size")


def _check_cross_entropy(loss_fn) -> bool:
    """Whether the cross-entropy ``loss_fn`` is a mean (else a sum); TypeError/ValueError for
    any other loss or reduction."""
    if not isinstance(loss_fn, nn.CrossEntropyLoss):
        raise TypeError(f"loss_fn must be nn.CrossEntropyLoss (a softmax classifier), got "
                        f"{type(loss_fn).__name__}")
    if loss_fn.reduction not in ("mean", "sum"):
        raise ValueError(f"loss_fn's reduction must be 'mean' or 'sum', got '{loss_fn.reduction}'")
    return loss_fn.reduction == "mean"


def _chunks(data, batch_size):
    """``data`` as ``(X, y)`` chunks: a pair cut into ``batch_size`` rows, an iterable as it is."""
    if batch_size is not None:
        check_int(batch_size, "batch_size")
    return as_batches(data, batch_size=batch_size) if is_pair(data) else as_batches(data)


def _score_blocks(model: nn.Module, chunks, kind: str):
    """Yield per chunk ``(J, w)``: per-class scores ``J`` (B, C, d) and weights ``w`` (B, C)."""
    if kind not in FISHER_DIAGONAL_KINDS:
        raise ValueError(f"unknown kind '{kind}'; choose one of {FISHER_DIAGONAL_KINDS}")
    names, params = _params(model)
    buffers = {n: b for n, b in model.named_buffers()}

    def log_probs(ps, x):
        out = functional_call(model, ({**dict(zip(names, ps)), **buffers}), (x[None],))
        if out.ndim != 2:
            raise ValueError(f"the model must return logits (N, C), got shape {tuple(out.shape)}")
        return torch.log_softmax(out[0], dim=-1)

    jac = vmap(jacrev(log_probs), in_dims=(None, 0))  # per example: list of (C, *p.shape)
    for xb, yb in chunks:
        if kind == "empirical" and (yb.ndim != 1 or torch.is_floating_point(yb)):
            raise ValueError(f"kind='empirical' needs integer class labels y of shape (N,), got "
                             f"shape {tuple(yb.shape)} and dtype {yb.dtype}")
        J = torch.cat([j.flatten(2) for j in jac(params, xb)], dim=2)  # (B, C, d)
        with torch.no_grad():
            if kind == "exact":
                w = torch.exp(_log_probs(model, xb)).to(J.dtype)
            else:
                w = nn.functional.one_hot(yb.long(), J.shape[1]).to(J.dtype)
        yield J.detach(), w


def _fisher_sum(model, loss_fn, data, kind, batch_size, term):
    """``(total, scale, param_shapes)``: ``sum_chunks term(J, w)`` and the reduction's factor."""
    mean = _check_cross_entropy(loss_fn)
    chunks = _chunks(data, batch_size)
    total = None
    for J, w in _score_blocks(model, chunks, kind):
        part = term(J, w)
        total = part if total is None else total + part
    n = sum(len(xb) for xb, _ in chunks)
    shapes = [p.shape for p in _params(model)[1]]
    return total, (n if mean else 1), shapes


def fisher_diagonal(model: nn.Module, loss_fn: nn.Module, data, *, kind: str = "exact",
                    batch_size: int | None = 256) -> DiagonalOperator:
    """Diagonal of the Fisher of a softmax classifier under the cross-entropy over ``data``.

    With ``s_nc = d log p(c | x_n) / d theta`` (a per-example, per-class gradient) and ``c``
    the reduction's factor (``1/N`` for ``"mean"``, ``1`` for ``"sum"``):

    * ``"exact"``: ``c sum_n sum_c p(c | x_n) s_nc^2`` (elementwise square), the diagonal
      of ``lib.curvature.fisher(model, loss_fn, data, kind="exact")``;
    * ``"empirical"``: ``c sum_n s_{n y_n}^2`` at the true labels ``y``.

    The model must be deterministic (eval mode if it has dropout or BatchNorm).

    Args:
        model: maps ``(N, ...)`` to logits ``(N, C)``.
        loss_fn: ``nn.CrossEntropyLoss`` with reduction ``"mean"`` or ``"sum"``.
        data: an ``(X, y)`` pair or an iterable of pairs (``lib.book.batches``); ``y`` holds
            integer labels ``(N,)`` (used by ``"empirical"`` only).
        kind: ``"exact"`` or ``"empirical"``.
        batch_size: examples per vectorized chunk when ``data`` is a pair (memory
            ``batch_size * C * d``); None: all. An iterable's batches are the chunks.

    Returns:
        A :class:`~lib.operators.explicit.DiagonalOperator` ``(d, d)`` (``.diagonal()``: the
        non-negative ``(d,)`` values) in ``model.parameters()`` order (trainable ones).
    """
    total, n, shapes = _fisher_sum(model, loss_fn, data, kind, batch_size,
                                   lambda J, w: torch.einsum("bc,bcd->d", w, J ** 2))
    return DiagonalOperator(total / n, param_shapes=shapes)


def fisher_matrix(model: nn.Module, loss_fn: nn.Module, data, *, kind: str = "exact",
                  batch_size: int | None = 256) -> DenseOperator:
    """The dense Fisher of a softmax classifier, as a ``(d, d)`` operator, for small networks.

    ``c sum_n sum_c w_nc s_nc s_nc^T`` with the scores, weights and factor of
    :func:`fisher_diagonal` (``w = p`` for ``"exact"``, one-hot labels for ``"empirical"``);
    equal to ``lib.curvature.fisher(model, loss_fn, data, kind=kind).to_dense()`` but built
    from per-example Jacobians in ``N / batch_size`` vectorized passes instead of ``d``
    operator products. Arguments as in :func:`fisher_diagonal`.

    Returns:
        A symmetric PSD :class:`~lib.operators.explicit.DenseOperator` (``.to_dense()``: the
        matrix; memory ``d^2`` plus ``batch_size * C * d``).
    """
    total, n, shapes = _fisher_sum(model, loss_fn, data, kind, batch_size,
                                   lambda J, w: torch.einsum("bcd,bce->de", J * w[..., None], J))
    return DenseOperator(0.5 * (total + total.T) / n, symmetric=True, param_shapes=shapes)


def _log_probs(model: nn.Module, X: Tensor) -> Tensor:
    """``log_softmax(model(X))``, shape ``(N, C)``."""
    return torch.log_softmax(model(X), dim=-1)


def classifier_kl(model: nn.Module, X: Tensor, delta: Tensor, *, batch_size: int | None = None
                  ) -> float:
    """Mean KL divergence of the predictive distributions before and after a parameter step.

    ``(1/N) sum_n KL(p_theta(. | x_n) || p_{theta + delta}(. | x_n))`` for a softmax
    classifier. The model is not modified. To second order in ``delta`` this is
    ``1/2 delta^T F delta`` with ``F`` the Fisher of :func:`fisher_diagonal` (full, not only
    its diagonal): the Fisher is the Hessian of the KL at ``delta = 0``.

    Args:
        model: maps ``(N, ...)`` to logits ``(N, C)``; deterministic (eval mode for BatchNorm).
        X: inputs ``(N, ...)``.
        delta: flat step ``(d,)`` in ``model.parameters()`` order (trainable ones).
        batch_size: examples per chunk; None: all at once.

    Returns:
        The mean KL in nats, a Python float ``>= 0`` (up to round-off).
    """
    _check_inputs(X, batch_size)
    names, params = _params(model)
    d = sum(p.numel() for p in params)
    if not isinstance(delta, Tensor) or delta.shape != (d,):
        raise ValueError(f"delta must be a flat tensor of shape ({d},), the trainable parameters")
    if not bool(torch.isfinite(delta).all()):
        raise ValueError("delta must be finite")
    moved, offset = {}, 0
    for n, p in zip(names, params):
        moved[n] = p + delta[offset:offset + p.numel()].reshape(p.shape).to(p.dtype)
        offset += p.numel()
    buffers = {n: b for n, b in model.named_buffers()}
    total = 0.0
    step = X.shape[0] if batch_size is None else batch_size
    with torch.no_grad():
        for start in range(0, X.shape[0], step):
            xb = X[start:start + step]
            log_p = _log_probs(model, xb)
            log_q = torch.log_softmax(functional_call(model, {**moved, **buffers}, (xb,)), dim=-1)
            total += float((log_p.exp() * (log_p - log_q)).sum())
    return total / X.shape[0]


def condition_number(M: Tensor | LinearOperator, rtol: float = 1e-10) -> tuple[float, int]:
    """Condition number of a symmetric PSD matrix (or operator, materialized) on its range.

    Eigenvalues at most ``rtol * lambda_max`` count as zero (a null space, e.g. the constant
    direction of a softmax's ``G`` factor, or an input pixel that is always 0); the
    condition number is ``lambda_max / lambda_min`` over the others.

    Args:
        M: symmetric matrix ``(n, n)`` or operator (symmetrized before the eigendecomposition).
        rtol: relative threshold below which an eigenvalue is treated as zero, in [0, 1).

    Returns:
        ``(kappa, rank)``: a float ``>= 1`` and the number of eigenvalues kept
        (``(nan, 0)`` for the zero matrix).
    """
    if isinstance(M, LinearOperator):
        M = M.to_dense()
    if not isinstance(M, Tensor):
        raise TypeError(f"M must be a tensor or a LinearOperator, got {type(M).__name__}")
    if M.ndim != 2 or M.shape[0] != M.shape[1] or M.shape[0] == 0:
        raise ValueError(f"M must be a non-empty square matrix, got shape {tuple(M.shape)}")
    if not (isinstance(rtol, (int, float)) and 0 <= rtol < 1):
        raise ValueError(f"rtol must be in [0, 1), got {rtol!r}")
    M64 = M.detach().to(torch.float64)
    values = torch.linalg.eigvalsh(0.5 * (M64 + M64.T))
    top = float(values[-1])
    if top <= 0:
        return math.nan, 0
    kept = values[values > rtol * top]
    return top / float(kept[0]), int(kept.numel())
