"""Training recipes beyond plain gradient descent (Mao 2025, section 5.3).

The training manifold of linear least squares (:mod:`lib.manifolds.linear`) under SGD
(modelled as Langevin noise), weight decay, several kernel machines pooled into one PCA,
and two-layer (deep) linear networks, whose residual dynamics are no longer linear and are
simulated; :func:`variant_phase_diagram` gives the ribbon dimension of each over a
``(T, c)`` grid. Same conventions as :mod:`lib.manifolds.linear` (float64, ``1/T``
normalisation, weights of per-coordinate variance ``sigma_w^2 / n``).
"""

from __future__ import annotations

from typing import Sequence

import torch

from .._checks import check_int, check_positive, check_real, check_seed
from .linear import (check_kernel, check_step_size, check_targets, check_time, eigh_kernel,
                     geometric_series_mean, kernel_setup, pca_matrix, pca_parts_eigenbasis,
                     ribbon_dimension, sloppy_data, sloppy_kernel)

__all__ = ["sgd_pca_matrix", "weight_decay_pca_matrix", "kernel_machines_pca_matrix",
           "simulate_deep_linear", "pca_over_time", "variant_phase_diagram", "VARIANTS"]


def sgd_pca_matrix(K: torch.Tensor, y: torch.Tensor, T, *, sigma_w: float, batch_size: int,
                   alpha: float | None = None) -> torch.Tensor:
    """P(T) for SGD modelled as GD plus Langevin noise of residual covariance (alpha^2/b) K^2.

    ``P = P(T)_GD + P_xi - (1/T) sum_{t<T} K_d^t P_xi K_d^t`` with the stationary
    ``P_xi = (alpha/b) (2I - alpha K)^{-1} K`` (solves ``K_d P K_d - P + (alpha^2/b) K^2 = 0``);
    the mean residual, hence P2, is unchanged because the noise has zero mean. (n, n)."""
    K, lam, U, y, sigma_w, alpha = kernel_setup(K, y, sigma_w, alpha)
    T, b = check_time(T), check_int(batch_size, "batch_size")
    sw, py, p2 = pca_parts_eigenbasis(lam, U.T @ y, T, sigma_w, alpha)
    dK = 1 - alpha * lam
    p_xi = alpha / b * lam / (2 - alpha * lam)
    extra = p_xi * (1 - geometric_series_mean(dK * dK, T))
    return U @ (torch.diag(sw + extra) + py - p2) @ U.T


def weight_decay_pca_matrix(K: torch.Tensor, y: torch.Tensor, T, *, sigma_w: float,
                            weight_decay: float, alpha: float | None = None) -> torch.Tensor:
    """P(T) for GD on ``C(w) + (lambda/2)||w||^2``, (n, n).

    The residuals obey ``r_{t+1} = (I - alpha K_lambda) r_t - alpha lambda y`` with
    ``K_lambda = K + lambda I``: an affine map with fixed point ``r* = -lambda K_lambda^{-1} y``.
    PCA ignores translations, so P is the closed form for the shifted residual ``r - r*``:
    dynamics ``K_lambda``, initial covariance still ``sigma_w^2 K`` (the init does not see
    lambda) and effective target ``K K_lambda^{-1} y``. The paper's "replace K by K_lambda"
    is the approximation that drops these two corrections (exact as lambda -> 0)."""
    K, lam, U, y, sigma_w, _ = kernel_setup(K, y, sigma_w, None)  # alpha is checked against K_lambda below
    wd = check_real(weight_decay, "weight_decay", minimum=0.0)
    lam_wd = lam + wd
    alpha = 1.0 / float(lam_wd[0]) if alpha is None else check_step_size(alpha, float(lam_wd[0]))
    T = check_time(T)
    u = lam / lam_wd * (U.T @ y)
    sw, py, p2 = pca_parts_eigenbasis(lam_wd, u, T, sigma_w, alpha, init_var=sigma_w ** 2 * lam)
    return U @ (torch.diag(sw) + py - p2) @ U.T


