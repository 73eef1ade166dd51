"""The ``GL(1)`` rescaling symmetry ``(u, v) -> (a u, v / a)``, elementwise.

Rescale pairs (the ``GL(1)`` symmetry ``(u, v) -> (a u, v / a)`` of diagonal linear nets and
the scalar toy model of Section 4, elementwise): the metric ``sum(a_u b_u / u^2 + a_v b_v
/ v^2)`` is Euclidean in ``log|u|, log|v|``, so its geodesics are exact:
``(u exp(t xi_u / u), v exp(t xi_v / v))``; horizontal means ``xi_u / u == xi_v / v``.

It is the symmetry of diagonal linear networks and of the scalar toy model of da Silva et
al. (2025, ``dasilva2025hideseek``, Section 4 and App. F.1); a module declares its pairs
in a ``rescale_pairs`` attribute for :class:`lib.geometry.quotient.QuotientGeometry`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .._checks import check_callable, check_float_tensor, check_shape_like

__all__ = ["check_nonzero", "rescale_metric", "rescale_horizontal", "rescale_geodesic",
           "rescale_riemannian_gradient", "rescale_hessian_trace"]


def _check_rescale(u, v, *named) -> None:
    check_float_tensor(u, "u")
    check_shape_like(u, v, "v")
    for name, x in named:
        check_shape_like(u, x, name)


def check_nonzero(u: Tensor, name: str) -> None:
    if bool((u == 0).any()):
        raise ValueError(f"{name} has zero entries; the rescale metric 1/{name}^2 is undefined "
                         "there (the orbit degenerates)")


def rescale_metric(u: Tensor, v: Tensor, a_u: Tensor, a_v: Tensor, b_u: Tensor,
                   b_v: Tensor) -> Tensor:
    """Invariant metric ``sum(a_u b_u / u^2 + a_v b_v / v^2)`` of the action ``(a u, v / a)``.

    Args:
        u, v: base point, same shape ``(...)``, no zero entries; a_*, b_*: tangent vectors.

    Returns:
        Scalar (summed over all entries).
    """
    _check_rescale(u, v, ("a_u", a_u), ("a_v", a_v), ("b_u", b_u), ("b_v", b_v))
    return (a_u * b_u / u**2).sum() + (a_v * b_v / v**2).sum()


def rescale_horizontal(u: Tensor, v: Tensor, xi_u: Tensor, xi_v: Tensor
                       ) -> tuple[Tensor, Tensor]:
    """Horizontal projection ``(u B, v B)``, ``B = (xi_u / u + xi_v / v) / 2``.

    The vertical direction is ``(u X, -v X)``; in the coordinates ``xi / w`` the metric
    is Euclidean and this is the orthogonal projection onto ``xi_u / u == xi_v / v``.

    Args:
        u, v: base point ``(...)``; xi_u, xi_v: tangent vector, same shape.

    Returns:
        ``(h_u, h_v)``.
    """
    _check_rescale(u, v, ("xi_u", xi_u), ("xi_v", xi_v))
    B = (xi_u / u + xi_v / v) / 2
    return u * B, v * B


def rescale_geodesic(u: Tensor, v: Tensor, xi_u: Tensor, xi_v: Tensor, t: float = 1.0
                     ) -> tuple[Tensor, Tensor]:
    """Exact geodesic ``(u exp(t xi_u / u), v exp(t xi_v / v))`` of :func:`rescale_metric`.

    The metric is Euclidean in ``log|u|``, so straight lines there are geodesics; for a
    horizontal ``xi = (u B, v B)`` this is ``(u e^{Bt}, v e^{Bt})``.

    Args:
        u, v: base point ``(...)``; xi_u, xi_v: initial velocity; t: time.

    Returns:
        ``(u(t), v(t))``.
    """
    _check_rescale(u, v, ("xi_u", xi_u), ("xi_v", xi_v))
    return u * torch.exp(t * xi_u / u), v * torch.exp(t * xi_v / v)


def rescale_riemannian_gradient(u: Tensor, v: Tensor, grad_u: Tensor, grad_v: Tensor
                                ) -> tuple[Tensor, Tensor]:
    """Riemannian gradient ``(grad_u u^2, grad_v v^2)`` of :func:`rescale_metric`.

    Args:
        u, v: base point; grad_u, grad_v: Euclidean gradients, same shape.
    """
    _check_rescale(u, v, ("grad_u", grad_u), ("grad_v", grad_v))
    return grad_u * u**2, grad_v * v**2


def rescale_hessian_trace(f: Callable[[Tensor, Tensor], Tensor], u: Tensor,
                          v: Tensor) -> Tensor:
    """Trace of the Riemannian Hessian of ``f`` under :func:`rescale_metric`.

    With ``g = diag(1/u^2)`` the only Christoffel symbol per coordinate is
    ``Gamma^u_uu = -1/u``, so ``tr(g^-1 (d^2 f - Gamma df)) =
    sum_i u_i^2 (d^2 f / du_i^2 + (df / du_i) / u_i)`` plus the same for ``v``, which is
    the Laplacian of ``f`` in the coordinates ``log|u|, log|v|``. It is constant along the
    orbits when ``f`` is invariant (unlike the Euclidean Hessian trace). The diagonal
    second derivatives take one backward pass per entry (meant for small toys).

    Args:
        f: ``f(u, v) -> scalar``, e.g. a training loss as a function of the pair.
        u, v: base point, same shape ``(...)``, no zero entries.

    Returns:
        Scalar tensor (detached).
    """
    check_callable(f, "f", "f(u, v)")
    _check_rescale(u, v)
    check_nonzero(u, "u")
    check_nonzero(v, "v")
    u = u.detach().clone().requires_grad_(True)
    v = v.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        value = f(u, v)
        if not isinstance(value, Tensor) or value.numel() != 1:
            raise ValueError("f must return a scalar tensor")
        grads = torch.autograd.grad(value, (u, v), create_graph=True, allow_unused=True)
        total = torch.zeros((), dtype=u.dtype, device=u.device)
        for w, g in zip((u, v), grads):
            if g is None:  # f does not depend on this factor
                continue
            flat = g.reshape(-1)
            for i in range(flat.numel()):
                row = (torch.autograd.grad(flat[i], w, retain_graph=True, allow_unused=True)[0]
                       if flat.requires_grad else None)
                second = 0.0 if row is None else row.reshape(-1)[i]
                wi = w.reshape(-1)[i]
                total = total + wi**2 * second + wi * flat[i]
    return total.detach()
