"""The training manifold of linear least squares (chapter 5 of the thesis, rows G1-G7).

Gradient descent on ``C(w) = (1/2n) sum_i r_i(w)^2`` moves the residual vector
``r = X w - y`` (length ``n``) linearly: ``r_{t+1} = (I - alpha K) r_t`` with the
kernel ``K = X X^T / n``. Running ``N`` models from random initial weights for ``T``
steps gives a cloud of points in the ``n``-dimensional prediction space; its PCA
matrix ``P(N, T)`` (eq. 5.2.3) tells how many directions that "training manifold"
really uses. As ``N -> infinity`` it has the closed form (5.2.5)

    P(T) = P1^sw(T) + P1^y(T) - P2(T),

    P1^sw = (sigma_w^2 / T) sum_{t<T} K_d^t K K_d^t,
    P1^y  = (1 / T) sum_{t<T} K_d^t y y^T K_d^t,
    P2    = K_T y y^T K_T,   K_T = (1/T) sum_{t<T} K_d^t,   K_d = I - alpha K.

Conventions (read these before comparing with the paper)
--------------------------------------------------------
* Matrices ``P1_sw``, ``P1_y``, ``P2`` and ``pca_matrix`` carry the ``1/T`` of (5.2.5)
  so that they add up to ``P(T)``. Section 5.2.2 of the paper silently drops that
  factor; the spectral formulas that follow it (the eigenvalues after 5.2.9, the bound
  5.2.10, Lemmas 5.2.1-5.2.3) are about the *summed* Gramians ``T * P1``. The functions
  implementing them say so, and return values for ``T * P1``.
* Scale of the weights. With ``K = X X^T / n`` and ``w0 ~ N(0, s^2 I_d)`` one gets
  ``E[r0 r0^T] = n s^2 K + y y^T``, while the paper writes ``sigma_w^2 K + y y^T`` (and
  ``||y||^2 ~ sigma_*^2 tr K``): its derivation uses ``K = X X^T`` there. We keep the
  paper's formulas verbatim and draw weights per coordinate with variance
  ``sigma_w^2 / n`` (and ``w* ~ N(0, sigma_*^2 / n I_d)``); this is the only choice that
  makes both the dynamics (with ``K = X X^T / n``) and the moment formulas exact.
* Real ``T``. The closed forms are analytic in ``T`` (``q^T`` for ``|q| <= 1``), so they
  accept any real ``T >= 1``; simulations need integer ``T``.

Everything is torch, float64 by default, and runs on whatever device the inputs live on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from .._checks import check_int, check_seed

DTYPE = torch.float64

__all__ = [
    "sloppy_spectrum", "sloppy_kernel", "sloppy_data", "simulate_trajectories", "pca_from_trajectories",
    "PCAParts", "pca_parts", "pca_matrix", "p1_sw_eigenvalues", "p1_sw_bound", "lyapunov_limit_p1_y",
    "lemma_5_2_1_rho", "lemma_5_2_1_bound", "lemma_5_2_2_bounds", "lemma_5_2_3_bound", "weyl_sandwich",
    "ribbon_dimension", "phase_diagram", "sgd_pca_matrix", "weight_decay_pca_matrix",
    "kernel_machines_pca_matrix", "simulate_deep_linear", "pca_over_time", "variant_phase_diagram",
]


# --------------------------------------------------------------------------- checks

def _positive(value, name: str, *, strict: bool = True) -> float:
    """A finite real number, > 0 (``strict``) or >= 0; raises TypeError/ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        else:
            raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if strict and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    if not strict and value < 0:
        raise ValueError(f"{name} must be >= 0 (it is a standard deviation or a variance), got {value}")
    return value


def _time(T, *, integer: bool = False) -> float:
    """Training time: a real (closed forms) or an integer (simulations) >= 1."""
    if integer:
        return check_int(T, "T", minimum=1)
    T = _positive(T, "T")
    if T < 1:
        raise ValueError(f"T must be >= 1 (number of gradient steps), got {T}")
    return T


def _kernel(K) -> torch.Tensor:
    """Check that K is a finite, symmetric, positive-definite (n, n) float tensor."""
    if not isinstance(K, torch.Tensor) or not torch.is_floating_point(K):
        raise TypeError("K must be a floating-point torch tensor of shape (n, n)")
    if K.ndim != 2 or K.shape[0] != K.shape[1]:
        raise ValueError(f"K must be a square (n, n) matrix, got shape {tuple(K.shape)}")
    if not bool(torch.isfinite(K).all()):
        raise ValueError("K contains NaN or infinite entries")
    scale = K.abs().max().clamp_min(1e-300)
    if not bool(((K - K.T).abs() <= 1e-10 * scale).all()):
        raise ValueError("K must be symmetric")
    return K


