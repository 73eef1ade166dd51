"""Spectral estimators for symmetric matrix-free operators.

Everything here touches the matrix only through products ``A @ V``:

* :func:`trace`: exact (``d`` products), Hutchinson, Hutch++;
* :func:`eigvalsh`: the largest ``k`` eigenvalues by Lanczos with full re-orthogonalization,
  also of the generalized problem ``A v = lambda M v`` (Lanczos in the ``M``-inner product);
* :func:`spectral_density`: stochastic Lanczos quadrature (SLQ) of the eigenvalue density;
* :func:`logdet`: ``log det A`` of a positive-definite operator by SLQ;
* :func:`top_eigenpairs`: the ``k`` eigenpairs of largest ``|lambda|`` (or largest ``lambda``)
  by restarted block Krylov iteration, with eigenvectors (InPCA's embedding uses it).

Lanczos runs its three-term recurrence in float64 whatever the operator's dtype, so
the Ritz values are limited by the operator's precision, not by the recurrence.

:func:`trace`, :func:`eigvalsh` and :func:`logdet` use an operator's closed form when it
has one (its name is in ``op.exact``, e.g. dense, diagonal, identity, K-FAC) and no
``method`` is given; a given ``method`` always runs that method, so estimators can be
compared with the exact value on the same operator.

The functions here check their arguments and dispatch to closed forms; the algorithms
themselves live in :mod:`lib.operators.krylov`, which the fallbacks of
:class:`~lib.operators.base.LinearOperator` call too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .._checks import check_int
from .base import DampedInverseOperator, LinearOperator
from .krylov import (check_symmetric, eigenpairs, exact_trace, hutchinson_trace, hutchpp_trace, lanczos_steps,
                     lanczos_top, slq_logdet, slq_nodes)

__all__ = ["trace", "eigvalsh", "relative_difference", "lanczos", "spectral_density", "logdet", "SpectralDensity",
           "TRACE_METHODS", "EIGVALSH_METHODS", "LOGDET_METHODS", "top_eigenpairs"]

TRACE_METHODS = ("exact", "hutchinson", "hutchpp")
EIGVALSH_METHODS = ("lanczos", "block")
LOGDET_METHODS = ("slq",)


def _check_method(method, methods: tuple, what: str):
    if method is not None and method not in methods:
        raise ValueError(f"unknown {what} method '{method}'; choose one of {methods} or None")


def _check_operator(op, need_symmetric: bool = False):
    if not isinstance(op, LinearOperator):
        raise TypeError(f"expected a LinearOperator, got {type(op).__name__}")
    if need_symmetric:
        check_symmetric(op)


def trace(op: LinearOperator, method: str | None = None, num_probes: int = 30, *,
          seed: int = 0, chunk_size: int = 64) -> float:
    """Trace of a square operator.

    Args:
        op: operator of shape ``(d, d)``.
        method: ``None`` (default: the operator's closed form ``op.trace()`` if ``"trace"`` is
            in ``op.exact``, else ``"hutchpp"``), ``"exact"`` (sums ``e_i^T A e_i`` over all
            ``d`` basis vectors, in chunks),
            ``"hutchinson"`` (mean of ``v^T A v`` over Rademacher ``v``; unbiased, variance
            ``2 ||A||_F^2 - 2 sum A_ii^2`` per probe), or ``"hutchpp"`` (Meyer et al. 2021:
            a third of the products find the dominant subspace exactly, the rest
            estimate the remainder; ``num_probes`` is rounded down to a multiple of 3).
        num_probes: number of matrix-vector products for the stochastic methods.
        seed: seed of the probe vectors.

    Returns:
        The (estimated) trace as a Python float.

    Example:
        >>> import torch
        >>> from lib.operators import spectral as estimators
        >>> from lib.operators import DiagonalOperator
        >>> A = DiagonalOperator(torch.arange(1.0, 101.0))
        >>> estimators.trace(A, "exact")
        5050.0
    """
    _check_operator(op)
    _check_method(method, TRACE_METHODS, "trace")
    if method is None:
        if "trace" in op.exact:
            return float(op.trace())
        method = "hutchpp"
    if method == "exact":
        return exact_trace(op, chunk_size)
    if method == "hutchinson":
        return hutchinson_trace(op, num_probes, seed)
    return hutchpp_trace(op, num_probes, seed)


def relative_difference(a: LinearOperator, b: LinearOperator, num_probes: int = 30, *,
                        seed: int = 0, sketch: Tensor | None = None) -> float:
    """``||(A - B) S||_F / ||B S||_F`` for a Gaussian sketch ``S`` of shape ``(d, num_probes)``.

    Since ``E[S S^T] = num_probes * I``, both norms estimate the Frobenius norms of
    ``A - B`` and ``B`` (up to the same factor), so the ratio estimates the relative
    Frobenius distance ``||A - B||_F / ||B||_F`` from ``2 * num_probes`` products.

    Args:
        a, b: operators of the same shape ``(d, d)``.
        num_probes: columns of the sketch (ignored when ``sketch`` is given).
        seed: seed of the sketch.
        sketch: a fixed ``(d, k)`` sketch, to compare several pairs on the same vectors.
    """
    _check_operator(a)
    _check_operator(b)
    if a.shape != b.shape:
        raise ValueError(f"cannot compare operators of shapes {a.shape} and {b.shape}")
    if sketch is None:
        generator = torch.Generator().manual_seed(seed)
        sketch = torch.randn(a.shape[0], check_int(num_probes, "num_probes"), generator=generator)
    bs = b @ sketch.to(device=b.device, dtype=b.dtype)
    diff = a @ sketch.to(device=a.device, dtype=a.dtype) - bs.to(a.dtype)
    return float(diff.norm() / bs.norm())


def _check_metric(op: LinearOperator, metric, metric_solve):
    if metric is None:
        if metric_solve is not None:
            raise ValueError("metric_solve needs a metric")
        return None
    _check_operator(metric)
    if not metric.symmetric:
        raise ValueError("a metric must be a symmetric operator")
    if metric.shape != op.shape:
        raise ValueError(f"the operator has shape {op.shape} but the metric has shape {metric.shape}")
    if metric_solve is None:
        return DampedInverseOperator(metric, 0.0, tol=1e-12)
    _check_operator(metric_solve)
    if metric_solve.shape != op.shape:
        raise ValueError(f"metric_solve has shape {metric_solve.shape}, expected {op.shape}")
    return metric_solve


def lanczos(op: LinearOperator, num_steps: int, v0: Tensor | None = None, *, seed: int = 0,
            metric: LinearOperator | None = None, metric_solve: LinearOperator | None = None,
            return_basis: bool = False):
    """Lanczos tridiagonalization with full re-orthogonalization.

    With a ``metric`` ``M`` (symmetric positive definite), runs Lanczos on ``M^-1 A`` in
    the ``M``-inner product ``<u, v>_M = u^T M v``, in which ``M^-1 A`` is self-adjoint:
    the basis is ``M``-orthonormal (``Q^T M Q = I``), ``T = Q^T A Q``, and the Ritz values
    approximate the generalized eigenvalues of ``A v = lambda M v``. Each step costs one
    product with ``A``, one with ``M`` and one with ``metric_solve`` (``M^-1``, by default
    conjugate gradients on ``M``); no factorization of ``M`` is needed.

    Args:
        op: symmetric operator ``A`` of shape ``(d, d)``.
        num_steps: number of steps ``m <= d``; stops early at an invariant subspace.
        v0: start vector ``(d,)`` (random Gaussian from ``seed`` if ``None``).
        metric: optional symmetric positive-definite ``(d, d)`` operator ``M``.
        metric_solve: optional operator applying ``M^-1`` (default: CG to 1e-12).
        return_basis: also return the basis ``Q`` of shape ``(d, m)``.

    Returns:
        ``(alpha, beta)`` float64 tensors of shapes ``(m,)`` and ``(m - 1,)``: the diagonal
        and off-diagonal of ``T = Q^T A Q``; with ``return_basis``, ``(alpha, beta, Q)``.
    """
    _check_operator(op, need_symmetric=True)
    solve = _check_metric(op, metric, metric_solve)
    check_int(num_steps, "num_steps")
    alpha, beta, Q, _ = lanczos_steps(op, num_steps, v0, seed=seed, metric=metric, solve=solve)
    return (alpha, beta, Q) if return_basis else (alpha, beta)


def eigvalsh(op: LinearOperator, k: int = 1, *, method: str | None = None, tol: float = 1e-6,
             max_steps: int | None = None, seed: int = 0, metric: LinearOperator | None = None,
             metric_solve: LinearOperator | None = None) -> Tensor:
    """The ``k`` largest eigenvalues of a symmetric operator, in descending order.

    Without a ``metric`` and with ``method=None``, an operator with ``"eigvalsh"`` in
    ``op.exact`` answers in closed form (``op.eigvalsh(k)``, reversed); otherwise, or with
    ``method="lanczos"``, Lanczos as below.

    With a ``metric`` ``M``, the ``k`` largest generalized eigenvalues of ``A v = lambda M v``
    (Lanczos in the ``M``-inner product, see :func:`~lib.operators.spectral.lanczos`); their accuracy is also
    limited by that of ``metric_solve``.

    Runs Lanczos with full re-orthogonalization, growing the Krylov space until the
    residual bound ``|beta_m s_mi|`` of each of the top ``k`` Ritz values is below
    ``tol * max|lambda|`` (or the space is the whole ``R^d``, where Ritz values are exact).
    Like every single-vector Krylov method it finds one copy of a repeated eigenvalue
    per invariant subspace it meets; a random start makes further copies appear only
    through rounding, so for matrices with exactly repeated top eigenvalues use
    :meth:`~lib.operators.base.LinearOperator.to_dense`.

    Args:
        op: symmetric operator of shape ``(d, d)``.
        k: number of eigenvalues, ``1 <= k <= d``.
        method: ``None`` (closed form if the operator has one, else Lanczos), ``"lanczos"``, or
            ``"block"`` (:func:`top_eigenpairs`, restarted block Krylov; finds repeated
            eigenvalues; ``tol`` then bounds the residuals, no ``metric``).
        tol: relative accuracy of the returned eigenvalues.
        max_steps: cap on the Krylov dimension (default ``d``).
        seed: seed of the random start vector.
        metric, metric_solve: optional SPD metric ``M`` and an operator applying ``M^-1``.

    Returns:
        Tensor of shape ``(k,)`` in the operator's dtype, descending.

    Example:
        >>> import torch
        >>> from lib.operators import spectral as estimators
        >>> from lib.operators import DiagonalOperator
        >>> top = estimators.eigvalsh(DiagonalOperator(torch.arange(1.0, 101.0)), 2)
        >>> torch.allclose(top, torch.tensor([100.0, 99.0]))
        True
    """
    closed = method is None and metric is None and "eigvalsh" in getattr(op, "exact", ())
    # an operator's own eigvalsh may serve a non-symmetric one similar to a symmetric one (G^-1 H)
    _check_operator(op, need_symmetric=not closed)
    _check_method(method, EIGVALSH_METHODS, "eigvalsh")
    metric_solve = _check_metric(op, metric, metric_solve)
    check_int(k, "k")
    d = op.shape[0]
    if k > d:
        raise ValueError(f"k={k} exceeds the operator's dimension {d}")
    if closed:
        return op.eigvalsh(k).flip(0).to(op.dtype)
    if method == "block":
        if metric is not None:
            raise ValueError("method='block' does not take a metric; use method='lanczos'")
        return top_eigenpairs(op, k, which="largest", seed=seed, tol=tol)[0].to(op.dtype)
    return lanczos_top(op, k, tol, d if max_steps is None else min(max_steps, d), seed, metric, metric_solve)


@dataclass
class SpectralDensity:
    """Result of stochastic Lanczos quadrature.

    Attributes:
        nodes: Ritz values, ``(num_probes, m)``.
        weights: quadrature weights ``(num_probes, m)``, each row summing to 1.
        grid: evaluation points ``(num_points,)``.
        density: smoothed density on ``grid`` ``(num_points,)``; integrates to about 1.
        sigma: width of the Gaussian kernel used for smoothing.
    """
    nodes: Tensor
    weights: Tensor
    grid: Tensor
    density: Tensor
    sigma: float


def spectral_density(op: LinearOperator, num_probes: int = 5, num_steps: int = 50, *,
                     num_points: int = 512, sigma: float | None = None,
                     grid: Tensor | None = None, seed: int = 0) -> SpectralDensity:
    """Eigenvalue density of a symmetric operator by stochastic Lanczos quadrature.

    Each Gaussian probe ``v`` gives a Gauss quadrature ``sum_j tau_j delta(t - theta_j)`` of
    the spectral measure ``v^T delta(t - A) v / ||v||^2``; averaging over probes and
    smoothing with a Gaussian of width ``sigma`` estimates ``(1/d) sum_i delta(t - lambda_i)``.

    Args:
        op: symmetric ``(d, d)`` operator.
        num_probes: number of random start vectors.
        num_steps: Lanczos steps per probe (quadrature nodes).
        num_points: size of the default grid.
        sigma: kernel width (default: 1 % of the spectral range).
        grid: evaluation points (default: spectral range padded by ``5 sigma``).
        seed: seed of the probes.

    Returns:
        :class:`~lib.operators.spectral.SpectralDensity`.
    """
    _check_operator(op, need_symmetric=True)
    check_int(num_probes, "num_probes")
    check_int(num_steps, "num_steps")
    nodes, weights = slq_nodes(op, num_probes, num_steps, seed)
    lo, hi = float(nodes.min()), float(nodes.max())
    if sigma is None:
        sigma = max(hi - lo, 1e-12) / 100
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    if grid is None:
        grid = torch.linspace(lo - 5 * sigma, hi + 5 * sigma, num_points, dtype=torch.float64)
    grid = torch.as_tensor(grid, dtype=torch.float64)
    kernel = torch.exp(-0.5 * ((grid[:, None, None] - nodes[None]) / sigma) ** 2)
    kernel = kernel / (sigma * math.sqrt(2 * math.pi))
    density = (kernel * weights[None]).sum(dim=(1, 2)) / num_probes
    return SpectralDensity(nodes, weights, grid, density, float(sigma))


def logdet(op: LinearOperator, num_probes: int = 10, num_steps: int = 30, *,
           method: str | None = None, seed: int = 0) -> float:
    """``log det A`` for a symmetric positive-definite operator: its closed form
    ``op.logdet()`` if ``"logdet"`` is in ``op.exact`` and ``method`` is ``None``, else
    (or with ``method="slq"``) the stochastic Lanczos quadrature estimate.

    ``log det A = tr log A ~ d * mean_v sum_j tau_j log theta_j``. Raises ``ValueError``
    if a quadrature node is not positive, i.e. the operator is not positive definite
    (add damping: ``op + damping * IdentityOperator(...)``).

    Returns:
        The estimate as a Python float.
    """
    closed = method is None and "logdet" in getattr(op, "exact", ())
    _check_operator(op, need_symmetric=not closed)
    _check_method(method, LOGDET_METHODS, "logdet")
    check_int(num_probes, "num_probes")
    check_int(num_steps, "num_steps")
    if closed:
        return float(op.logdet())
    return slq_logdet(op, num_probes, num_steps, seed)


def top_eigenpairs(op: LinearOperator, k: int, *, which: str = "magnitude", seed: int = 0,
                   tol: float = 1e-11, max_steps: int = 300) -> tuple[Tensor, Tensor]:
    """The ``k`` eigenpairs of a symmetric operator with the largest ``|lambda|`` (``which=
    "magnitude"``, for indefinite matrices) or the largest ``lambda`` (``which="largest"``).

    Restarted block Krylov iteration: from an orthonormal block ``X`` of ``p = k + max(10, k)``
    columns, build the basis ``[X, A X, ..., A^q X]`` with :func:`lib.operators.krylov.krylov_basis`
    (the engine under :func:`lanczos` too, here with ``p`` columns per block), take the
    Rayleigh-Ritz pairs of ``A`` on it, keep the ``p`` Ritz vectors that come first as the
    next start, until the residuals ``||A x_i - theta_i x_i||`` of the wanted ``k`` are below
    ``tol * |theta_1|`` (a ``RuntimeWarning`` after ``max_steps`` restarts). Krylov spaces
    approximate both ends of the spectrum, which is what the largest ``|lambda|`` of an
    indefinite matrix needs. Small problems (``d <= 8 p``) are solved densely from ``A I``.
    Unlike single-vector Lanczos (:func:`eigvalsh`) a block finds repeated eigenvalues.

    Args:
        op: symmetric operator ``(d, d)``; products in its dtype (use float64).
        k: number of pairs, ``1 <= k <= d``.
        which: ``"magnitude"`` or ``"largest"``.
        seed: seed of the random start block.
        tol, max_steps: stopping rule (relative residual; most restarts).

    Returns:
        ``(lam (k,), U (d, k))`` in the operator's dtype and device, ordered as ``which`` says.
    """
    _check_operator(op, need_symmetric=True)
    if which not in ("magnitude", "largest"):
        raise ValueError(f"which must be 'magnitude' or 'largest', got {which!r}")
    k = check_int(k, "k")
    if k > op.shape[0]:
        raise ValueError(f"k={k} exceeds the operator's dimension {op.shape[0]}")
    return eigenpairs(op, k, which, seed, tol, max_steps)
