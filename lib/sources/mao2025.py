"""Mao (2025), ``mao2025hidden``: the spectral results of chapter 5 (section 5.2.2).

Eigenvalues and bounds for the closed-form PCA matrix ``P(T) = P1^sw + P1^y - P2`` of the
training manifold of linear least squares (eq. 5.2.5), which :mod:`lib.manifolds.linear`
computes: the eigenvalues of ``T P1^sw`` (after eq. 5.2.9) and their bound (5.2.10), the
Lyapunov limit of ``T P1^y``, Lemmas 5.2.1-5.2.3 and the Weyl sandwich (5.2.7).

As the module docstring of :mod:`lib.manifolds.linear` explains, these results are about
the *summed* Gramians ``T * P1`` (section 5.2.2 drops the ``1/T`` of eq. 5.2.5); each
function says which it returns. Inputs ``lam_K`` are the eigenvalues of ``K`` (any order,
positive), a 1-D tensor or a sequence.
"""

from __future__ import annotations

import math

import torch

from .._checks import check_positive, check_real
from ..manifolds.linear import (DTYPE, check_step_size, check_time, geometric_series_mean,
                                kernel_setup)

__all__ = ["p1_sw_eigenvalues", "p1_sw_bound", "lyapunov_limit_p1_y", "lemma_5_2_1_rho",
           "lemma_5_2_1_bound", "lemma_5_2_2_bounds", "lemma_5_2_3_bound", "weyl_sandwich"]


def _lam_alpha(lam_K, alpha):
    """Eigenvalues of K ``(n,)`` (decreasing, checked positive) and the step size (default
    ``1 / lambda_1``)."""
    lam = torch.as_tensor(lam_K, dtype=DTYPE) if not isinstance(lam_K, torch.Tensor) else lam_K
    if lam.ndim != 1 or not bool((lam > 0).all()):
        raise ValueError("eigenvalues of K must be a 1-D tensor of positive numbers")
    lam = lam.sort(descending=True).values
    alpha = 1.0 / float(lam[0]) if alpha is None else check_step_size(alpha, float(lam[0]))
    return lam, alpha


def p1_sw_eigenvalues(lam_K, T, *, sigma_w: float, alpha: float | None = None) -> torch.Tensor:
    """Mao (2025), formula after eq. (5.2.9): eigenvalues of the *summed* ``T * P1^sw(T)``, in K's order:
    ``(sigma_w^2/alpha) (1 - (1 - alpha lambda_i)^{2T}) / (2 - alpha lambda_i)``."""
    lam, alpha = _lam_alpha(lam_K, alpha)
    T, s2 = check_time(T), check_real(sigma_w, "sigma_w", minimum=0.0) ** 2
    x = alpha * lam
    # 1 - (1 - x)^{2T} as -expm1(2T log1p(-x)): for x ~ 1e-10 the plain subtraction loses
    # about eight digits; log1p needs x < 1, so x >= 1 keeps the direct form.
    small = x < 1
    stable = -torch.expm1(2 * T * torch.log1p(-torch.where(small, x, torch.zeros_like(x))))
    direct = 1 - (1 - x) ** (2 * T)
    return s2 / alpha * torch.where(small, stable, direct) / (2 - x)


def p1_sw_bound(lam_K, T, *, sigma_w: float, alpha: float | None = None) -> torch.Tensor:
    """Mao (2025), eq. (5.2.10): upper bound on the eigenvalues of ``T * P1^sw(T)``:
    ``(sigma_w^2/alpha) min(1, 2 T alpha lambda_i) / (2 - alpha lambda_i)``.

    It rests on ``1 - (1-x)^a <= min(1, a x)``, true for 0 <= x <= 1: the bound needs
    alpha <= 1 / lambda_1 (assumption iii); larger alpha raises ValueError."""
    lam, alpha = _lam_alpha(lam_K, alpha)
    if alpha * float(lam[0]) > 1 + 1e-12:
        raise ValueError("bound (5.2.10) assumes alpha <= 1 / lambda_1(K)")
    T, s2 = check_time(T), check_real(sigma_w, "sigma_w", minimum=0.0) ** 2
    return s2 / alpha * torch.clamp(2 * T * alpha * lam, max=1.0) / (2 - alpha * lam)


def lyapunov_limit_p1_y(K: torch.Tensor, y: torch.Tensor, *, alpha: float | None = None) -> torch.Tensor:
    """Mao (2025), section 5.2.2: ``lim_{T->inf} T P1^y(T) = sum_{t>=0} K_d^t y y^T K_d^t``, (n, n): the reachability
    Gramian, which solves ``K_d P K_d - P + y y^T = 0``. Entry (i, j) in K's eigenbasis is
    ``u_i u_j / (1 - d_i d_j)``."""
    K, lam, U, y, _, alpha = kernel_setup(K, y, 0.0, alpha)
    u, dK = U.T @ y, 1 - alpha * lam
    G = u[:, None] * u[None, :] / (1 - dK[:, None] * dK[None, :])
    return U @ G @ U.T