def _targets(y, n: int, like: torch.Tensor) -> torch.Tensor:
    if not isinstance(y, torch.Tensor) or not torch.is_floating_point(y):
        raise TypeError("y must be a floating-point torch tensor of shape (n,)")
    if y.shape != (n,):
        raise ValueError(f"y must have shape ({n},) to match K, got {tuple(y.shape)}")
    if not bool(torch.isfinite(y).all()):
        raise ValueError("y contains NaN or infinite entries")
    return y.to(device=like.device, dtype=like.dtype)


def _step_size(alpha, lam_max: float) -> float:
    """alpha in (0, 2 / lambda_1): beyond it ``|1 - alpha lambda_1| >= 1`` and GD diverges."""
    alpha = _positive(alpha, "alpha")
    # a relative slack of a few ulps: alpha = 2 / lambda_1 computed in floating point must
    # be rejected whichever way lambda_1's last bit was rounded (it differs across LAPACKs)
    if alpha * lam_max >= 2 * (1 - 1e-12):
        raise ValueError(f"alpha = {alpha} >= 2 / lambda_1(K) = {2 / lam_max:.6g}: gradient descent "
                         "diverges (|1 - alpha lambda_1| >= 1)")
    return alpha


def _eigh_kernel(K: torch.Tensor):
    """Eigenvalues (decreasing) and eigenvectors of K; K must be positive definite (assumption ii)."""
    lam, U = torch.linalg.eigh(K)
    lam, U = lam.flip(-1), U.flip(-1)
    if float(lam[-1]) <= 0:
        raise ValueError(f"K must be positive definite (rank n, i.e. n < d), smallest eigenvalue "
                         f"is {float(lam[-1]):.3g}")
    return lam, U


# --------------------------------------------------------------------------- data

def sloppy_spectrum(n: int, c: float, *, dtype=DTYPE, device=None) -> torch.Tensor:
    """Sloppy eigenvalues ``lambda_i = exp(-(i-1) c)``, i = 1..n (assumption (i)); shape (n,)."""
    n = check_int(n, "n")
    c = _positive(c, "c")
    return torch.exp(-c * torch.arange(n, dtype=dtype, device=device))


def _haar_orthogonal(n: int, generator: torch.Generator, dtype) -> torch.Tensor:
    """A Haar-random orthogonal (n, n) matrix: QR of a Gaussian with the signs of R fixed
    (without the fix QR's sign convention biases the distribution)."""
    Q, R = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=dtype))
    return Q * torch.sign(torch.diagonal(R)).where(torch.diagonal(R) != 0, torch.ones((), dtype=dtype))


def sloppy_kernel(n: int, c: float, *, seed: int = 0, dtype=DTYPE, device=None) -> torch.Tensor:
    """``K = U diag(lambda) U^T`` with Haar-random orthogonal U and the sloppy spectrum; (n, n)."""
    lam = sloppy_spectrum(n, c, dtype=dtype)
    U = _haar_orthogonal(n, torch.Generator().manual_seed(check_seed(seed)), dtype)
    return ((U * lam) @ U.T).to(device)


@dataclass
class SloppyData:
    """Inputs ``X`` (n, d), kernel ``K = X X^T / n`` (n, n), true weights ``w_star`` (d,),
    targets ``y = X w_star`` (n,)."""

    X: torch.Tensor
    K: torch.Tensor
    w_star: torch.Tensor
    y: torch.Tensor


def sloppy_data(n: int, d: int, c: float, *, sigma_star: float = 1.0, seed: int = 0, dtype=DTYPE,
                device=None) -> SloppyData:
    """Data with a prescribed sloppy kernel: ``X = sqrt(n) U diag(sqrt(lambda)) V^T``.

    U (n, n) is Haar-orthogonal and V (d, n) has orthonormal columns, so
    ``X X^T / n = U diag(lambda) U^T`` exactly. True weights ``w* ~ N(0, sigma_*^2/n I_d)``
    (see the module's note on scale) so that ``E[y y^T] = sigma_*^2 K``. Requires n < d
    (over-parameterised model, assumption (ii)).
    """
    n, d = check_int(n, "n"), check_int(d, "d")
    if n >= d:
        raise ValueError(f"the analysis needs an over-parameterised model, n < d; got n = {n}, d = {d}")
    sigma_star = _positive(sigma_star, "sigma_star", strict=False)
    lam = sloppy_spectrum(n, c, dtype=dtype)
    g = torch.Generator().manual_seed(check_seed(seed))
    U = _haar_orthogonal(n, g, dtype)
    V = _haar_orthogonal(d, g, dtype)[:, :n]
    X = math.sqrt(n) * (U * lam.sqrt()) @ V.T
    w_star = sigma_star / math.sqrt(n) * torch.randn(d, generator=g, dtype=dtype)
    y = X @ w_star
    K = (U * lam) @ U.T
    return SloppyData(*(t.to(device) for t in (X, K, w_star, y)))


# --------------------------------------------------------------------------- simulation

