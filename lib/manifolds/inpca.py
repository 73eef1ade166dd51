"""Intensive PCA (InPCA) of probabilistic models (chapter 2 of the thesis, eqs. 2.2.2-2.2.9).

A classifier with weights ``w`` gives, on ``N`` samples with ``C`` classes, the product
distribution ``P_w(y) = prod_n p_w^n(y_n)``. Two models are compared by the per-sample
Bhattacharyya distance (2.2.2)

    d_B(P_u, P_v) = -(1/N) sum_n log sum_c sqrt(p_u^n(c) p_v^n(c)),

and ``m`` models are embedded by InPCA: double-centre the distance matrix,
``W = -L D L / 2`` with ``L = I - 11^T/m`` (2.2.6), diagonalise ``W = U Lambda U^T`` with
eigenvalues ordered by ``|lambda|``, and take ``X = U sqrt(|Lambda|)``. Components with
``lambda < 0`` are "time-like": the embedding is isometric in the Minkowski sense (2.2.7),

    sum_k sign(lambda_k) (X_uk - X_vk)^2 = D_uv.

Conventions and deviations from the paper (read these before comparing)
-------------------------------------------------------------------------
* D is used as a *squared*-distance-type matrix, exactly as ``d_B`` enters (2.2.6); for
  Euclidean points ``D_uv = ||x_u - x_v||^2`` InPCA is classical MDS, i.e. PCA.
* Explained stress (2.2.8) is ``1 - sqrt(sum_{k>d} lambda_k^2 / sum_k lambda_k^2) =
  1 - ||W - W_d||_F / ||W||_F`` (a ratio of Frobenius norms, the root form of Kruskal's
  stress), with ``W_d = sum_{k<=d} lambda_k u_k u_k^T``; the middle expression of (2.2.8)
  writes this reconstruction as ``sqrt(Lambda_kk) U_ik sqrt(Lambda_kk) U_kj``, with ``U_kj``
  standing for ``(U^T)_kj``. :meth:`InPCA.explained_stress` returns this by default;
  ``squared=True`` gives ``1 - ||W - W_d||_F^2 / ||W||_F^2 = sum_{k<=d} lambda_k^2 / sum
  lambda^2`` (additive over components, like explained variance), which is always at
  least as large.
* Out-of-sample points (2.2.9). The paper's ``X_w = sum_u W_{w,u} U_u |Lambda_uu|^{-1/2}``
  omits the factor ``sign(lambda_k)``: without it a time-like coordinate of a point that is
  already in the embedding comes back with the wrong sign. :meth:`InPCA.transform`
  includes it (and the sum runs over the ``m`` fitted points, not ``n``). The embedding
  ``X = U sqrt(Lambda)`` after (2.2.6) is meant as ``U sqrt(|Lambda|)``.
* Zero overlap ``sum_c sqrt(p q) = 0`` on some sample means an infinite distance; overlaps
  are clamped to ``floor`` (default 1e-300, so one such sample contributes at most
  ``log(1e300)/N ~ 690/N``) and to at most 1 (Cauchy-Schwarz; round-off can exceed it).

Trajectories, progress and averages (eqs. 2.2.3-2.2.5, Table 2.3)
-------------------------------------------------------------------
* :func:`ignorance`, :func:`truth`: the uniform model ``P_0`` and the one-hot ``P_*``.
* :func:`geodesic`: the great circle (2.2.3) between product models on the product of
  spheres ``sqrt p^n``; :func:`geodesic_distance`: ``d_G`` (the paper's outer ``sum_c`` is a
  typo for ``sum_n``).
* :func:`progress`: ``s_w`` (2.2.4), the closest point on the ignorance-truth geodesic. The
  paper uses Brent's method; here a grid plus golden-section refinement (global on the
  grid's resolution). Remark 2.2.1 (a confident model with error fraction
  ``eps < 1 - 1/sqrt(C)`` has progress 1) is a sufficient condition; the exact threshold
  is ``sqrt(C-1)/(sqrt(C-1)+1)``, which is larger. Progress is not monotone along a
  geodesic from a model to the truth in general.
* :func:`reindex_by_progress`, :func:`trajectory_distance`, :func:`trajectory_distances`:
  trajectories re-parametrised by progress and compared at equal progress (2.2.5). Deviation:
  the paper integrates over ``[0, 1]``; a trajectory covers only its checkpoints' progress
  range, so the *mean* of ``d_B`` over the common range is returned (NaN or ValueError when
  there is none).
* :func:`ensemble_mean`: arithmetic, geometric, harmonic, square-root (Hellinger) means and
  the Bhattacharyya centroid (Nielsen and Boltz, 2011), by a monotone fixed-point iteration.
* ``InPCA(method="iterative")``: only the top-``k`` ``|lambda|`` eigenpairs by block Krylov
  iteration (``W`` is never formed); ``all_eigenvalues_`` is then None and
  ``explained_stress(k)`` needs ``k <= n_components``.

Everything is torch, float64, and runs on whatever device the inputs live on.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .._checks import check_int, check_seed, check_square_matrix
from ..operators.base import LinearOperator
from ..operators.spectral import top_eigenpairs

DTYPE = torch.float64
SUM_TOL = 1e-6            # rows of probabilities must sum to 1 within this
SYM_TOL = 1e-10           # relative asymmetry allowed in a distance matrix
CHUNK_BYTES = 256 * 2**20  # memory budget of one block of the Bhattacharyya computation

__all__ = ["bhattacharyya", "InPCA", "minkowski_sq_distances", "ignorance", "truth", "geodesic",
           "geodesic_distance", "progress", "reindex_by_progress", "Reindexed", "trajectory_distance",
           "trajectory_distances", "ensemble_mean", "embed_log_probs", "stress_profile"]


# --------------------------------------------------------------------------- checks

def _check_probs(P, name: str, log: bool) -> torch.Tensor:
    """A floating ``(models, N, C)`` tensor; values are checked block by block later."""
    if not isinstance(P, torch.Tensor) or not torch.is_floating_point(P):
        raise TypeError(f"{name} must be a floating-point tensor, got {type(P).__name__}")
    if P.ndim != 3:
        raise ValueError(f"{name} must have shape (models, N, C), got shape {tuple(P.shape)}")
    if min(P.shape) == 0:
        raise ValueError(f"{name} must be non-empty, got shape {tuple(P.shape)}")
    return P


def _sqrt_block(block: torch.Tensor, name: str, log: bool) -> torch.Tensor:
    """Check probabilities ``(..., C)`` (one block, or a whole tensor) and return their square roots (float64)."""
    block = block.to(DTYPE)
    if log:
        if bool(torch.isnan(block).any()) or bool((block == math.inf).any()):
            raise ValueError(f"{name} (log-probabilities) contains NaN or +inf entries")
        if bool((block > 0).any()):
            raise ValueError(f"{name} (log-probabilities) has entries > 0, i.e. probabilities > 1")
        root = torch.exp(0.5 * block)
        probs = root * root
    else:
        if not bool(torch.isfinite(block).all()):
            raise ValueError(f"{name} contains NaN or infinite entries")
        if bool((block < 0).any()):
            raise ValueError(f"{name} has negative probabilities")
        probs, root = block, torch.sqrt(block)
    err = (probs.sum(-1) - 1).abs().max().item()
    if err > SUM_TOL:
        what = "exp(log-probabilities)" if log else "probabilities"
        raise ValueError(f"{name}: {what} over the classes must sum to 1 (within {SUM_TOL}), "
                         f"worst deviation {err:.3g}")
    return root


# --------------------------------------------------------------------------- distances

def bhattacharyya(P, Q=None, *, log: bool = False, chunk: int | None = None,
                  floor: float = 1e-300, tile: int | None = None) -> torch.Tensor:
    """Per-sample Bhattacharyya distances (2.2.2) between two sets of product models.

    Args:
        P: ``(m, N, C)`` probabilities ``p_a^n(c)`` (log-probabilities if ``log``).
        Q: ``(k, N, C)`` likewise, or None for ``Q = P``.
        log: the inputs are log-probabilities (``-inf`` allowed for zero probability).
        chunk: samples whose square roots are held at once; default keeps them under
            ~256 MB.
        floor: overlaps ``sum_c sqrt(p q)`` are clamped to ``[floor, 1]`` before the log (a
            zero overlap would be an infinite distance).
        tile: models per side of one block of the output (default 256 on the CPU, so a
            block of overlaps stays in cache; 2048 elsewhere, to launch fewer kernels).

    Returns:
        ``(m, k)`` float64 ``d_B[a, b] = -(1/N) sum_n log sum_c sqrt(P[a,n,c] Q[b,n,c])`` on
        ``P``'s device. For ``Q=None`` it is exactly symmetric with an exactly zero diagonal
        (only the upper blocks are computed).

    How it is fast: the logarithm, not the matrix product, dominates a direct computation
    (``m k N`` logs). Overlaps lie in ``(0, 1]``, so the product of ``GROUP`` of them is
    taken first and one log is applied to it. Partial products of numbers in ``(0, 1]``
    decrease, so a final product above ``2**-960`` proves that no factor was below
    ``floor`` and nothing underflowed; the (rare) entries below it are recomputed as a
    sum of clamped logs. The result equals the sum of logs to round-off (~``GROUP`` ulps).
    """
    P = _check_probs(P, "P", log)
    same = Q is None
    Q = P if same else _check_probs(Q, "Q", log)
    if P.shape[1:] != Q.shape[1:]:
        raise ValueError(f"P and Q must have the same (N, C), got {tuple(P.shape[1:])} and "
                         f"{tuple(Q.shape[1:])}")
    if P.device != Q.device:
        raise ValueError(f"P and Q must be on the same device, got {P.device} and {Q.device}")
    if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not 0 < floor < 1:
        raise ValueError(f"floor must be a number in (0, 1), got {floor!r}")
    m, N, C = P.shape
    k = Q.shape[0]
    if chunk is None:
        chunk = max(1, CHUNK_BYTES // (8 * (m + k) * C))
    chunk = check_int(chunk, "chunk", minimum=1)
    if tile is None:
        tile = 256 if P.device.type == "cpu" else 2048
    tile = check_int(tile, "tile", minimum=1)

    acc = torch.zeros(m, k, dtype=DTYPE, device=P.device)
    for start in range(0, N, chunk):
        stop = min(N, start + chunk)
        a = _sqrt_block(P[:, start:stop], "P", log).transpose(0, 1).contiguous()               # (n, m, C)
        b = a if same else _sqrt_block(Q[:, start:stop], "Q", log).transpose(0, 1).contiguous()  # (n, k, C)
        for i in range(0, m, tile):
            for j in range(i if same else 0, k, tile):
                acc[i:i + tile, j:j + tile] += _log_overlap_sum(a[:, i:i + tile], b[:, j:j + tile], floor)
    if same:
        # lower blocks from the upper ones; the diagonal blocks are symmetrised
        acc = torch.triu(acc) + torch.triu(acc, diagonal=1).T
    d = acc.div_(-N)
    if same:
        d.fill_diagonal_(0.0)
    return d


GROUP = 16             # overlaps multiplied before one log is taken
SAFE_PRODUCT = 2.0**-960  # a product above this had no factor below floor and no underflow


def _log_overlap_sum(a: torch.Tensor, b: torch.Tensor, floor: float) -> torch.Tensor:
    """``sum_n log clamp(a_n b_n^T, floor, 1)`` for square roots ``a (n, p, C)``, ``b (n, q, C)``."""
    out = torch.zeros(a.shape[1], b.shape[1], dtype=DTYPE, device=a.device)
    bt = b.transpose(1, 2)
    for s in range(0, a.shape[0], GROUP):
        overlap = torch.bmm(a[s:s + GROUP], bt[s:s + GROUP])          # (g, p, q)
        product = overlap.prod(0)
        unsafe = product < SAFE_PRODUCT
        if bool(unsafe.any()):
            exact = torch.log(overlap.clamp_(min=floor, max=1.0)).sum(0)
            out += torch.where(unsafe, exact, torch.log(product.clamp_(min=SAFE_PRODUCT, max=1.0)))
        else:
            out += torch.log(product.clamp_(max=1.0))
    return out


def minkowski_sq_distances(embedding, signs) -> torch.Tensor:
    """Squared Minkowski intervals ``sum_i signs_i (x_ai - x_bi)^2`` between all rows.

    Args:
        embedding: ``(m, k)`` coordinates.
        signs: ``(k,)`` entries +1 (space-like) or -1 (time-like).

    Returns:
        ``(m, m)`` float64 matrix with an exactly zero diagonal.
    """
    if not isinstance(embedding, torch.Tensor) or not torch.is_floating_point(embedding):
        raise TypeError("embedding must be a floating-point tensor")
    if not isinstance(signs, torch.Tensor):
        raise TypeError("signs must be a tensor")
    if embedding.ndim != 2:
        raise ValueError(f"embedding must have shape (m, k), got {tuple(embedding.shape)}")
    if signs.shape != (embedding.shape[1],):
        raise ValueError(f"signs must have shape ({embedding.shape[1]},), got {tuple(signs.shape)}")
    X, s = embedding.to(DTYPE), signs.to(device=embedding.device, dtype=DTYPE)
    if not bool(((s == 1) | (s == -1)).all()):
        raise ValueError("signs must be +1 or -1")
    if not bool(torch.isfinite(X).all()):
        raise ValueError("embedding contains NaN or infinite entries")
    G = (X * s) @ X.T
    g = torch.diagonal(G)
    return g[:, None] + g[None, :] - 2 * G


# --------------------------------------------------------------------------- InPCA

class InPCA:
    """Intensive PCA: the Minkowski-space eigen-embedding of a distance matrix (2.2.6-2.2.9).

    Args:
        n_components: number of components kept (largest ``|lambda|`` first); None keeps all m.
        method: ``"dense"`` (full ``eigh`` of ``W``), ``"iterative"`` (only the ``n_components``
            largest-``|lambda|`` eigenpairs, by restarted block Krylov iteration with
            Rayleigh-Ritz; ``W`` is never formed, products with it are computed from ``D``;
            runs on ``D``'s device), or ``"auto"``: dense when ``m <= 3000``, when
            ``n_components`` is None or when ``n_components > m / 10``, iterative otherwise.
        seed: seed of the iterative method's random start block.

    After :meth:`fit` (``k = n_components``) the estimator holds these attributes:

    - ``eigenvalues_``: ``(k,)`` eigenvalues of ``W``, ordered by ``|lambda|`` descending;
    - ``eigenvectors_``: ``(m, k)`` orthonormal eigenvectors ``U``;
    - ``embedding_``: ``(m, k)`` coordinates ``U sqrt(|lambda|)``;
    - ``signs_``: ``(k,)`` ``sign(lambda)``: +1 space-like (Euclidean), -1 time-like (0 -> +1);
    - ``all_eigenvalues_``: ``(m,)`` the whole spectrum, same order (for explained stress);
      None after an iterative fit (the spectrum is not computed);
    - ``stress_total_``: ``||W||_F^2 = sum_i lambda_i^2`` (computed from W blockwise in both
      methods);
    - ``method_``: ``"dense"`` or ``"iterative"``, the method used;
    - ``row_means_``: ``(m,)`` row means of D; ``grand_mean_``: float, mean of D.

    Example:
        >>> import torch
        >>> from lib.manifolds import inpca
        >>> P = torch.softmax(torch.randn(5, 20, 3, generator=torch.Generator().manual_seed(0)), -1)
        >>> D = inpca.bhattacharyya(P)  # 5 models, 20 samples, 3 classes
        >>> fit = inpca.InPCA(2).fit(D)
        >>> fit.embedding_.shape
        torch.Size([5, 2])
        >>> 0 <= fit.explained_stress(2) <= 1
        True
    """

    def __init__(self, n_components: int | None = None, *, method: str = "auto", seed: int = 0):
        if n_components is not None:
            n_components = check_int(n_components, "n_components", minimum=1)
        if method not in ("auto", "dense", "iterative"):
            raise ValueError(f"method must be 'auto', 'dense' or 'iterative', got {method!r}")
        if method == "iterative" and n_components is None:
            raise ValueError("method='iterative' needs n_components (the number of eigenpairs to compute)")
        self.n_components = n_components
        self.method = method
        self.seed = check_seed(seed)

    def fit(self, D) -> "InPCA":
        """Fit to a symmetric ``(m, m)`` matrix of (squared-type) distances; returns self."""
        D = check_square_matrix(D, "D").to(DTYPE)
        m = D.shape[0]
        if self.n_components is not None and self.n_components > m:
            raise ValueError(f"n_components = {self.n_components} exceeds the number of points m = {m}")
        scale = max(float(D.max()), -float(D.min()))      # max |D| without an m x m temporary
        asym = _max_asymmetry(D)
        if asym > SYM_TOL * max(scale, 1e-300):
            raise ValueError(f"D must be symmetric: max |D - D^T| = {asym:.3g} "
                             f"(relative {asym / max(scale, 1e-300):.3g} > {SYM_TOL})")
        if asym > 0:
            D = 0.5 * (D + D.T)
        row = D.mean(1)
        grand = row.mean()
        k = m if self.n_components is None else self.n_components
        method = self.method
        if method == "auto":
            method = "dense" if (m <= 3000 or self.n_components is None or k > m / 10) else "iterative"
        self.method_ = method
        if method == "dense":
            # double centring -L D L / 2 without forming L (W is the only m x m temporary)
            W = D - row[:, None]
            W -= row[None, :]
            W += grand
            W *= -0.5
            lam, U = torch.linalg.eigh(W)
            order = torch.argsort(lam.abs(), descending=True, stable=True)
            lam, U = lam[order], U[:, order]
            self.all_eigenvalues_ = lam
            self.stress_total_ = float(torch.linalg.vector_norm(W)) ** 2
            del W
        else:
            lam, U = _top_eigh_centred(D, row, grand, k, self.seed)
            self.all_eigenvalues_ = None
            self.stress_total_ = _centred_frobenius_sq(D, row, grand)
        self.eigenvalues_ = lam[:k]
        self.eigenvectors_ = U[:, :k]
        self.signs_ = torch.where(self.eigenvalues_ < 0, -1.0, 1.0).to(DTYPE)
        self.embedding_ = self.eigenvectors_ * self.eigenvalues_.abs().sqrt()
        self.row_means_ = row
        self.grand_mean_ = float(grand)
        self.m_ = m
        return self

    def _fitted(self):
        if not hasattr(self, "eigenvalues_"):
            raise RuntimeError("InPCA instance is not fitted yet; call fit(D) first")

    def explained_stress(self, k: int, *, squared: bool = False) -> float:
        """Fraction of the centred matrix W reproduced by the first ``k`` components (2.2.8).

        Default (the definition of (2.2.8), Kruskal's root form):
        ``1 - ||W - W_k||_F / ||W||_F = 1 - sqrt(sum_{i>k} lambda_i^2 / sum_i lambda_i^2)``
        with ``W_k = sum_{i<=k} lambda_i u_i u_i^T`` (eigenvalues ordered by ``|lambda|``).
        ``squared=True`` returns ``1 - ||W - W_k||_F^2 / ||W||_F^2 = sum_{i<=k} lambda_i^2 /
        sum_i lambda_i^2`` instead (additive over components, like explained variance; never
        smaller than the root form). Returns 1.0 when ``W = 0``. ``1 <= k <= m``; after an
        iterative fit ``k <= n_components`` (the denominator is ``stress_total_ = ||W||_F^2``).
        """
        self._fitted()
        k = check_int(k, "k", minimum=1)
        if not isinstance(squared, bool):
            raise TypeError(f"squared must be a bool, got {type(squared).__name__}")
        if k > self.m_:
            raise ValueError(f"k must be <= m = {self.m_}, got {k}")
        if self.all_eigenvalues_ is None:
            if k > self.eigenvalues_.shape[0]:
                raise ValueError(f"after an iterative fit only the first n_components = "
                                 f"{self.eigenvalues_.shape[0]} eigenvalues are known; k = {k} is too large "
                                 f"(fit with method='dense' for the whole spectrum)")
            total = self.stress_total_
            if total == 0.0:
                return 1.0
            rest = max(0.0, 1.0 - float((self.eigenvalues_[:k] ** 2).sum()) / total)
        else:
            lam2 = self.all_eigenvalues_ ** 2
            total = float(lam2.sum())
            if total == 0.0:
                return 1.0
            rest = max(0.0, float(lam2[k:].sum()) / total)
        return 1.0 - (rest if squared else math.sqrt(rest))

    def transform(self, D_new) -> torch.Tensor:
        """Embed new points from their distances to the fitted ones (Gower / Nystroem, 2.2.9).

        Args:
            D_new: ``(k_new, m)`` distances (same type as D) from new points to the m fitted ones.

        Returns:
            ``(k_new, n_components)`` coordinates
            ``x_i = sign(lambda_i) (w . u_i) / sqrt(|lambda_i|)`` with
            ``w_u = -(D_new[u] - mean(D_new) - row_means_[u] + grand_mean_) / 2``. A fitted point
            maps to its own row of ``embedding_``. Components with
            ``|lambda| <= m * eps * max|lambda|`` (numerically zero) get coordinate 0.
        """
        self._fitted()
        if not isinstance(D_new, torch.Tensor) or not torch.is_floating_point(D_new):
            raise TypeError("D_new must be a floating-point tensor")
        if D_new.ndim == 1:
            D_new = D_new[None, :]
        if D_new.ndim != 2 or D_new.shape[1] != self.m_:
            raise ValueError(f"D_new must have shape (k_new, {self.m_}), got {tuple(D_new.shape)}")
        if not bool(torch.isfinite(D_new).all()):
            raise ValueError("D_new contains NaN or infinite entries")
        D_new = D_new.to(device=self.eigenvalues_.device, dtype=DTYPE)
        Wn = -0.5 * (D_new - D_new.mean(1, keepdim=True) - self.row_means_[None, :] + self.grand_mean_)
        lam = self.eigenvalues_
        tol = self.m_ * torch.finfo(DTYPE).eps * lam.abs().max()   # lam[0] has the largest |lambda|
        ok = lam.abs() > tol
        scale = torch.where(ok, self.signs_ / lam.abs().clamp(min=1e-300).sqrt(), torch.zeros_like(lam))
        return (Wn @ self.eigenvectors_) * scale


# --------------------------------------------------------------------------- geodesics and progress

def _check_labels(labels, N: int | None = None, C: int | None = None, name: str = "labels") -> torch.Tensor:
    """An integer ``(N,)`` tensor of class indices in ``[0, C)``."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be an integer tensor, got {type(labels).__name__}")
    if labels.dtype == torch.bool or torch.is_floating_point(labels) or torch.is_complex(labels):
        raise TypeError(f"{name} must be an integer tensor, got dtype {labels.dtype}")
    if labels.ndim != 1 or labels.shape[0] == 0:
        raise ValueError(f"{name} must have shape (N,) with N >= 1, got shape {tuple(labels.shape)}")
    if N is not None and labels.shape[0] != N:
        raise ValueError(f"{name} has {labels.shape[0]} entries but the models have N = {N} samples")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or (C is not None and hi >= C):
        raise ValueError(f"{name} must lie in [0, {C}), got values in [{lo}, {hi}]"
                         if C is not None else f"{name} must be non-negative, got minimum {lo}")
    return labels.long()


def _roots(P, name: str, log: bool, ndims=(2, 3)) -> torch.Tensor:
    """Check ``P`` (probabilities, or log-probabilities if ``log``) and return ``sqrt(P)`` in float64.

    The rows of the result are renormalised to unit Euclidean norm (``P`` is only required to
    sum to 1 within ``SUM_TOL``), so that geodesic formulas on the sphere are exact.
    """
    if not isinstance(P, torch.Tensor) or not torch.is_floating_point(P):
        raise TypeError(f"{name} must be a floating-point tensor, got {type(P).__name__}")
    if P.ndim not in ndims:
        shapes = " or ".join({2: "(N, C)", 3: "(models, N, C)", 4: "(K, T, N, C)"}[d] for d in ndims)
        raise ValueError(f"{name} must have shape {shapes}, got shape {tuple(P.shape)}")
    if min(P.shape) == 0:
        raise ValueError(f"{name} must be non-empty, got shape {tuple(P.shape)}")
    root = _sqrt_block(P, name, log)   # value checks shared with bhattacharyya
    total = (root * root).sum(-1)
    return root / total.sqrt()[..., None]


def ignorance(N: int, C: int, *, device=None) -> torch.Tensor:
    """The model of ignorance ``P_0``: ``(N, C)`` float64, every entry ``1/C``."""
    N, C = check_int(N, "N", minimum=1), check_int(C, "C", minimum=1)
    return torch.full((N, C), 1.0 / C, dtype=DTYPE, device=device)


def truth(labels, C: int | None = None) -> torch.Tensor:
    """The truth ``P_*``: ``(N, C)`` float64 one-hot rows ``e_{y_n}`` from integer labels ``(N,)``.

    ``C`` defaults to ``labels.max() + 1``; labels must lie in ``[0, C)``. Same device as labels.
    """
    if C is not None:
        C = check_int(C, "C", minimum=1)
    y = _check_labels(labels, C=C)
    C = int(y.max()) + 1 if C is None else C
    return torch.nn.functional.one_hot(y, C).to(DTYPE)


def _check_alpha(alpha, device) -> tuple[torch.Tensor, bool]:
    """``alpha`` as a float64 tensor (0-d or 1-d) in [0, 1]; returns (tensor, is_scalar)."""
    if isinstance(alpha, bool):
        raise TypeError("alpha must be a number or a 1-D floating tensor, got bool")
    if isinstance(alpha, (int, float)):
        a = torch.tensor(float(alpha), dtype=DTYPE, device=device)
    elif isinstance(alpha, torch.Tensor):
        if alpha.dtype == torch.bool or alpha.is_complex():
            raise TypeError(f"alpha must be a number or a 1-D real tensor, got dtype {alpha.dtype}")
        if alpha.ndim > 1:
            raise ValueError(f"alpha must be a scalar or a 1-D tensor, got shape {tuple(alpha.shape)}")
        a = alpha.to(device=device, dtype=DTYPE)
    else:
        raise TypeError(f"alpha must be a number or a 1-D tensor, got {type(alpha).__name__}")
    if not bool(torch.isfinite(a).all()) or bool(((a < 0) | (a > 1)).any()):
        raise ValueError("alpha must lie in [0, 1]")
    return a, a.ndim == 0


def _slerp_roots(a: torch.Tensor, b: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Great-circle interpolation (2.2.3) of unit non-negative rows ``a``, ``b`` (broadcastable,
    ``(..., N, C)``) at ``alpha`` (broadcastable to ``(...)``); returns probabilities."""
    diff = torch.linalg.vector_norm(a - b, dim=-1)
    d = 2 * torch.asin((0.5 * diff).clamp(max=1.0))        # accurate also for tiny angles
    al = alpha[..., None]
    small = d < 1e-8            # identical (or nearly) rows: the limit (1-alpha) a + alpha b
    ds = torch.where(small, torch.ones_like(d), d)
    ca = torch.where(small, 1 - al, torch.sin((1 - al) * ds) / torch.sin(ds))
    cb = torch.where(small, al, torch.sin(al * ds) / torch.sin(ds))
    root = ca[..., None] * a + cb[..., None] * b
    p = root * root
    return p / p.sum(-1, keepdim=True)


def geodesic(P, Q, alpha, *, log: bool = False) -> torch.Tensor:
    """Points on the Fisher-Rao geodesic between two product models (2.2.3).

    Each sample's ``sqrt(p^n)`` is a point of the unit sphere; the geodesic is the great circle

        sqrt p^{n,alpha} = sin((1-alpha) d^n)/sin(d^n) sqrt p^n + sin(alpha d^n)/sin(d^n) sqrt q^n,

    ``d^n = arccos sum_c sqrt(p^n(c) q^n(c))`` (computed as ``2 asin(|sqrt p - sqrt q|/2)``,
    accurate for small angles). Identical rows (``d^n = 0``) take the limit
    ``(1-alpha) sqrt p + alpha sqrt q``; no NaN is produced.

    Args:
        P, Q: ``(N, C)`` probabilities (log-probabilities if ``log``) of the two end models; or
            batched ``(m, N, C)`` (either or both; an ``(N, C)`` one is shared by the batch).
        alpha: number or ``(k,)`` tensor in ``[0, 1]``.

    Returns:
        float64 probabilities (rows renormalised to sum to 1 to round-off), on ``P``'s device:

        * ``P, Q`` both ``(N, C)``: ``(N, C)`` for a scalar ``alpha``, ``(k, N, C)`` for a tensor;
        * batched ``(m, N, C)``: ``(m, N, C)``; a tensor ``alpha`` must then have shape ``(m,)``
          and is paired elementwise with the batch (pair ``i`` at ``alpha[i]``).
    """
    a, b = _roots(P, "P", log), _roots(Q, "Q", log)
    if a.shape[-2:] != b.shape[-2:]:
        raise ValueError(f"P and Q must have the same (N, C), got {tuple(a.shape[-2:])} and {tuple(b.shape[-2:])}")
    if a.device != b.device:
        raise ValueError(f"P and Q must be on the same device, got {a.device} and {b.device}")
    if a.ndim == 3 and b.ndim == 3 and a.shape[0] != b.shape[0]:
        raise ValueError(f"batched P and Q must have the same number of models, got {a.shape[0]} and {b.shape[0]}")
    al, scalar = _check_alpha(alpha, a.device)
    if a.ndim == 2 and b.ndim == 2:
        if scalar:
            return _slerp_roots(a, b, al)
        return _slerp_roots(a[None], b[None], al)
    m = a.shape[0] if a.ndim == 3 else b.shape[0]
    if not scalar and al.shape != (m,):
        raise ValueError(f"for batched models (m = {m}) alpha must be a scalar or have shape ({m},), "
                         f"got shape {tuple(al.shape)}")
    al = al.expand(m)
    a = a if a.ndim == 3 else a[None]
    b = b if b.ndim == 3 else b[None]
    return _slerp_roots(a, b, al)


def geodesic_distance(P, Q, *, log: bool = False) -> torch.Tensor:
    """Geodesic (Fisher-Rao half-angle) distance on the product manifold (after 2.2.4).

        d_G(P, Q) = (1/N) sum_n arccos( sum_c sqrt(p^n(c) q^n(c)) ),

    with the overlap clamped to ``[0, 1]`` (the paper's outer ``sum_c`` is a typo for ``sum_n``).

    Args:
        P: ``(m, N, C)`` or ``(N, C)`` probabilities (log-probabilities if ``log``).
        Q: ``(N, C)`` (compared with every model of ``P``) or ``(m, N, C)`` (paired with ``P``).

    Returns:
        float64 ``(m,)``; a 0-d tensor if both are ``(N, C)``.
    """
    a, b = _roots(P, "P", log), _roots(Q, "Q", log)
    if a.shape[-2:] != b.shape[-2:]:
        raise ValueError(f"P and Q must have the same (N, C), got {tuple(a.shape[-2:])} and {tuple(b.shape[-2:])}")
    if a.ndim == 3 and b.ndim == 3 and a.shape[0] != b.shape[0]:
        raise ValueError(f"P and Q must have the same number of models, got {a.shape[0]} and {b.shape[0]}")
    if a.device != b.device:
        raise ValueError(f"P and Q must be on the same device, got {a.device} and {b.device}")
    overlap = (a * b).sum(-1).clamp(0.0, 1.0)
    return torch.arccos(overlap).mean(-1)


_INVPHI = (math.sqrt(5) - 1) / 2


def _progress_from_roots(root: torch.Tensor, y: torch.Tensor, grid: int, tol: float) -> torch.Tensor:
    """Progress of models with unit square roots ``root (m, N, C)`` and labels ``y (N,)``."""
    m, N, C = root.shape
    S = root.sum(-1) / math.sqrt(C)                                     # (m, N)  <sqrt p, 1/sqrt C>
    r = root.gather(-1, y.to(root.device)[None, :, None].expand(m, N, 1))[..., 0]   # (m, N)  sqrt p(y_n)
    del root
    d = math.acos(1 / math.sqrt(C))
    sd = math.sin(d)

    def objective(alpha: torch.Tensor) -> torch.Tensor:        # alpha (m,) -> d_G (m,)
        A = (torch.sin((1 - alpha) * d) / sd)[:, None]
        B = (torch.sin(alpha * d) / sd)[:, None]
        return torch.arccos((A * S + B * r).clamp(0.0, 1.0)).mean(-1)

    dev = S.device
    nodes = torch.linspace(0, 1, grid, dtype=DTYPE, device=dev)
    values = torch.stack([objective(nodes[j].expand(m)) for j in range(grid)], 1)   # (m, grid)
    best = values.argmin(1)                                   # first minimum on the grid
    lo = nodes[(best - 1).clamp(min=0)]
    hi = nodes[(best + 1).clamp(max=grid - 1)]
    x_best, f_best = nodes[best], values.gather(1, best[:, None])[:, 0]
    # golden-section search in the bracket around the best grid node, vectorised over models
    c = hi - _INVPHI * (hi - lo)
    e = lo + _INVPHI * (hi - lo)
    fc, fe = objective(c), objective(e)
    steps = max(0, math.ceil(math.log(tol / (2.0 / (grid - 1))) / math.log(_INVPHI))) if grid > 1 else 0
    for _ in range(steps):
        left = fc <= fe                      # the minimum is in [lo, e]
        hi = torch.where(left, e, hi)
        lo = torch.where(left, lo, c)
        new = torch.where(left, hi - _INVPHI * (hi - lo), lo + _INVPHI * (hi - lo))
        fnew = objective(new)
        e, fe, c, fc = (torch.where(left, c, new), torch.where(left, fc, fnew),
                        torch.where(left, new, e), torch.where(left, fnew, fe))
    x = 0.5 * (lo + hi)
    fx = objective(x)
    better = fx < f_best
    x_best, f_best = torch.where(better, x, x_best), torch.where(better, fx, f_best)
    # exact end points when the minimum sits on the boundary (ties go to the boundary)
    for end in (0.0, 1.0):
        fend = objective(torch.full((m,), end, dtype=DTYPE, device=dev))
        take = fend <= f_best
        x_best = torch.where(take, torch.full_like(x_best, end), x_best)
        f_best = torch.where(take, fend, f_best)
    return x_best


def progress(P, labels, *, log: bool = False, grid: int = 65, tol: float = 1e-8) -> torch.Tensor:
    """Progress ``s_w = argmin_{alpha in [0,1]} d_G(P_w, P_{0,*}^alpha)`` (2.2.4).

    ``P_{0,*}^alpha`` is the geodesic (2.2.3) from ignorance ``P_0`` (uniform) to the truth
    ``P_*`` (one-hot labels). Between these two, ``d^n = arccos(1/sqrt C)`` is the same ``d``
    for every sample, so in square-root space the geodesic point is

        a(alpha)/sqrt(C) * 1 + b(alpha) e_{y_n},  a = sin((1-alpha) d)/sin d,  b = sin(alpha d)/sin d,

    and its overlap with model ``w`` on sample ``n`` is ``a S_n / sqrt(C) + b r_n`` with
    ``S_n = sum_c sqrt p_w^n(c)`` and ``r_n = sqrt p_w^n(y_n)``. The objective therefore needs
    only these two ``(m, N)`` statistics, never the ``(N, C)`` geodesic point.

    Minimisation: the objective is evaluated on ``grid`` equally spaced points of [0, 1], the
    best one is refined by golden-section search inside its neighbouring bracket to width
    ``tol``, and the end points 0 and 1 are taken when they are at least as good (so a minimum
    on the boundary is returned exactly). All of it is vectorised over the models. The paper
    uses Brent's method (a "bisection search", Brent 1971) on [0, 1] directly; the grid guards
    against objectives that are not unimodal, where a local method can stop at a non-global
    minimum. The result is the global minimiser up to ``tol`` whenever the grid resolves the
    basin of the global minimum.

    Args:
        P: ``(m, N, C)`` (or ``(N, C)``) probabilities, log-probabilities if ``log``; C >= 2.
        labels: integer ``(N,)`` true classes.
        grid: number of grid points (>= 2). tol: final bracket width.

    Returns:
        float64 ``(m,)`` progress in [0, 1] (0-d tensor for an ``(N, C)`` input).
    """
    root = _roots(P, "P", log)
    single = root.ndim == 2
    if single:
        root = root[None]
    _, N, C = root.shape
    if C < 2:
        raise ValueError("progress needs C >= 2 classes (for C = 1 ignorance and truth coincide)")
    y = _check_labels(labels, N=N, C=C)
    grid = check_int(grid, "grid", minimum=2)
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 < tol < 1:
        raise ValueError(f"tol must be a number in (0, 1), got {tol!r}")
    s = _progress_from_roots(root, y, grid, float(tol))
    return s[0] if single else s


# --------------------------------------------------------------------------- trajectories

class Reindexed(NamedTuple):
    """Result of :func:`reindex_by_progress` (``L`` target progress values).

    - ``probs``: ``(L, N, C)`` float64 probabilities at the targets;
    - ``valid``: ``(L,)`` bool, False where the target lies outside ``[min s_k, max s_k]``
      (those rows hold the checkpoint whose progress is nearest to the target);
    - ``segment``: ``(L,)`` int64, index ``k`` of the segment ``(k, k+1)`` used (-1 where
      invalid);
    - ``alpha``: ``(L,)`` float64 interpolation parameter on that segment (0 where invalid).
    """
    probs: torch.Tensor
    valid: torch.Tensor
    segment: torch.Tensor
    alpha: torch.Tensor


def _locate(sk: torch.Tensor, s: torch.Tensor):
    """First segment ``k`` with ``s`` between ``sk[k]`` and ``sk[k+1]`` (either order).

    Returns ``(valid, k, alpha, nearest)`` for targets ``s (L,)``; ``nearest`` is the
    checkpoint with the progress closest to each target (used for invalid targets)."""
    T = sk.shape[0]
    nearest = (sk[None, :] - s[:, None]).abs().argmin(1)
    if T == 1:
        valid = s == sk[0]
        return valid, torch.zeros_like(nearest), torch.zeros_like(s), nearest
    s0, s1 = sk[:-1], sk[1:]
    lo, hi = torch.minimum(s0, s1), torch.maximum(s0, s1)
    inside = (s[:, None] >= lo[None]) & (s[:, None] <= hi[None])           # (L, T-1)
    valid = inside.any(1)
    k = inside.to(torch.int8).argmax(1)                                     # first True
    den = s1[k] - s0[k]
    safe = den != 0
    alpha = torch.where(safe, (s - s0[k]) / torch.where(safe, den, torch.ones_like(den)), torch.zeros_like(s))
    alpha = torch.where(valid, alpha.clamp(0.0, 1.0), torch.zeros_like(alpha))
    return valid, k, alpha, nearest


def _check_targets(s, device) -> torch.Tensor:
    if not isinstance(s, torch.Tensor) or not torch.is_floating_point(s) or s.ndim != 1:
        raise TypeError("s must be a 1-D floating-point tensor of progress values")
    if not bool(torch.isfinite(s).all()):
        raise ValueError("s contains NaN or infinite entries")
    return s.to(device=device, dtype=DTYPE)


def reindex_by_progress(trajectory, labels, s, *, log: bool = False, progress_values=None) -> Reindexed:
    """Re-parametrise a trajectory of checkpoints by progress (the construction before 2.2.5).

    For each target ``s`` the first segment ``k`` (in time order) with ``s`` between ``s_k`` and
    ``s_{k+1}`` (either order: progress need not be monotone in time) is used, and the result
    is the geodesic interpolation ``P^alpha_{u(k), u(k+1)}`` (2.2.3) with
    ``alpha = (s - s_k)/(s_{k+1} - s_k)`` (the checkpoint ``u(k)`` for a zero-length segment).

    Args:
        trajectory: ``(T, N, C)`` checkpoints in time order (log-probabilities if ``log``).
        labels: ``(N,)`` integer labels (defining the truth, hence progress).
        s: ``(L,)`` float target progress values.
        progress_values: optional ``(T,)`` precomputed progress of the checkpoints.

    Returns:
        :class:`Reindexed` ``(probs (L, N, C), valid (L,), segment (L,), alpha (L,))``. Targets
        outside ``[min s_k, max s_k]`` are not reachable: ``valid`` is False and the row holds
        the checkpoint with the nearest progress (an end of the covered range).
    """
    root = _roots(trajectory, "trajectory", log, ndims=(3,))
    T, N, C = root.shape
    y = _check_labels(labels, N=N, C=C)
    s = _check_targets(s, root.device)
    if progress_values is None:
        sk = _progress_from_roots(root, y, 65, 1e-8)
    else:
        if not isinstance(progress_values, torch.Tensor) or progress_values.shape != (T,):
            raise ValueError(f"progress_values must be a tensor of shape ({T},)")
        sk = progress_values.to(device=root.device, dtype=DTYPE)
    valid, k, alpha, nearest = _locate(sk, s)
    k_next = (k + 1).clamp(max=T - 1)
    probs = _slerp_roots(root[k], root[k_next], alpha)
    probs = torch.where(valid[:, None, None], probs, root[nearest] ** 2)
    return Reindexed(probs, valid, torch.where(valid, k, torch.full_like(k, -1)), alpha)


def trajectory_distance(traj_u, traj_v, labels, *, num_points: int = 100, log: bool = False,
                        grid=None) -> float:
    """Distance between two trajectories compared at equal progress (2.2.5).

    Deviation from the paper: (2.2.5) writes ``int_0^1 d_B(P_u(s), P_v(s)) ds``, but a
    trajectory only covers the progress range of its checkpoints, so this returns the *mean*
    of ``d_B`` over the common range ``[max(start_u, start_v), min(end_u, end_v)]`` (start/end:
    the smallest/largest checkpoint progress), i.e. the integral divided by the range's
    length, estimated on ``num_points`` equally spaced progress values (end points included).

    Args:
        traj_u, traj_v: ``(T_u, N, C)`` and ``(T_v, N, C)`` checkpoints in time order.
        labels: ``(N,)`` integer labels.
        num_points: grid size on the common range.
        grid: optional 1-D tensor of progress values to use instead; only those inside the
            common range are averaged (this is what :func:`trajectory_distances` does with a
            global grid on [0, 1]).

    Raises:
        ValueError: the progress ranges do not overlap, or no ``grid`` value lies in the
            overlap.
    """
    ru = _roots(traj_u, "traj_u", log, ndims=(3,))
    rv = _roots(traj_v, "traj_v", log, ndims=(3,))
    if ru.shape[1:] != rv.shape[1:]:
        raise ValueError(f"traj_u and traj_v must have the same (N, C), got {tuple(ru.shape[1:])} and {tuple(rv.shape[1:])}")
    y = _check_labels(labels, N=ru.shape[1], C=ru.shape[2])
    num_points = check_int(num_points, "num_points", minimum=1)
    su, sv = _progress_from_roots(ru, y, 65, 1e-8), _progress_from_roots(rv, y, 65, 1e-8)
    lo, hi = max(float(su.min()), float(sv.min())), min(float(su.max()), float(sv.max()))
    if lo > hi:
        raise ValueError(f"the trajectories' progress ranges do not overlap: [{float(su.min()):.4g}, "
                         f"{float(su.max()):.4g}] and [{float(sv.min()):.4g}, {float(sv.max()):.4g}]")
    if grid is None:
        pts = torch.linspace(lo, hi, num_points, dtype=DTYPE, device=ru.device)
    else:
        pts = _check_targets(grid, ru.device)
        pts = pts[(pts >= lo) & (pts <= hi)]
        if pts.numel() == 0:
            raise ValueError(f"no grid value lies in the common progress range [{lo:.4g}, {hi:.4g}]")
    total = 0.0
    step = max(1, CHUNK_BYTES // (8 * 2 * ru.shape[1] * ru.shape[2]))
    for j in range(0, pts.shape[0], step):
        # paired d_B (2.2.2) of the two re-indexed models at each progress value of the block,
        # with the same clamping of the overlaps as bhattacharyya()
        pu = _interp_at(ru, su, pts[j:j + step])
        pv = _interp_at(rv, sv, pts[j:j + step])
        overlap = torch.sqrt(pu * pv).sum(-1).clamp(1e-300, 1.0)
        total += float(-torch.log(overlap).mean(-1).sum())
    return total / pts.shape[0]


def _interp_at(root: torch.Tensor, sk: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Geodesic interpolation of a trajectory ``root (T, N, C)`` at targets ``s (L,)`` (valid ones)."""
    _, k, alpha, _ = _locate(sk, s)
    k_next = (k + 1).clamp(max=root.shape[0] - 1)
    return _slerp_roots(root[k], root[k_next], alpha)


def trajectory_distances(trajectories, labels, *, num_points: int = 100, log: bool = False) -> torch.Tensor:
    """Pairwise trajectory distances (2.2.5) of ``K`` trajectories, ``(K, K)`` float64.

    Every trajectory is re-indexed once (progress of its checkpoints, then the segment and
    ``alpha`` of each point of a global grid of ``num_points`` equally spaced progress values
    on [0, 1]); then, grid point by grid point, the ``K`` re-indexed models at that progress
    are formed (``(K, N, C)``, never all grid points at once) and :func:`bhattacharyya` gives
    all their distances. Entry ``(u, v)`` is the mean of ``d_B`` over the grid points inside
    both trajectories' progress ranges, i.e. ``trajectory_distance(u, v,
    grid=torch.linspace(0, 1, num_points))`` (see its docstring for the deviation from the
    paper's ``int_0^1``). Pairs with no common grid point get NaN. The matrix is symmetric
    with an exactly zero diagonal.

    Args:
        trajectories: a sequence of ``(T_i, N, C)`` tensors, or a ``(K, T, N, C)`` tensor.
        labels: ``(N,)`` integer labels.
    """
    if isinstance(trajectories, torch.Tensor):
        if trajectories.ndim != 4:
            raise ValueError(f"a tensor of trajectories must have shape (K, T, N, C), got {tuple(trajectories.shape)}")
        trajectories = list(trajectories)
    if not isinstance(trajectories, (list, tuple)) or len(trajectories) == 0:
        raise TypeError("trajectories must be a non-empty list of (T_i, N, C) tensors or a (K, T, N, C) tensor")
    roots = [_roots(t, f"trajectories[{i}]", log, ndims=(3,)) for i, t in enumerate(trajectories)]
    N, C = roots[0].shape[1:]
    for i, r in enumerate(roots):
        if r.shape[1:] != (N, C):
            raise ValueError(f"trajectories[{i}] has (N, C) = {tuple(r.shape[1:])}, expected {(N, C)}")
        if r.device != roots[0].device:
            raise ValueError("all trajectories must be on the same device")
    y = _check_labels(labels, N=N, C=C)
    num_points = check_int(num_points, "num_points", minimum=1)
    dev, K = roots[0].device, len(roots)
    pts = torch.linspace(0, 1, num_points, dtype=DTYPE, device=dev)
    located = []
    for r in roots:
        sk = _progress_from_roots(r, y, 65, 1e-8)
        valid, k, alpha, _ = _locate(sk, pts)
        located.append((valid, k, (k + 1).clamp(max=r.shape[0] - 1), alpha))
    valid = torch.stack([v for v, _, _, _ in located])                      # (K, G)
    total = torch.zeros(K, K, dtype=DTYPE, device=dev)
    count = torch.zeros(K, K, dtype=DTYPE, device=dev)
    for j in range(num_points):
        idx = valid[:, j].nonzero()[:, 0].tolist()
        if not idx:
            continue
        a = torch.stack([roots[i][located[i][1][j]] for i in idx])
        b = torch.stack([roots[i][located[i][2][j]] for i in idx])
        al = torch.stack([located[i][3][j] for i in idx])
        D = bhattacharyya(_slerp_roots(a, b, al))
        sel = torch.tensor(idx, device=dev)
        total[sel[:, None], sel[None, :]] += D
        count[sel[:, None], sel[None, :]] += 1
    out = total / count                      # 0/0 -> NaN for pairs without a common point
    out = 0.5 * (out + out.T)
    out.fill_diagonal_(0.0)
    return out


# --------------------------------------------------------------------------- ensembles

ENSEMBLE_KINDS = ("arithmetic", "geometric", "harmonic", "sqrt", "bhattacharyya")


def ensemble_mean(P, kind: str = "arithmetic", *, log: bool = False, iters: int = 100,
                  tol: float = 1e-12) -> torch.Tensor:
    """Average ``m`` product models, sample by sample (Table 2.3, Fig. 2.24).

    Args:
        P: ``(m, N, C)`` probabilities (log-probabilities if ``log``).
        kind: ``"arithmetic"`` ``mean_i p_i``; ``"geometric"`` ``prod_i p_i^(1/m)``, normalised;
            ``"harmonic"`` ``(mean_i 1/p_i)^-1``, normalised; ``"sqrt"`` (Hellinger centroid)
            ``(mean_i sqrt p_i)^2``, normalised; ``"bhattacharyya"``: the Bhattacharyya centroid
            ``argmin_q sum_i d_B(P_i, q)`` (Nielsen and Boltz, 2011), see below.
        iters, tol: iteration limit and tolerance (max change of ``sqrt q``) of the centroid.

    Returns:
        ``(N, C)`` float64 probabilities (rows sum to 1).

    Bhattacharyya centroid: ``sum_i d_B(P_i, q)`` separates over samples, and per sample it is
    ``-sum_i log <a_i, r>`` with ``a_i = sqrt p_i``, ``r = sqrt q``, ``|r| = 1``. Stationarity
    on the sphere reads ``r ∝ g(r) = sum_i a_i / <a_i, r>`` (the fixed point the paper refers
    to). We iterate the minorise-maximise form of it, ``r <- normalise(sqrt(r * g(r)))``
    (Jensen's inequality on each ``log <a_i, r>``), which has the same fixed points and
    increases the objective monotonically, starting from the normalised ``mean_i a_i``. The
    objective is concave on the ball ``|r| <= 1`` and maximised on its boundary, so the
    fixed point is the global minimiser. Members with zero probabilities are allowed; the
    geometric/harmonic means raise ValueError where they vanish on a whole sample.
    """
    if kind not in ENSEMBLE_KINDS:
        raise ValueError(f"kind must be one of {ENSEMBLE_KINDS}, got {kind!r}")
    root = _roots(P, "P", log, ndims=(3,))
    m = root.shape[0]
    if kind == "arithmetic":
        q = (root * root).mean(0)
        return q / q.sum(-1, keepdim=True)
    if kind in ("geometric", "harmonic"):
        lp = 2 * torch.log(root)                                  # log p, -inf for p = 0
        if kind == "geometric":
            lq = lp.mean(0)
        else:
            lq = -(torch.logsumexp(-lp, 0) - math.log(m))
        if bool((lq == -math.inf).all(-1).any()):
            raise ValueError(f"the {kind} mean vanishes on some sample (the members' supports do not "
                             "intersect there); it cannot be normalised")
        return torch.softmax(lq, -1)
    iters = check_int(iters, "iters", minimum=0)
    r = root.mean(0)
    r = r / torch.linalg.vector_norm(r, dim=-1, keepdim=True)
    if kind == "sqrt":
        return r * r
    for _ in range(iters):
        overlap = (root * r[None]).sum(-1, keepdim=True)           # (m, N, 1) > 0
        g = (root / overlap).sum(0)
        new = torch.sqrt(r * g)
        new = new / torch.linalg.vector_norm(new, dim=-1, keepdim=True)
        change = float((new - r).abs().max())
        r = new
        if change <= tol:
            break
    q = r * r
    return q / q.sum(-1, keepdim=True)


# --------------------------------------------------------------------------- large-m InPCA helpers

BLOCK_BYTES = 64 * 2**20   # memory budget of one row block of an m x m matrix


def _row_block(m: int) -> int:
    return max(1, BLOCK_BYTES // (8 * max(m, 1)))


def _max_asymmetry(D: torch.Tensor) -> float:
    """``max |D - D^T|`` computed by row blocks (no m x m temporary)."""
    m, b, worst = D.shape[0], _row_block(D.shape[0]), 0.0
    for i in range(0, m, b):
        worst = max(worst, float((D[i:i + b] - D[:, i:i + b].T).abs().max()))
    return worst


def _centred_frobenius_sq(D: torch.Tensor, row: torch.Tensor, grand: torch.Tensor) -> float:
    """``||W||_F^2`` for ``W = -(D - row 1^T - 1 row^T + grand)/2``, by row blocks."""
    m, b, total = D.shape[0], _row_block(D.shape[0]), 0.0
    for i in range(0, m, b):
        Wb = D[i:i + b] - row[i:i + b, None] - row[None, :] + grand
        total += 0.25 * float((Wb * Wb).sum())
    return total


class _CentredOperator(LinearOperator):
    """``W = -L D L / 2`` applied as ``W X = -(D X - row (1^T X) - 1 (row^T X) + grand 1 (1^T X)) / 2``."""

    def __init__(self, D: torch.Tensor, row: torch.Tensor, grand: torch.Tensor):
        super().__init__(D.shape[0], DTYPE, D.device, True)
        self.D, self.row, self.grand = D, row, grand

    def _matmat(self, X: torch.Tensor) -> torch.Tensor:
        s = X.sum(0, keepdim=True)
        return -0.5 * (self.D @ X - self.row[:, None] * s - (self.row @ X)[None, :] + self.grand * s)


def _top_eigh_centred(D: torch.Tensor, row: torch.Tensor, grand: torch.Tensor, k: int, seed: int,
                      tol: float = 1e-11, max_steps: int = 300):
    """The ``k`` largest-``|lambda|`` eigenpairs of ``W = -L D L / 2`` (symmetric, indefinite),
    by the restarted block Krylov iteration :func:`lib.operators.spectral.top_eigenpairs` on
    ``W`` applied matrix-free. Returns ``(lam (k,), U (m, k))`` ordered by ``|lam|``."""
    return top_eigenpairs(_CentredOperator(D, row, grand), k, which="magnitude", seed=seed, tol=tol,
                          max_steps=max_steps)


def embed_log_probs(log_probs: torch.Tensor, n_components: int = 50) -> tuple[torch.Tensor, "InPCA"]:
    """InPCA of models given as log-probabilities (introduced in the training-manifold chapter).

    Args:
        log_probs: ``(m, N, C)`` log-probabilities of ``m`` models on ``N`` samples.
        n_components: components kept (at most ``m``).

    Returns:
        ``(D, fit)``: the ``(m, m)`` Bhattacharyya distance matrix and the fitted :class:`InPCA`.
    """
    D = bhattacharyya(log_probs, log=True)
    return D, InPCA(min(n_components, D.shape[0])).fit(D)


def stress_profile(fit: "InPCA", ks=(1, 3, 10, 25, 50)) -> tuple[list[int], list[float], list[float]]:
    """Explained stress (2.2.8) of a fitted :class:`InPCA` in the top ``k`` dimensions, in the
    root form and the squared form, for each ``k`` in ``ks`` that the fit has.

    Returns:
        ``(ks, root, squared)``: the ``k`` kept and the two forms, lists of the same length.
    """
    ks = [k for k in ks if k <= fit.m_]
    return ks, [fit.explained_stress(k) for k in ks], [fit.explained_stress(k, squared=True) for k in ks]
