"""Da Silva et al. (2025), ``dasilva2025hideseek``: closed forms of geodesic sharpness.

The scalar toy model ``x -> G H x`` of Section 4 / Appendix D and the diagonal linear
networks of Section 5.1 / Appendix E, where the geodesic sharpness that
:func:`lib.geometry.sharpness.geodesic_sharpness` estimates by Auto-PGD has a closed form
(or a trust-region problem, :func:`lib.geometry.sharpness.trust_region_max`).

Radius convention for rescale pairs: for a rescale pair ``(u, v)`` (metric
``sum xi_u^2/u^2 + xi_v^2/v^2``) a horizontal vector has ``xi_u / u == xi_v / v =: B``, so
its metric norm is ``sqrt(2) ||B||``. The constraint ``||xi|| <= rho`` therefore reads
``||B|| <= rho / sqrt(2)``; every closed form here uses this convention, which is the one
Auto-PGD with the quotient geometry optimises over. The paper is not consistent about it:
eqs. (23)-(24) and Appendix E write ``||B|| <= rho`` (eqs. 11-12 even ``rho^2``), eq. (25)
uses ``sqrt(2) rho``, and case B of Section 5.1 drops the factor 4 of eq. (12). See the
docstrings for details.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._checks import check_float_tensor, check_positive
from ..geometry.sharpness import trust_region_max

__all__ = ["scalar_toy_sharpness", "diagonal_net_quadratic_model", "diagonal_net_sharpness"]


def _as_float_tensor(value: Any, name: str) -> Tensor:
    """A real number as a float64 0-d tensor, a floating-point tensor as it is; TypeError else."""
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return torch.tensor(float(value), dtype=torch.float64)
    if not isinstance(value, Tensor) or not torch.is_floating_point(value):
        raise TypeError(f"{name} must be a floating-point tensor or a real number")
    return value


def scalar_toy_sharpness(G: Any, H: Any, x: Tensor, y: Tensor, rho: float,
                         order: str | int = "exact") -> float:
    """Geodesic sharpness of the scalar toy model ``x -> G H x`` (da Silva et al. 2025,
    Section 4 and App. D, eqs. (23)-(26)).

    Loss ``L = mean_i (G H x_i - y_i)^2`` over ``x, y`` of shape ``(n,)``; ``G, H`` nonzero
    scalars. A horizontal vector has ``xi_G / G = xi_H / H = B`` and metric norm
    ``sqrt(2) |B|``, so ``||xi|| <= rho`` means ``|B| <= rho / sqrt(2)``; the geodesic
    multiplies ``y0_i = G H x_i`` by ``z = exp(2B)``, and
    ``S(B) = mean[(z y0 - y)^2 - (y0 - y)^2]``.

    * ``order="exact"``: ``max(S(-rho/sqrt 2), S(rho/sqrt 2))``. Proof that the maximum over
      ``|B| <= rho/sqrt 2`` sits at an end point: ``S`` is a quadratic in ``z`` with leading
      coefficient ``mean(y0^2) >= 0``, hence convex in ``z``; ``z = e^{2B}`` maps the
      interval monotonically onto ``[e^{-sqrt2 rho}, e^{sqrt2 rho}]``, and a convex function
      on an interval is maximal at one of its end points. This is eq. (25) of the paper.
    * ``order=1``: ``S(B) ~ 4 B m1`` with ``m1 = mean(y0 (y0 - y))``, so
      ``S_max ~ 2 sqrt(2) rho |m1|`` (eq. 26's first-order term).
    * ``order=2``: ``S(B) ~ 4 B m1 + 4 B^2 m2`` with ``m2 = mean(y0 (2 y0 - y))``, maximised
      at the end points: ``2 sqrt(2) rho |m1| + 2 rho^2 m2``.

    Paper inconsistencies: eqs. (23)-(24) maximise over ``|B| <= rho`` (giving ``4 rho``
    instead of ``2 sqrt(2) rho`` in the first-order term) while eq. (25) uses
    ``sqrt(2) rho``; the second-order term is given as ``2 rho^2 y0^2`` in eq. (26)
    (only right at zero residual) and as ``rho^2 |y0| |y - 2 y0|`` in the one-point case,
    which loses the sign of ``y0 (2 y0 - y)``. Returns a float.
    """
    G = _as_float_tensor(G, "G")
    H = _as_float_tensor(H, "H")
    for name, t in (("x", x), ("y", y)):
        check_float_tensor(t, name)
    if G.numel() != 1 or H.numel() != 1:
        raise ValueError("G and H must be scalars")
    if x.ndim != 1 or x.shape != y.shape or x.numel() == 0:
        raise ValueError(f"x and y must be 1-D of equal non-zero length, got {tuple(x.shape)} "
                         f"and {tuple(y.shape)}")
    rho = check_positive(rho, "rho")
    if order not in ("exact", 1, 2):
        raise ValueError(f"order must be 'exact', 1 or 2, got {order!r}")
    y0 = (G * H).double().reshape(()) * x.double()
    yd = y.double()
    m1 = float((y0 * (y0 - yd)).mean())
    m2 = float((y0 * (2 * y0 - yd)).mean())
    if order == 1:
        return 2 * math.sqrt(2) * rho * abs(m1)
    if order == 2:
        return 2 * math.sqrt(2) * rho * abs(m1) + 2 * rho ** 2 * m2
    base = ((y0 - yd) ** 2).mean()
    ends = [((math.exp(2 * s * rho / math.sqrt(2)) * y0 - yd) ** 2).mean() - base
            for s in (-1.0, 1.0)]
    return float(max(ends))


def diagonal_net_quadratic_model(u: Tensor, v: Tensor, X: Tensor,
                                 y: Tensor) -> tuple[Tensor, Tensor]:
    """Second-order model ``S(B) ~ a^T B + B^T Q B`` of the geodesic loss change of a
    diagonal linear network ``x -> x^T (u * v)`` (da Silva et al. 2025, Section 5.1, eq. (12)).

    Loss ``L(beta) = mean((X beta - y)^2)`` (mean over the ``n`` rows of ``X`` ``(n, d)``,
    ``y`` ``(n,)``; the paper uses the sum with ``X^T X = I``). The geodesic along the
    horizontal ``B`` ``(d,)`` maps ``beta0 = u * v`` to ``beta0 * exp(2B)``. With
    ``g = grad L(beta0) = (2/n) X^T (X beta0 - y)`` and ``K = (2/n) X^T X``,
    ``beta0 exp(2B) - beta0 = beta0 (2B + 2B^2) + O(B^3)`` gives
    ``a = 2 beta0 g`` and ``Q = 2 diag(beta0 g) + 2 diag(beta0) K diag(beta0)``.
    When ``X^T X = n I`` this is ``a = 4 r``, ``Q = 4 D`` with the paper's
    ``r = beta0 (beta0 - beta*)``, ``D = diag(beta0 (2 beta0 - beta*))``,
    ``beta* = X^T y / n`` (eq. 12). Returns ``(a (d,), Q (d, d))`` in float64.
    """
    for name, t in (("u", u), ("v", v), ("X", X), ("y", y)):
        check_float_tensor(t, name)
    if u.ndim != 1 or u.shape != v.shape or X.ndim != 2 or X.shape[1] != u.shape[0]:
        raise ValueError(f"need u, v of shape (d,) and X of shape (n, d), got {tuple(u.shape)}, "
                         f"{tuple(v.shape)}, {tuple(X.shape)}")
    if y.shape != (X.shape[0],):
        raise ValueError(f"y must have shape ({X.shape[0]},), got {tuple(y.shape)}")
    # A closed form, not a graph: detach, so nn.Parameters can be passed as they are.
    beta0 = (u * v).detach().double()
    Xd, yd = X.detach().double(), y.detach().double()
    n = Xd.shape[0]
    g = 2.0 / n * Xd.T @ (Xd @ beta0 - yd)
    K = 2.0 / n * Xd.T @ Xd
    a = 2 * beta0 * g
    Q = 2 * torch.diag(beta0 * g) + 2 * beta0[:, None] * K * beta0[None, :]
    return a, Q


def diagonal_net_sharpness(u: Tensor, v: Tensor, X: Tensor, y: Tensor, rho: float,
                           order: int = 2) -> float:
    """Closed-form geodesic sharpness of a diagonal linear network (da Silva et al. 2025,
    Section 5.1, eqs. (11)-(12), App. E).

    Maximises the model of :func:`diagonal_net_quadratic_model` over the geodesic ball
    ``||xi|| <= rho``, i.e. ``||B|| <= rho / sqrt(2)`` (a horizontal rescale vector has
    metric norm ``sqrt(2) ||B||``):

    * ``order=1`` (case A): ``(rho / sqrt 2) ||a||``;
    * ``order=2`` (cases A/B/C): :func:`~lib.geometry.sharpness.trust_region_max` of ``a^T B + B^T Q B``; for
      ``a = 0`` (case B) this is ``(rho^2 / 2) max(lambda_max(Q), 0)``.

    Paper inconsistencies (orthonormal ``X^T X = I``, summed loss, so ``a = 4 r``,
    ``Q = 4 D``): eq. (11) writes ``(beta0 * gamma - 1)^T beta*`` for
    ``(beta0 * gamma - beta0)^T beta*``; eqs. (11)-(12) constrain ``||B|| <= rho^2``; case
    A's answer
    ``4 rho ||r||`` corresponds to ``||B|| <= rho``, case B's ``rho^2 lambda_max(D)``
    drops the factor 4 of ``4 B^T D B``, and none matches the metric ball (radius
    ``rho / sqrt 2`` here). Returns a float.
    """
    rho = check_positive(rho, "rho")
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2, got {order!r}")
    a, Q = diagonal_net_quadratic_model(u, v, X, y)
    radius = rho / math.sqrt(2)
    if order == 1:
        return radius * float(a.norm())
    return trust_region_max(a, Q, radius).value