def simulate_trajectories(data: torch.Tensor, y: torch.Tensor, T: int, N: int, sigma_w: float,
                          alpha: float, *, seed: int = 0, batch_size: int | None = None,
                          weight_decay: float = 0.0) -> torch.Tensor:
    """Residual trajectories of N gradient-descent runs, shape (N, T, n): ``r_0 .. r_{T-1}``.

    Args:
        data: either the kernel K (n, n) -- then ``r_0 = sigma_w K^{1/2} z - y`` with
            ``z ~ N(0, I_n)``, which has the paper's moments -- or inputs X (n, d) with
            n < d -- then weights ``w_0 ~ N(0, sigma_w^2/n I_d)`` are trained in weight space
            (``w <- w - alpha (X^T r / n + weight_decay w)``), an independent route to the
            same residuals. A square input is read as K.
        y: targets (n,).
        T, N: steps per run (>= 1) and number of runs (>= 1).
        sigma_w: standard deviation of the initial weights (>= 0).
        alpha: step size, 0 < alpha < 2 / lambda_1(K).
        seed: seed of the initial weights (and of the SGD noise).
        batch_size: if given (K form only), add the SGD-as-Langevin noise of section 5.3,
            ``(alpha / sqrt(b)) K zeta_t`` with ``zeta_t ~ N(0, I_n)``, whose covariance is
            the ``(alpha^2/b) K^2`` of the paper's derivation.
        weight_decay: lambda >= 0 of the regulariser ``(lambda/2) ||w||^2``.
    """
    if not isinstance(data, torch.Tensor) or not torch.is_floating_point(data) or data.ndim != 2:
        raise TypeError("data must be a floating-point (n, n) kernel K or (n, d) input matrix X")
    n, d = data.shape
    if n > d:
        raise ValueError(f"X has n = {n} > d = {d} rows: the analysis needs n < d (pass K instead)")
    T, N = check_int(T, "T"), check_int(N, "N")
    sigma_w = _positive(sigma_w, "sigma_w", strict=False)
    lam_wd = _positive(weight_decay, "weight_decay", strict=False)
    g = torch.Generator().manual_seed(check_seed(seed))
    dev, dt = data.device, data.dtype
    if n == d:
        K = _kernel(data)
        lam, U = _eigh_kernel(K)
        alpha = _step_size(alpha, float(lam[0]) + lam_wd)
        y = _targets(y, n, K)
        root = (U * lam.sqrt()) @ U.T  # symmetric square root of K
        z = torch.randn(N, n, generator=g, dtype=dt).to(dev)
        r = sigma_w * z @ root - y
        Kd = torch.eye(n, dtype=dt, device=dev) - alpha * (K + lam_wd * torch.eye(n, dtype=dt, device=dev))
        out = torch.empty(N, T, n, dtype=dt, device=dev)
        for t in range(T):
            out[:, t] = r
            r = r @ Kd - alpha * lam_wd * y  # Kd is symmetric; the shift comes from the decay of X w
            if batch_size is not None:
                b = check_int(batch_size, "batch_size")
                zeta = torch.randn(N, n, generator=g, dtype=dt).to(dev)
                r = r + alpha / math.sqrt(b) * zeta @ K
        return out
    if batch_size is not None:
        raise ValueError("batch_size (SGD noise) is supported only with the kernel form (pass K)")
    X = data
    K = X @ X.T / n
    lam, _ = _eigh_kernel(K)
    alpha = _step_size(alpha, float(lam[0]) + lam_wd)
    y = _targets(y, n, X)
    w = sigma_w / math.sqrt(n) * torch.randn(N, d, generator=g, dtype=dt).to(dev)
    out = torch.empty(N, T, n, dtype=dt, device=dev)
    for t in range(T):
        r = w @ X.T - y
        out[:, t] = r
        w = w - alpha * (r @ X / n + lam_wd * w)
    return out


def pca_from_trajectories(residuals: torch.Tensor) -> torch.Tensor:
    """PCA matrix (5.2.3) of residual trajectories (..., N, T, n) -> (..., n, n): the
    covariance of all N*T points about their common mean (1/(NT) normalisation)."""
    if not isinstance(residuals, torch.Tensor) or residuals.ndim < 3:
        raise ValueError("residuals must be a tensor of shape (..., N, T, n)")
    pts = residuals.flatten(-3, -2)
    centred = pts - pts.mean(-2, keepdim=True)
    return centred.transpose(-1, -2) @ centred / pts.shape[-2]


# --------------------------------------------------------------------------- closed form

def _power_base(q: torch.Tensor, T) -> torch.Tensor:
    """q cleaned for ``q^T`` (see ``_geo_mean``): round-off negatives to 0, else ValueError."""
    q = torch.where((q < 0) & (q > -1e-12), torch.zeros_like(q), q)
    fractional = bool((torch.as_tensor(T) != torch.round(torch.as_tensor(T))).any())
    if fractional and bool((q < 0).any()):
        raise ValueError("a non-integer T needs alpha <= 1 / lambda_1 (with 1 - alpha lambda < 0 the "
                         "sum over t has no continuation to real T); use an integer T")
    return q


