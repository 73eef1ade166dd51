"""The estimator algorithms on any operator: Hutchinson and Hutch++ traces, and one Krylov
engine (:func:`krylov_basis`) under Lanczos, stochastic Lanczos quadrature (SLQ) and the
restarted block Krylov eigensolver (one column per block for Lanczos, ``p`` for the block).

They use only what every operator has (``op.shape``, ``op.dtype``, ``op.device``,
``op.symmetric`` and its block product ``op._matmat(V)``, ``(d, k) -> (d, k)``), so that both
the fallbacks of :class:`~lib.operators.base.LinearOperator` and the public estimators of
:mod:`lib.operators.spectral` (which add the argument checks and an operator's closed form)
run the same arithmetic. The Krylov bases are float64 whatever the operator's dtype.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from .._checks import check_int
from .linalg import basis_block, rademacher

__all__ = ["check_symmetric", "exact_trace", "hutchinson_trace", "hutchpp_trace", "krylov_basis",
           "rayleigh_ritz", "lanczos_steps", "tridiagonal", "lanczos_top", "slq_nodes", "slq_logdet", "eigenpairs"]


def check_symmetric(op):
    """``ValueError`` unless the operator is symmetric (what every Lanczos method needs)."""
    if not op.symmetric:
        raise ValueError("this estimator needs a symmetric operator; for G^-1 H use the "
                         "similar symmetric G^-1/2 H G^-1/2")


def exact_trace(op, chunk_size: int = 64) -> float:
    """``sum_i e_i^T A e_i`` over all ``d`` basis vectors, ``chunk_size`` columns per product."""
    d = op.shape[0]
    total = 0.0
    for start in range(0, d, chunk_size):
        stop = min(start + chunk_size, d)
        idx = torch.arange(start, stop)
        block = op._matmat(basis_block(d, start, stop, op.dtype, op.device))
        total += float(block[idx, idx - start].sum())
    return total


def hutchinson_trace(op, num_probes: int, seed: int) -> float:
    """The Hutchinson estimate ``mean_v v^T A v`` over ``num_probes`` Rademacher probes ``v`` ``(d,)``."""
    check_int(num_probes, "num_probes")
    V = rademacher(op.shape[0], num_probes, torch.Generator().manual_seed(seed), op.dtype, op.device)
    return float((V * op._matmat(V)).sum() / num_probes)


def hutchpp_trace(op, num_probes: int, seed: int) -> float:
    """Hutch++ (Meyer et al. 2021) with ``num_probes // 3`` sketch and ``num_probes // 3`` probe
    columns; ``ValueError`` for ``num_probes < 3``."""
    check_int(num_probes, "num_probes")
    generator = torch.Generator().manual_seed(seed)
    if num_probes < 3:
        raise ValueError(f"hutchpp needs num_probes >= 3, got {num_probes}")
    d, k = op.shape[0], num_probes // 3
    S = rademacher(d, k, generator, op.dtype, op.device)
    G = rademacher(d, k, generator, op.dtype, op.device)
    Q, _ = torch.linalg.qr(op._matmat(S))
    G_perp = G - Q @ (Q.T @ G)
    return float((Q * op._matmat(Q)).sum() + (G_perp * op._matmat(G_perp)).sum() / k)


def _apply64(op, V: Tensor) -> Tensor:
    """``op @ V`` for float64 columns ``V`` ``(d, p)``, computed in the operator's dtype."""
    return op._matmat(V.to(op.dtype)).to(torch.float64)


