"""Layer 1, operators: the :class:`~lib.operators.base.LinearOperator` interface, its generic kinds and the
spectral estimators that work on any operator.

Nothing here knows about models or losses; every curvature matrix of the book is one of
these operators, so the estimators (trace, eigenvalues, log-determinant, spectral
density) serve them all.
"""

from .base import (DampedInverseOperator, DenseOperator, DiagonalOperator, IdentityOperator, LinearOperator,
                   ProductOperator, ScaledOperator, SumOperator)
from .spectral import (TRACE_METHODS, SpectralDensity, eigvalsh, lanczos, logdet, relative_difference,
                       spectral_density, trace)

__all__ = ["LinearOperator", "DenseOperator", "DiagonalOperator", "IdentityOperator", "SumOperator",
           "ScaledOperator", "ProductOperator", "DampedInverseOperator", "TRACE_METHODS", "SpectralDensity",
           "trace", "lanczos", "eigvalsh", "logdet", "spectral_density", "relative_difference"]