def _geo_mean(q: torch.Tensor, T: float) -> torch.Tensor:
    """``(1/T) sum_{t<T} q^t = (1 - q^T) / (T (1 - q))`` for ``-1 < q <= 1``, elementwise.

    Near q = 1 the quotient is 0/0; there we use the first-order expansion
    ``1 - (T-1)(1-q)/2``, which is exact to O((1-q)^2 T^2).

    ``q^T`` for a non-integer T is real only for q >= 0. At alpha = 1/lambda_1 the factor
    ``1 - alpha lambda_1`` is zero in exact arithmetic but may come out as -2e-16, so values
    within round-off of zero are set to zero; a genuinely negative q (alpha > 1/lambda_1)
    with a non-integer T has no real continuation and raises ValueError."""
    q = _power_base(q, T)
    one_minus = 1 - q
    near = one_minus.abs() < 1e-9
    safe = torch.where(near, torch.full_like(q, 0.5), one_minus)
    exact = (1 - torch.pow(q, T)) / (T * safe)
    return torch.where(near, 1 - (T - 1) * one_minus / 2, exact)


def _parts_eigenbasis(lam: torch.Tensor, u: torch.Tensor, T, sigma_w: float, alpha: float,
                      init_var: torch.Tensor | None = None):
    """P1^sw (diagonal, (..., n)), P1^y ((..., n, n)) and P2 ((..., n, n)) in K's eigenbasis.

    ``u`` are the coordinates of y in that basis; ``init_var`` replaces the initial residual
    covariance eigenvalues ``sigma_w^2 lambda`` (weight decay needs ``sigma_w^2 lambda(K)``
    while the dynamics use ``K + lambda I``). T may be a tensor broadcasting with lam[..., 0].
    """
    dK = 1 - alpha * lam  # eigenvalues of K_d
    Tb = T if not isinstance(T, torch.Tensor) else T[..., None]
    init = sigma_w ** 2 * lam if init_var is None else init_var
    p1_sw = init * _geo_mean(dK * dK, Tb)
    Tm = Tb if not isinstance(T, torch.Tensor) else Tb[..., None]
    p1_y = u[..., :, None] * u[..., None, :] * _geo_mean(dK[..., :, None] * dK[..., None, :], Tm)
    kt_u = _geo_mean(dK, Tb) * u  # K_T y in the eigenbasis
    p2 = kt_u[..., :, None] * kt_u[..., None, :]
    return p1_sw, p1_y, p2


@dataclass
class PCAParts:
    """Closed-form parts of P(T) (5.2.5), each (n, n), in the original coordinates."""

    P1_sw: torch.Tensor
    P1_y: torch.Tensor
    P2: torch.Tensor

    @property
    def P1(self) -> torch.Tensor:
        return self.P1_sw + self.P1_y

    @property
    def P(self) -> torch.Tensor:
        return self.P1_sw + self.P1_y - self.P2


def _setup(K, y, sigma_w, alpha):
    K = _kernel(K)
    lam, U = _eigh_kernel(K)
    y = _targets(y, K.shape[0], K)
    sigma_w = _positive(sigma_w, "sigma_w", strict=False)
    alpha = 1.0 / float(lam[0]) if alpha is None else _step_size(alpha, float(lam[0]))
    return K, lam, U, y, sigma_w, alpha


def pca_parts(K: torch.Tensor, y: torch.Tensor, T: float, *, sigma_w: float,
              alpha: float | None = None) -> PCAParts:
    """``P1^sw(T)``, ``P1^y(T)``, ``P2(T)`` of (5.2.5) (with its 1/T), each (n, n).

    Computed in K's eigenbasis, where K_d is diagonal and every sum over t is a
    geometric series, then rotated back. alpha defaults to ``1 / lambda_1(K)``."""
    K, lam, U, y, sigma_w, alpha = _setup(K, y, sigma_w, alpha)
    T = _time(T)
    sw, py, p2 = _parts_eigenbasis(lam, U.T @ y, T, sigma_w, alpha)
    rot = lambda M: U @ M @ U.T  # noqa: E731
    return PCAParts(P1_sw=(U * sw) @ U.T, P1_y=rot(py), P2=rot(p2))


def pca_matrix(K: torch.Tensor, y: torch.Tensor, T: int | float, *, sigma_w: float,
               alpha: float | None = None, N: int | None = None, seed: int = 0) -> torch.Tensor:
    """PCA matrix of the training manifold, (n, n).

    ``N=None``: the N -> infinity closed form ``P(T) = P1^sw + P1^y - P2`` (5.2.5).
    ``N`` given: the Monte-Carlo ``P(N, T)`` (5.2.3) of N simulated runs (T integer).
    """
    if N is None:
        return pca_parts(K, y, T, sigma_w=sigma_w, alpha=alpha).P
    K, lam, _, y, sigma_w, alpha = _setup(K, y, sigma_w, alpha)
    return pca_from_trajectories(simulate_trajectories(K, y, T, N, sigma_w, alpha, seed=seed))


# --------------------------------------------------------------------------- spectral results

