"""Operators held as explicit tensors: dense and diagonal matrices.

:class:`DenseOperator` wraps a ``(d, d)`` matrix, :class:`DiagonalOperator` a ``(d,)``
diagonal; every quantity of the method set is exact (``torch.linalg`` on the matrix, or
elementwise on the diagonal).

The interface, the identity and the operators built from other operators (sums, scalings,
products, damped inverses) are in :mod:`lib.operators.base`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import check_damping
from .base import EXACT_QUANTITIES, LinearOperator
from .linalg import dense_logdet, top_ascending

__all__ = ["DenseOperator", "DiagonalOperator"]


class DenseOperator(LinearOperator):
    """Wraps an explicit ``(d, d)`` matrix as an operator; every quantity is exact
    (``torch.linalg``: ``eigvalsh``, ``solve_ex``, ``inv_ex``)."""

    exact = EXACT_QUANTITIES

    def __init__(self, matrix: Tensor, symmetric: bool | None = None, param_shapes=None):
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"matrix must be square, got shape {tuple(matrix.shape)}")
        if symmetric is None:
            symmetric = bool(torch.allclose(matrix, matrix.T))
        super().__init__(matrix.shape[0], matrix.dtype, matrix.device, symmetric, param_shapes)
        self.matrix = matrix

    def _matmat(self, V):
        return self.matrix @ V

    def to_dense(self, chunk_size: int = 256):
        return self.matrix.clone()

    def diagonal(self) -> Tensor:
        return torch.diagonal(self.matrix).clone()

    def trace(self) -> float:
        return float(torch.trace(self.matrix))

    def frobenius_norm(self) -> float:
        return float(torch.linalg.matrix_norm(self.matrix))

    def logdet(self) -> float:
        return dense_logdet(self.matrix, self.symmetric)

    def eigvalsh(self, k: int | None = None) -> Tensor:
        self._require_symmetric("eigvalsh")
        return top_ascending(torch.linalg.eigvalsh(self.matrix), self._check_k(k))

    def _damped(self, damping) -> Tensor:
        damping = check_damping(damping)
        if damping == 0:
            return self.matrix
        return self.matrix + damping * torch.eye(self.shape[0], dtype=self.dtype, device=self.device)

    def solve(self, v, damping: float = 0.0):
        M = self._damped(damping)

        def solve_block(V):
            X, info = torch.linalg.solve_ex(M, V)
            if bool(info.any()):
                raise ValueError("the matrix plus damping is singular; increase the damping")
            return X
        return self._map(v, solve_block, "solve needs a tensor or a list of parameter-shaped tensors")

    def inverse(self, damping: float = 0.0) -> "DenseOperator":
        inv, info = torch.linalg.inv_ex(self._damped(damping))
        if bool(info.any()):
            raise ValueError("the matrix plus damping is singular; increase the damping")
        if self.symmetric:
            inv = (inv + inv.T) / 2
        return DenseOperator(inv, self.symmetric, self.param_shapes)


class DiagonalOperator(LinearOperator):
    """``diag(values)`` for a vector ``values`` of shape ``(d,)``; every quantity is exact."""

    exact = EXACT_QUANTITIES

    def __init__(self, values: Tensor, param_shapes=None):
        if values.ndim != 1:
            raise ValueError(f"diagonal must be a vector, got shape {tuple(values.shape)}")
        super().__init__(values.shape[0], values.dtype, values.device, True, param_shapes)
        self.values = values

    def _matmat(self, V):
        return self.values[:, None] * V

    def _shifted(self, damping) -> Tensor:
        """``values + damping``; ``ValueError`` if an entry is zero (not invertible)."""
        damping = check_damping(damping)
        shifted = self.values if damping == 0 else self.values + damping
        if (shifted == 0).any():
            raise ValueError("diagonal" + (" plus damping" if damping else "")
                             + " has zero entries and is not invertible")
        return shifted

    def inverse(self, damping: float = 0.0) -> "DiagonalOperator":
        """The exact inverse of ``diag(values) + damping I``; ``ValueError`` if an entry is zero."""
        return DiagonalOperator(1.0 / self._shifted(damping), self.param_shapes)

    def solve(self, v, damping: float = 0.0):
        shifted = self._shifted(damping)[:, None]
        return self._map(v, lambda V: V / shifted, "solve needs a tensor or a list of parameter-shaped tensors")

    def to_dense(self, chunk_size: int = 256):
        return torch.diag(self.values)

    def diagonal(self) -> Tensor:
        return self.values.clone()

    def trace(self) -> float:
        return float(self.values.sum())

    def frobenius_norm(self) -> float:
        return float(torch.linalg.vector_norm(self.values))

    def logdet(self) -> float:
        if bool((self.values <= 0).any()):
            raise ValueError(f"operator is not positive definite (a diagonal entry is "
                             f"{float(self.values.min()):.3g}); add damping before logdet")
        return float(self.values.log().sum())

    def eigvalsh(self, k: int | None = None) -> Tensor:
        return top_ascending(torch.sort(self.values).values, self._check_k(k))
