"""Layer 1, operators: the :class:`~lib.operators.base.LinearOperator` interface, its generic kinds and the
spectral estimators that work on any operator.

Every operator has one method set (``@``, ``to_dense``, ``diagonal``, ``trace``, ``logdet``,
``eigvalsh``, ``solve``, ``inverse``); ``op.exact`` names the quantities it knows in closed
form, which the estimators then use. Modules, bottom up: :mod:`~lib.operators.linalg`
(tensor-level kernels: block conjugate gradients, probes, dense log-determinants),
:mod:`~lib.operators.krylov` (the estimator algorithms: Hutch++, Lanczos, SLQ, block Krylov),
:mod:`~lib.operators.base` (the interface and its algebra: sums, scalings, products, damped
inverses, the identity), :mod:`~lib.operators.explicit` (dense and diagonal matrices), :mod:`~lib.operators.structured`
(block-diagonal, low-rank and quasi-diagonal matrices) and
:mod:`~lib.operators.spectral` (the public estimators).

Nothing here knows about models or losses; every curvature matrix of the book is one of
these operators, so the estimators (trace, eigenvalues, log-determinant, spectral
density) serve them all.
"""

from .base import (EXACT_QUANTITIES, DampedInverseOperator, IdentityOperator, LinearOperator, ProductOperator,
                   ScaledOperator, SumOperator)
from .explicit import DenseOperator, DiagonalOperator
from .structured import (BlockDiagonalOperator, LowRankOperator, QuasiDiagonalInverseOperator, QuasiDiagonalOperator,
                         WoodburyInverseOperator)
from .spectral import (EIGVALSH_METHODS, LOGDET_METHODS, TRACE_METHODS, SpectralDensity, eigvalsh, lanczos, logdet,
                       relative_difference, spectral_density, top_eigenpairs, trace)

__all__ = ["LinearOperator", "DenseOperator", "DiagonalOperator", "BlockDiagonalOperator", "LowRankOperator",
           "WoodburyInverseOperator", "QuasiDiagonalOperator", "QuasiDiagonalInverseOperator", "IdentityOperator", "SumOperator",
           "ScaledOperator", "ProductOperator", "DampedInverseOperator", "EXACT_QUANTITIES", "TRACE_METHODS",
           "EIGVALSH_METHODS", "LOGDET_METHODS", "SpectralDensity", "trace", "lanczos", "eigvalsh", "logdet",
           "spectral_density", "relative_difference", "top_eigenpairs"]