def _lam_alpha(lam_K, alpha):
    lam = torch.as_tensor(lam_K, dtype=DTYPE) if not isinstance(lam_K, torch.Tensor) else lam_K
    if lam.ndim != 1 or not bool((lam > 0).all()):
        raise ValueError("eigenvalues of K must be a 1-D tensor of positive numbers")
    lam = lam.sort(descending=True).values
    alpha = 1.0 / float(lam[0]) if alpha is None else _step_size(alpha, float(lam[0]))
    return lam, alpha


def p1_sw_eigenvalues(lam_K, T, *, sigma_w: float, alpha: float | None = None) -> torch.Tensor:
    """Eigenvalues of the *summed* ``T * P1^sw(T)`` (formula after 5.2.9), in K's order:
    ``(sigma_w^2/alpha) (1 - (1 - alpha lambda_i)^{2T}) / (2 - alpha lambda_i)``."""
    lam, alpha = _lam_alpha(lam_K, alpha)
    T, s2 = _time(T), _positive(sigma_w, "sigma_w", strict=False) ** 2
    x = alpha * lam
    # 1 - (1 - x)^{2T} as -expm1(2T log1p(-x)): for x ~ 1e-10 the plain subtraction loses
    # about eight digits; log1p needs x < 1, so x >= 1 keeps the direct form.
    small = x < 1
    stable = -torch.expm1(2 * T * torch.log1p(-torch.where(small, x, torch.zeros_like(x))))
    direct = 1 - (1 - x) ** (2 * T)
    return s2 / alpha * torch.where(small, stable, direct) / (2 - x)


def p1_sw_bound(lam_K, T, *, sigma_w: float, alpha: float | None = None) -> torch.Tensor:
    """Upper bound (5.2.10) on the eigenvalues of ``T * P1^sw(T)``:
    ``(sigma_w^2/alpha) min(1, 2 T alpha lambda_i) / (2 - alpha lambda_i)``.

    It rests on ``1 - (1-x)^a <= min(1, a x)``, true for 0 <= x <= 1: the bound needs
    alpha <= 1 / lambda_1 (assumption iii); larger alpha raises ValueError."""
    lam, alpha = _lam_alpha(lam_K, alpha)
    if alpha * float(lam[0]) > 1 + 1e-12:
        raise ValueError("bound (5.2.10) assumes alpha <= 1 / lambda_1(K)")
    T, s2 = _time(T), _positive(sigma_w, "sigma_w", strict=False) ** 2
    return s2 / alpha * torch.clamp(2 * T * alpha * lam, max=1.0) / (2 - alpha * lam)


def lyapunov_limit_p1_y(K: torch.Tensor, y: torch.Tensor, *, alpha: float | None = None) -> torch.Tensor:
    """``lim_{T->inf} T P1^y(T) = sum_{t>=0} K_d^t y y^T K_d^t``, (n, n): the reachability
    Gramian, which solves ``K_d P K_d - P + y y^T = 0``. Entry (i, j) in K's eigenbasis is
    ``u_i u_j / (1 - d_i d_j)``."""
    K, lam, U, y, _, alpha = _setup(K, y, 0.0, alpha)
    u, dK = U.T @ y, 1 - alpha * lam
    G = u[:, None] * u[None, :] / (1 - dK[:, None] * dK[None, :])
    return U @ G @ U.T


def lemma_5_2_1_rho(lam_K, alpha: float | None = None) -> float:
    """rho of Lemma 5.2.1. ``alpha=None``: the paper's ``exp(pi^2 / (2 ln(8 kappa - 4)))``,
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
    """Upper bounds on ``lambda_j^y / lambda_1^y`` for j = 1..n, shape (n,).

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
    """Lemma 5.2.2: ``||y||^2 <= lambda_1(T P1^y) <= max_i lambda~_i ||y||^2`` with
    ``lambda~_i = sum_{t<T} (1 - alpha lambda_i)^{2t}``. Returns (lower, upper).

    The paper writes lambda~_n (the largest one when alpha <= 1/lambda_1); the maximum
    keeps the bound valid for 1/lambda_1 < alpha < 2/lambda_1 too."""
    lam, alpha = _lam_alpha(lam_K, alpha)
    T = _time(T)
    tilde = T * _geo_mean((1 - alpha * lam) ** 2, T)
    y2 = _positive(y_norm_sq, "y_norm_sq", strict=False)
    return y2, float(tilde.max()) * y2


