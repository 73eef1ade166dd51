"""Function space: the Jacobian of a model's outputs and the empirical neural tangent kernel.

For a model ``f(x; theta)`` with ``d`` trainable parameters, evaluated on ``n`` inputs
``X``, the Jacobian ``J = d f(X) / d theta`` is a rectangular ``(m, d)`` matrix:

* all outputs (``output=None``): ``m = n C`` for ``C`` outputs per example (an output of
  shape ``(C_1, ..., C_k)`` counts ``C = C_1 ... C_k``); the rows are example-major, row
  ``i C + c`` is output ``c`` of example ``i``, so ``J.to_dense().reshape(n, C, d)``;
* one scalar output per example: ``m = n``. ``output`` is an int class index ``c``
  (``f_c``), a pair ``(c1, c2)`` meaning ``f_c2 - f_c1`` (a two-class sub-task of a
  classifier), or a callable mapping the outputs ``(B, ...)`` of a batch to one number
  per example ``(B,)``, such as ``lambda f: f[:, 3] - f[:, 8]``.

:func:`jacobian` returns a :class:`Jacobian`: the push-forward ``J v`` (parameter space
to function space, one forward pass with forward-mode AD per batch), the pull-back
``J^T u`` (function space to parameter space, one backward pass per batch), its transpose
``J.T`` and ``to_dense()``. :class:`~lib.operators.base.LinearOperator` is square, so
this rectangular map is its own small class with the same conventions: ``@`` multiplies a
flat vector or a block of columns and returns the same form, a parameter-space vector may
also be a list of parameter-shaped tensors, the coordinates are the parameters with
``requires_grad=True`` in ``model.parameters()`` order (a layer used twice is one set of
coordinates, its Jacobian the sum over its uses).

:func:`ntk` is the empirical NTK Gram matrix ``K = J(X1) J(X2)^T`` (Jacot et al. 2018;
NNGeometry's ``FMat``), shape ``(m1, m2)``. It is built block by block from per-example
Jacobians (``torch.func.jacrev`` vmapped over the examples of a batch), so at no time is
more than one batch of rows of ``J(X1)`` and of ``J(X2)`` held, unless all of ``J(X2)``
fits in :data:`CACHE_ENTRIES` entries, in which case its blocks are computed once.

A model in training mode with dropout or BatchNorm is refused (``ValueError``): its
outputs, hence ``J`` and ``K``, would be random or depend on the batch.
"""

from __future__ import annotations

import copy
import math
from typing import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, jvp

from .._checks import check_finite, check_int, check_module
from .inspection import check_deterministic_forward, check_no_stochastic_layers
from .products import differentiable_attention, quiet_forward_ad

__all__ = ["Jacobian", "jacobian", "ntk", "CACHE_ENTRIES", "BLOCK_ENTRIES", "PRODUCT_BATCH"]

BLOCK_ENTRIES = 2 ** 22
"""Entries of one dense block of Jacobian rows (per-example Jacobians of one batch) when
``batch_size`` is not given: ``max(1, BLOCK_ENTRIES // (C d))`` examples per block."""
CACHE_ENTRIES = 2 ** 25
""":func:`ntk` keeps all blocks of ``J(X2)`` when it has at most this many entries (256 MiB
in float64), else it recomputes them for every block of ``J(X1)``."""
PRODUCT_BATCH = 512
"""Examples per forward pass of :meth:`Jacobian.push_forward` and :meth:`Jacobian.pull_back`
when ``batch_size`` is not given."""