def krylov_basis(op, start: Tensor, num_blocks: int, *, metric=None, solve=None,
                 refill=None) -> tuple[Tensor, Tensor, float]:
    """The one Krylov engine: an orthonormal basis of ``[X, B X, ..., B^(num_blocks - 1) X]``
    for ``B = A`` (or ``B = M^-1 A`` in the ``M``-inner product, when ``metric`` ``M`` and
    ``solve`` ``M^-1`` are given) from ``X = start`` ``(d, p)``. Lanczos is ``p = 1``.

    Each new column is orthogonalized against every column before it, twice ("twice is
    enough"), and normalized. A column that vanishes there spans nothing new: without
    ``refill`` the basis ends (an invariant subspace, where Ritz values are exact: what Lanczos
    wants); with ``refill`` (``cols -> (d, cols)`` random columns) a random column replaces it,
    so the block keeps ``p`` columns (what the block eigensolver wants).

    Blocks of several columns with ``refill`` and no metric are orthonormalized a block at a
    time (two block projections, QR), the same space at the speed of matrix products.

    Returns ``(Q (d, n), AQ (d, n), residual)``: the float64 basis (``Q^T M Q = I``), ``A Q``
    (before ``M^-1``), and the norm of the block that would come next (Lanczos' ``beta_n``;
    0 on the block path).
    """
    d, p = start.shape
    size = min(num_blocks * p, d)
    Q = torch.zeros(d, size, dtype=torch.float64, device=op.device)
    AQ = torch.zeros_like(Q)
    MQ = Q if solve is None else torch.zeros_like(Q)  # M Q: the M-inner products of the reorthogonalization
    n = 0

    def remainder(w: Tensor) -> tuple[Tensor, Tensor, float]:
        for _ in range(2):
            w = w - Q[:, :n] @ (MQ[:, :n].T @ w)
        Mw = w if solve is None else _apply64(metric, w[:, None])[:, 0]
        return w, Mw, float(torch.dot(w, Mw).clamp_min(0).sqrt())

    def append(columns: Tensor) -> tuple[float, bool]:
        # adds the columns while there is room: the norm of their remainders, and whether one
        # vanished with nothing to refill it (the basis then ends)
        nonlocal n
        if refill is not None and solve is None and columns.shape[1] > 1:
            # a whole block at once (BLAS-3; the block eigensolver needs no residual)
            take = min(columns.shape[1], size - n)
            if take > 0:
                Q[:, n:n + take] = _orthonormal_block(Q[:, :n], columns, refill)[:, :take]
                n += take
            return 0.0, False
        squares, ended = 0.0, False
        for w in columns.T:
            scale = float(torch.linalg.vector_norm(w))
            w, Mw, norm = remainder(w)
            squares += norm ** 2
            if n == size or (norm <= 1e-10 * scale and refill is None):
                ended = ended or n < size
                continue
            while norm <= 1e-10 * scale:
                w = refill(1)[:, 0].to(Q)
                scale = float(torch.linalg.vector_norm(w))
                w, Mw, norm = remainder(w)
            Q[:, n], MQ[:, n] = w / norm, Mw / norm
            n += 1
        return squares ** 0.5, ended

    _, ended = append(start.to(Q))
    if n == 0:
        raise ValueError("the Krylov start vector is zero")
    done, residual = 0, 0.0
    while done < n and not ended:
        block = slice(done, n)
        AQ[:, block] = _apply64(op, Q[:, block])
        W = AQ[:, block] if solve is None else _apply64(solve, AQ[:, block])
        done = n
        residual, ended = append(W)
    return Q[:, :done], AQ[:, :done], residual


def _orthonormal_block(Q: Tensor, W: Tensor, refill) -> Tensor:
    """``W``'s columns ``(d, p)`` made orthonormal to ``Q``'s and to each other (two block
    projections, QR); a column with nothing outside ``span(Q)`` is replaced by ``refill``."""
    norms = torch.linalg.vector_norm(W, dim=0).clamp(min=1e-300)
    for _ in range(2):
        W = W - Q @ (Q.T @ W)
    bad = torch.linalg.vector_norm(W, dim=0) < 1e-10 * norms
    if bool(bad.any()):
        Z = refill(int(bad.sum())).to(W)
        for _ in range(2):
            Z = Z - Q @ (Q.T @ Z)
        W = W.clone()
        W[:, bad] = Z
    W, _ = torch.linalg.qr(W)
    W = W - Q @ (Q.T @ W)  # QR mixes the columns: one more cleaning pass
    return torch.linalg.qr(W)[0]