def lemma_5_2_3_bound(lam_K, c: float, y_norm_sq: float, T, *, sigma_w: float,
                      alpha: float | None = None) -> torch.Tensor:
    """Lemma 5.2.3 (small-time branch, as proved): bounds on ``lambda_i(P1)/lambda_1(P1)``.

    With ``k* = min(ln(2 T alpha)/(2c), n/2)`` (the proof's value; the statement's
    ``ln(2T alpha/(2c))`` is a typo), rounded down to an integer >= 1:
    i <= 2k*: ``min(1, 4 rho^{-(i-1)} + sigma_w^2 / (alpha ||y||^2))``;
    else:     ``4 rho^{-(k*-1)} + sigma_w^2 min(1, 2 alpha T lambda_{i-k*+1}) / (alpha ||y||^2)``.
    The Lemma 5.2.1 factor is taken from ``lemma_5_2_1_bound`` (which is slightly weaker than
    the statement's ``4 rho^{-(i-1)}`` at even i, see there). Shape (n,)."""
    lam, alpha = _lam_alpha(lam_K, alpha)
    n, T = lam.numel(), _time(T)
    c = _positive(c, "c")
    s2, y2 = _positive(sigma_w, "sigma_w", strict=False) ** 2, _positive(y_norm_sq, "y_norm_sq")
    k = int(max(1, math.floor(min(math.log(max(2 * T * alpha, 1.0)) / (2 * c), n / 2))))
    head_y = lemma_5_2_1_bound(lam, alpha)
    idx = torch.arange(1, n + 1)
    head = torch.clamp(head_y + s2 / (alpha * y2), max=1.0)
    shifted = (idx - k).clamp(min=0, max=n - 1)  # 0-based index of lambda_{i-k*+1}
    tail = head_y[k - 1] + s2 * torch.clamp(2 * alpha * T * lam[shifted], max=1.0) / (alpha * y2)
    return torch.where(idx <= 2 * k, head, torch.minimum(tail, torch.ones(())).to(DTYPE))


def weyl_sandwich(P1: torch.Tensor, P2: torch.Tensor):
    """(5.2.7): bounds on the eigenvalues of ``P1 - P2`` (P2 PSD, rank one), decreasing order.
    Returns (lower, upper) with ``max(lambda_{i+1}^{P1}, lambda_i^{P1} - lambda^{P2}) <=
    lambda_i^P <= lambda_i^{P1}`` (lambda_{n+1} := -inf)."""
    e1 = torch.linalg.eigvalsh(P1).flip(-1)
    lp2 = torch.linalg.eigvalsh(P2)[..., -1:]
    nxt = torch.cat([e1[..., 1:], torch.full_like(e1[..., :1], -math.inf)], -1)
    return torch.maximum(nxt, e1 - lp2), e1


# --------------------------------------------------------------------------- dimension

def ribbon_dimension(values: torch.Tensor, fraction: float = 0.95, *, matrix: bool = False) -> torch.Tensor:
    """Number of principal components holding ``fraction`` of the variance (int64).

    Args:
        values: eigenvalues (..., n) in any order, or with ``matrix=True`` symmetric PSD
            matrices (..., n, n). Negative eigenvalues (round-off of a PSD matrix) count as 0.
        fraction: in (0, 1].

    Returns:
        (...,): the smallest k with ``sum of the k largest >= fraction * total``. A zero
        matrix (no variance at all, e.g. sigma_w = 0 and T = 1) has dimension 0.
    """
    if not isinstance(values, torch.Tensor) or not torch.is_floating_point(values):
        raise TypeError("values must be a floating-point tensor")
    fraction = _positive(fraction, "fraction")
    if fraction > 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if matrix:
        if values.ndim < 2 or values.shape[-1] != values.shape[-2]:
            raise ValueError(f"matrices must have shape (..., n, n), got {tuple(values.shape)}")
        values = torch.linalg.eigvalsh(values)
    ev = values.clamp_min(0).sort(-1, descending=True).values
    cum = ev.cumsum(-1)
    total = cum[..., -1:]
    # a relative slack so that fraction = 1 is not defeated by round-off in the cumsum
    need = fraction * total * (1 - 64 * torch.finfo(ev.dtype).eps)
    dim = (cum < need).sum(-1) + 1
    return torch.where(total[..., 0] > 0, dim, torch.zeros_like(dim))