def kernel_machines_pca_matrix(kernels: Sequence[torch.Tensor], y: torch.Tensor, T, *, sigma_w: float,
                               alpha: float | None = None) -> torch.Tensor:
    """P(M, T) for M kernel machines pooled into one PCA (section 5.3), (n, n):
    ``(1/M) sum_m P1^(m)(T) - K_{T,M} y y^T K_{T,M}`` with ``K_{T,M} = (1/M) sum_m K_T^(m)``.
    alpha defaults to 1 / max_m lambda_1(K^(m)) (one step size for all, as in the paper)."""
    if len(kernels) == 0:
        raise ValueError("kernels must contain at least one kernel matrix")
    Ks = [check_kernel(K) for K in kernels]
    eig = [eigh_kernel(K) for K in Ks]
    lam_max = max(float(l[0]) for l, _ in eig)
    alpha = 1.0 / lam_max if alpha is None else check_step_size(alpha, lam_max)
    y = check_targets(y, Ks[0].shape[0], Ks[0])
    sigma_w, T = check_real(sigma_w, "sigma_w", minimum=0.0), check_time(T)
    P1 = torch.zeros_like(Ks[0])
    KT = torch.zeros_like(Ks[0])
    for lam, U in eig:
        sw, py, _ = pca_parts_eigenbasis(lam, U.T @ y, T, sigma_w, alpha)
        P1 += U @ (torch.diag(sw) + py) @ U.T
        KT += (U * geometric_series_mean(1 - alpha * lam, T)) @ U.T
    m = len(Ks)
    kty = KT @ y / m
    return P1 / m - torch.outer(kty, kty)


def simulate_deep_linear(X: torch.Tensor, y: torch.Tensor, T: int, N: int, *, width: int,
                         sigma_w: float, alpha: float, seed: int = 0) -> torch.Tensor:
    """Residual trajectories (N, T, n) of two-layer linear nets ``y_hat = X V^T u`` (u: (p,),
    V: (p, d)) trained by GD on ``(1/2n) sum r^2`` from balanced initialisations.

    Balanced init (``V V^T = u u^T`` up to the scale): ``u = s a``, ``V = s a b^T`` with unit
    a ~ Uniform(sphere^{p-1}), b ~ Uniform(sphere^{d-1}); so ``V V^T = s^2 a a^T = u u^T``.
    s is chosen so the end-to-end weights ``w = V^T u = s^2 b`` have ``E||w||^2`` as a
    linear model with per-coordinate variance sigma_w^2/n. The residual dynamics are no
    longer linear: the kernel ``X (V^T V + ||u||^2 I) X^T / n`` moves with the weights."""
    if not isinstance(X, torch.Tensor) or X.ndim != 2:
        raise TypeError("X must be an (n, d) floating-point tensor")
    n, d = X.shape
    if n >= d:
        raise ValueError(f"the analysis needs n < d, got n = {n}, d = {d}")
    T, N, p = check_int(T, "T"), check_int(N, "N"), check_int(width, "width")
    sigma_w, alpha = check_real(sigma_w, "sigma_w", minimum=0.0), check_positive(alpha, "alpha")
    y = check_targets(y, n, X)
    g = torch.Generator().manual_seed(check_seed(seed))
    dt, dev = X.dtype, X.device
    a = torch.nn.functional.normalize(torch.randn(N, p, generator=g, dtype=dt), dim=-1).to(dev)
    b = torch.nn.functional.normalize(torch.randn(N, d, generator=g, dtype=dt), dim=-1).to(dev)
    s = (sigma_w ** 2 * d / n) ** 0.25
    u, V = s * a, s * a[:, :, None] * b[:, None, :]
    out = torch.empty(N, T, n, dtype=dt, device=dev)
    for t in range(T):
        w = torch.einsum("npd,np->nd", V, u)
        r = w @ X.T - y
        if not bool(torch.isfinite(r).all()):
            raise ValueError("deep linear GD diverged; lower alpha")
        out[:, t] = r
        gw = r @ X / n  # dC/dw, then the chain rule through w = V^T u
        gu = torch.einsum("npd,nd->np", V, gw)
        gV = u[:, :, None] * gw[:, None, :]
        u, V = u - alpha * gu, V - alpha * gV
    return out


def pca_over_time(residuals: torch.Tensor, times: Sequence[int]) -> torch.Tensor:
    """PCA matrices ``P(N, T)`` (5.2.3) of the first T steps, for every T in ``times``.

    Args:
        residuals: (N, T_max, n) trajectories, e.g. from ``simulate_deep_linear``.
        times: integers in [1, T_max].

    Returns:
        (len(times), n, n), equal to ``pca_from_trajectories(residuals[:, :T])`` for each T,
        from one pass of prefix sums instead of one pass per T. The points are first shifted
        by their overall mean (PCA ignores shifts) so the second moments do not cancel.
    """
    if not isinstance(residuals, torch.Tensor) or residuals.ndim != 3:
        raise ValueError("residuals must be a tensor of shape (N, T, n)")
    N, T_max, n = residuals.shape
    ts = [check_int(t, "T", minimum=1) for t in times]
    if not ts or max(ts) > T_max:
        raise ValueError(f"times must be a non-empty list of integers in [1, {T_max}], got {list(times)}")
    r = residuals - residuals.flatten(0, 1).mean(0)
    first = r.sum(0).cumsum(0)  # (T_max, n): sum over runs and steps < T
    second = torch.einsum("ntj,ntk->tjk", r, r).cumsum(0)  # (T_max, n, n)
    idx = torch.as_tensor(ts, device=r.device) - 1
    count = (idx + 1).to(r.dtype)[:, None] * N
    mean = first[idx] / count
    return second[idx] / count[..., None] - mean[:, :, None] * mean[:, None, :]


