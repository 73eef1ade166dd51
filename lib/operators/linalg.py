"""Tensor-level numerical kernels of the operators: identity columns, random probes, dense
log-determinants, block conjugate gradients.

They act on tensors and block maps ``(d, k) -> (d, k)``, not on operators, so that
:mod:`lib.operators.base`, :mod:`lib.operators.krylov` and :mod:`lib.operators.spectral` share one
implementation of each.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["basis_block", "rademacher", "top_ascending", "dense_logdet", "conjugate_gradients"]


def basis_block(d: int, start: int, stop: int, dtype: torch.dtype, device) -> Tensor:
    """The identity columns ``e_start, ..., e_{stop-1}`` of ``R^d`` as a ``(d, stop - start)`` block."""
    E = torch.zeros(d, stop - start, dtype=dtype, device=device)
    E[torch.arange(start, stop), torch.arange(stop - start)] = 1.0
    return E


def rademacher(d: int, k: int, generator: torch.Generator, dtype: torch.dtype, device) -> Tensor:
    """A ``(d, k)`` block of random signs in ``dtype`` on ``device`` (drawn on the CPU from ``generator``)."""
    signs = torch.randint(0, 2, (d, k), generator=generator, dtype=torch.int8)
    return (2 * signs - 1).to(device=device, dtype=dtype)


def top_ascending(values: Tensor, k: int | None) -> Tensor:
    """The ``k`` largest of ascending ``values`` (all if ``k`` is ``None``), ascending."""
    return values if k is None else values[len(values) - k:]


def dense_logdet(matrix: Tensor, symmetric: bool) -> float:
    """``log det`` of a dense positive-definite ``(d, d)`` matrix (eigenvalues if symmetric,
    else ``slogdet``), computed in at least float64; ``ValueError`` if it is not positive definite."""
    M = matrix.to(torch.promote_types(matrix.dtype, torch.float64))
    if symmetric:
        evals = torch.linalg.eigvalsh(M)
        if bool((evals <= 0).any()):
            raise ValueError(f"operator is not positive definite (an eigenvalue is "
                             f"{float(evals.min()):.3g}); add damping before logdet")
        return float(evals.log().sum())
    sign, value = torch.linalg.slogdet(M)
    if not sign > 0:
        raise ValueError("operator is not positive definite (its determinant is not positive); "
                         "add damping before logdet")
    return float(value)


def conjugate_gradients(apply: Callable[[Tensor], Tensor], B: Tensor, *, tol: float,
                        max_steps: int) -> Tensor:
    """Solve ``A X = B`` for a symmetric positive-definite ``A`` given as the block map ``apply``,
    all ``k`` columns of ``B`` ``(d, k)`` at once, by conjugate gradients from ``X = 0``.

    A column stops when its residual is below ``tol`` times its right-hand side. Raises
    ``ValueError`` on a non-positive curvature direction; warns (``RuntimeWarning``) when
    ``max_steps`` steps have not reached ``tol``. Returns ``X`` ``(d, k)``.
    """
    X = torch.zeros_like(B)
    R = B.clone()
    P = R.clone()
    rr = (R * R).sum(0)
    target = (tol ** 2) * rr.clamp_min(torch.finfo(B.dtype).tiny)
    for _ in range(max_steps):
        if bool((rr <= target).all()):
            return X
        AP = apply(P)
        pAp = (P * AP).sum(0)
        if bool(((pAp <= 0) & (rr > target)).any()):
            raise ValueError("CG met a non-positive curvature direction: the operator plus "
                             "damping is not positive definite; increase the damping")
        alpha = torch.where(rr > target, rr / pAp, torch.zeros_like(rr))
        X = X + alpha * P
        R = R - alpha * AP
        rr_new = (R * R).sum(0)
        beta = torch.where(rr > target, rr_new / rr.clamp_min(torch.finfo(B.dtype).tiny),
                           torch.zeros_like(rr))
        P = R + beta * P
        rr = rr_new
    if not bool((rr <= target).all()):
        worst = float((rr / target.clamp_min(torch.finfo(B.dtype).tiny)).max().sqrt() * tol)
        warnings.warn(f"CG stopped after {max_steps} steps with relative residual "
                      f"{worst:.2e} > tol={tol:.1e}", RuntimeWarning, stacklevel=5)
    return X