def rayleigh_ritz(Q: Tensor, AQ: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenpairs ``(theta (n,), S (n, n))``, ascending, of ``T = Q^T A Q`` (symmetrized), the
    operator restricted to the basis of :func:`krylov_basis`; Ritz vectors are ``Q S``."""
    H = Q.T @ AQ
    return torch.linalg.eigh(0.5 * (H + H.T))


def lanczos_steps(op, num_steps: int, v0: Tensor | None = None, *, seed: int = 0, metric=None,
                  solve=None) -> tuple[Tensor, Tensor, Tensor, float]:
    """Lanczos with full re-orthogonalization (:func:`krylov_basis` with one column), in the
    ``metric``-inner product when ``metric`` (``M``) and ``solve`` (``M^-1``) are given (see
    :func:`lib.operators.spectral.lanczos`).

    Runs ``min(num_steps, d)`` steps from ``v0`` ``(d,)`` (Gaussian from ``seed`` if ``None``),
    fewer at an invariant subspace. Returns ``(alpha (m,), beta (m - 1,), Q (d, m), residual)``:
    float64 diagonal and off-diagonal of ``T = Q^T A Q``, the basis, and the last ``beta``.
    """
    d = op.shape[0]
    if v0 is None:
        v0 = torch.randn(d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    Q, AQ, residual = krylov_basis(op, v0.reshape(d, 1), min(num_steps, d), metric=metric, solve=solve)
    H = Q.T @ AQ
    T = 0.5 * (H + H.T)  # tridiagonal up to round-off: Krylov spaces of one vector
    return torch.diagonal(T).cpu(), torch.diagonal(T, 1).cpu(), Q, residual


def tridiagonal(alpha: Tensor, beta: Tensor) -> Tensor:
    """The symmetric tridiagonal ``(m, m)`` matrix with diagonal ``alpha`` and off-diagonal ``beta``."""
    return torch.diag(alpha) + torch.diag(beta, 1) + torch.diag(beta, -1)


def lanczos_top(op, k: int, tol: float, max_steps: int, seed: int, metric=None, solve=None) -> Tensor:
    """The ``k`` largest (generalized) eigenvalues ``(k,)``, descending, in the operator's dtype:
    Lanczos from a ``seed`` start, doubling the Krylov space (at most ``max_steps``) until the
    residual bounds of the top ``k`` Ritz values are below ``tol * max|theta|``."""
    d = op.shape[0]
    steps = min(max_steps, max(2 * k + 10, 20))
    while True:
        alpha, beta, _, residual = lanczos_steps(op, steps, seed=seed, metric=metric, solve=solve)
        m = len(alpha)
        evals, evecs = torch.linalg.eigh(tridiagonal(alpha, beta))
        exhausted = m < steps or m == d  # invariant subspace or full space
        if exhausted or steps >= max_steps:
            break
        residuals = (residual * evecs[-1, -k:]).abs() if m >= k else None
        scale = float(evals.abs().max())
        if residuals is not None and bool((residuals <= tol * max(scale, 1e-30)).all()):
            break
        steps = min(max_steps, 2 * steps)
    if len(evals) < k:
        raise ValueError(f"the Krylov space of this start vector has dimension {len(evals)} < "
                         f"k={k} (an operator of low rank with repeated eigenvalues); use "
                         "op.to_dense() and torch.linalg.eigvalsh")
    return evals.flip(0)[:k].to(op.dtype)


def slq_nodes(op, num_probes: int, num_steps: int, seed: int) -> tuple[Tensor, Tensor]:
    """Stochastic Lanczos quadrature: the Ritz values and weights, both ``(num_probes, num_steps)``
    (a run that stops early is padded with zero-weight nodes), from Gaussian probes of ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    nodes, weights = [], []
    for _ in range(num_probes):
        v0 = torch.randn(op.shape[0], generator=generator, dtype=torch.float64)
        alpha, beta, _, _ = lanczos_steps(op, num_steps, v0)
        theta, S = torch.linalg.eigh(tridiagonal(alpha, beta))
        tau = S[0] ** 2
        pad = num_steps - len(theta)  # early stop: pad with zero-weight nodes
        nodes.append(torch.cat([theta, theta[-1:].expand(pad)]))
        weights.append(torch.cat([tau, torch.zeros(pad, dtype=tau.dtype)]))
    return torch.stack(nodes), torch.stack(weights)


def slq_logdet(op, num_probes: int, num_steps: int, seed: int) -> float:
    """``log det A = tr log A ~ d * mean_v sum_j tau_j log theta_j`` by SLQ; ``ValueError`` if a
    quadrature node is not positive (the operator is not positive definite)."""
    nodes, weights = slq_nodes(op, num_probes, num_steps, seed)
    used = weights > 0
    if bool((nodes[used] <= 0).any()):
        raise ValueError(f"operator is not positive definite (a Ritz value is "
                         f"{float(nodes[used].min()):.3g}); add damping before logdet")
    logs = torch.where(used, nodes.clamp_min(1e-300).log(), torch.zeros_like(nodes))
    return float(op.shape[0] * (weights * logs).sum(dim=1).mean())


def _order(lam: Tensor, U: Tensor, n: int, which: str):
    """The first ``n`` pairs by descending ``|lam|`` (``"magnitude"``) or ``lam`` (``"largest"``)."""
    key = lam.abs() if which == "magnitude" else lam
    idx = torch.argsort(key, descending=True, stable=True)[:n]
    return lam[idx], U[:, idx]


def eigenpairs(op, k: int, which: str, seed: int, tol: float, max_steps: int) -> tuple[Tensor, Tensor]:
    """The ``k`` eigenpairs ``(lam (k,), U (d, k))`` of a symmetric operator that come first by
    ``which`` (see :func:`lib.operators.spectral.top_eigenpairs`): dense from ``A I`` when
    ``d <= 8 p`` for blocks of ``p = k + max(10, k)`` columns, else restarted block Krylov."""
    m, dev = op.shape[0], op.device
    p = min(m, k + max(10, k))
    if m <= 8 * p:
        W = op._matmat(torch.eye(m, dtype=op.dtype, device=dev))
        lam, U = torch.linalg.eigh(0.5 * (W + W.T))
        return _order(lam, U, k, which)
    return _block_krylov(op, k, p, which, seed, tol, max_steps)


def _block_krylov(op, k: int, p: int, which: str, seed: int, tol: float,
                  max_steps: int) -> tuple[Tensor, Tensor]:
    """:func:`eigenpairs`' restarted block Krylov iteration with blocks of ``p`` columns, on
    the one engine :func:`krylov_basis`."""
    m = op.shape[0]
    generator = torch.Generator().manual_seed(seed)

    def randn(cols):
        return torch.randn(m, cols, generator=generator, dtype=torch.float64)

    q = max(1, min(6, m // p - 1))             # blocks A X, ..., A^q X after X
    X = randn(p)
    for _ in range(max_steps):
        Q, AQ, _ = krylov_basis(op, X, q + 1, refill=randn)
        theta, S = rayleigh_ritz(Q, AQ)
        theta, S = _order(theta, S, p, which)
        X, AX = Q @ S, AQ @ S                  # A X from the products already made
        res = torch.linalg.vector_norm(AX[:, :k] - X[:, :k] * theta[:k], dim=0)
        if float(res.max()) <= tol * max(float(theta[0].abs()), 1e-300):
            break
    else:
        warnings.warn(f"the block Krylov eigensolver did not reach tol = {tol} in {max_steps} restarts "
                      f"(max relative residual {float(res.max()) / float(theta[0].abs()):.2e})", RuntimeWarning)
    return theta[:k].to(op.dtype), X[:, :k].to(op.dtype)
