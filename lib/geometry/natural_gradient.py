"""Small helpers for the natural-gradient chapter: Fisher matrices, KL steps, conditioning.

* :func:`logistic_loss` and :func:`logistic_fisher`: binary logistic regression, whose
  Fisher information has the closed form ``X^T diag(p (1 - p)) X / N`` (equal to the
  Hessian of the mean log-loss, the canonical link). Used with
  :func:`lib.geometry.gradient_flow.gradient_descent` as a metric, this is natural-gradient descent.
* :func:`fisher_diagonal`: the diagonal of the Fisher of a softmax classifier under the
  mean cross-entropy, from per-example Jacobians (``torch.func``), on the scale of
  ``lib.curvature.fisher(model, nn.CrossEntropyLoss(), data)``.
* :func:`fisher_matrix`: the same Fisher as a dense ``(d, d)`` matrix, for small networks.
* :func:`classifier_kl`: the mean KL divergence ``KL(p_theta || p_{theta + delta})`` of the
  predictive distributions over a set of inputs, for a flat parameter step ``delta``.
  For a small step it is ``1/2 delta^T F delta`` with that same Fisher.
* :func:`condition_number`: the condition number of a symmetric PSD matrix on its range.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap

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


def logistic_fisher(theta: Tensor, X: Tensor) -> Tensor:
    """Fisher information of binary logistic regression per example, ``(d, d)``.

    ``F(theta) = (1/N) sum_n p_n (1 - p_n) x_n x_n^T`` with ``p_n = sigmoid(x_n^T theta)``;
    it is the expected outer product of the score under the model's own labels and does
    not depend on the observed labels. It equals the Hessian of :func:`logistic_loss`.

    Args:
        theta: weights, shape ``(d,)``.
        X: inputs, shape ``(N, d)``.

    Returns:
        Symmetric PSD matrix of shape ``(d, d)``, dtype of ``X``.
    """
    X = _check_matrix(X, "X")
    theta = _check_theta(theta, X.shape[1])
    p = torch.sigmoid(X @ theta)
    return (X * (p * (1 - p))[:, None]).T @ X / X.shape[0]


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
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                   or batch_size < 1):
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")


def _score_blocks(model: nn.Module, X: Tensor, kind: str, y: Tensor | None, batch_size: int | None):
    """Yield per chunk ``(J, w)``: per-class scores ``J`` (B, C, d) and weights ``w`` (B, C)."""
    if kind not in FISHER_DIAGONAL_KINDS:
        raise ValueError(f"unknown kind '{kind}'; choose one of {FISHER_DIAGONAL_KINDS}")
    _check_inputs(X, batch_size)
    if kind == "empirical":
        if not isinstance(y, Tensor) or y.shape != (X.shape[0],):
            raise ValueError("kind='empirical' needs integer labels y of shape (N,)")
    names, params = _params(model)
    buffers = {n: b for n, b in model.named_buffers()}

    def log_probs(ps, x):
        out = functional_call(model, ({**dict(zip(names, ps)), **buffers}), (x[None],))
        if out.ndim != 2:
            raise ValueError(f"the model must return logits (N, C), got shape {tuple(out.shape)}")
        return torch.log_softmax(out[0], dim=-1)

    jac = vmap(jacrev(log_probs), in_dims=(None, 0))  # per example: list of (C, *p.shape)
    step = X.shape[0] if batch_size is None else batch_size
    for start in range(0, X.shape[0], step):
        xb = X[start:start + step]
        J = torch.cat([j.flatten(2) for j in jac(params, xb)], dim=2)  # (B, C, d)
        with torch.no_grad():
            if kind == "exact":
                w = torch.exp(_log_probs(model, xb)).to(J.dtype)
            else:
                w = nn.functional.one_hot(y[start:start + step].long(), J.shape[1]).to(J.dtype)
        yield J.detach(), w


def fisher_diagonal(model: nn.Module, X: Tensor, *, kind: str = "exact", y: Tensor | None = None,
                    batch_size: int | None = 256) -> Tensor:
    """Diagonal of the Fisher of a softmax classifier, mean over the ``N`` inputs.

    With ``s_nc = d log p(c | x_n) / d theta`` (a per-example, per-class gradient):

    * ``"exact"``: ``(1/N) sum_n sum_c p(c | x_n) s_nc^2`` (elementwise square), the diagonal
      of ``lib.curvature.fisher(model, nn.CrossEntropyLoss(), (X, y), kind="exact")``;
    * ``"empirical"``: ``(1/N) sum_n s_{n y_n}^2`` at the true labels ``y``.

    The model must be deterministic (eval mode if it has dropout or BatchNorm).

    Args:
        model: maps ``(N, ...)`` to logits ``(N, C)``.
        X: inputs ``(N, ...)``.
        kind: ``"exact"`` or ``"empirical"``.
        y: integer labels ``(N,)``, needed for ``"empirical"`` only.
        batch_size: examples per vectorized chunk (memory ``batch_size * C * d``); None: all.

    Returns:
        Flat tensor ``(d,)`` in ``model.parameters()`` order (trainable ones), non-negative.
    """
    total = None
    for J, w in _score_blocks(model, X, kind, y, batch_size):
        part = torch.einsum("bc,bcd->d", w, J ** 2)
        total = part if total is None else total + part
    return total / X.shape[0]


def fisher_matrix(model: nn.Module, X: Tensor, *, kind: str = "exact", y: Tensor | None = None,
                  batch_size: int | None = 256) -> Tensor:
    """The dense Fisher of a softmax classifier, ``(d, d)``, for small networks.

    ``(1/N) sum_n sum_c w_nc s_nc s_nc^T`` with the scores and weights of
    :func:`fisher_diagonal` (``w = p`` for ``"exact"``, one-hot labels for ``"empirical"``);
    equal to ``lib.curvature.fisher(...).to_dense()`` but built from per-example Jacobians
    in ``N / batch_size`` vectorized passes instead of ``d`` operator products.

    Returns:
        Symmetric PSD tensor ``(d, d)`` (memory ``d^2`` plus ``batch_size * C * d``).
    """
    total = None
    for J, w in _score_blocks(model, X, kind, y, batch_size):
        part = torch.einsum("bcd,bce->de", J * w[..., None], J)
        total = part if total is None else total + part
    return 0.5 * (total + total.T) / X.shape[0]


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


def condition_number(M: Tensor, rtol: float = 1e-10) -> tuple[float, int]:
    """Condition number of a symmetric PSD matrix on its range.

    Eigenvalues at most ``rtol * lambda_max`` count as zero (a null space, e.g. the constant
    direction of a softmax's ``G`` factor, or an input pixel that is always 0); the
    condition number is ``lambda_max / lambda_min`` over the others.

    Args:
        M: symmetric matrix ``(n, n)`` (symmetrized before the eigendecomposition).
        rtol: relative threshold below which an eigenvalue is treated as zero, in [0, 1).

    Returns:
        ``(kappa, rank)``: a float ``>= 1`` and the number of eigenvalues kept
        (``(nan, 0)`` for the zero matrix).
    """
    if not isinstance(M, Tensor):
        raise TypeError(f"M must be a tensor, got {type(M).__name__}")
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
