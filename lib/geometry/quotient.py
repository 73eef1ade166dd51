"""Quotient geometry of the weight-space symmetries of attention (and of diagonal nets).

Two parameter blocks ``G`` (n, h) and ``H`` (m, h) that enter a network only through
the product ``G H^T`` can be replaced by ``(G A^-1, H A^T)`` for any invertible ``A``
(h, h) without changing the function (Definition 3.1 of da Silva et al., 2025,
``dasilva2025hideseek``). In multi-head attention this happens twice per head: the
query/key pair and the value/output pair (Appendix C.1 of the paper; the bias rows
are included, see :func:`attention_pairs`). The points of one orbit are the same
network, so sharpness should be measured on the quotient space "weights modulo
``GL(h)``". Concretely (Absil et al., 2008), the quotient is represented in the total
space by

* an **invariant metric** ``g``: moving along the orbit maps ``g`` to itself, so lengths of
  tangent vectors do not depend on the representative;
* the **vertical** directions ``(-G X, H X^T)`` (the tangents of the orbit, X any h x h
  matrix) and the **horizontal** directions, ``g``-orthogonal to all of them; only
  horizontal directions change the function, and they represent the quotient's tangents;
* **geodesics**, approximated to second order by ``w + xi - 1/2 Gamma(xi, xi)``
  (eq. (7) of the paper; eq. (8) puts it into the sharpness) with the Christoffel term
  ``Gamma`` of the metric.

Two invariant metrics are implemented, with a relaxation ``eps >= 0`` added to the Gram
matrices (it keeps them invertible; the invariance is then only approximate):

``"inv"`` (eq. (15)):  ``<a, b> = Tr(S_G^-1 a_G^T b_G) + Tr(S_H^-1 a_H^T b_H)``,
    ``S_G = G^T G + eps I``, ``S_H = H^T H + eps I``. Christoffel term (eq. (16), from the
    geodesic equation (42)): ``Gamma_G = -xi_G S_G^-1 (xi_G^T G + G^T xi_G) + G S_G^-1
    xi_G^T xi_G``, the same for H.
``"mix"`` (eq. (34), Mishra et al., 2012):  ``<a, b> = Tr(S_H a_G^T b_G) + Tr(S_G a_H^T b_H)``.
    Geodesic equations (35)-(36) give ``Gamma_G = [xi_G (xi_H^T H + H^T xi_H) -
    G xi_H^T xi_H] S_H^-1`` and the same with G and H swapped.

Horizontal projection. Both metrics project by ``(xi_G + G L, xi_H - H L^T)``; writing
``Y = L^T``, orthogonality to every vertical vector is the linear equation

    ``K_G Y (G^T G) + (H^T H) Y K_H = (H^T xi_H) K_H - K_G (xi_G^T G)``

where ``K_G``, ``K_H`` are the metric's weight matrices (``S_G^-1, S_H^-1`` for "inv",
``S_H, S_G`` for "mix"). It is solved in O(h^3), batched over heads, by
eigen-decompositions of symmetric matrices only (see :class:`_GLPoint`).

Deviations from / corrections to the paper (the tests are the arbiter):

* The Sylvester equation printed under eq. (15), ``A L + L A^T = B`` with
  ``A = G^T G H^T H``, is transposed: orthogonality holds for ``A L^T + L^T A = B``
  (equivalently ``A^T L + L A^T = B^T``), with the paper's ``B``. With ``eps > 0`` it
  becomes ``(S_G H^T H) L^T + L^T (G^T G S_H) = S_G H^T xi_H - xi_G^T G S_H``.
* In eq. (38) the Gram matrices inside the energy lack their inverse; eqs. (40)-(42)
  use the correct metric (15), and the Christoffel term (16) is right.
* The projection of App. F.2 ("mix") prints ``xi_H^T - H L^T`` for the second component; it
  is ``xi_H - H L^T``. With ``eps > 0`` its closed form no longer holds and the same
  eigen-solve as for "inv" is used (it reduces to the closed form at ``eps = 0``).
* The paper does not say how eps enters "mix"; here it is added to both Gram matrices,
  and the Christoffel term uses the relaxed matrices consistently (exact for the relaxed
  metric).

Rescale pairs (the ``GL(1)`` symmetry ``(u, v) -> (a u, v / a)`` of diagonal linear nets and
the scalar toy model of Section 4, elementwise): the metric ``sum(a_u b_u / u^2 + a_v b_v
/ v^2)`` is Euclidean in ``log|u|, log|v|``, so its geodesics are exact:
``(u exp(t xi_u / u), v exp(t xi_v / v))``; horizontal means ``xi_u / u == xi_v / v``.

Every other trainable weight is treated as in adaptive sharpness (App. C.1): the norm is
``||xi / |w| ||_2``, and the perturbation is the straight line ``w + xi``. The squared norms
of all blocks add. :class:`QuotientGeometry` puts this together for a whole model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = [
    "METRICS", "check_full_rank", "gl_metric", "gl_horizontal", "gl_vertical",
    "gl_riemannian_gradient", "gl_christoffel", "gl_action", "rescale_metric",
    "rescale_horizontal", "rescale_geodesic", "rescale_riemannian_gradient",
    "rescale_hessian_trace", "AttentionPair", "attention_pairs", "attention_group_action",
    "QuotientGeometry",
]

METRICS = ("inv", "mix")
SYMMETRIES = ("attention", "rescale")


# --------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------
def _check_metric(metric) -> str:
    if not isinstance(metric, str):
        raise TypeError(f"metric must be a str, got {type(metric).__name__}")
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    return metric


def _check_eps(eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"eps must be a float, got {type(eps).__name__}")
    if not eps >= 0 or eps == float("inf"):
        raise ValueError(f"eps must be a finite number >= 0, got {eps}")
    return float(eps)


def _check_tensor(x, name: str) -> Tensor:
    if not isinstance(x, Tensor) or not torch.is_floating_point(x):
        raise TypeError(f"{name} must be a floating-point tensor, got {type(x).__name__}")
    return x


def _check_like(ref: Tensor, x, name: str) -> Tensor:
    _check_tensor(x, name)
    if x.shape != ref.shape:
        raise ValueError(f"{name} must have shape {tuple(ref.shape)}, got {tuple(x.shape)}")
    return x


def _check_pair(G, H) -> tuple[Tensor, Tensor]:
    _check_tensor(G, "G")
    _check_tensor(H, "H")
    if G.ndim < 2 or H.ndim < 2:
        raise ValueError(f"G and H must be (..., n, h) and (..., m, h) matrices, got shapes "
                         f"{tuple(G.shape)} and {tuple(H.shape)}")
    if G.shape[-1] != H.shape[-1] or G.shape[:-2] != H.shape[:-2]:
        raise ValueError(f"G {tuple(G.shape)} and H {tuple(H.shape)} must share the last "
                         "dimension h and the leading (batch) dimensions")
    return G, H


def check_full_rank(G: Tensor, H: Tensor, eps: float) -> None:
    """Raise ValueError if ``eps < 0``, or if ``eps == 0`` and ``G`` or ``H`` has rank < h.

    With ``eps == 0`` the metrics need ``G^T G`` and ``H^T H`` invertible (Assumption 5.1
    of the paper). A matrix counts as rank-deficient when its smallest singular value is
    below ``10 * max(n, h) * machine-eps * largest`` (a little looser than
    ``torch.linalg.matrix_rank``, so nearly singular matrices are caught too).

    Args:
        G: ``(..., n, h)``; H: ``(..., m, h)``.
        eps: the relaxation added to the Gram matrices.
    """
    _check_pair(G, H)
    eps = _check_eps(eps)
    if eps > 0:
        return
    for name, M in (("G", G), ("H", H)):
        n, h = M.shape[-2:]
        s = torch.linalg.svdvals(M.detach())
        tol = 10 * max(n, h) * torch.finfo(M.dtype).eps * s[..., :1]
        if n < h or bool((s[..., -1:] <= tol).any()):
            raise ValueError(f"{name} is rank-deficient (rank < h = {h}), so its Gram matrix "
                             "is singular and the metric undefined; pass eps > 0")


# --------------------------------------------------------------------------------------
# GL(h) pairs: one base point with its metric matrices
# --------------------------------------------------------------------------------------
def _gram(M: Tensor, eps: float) -> Tensor:
    gram = M.mT @ M
    if eps:
        gram = gram + eps * torch.eye(M.shape[-1], dtype=M.dtype, device=M.device)
    return gram


def _spd_inverse(S: Tensor) -> Tensor:
    # cholesky_solve rather than cholesky_inverse: the latter's forward-mode derivative
    # is wrong in torch 2.14 (torch.func.jvp / hessian through the metric would be off).
    eye = torch.eye(S.shape[-1], dtype=S.dtype, device=S.device).expand_as(S)
    return torch.cholesky_solve(eye, torch.linalg.cholesky(S))


def _sqrt_pair(S: Tensor) -> tuple[Tensor, Tensor]:
    """``S^(1/2)`` and ``S^(-1/2)`` of SPD ``S`` (..., h, h)."""
    d, U = torch.linalg.eigh(S)
    r = d.clamp_min(torch.finfo(S.dtype).tiny).sqrt()
    return (U * r.unsqueeze(-2)) @ U.mT, (U / r.unsqueeze(-2)) @ U.mT


def _safe_divide(C: Tensor, denom: Tensor) -> Tensor:
    # A zero denominator means a vertical direction with X != 0 that is itself zero
    # (both G and H rank-deficient); any value solves that equation, 0 is minimal.
    tiny = torch.finfo(C.dtype).eps * denom.abs().amax(dim=(-2, -1), keepdim=True)
    ok = denom > tiny
    return torch.where(ok, C / torch.where(ok, denom, torch.ones_like(denom)), 0.0)


class _GLPoint:
    """A base point ``(G, H)`` with the metric matrices that the operations need.

    ``K_G``, ``K_H``: the metric is ``Tr(K_G a_G^T b_G) + Tr(K_H a_H^T b_H)``;
    ``Kinv_G``, ``Kinv_H`` their inverses (Riemannian gradient, Christoffel term).
    Built once per base point, so repeated projections (Auto-PGD) reuse it.
    """

    def __init__(self, G: Tensor, H: Tensor, metric: str, eps: float):
        self.G, self.H = _check_pair(G, H)
        self.metric = _check_metric(metric)
        self.eps = _check_eps(eps)
        self.P, self.Q = _gram(G, 0.0), _gram(H, 0.0)
        S_G, S_H = _gram(G, self.eps), _gram(H, self.eps)
        if metric == "inv":
            self.Kinv_G, self.Kinv_H = S_G, S_H
            self.K_G, self.K_H = _spd_inverse(S_G), _spd_inverse(S_H)
        else:
            self.K_G, self.K_H = S_H, S_G
            self.Kinv_G, self.Kinv_H = _spd_inverse(S_H), _spd_inverse(S_G)
        self._solver = None
        self._adaptive_solver = None

    # -- metric and gradients ------------------------------------------------------
    def inner(self, a_G, a_H, b_G, b_H) -> Tensor:
        return ((a_G @ self.K_G) * b_G).sum((-2, -1)) + ((a_H @ self.K_H) * b_H).sum((-2, -1))

    def riemannian_gradient(self, g_G, g_H) -> tuple[Tensor, Tensor]:
        # g(grad_G Kinv_G, v) = Tr(K_G Kinv_G grad^T v) = <grad, v>: the metric's dual.
        return g_G @ self.Kinv_G, g_H @ self.Kinv_H

    def christoffel(self, x_G, x_H) -> tuple[Tensor, Tensor]:
        G, H = self.G, self.H
        if self.metric == "inv":
            def part(M, x, K):
                return (-x @ K @ (x.mT @ M + M.mT @ x)) + M @ K @ (x.mT @ x)
            return part(G, x_G, self.K_G), part(H, x_H, self.K_H)
        # "mix": the G equation couples to H's velocity and vice versa, eqs. (35)-(36).
        gam_G = (x_G @ (x_H.mT @ H + H.mT @ x_H) - G @ (x_H.mT @ x_H)) @ self.Kinv_G
        gam_H = (x_H @ (x_G.mT @ G + G.mT @ x_G) - H @ (x_G.mT @ x_G)) @ self.Kinv_H
        return gam_G, gam_H

    # -- horizontal projection -----------------------------------------------------
    def _factorize(self):
        """Eigen-factors turning the equation for ``Y = L^T`` into an elementwise division.

        The equation is ``K_G Y P + Q Y K_H = C`` (module docstring).
        "mix": ``K_G = Q + eps``, ``K_H = P + eps`` are functions of ``Q`` and ``P``, so
        ``Q = W diag(q) W^T``, ``P = Z diag(p) Z^T`` diagonalize both sides at once.
        "inv": multiplying by ``S_G`` (left) and ``S_H`` (right) gives
        ``(S_G Q) Y + Y (P S_H) = S_G C S_H``. ``S_G Q = S_G^1/2 (S_G^1/2 Q S_G^1/2) S_G^-1/2``
        is similar to a symmetric PSD matrix, and so is ``P S_H``; their eigenvectors give
        ``Y = U Ytilde V^-1`` with ``Ytilde_ij = Ctilde_ij / (d_i + e_j)`` (at eps = 0 both
        matrices equal ``G^T G H^T H``, the paper's ``A``).
        Returns ``(pre_l, pre_r, denom, post_l, post_r)`` with
        ``Y = post_l [(pre_l C pre_r) ./ denom] post_r``.
        """
        if self._solver is not None:
            return self._solver
        eps = self.eps
        if self.metric == "mix":
            q, W = torch.linalg.eigh(self.Q)
            p, Z = torch.linalg.eigh(self.P)
            q, p = q.unsqueeze(-1), p.unsqueeze(-2)
            denom = (q + eps) * p + q * (p + eps)
            # C' = W^T C Z, Y = W Y' Z^T
            self._solver = (W.mT, Z, denom, W, Z.mT)
        else:
            S_G, S_H = self.Kinv_G, self.Kinv_H
            rG, rG_inv = _sqrt_pair(S_G)
            rH, rH_inv = _sqrt_pair(S_H)
            d, W = torch.linalg.eigh(rG @ self.Q @ rG)
            e, Z = torch.linalg.eigh(rH @ self.P @ rH)
            U, U_inv = rG @ W, W.mT @ rG_inv
            V, V_inv = rH_inv @ Z, Z.mT @ rH
            denom = d.unsqueeze(-1) + e.unsqueeze(-2)
            # C~ = S_G C S_H; Y = U [(U^-1 C~ V) ./ denom] V^-1
            self._solver = (U_inv @ S_G, S_H @ V, denom, U, V_inv)
        return self._solver

    def horizontal(self, x_G, x_H) -> tuple[Tensor, Tensor]:
        pre_l, pre_r, denom, post_l, post_r = self._factorize()
        C = (self.H.mT @ x_H) @ self.K_H - self.K_G @ (x_G.mT @ self.G)
        Y = post_l @ _safe_divide(pre_l @ C @ pre_r, denom) @ post_r
        return x_G + self.G @ Y.mT, x_H - self.H @ Y

    def horizontal_adaptive(self, x_G, x_H) -> tuple[Tensor, Tensor]:
        """Projection onto the same horizontal space, orthogonal in the *adaptive* inner
        product ``sum(a_G b_G / G^2) + sum(a_H b_H / H^2)`` (entries where a weight is 0
        are frozen: their component is set to 0).

        With the constraint ``C(xi) = K_H xi_H^T H - G^T xi_G K_G`` (horizontal <=>
        ``C(xi) = 0``, see the module docstring) and its
        Euclidean adjoint ``C*(Y) = (-G Y K_G, H Y^T K_H)`` (the metric applied to the
        vertical vector of ``Y``), the projection is ``xi - D C*(Y)`` with
        ``D = diag(G^2, H^2)`` the inverse adaptive metric and ``Y`` solving
        ``C(D C*(Y)) = C(xi)``, an ``h^2 x h^2`` symmetric positive semi-definite system
        (pseudo-inverted once per base point, in float64). Used for the ablation
        ``geodesic_norm=False``: only with this projection is the normalised projected
        adaptive gradient the steepest ascent direction among horizontal vectors.
        """
        if self._adaptive_solver is None:
            self._adaptive_solver = self._factorize_adaptive()
        G, H, K_G, K_H, D_G, D_H, pinv = self._adaptive_solver
        h = G.shape[-1]
        x_G = torch.where(D_G == 0, 0.0, x_G.double())
        x_H = torch.where(D_H == 0, 0.0, x_H.double())
        C = K_H @ x_H.mT @ H - G.mT @ x_G @ K_G
        Y = (pinv @ C.reshape(*C.shape[:-2], h * h, 1)).reshape(C.shape)
        out_G = x_G + (G @ Y @ K_G) * D_G
        out_H = x_H - (H @ Y.mT @ K_H) * D_H
        return out_G.to(self.G.dtype), out_H.to(self.H.dtype)

    def _factorize_adaptive(self, chunk: int = 256):
        G, H = self.G.double(), self.H.double()
        K_G, K_H = self.K_G.double(), self.K_H.double()
        D_G, D_H = G * G, H * H
        h = G.shape[-1]
        basis = torch.eye(h * h, dtype=G.dtype, device=G.device).reshape(h * h, h, h)
        Gb, Hb, KGb, KHb = (M.unsqueeze(-3) for M in (G, H, K_G, K_H))
        columns = []
        for E in basis.split(chunk):        # L[:, k] = vec C(D C*(E_k)), E_k the unit matrices
            z_G = -(Gb @ E @ KGb) * D_G.unsqueeze(-3)
            z_H = (Hb @ E.mT @ KHb) * D_H.unsqueeze(-3)
            out = KHb @ z_H.mT @ Hb - Gb.mT @ z_G @ KGb
            columns.append(out.reshape(*out.shape[:-2], h * h))
        L = torch.cat(columns, dim=-2).mT
        L = 0.5 * (L + L.mT)
        w, V = torch.linalg.eigh(L)
        tol = h * h * torch.finfo(w.dtype).eps * w.abs().amax(-1, keepdim=True)
        w_inv = torch.where(w > tol, 1.0 / torch.where(w > tol, w, torch.ones_like(w)), 0.0)
        return G, H, K_G, K_H, D_G, D_H, (V * w_inv.unsqueeze(-2)) @ V.mT

    # -- sampling ------------------------------------------------------------------
    def isotropic(self, z_G, z_H) -> tuple[Tensor, Tensor]:
        """Map white noise to a vector whose metric-coordinates are white: z -> z M with
        ``M K M^T = I`` (``M = chol(Kinv)^T``)."""
        M_G = torch.linalg.cholesky(self.Kinv_G).mT
        M_H = torch.linalg.cholesky(self.Kinv_H).mT
        return z_G @ M_G, z_H @ M_H


def _point(G, H, metric, eps) -> _GLPoint:
    # Without relaxation a singular Gram matrix would surface as an obscure Cholesky error.
    if _check_eps(eps) == 0:
        check_full_rank(G, H, eps)
    return _GLPoint(G, H, metric, eps)


def _at_point(method: str, G, H, names: tuple[str, str], x_G, x_H, metric, eps):
    """Check a base point and a pair of tangent blocks, then apply ``_GLPoint.<method>``."""
    _check_pair(G, H)
    _check_vectors(G, H, [(names[0], x_G), (names[1], x_H)])
    return getattr(_point(G, H, metric, eps), method)(x_G, x_H)


def _check_vectors(G, H, pairs) -> None:
    for name, x in pairs:
        _check_like(G if name.endswith("G") else H, x, name)


# --------------------------------------------------------------------------------------
# GL(h) pairs: public, batched functions
# --------------------------------------------------------------------------------------
def gl_metric(G: Tensor, H: Tensor, a_G: Tensor, a_H: Tensor, b_G: Tensor, b_H: Tensor, *,
              metric: str = "inv", eps: float = 0.0) -> Tensor:
    """Inner product ``<a, b>`` of two tangent vectors at ``(G, H)``.

    Args:
        G: ``(..., n, h)``; H: ``(..., m, h)`` (leading dims: heads, batched).
        a_G, b_G: ``(..., n, h)``; a_H, b_H: ``(..., m, h)``.
        metric: ``"inv"`` (eq. 15) or ``"mix"`` (eq. 34).
        eps: relaxation added to both Gram matrices (>= 0).

    Returns:
        ``(...)`` inner products.
    """
    _check_pair(G, H)
    _check_vectors(G, H, [("a_G", a_G), ("a_H", a_H), ("b_G", b_G), ("b_H", b_H)])
    return _point(G, H, metric, eps).inner(a_G, a_H, b_G, b_H)


def gl_horizontal(G: Tensor, H: Tensor, xi_G: Tensor, xi_H: Tensor, *, metric: str = "inv",
                  eps: float = 0.0) -> tuple[Tensor, Tensor]:
    """Project ``(xi_G, xi_H)`` onto the horizontal space (g-orthogonal to all vertical vectors).

    Returns ``(xi_G + G L, xi_H - H L^T)`` with ``L`` (..., h, h) from the O(h^3)
    eigen-solve of :class:`_GLPoint` (``L^T`` solves the paper's Sylvester equation).

    Args:
        G: ``(..., n, h)``; H: ``(..., m, h)``; xi_G, xi_H: same shapes.
        metric: ``"inv"`` or ``"mix"``; eps: relaxation (>= 0).

    Returns:
        ``(h_G, h_H)`` shaped like ``(xi_G, xi_H)``.
    """
    return _at_point("horizontal", G, H, ("xi_G", "xi_H"), xi_G, xi_H, metric, eps)


def gl_vertical(G: Tensor, H: Tensor, X: Tensor) -> tuple[Tensor, Tensor]:
    """Vertical vector ``(-G X, H X^T)``: the velocity at ``t = 0`` of the orbit
    ``t -> (G A_t^-1, H A_t^T)`` with ``A_t = I + t X``.

    Args:
        G: ``(..., n, h)``; H: ``(..., m, h)``; X: ``(..., h, h)``.

    Returns:
        ``(-G X, H X^T)``, shapes ``(..., n, h)`` and ``(..., m, h)``.
    """
    _check_pair(G, H)
    _check_tensor(X, "X")
    if X.shape[-2:] != (G.shape[-1],) * 2:
        raise ValueError(f"X must be (..., h, h) with h = {G.shape[-1]}, got {tuple(X.shape)}")
    return -G @ X, H @ X.mT


def gl_riemannian_gradient(G: Tensor, H: Tensor, grad_G: Tensor, grad_H: Tensor, *,
                           metric: str = "inv", eps: float = 0.0) -> tuple[Tensor, Tensor]:
    """Riemannian gradient: the vector ``r`` with ``g(r, v) = <grad, v>_Euclidean`` for all v.

    "inv": ``(grad_G S_G, grad_H S_H)``; "mix": ``(grad_G S_H^-1, grad_H S_G^-1)``
    (``S_G = G^T G + eps I``, ``S_H = H^T H + eps I``).

    Args:
        G: ``(..., n, h)``; H: ``(..., m, h)``; grad_G, grad_H: Euclidean gradients, same shapes.

    Returns:
        ``(r_G, r_H)`` shaped like the gradients.
    """
    return _at_point("riemannian_gradient", G, H, ("grad_G", "grad_H"), grad_G, grad_H, metric, eps)


def gl_christoffel(G: Tensor, H: Tensor, xi_G: Tensor, xi_H: Tensor, *, metric: str = "inv",
                   eps: float = 0.0) -> tuple[Tensor, Tensor]:
    """Christoffel contraction ``Gamma(xi, xi)``: the geodesic with velocity ``xi`` has
    acceleration ``-Gamma(xi, xi)``, so ``w + xi - Gamma(xi, xi) / 2`` is its point at
    ``t = 1`` up to ``O(|xi|^3)`` (eq. 16 for "inv", eqs. 35-36 for "mix"; valid for any xi,
    horizontal or not, and for the relaxed metric with eps > 0).

    Args:
        G: ``(..., n, h)``; H: ``(..., m, h)``; xi_G, xi_H: same shapes.

    Returns:
        ``(Gamma_G, Gamma_H)`` shaped like ``(xi_G, xi_H)``.
    """
    return _at_point("christoffel", G, H, ("xi_G", "xi_H"), xi_G, xi_H, metric, eps)


def gl_action(G: Tensor, H: Tensor, A: Tensor) -> tuple[Tensor, Tensor]:
    """Group action ``(G, H) -> (G A^-1, H A^T)``; it leaves ``G H^T`` unchanged.

    Args:
        G: ``(..., n, h)``; H: ``(..., m, h)``; A: invertible ``(..., h, h)``.

    Returns:
        ``(G A^-1, H A^T)``.
    """
    _check_pair(G, H)
    _check_tensor(A, "A")
    if A.shape[-2:] != (G.shape[-1],) * 2:
        raise ValueError(f"A must be (..., h, h) with h = {G.shape[-1]}, got {tuple(A.shape)}")
    return torch.linalg.solve(A, G, left=False), H @ A.mT


# --------------------------------------------------------------------------------------
# GL(1) rescale pairs (elementwise)
# --------------------------------------------------------------------------------------
def _check_rescale(u, v, *named) -> None:
    _check_tensor(u, "u")
    _check_like(u, v, "v")
    for name, x in named:
        _check_like(u, x, name)


def _check_nonzero(u: Tensor, name: str) -> None:
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


def rescale_hessian_trace(loss_fn: Callable[[Tensor, Tensor], Tensor], u: Tensor,
                          v: Tensor) -> Tensor:
    """Trace of the Riemannian Hessian of ``loss_fn`` under :func:`rescale_metric`.

    With ``g = diag(1/u^2)`` the only Christoffel symbol per coordinate is
    ``Gamma^u_uu = -1/u``, so ``tr(g^-1 (d^2 f - Gamma df)) =
    sum_i u_i^2 (d^2 f / du_i^2 + (df / du_i) / u_i)`` plus the same for ``v``, which is
    the Laplacian of ``f`` in the coordinates ``log|u|, log|v|``. It is constant along the
    orbits when ``f`` is invariant (unlike the Euclidean Hessian trace). The diagonal
    second derivatives take one backward pass per entry (meant for small toys).

    Args:
        loss_fn: ``f(u, v) -> scalar``.
        u, v: base point, same shape ``(...)``, no zero entries.

    Returns:
        Scalar tensor (detached).
    """
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    _check_rescale(u, v)
    _check_nonzero(u, "u")
    _check_nonzero(v, "v")
    u = u.detach().clone().requires_grad_(True)
    v = v.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        f = loss_fn(u, v)
        if not isinstance(f, Tensor) or f.numel() != 1:
            raise ValueError("loss_fn must return a scalar tensor")
        grads = torch.autograd.grad(f, (u, v), create_graph=True, allow_unused=True)
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


# --------------------------------------------------------------------------------------
# Attention pairs inside nn.MultiheadAttention
# --------------------------------------------------------------------------------------
def _prefix(module_name: str) -> str:
    return f"{module_name}." if module_name else ""


class _MHA:
    """Packed parameters of one ``nn.MultiheadAttention`` <-> per-head (G, H) blocks.

    All heads are handled at once: ``get`` returns ``{"qk": (G, H), "vo": (G, H)}`` with
    ``G, H`` shaped ``(heads, n, dh)``; ``put`` writes such blocks back (differentiably).
    """

    def __init__(self, module_name: str, module: nn.MultiheadAttention):
        if not module._qkv_same_embed_dim or module.in_proj_weight is None:
            raise ValueError(f"attention module {module_name!r} uses separate q, k, v "
                             "projections (kdim/vdim != embed_dim); only the packed "
                             "in_proj_weight is supported")
        if module.bias_k is not None or module.bias_v is not None:
            raise ValueError(f"attention module {module_name!r} has add_bias_kv=True, which is "
                             "not supported (the extra key/value rows break the GL(h) pairing)")
        self.module_name = module_name
        self.E, self.heads = module.embed_dim, module.num_heads
        self.dh = module.head_dim
        p = _prefix(module_name)
        self.w_in, self.w_out = p + "in_proj_weight", p + "out_proj.weight"
        self.b_in = p + "in_proj_bias" if module.in_proj_bias is not None else None
        self.names = tuple(n for n in (self.w_in, self.b_in, self.w_out) if n is not None)

    def _side(self, params, part: int) -> Tensor:
        """Rows of q (0), k (1) or v (2) as ``(heads, E [+1], dh)``."""
        E, nh, dh = self.E, self.heads, self.dh
        W = params[self.w_in][part * E:(part + 1) * E]          # (E_out, E_in)
        G = W.reshape(nh, dh, E).mT                              # (nh, E_in, dh)
        if self.b_in is not None:
            b = params[self.b_in][part * E:(part + 1) * E].reshape(nh, 1, dh)
            G = torch.cat([G, b], dim=1)
        return G

    def get(self, params: Mapping[str, Tensor]) -> dict[str, tuple[Tensor, Tensor]]:
        Wo = params[self.w_out]                                  # (E, nh * dh)
        H_o = Wo.reshape(self.E, self.heads, self.dh).permute(1, 0, 2)
        return {"qk": (self._side(params, 0), self._side(params, 1)),
                "vo": (self._side(params, 2), H_o)}

    def own(self, blocks: Mapping[str, tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
        """The module's packed parameters ``{name: tensor}`` built from per-head blocks."""
        (G_q, G_k), (G_v, H_o) = blocks["qk"], blocks["vo"]
        E = self.E
        sides = (G_q, G_k, G_v)
        out = {self.w_in: torch.cat([S[:, :E, :].mT.reshape(E, E) for S in sides], dim=0)}
        if self.b_in is not None:
            out[self.b_in] = torch.cat([S[:, E, :].reshape(E) for S in sides], dim=0)
        out[self.w_out] = H_o.permute(1, 0, 2).reshape(E, E)
        return out

    def put(self, params: Mapping[str, Tensor], blocks: Mapping[str, tuple[Tensor, Tensor]]
            ) -> dict[str, Tensor]:
        out = dict(params)
        out.update(self.own(blocks))
        return out


@dataclass(frozen=True)
class AttentionPair:
    """One ``GL(dh)`` pair of one head of an ``nn.MultiheadAttention`` module.

    ``kind == "qk"``: ``G = [Wq_i^T ; bq_i^T]``, ``H = [Wk_i^T ; bk_i^T]``, both
    ``(E + 1, dh)``; ``kind == "vo"``: ``G = [Wv_i^T ; bv_i^T]`` ``(E + 1, dh)``,
    ``H = Wo[:, i dh:(i+1) dh]`` ``(E, dh)``. Without ``in_proj_bias`` the bias rows are
    absent. ``G H^T`` is all the network sees of the pair (the attention rows sum to one,
    which carries ``bv`` through the value/output product). The key bias ``bk`` has a
    further symmetry (the softmax ignores it entirely) that is not quotiented out here.
    """

    module_name: str
    head: int
    kind: str
    _mha: _MHA

    def get(self, params: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """``(G, H)`` from a ``{parameter name: tensor}`` dict (or a tangent vector dict)."""
        G, H = self._mha.get(params)[self.kind]
        return G[self.head], H[self.head]

    def put(self, params: Mapping[str, Tensor], G: Tensor, H: Tensor) -> dict[str, Tensor]:
        """New dict with this pair replaced by ``(G, H)``; the input dict is not modified."""
        blocks = self._mha.get(params)
        G_all, H_all = blocks[self.kind]
        _check_like(G_all[self.head], G, "G")
        _check_like(H_all[self.head], H, "H")
        mask = torch.arange(self._mha.heads, device=G_all.device) == self.head
        mask = mask.view(-1, 1, 1)
        blocks[self.kind] = (torch.where(mask, G.unsqueeze(0), G_all),
                             torch.where(mask, H.unsqueeze(0), H_all))
        return self._mha.put(params, blocks)


def _attention_modules(model: nn.Module) -> list[_MHA]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    return [_MHA(name, m) for name, m in model.named_modules()
            if isinstance(m, nn.MultiheadAttention)]


def attention_pairs(model: nn.Module) -> list[AttentionPair]:
    """Every ``GL(dh)`` pair of every ``nn.MultiheadAttention`` in ``model``.

    Order: modules as in ``model.named_modules()``, then heads, then ``"qk"`` before ``"vo"``.
    Raises ValueError for unsupported modules (separate q/k/v projections, add_bias_kv).

    Returns:
        list of :class:`AttentionPair`; ``pair.get(dict(model.named_parameters()))`` gives
        its ``(G, H)``.
    """
    return [AttentionPair(mha.module_name, i, kind, mha) for mha in _attention_modules(model)
            for i in range(mha.heads) for kind in ("qk", "vo")]


def attention_group_action(model: nn.Module, A: Mapping[tuple[str, int, str], Tensor]) -> None:
    """Apply ``(G, H) -> (G A^-1, H A^T)`` in place to the listed pairs of ``model``.

    The network function is unchanged (up to rounding). Meant for tests and demos.

    Args:
        model: module containing ``nn.MultiheadAttention`` layers.
        A: ``{(module_name, head, kind): (dh, dh) invertible matrix}``; pairs not listed
            are left alone.
    """
    if not isinstance(A, Mapping):
        raise TypeError("A must be a dict {(module, head, kind): matrix}, got "
                        f"{type(A).__name__}")
    pairs = {(p.module_name, p.head, p.kind): p for p in attention_pairs(model)}
    unknown = [key for key in A if key not in pairs]
    if unknown:
        raise ValueError(f"unknown attention pairs {unknown}; available: {list(pairs)}")
    params = dict(model.named_parameters())
    with torch.no_grad():
        new = {k: v.detach().clone() for k, v in params.items()}
        for key, matrix in A.items():
            G, H = pairs[key].get(new)
            new = pairs[key].put(new, *gl_action(G, H, matrix.to(G)))
        for name, p in params.items():
            p.copy_(new[name])


# --------------------------------------------------------------------------------------
# The whole model
# --------------------------------------------------------------------------------------
def _check_symmetries(symmetries) -> tuple[str, ...]:
    if symmetries is None:
        return SYMMETRIES
    if isinstance(symmetries, str):
        symmetries = (symmetries,)
    if not isinstance(symmetries, Iterable):
        raise TypeError(f"symmetries must be None or an iterable of names, got "
                        f"{type(symmetries).__name__}")
    symmetries = tuple(symmetries)
    bad = [s for s in symmetries if s not in SYMMETRIES]
    if bad:
        raise ValueError(f"unknown symmetries {bad}; choose from {', '.join(SYMMETRIES)}")
    return symmetries


def _rescale_names(model: nn.Module) -> list[tuple[str, str]]:
    params = dict(model.named_parameters())
    pairs = []
    for name, m in model.named_modules():
        for entry in getattr(m, "rescale_pairs", ()):
            if not (isinstance(entry, tuple) and len(entry) == 2):
                raise TypeError(f"{name or 'model'}.rescale_pairs must hold (name_u, name_v) "
                                f"tuples, got {entry!r}")
            nu, nv = (_prefix(name) + e for e in entry)
            if nu not in params or nv not in params:
                raise ValueError(f"rescale pair {entry} of {name or 'model'!r} does not name "
                                 "parameters of that module")
            if params[nu].shape != params[nv].shape:
                raise ValueError(f"rescale pair {nu}, {nv} must have equal shapes")
            pairs.append((nu, nv))
    return pairs


def _bool(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


class QuotientGeometry:
    """Quotient geometry of a whole model at its current weights (the base point ``w``).

    Attention pairs use the ``GL(dh)`` quotient metric, rescale pairs the ``GL(1)``
    metric, and every other trainable weight the adaptive norm ``||xi / |w| ||_2`` with a
    straight-line step (App. C.1); squared norms add. Tangent vectors are dicts
    ``{trainable parameter name: tensor shaped like it}``.

    Args:
        model: the network; its weights are copied (detached) and never modified.
        metric: ``"inv"`` (eq. 15) or ``"mix"`` (eq. 34).
        eps: relaxation ``>= 0`` added to the attention Gram matrices; with 0 every pair
            must have full rank.
        symmetries: None (all found), or a subset of ``("attention", "rescale")``.
            Attention: every ``nn.MultiheadAttention`` whose packed weights are trainable.
            Rescale: every module attribute ``rescale_pairs = ((name_u, name_v), ...)``.
        geodesic_norm: False measures attention blocks with the adaptive norm instead
            of the metric (the ablation of Figs. 9-10). Perturbations stay in the
            metric's horizontal space, but the projection onto it is the one orthogonal
            in the adaptive norm (:meth:`_GLPoint.horizontal_adaptive`), so that Auto-PGD
            ascends along the steepest feasible direction.
        second_order: False moves attention and rescale blocks on the straight line
            ``w + xi`` instead of the (second-order or exact) geodesic.

    Weights that are exactly zero among the "other" ones (and, with
    ``geodesic_norm=False``, in attention blocks) cannot move, since their adaptive scale
    ``|w|`` is zero: :meth:`horizontal`, :meth:`project`, :meth:`ascent_direction` and
    :meth:`random` set those entries to zero (:meth:`norm` counts a nonzero entry there
    as infinite).
    """

    def __init__(self, model: nn.Module, *, metric: str = "inv", eps: float = 1e-6,
                 symmetries=None, geodesic_norm: bool = True, second_order: bool = True):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        self.metric = _check_metric(metric)
        self.eps = _check_eps(eps)
        self.geodesic_norm = _bool(geodesic_norm, "geodesic_norm")
        self.second_order = _bool(second_order, "second_order")
        syms = _check_symmetries(symmetries)
        named = dict(model.named_parameters())
        self.params = {n: p.detach().clone() for n, p in named.items() if p.requires_grad}
        self._frozen = {n: p.detach() for n, p in named.items() if not p.requires_grad}
        self._attn = [m for m in (_attention_modules(model) if "attention" in syms else [])
                      if all(n in self.params for n in m.names)]
        self._rescale = [pair for pair in (_rescale_names(model) if "rescale" in syms else [])
                         if all(n in self.params for n in pair)]
        if not self._attn and not self._rescale:
            raise ValueError("model has no trainable attention (nn.MultiheadAttention) or "
                             "rescale pairs, so there is no symmetry to quotient out; use "
                             "lib.geometry.sharpness.adaptive_sharpness / AdaptiveGeometry instead")
        covered = {n for m in self._attn for n in m.names}
        covered |= {n for pair in self._rescale for n in pair}
        self._other = [n for n in self.params if n not in covered]
        # Adaptive scales of the other weights, precomputed (Auto-PGD calls norm, horizontal
        # and riemannian_gradient several times per step): 1 / |w| (0 where w == 0) as one
        # flat vector, w^2, and masks of the weights that are exactly zero (cannot move).
        others = [self.params[n] for n in self._other]
        self._other_inv = (torch.cat([torch.where(w == 0, 0.0, 1.0 / w.abs()).reshape(-1)
                                      for w in others]) if others else None)
        self._other_sq = {n: self.params[n] ** 2 for n in self._other}
        self._other_zero = {n: self.params[n] == 0 for n in self._other
                            if bool((self.params[n] == 0).any())}
        self._points = [{kind: self._make_point(*GH) for kind, GH in m.get(self.params).items()}
                        for m in self._attn]
        for nu, nv in self._rescale:
            _check_nonzero(self.params[nu], nu)
            _check_nonzero(self.params[nv], nv)

    def _make_point(self, G: Tensor, H: Tensor) -> _GLPoint:
        check_full_rank(G, H, self.eps)
        return _GLPoint(G, H, self.metric, self.eps)

    # -- helpers -------------------------------------------------------------------
    def _check_vector(self, xi, name: str = "xi") -> Mapping[str, Tensor]:
        if not isinstance(xi, Mapping):
            raise TypeError(f"{name} must be a dict {{parameter name: tensor}}, got "
                            f"{type(xi).__name__}")
        missing = [n for n in self.params if n not in xi]
        extra = [n for n in xi if n not in self.params]
        if missing or extra:
            raise ValueError(f"{name} must have exactly the trainable parameters as keys; "
                             f"missing {missing}, unexpected {extra}")
        for n, p in self.params.items():
            _check_like(p, xi[n], f"{name}[{n!r}]")
        return xi

    def _map(self, xi, attn_fn, rescale_fn, other_fn) -> dict[str, Tensor]:
        """Apply per-block maps: ``attn_fn(point, x_G, x_H)`` returns new blocks,
        ``rescale_fn(u, v, x_u, x_v)`` a new pair, ``other_fn(name, x)`` a new tensor."""
        out = dict(xi)
        for mha, points in zip(self._attn, self._points):
            blocks = {kind: attn_fn(points[kind], *xs) for kind, xs in mha.get(xi).items()}
            out.update(mha.own(blocks))
        for nu, nv in self._rescale:
            out[nu], out[nv] = rescale_fn(self.params[nu], self.params[nv], xi[nu], xi[nv])
        for n in self._other:
            out[n] = other_fn(n, xi[n])
        return out

    def _mask_other(self, name: str, x: Tensor) -> Tensor:
        zero = self._other_zero.get(name)
        return x if zero is None else torch.where(zero, torch.zeros_like(x), x)

    @staticmethod
    def _scaled(x: Tensor, c: Tensor) -> Tensor:
        # x / c with 0/0 = 0 (an unmovable zero weight with zero component).
        return torch.where(x == 0, torch.zeros_like(x), x / c)

    def _attn_sq(self, point: _GLPoint, x_G, x_H) -> Tensor:
        if self.geodesic_norm:
            return point.inner(x_G, x_H, x_G, x_H).sum()
        return ((self._scaled(x_G, point.G.abs()) ** 2).sum()
                + (self._scaled(x_H, point.H.abs()) ** 2).sum())

    # -- protocol ------------------------------------------------------------------
    def norm(self, xi: Mapping[str, Tensor]) -> Tensor:
        """Norm of the tangent vector ``xi`` at ``w`` (scalar tensor, differentiable)."""
        xi = self._check_vector(xi)
        p0 = next(iter(self.params.values()))
        total = torch.zeros((), dtype=p0.dtype, device=p0.device)
        for mha, points in zip(self._attn, self._points):
            for kind, xs in mha.get(xi).items():
                total = total + self._attn_sq(points[kind], *xs)
        for nu, nv in self._rescale:
            u, v = self.params[nu], self.params[nv]
            total = total + rescale_metric(u, v, xi[nu], xi[nv], xi[nu], xi[nv])
        if self._other:
            scaled = torch.cat([xi[n].reshape(-1) for n in self._other]) * self._other_inv
            total = total + (scaled * scaled).sum()
            for n, zero in self._other_zero.items():   # a zero weight that moves: infinite
                if bool((xi[n][zero] != 0).any()):
                    total = total + float("inf")
        return total.sqrt()

    def horizontal(self, xi: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Horizontal part of ``xi`` (other weights unchanged, except zero weights -> 0)."""
        xi = self._check_vector(xi)

        def attn(pt, x_G, x_H):
            if self.geodesic_norm:
                return pt.horizontal(x_G, x_H)
            # Adaptive norm: project orthogonally *in that norm* (zero weights, e.g. bias
            # rows at initialization, cannot move), so that the projected gradient is the
            # steepest ascent direction among horizontal vectors of the adaptive ball.
            return pt.horizontal_adaptive(x_G, x_H)
        return self._map(xi, attn, rescale_horizontal, self._mask_other)

    def riemannian_gradient(self, grad: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Riemannian gradient of the norm used by :meth:`norm` (not yet horizontal)."""
        grad = self._check_vector(grad, "grad")

        def attn(pt, g_G, g_H):
            if self.geodesic_norm:
                return pt.riemannian_gradient(g_G, g_H)
            return g_G * pt.G**2, g_H * pt.H**2
        return self._map(grad, attn, rescale_riemannian_gradient,
                         lambda n, g: g * self._other_sq[n])

    def project(self, xi: Mapping[str, Tensor], rho: float) -> dict[str, Tensor]:
        """Horizontal part of ``xi``, scaled down (if needed) into the ball of radius ``rho``."""
        rho = _check_rho(rho)
        h = self.horizontal(xi)
        n = self.norm(h)
        scale = torch.clamp(rho / n, max=1.0) if float(n) > 0 else 1.0
        return {k: t * scale for k, t in h.items()}

    def ascent_direction(self, grad: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Horizontal Riemannian gradient of unit norm (zeros if it vanishes)."""
        d = self.horizontal(self.riemannian_gradient(grad))
        n = self.norm(d)
        if not float(n) > 0:
            return {k: torch.zeros_like(t) for k, t in d.items()}
        return {k: t / n for k, t in d.items()}

    def perturb(self, xi: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """All parameters (frozen ones included, unchanged) at the end of the (approximate)
        geodesic from ``w`` with velocity ``xi``; differentiable in ``xi``."""
        xi = self._check_vector(xi)

        def attn(pt, x_G, x_H):
            if not self.second_order:
                return pt.G + x_G, pt.H + x_H
            gam_G, gam_H = pt.christoffel(x_G, x_H)
            return pt.G + x_G - gam_G / 2, pt.H + x_H - gam_H / 2

        def rescale(u, v, x_u, x_v):
            if self.second_order:
                return rescale_geodesic(u, v, x_u, x_v)
            return u + x_u, v + x_v

        out = self._map(xi, attn, rescale, lambda n, x: self.params[n] + x)
        out.update(self._frozen)
        return out

    def random(self, rho: float, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Random horizontal vector of norm ``rho`` (Gaussian in the metric's coordinates,
        then projected and rescaled)."""
        rho = _check_rho(rho)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        dev = generator.device if generator is not None else torch.device("cpu")
        z = {n: torch.randn(p.shape, generator=generator, device=dev, dtype=p.dtype).to(p.device)
             for n, p in self.params.items()}

        def attn(pt, z_G, z_H):
            if self.geodesic_norm:
                return pt.isotropic(z_G, z_H)
            return z_G * pt.G.abs(), z_H * pt.H.abs()
        xi = self._map(z, attn, lambda u, v, a, b: (a * u.abs(), b * v.abs()),
                       lambda n, x: x * self.params[n].abs())
        h = self.horizontal(xi)
        n = self.norm(h)
        return {k: t * (rho / n) for k, t in h.items()}


def _check_rho(rho) -> float:
    if isinstance(rho, bool) or not isinstance(rho, (int, float)):
        raise TypeError(f"rho must be a float, got {type(rho).__name__}")
    if not 0 < rho < float("inf"):
        raise ValueError(f"rho must be a finite number > 0, got {rho}")
    return float(rho)