def lemma_5_2_1_rho(lam_K, alpha: float | None = None) -> float:
    """Mao (2025), Lemma 5.2.1: its rho. ``alpha=None``: the paper's ``exp(pi^2 / (2 ln(8 kappa - 4)))``,
    kappa = lambda_1/lambda_n (valid for alpha <= 1/lambda_1). With alpha: the sharper
    ``exp(pi^2 / (2 ln(4 b/a)))`` with the exact ratio b/a of the Cayley-transformed
    spectrum ``alpha lambda / (2 - alpha lambda)`` (the step before the paper's bound)."""
    lam, al = _lam_alpha(lam_K, alpha)
    kappa = float(lam[0] / lam[-1])
    if alpha is None:
        arg = 8 * kappa - 4
    else:
        f = lambda x: al * x / (2 - al * x)  # noqa: E731
        arg = 4 * float(f(lam[0]) / f(lam[-1]))
    if arg <= 1:  # kappa == 1: a single eigenvalue, no decay statement is needed
        return math.inf
    return math.exp(math.pi ** 2 / (2 * math.log(arg)))


def lemma_5_2_1_bound(lam_K, alpha: float | None = None) -> torch.Tensor:
    """Mao (2025), Lemma 5.2.1: upper bounds on ``lambda_j^y / lambda_1^y`` for j = 1..n, shape (n,).

    The lemma bounds odd indices j = 1 + 2i by ``4 rho^{-2i} / (1 + rho^{-4i})^2``; an even
    index j = 2i + 2 inherits the bound of j - 1 because eigenvalues are decreasing."""
    lam, _ = _lam_alpha(lam_K, alpha)
    rho = lemma_5_2_1_rho(lam, alpha)
    i = torch.div(torch.arange(lam.numel()), 2, rounding_mode="floor").to(DTYPE)
    if math.isinf(rho):
        return torch.where(i == 0, 1.0, 0.0).to(DTYPE)
    q = rho ** (-2 * i)
    return torch.clamp(4 * q / (1 + q * q) ** 2, max=1.0)


def lemma_5_2_2_bounds(lam_K, y_norm_sq: float, T, *, alpha: float | None = None):
    """Mao (2025), Lemma 5.2.2: ``||y||^2 <= lambda_1(T P1^y) <= max_i lambda~_i ||y||^2`` with
    ``lambda~_i = sum_{t<T} (1 - alpha lambda_i)^{2t}``. Returns (lower, upper).

    The paper writes lambda~_n (the largest one when alpha <= 1/lambda_1); the maximum
    keeps the bound valid for 1/lambda_1 < alpha < 2/lambda_1 too."""
    lam, alpha = _lam_alpha(lam_K, alpha)
    T = check_time(T)
    tilde = T * geometric_series_mean((1 - alpha * lam) ** 2, T)
    y2 = check_real(y_norm_sq, "y_norm_sq", minimum=0.0)
    return y2, float(tilde.max()) * y2


def lemma_5_2_3_bound(lam_K, c: float, y_norm_sq: float, T, *, sigma_w: float,
                      alpha: float | None = None) -> torch.Tensor:
    """Mao (2025), Lemma 5.2.3 (small-time branch, as proved): bounds on ``lambda_i(P1)/lambda_1(P1)``.

    With ``k* = min(ln(2 T alpha)/(2c), n/2)`` (the proof's value; the statement's
    ``ln(2T alpha/(2c))`` is a typo), rounded down to an integer >= 1:
    i <= 2k*: ``min(1, 4 rho^{-(i-1)} + sigma_w^2 / (alpha ||y||^2))``;
    else:     ``4 rho^{-(k*-1)} + sigma_w^2 min(1, 2 alpha T lambda_{i-k*+1}) / (alpha ||y||^2)``.
    The Lemma 5.2.1 factor is taken from ``lemma_5_2_1_bound`` (which is slightly weaker than
    the statement's ``4 rho^{-(i-1)}`` at even i, see there). Shape (n,)."""
    lam, alpha = _lam_alpha(lam_K, alpha)
    n, T = lam.numel(), check_time(T)
    c = check_positive(c, "c")
    s2, y2 = check_real(sigma_w, "sigma_w", minimum=0.0) ** 2, check_positive(y_norm_sq, "y_norm_sq")
    k = int(max(1, math.floor(min(math.log(max(2 * T * alpha, 1.0)) / (2 * c), n / 2))))
    head_y = lemma_5_2_1_bound(lam, alpha)
    idx = torch.arange(1, n + 1)
    head = torch.clamp(head_y + s2 / (alpha * y2), max=1.0)
    shifted = (idx - k).clamp(min=0, max=n - 1)  # 0-based index of lambda_{i-k*+1}
    tail = head_y[k - 1] + s2 * torch.clamp(2 * alpha * T * lam[shifted], max=1.0) / (alpha * y2)
    return torch.where(idx <= 2 * k, head, torch.minimum(tail, torch.ones(())).to(DTYPE))


def weyl_sandwich(P1: torch.Tensor, P2: torch.Tensor):
    """Mao (2025), eq. (5.2.7) (Weyl's inequalities): bounds on the eigenvalues of ``P1 - P2`` (P2 PSD, rank one), decreasing order.
    Returns (lower, upper) with ``max(lambda_{i+1}^{P1}, lambda_i^{P1} - lambda^{P2}) <=
    lambda_i^P <= lambda_i^{P1}`` (lambda_{n+1} := -inf)."""
    e1 = torch.linalg.eigvalsh(P1).flip(-1)
    lp2 = torch.linalg.eigvalsh(P2)[..., -1:]
    nxt = torch.cat([e1[..., 1:], torch.full_like(e1[..., :1], -math.inf)], -1)
    return torch.maximum(nxt, e1 - lp2), e1