def _output_selector(output, num_outputs: int) -> tuple[Callable[[Tensor], Tensor], int]:
    """``select`` mapping a batch's outputs ``(B, ...)`` to ``(B, C')`` and ``C'``."""
    if output is None:
        return (lambda f: f.reshape(len(f), -1)), num_outputs
    if isinstance(output, (list, tuple)):
        if len(output) != 2:
            raise ValueError(f"output as a pair must be (c1, c2) meaning f_c2 - f_c1, got {output!r}")
        c1, c2 = (_class_index(c, num_outputs) for c in output)
        if c1 == c2:
            raise ValueError(f"output=({c1}, {c2}) selects f_{c2} - f_{c1} = 0; pick two classes")
        return (lambda f: (f.reshape(len(f), -1)[:, c2] - f.reshape(len(f), -1)[:, c1])[:, None]), 1
    if callable(output):
        return (lambda f: _scalar_per_example(output(f), len(f))), 1
    c = _class_index(output, num_outputs)
    return (lambda f: f.reshape(len(f), -1)[:, c:c + 1]), 1


def _class_index(c, num_outputs: int) -> int:
    if isinstance(c, bool) or not isinstance(c, int):
        raise TypeError("output must be None (all outputs), an int class index, a pair "
                        f"(c1, c2) or a callable f -> (B,), got {type(c).__name__} {c!r}")
    if not 0 <= c < num_outputs:
        raise ValueError(f"output index {c} is out of range for a model with {num_outputs} outputs")
    return c


def _scalar_per_example(value, batch: int) -> Tensor:
    if not isinstance(value, Tensor) or tuple(value.shape) not in ((batch,), (batch, 1)):
        got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"the output callable must map outputs of {batch} examples to one number "
                         f"per example, shape ({batch},), got {got}")
    return value.reshape(batch, 1)


def _check_inputs(X, name: str, dtype: torch.dtype) -> Tensor:
    if not isinstance(X, Tensor):
        raise TypeError(f"{name} must be a tensor of inputs (n, ...), got {type(X).__name__}")
    if X.ndim == 0 or len(X) == 0:
        raise ValueError(f"{name} must hold at least one example, got shape {tuple(X.shape)}")
    if torch.is_floating_point(X):
        if X.dtype != dtype:
            raise TypeError(f"{name} has dtype {X.dtype} but the model's parameters have dtype "
                            f"{dtype}; convert one of them (e.g. {name}.to({dtype}))")
        check_finite(X, name)
    return X


