"""Matrix-free linear operators: the common interface of every curvature matrix.

An operator ``A`` of shape ``(d, d)`` only needs to know how to multiply a block of
vectors, ``A @ V`` with ``V`` of shape ``(d, k)``. Everything else (sums, scalings,
products, damped inverses, dense materialization) is built on that one method, so
the Hessian, the generalized Gauss-Newton, the Fisher and any preconditioner
compose freely, e.g. ``G.inverse(1e-3) @ H``.

Vectors may be given flat, shape ``(d,)``, as a block ``(d, k)``, or, for operators
that know the parameter shapes of a model, as a list of parameter-shaped tensors;
the result comes back in the same form. Every operator here is a real matrix, so a
complex vector ``v = a + i b`` is multiplied by linearity, ``A v = A a + i A b`` (both
parts in one block of ``2k`` columns), and comes back complex.

Every operator has one method set: ``@``, :meth:`~LinearOperator.vTMv`, :meth:`~LinearOperator.to_dense`,
:meth:`~LinearOperator.diagonal`, :meth:`~LinearOperator.trace`, :meth:`~LinearOperator.frobenius_norm`,
:meth:`~LinearOperator.logdet`, :meth:`~LinearOperator.eigvalsh`,
:meth:`~LinearOperator.solve` and :meth:`~LinearOperator.inverse`. The base class
computes them from products (dense for ``d <= dense_limit``, else Hutchinson, stochastic
Lanczos quadrature, Lanczos; conjugate gradients for solves); a subclass that knows a
quantity in closed form overrides the method and lists its name in ``exact``, and the
estimators of :mod:`lib.operators.spectral` then use that closed form.

Here: :class:`LinearOperator`, the identity and the operators its algebra builds
(:class:`SumOperator`, :class:`ScaledOperator`, :class:`ProductOperator`,
:class:`~lib.operators.base.DampedInverseOperator`); operators held as explicit tensors (``DenseOperator``,
``DiagonalOperator``) are in :mod:`lib.operators.explicit`, the fallbacks' algorithms in
:mod:`lib.operators.krylov`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .._checks import check_damping, check_finite, check_int
from .krylov import check_symmetric, exact_trace, hutchpp_trace, lanczos_top, slq_logdet
from .linalg import basis_block, conjugate_gradients, dense_logdet, rademacher, top_ascending

__all__ = [
    "LinearOperator",
    "IdentityOperator",
    "SumOperator",
    "ScaledOperator",
    "ProductOperator",
    "DampedInverseOperator",
    "EXACT_QUANTITIES",
]

EXACT_QUANTITIES = frozenset({"to_dense", "diagonal", "trace", "frobenius_norm", "logdet", "eigvalsh", "solve",
                              "inverse"})
"""The quantities an operator may know in closed form (the names its ``exact`` may list)."""



class LinearOperator:
    """A square ``(d, d)`` matrix known only through its products.

    Subclasses implement :meth:`_matmat` for a validated block ``V`` of shape
    ``(d, k)`` in the operator's dtype and device, returning ``(d, k)``.

    The method set (``@``, :meth:`vTMv`, :meth:`to_dense`, :meth:`diagonal`, :meth:`trace`,
    :meth:`frobenius_norm`, :meth:`logdet`, :meth:`eigvalsh`, :meth:`solve`, :meth:`inverse`)
    has generic fallbacks here, built on products only:

    ============  ===========================================  ==========================
    method        ``d <= dense_limit``                         ``d > dense_limit``
    ============  ===========================================  ==========================
    to_dense      ``d`` products with identity columns         same
    diagonal      exact, from identity columns                 Hutchinson diagonal estimate
    trace         exact, ``sum e_i^T A e_i``                   Hutch++
    frobenius     exact, from ``to_dense``                     Hutchinson ``sqrt(E ||A v||^2)``
    logdet        dense ``torch.linalg.eigvalsh``              stochastic Lanczos quadrature
    eigvalsh      dense ``torch.linalg.eigvalsh``              Lanczos (``k`` given)
    solve         conjugate gradients (symmetric PSD ``A``)    same
    inverse       :class:`DampedInverseOperator` (CG)          same
    ============  ===========================================  ==========================

    A subclass that has a quantity in closed form overrides the method and lists its
    name in ``exact`` (a frozenset of names from :data:`EXACT_QUANTITIES`; a class
    attribute, or an instance attribute for wrappers whose closed forms depend on what
    they wrap). :func:`lib.operators.spectral.trace`, :func:`~lib.operators.spectral.logdet`
    and :func:`~lib.operators.spectral.eigvalsh` call ``op.trace()``, ``op.logdet()`` and
    ``op.eigvalsh(k)`` when the name is in ``op.exact`` and no ``method`` is forced.

    Attributes:
        shape: ``(d, d)``.
        dtype: floating dtype of the products.
        device: device of the products.
        symmetric: whether the matrix is symmetric (needed by Lanczos methods).
        param_shapes: shapes of the parameter tensors a flat vector splits into,
            or ``None`` when the operator is not tied to a model.
        exact: names of the quantities computed in closed form (none in the base class).
        dense_limit: largest ``d`` for which the fallbacks materialize the matrix.

    Example:
        >>> import torch
        >>> from lib.operators import DiagonalOperator, trace
        >>> D = DiagonalOperator(torch.tensor([1.0, 2.0, 4.0]))
        >>> D.trace(), trace(D), "trace" in D.exact  # the estimator uses the closed form
        (7.0, 7.0, True)
        >>> D.solve(torch.ones(3), damping=1.0)
        tensor([0.5000, 0.3333, 0.2000])
        >>> D.eigvalsh(2)
        tensor([2., 4.])
    """

    exact: frozenset = frozenset()
    dense_limit: int = 1024

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
        return self._map(other, self._matmat,
                         "an operator multiplies a tensor, a list of parameter-shaped tensors or another "
                         "operator")

    def matvec(self, v: Tensor) -> Tensor:
        """``A @ v`` for a flat vector ``v`` of shape ``(d,)``; returns ``(d,)``."""
        return self @ v

    def _map(self, other, fn, what: str):
        """``fn`` (a map of real ``(d, k)`` blocks in the operator's dtype) applied to ``other``
        given as ``(d,)``, ``(d, k)`` or a list of parameter-shaped tensors, returned in the same
        form; ``what`` starts the TypeError for anything else."""
        if isinstance(other, (list, tuple)):
            return self._split(self._apply_block(self._flatten_params(other)[:, None], fn)[:, 0])
        if isinstance(other, Tensor):
            V = self._check_vector(other)
            out = self._apply_block(V if V.ndim == 2 else V[:, None], fn)
            return out if V.ndim == 2 else out[:, 0]
        raise TypeError(f"{what}, not {type(other).__name__}")

    def _apply_block(self, V: Tensor, fn=None) -> Tensor:
        """``A @ V`` (or ``fn(V)``) for a validated block ``(d, k)``, real or complex, in any float dtype.

        A real block is cast to the operator's dtype and device. A complex block
        ``B + iC`` goes through :meth:`_matmat` as the real block ``[B, C]`` of ``2k``
        columns and comes back as ``A B + i A C`` (complex, in the operator's precision):
        every operator is a real matrix, so this is its action on complex vectors, for
        every subclass at once, and an imaginary part is never dropped.
        """
        fn = self._matmat if fn is None else fn
        if not torch.is_complex(V):
            return fn(V.to(device=self.device, dtype=self.dtype))
        k = V.shape[1]
        parts = torch.cat([V.real, V.imag], dim=1).to(device=self.device, dtype=self.dtype)
        out = fn(parts)
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

    # -- the method set: generic fallbacks ------------------------------------------------
    def to_dense(self, chunk_size: int = 256) -> Tensor:
        """The full ``(d, d)`` matrix, built from products with identity columns."""
        d = self.shape[0]
        return torch.cat([self._matmat(basis_block(d, start, min(start + chunk_size, d), self.dtype,
                                                   self.device))
                          for start in range(0, d, chunk_size)], dim=1)

    def diagonal(self, *, num_probes: int = 100, seed: int = 0, chunk_size: int = 256) -> Tensor:
        """The diagonal ``(d,)``: exact from identity columns if ``d <= dense_limit``, else the
        Hutchinson estimate ``mean_v v * (A v)`` over ``num_probes`` Rademacher probes (unbiased)."""
        d = self.shape[0]
        if d > self.dense_limit:
            V = rademacher(d, check_int(num_probes, "num_probes"), torch.Generator().manual_seed(seed),
                           self.dtype, self.device)
            return (V * self._matmat(V)).mean(dim=1)
        parts = []
        for start in range(0, d, chunk_size):
            stop = min(start + chunk_size, d)
            block = self._matmat(basis_block(d, start, stop, self.dtype, self.device))
            parts.append(block[torch.arange(start, stop), torch.arange(stop - start)])
        return torch.cat(parts)

    def trace(self, *, num_probes: int = 30, seed: int = 0) -> float:
        """``tr A``: exact (``d`` products) if ``d <= dense_limit``, else Hutch++ with
        ``num_probes`` products (see :func:`lib.operators.spectral.trace`)."""
        if self.shape[0] <= self.dense_limit:
            return exact_trace(self)
        return hutchpp_trace(self, num_probes, seed)

    def vTMv(self, v):
        """The quadratic form ``v^T A v``: a float for ``v`` of shape ``(d,)`` or a list of
        parameter-shaped tensors, a ``(k,)`` tensor (one per column) for a block ``(d, k)``."""
        if isinstance(v, (list, tuple)):
            v = self._flatten_params(v)
        if not isinstance(v, Tensor):
            raise TypeError(f"vTMv needs a tensor or a list of parameter-shaped tensors, not {type(v).__name__}")
        V = self._check_vector(v)
        if torch.is_complex(V):
            raise TypeError("vTMv needs a real vector (v^T A v of a complex v is ambiguous)")
        block = (V if V.ndim == 2 else V[:, None]).to(device=self.device, dtype=self.dtype)
        values = self._quadratic(block)
        return values if V.ndim == 2 else float(values[0])

    def _quadratic(self, V: Tensor) -> Tensor:
        """``v^T A v`` for every column of a validated real block ``(d, k)``; ``(k,)``. A subclass
        with a cheaper form (e.g. forward passes only) overrides it."""
        return (V * self._matmat(V)).sum(dim=0)

    def frobenius_norm(self, *, num_probes: int = 30, seed: int = 0) -> float:
        """``||A||_F``: exact (from :meth:`to_dense`) if ``d <= dense_limit``, else the Hutchinson
        estimate ``sqrt(mean_v ||A v||^2)`` over ``num_probes`` Rademacher probes (``E ||A v||^2 =
        tr A^T A``; the square is unbiased, the root slightly biased low)."""
        d = self.shape[0]
        if d <= self.dense_limit:
            return float(torch.linalg.matrix_norm(self.to_dense()))
        V = rademacher(d, check_int(num_probes, "num_probes"), torch.Generator().manual_seed(seed),
                       self.dtype, self.device)
        return math.sqrt(float((self._matmat(V) ** 2).sum()) / V.shape[1])

    def logdet(self, *, num_probes: int = 10, num_steps: int = 30, seed: int = 0) -> float:
        """``log det A`` of a positive-definite operator: dense if ``d <= dense_limit``, else
        stochastic Lanczos quadrature (see :func:`lib.operators.spectral.logdet`). Raises
        ``ValueError`` if the operator is not positive definite."""
        if self.shape[0] <= self.dense_limit:
            return dense_logdet(self.to_dense(), self.symmetric)
        check_symmetric(self)
        return slq_logdet(self, check_int(num_probes, "num_probes"), check_int(num_steps, "num_steps"), seed)

    def eigvalsh(self, k: int | None = None, *, tol: float = 1e-6, seed: int = 0) -> Tensor:
        """The ``k`` largest eigenvalues ``(k,)`` in ascending order (``None``: all ``d``) of a
        symmetric operator: dense if ``d <= dense_limit``, else Lanczos to relative accuracy
        ``tol`` (see :func:`lib.operators.spectral.eigvalsh`; ``k=None`` then raises)."""
        self._require_symmetric("eigvalsh")
        k = self._check_k(k)
        if self.shape[0] <= self.dense_limit:
            return top_ascending(torch.linalg.eigvalsh(self.to_dense()), k)
        if k is None:
            raise ValueError(f"all {self.shape[0]} eigenvalues of an operator with d > dense_limit="
                             f"{self.dense_limit} need to_dense(); pass k")
        return lanczos_top(self, k, tol, self.shape[0], seed).flip(0)

    def solve(self, v, damping: float = 0.0, *, tol: float = 1e-8, max_steps: int | None = None):
        """``(A + damping I)^-1 v`` for ``v`` of shape ``(d,)``, ``(d, k)`` or a list of
        parameter-shaped tensors (returned in the same form); by conjugate gradients here
        (``A`` symmetric PSD; see :class:`~lib.operators.base.DampedInverseOperator` for ``tol`` and ``max_steps``)."""
        return self.inverse(damping, tol=tol, max_steps=max_steps) @ v

    def inverse(self, damping: float = 0.0, *, tol: float = 1e-8,
                max_steps: int | None = None) -> "LinearOperator":
        """``(A + damping I)^-1`` as an operator; here a :class:`~lib.operators.base.DampedInverseOperator`
        (conjugate gradients, ``A`` symmetric positive semi-definite)."""
        return DampedInverseOperator(self, damping, tol=tol, max_steps=max_steps)

    def _require_symmetric(self, what: str):
        if not self.symmetric:
            raise ValueError(f"{what} needs a symmetric operator")

    def _check_k(self, k):
        if k is None:
            return None
        k = check_int(k, "k")
        if k > self.shape[0]:
            raise ValueError(f"k={k} exceeds the operator's dimension {self.shape[0]}")
        return k

    def __repr__(self):
        return f"{type(self).__name__}(shape={self.shape}, dtype={self.dtype}, device={self.device})"


def _common_shapes(*ops: LinearOperator):
    return next((op.param_shapes for op in ops if op.param_shapes is not None), None)


def _check_same_shape(a: LinearOperator, b: LinearOperator, what: str):
    if a.shape != b.shape:
        raise ValueError(f"cannot {what} operators of shapes {a.shape} and {b.shape}")


def _scale(x, c: float):
    """``c * x`` for a tensor or a list of tensors."""
    return [c * t for t in x] if isinstance(x, list) else c * x


class IdentityOperator(LinearOperator):
    """The ``(d, d)`` identity; every quantity is exact."""

    exact = EXACT_QUANTITIES

    def __init__(self, dim: int, dtype=torch.float32, device="cpu", param_shapes=None):
        super().__init__(dim, dtype, device, True, param_shapes)

    def _matmat(self, V):
        return V.clone()

    def to_dense(self, chunk_size: int = 256):
        return torch.eye(self.shape[0], dtype=self.dtype, device=self.device)

    def diagonal(self) -> Tensor:
        return torch.ones(self.shape[0], dtype=self.dtype, device=self.device)

    def trace(self) -> float:
        return float(self.shape[0])

    def frobenius_norm(self) -> float:
        return math.sqrt(self.shape[0])

    def logdet(self) -> float:
        return 0.0

    def eigvalsh(self, k: int | None = None) -> Tensor:
        k = self._check_k(k)
        return torch.ones(self.shape[0] if k is None else k, dtype=self.dtype, device=self.device)

    def solve(self, v, damping: float = 0.0):
        c = 1.0 / (1.0 + check_damping(damping))
        return self._map(v, lambda V: c * V, "solve needs a tensor or a list of parameter-shaped tensors")

    def inverse(self, damping: float = 0.0) -> LinearOperator:
        damping = check_damping(damping)
        return self if damping == 0 else ScaledOperator(self, 1.0 / (1.0 + damping))


class SumOperator(LinearOperator):
    """``A + B``; ``to_dense``, ``diagonal`` and ``trace`` are exact when both terms have them."""

    def __init__(self, a: LinearOperator, b: LinearOperator):
        _check_same_shape(a, b, "add")
        super().__init__(a.shape[0], a.dtype, a.device, a.symmetric and b.symmetric,
                         _common_shapes(a, b))
        self.a, self.b = a, b
        self.exact = a.exact & b.exact & {"to_dense", "diagonal", "trace"}

    def _matmat(self, V):
        return self.a._matmat(V) + self.b._matmat(V).to(V.dtype)

    def to_dense(self, chunk_size: int = 256):
        if "to_dense" not in self.exact:
            return super().to_dense(chunk_size)
        return self.a.to_dense() + self.b.to_dense().to(self.dtype)

    def diagonal(self, **options) -> Tensor:
        if "diagonal" not in self.exact:
            return super().diagonal(**options)
        return self.a.diagonal() + self.b.diagonal().to(self.dtype)

    def trace(self, **options) -> float:
        if "trace" not in self.exact:
            return super().trace(**options)
        return self.a.trace() + self.b.trace()


class ScaledOperator(LinearOperator):
    """``scalar * A``; a quantity is exact when ``A`` has it in closed form (``logdet``,
    ``eigvalsh``, ``solve`` and ``inverse`` only for ``scalar > 0``)."""

    def __init__(self, a: LinearOperator, scalar: float):
        super().__init__(a.shape[0], a.dtype, a.device, a.symmetric, a.param_shapes)
        self.a, self.scalar = a, scalar
        self.exact = a.exact if scalar > 0 else a.exact & {"to_dense", "diagonal", "trace", "frobenius_norm"}

    def _matmat(self, V):
        return self.scalar * self.a._matmat(V)

    def to_dense(self, chunk_size: int = 256):
        if "to_dense" not in self.exact:
            return super().to_dense(chunk_size)
        return self.scalar * self.a.to_dense()

    def diagonal(self, **options) -> Tensor:
        if "diagonal" not in self.exact:
            return super().diagonal(**options)
        return self.scalar * self.a.diagonal()

    def trace(self, **options) -> float:
        if "trace" not in self.exact:
            return super().trace(**options)
        return self.scalar * self.a.trace()

    def frobenius_norm(self, **options) -> float:
        if "frobenius_norm" not in self.exact:
            return super().frobenius_norm(**options)
        return abs(self.scalar) * self.a.frobenius_norm()

    def logdet(self, **options) -> float:
        if "logdet" not in self.exact:
            return super().logdet(**options)
        return self.shape[0] * math.log(self.scalar) + self.a.logdet()

    def eigvalsh(self, k: int | None = None, **options) -> Tensor:
        if "eigvalsh" not in self.exact:
            return super().eigvalsh(k, **options)
        return self.scalar * self.a.eigvalsh(k)

    def solve(self, v, damping: float = 0.0, **options):
        # (s A + damping I)^-1 v = (A + damping / s I)^-1 v / s
        if "solve" not in self.exact:
            return super().solve(v, damping, **options)
        return _scale(self.a.solve(v, check_damping(damping) / self.scalar), 1.0 / self.scalar)

    def inverse(self, damping: float = 0.0, **options) -> LinearOperator:
        if "inverse" not in self.exact:
            return super().inverse(damping, **options)
        return ScaledOperator(self.a.inverse(check_damping(damping) / self.scalar), 1.0 / self.scalar)


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
    """``B = (A + damping I)^-1`` for a symmetric positive semi-definite ``A``.

    Each product solves the linear systems of all columns at once with conjugate
    gradients, so no ``d x d`` matrix is ever formed. A warning is issued when CG
    has not reached the relative residual ``tol`` after ``max_steps`` steps
    (default ``d``).

    Exact: ``solve(v)`` and ``inverse()`` without further damping (``A + damping I``
    itself); and, when ``A`` has an exact inverse, every quantity that ``A`` has in closed
    form, computed from ``A.inverse(damping)`` (products stay CG).
    """

    def __init__(self, a: LinearOperator, damping: float, *, tol: float = 1e-8,
                 max_steps: int | None = None):
        if not a.symmetric:
            raise ValueError("a damped inverse needs a symmetric operator (CG)")
        damping = check_damping(damping)
        super().__init__(a.shape[0], a.dtype, a.device, True, a.param_shapes)
        self.a, self.damping, self.tol = a, damping, tol
        self.max_steps = max_steps if max_steps is not None else a.shape[0]
        closed = a.exact & {"to_dense", "diagonal", "trace", "frobenius_norm", "logdet", "eigvalsh"} \
            if "inverse" in a.exact \
            else frozenset()
        self.exact = frozenset(closed | {"solve", "inverse"})
        self._closed_inverse = None

    def _closed(self) -> LinearOperator:
        """``A.inverse(damping)``, the closed-form inverse (built once)."""
        if self._closed_inverse is None:
            self._closed_inverse = self.a.inverse(self.damping)
        return self._closed_inverse

    def to_dense(self, chunk_size: int = 256):
        return self._closed().to_dense() if "to_dense" in self.exact else super().to_dense(chunk_size)

    def diagonal(self, **options) -> Tensor:
        return self._closed().diagonal() if "diagonal" in self.exact else super().diagonal(**options)

    def trace(self, **options) -> float:
        return self._closed().trace() if "trace" in self.exact else super().trace(**options)

    def frobenius_norm(self, **options) -> float:
        return self._closed().frobenius_norm() if "frobenius_norm" in self.exact \
            else super().frobenius_norm(**options)

    def logdet(self, **options) -> float:
        return self._closed().logdet() if "logdet" in self.exact else super().logdet(**options)

    def eigvalsh(self, k: int | None = None, **options) -> Tensor:
        return self._closed().eigvalsh(k) if "eigvalsh" in self.exact else super().eigvalsh(k, **options)

    def solve(self, v, damping: float = 0.0, **options):
        """``(B + damping I)^-1 v``: exactly ``(A + self.damping I) v`` when ``damping == 0``."""
        if check_damping(damping) != 0:
            return super().solve(v, damping, **options)
        return self.inverse() @ v

    def inverse(self, damping: float = 0.0, **options) -> LinearOperator:
        """``(B + damping I)^-1``: exactly ``A + self.damping I`` when ``damping == 0``."""
        if check_damping(damping) != 0:
            return super().inverse(damping, **options)
        if self.damping == 0:
            return self.a
        return SumOperator(self.a, ScaledOperator(IdentityOperator(self.shape[0], self.dtype, self.device),
                                                  self.damping))

    def _apply(self, P):
        return self.a._matmat(P) + self.damping * P

    def _matmat(self, B):
        return conjugate_gradients(self._apply, B, tol=self.tol, max_steps=self.max_steps)
