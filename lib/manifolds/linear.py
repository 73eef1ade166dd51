"""The training manifold of linear least squares (chapter 5 of Mao 2025, rows G1-G7).

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
  5.2.10, Lemmas 5.2.1-5.2.3, in :mod:`lib.sources.mao2025`) are about the *summed*
  Gramians ``T * P1``. The functions implementing them say so, and return values for
  ``T * P1``.
* Scale of the weights. With ``K = X X^T / n`` and ``w0 ~ N(0, s^2 I_d)`` one gets
  ``E[r0 r0^T] = n s^2 K + y y^T``, while the paper writes ``sigma_w^2 K + y y^T`` (and
  ``||y||^2 ~ sigma_*^2 tr K``): its derivation uses ``K = X X^T`` there. We keep the
  paper's formulas verbatim and draw weights per coordinate with variance
  ``sigma_w^2 / n`` (and ``w* ~ N(0, sigma_*^2 / n I_d)``); this is the only choice that
  makes both the dynamics (with ``K = X X^T / n``) and the moment formulas exact.
* Real ``T``. The closed forms are analytic in ``T`` (``q^T`` for ``|q| <= 1``), so they
  accept any real ``T >= 1``; simulations need integer ``T``.

The training recipes of section 5.3 (SGD, weight decay, kernel machines, deep linear
networks) are in :mod:`lib.manifolds.linear_variants`. Everything is torch, float64 by
default, and runs on whatever device the inputs live on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from .._checks import check_float_tensor, check_int, check_positive, check_real, check_seed, check_square_matrix

DTYPE = torch.float64

__all__ = [
    "sloppy_spectrum", "sloppy_kernel", "sloppy_data", "SloppyData", "simulate_trajectories",
    "pca_from_trajectories", "PCAParts", "pca_parts", "pca_parts_eigenbasis", "pca_matrix",
    "geometric_series_mean", "ribbon_dimension", "phase_diagram", "check_time", "check_kernel",
    "check_targets", "check_step_size", "eigh_kernel", "kernel_setup",
]


# --------------------------------------------------------------------------- checks

def check_time(T) -> float:
    """Training time ``T`` of a closed form: a real number ``>= 1`` (simulations take integers,
    checked by ``check_int``); TypeError/ValueError naming ``T`` otherwise."""
    return check_real(T, "T", minimum=1.0)


def check_kernel(K) -> torch.Tensor:
    """Return ``K`` if it is a finite, symmetric ``(n, n)`` float tensor (TypeError/ValueError
    naming ``K`` otherwise); positive definiteness is checked by :func:`eigh_kernel`."""
    check_square_matrix(K, "K")
    scale = K.abs().max().clamp_min(1e-300)
    if not bool(((K - K.T).abs() <= 1e-10 * scale).all()):
        raise ValueError("K must be symmetric")
    return K


def check_targets(y, n: int, like: torch.Tensor) -> torch.Tensor:
    """Return the targets ``y`` ``(n,)`` (finite floats) on ``like``'s device and dtype."""
    if not isinstance(y, torch.Tensor) or not torch.is_floating_point(y):
        raise TypeError("y must be a floating-point torch tensor of shape (n,)")
    if y.shape != (n,):
        raise ValueError(f"y must have shape ({n},) to match K, got {tuple(y.shape)}")
    if not bool(torch.isfinite(y).all()):
        raise ValueError("y contains NaN or infinite entries")
    return y.to(device=like.device, dtype=like.dtype)


def check_step_size(alpha, lam_max: float) -> float:
    """alpha in (0, 2 / lambda_1): beyond it ``|1 - alpha lambda_1| >= 1`` and GD diverges."""
    alpha = check_positive(alpha, "alpha")
    # a relative slack of a few ulps: alpha = 2 / lambda_1 computed in floating point must
    # be rejected whichever way lambda_1's last bit was rounded (it differs across LAPACKs)
    if alpha * lam_max >= 2 * (1 - 1e-12):
        raise ValueError(f"alpha = {alpha} >= 2 / lambda_1(K) = {2 / lam_max:.6g}: gradient descent "
                         "diverges (|1 - alpha lambda_1| >= 1)")
    return alpha


