"""The ``GL(h)`` symmetry of a pair of blocks: invariant metrics, projections, geodesics.

Two parameter blocks ``G`` (n, h) and ``H`` (m, h) that enter a network only through
the product ``G H^T`` can be replaced by ``(G A^-1, H A^T)`` for any invertible ``A``
(h, h) without changing the function (Definition 3.1 of da Silva et al., 2025,
``dasilva2025hideseek``). In multi-head attention this happens twice per head: the
query/key pair and the value/output pair (Appendix C.1 of the paper; the bias rows
are included, see :func:`~lib.geometry.attention.attention_pairs`). The points of one orbit are the same
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

Two invariant metrics are implemented (chosen by ``metric_name``), with a relaxation ``eps >= 0`` added to the Gram
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

The whole-model geometry built from these pairs is :mod:`lib.geometry.quotient`; the pairs
inside ``nn.MultiheadAttention`` are found by :mod:`lib.geometry.attention`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import check_choice, check_float_tensor, check_real, check_shape_like

__all__ = [
    "METRIC_NAMES", "GLPoint", "check_gl_pair", "check_full_rank", "gl_metric", "gl_horizontal",
    "gl_vertical", "gl_riemannian_gradient", "gl_christoffel", "gl_action",
]

METRIC_NAMES = ("inv", "mix")  # the invariant metrics: eq. (15) and eq. (34) of the paper


def check_gl_pair(G, H) -> tuple[Tensor, Tensor]:
    """Return ``(G, H)`` if they are floating-point ``(..., n, h)`` and ``(..., m, h)`` tensors
    with the same ``h`` and leading (batch) dimensions; TypeError/ValueError otherwise."""
    check_float_tensor(G, "G")
    check_float_tensor(H, "H")
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
    check_gl_pair(G, H)
    eps = check_real(eps, "eps", minimum=0.0)
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


class GLPoint:
    """A base point ``(G, H)`` with the metric matrices that the operations need.

    ``K_G``, ``K_H``: the metric is ``Tr(K_G a_G^T b_G) + Tr(K_H a_H^T b_H)``;
    ``Kinv_G``, ``Kinv_H`` their inverses (Riemannian gradient, Christoffel term).
    Built once per base point, so repeated projections (Auto-PGD) reuse it.
    """

    def __init__(self, G: Tensor, H: Tensor, metric_name: str, eps: float):
        self.G, self.H = check_gl_pair(G, H)
        self.metric_name = check_choice(metric_name, "metric_name", METRIC_NAMES)
        self.eps = check_real(eps, "eps", minimum=0.0)
        self.P, self.Q = _gram(G, 0.0), _gram(H, 0.0)
        S_G, S_H = _gram(G, self.eps), _gram(H, self.eps)
        if metric_name == "inv":
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
        if self.metric_name == "inv":
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
        if self.metric_name == "mix":
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


def _point(G, H, metric_name, eps) -> GLPoint:
    # Without relaxation a singular Gram matrix would surface as an obscure Cholesky error.
    if check_real(eps, "eps", minimum=0.0) == 0:
        check_full_rank(G, H, eps)
    return GLPoint(G, H, metric_name, eps)


def _at_point(method: str, G, H, names: tuple[str, str], x_G, x_H, metric_name, eps):
    """Check a base point and a pair of tangent blocks, then apply ``GLPoint.<method>``."""
    check_gl_pair(G, H)
    _check_vectors(G, H, [(names[0], x_G), (names[1], x_H)])
    return getattr(_point(G, H, metric_name, eps), method)(x_G, x_H)


def _check_vectors(G, H, pairs) -> None:
    for name, x in pairs:
        check_shape_like(G if name.endswith("G") else H, x, name)


# --------------------------------------------------------------------------------------
# GL(h) pairs: public, batched functions
# --------------------------------------------------------------------------------------
def gl_metric(G: Tensor, H: Tensor, a_G: Tensor, a_H: Tensor, b_G: Tensor, b_H: Tensor, *,
              metric_name: str = "inv", eps: float = 0.0) -> Tensor:
    """Inner product ``<a, b>`` of two tangent vectors at ``(G, H)``.

    Args:
        G: ``(..., n, h)``; H: ``(..., m, h)`` (leading dims: heads, batched).
        a_G, b_G: ``(..., n, h)``; a_H, b_H: ``(..., m, h)``.
        metric_name: ``"inv"`` (eq. 15) or ``"mix"`` (eq. 34).
        eps: relaxation added to both Gram matrices (>= 0).

    Returns:
        ``(...)`` inner products.
    """
    check_gl_pair(G, H)
    _check_vectors(G, H, [("a_G", a_G), ("a_H", a_H), ("b_G", b_G), ("b_H", b_H)])
    return _point(G, H, metric_name, eps).inner(a_G, a_H, b_G, b_H)


def gl_horizontal(G: Tensor, H: Tensor, xi_G: Tensor, xi_H: Tensor, *, metric_name: str = "inv",
                  eps: float = 0.0) -> tuple[Tensor, Tensor]:
    """Project ``(xi_G, xi_H)`` onto the horizontal space (g-orthogonal to all vertical vectors).

    Returns ``(xi_G + G L, xi_H - H L^T)`` with ``L`` (..., h, h) from the O(h^3)
    eigen-solve of :class:`GLPoint` (``L^T`` solves the paper's Sylvester equation).

    Args:
        G: ``(..., n, h)``; H: ``(..., m, h)``; xi_G, xi_H: same shapes.
        metric_name: ``"inv"`` or ``"mix"``; eps: relaxation (>= 0).

    Returns:
        ``(h_G, h_H)`` shaped like ``(xi_G, xi_H)``.
    """
    return _at_point("horizontal", G, H, ("xi_G", "xi_H"), xi_G, xi_H, metric_name, eps)


def gl_vertical(G: Tensor, H: Tensor, X: Tensor) -> tuple[Tensor, Tensor]:
    """Vertical vector ``(-G X, H X^T)``: the velocity at ``t = 0`` of the orbit
    ``t -> (G A_t^-1, H A_t^T)`` with ``A_t = I + t X``.

    Args:
        G: ``(..., n, h)``; H: ``(..., m, h)``; X: ``(..., h, h)``.

    Returns:
        ``(-G X, H X^T)``, shapes ``(..., n, h)`` and ``(..., m, h)``.
    """
    check_gl_pair(G, H)
    check_float_tensor(X, "X")
    if X.shape[-2:] != (G.shape[-1],) * 2:
        raise ValueError(f"X must be (..., h, h) with h = {G.shape[-1]}, got {tuple(X.shape)}")
    return -G @ X, H @ X.mT


def gl_riemannian_gradient(G: Tensor, H: Tensor, grad_G: Tensor, grad_H: Tensor, *,
                           metric_name: str = "inv", eps: float = 0.0) -> tuple[Tensor, Tensor]:
    """Riemannian gradient: the vector ``r`` with ``g(r, v) = <grad, v>_Euclidean`` for all v.

    "inv": ``(grad_G S_G, grad_H S_H)``; "mix": ``(grad_G S_H^-1, grad_H S_G^-1)``
    (``S_G = G^T G + eps I``, ``S_H = H^T H + eps I``).

    Args:
        G: ``(..., n, h)``; H: ``(..., m, h)``; grad_G, grad_H: Euclidean gradients, same shapes.

    Returns:
        ``(r_G, r_H)`` shaped like the gradients.
    """
    return _at_point("riemannian_gradient", G, H, ("grad_G", "grad_H"), grad_G, grad_H, metric_name, eps)


def gl_christoffel(G: Tensor, H: Tensor, xi_G: Tensor, xi_H: Tensor, *, metric_name: str = "inv",
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
    return _at_point("christoffel", G, H, ("xi_G", "xi_H"), xi_G, xi_H, metric_name, eps)


def gl_action(G: Tensor, H: Tensor, A: Tensor) -> tuple[Tensor, Tensor]:
    """Group action ``(G, H) -> (G A^-1, H A^T)``; it leaves ``G H^T`` unchanged.

    Args:
        G: ``(..., n, h)``; H: ``(..., m, h)``; A: invertible ``(..., h, h)``.

    Returns:
        ``(G A^-1, H A^T)``.
    """
    check_gl_pair(G, H)
    check_float_tensor(A, "A")
    if A.shape[-2:] != (G.shape[-1],) * 2:
        raise ValueError(f"A must be (..., h, h) with h = {G.shape[-1]}, got {tuple(A.shape)}")
    return torch.linalg.solve(A, G, left=False), H @ A.mT