def _target_gram(q: torch.Tensor, uu: torch.Tensor, dK: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """``P1^y - P2`` for unit sigma_* in K's eigenbasis, (t, C, n, n), built in place.

    Same numbers as ``_parts_eigenbasis`` (geometric means of ``q = d_i d_j`` and of ``d``),
    but the phase diagram spends most of its time in these (t, C, n, n) element-wise
    passes, so each one writes into the same buffer instead of a new temporary."""
    Tb = T[..., None, None]  # (t, 1, 1, 1)
    q = _power_base(q, T)
    one_minus = 1 - q
    near = one_minus.abs() < 1e-9
    G = torch.pow(q, Tb)
    G.neg_().add_(1).div_(torch.where(near, torch.full_like(q, 0.5), one_minus)).div_(Tb)
    if bool(near.any()):  # first-order expansion at q = 1, as in _geo_mean
        G = torch.where(near, 1 - (Tb - 1) * one_minus / 2, G)
    g = _geo_mean(dK, T[..., None])  # (t, C, n): K_T y in the eigenbasis, up to u
    flat = G.view(-1, *G.shape[-2:])
    flat.baddbmm_(g.reshape(-1, g.shape[-1], 1), g.reshape(-1, 1, g.shape[-1]), alpha=-1)
    return G.mul_(uu)


def _batched_eigvalsh(P: torch.Tensor) -> torch.Tensor:
    """``torch.linalg.eigvalsh`` of a batch (B, n, n), split over CPU threads.

    On a CPU torch hands a batch to LAPACK one matrix after another on one core, so small
    matrices leave the other cores idle; the LAPACK call releases the GIL, so a thread per
    core over contiguous chunks of the batch runs them side by side. Each matrix still
    goes through the same LAPACK routine, so the eigenvalues are bit-identical to one call.
    Other devices get the plain batched call."""
    workers = min(torch.get_num_threads(), P.shape[0] // 64)
    if P.device.type != "cpu" or workers < 2:
        return torch.linalg.eigvalsh(P)
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(workers) as pool:
        return torch.cat(list(pool.map(torch.linalg.eigvalsh, P.chunk(workers))))


def phase_diagram(T: Sequence[float], c: Sequence[float], ratio: Sequence[float], *, n: int = 50,
                  d: int = 100, sigma_w: float = 1.0, alpha: float | None = None,
                  fraction: float = 0.95, target: str = "sample", seed: int = 0,
                  device=None, chunk: int | None = None) -> torch.Tensor:
    """Ribbon dimension of the closed-form P(T) over a (T, c, sigma_*/sigma_w) grid (Fig. 5.3).

    All P matrices are built at once in K's eigenbasis (no rotation is needed: eigenvalues
    do not depend on the basis), where P1^sw is diagonal and
    ``P = diag(a(T, c)) + sigma_*^2 diag(u) H(T, c) diag(u)``; one batched ``eigvalsh`` then
    gives every spectrum. d enters only through the requirement n < d.

    Targets (``target``): the paper gives no recipe for Fig. 5.3; its Fig. 5.2 setting draws
    one data set and one w*. ``"sample"`` (default) uses one seeded draw
    ``w* ~ N(0, sigma_*^2/n I_d)``; in the eigenbasis ``U^T y = sigma_* sqrt(lambda) z`` with
    ``z ~ N(0, I_n)``, and we reuse the same z at every grid point (common random numbers,
    so the diagram is not speckled by resampling). ``"expected"`` replaces ``y y^T`` by its
    mean ``sigma_*^2 K``: P is then diagonal and loses the rank-one structure behind
    Lemma 5.2.1, so it answers a different (averaged) question.

    Returns: int64 tensor (len(T), len(c), len(ratio)).
    """
    n, d = check_int(n, "n"), check_int(d, "d")
    if n >= d:
        raise ValueError(f"the analysis needs n < d, got n = {n}, d = {d}")
    if target not in ("sample", "expected"):
        raise ValueError(f"target must be 'sample' or 'expected', got {target!r}")
    sigma_w = _positive(sigma_w, "sigma_w")
    Tt = torch.as_tensor([_time(t) for t in T], dtype=DTYPE, device=device)
    ct = torch.as_tensor([_positive(x, "c") for x in c], dtype=DTYPE, device=device)
    rt = torch.as_tensor([_positive(x, "ratio", strict=False) for x in ratio], dtype=DTYPE, device=device)
    if min(Tt.numel(), ct.numel(), rt.numel()) == 0:
        raise ValueError("T, c and ratio must be non-empty")
    alpha = 1.0 if alpha is None else _step_size(alpha, 1.0)  # lambda_1 = exp(0) = 1 for every c
    lam = torch.exp(-ct[:, None] * torch.arange(n, dtype=DTYPE, device=device))  # (C, n)
    z = torch.randn(n, generator=torch.Generator().manual_seed(check_seed(seed)), dtype=DTYPE).to(Tt.device)
    u = lam.sqrt() * z if target == "sample" else lam.sqrt()  # y coordinates for sigma_* = 1
    s2 = (rt * sigma_w) ** 2  # sigma_*^2 for each ratio
    out = torch.empty(Tt.numel(), ct.numel(), rt.numel(), dtype=torch.int64, device=Tt.device)
    dK = 1 - alpha * lam
    q = dK[:, :, None] * dK[:, None, :]  # (C, n, n): eigenvalues of K_d (x) K_d, reused for every T
    uu = u[:, :, None] * u[:, None, :]
    step = Tt.numel() if chunk is None else check_int(chunk, "chunk")
    for lo in range(0, Tt.numel(), step):  # chunks over T bound the memory of the batch
        Tc = Tt[lo:lo + step][:, None]  # (t, 1) broadcasts against the c axis
        if target == "expected":
            sw, _, _ = _parts_eigenbasis(lam, u, Tc, sigma_w, alpha)
            y_part = lam * (_geo_mean(dK * dK, Tc[..., None]) - _geo_mean(dK, Tc[..., None]) ** 2)
            ev = sw[:, :, None, :] + s2[:, None] * y_part[:, :, None, :]
        else:
            sw = sigma_w ** 2 * lam * _geo_mean(dK * dK, Tc[..., None])  # (t, C, n)
            H = _target_gram(q, uu, dK, Tc)  # (t, C, n, n)
            P = torch.empty(*H.shape[:2], rt.numel(), n, n, dtype=DTYPE, device=H.device)
            torch.mul(H[:, :, None], s2[:, None, None], out=P)  # (t, C, R, n, n)
            P.diagonal(dim1=-2, dim2=-1).add_(sw[:, :, None, :])
            ev = _batched_eigvalsh(P.flatten(0, 2)).unflatten(0, P.shape[:3])
        out[lo:lo + step] = ribbon_dimension(ev, fraction)
    return out


# --------------------------------------------------------------------------- variants (5.3)

def sgd_pca_matrix(K: torch.Tensor, y: torch.Tensor, T, *, sigma_w: float, batch_size: int,
                   alpha: float | None = None) -> torch.Tensor:
    """P(T) for SGD modelled as GD plus Langevin noise of residual covariance (alpha^2/b) K^2.

    ``P = P(T)_GD + P_xi - (1/T) sum_{t<T} K_d^t P_xi K_d^t`` with the stationary
    ``P_xi = (alpha/b) (2I - alpha K)^{-1} K`` (solves ``K_d P K_d - P + (alpha^2/b) K^2 = 0``);
    the mean residual, hence P2, is unchanged because the noise has zero mean. (n, n)."""
    K, lam, U, y, sigma_w, alpha = _setup(K, y, sigma_w, alpha)
    T, b = _time(T), check_int(batch_size, "batch_size")
    sw, py, p2 = _parts_eigenbasis(lam, U.T @ y, T, sigma_w, alpha)
    dK = 1 - alpha * lam
    p_xi = alpha / b * lam / (2 - alpha * lam)
    extra = p_xi * (1 - _geo_mean(dK * dK, T))
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
    K, lam, U, y, sigma_w, _ = _setup(K, y, sigma_w, None)  # alpha is checked against K_lambda below
    wd = _positive(weight_decay, "weight_decay", strict=False)
    lam_wd = lam + wd
    alpha = 1.0 / float(lam_wd[0]) if alpha is None else _step_size(alpha, float(lam_wd[0]))
    T = _time(T)
    u = lam / lam_wd * (U.T @ y)
    sw, py, p2 = _parts_eigenbasis(lam_wd, u, T, sigma_w, alpha, init_var=sigma_w ** 2 * lam)
    return U @ (torch.diag(sw) + py - p2) @ U.T


def kernel_machines_pca_matrix(kernels: Sequence[torch.Tensor], y: torch.Tensor, T, *, sigma_w: float,
                               alpha: float | None = None) -> torch.Tensor:
    """P(M, T) for M kernel machines pooled into one PCA (section 5.3), (n, n):
    ``(1/M) sum_m P1^(m)(T) - K_{T,M} y y^T K_{T,M}`` with ``K_{T,M} = (1/M) sum_m K_T^(m)``.
    alpha defaults to 1 / max_m lambda_1(K^(m)) (one step size for all, as in the paper)."""
    if len(kernels) == 0:
        raise ValueError("kernels must contain at least one kernel matrix")
    Ks = [_kernel(K) for K in kernels]
    eig = [_eigh_kernel(K) for K in Ks]
    lam_max = max(float(l[0]) for l, _ in eig)
    alpha = 1.0 / lam_max if alpha is None else _step_size(alpha, lam_max)
    y = _targets(y, Ks[0].shape[0], Ks[0])
    sigma_w, T = _positive(sigma_w, "sigma_w", strict=False), _time(T)
    P1 = torch.zeros_like(Ks[0])
    KT = torch.zeros_like(Ks[0])
    for lam, U in eig:
        sw, py, _ = _parts_eigenbasis(lam, U.T @ y, T, sigma_w, alpha)
        P1 += U @ (torch.diag(sw) + py) @ U.T
        KT += (U * _geo_mean(1 - alpha * lam, T)) @ U.T
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
    sigma_w, alpha = _positive(sigma_w, "sigma_w", strict=False), _positive(alpha, "alpha")
    y = _targets(y, n, X)
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


_VARIANTS = ("gd", "sgd", "weight_decay", "kernel_machines", "deep_linear")


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
    if variant not in _VARIANTS:
        raise ValueError(f"variant must be one of {_VARIANTS}, got {variant!r}")
    needs = {"sgd": ("batch_size", batch_size), "weight_decay": ("weight_decay", weight_decay),
             "kernel_machines": ("machines", machines), "deep_linear": ("width", width)}
    if variant in needs and needs[variant][1] is None:
        raise ValueError(f"variant {variant!r} needs {needs[variant][0]}=...")
    Ts = [check_int(t, "T", minimum=1) for t in T]
    cs = [_positive(x, "c") for x in c]
    if not Ts or not cs:
        raise ValueError("T and c must be non-empty")
    sigma_star = _positive(ratio, "ratio", strict=False) * _positive(sigma_w, "sigma_w")
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
