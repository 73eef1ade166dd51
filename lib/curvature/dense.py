"""Dense float64 references of the curvature matrices, for tests, benchmarks and chapters.

Independent of every closed form of :mod:`lib.curvature`: the Hessian comes from
``torch.func`` differentiation of the full-batch loss, the GGN from the Jacobian
``J`` (``torch.func.jacrev``) and the output-space loss Hessian (``torch.func.hessian`` of
each example's loss), the Fishers from per-example parameter gradients at every label
(exact: the labels are enumerated, weighted by their probabilities) or at the data's
labels (empirical). Everything is ``(d, d)`` in float64 for a model with ``d`` trainable
parameters (in ``model.parameters()`` order), so only tiny models fit.

Conventions are those of :mod:`lib.curvature.products`: ``L = c sum_n l(f_n, y_n)`` over
all points of all batches, ``c`` the reduction constant (:meth:`~lib.curvature.losses.Loss.scale`), outputs with
extra dimensions read as ``C = d_1 ... d_m`` outputs (MSE).
"""

from __future__ import annotations

import copy
import math
from typing import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, hessian, jacrev, vmap

from ..book.batches import batch_source
from .losses import FisherKind, Loss, fisher_kind

__all__ = ["dense_hessian", "dense_ggn", "dense_fisher", "dense_function_hessian",
           "flat_parameters"]


def flat_parameters(model: nn.Module) -> tuple[Tensor, Callable[[Tensor], dict]]:
    """The trainable parameters as one flat vector ``theta`` ``(d,)`` and the map from a
    flat vector back to a ``{name: tensor}`` dict for ``torch.func.functional_call``."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    theta = torch.cat([p.detach().reshape(-1) for _, p in named])

    def unflatten(flat: Tensor) -> dict:
        out, i = {}, 0
        for name, p in named:
            k = math.prod(p.shape)
            out[name] = flat[i:i + k].reshape(p.shape)
            i += k
        return out

    return theta, unflatten


def _problem64(model: nn.Module, data) -> tuple[nn.Module, Tensor, Tensor]:
    """A float64 copy of ``model`` and all batches of ``data`` as one float64 batch."""
    pairs = [(X, y) for X, y in batch_source(data) if len(X) > 0]
    if not pairs:
        raise ValueError("data is empty: the loss of zero data points has no curvature")
    X, y = torch.cat([X for X, _ in pairs]), torch.cat([y for _, y in pairs])
    as64 = (lambda t: t.double() if torch.is_floating_point(t) else t)  # noqa: E731
    return copy.deepcopy(model).double(), as64(X), as64(y)


def _loss_of(model, loss_fn, X, y):
    theta, unflatten = flat_parameters(model)
    return theta, lambda t: loss_fn(functional_call(model, unflatten(t), (X,)), y)


def dense_hessian(model: nn.Module, loss_fn: nn.Module, data, *,
                  mode: str = "forward-over-reverse") -> Tensor:
    """The Hessian of the dataset loss, ``(d, d)`` float64.

    Args:
        model, loss_fn, data: as for :func:`lib.curvature.products.hessian`.
        mode: ``"forward-over-reverse"`` (``torch.func.hessian``) or
            ``"reverse-over-reverse"`` (``jacrev(grad)``, for models whose forward-mode
            derivatives torch gets wrong, e.g. attention in some versions).
    """
    model, X, y = _problem64(model, data)
    theta, loss = _loss_of(model, loss_fn, X, y)
    if mode == "reverse-over-reverse":
        return jacrev(grad(loss))(theta)
    if mode != "forward-over-reverse":
        raise ValueError(f"unknown mode '{mode}'; choose 'forward-over-reverse' or "
                         "'reverse-over-reverse'")
    return hessian(loss)(theta)


def _per_example_loss(loss_fn: nn.Module, f: Tensor, y: Tensor) -> Tensor:
    """``l(f_n, y_n)`` of one example, without the reduction's constant."""
    return type(loss_fn)(reduction="sum")(f[None], y[None])


def _scale(loss_fn: nn.Module, outputs: Tensor) -> float:
    return Loss(loss_fn).scale(len(outputs), outputs[0].numel())


def dense_ggn(model: nn.Module, loss_fn: nn.Module, data) -> Tensor:
    """The generalized Gauss-Newton ``c sum_n J_n^T (d^2 l / d f^2) J_n``, ``(d, d)`` float64."""
    model, X, y = _problem64(model, data)
    theta, unflatten = flat_parameters(model)
    J = jacrev(lambda t: functional_call(model, unflatten(t), (X,)))(theta)
    out = model(X).detach()
    N = len(X)
    J, flat_out = J.reshape(N, -1, len(theta)), out.reshape(N, -1)  # (N, C, d), (N, C)
    targets = y.reshape(N, -1) if isinstance(loss_fn, nn.MSELoss) else y
    H_out = torch.stack([hessian(lambda f: _per_example_loss(loss_fn, f, targets[n]))(flat_out[n])
                         for n in range(N)])  # (N, C, C)
    return _scale(loss_fn, out) * torch.einsum("nci,ncd,ndj->ij", J, H_out, J)