def eigh_kernel(K: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues ``(n,)`` (decreasing) and eigenvectors ``(n, n)`` of K; ValueError unless K is
    positive definite (assumption ii)."""
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
    c = check_positive(c, "c")
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
    sigma_star = check_real(sigma_star, "sigma_star", minimum=0.0)
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
    sigma_w = check_real(sigma_w, "sigma_w", minimum=0.0)
    lam_wd = check_real(weight_decay, "weight_decay", minimum=0.0)
    g = torch.Generator().manual_seed(check_seed(seed))
    if n == d:
        return _simulate_kernel(data, y, T, N, sigma_w, alpha, g, batch_size, lam_wd)
    if batch_size is not None:
        raise ValueError("batch_size (SGD noise) is supported only with the kernel form (pass K)")
    return _simulate_weights(data, y, T, N, sigma_w, alpha, g, lam_wd)


def _simulate_kernel(K, y, T, N, sigma_w, alpha, g, batch_size, lam_wd) -> torch.Tensor:
    """:func:`simulate_trajectories` from the kernel ``K (n, n)``: ``(N, T, n)`` residuals."""
    n, dev, dt = K.shape[0], K.device, K.dtype
    K = check_kernel(K)
    lam, U = eigh_kernel(K)
    alpha = check_step_size(alpha, float(lam[0]) + lam_wd)
    y = check_targets(y, n, K)
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


def _simulate_weights(X, y, T, N, sigma_w, alpha, g, lam_wd) -> torch.Tensor:
    """:func:`simulate_trajectories` in weight space from inputs ``X (n, d)``: ``(N, T, n)``."""
    (n, d), dev, dt = X.shape, X.device, X.dtype
    K = X @ X.T / n
    lam, _ = eigh_kernel(K)
    alpha = check_step_size(alpha, float(lam[0]) + lam_wd)
    y = check_targets(y, n, X)
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
    """q cleaned for ``q^T`` (see ``geometric_series_mean``): round-off negatives to 0, else ValueError."""
    q = torch.where((q < 0) & (q > -1e-12), torch.zeros_like(q), q)
    fractional = bool((torch.as_tensor(T) != torch.round(torch.as_tensor(T))).any())
    if fractional and bool((q < 0).any()):
        raise ValueError("a non-integer T needs alpha <= 1 / lambda_1 (with 1 - alpha lambda < 0 the "
                         "sum over t has no continuation to real T); use an integer T")
    return q


def geometric_series_mean(q: torch.Tensor, T: float) -> torch.Tensor:
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


def pca_parts_eigenbasis(lam: torch.Tensor, u: torch.Tensor, T, sigma_w: float, alpha: float,
                         init_var: torch.Tensor | None = None):
    """P1^sw (diagonal, (..., n)), P1^y ((..., n, n)) and P2 ((..., n, n)) in K's eigenbasis.

    ``u`` are the coordinates of y in that basis; ``init_var`` replaces the initial residual
    covariance eigenvalues ``sigma_w^2 lambda`` (weight decay needs ``sigma_w^2 lambda(K)``
    while the dynamics use ``K + lambda I``). T may be a tensor broadcasting with lam[..., 0].
    """
    dK = 1 - alpha * lam  # eigenvalues of K_d
    Tb = T if not isinstance(T, torch.Tensor) else T[..., None]
    init = sigma_w ** 2 * lam if init_var is None else init_var
    p1_sw = init * geometric_series_mean(dK * dK, Tb)
    Tm = Tb if not isinstance(T, torch.Tensor) else Tb[..., None]
    p1_y = u[..., :, None] * u[..., None, :] * geometric_series_mean(dK[..., :, None] * dK[..., None, :], Tm)
    kt_u = geometric_series_mean(dK, Tb) * u  # K_T y in the eigenbasis
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


def kernel_setup(K, y, sigma_w, alpha):
    """Checked ``(K, lam, U, y, sigma_w, alpha)``: the kernel ``(n, n)``, its eigenvalues
    ``(n,)`` (decreasing) and eigenvectors ``(n, n)``, the targets ``(n,)``, ``sigma_w >= 0``
    and the step size (default ``1 / lambda_1``)."""
    K = check_kernel(K)
    lam, U = eigh_kernel(K)
    y = check_targets(y, K.shape[0], K)
    sigma_w = check_real(sigma_w, "sigma_w", minimum=0.0)
    alpha = 1.0 / float(lam[0]) if alpha is None else check_step_size(alpha, float(lam[0]))
    return K, lam, U, y, sigma_w, alpha


def pca_parts(K: torch.Tensor, y: torch.Tensor, T: float, *, sigma_w: float,
              alpha: float | None = None) -> PCAParts:
    """``P1^sw(T)``, ``P1^y(T)``, ``P2(T)`` of (5.2.5) (with its 1/T), each (n, n).

    Computed in K's eigenbasis, where K_d is diagonal and every sum over t is a
    geometric series, then rotated back. alpha defaults to ``1 / lambda_1(K)``."""
    K, lam, U, y, sigma_w, alpha = kernel_setup(K, y, sigma_w, alpha)
    T = check_time(T)
    sw, py, p2 = pca_parts_eigenbasis(lam, U.T @ y, T, sigma_w, alpha)
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
    K, lam, _, y, sigma_w, alpha = kernel_setup(K, y, sigma_w, alpha)
    return pca_from_trajectories(simulate_trajectories(K, y, T, N, sigma_w, alpha, seed=seed))


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
    check_float_tensor(values, "values")
    fraction = check_positive(fraction, "fraction")
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

    Same numbers as ``pca_parts_eigenbasis`` (geometric means of ``q = d_i d_j`` and of ``d``),
    but the phase diagram spends most of its time in these (t, C, n, n) element-wise
    passes, so each one writes into the same buffer instead of a new temporary."""
    Tb = T[..., None, None]  # (t, 1, 1, 1)
    q = _power_base(q, T)
    one_minus = 1 - q
    near = one_minus.abs() < 1e-9
    G = torch.pow(q, Tb)
    G.neg_().add_(1).div_(torch.where(near, torch.full_like(q, 0.5), one_minus)).div_(Tb)
    if bool(near.any()):  # first-order expansion at q = 1, as in geometric_series_mean
        G = torch.where(near, 1 - (Tb - 1) * one_minus / 2, G)
    g = geometric_series_mean(dK, T[..., None])  # (t, C, n): K_T y in the eigenbasis, up to u
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
    sigma_w = check_positive(sigma_w, "sigma_w")
    Tt = torch.as_tensor([check_time(t) for t in T], dtype=DTYPE, device=device)
    ct = torch.as_tensor([check_positive(x, "c") for x in c], dtype=DTYPE, device=device)
    rt = torch.as_tensor([check_real(x, "ratio", minimum=0.0) for x in ratio], dtype=DTYPE, device=device)
    if min(Tt.numel(), ct.numel(), rt.numel()) == 0:
        raise ValueError("T, c and ratio must be non-empty")
    alpha = 1.0 if alpha is None else check_step_size(alpha, 1.0)  # lambda_1 = exp(0) = 1 for every c
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
            sw, _, _ = pca_parts_eigenbasis(lam, u, Tc, sigma_w, alpha)
            y_part = lam * (geometric_series_mean(dK * dK, Tc[..., None]) - geometric_series_mean(dK, Tc[..., None]) ** 2)
            ev = sw[:, :, None, :] + s2[:, None] * y_part[:, :, None, :]
        else:
            sw = sigma_w ** 2 * lam * geometric_series_mean(dK * dK, Tc[..., None])  # (t, C, n)
            H = _target_gram(q, uu, dK, Tc)  # (t, C, n, n)
            P = torch.empty(*H.shape[:2], rt.numel(), n, n, dtype=DTYPE, device=H.device)
            torch.mul(H[:, :, None], s2[:, None, None], out=P)  # (t, C, R, n, n)
            P.diagonal(dim1=-2, dim2=-1).add_(sw[:, :, None, :])
            ev = _batched_eigvalsh(P.flatten(0, 2)).unflatten(0, P.shape[:3])
        out[lo:lo + step] = ribbon_dimension(ev, fraction)
    return out
