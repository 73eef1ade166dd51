"""The estimator algorithms on any operator: Hutchinson and Hutch++ traces, Lanczos, stochastic
Lanczos quadrature (SLQ) and the restarted block Krylov eigensolver.

They use only what every operator has (``op.shape``, ``op.dtype``, ``op.device``,
``op.symmetric`` and its block product ``op._matmat(V)``, ``(d, k) -> (d, k)``), so that both
the fallbacks of :class:`~lib.operators.base.LinearOperator` and the public estimators of
:mod:`lib.operators.spectral` (which add the argument checks and an operator's closed form)
run the same arithmetic. Lanczos runs its recurrence in float64 whatever the operator's dtype.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from .._checks import check_int
from .linalg import basis_block, rademacher

__all__ = ["check_symmetric", "exact_trace", "hutchinson_trace", "hutchpp_trace", "lanczos_steps",
           "tridiagonal", "lanczos_top", "slq_nodes", "slq_logdet", "eigenpairs"]


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


def _apply64(op, v: Tensor) -> Tensor:
    """``op @ v`` for a float64 vector ``v`` ``(d,)``, computed in the operator's dtype."""
    return op._matmat(v[:, None].to(op.dtype))[:, 0].to(torch.float64)


def lanczos_steps(op, num_steps: int, v0: Tensor | None = None, *, seed: int = 0, metric=None,
                  solve=None) -> tuple[Tensor, Tensor, Tensor, float]:
    """Lanczos with full re-orthogonalization, in the ``metric``-inner product when ``metric``
    (``M``) and ``solve`` (``M^-1``) are given (see :func:`lib.operators.spectral.lanczos`).

    Runs ``min(num_steps, d)`` steps from ``v0`` ``(d,)`` (Gaussian from ``seed`` if ``None``),
    fewer at an invariant subspace. Returns ``(alpha (m,), beta (m - 1,), Q (d, m), residual)``:
    float64 diagonal and off-diagonal of ``T = Q^T A Q``, the basis, and the last ``beta``.
    """
    d = op.shape[0]
    num_steps = min(num_steps, d)
    if v0 is None:
        generator = torch.Generator().manual_seed(seed)
        v0 = torch.randn(d, generator=generator, dtype=torch.float64)
    v0 = v0.to(device=op.device, dtype=torch.float64)
    Q = torch.zeros(d, num_steps, dtype=torch.float64, device=op.device)
    # MQ = M Q (= Q without a metric): the M-inner products of the re-orthogonalization.
    MQ = Q if solve is None else torch.zeros_like(Q)

    def normalize(w: Tensor, j: int) -> Tensor:
        Mw = w if solve is None else _apply64(metric, w)
        norm = torch.dot(w, Mw).clamp_min(0).sqrt()
        if j < num_steps:
            Q[:, j] = w / norm
            if solve is not None:
                MQ[:, j] = Mw / norm
        return norm

    normalize(v0, 0)
    alphas, betas = [], []
    residual = torch.zeros((), dtype=torch.float64)
    for j in range(num_steps):
        w = _apply64(op, Q[:, j])
        alphas.append(torch.dot(Q[:, j], w))
        if solve is not None:
            w = _apply64(solve, w)
        # Full re-orthogonalization, twice ("twice is enough"), against all earlier vectors.
        for _ in range(2):
            w = w - Q[:, :j + 1] @ (MQ[:, :j + 1].T @ w)
        beta = normalize(w, j + 1)
        if j + 1 == num_steps or beta <= 1e-10 * max(1.0, float(alphas[0].abs())):
            # last step, or an invariant subspace (T's eigenvalues are then exact)
            residual = beta
            break
        betas.append(beta)
    m = len(alphas)
    alpha = torch.stack(alphas).cpu()
    beta = torch.stack(betas).cpu() if betas else torch.zeros(0, dtype=torch.float64)
    return alpha, beta, Q[:, :m], float(residual)


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


def _orth_against(Q: Tensor | None, Y: Tensor, randn) -> Tensor:
    """Orthonormalise ``Y``'s columns against ``Q`` and each other; breakdowns get random columns."""
    norms = torch.linalg.vector_norm(Y, dim=0).clamp(min=1e-300)
    for _ in range(2):
        if Q is not None:
            Y = Y - Q @ (Q.T @ Y)
    bad = torch.linalg.vector_norm(Y, dim=0) < 1e-10 * norms
    if bool(bad.any()):
        Z = randn(int(bad.sum()))
        for _ in range(2):
            if Q is not None:
                Z = Z - Q @ (Q.T @ Z)
        Y = Y.clone()
        Y[:, bad] = Z
    Y, _ = torch.linalg.qr(Y)
    if Q is not None:                      # QR mixes columns: one more cleaning pass
        Y = Y - Q @ (Q.T @ Y)
        Y, _ = torch.linalg.qr(Y)
    return Y


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
    """:func:`eigenpairs`' restarted block Krylov iteration with blocks of ``p`` columns."""
    m, dev, matvec = op.shape[0], op.device, op._matmat
    gen = torch.Generator().manual_seed(seed)

    def randn(cols):
        return torch.randn(m, cols, generator=gen, dtype=op.dtype).to(dev)

    q = max(1, min(6, m // p - 1))             # blocks A X, ..., A^q X after X
    X = _orth_against(None, randn(p), randn)
    for _ in range(max_steps):
        blocks, images = [X], []
        for _ in range(q):
            Y = matvec(blocks[-1])
            images.append(Y)
            blocks.append(_orth_against(torch.cat(blocks, 1), Y, randn))
        images.append(matvec(blocks[-1]))
        Q, WQ = torch.cat(blocks, 1), torch.cat(images, 1)      # A Q from the products already made
        H = Q.T @ WQ
        theta, S = torch.linalg.eigh(0.5 * (H + H.T))
        theta, S = _order(theta, S, p, which)
        X, WX = Q @ S, WQ @ S
        res = torch.linalg.vector_norm(WX[:, :k] - X[:, :k] * theta[:k], dim=0)
        if float(res.max()) <= tol * max(float(theta[0].abs()), 1e-300):
            return theta[:k], X[:, :k]
        X = _orth_against(None, X, randn)
    warnings.warn(f"the block Krylov eigensolver did not reach tol = {tol} in {max_steps} restarts "
                  f"(max relative residual {float(res.max()) / float(theta[0].abs()):.2e})", RuntimeWarning)
    return theta[:k], X[:, :k]
