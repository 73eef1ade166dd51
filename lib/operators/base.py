"""Matrix-free linear operators: the common interface of every curvature matrix.

An operator ``A`` of shape ``(d, d)`` only needs to know how to multiply a block of
vectors, ``A @ V`` with ``V`` of shape ``(d, k)``. Everything else (sums, scalings,
products, damped inverses, dense materialization) is built on that one method, so
the Hessian, the generalized Gauss-Newton, the Fisher and any preconditioner
compose freely, e.g. ``G.damped_inverse(1e-3) @ H``.

Vectors may be given flat, shape ``(d,)``, as a block ``(d, k)``, or, for operators
that know the parameter shapes of a model, as a list of parameter-shaped tensors;
the result comes back in the same form. Every operator here is a real matrix, so a
complex vector ``v = a + i b`` is multiplied by linearity, ``A v = A a + i A b`` (both
parts in one block of ``2k`` columns), and comes back complex.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

from .._checks import check_finite

__all__ = [
    "LinearOperator",
    "DenseOperator",
    "DiagonalOperator",
    "IdentityOperator",
    "SumOperator",
    "ScaledOperator",
    "ProductOperator",
    "DampedInverseOperator",
]


class LinearOperator:
    """A square ``(d, d)`` matrix known only through its products.

    Subclasses implement :meth:`_matmat` for a validated block ``V`` of shape
    ``(d, k)`` in the operator's dtype and device, returning ``(d, k)``.

    Attributes:
        shape: ``(d, d)``.
        dtype: floating dtype of the products.
        device: device of the products.
        symmetric: whether the matrix is symmetric (needed by Lanczos methods).
        param_shapes: shapes of the parameter tensors a flat vector splits into,
            or ``None`` when the operator is not tied to a model.
    """

    def __init__(self, dim: int, dtype: torch.dtype, device: torch.device,
                 symmetric: bool = True, param_shapes: Sequence[torch.Size] | None = None):
        if dim < 1:
            raise ValueError(f"an operator needs dimension >= 1, got {dim}")
        self.shape = (int(dim), int(dim))
        self.dtype = dtype
        self.device = torch.device(device)
        self.symmetric = symmetric
        self.param_shapes = list(param_shapes) if param_shapes is not None else None

    # -- the one method subclasses provide -----------------------------------------
    def _matmat(self, V: Tensor) -> Tensor:
        raise NotImplementedError

    # -- products ---------------------------------------------------------------------
    def __matmul__(self, other):
        if isinstance(other, LinearOperator):
            return ProductOperator(self, other)
        if isinstance(other, (list, tuple)):
            return self._split(self._apply_block(self._flatten_params(other)[:, None])[:, 0])
        if isinstance(other, Tensor):
            V = self._check_vector(other)
            out = self._apply_block(V if V.ndim == 2 else V[:, None])
            return out if V.ndim == 2 else out[:, 0]
        raise TypeError(
            f"an operator multiplies a tensor, a list of parameter-shaped tensors or another "
            f"operator, not {type(other).__name__}")

    def matvec(self, v: Tensor) -> Tensor:
        """``A @ v`` for a flat vector ``v`` of shape ``(d,)``; returns ``(d,)``."""
        return self @ v

    def _apply_block(self, V: Tensor) -> Tensor:
        """``A @ V`` for a validated block ``(d, k)``, real or complex, in any float dtype.

        A real block is cast to the operator's dtype and device. A complex block
        ``B + iC`` goes through :meth:`_matmat` as the real block ``[B, C]`` of ``2k``
        columns and comes back as ``A B + i A C`` (complex, in the operator's precision):
        every operator is a real matrix, so this is its action on complex vectors, for
        every subclass at once, and an imaginary part is never dropped.
        """
        if not torch.is_complex(V):
            return self._matmat(V.to(device=self.device, dtype=self.dtype))
        k = V.shape[1]
        parts = torch.cat([V.real, V.imag], dim=1).to(device=self.device, dtype=self.dtype)
        out = self._matmat(parts)
        return torch.complex(out[:, :k], out[:, k:])

    def _check_vector(self, v: Tensor) -> Tensor:
        """Validate a flat vector ``(d,)`` or block ``(d, k)``; returned as given (dtype
        and device unchanged: :meth:`_apply_block` converts)."""
        d = self.shape[1]
        if not (torch.is_floating_point(v) or torch.is_complex(v)):
            raise TypeError(f"vector must be a floating-point or complex tensor, got dtype "
                            f"{v.dtype}")
        if v.ndim not in (1, 2) or v.shape[0] != d:
            raise ValueError(
                f"vector has shape {tuple(v.shape)}, but the operator needs ({d},) or ({d}, k)")
        return check_finite(v, "vector")

    def _flatten_params(self, tensors: Sequence[Tensor]) -> Tensor:
        if self.param_shapes is None:
            raise TypeError("this operator is not tied to parameter shapes; pass a flat tensor")
        shapes = [tuple(s) for s in self.param_shapes]
        got = [tuple(t.shape) for t in tensors]
        if got != shapes:
            raise ValueError(f"parameter-shaped tensors have shapes {got}, expected {shapes}")
        return self._check_vector(torch.cat([t.reshape(-1) for t in tensors]))

    def _split(self, flat: Tensor) -> list[Tensor]:
        sizes = [math.prod(s) for s in self.param_shapes]
        return [p.reshape(s) for p, s in zip(flat.split(sizes), self.param_shapes)]

    # -- algebra ----------------------------------------------------------------------
    def __add__(self, other):
        if not isinstance(other, LinearOperator):
            return NotImplemented
        return SumOperator(self, other)

    def __sub__(self, other):
        if not isinstance(other, LinearOperator):
            return NotImplemented
        return SumOperator(self, ScaledOperator(other, -1.0))

    def __mul__(self, scalar):
        if isinstance(scalar, bool) or not isinstance(scalar, (int, float)):
            return NotImplemented
        return ScaledOperator(self, float(scalar))

    __rmul__ = __mul__

    def __neg__(self):
        return ScaledOperator(self, -1.0)

    def damped_inverse(self, damping: float, *, tol: float = 1e-8,
                       max_iter: int | None = None) -> "DampedInverseOperator":
        """``(A + damping I)^-1`` applied by conjugate gradients (A symmetric PSD)."""
        return DampedInverseOperator(self, damping, tol=tol, max_iter=max_iter)

    # -- materialization --------------------------------------------------------------
    def to_dense(self, chunk_size: int = 256) -> Tensor:
        """The full ``(d, d)`` matrix, built from products with identity columns."""
        d = self.shape[0]
        cols = []
        for start in range(0, d, chunk_size):
            stop = min(start + chunk_size, d)
            E = torch.zeros(d, stop - start, dtype=self.dtype, device=self.device)
            E[torch.arange(start, stop), torch.arange(stop - start)] = 1.0
            cols.append(self._matmat(E))
        return torch.cat(cols, dim=1)

    def __repr__(self):
        return f"{type(self).__name__}(shape={self.shape}, dtype={self.dtype}, device={self.device})"


def _common_shapes(*ops: LinearOperator):
    return next((op.param_shapes for op in ops if op.param_shapes is not None), None)


def _check_same_shape(a: LinearOperator, b: LinearOperator, what: str):
    if a.shape != b.shape:
        raise ValueError(f"cannot {what} operators of shapes {a.shape} and {b.shape}")


class DenseOperator(LinearOperator):
    """Wraps an explicit ``(d, d)`` matrix as an operator."""

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


class DiagonalOperator(LinearOperator):
    """``diag(values)`` for a vector ``values`` of shape ``(d,)``."""

    def __init__(self, values: Tensor, param_shapes=None):
        if values.ndim != 1:
            raise ValueError(f"diagonal must be a vector, got shape {tuple(values.shape)}")
        super().__init__(values.shape[0], values.dtype, values.device, True, param_shapes)
        self.values = values

    def _matmat(self, V):
        return self.values[:, None] * V

    def inverse(self) -> "DiagonalOperator":
        """The exact inverse; raises ``ValueError`` if a diagonal entry is zero."""
        if (self.values == 0).any():
            raise ValueError("diagonal has zero entries and is not invertible")
        return DiagonalOperator(1.0 / self.values, self.param_shapes)

    def to_dense(self, chunk_size: int = 256):
        return torch.diag(self.values)


class IdentityOperator(LinearOperator):
    """The ``(d, d)`` identity."""

    def __init__(self, dim: int, dtype=torch.float32, device="cpu", param_shapes=None):
        super().__init__(dim, dtype, device, True, param_shapes)

    def _matmat(self, V):
        return V.clone()


class SumOperator(LinearOperator):
    """``A + B``."""

    def __init__(self, a: LinearOperator, b: LinearOperator):
        _check_same_shape(a, b, "add")
        super().__init__(a.shape[0], a.dtype, a.device, a.symmetric and b.symmetric,
                         _common_shapes(a, b))
        self.a, self.b = a, b

    def _matmat(self, V):
        return self.a._matmat(V) + self.b._matmat(V).to(V.dtype)


class ScaledOperator(LinearOperator):
    """``scalar * A``."""

    def __init__(self, a: LinearOperator, scalar: float):
        super().__init__(a.shape[0], a.dtype, a.device, a.symmetric, a.param_shapes)
        self.a, self.scalar = a, scalar

    def _matmat(self, V):
        return self.scalar * self.a._matmat(V)


class ProductOperator(LinearOperator):
    """``A @ B``; symmetric only if one factor is a multiple of the identity."""

    def __init__(self, a: LinearOperator, b: LinearOperator):
        _check_same_shape(a, b, "multiply")
        trivial = isinstance(a, IdentityOperator) or isinstance(b, IdentityOperator)
        super().__init__(a.shape[0], a.dtype, a.device,
                         trivial and a.symmetric and b.symmetric, _common_shapes(a, b))
        self.a, self.b = a, b

    def _matmat(self, V):
        return self.a._matmat(self.b._matmat(V).to(self.a.dtype))


class DampedInverseOperator(LinearOperator):
    """``(A + damping I)^-1`` for a symmetric positive semi-definite ``A``.

    Each product solves the linear systems of all columns at once with conjugate
    gradients, so no ``d x d`` matrix is ever formed. A warning is issued when CG
    has not reached the relative residual ``tol`` after ``max_iter`` steps
    (default ``d``).
    """

    def __init__(self, a: LinearOperator, damping: float, *, tol: float = 1e-8,
                 max_iter: int | None = None):
        if not a.symmetric:
            raise ValueError("damped_inverse needs a symmetric operator (CG)")
        if isinstance(damping, bool) or not isinstance(damping, (int, float)):
            raise TypeError(f"damping must be a number, got {type(damping).__name__}")
        if not damping >= 0 or not math.isfinite(damping):
            raise ValueError(f"damping must be finite and >= 0, got {damping}")
        super().__init__(a.shape[0], a.dtype, a.device, True, a.param_shapes)
        self.a, self.damping, self.tol = a, float(damping), tol
        self.max_iter = max_iter if max_iter is not None else a.shape[0]

    def _apply(self, P):
        return self.a._matmat(P) + self.damping * P

    def _matmat(self, B):
        X = torch.zeros_like(B)
        R = B.clone()
        P = R.clone()
        rr = (R * R).sum(0)
        target = (self.tol ** 2) * rr.clamp_min(torch.finfo(B.dtype).tiny)
        for _ in range(self.max_iter):
            if bool((rr <= target).all()):
                return X
            AP = self._apply(P)
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
            worst = float((rr / target.clamp_min(torch.finfo(B.dtype).tiny)).max().sqrt() * self.tol)
            warnings.warn(f"CG stopped after {self.max_iter} steps with relative residual "
                          f"{worst:.2e} > tol={self.tol:.1e}", RuntimeWarning, stacklevel=3)
        return X