VARIANTS = ("gd", "sgd", "weight_decay", "kernel_machines", "deep_linear")


def variant_phase_diagram(T: Sequence[int], c: Sequence[float], *, ratio: float, variant: str = "gd",
                          n: int = 50, d: int = 100, sigma_w: float = 1.0, fraction: float = 0.95,
                          seed: int = 0, batch_size: int | None = None, weight_decay: float | None = None,
                          machines: int | None = None, width: int | None = None, runs: int = 200,
                          alpha: float | None = None) -> torch.Tensor:
    """Ribbon dimension over a (T, c) grid for one training recipe of section 5.3.

    For each slope c one data set ``sloppy_data(n, d, c, sigma_star=ratio * sigma_w, seed)``
    is drawn (the same seed for every c: common random numbers), and P(T) comes from

    * ``"gd"``: ``pca_matrix`` (closed form);
    * ``"sgd"``: ``sgd_pca_matrix`` with ``batch_size``;
    * ``"weight_decay"``: ``weight_decay_pca_matrix`` with ``weight_decay``;
    * ``"kernel_machines"``: ``kernel_machines_pca_matrix`` with ``machines`` sloppy kernels
      of slope c (seeds ``seed .. seed + machines - 1``);
    * ``"deep_linear"``: ``runs`` simulated two-layer linear nets of hidden ``width``
      (``simulate_deep_linear``, alpha defaults to 0.5) and ``pca_over_time``.

    T must hold integers (the simulated variant needs them; the others accept them). The
    closed forms rotate K back from its eigenbasis, so K must stay numerically positive
    definite: keep ``c (n - 1)`` below about 30 (``phase_diagram`` has no such limit).
    alpha defaults to each function's own default (1 / lambda_1). Returns int64 (len(T), len(c)).
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    needs = {"sgd": ("batch_size", batch_size), "weight_decay": ("weight_decay", weight_decay),
             "kernel_machines": ("machines", machines), "deep_linear": ("width", width)}
    if variant in needs and needs[variant][1] is None:
        raise ValueError(f"variant {variant!r} needs {needs[variant][0]}=...")
    Ts = [check_int(t, "T", minimum=1) for t in T]
    cs = [check_positive(x, "c") for x in c]
    if not Ts or not cs:
        raise ValueError("T and c must be non-empty")
    sigma_star = check_real(ratio, "ratio", minimum=0.0) * check_positive(sigma_w, "sigma_w")
    out = torch.empty(len(Ts), len(cs), dtype=torch.int64)
    for j, cv in enumerate(cs):
        data = sloppy_data(n, d, cv, sigma_star=sigma_star, seed=seed)
        if variant == "deep_linear":
            R = simulate_deep_linear(data.X, data.y, max(Ts), check_int(runs, "runs"), width=width,
                                     sigma_w=sigma_w, alpha=0.5 if alpha is None else alpha, seed=seed)
            P = pca_over_time(R, Ts)
        else:
            def one(t):
                if variant == "gd":
                    return pca_matrix(data.K, data.y, t, sigma_w=sigma_w, alpha=alpha)
                if variant == "sgd":
                    return sgd_pca_matrix(data.K, data.y, t, sigma_w=sigma_w, batch_size=batch_size, alpha=alpha)
                if variant == "weight_decay":
                    return weight_decay_pca_matrix(data.K, data.y, t, sigma_w=sigma_w,
                                                   weight_decay=weight_decay, alpha=alpha)
                kernels = [sloppy_kernel(n, cv, seed=seed + m) for m in range(check_int(machines, "machines"))]
                return kernel_machines_pca_matrix(kernels, data.y, t, sigma_w=sigma_w, alpha=alpha)
            P = torch.stack([one(t) for t in Ts])
        out[:, j] = ribbon_dimension(P, fraction, matrix=True).cpu()
    return out