class Jacobian:
    """The Jacobian ``J = d f(X) / d theta`` of a model's outputs on inputs ``X``, ``(m, d)``.

    Built by :func:`jacobian` (see the module docstring for ``m``, the row order and
    ``output``). ``J @ v`` is :meth:`push_forward`, ``J.T @ u`` is :meth:`pull_back`;
    ``J.T`` is the transposed map, shape ``(d, m)``, and ``J.T.T`` is ``J`` again.

    Attributes:
        shape: ``(m, d)`` (``(d, m)`` for ``J.T``).
        num_examples, num_outputs: ``n`` and the outputs per example ``C'`` (``m = n C'``).
        dtype, device: those of the model's parameters.
        transposed: whether this object is ``J^T``.
    """

    def __init__(self, model: nn.Module, X: Tensor, output=None, *, batch_size: int | None = None):
        check_module(model)
        check_no_stochastic_layers(model, "the Jacobian and the tangent kernel")
        self.model = model
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("model has no trainable parameters")
        self.dtype, self.device = self.params[0].dtype, self.params[0].device
        self.X = _check_inputs(X, "X", self.dtype)
        self.batch_size = None if batch_size is None else check_int(batch_size, "batch_size")
        with differentiable_attention():
            C = check_deterministic_forward(model, self.X[:2].to(self.device))
        self.select, self.num_outputs = _output_selector(output, C)
        if callable(output):  # the callable's shape, checked once
            with torch.no_grad(), differentiable_attention():
                self.select(model(self.X[:2].to(self.device)))
        self.num_examples = len(X)
        self.num_params = sum(p.numel() for p in self.params)
        self.transposed = False

    # -- shape and transpose ---------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        m, d = self.num_examples * self.num_outputs, self.num_params
        return (d, m) if self.transposed else (m, d)

    @property
    def T(self) -> "Jacobian":  # noqa: N802  (the matrix transpose, as torch's .T)
        """The transposed map ``J^T`` (shares the model and inputs; nothing is computed)."""
        out = copy.copy(self)
        out.transposed = not self.transposed
        return out

    def __matmul__(self, other):
        return self.pull_back(other) if self.transposed else self.push_forward(other)

    def __repr__(self) -> str:
        return (f"Jacobian{'.T' if self.transposed else ''}(shape={self.shape}, "
                f"examples={self.num_examples}, outputs per example={self.num_outputs})")

    # -- products ----------------------------------------------------------------------
    def push_forward(self, v) -> Tensor:
        """``J v``: a parameter-space vector to function space.

        Args:
            v: flat ``(d,)``, a block ``(d, k)`` or a list of parameter-shaped tensors.

        Returns:
            ``(m,)`` (``(m, k)`` for a block), rows as in the module docstring.
        """
        if isinstance(v, (list, tuple)):
            v = self._flatten_params(v)
        V = self._check_block(v, self.num_params, "v", "(d,) = the number of parameters")
        out = torch.cat([self._jvps(X, V) for X in self._product_batches()])
        return out[:, 0] if v.ndim == 1 else out

    def pull_back(self, u: Tensor) -> Tensor:
        """``J^T u``: a function-space vector to parameter space.

        Args:
            u: ``(m,)`` or a block ``(m, k)``, rows as in the module docstring.

        Returns:
            ``(d,)`` (``(d, k)`` for a block), parameters in ``model.parameters()`` order.
        """
        m = self.num_examples * self.num_outputs
        U = self._check_block(u, m, "u", "(m,) = examples x outputs per example")
        total, start = None, 0
        for X in self._product_batches():
            rows = len(X) * self.num_outputs
            part = self._vjps(X, U[start:start + rows])
            total = part if total is None else total.add_(part)
            start += rows
        return total[:, 0] if u.ndim == 1 else total

    def to_dense(self) -> Tensor:
        """The dense ``(m, d)`` matrix (``(d, m)`` for ``J.T``), from per-example Jacobians."""
        J = torch.cat([self.block(i) for i in range(self.num_blocks)])
        return J.T if self.transposed else J

    # -- dense blocks of rows (per-example Jacobians) -----------------------------------
    @property
    def block_size(self) -> int:
        """Examples per dense block of rows."""
        if self.batch_size is not None:
            return self.batch_size
        return max(1, BLOCK_ENTRIES // (self.num_outputs * self.num_params))

    @property
    def num_blocks(self) -> int:
        return math.ceil(self.num_examples / self.block_size)

    def block(self, i: int) -> Tensor:
        """Rows of the examples ``i b, ..., (i + 1) b - 1`` (``b`` = :attr:`block_size`)
        of the untransposed ``J``: ``(b C', d)``."""
        X = self.X[i * self.block_size:(i + 1) * self.block_size].to(self.device)
        params = {n: p.detach() for n, p in zip(self.names, self.params)}

        def per_example(x):
            rows = jacrev(lambda p: self.select(functional_call(self.model, p, (x[None],)))[0])(params)
            return torch.cat([rows[n].reshape(self.num_outputs, -1) for n in self.names], dim=1)

        with differentiable_attention():
            return torch.vmap(per_example)(X).reshape(-1, self.num_params)

    # -- helpers -------------------------------------------------------------------------
    def _product_batches(self):
        size = self.batch_size or PRODUCT_BATCH
        for start in range(0, self.num_examples, size):
            yield self.X[start:start + size].to(self.device)

    def _check_block(self, v, rows: int, name: str, what: str) -> Tensor:
        """``v`` (rows,) or (rows, k), checked, as a block (rows, k) in the model's dtype."""
        if not isinstance(v, Tensor) or not torch.is_floating_point(v):
            raise TypeError(f"{name} must be a floating-point tensor, got "
                            f"{type(v).__name__ if not isinstance(v, Tensor) else v.dtype}")
        if v.ndim not in (1, 2) or v.shape[0] != rows:
            raise ValueError(f"{name} has shape {tuple(v.shape)}, but it must be {what} "
                             f"({rows},) or a block ({rows}, k)")
        check_finite(v, name)
        return (v if v.ndim == 2 else v[:, None]).to(device=self.device, dtype=self.dtype)

    def _flatten_params(self, tensors) -> Tensor:
        shapes, got = [tuple(p.shape) for p in self.params], [tuple(t.shape) for t in tensors]
        if got != shapes:
            raise ValueError(f"parameter-shaped tensors have shapes {got}, expected {shapes}")
        return torch.cat([t.reshape(-1) for t in tensors])

    def _split(self, flat: Tensor) -> dict:
        return {n: t.reshape(p.shape) for n, t, p in
                zip(self.names, flat.split([p.numel() for p in self.params]), self.params)}

    def _jvps(self, X: Tensor, V: Tensor) -> Tensor:
        """``J_X V`` for a block ``V`` (d, k) -> (B C', k), one vmapped forward-mode pass."""
        primals = {n: p.detach() for n, p in zip(self.names, self.params)}

        def one(column):
            return jvp(lambda p: self.select(functional_call(self.model, p, (X,))),
                       (primals,), (self._split(column),))[1].reshape(-1)

        with quiet_forward_ad(), differentiable_attention():
            if V.shape[1] == 1:
                return one(V[:, 0])[:, None]
            return torch.vmap(one, in_dims=1, out_dims=1)(V)

    def _vjps(self, X: Tensor, U: Tensor) -> Tensor:
        """``J_X^T U`` for a block ``U`` (B C', k) -> (d, k), one (vmapped) backward pass."""
        k = U.shape[1]
        with torch.enable_grad(), differentiable_attention():
            out = self.select(self.model(X))  # (B, C')
            if k == 1:
                grads = torch.autograd.grad(out, self.params, grad_outputs=U[:, 0].reshape(out.shape),
                                            allow_unused=True)
                grads = [None if g is None else g[None] for g in grads]
            else:
                grads = torch.autograd.grad(out, self.params, grad_outputs=U.T.reshape(k, *out.shape),
                                            is_grads_batched=True, allow_unused=True)
        return torch.cat([p.new_zeros(k, p.numel()) if g is None else g.reshape(k, -1)
                          for g, p in zip(grads, self.params)], dim=1).T


def jacobian(model: nn.Module, X: Tensor, output=None, *, batch_size: int | None = None
             ) -> Jacobian:
    """The Jacobian of ``model``'s outputs on ``X`` with respect to its parameters.

    Args:
        model: a module in eval mode if it has dropout or BatchNorm.
        X: inputs ``(n, ...)``; floating inputs must have the parameters' dtype.
        output: ``None`` (all outputs), an int class index, a pair ``(c1, c2)`` for
            ``f_c2 - f_c1`` or a callable ``f (B, ...) -> (B,)``; see the module docstring.
        batch_size: examples per forward pass and per dense block (default: up to
            :data:`PRODUCT_BATCH` for products, :data:`BLOCK_ENTRIES` entries per block).

    Returns:
        A :class:`Jacobian` of shape ``(n C, d)`` (all outputs) or ``(n, d)``.

    Raises:
        TypeError: ``model`` is not a module, ``X`` not a tensor or of another float dtype,
            ``output`` of an unknown type.
        ValueError: a dropout or BatchNorm module in training mode, a non-deterministic
            forward pass, empty or non-finite ``X``, an output index out of range, a
            callable that does not give one number per example.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from lib.curvature import jacobian
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
        >>> X = torch.randn(5, 3)
        >>> J = jacobian(model, X)  # d = 3 * 4 + 4 + 4 * 2 + 2 = 26
        >>> J.shape, J.T.shape, jacobian(model, X, output=(0, 1)).shape
        ((10, 26), (26, 10), (5, 26))
        >>> v, u = torch.randn(26), torch.randn(10)
        >>> torch.allclose(J @ v, J.to_dense() @ v, atol=1e-6)
        True
        >>> torch.allclose((J @ v) @ u, v @ (J.T @ u), atol=1e-5)  # <J v, u> = <v, J^T u>
        True
    """
    return Jacobian(model, X, output, batch_size=batch_size)


def ntk(model: nn.Module, X1: Tensor, X2: Tensor | None = None, *, output=None,
        batch_size: int | None = None) -> Tensor:
    """The empirical neural tangent kernel Gram matrix ``K = J(X1) J(X2)^T``.

    Args:
        model, output, batch_size: as for :func:`jacobian`.
        X1: inputs ``(n1, ...)``.
        X2: inputs ``(n2, ...)`` with the same feature shape; ``None``: ``X1`` (then ``K``
            is symmetric and only its upper blocks are computed).

    Returns:
        ``(n1, n2)`` for a scalar ``output``; ``(n1 C, n2 C)`` for all outputs, with
        example-major rows and columns, so ``K.reshape(n1, C, n2, C)[i, :, j, :]`` is the
        ``C x C`` kernel of examples ``i`` and ``j``.

    Raises:
        As :func:`jacobian`; ``ValueError`` if ``X2``'s feature shape differs from ``X1``'s.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from lib.curvature import ntk
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 4))
        >>> X1, X2 = torch.randn(6, 3), torch.randn(2, 3)
        >>> ntk(model, X1, output=(3, 1)).shape, ntk(model, X1, X2).shape
        (torch.Size([6, 6]), torch.Size([24, 8]))
    """
    J1 = jacobian(model, X1, output, batch_size=batch_size)
    symmetric = X2 is None
    J2 = J1 if symmetric else jacobian(model, _same_features(X1, X2), output, batch_size=batch_size)
    K = torch.empty(J1.shape[0], J2.shape[0], dtype=J1.dtype, device=J1.device)
    cache = {} if J2.shape[0] * J2.shape[1] <= CACHE_ENTRIES else None  # blocks of J2 (= J1)
    rows1, rows2 = J1.block_size * J1.num_outputs, J2.block_size * J2.num_outputs
    for i in range(J1.num_blocks):
        A = _cached_block(J1, i, cache) if symmetric else J1.block(i)
        for j in range(i if symmetric else 0, J2.num_blocks):
            B = A if symmetric and i == j else _cached_block(J2, j, cache)
            rows, cols = slice(i * rows1, (i + 1) * rows1), slice(j * rows2, (j + 1) * rows2)
            K[rows, cols] = A @ B.T
            if symmetric and j == i:  # exactly symmetric, whatever the matmul's rounding
                K[rows, cols] = 0.5 * (K[rows, cols] + K[rows, cols].T)
            elif symmetric:
                K[cols, rows] = K[rows, cols].T
    return K


def _cached_block(J: Jacobian, j: int, cache: dict | None) -> Tensor:
    if cache is None:
        return J.block(j)
    if j not in cache:
        cache[j] = J.block(j)
    return cache[j]


def _same_features(X1, X2) -> Tensor:
    if not isinstance(X2, Tensor):
        raise TypeError(f"X2 must be a tensor of inputs (n2, ...) or None, got {type(X2).__name__}")
    if isinstance(X1, Tensor) and X2.ndim >= 1 and X1.ndim >= 1 and X2.shape[1:] != X1.shape[1:]:
        raise ValueError(f"X2 has feature shape {tuple(X2.shape[1:])} but X1 has "
                         f"{tuple(X1.shape[1:])}: a kernel compares inputs of one shape")
    return X2