def _per_example_grads(model, loss_fn, X, labels) -> Tensor:
    """Parameter gradients of each example's loss at ``labels``; ``(N, d)``."""
    theta, unflatten = flat_parameters(model)

    def one(x, label):
        return grad(lambda t: _per_example_loss(
            loss_fn, functional_call(model, unflatten(t), (x[None],))[0].reshape(-1),
            label.reshape(-1) if torch.is_floating_point(label) else label))(theta)

    return vmap(one)(X, labels)


def _label_enumeration(loss_fn: nn.Module, out: Tensor):
    """Labels and weights with ``E_y[g g^T] = sum_c w_c g(y_c) g(y_c)^T`` per example.

    Cross-entropy: every class ``c`` with weight ``p_c``. Squared error (the Gaussian
    ``N(f, I/2)``, whose ``E[g g^T]`` is ``2 I`` in output space): the labels
    ``y_c = f - e_c / sqrt(2)``, where ``g = 2 (f - y) = sqrt(2) e_c``, weight 1.
    """
    N = len(out)
    if isinstance(loss_fn, nn.CrossEntropyLoss):
        probs = out.softmax(dim=1)
        return [(torch.full((N,), c), probs[:, c]) for c in range(out.shape[1])]
    flat = out.reshape(N, -1)
    eye = torch.eye(flat.shape[1], dtype=out.dtype)
    return [((flat - eye[c] / math.sqrt(2.0)).reshape(out.shape), torch.ones(N, dtype=out.dtype))
            for c in range(flat.shape[1])]


def dense_fisher(model: nn.Module, loss_fn: nn.Module, data, kind="exact") -> Tensor:
    """A Fisher from per-example gradients, ``(d, d)`` float64.

    Args:
        model, loss_fn, data: as for :func:`lib.curvature.products.fisher`.
        kind: ``"exact"`` (labels enumerated, :func:`_label_enumeration`), ``"empirical"``
            (the data's labels) or ``"ggn"`` (:func:`dense_ggn`); a Monte-Carlo Fisher has
            no deterministic reference (``ValueError``).
    """
    if fisher_kind(kind) == FisherKind.MC:
        raise ValueError("kind='mc': a Monte-Carlo Fisher has no deterministic reference; "
                         "compare it with kind='exact' as the number of samples grows")
    kind = fisher_kind(kind)
    if kind == "ggn":
        return dense_ggn(model, loss_fn, data)
    model, X, y = _problem64(model, data)
    out = model(X).detach()
    if kind == "empirical":
        g = _per_example_grads(model, loss_fn, X, y)
        return _scale(loss_fn, out) * g.T @ g
    F = 0.0
    for labels, weights in _label_enumeration(loss_fn, out):
        g = _per_example_grads(model, loss_fn, X, labels)
        F = F + torch.einsum("n,ni,nj->ij", weights, g, g)
    return _scale(loss_fn, out) * F


def dense_function_hessian(f: Callable[[Tensor], Tensor], x: Tensor
                           ) -> tuple[Tensor, Tensor, Tensor]:
    """Value, gradient and dense Hessian ``(d, d)`` of a scalar ``f`` at a flat ``x``.

    For functions of a flat
    vector rather than a model's loss. Plain reverse-over-reverse autograd (one backward
    pass per row), so ``f`` may contain Python-side checks; meant for ``d`` up to a few
    hundred. The Hessian is symmetrized. Raises ``ValueError`` if ``x`` is not a flat
    floating-point tensor with ``d >= 1``, or ``f`` does not return a scalar.
    """
    if not isinstance(x, Tensor) or x.ndim != 1 or not torch.is_floating_point(x):
        raise ValueError("x must be a flat floating-point tensor of shape (d,)")
    if x.numel() == 0:
        raise ValueError("x has no entries (d = 0): a function of no parameters has no Hessian")
    x = x.detach().clone().requires_grad_(True)
    value = f(x)
    if not isinstance(value, Tensor) or value.numel() != 1:
        raise ValueError("the function must return a scalar tensor")
    value = value.reshape(())
    (gradient,) = torch.autograd.grad(value, x, create_graph=True)
    d = x.shape[0]
    rows = []
    for i in range(d):
        (row,) = torch.autograd.grad(gradient[i], x, retain_graph=i < d - 1, allow_unused=True)
        rows.append(torch.zeros_like(x) if row is None else row)
    H = torch.stack(rows).detach()
    return value.detach(), gradient.detach(), 0.5 * (H + H.T)
