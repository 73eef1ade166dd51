"""Intensive PCA (InPCA) of probabilistic models (chapter 2 of Mao 2025, eqs. 2.2.2-2.2.9).

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

Large ``m``
-----------
``InPCA(method="iterative")`` computes only the top-``k`` ``|lambda|`` eigenpairs by block
Krylov iteration (``W`` is never formed); ``all_eigenvalues_`` is then None and
``explained_stress(k)`` needs ``k <= n_components``.

Trajectories of models, their progress and their averages (eqs. 2.2.3-2.2.5, Table 2.3) are
in :mod:`lib.manifolds.trajectories`. Everything is torch, float64, and runs on whatever
device the inputs live on.
"""

from __future__ import annotations

import math

import torch

from .._checks import check_float_tensor, check_int, check_seed, check_square_matrix
from ..operators.base import LinearOperator
from ..operators.spectral import top_eigenpairs

DTYPE = torch.float64
SUM_TOL = 1e-6            # rows of probabilities must sum to 1 within this
SYM_TOL = 1e-10           # relative asymmetry allowed in a distance matrix
CHUNK_BYTES = 256 * 2**20  # memory budget of one block of the Bhattacharyya computation

__all__ = ["bhattacharyya", "InPCA", "minkowski_sq_distances", "embed_log_probs", "stress_profile",
           "sqrt_probabilities", "DTYPE", "SUM_TOL", "CHUNK_BYTES"]


# --------------------------------------------------------------------------- checks

def _check_probs(P, name: str, log: bool) -> torch.Tensor:
    """A floating ``(models, N, C)`` tensor; values are checked block by block later."""
    check_float_tensor(P, name)
    if P.ndim != 3:
        raise ValueError(f"{name} must have shape (models, N, C), got shape {tuple(P.shape)}")
    if min(P.shape) == 0:
        raise ValueError(f"{name} must be non-empty, got shape {tuple(P.shape)}")
    return P


def sqrt_probabilities(block: torch.Tensor, name: str, log: bool) -> torch.Tensor:
    """Check probabilities ``(..., C)`` (one block, or a whole tensor; log-probabilities if
    ``log``) and return their square roots (float64); ValueError naming ``name``."""
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
        ``P``'s device; for ``Q=None`` exactly symmetric with a zero diagonal (upper blocks only).

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
        a = sqrt_probabilities(P[:, start:stop], "P", log).transpose(0, 1).contiguous()               # (n, m, C)
        b = a if same else sqrt_probabilities(Q[:, start:stop], "Q", log).transpose(0, 1).contiguous()  # (n, k, C)
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
    check_float_tensor(embedding, "embedding")
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
        check_float_tensor(D_new, "D_new")
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
