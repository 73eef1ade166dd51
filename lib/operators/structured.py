"""Structured symmetric operators: block-diagonal, low-rank and quasi-diagonal (arrowhead) matrices.

They are plain matrices with structure, not tied to a model, so they live beside the dense and
diagonal operators; :mod:`lib.curvature.representations` builds the Fisher in each of them.

* :class:`BlockDiagonalOperator`: ``diag(B_1, ..., B_m)`` from dense symmetric blocks; every
  quantity exact, block by block.
* :class:`LowRankOperator`: ``M = R^T R`` for a factor ``R`` of shape ``(r, d)``; products in
  ``O(r d)``, trace ``||R||_F^2``, Frobenius norm ``||R R^T||_F``, eigenvalues from the
  ``r x r`` Gram matrix, solves by the Woodbury identity
  ``(R^T R + lambda I)^-1 = (I - R^T (R R^T + lambda I)^-1 R) / lambda``.
* :class:`QuasiDiagonalOperator`: a diagonal plus, per *unit*, the cross terms between one
  "bias" coordinate and a set of "weight" coordinates (an arrowhead block per unit, Ollivier's
  quasi-diagonal metric); solves by the Schur complement of each arrowhead.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._checks import check_damping
from .base import EXACT_QUANTITIES, LinearOperator
from .linalg import dense_logdet, top_ascending

__all__ = ["BlockDiagonalOperator", "LowRankOperator", "WoodburyInverseOperator", "QuasiDiagonalOperator",
           "QuasiDiagonalInverseOperator"]

_SINGULAR = "is singular (or not positive definite); pass damping > 0"


def _solve_map(op: LinearOperator, v, block_solve):
    return op._map(v, block_solve, "solve needs a tensor or a list of parameter-shaped tensors")


class BlockDiagonalOperator(LinearOperator):
    """``diag(B_1, ..., B_m)`` for symmetric blocks ``B_i`` of shape ``(d_i, d_i)``; ``d = sum d_i``.

    Every quantity is exact, computed block by block: ``trace``, ``frobenius_norm``, ``diagonal``,
    ``logdet`` and ``eigvalsh`` (all ``d`` eigenvalues from the blocks'), ``solve`` and
    ``inverse`` (the inverse is block-diagonal again).

    Example:
        >>> import torch
        >>> B = BlockDiagonalOperator([torch.tensor([[2.0, 1.0], [1.0, 2.0]]), torch.tensor([[4.0]])])
        >>> B.eigvalsh(), B.trace()
        (tensor([1., 3., 4.]), 8.0)
        >>> B.solve(torch.tensor([3.0, 3.0, 4.0]))
        tensor([1., 1., 1.])
    """

    exact = EXACT_QUANTITIES

    def __init__(self, blocks: list[Tensor], param_shapes=None, names: list[str] | None = None):
        if not blocks or any(b.ndim != 2 or b.shape[0] != b.shape[1] for b in blocks):
            raise ValueError("blocks must be a non-empty list of square matrices")
        super().__init__(sum(b.shape[0] for b in blocks), blocks[0].dtype, blocks[0].device, True, param_shapes)
        self.blocks, self.names = blocks, names
        self.sizes = [b.shape[0] for b in blocks]

    def _per_block(self, V, fn):
        return torch.cat([fn(b, part) for b, part in zip(self.blocks, V.split(self.sizes))], dim=0)

    def _matmat(self, V):
        return self._per_block(V, lambda b, part: b @ part)

    def to_dense(self, chunk_size: int = 256):
        return torch.block_diag(*self.blocks)

    def diagonal(self) -> Tensor:
        return torch.cat([torch.diagonal(b) for b in self.blocks])

    def trace(self) -> float:
        return float(sum(torch.trace(b) for b in self.blocks))

    def frobenius_norm(self) -> float:
        return math.sqrt(sum(float(torch.linalg.matrix_norm(b) ** 2) for b in self.blocks))

    def logdet(self) -> float:
        return sum(dense_logdet(b, True) for b in self.blocks)

    def eigvalsh(self, k: int | None = None) -> Tensor:
        values = torch.cat([torch.linalg.eigvalsh(b) for b in self.blocks])
        return top_ascending(values.sort().values, self._check_k(k))

    def _damped(self, damping: float) -> list[Tensor]:
        damping = check_damping(damping)
        return [b if damping == 0 else b + damping * torch.eye(len(b), dtype=b.dtype, device=b.device)
                for b in self.blocks]

    def solve(self, v, damping: float = 0.0):
        damped = self._damped(damping)

        def block_solve(V):
            parts = []
            for b, part in zip(damped, V.split(self.sizes)):
                X, info = torch.linalg.solve_ex(b, part)
                if bool(info.any()):
                    raise ValueError("a block plus damping " + _SINGULAR)
                parts.append(X)
            return torch.cat(parts, dim=0)
        return _solve_map(self, v, block_solve)

    def inverse(self, damping: float = 0.0) -> "BlockDiagonalOperator":
        inverses = []
        for b in self._damped(damping):
            inv, info = torch.linalg.inv_ex(b)
            if bool(info.any()):
                raise ValueError("a block plus damping " + _SINGULAR)
            inverses.append((inv + inv.T) / 2)
        return BlockDiagonalOperator(inverses, self.param_shapes, self.names)


class LowRankOperator(LinearOperator):
    """``M = R^T R`` for a factor ``R`` of shape ``(r, d)`` (e.g. per-example square roots of a Fisher).

    Exact: ``to_dense``, ``diagonal`` (column norms of ``R``), ``trace`` (``||R||_F^2``),
    ``frobenius_norm`` (``||R R^T||_F``), ``eigvalsh`` (the Gram matrix ``R R^T``'s eigenvalues,
    padded with ``d - r`` zeros), ``logdet`` (``ValueError`` when ``r < d``: singular), ``solve``
    and ``inverse`` by the Woodbury identity (``damping > 0`` when ``r < d``).

    Example:
        >>> import torch
        >>> M = LowRankOperator(torch.tensor([[1.0, 1.0, 0.0]]))  # (1, 1, 0)(1, 1, 0)^T
        >>> M.trace(), M.eigvalsh()
        (2.0, tensor([0., 0., 2.]))
        >>> torch.allclose(M.solve(torch.tensor([3.0, 3.0, 1.0]), damping=1.0), torch.ones(3))
        True
    """

    exact = EXACT_QUANTITIES

    def __init__(self, factor: Tensor, param_shapes=None):
        if factor.ndim != 2:
            raise ValueError(f"factor must be a matrix (r, d), got shape {tuple(factor.shape)}")
        super().__init__(factor.shape[1], factor.dtype, factor.device, True, param_shapes)
        self.factor = factor
        self._gram_eig = None
        self._gram_eigh = None

    @property
    def rank_bound(self) -> int:
        """``r``, the number of rows of the factor (an upper bound of the rank)."""
        return self.factor.shape[0]

    def _matmat(self, V):
        return self.factor.T @ (self.factor @ V)

    def to_dense(self, chunk_size: int = 256):
        return self.factor.T @ self.factor

    def diagonal(self) -> Tensor:
        return (self.factor ** 2).sum(dim=0)

    def trace(self) -> float:
        return float((self.factor ** 2).sum())

    def _small_gram(self) -> Tensor:
        """``R R^T`` ``(r, r)`` or ``R^T R`` ``(d, d)``, whichever is smaller (same nonzero spectrum)."""
        R = self.factor
        return R @ R.T if R.shape[0] <= R.shape[1] else R.T @ R

    def frobenius_norm(self) -> float:
        return float(torch.linalg.matrix_norm(self._small_gram()))

    def gram_eigh(self) -> tuple[Tensor, Tensor]:
        """The eigendecomposition ``(s (m,), W (m, m))`` of :meth:`_small_gram` (``m = min(r, d)``),
        ascending, round-off below zero clipped; computed once, so that solves at many dampings
        (a damping sweep) cost one factorization."""
        if self._gram_eigh is None:
            values, vectors = torch.linalg.eigh(self._small_gram())
            self._gram_eigh = values.clamp_min(0.0), vectors
        return self._gram_eigh

    def _eigenvalues(self) -> Tensor:
        """All ``d`` eigenvalues, ascending (round-off below zero clipped)."""
        if self._gram_eig is None:
            values = torch.linalg.eigvalsh(self._small_gram()).clamp_min(0.0)
            pad = self.shape[0] - len(values)
            self._gram_eig = torch.cat([values.new_zeros(pad), values]) if pad > 0 else values
        return self._gram_eig

    def eigvalsh(self, k: int | None = None) -> Tensor:
        return top_ascending(self._eigenvalues(), self._check_k(k))

    def logdet(self) -> float:
        if self.rank_bound < self.shape[0]:
            raise ValueError(f"the low-rank matrix (rank <= {self.rank_bound} < d = {self.shape[0]}) is "
                             "singular: log det is -inf; add damping first")
        return dense_logdet(self.to_dense(), True)

    def _check_damping(self, damping) -> float:
        damping = check_damping(damping)
        if damping == 0 and self.rank_bound < self.shape[0]:
            raise ValueError(f"the low-rank matrix (rank <= {self.rank_bound} < d = {self.shape[0]}) "
                             + _SINGULAR)
        return damping

    def solve(self, v, damping: float = 0.0):
        """``(R^T R + damping I)^-1 v`` by the Woodbury identity (see :class:`WoodburyInverseOperator`)."""
        return self.inverse(damping) @ v

    def inverse(self, damping: float = 0.0) -> "WoodburyInverseOperator":
        return WoodburyInverseOperator(self, self._check_damping(damping))


class WoodburyInverseOperator(LinearOperator):
    """``(R^T R + lambda I)^-1`` of a :class:`LowRankOperator`, applied by the Woodbury identity
    ``(v - R^T (R R^T + lambda I)^-1 R v) / lambda`` (or, when ``d <= r`` or ``lambda = 0``,
    directly in the ``d x d`` matrix), both through the low-rank operator's cached
    eigendecomposition of its small Gram matrix (:meth:`LowRankOperator.gram_eigh`). Exact:
    products, ``to_dense``, ``diagonal``, ``trace``, ``frobenius_norm``, ``eigvalsh``, ``logdet``."""

    exact = frozenset({"to_dense", "diagonal", "trace", "frobenius_norm", "eigvalsh", "logdet"})

    def __init__(self, op: LowRankOperator, damping: float):
        super().__init__(op.shape[0], op.dtype, op.device, True, op.param_shapes)
        self.op, self.damping = op, damping
        R = op.factor
        self.woodbury = damping > 0 and R.shape[0] < R.shape[1]
        values, self.vectors = op.gram_eigh()
        shifted = values + damping
        if float(shifted.min()) <= 1e-12 * max(float(shifted.max()), 1e-300):
            raise ValueError("the low-rank matrix plus damping " + _SINGULAR)
        self.scale = 1.0 / shifted  # (R R^T + lambda I)^-1 (or (R^T R + lambda I)^-1) = W diag(scale) W^T

    def _inner_solve(self, V: Tensor) -> Tensor:
        return self.vectors @ (self.scale[:, None] * (self.vectors.T @ V))

    def _matmat(self, V):
        if not self.woodbury:
            return self._inner_solve(V)
        R = self.op.factor
        return (V - R.T @ self._inner_solve(R @ V)) / self.damping

    def to_dense(self, chunk_size: int = 256):
        return self._matmat(torch.eye(self.shape[0], dtype=self.dtype, device=self.device))

    def diagonal(self) -> Tensor:
        if not self.woodbury:
            return ((self.vectors ** 2) * self.scale).sum(dim=1)
        U = self.scale.sqrt()[:, None] * (self.vectors.T @ self.op.factor)  # diag(scale)^1/2 W^T R
        return (1.0 - (U ** 2).sum(dim=0)) / self.damping

    def _eigenvalues(self) -> Tensor:
        return (1.0 / (self.op._eigenvalues() + self.damping)).flip(0)

    def trace(self) -> float:
        return float(self._eigenvalues().sum())

    def frobenius_norm(self) -> float:
        return float(torch.linalg.vector_norm(self._eigenvalues()))

    def eigvalsh(self, k: int | None = None) -> Tensor:
        return top_ascending(self._eigenvalues(), self._check_k(k))

    def logdet(self) -> float:
        return -float(torch.log(self.op._eigenvalues() + self.damping).sum())


class _Positions:
    """Where a unit-shaped tensor (``(U,)`` biases or ``(U, m)`` weights) sits in a flat vector:
    an index tensor of that shape, or the int start of a contiguous run (row-major), which
    costs no memory and is read and written through views instead of gathers."""

    def __init__(self, index, shape: tuple[int, ...], device):
        if isinstance(index, Tensor):
            if tuple(index.shape) != tuple(shape):
                raise ValueError(f"an index tensor of shape {tuple(index.shape)} where {tuple(shape)} is needed")
        elif not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise TypeError(f"positions must be an index tensor or an int start >= 0, got {index!r}")
        self.index, self.shape, self.device = index, tuple(shape), device

    def take(self, V: Tensor) -> Tensor:
        """The entries of ``V`` (``(d,)`` or ``(d, k)``) at these positions: ``(*shape, ...)``."""
        if isinstance(self.index, Tensor):
            return V[self.index]
        return V[self.index:self.index + math.prod(self.shape)].reshape(*self.shape, *V.shape[1:])

    def put_(self, V: Tensor, values: Tensor):
        if isinstance(self.index, Tensor):
            V[self.index] = values
        else:
            self.take(V).copy_(values)

    def add_(self, V: Tensor, values: Tensor):
        if isinstance(self.index, Tensor):
            V[self.index] += values
        else:
            self.take(V).add_(values)

    def indices(self) -> Tensor:
        if isinstance(self.index, Tensor):
            return self.index
        return torch.arange(self.index, self.index + math.prod(self.shape), device=self.device).reshape(self.shape)


class QuasiDiagonalOperator(LinearOperator):
    """A diagonal plus arrowhead cross terms: Ollivier's quasi-diagonal matrix.

    ``M = diag(values)`` plus, for every unit ``u`` of every group ``(bias, weights, cross)``,
    the symmetric entries ``M[bias[u], weights[u, j]] = cross[u, j]``. For a layer, a unit is an
    output neuron (or channel): its bias and the weights into it, so each unit's block is the
    arrowhead ``[[diag(D_w), c], [c^T, d_b]]``.

    Args:
        values: the diagonal ``(d,)``.
        groups: list of ``(bias, weights, cross)``: ``cross`` the values ``(U, m)``; ``bias`` an
            index tensor ``(U,)`` and ``weights`` one of shape ``(U, m)``, or either an int: the
            start of a contiguous run (``bias[u] = start + u``, ``weights[u, j] = start + u m + j``,
            a layer's bias and row-major weight, stored without indices); positions disjoint
            across units and groups.

    Keeping only part of a PSD matrix's entries, it need not be positive semi-definite itself (a
    convolution's bias is strongly correlated with its weights). Solves then need only that
    ``M + lambda I`` be nonsingular (checked through the Schur complements); the log-det needs
    it positive definite (see :meth:`schur`).

    Exact: products, ``to_dense``, ``diagonal``, ``trace``, ``frobenius_norm``
    (``sqrt(sum values^2 + 2 sum cross^2)``), ``logdet``, ``solve`` and ``inverse`` (the Schur
    complement of each arrowhead, ``sigma = d_b + lambda - sum_j c_j^2 / (D_wj + lambda)``).

    Example:
        >>> import torch
        >>> Q = QuasiDiagonalOperator(torch.tensor([2.0, 2.0, 3.0]),
        ...                           [(torch.tensor([2]), torch.tensor([[0, 1]]), torch.tensor([[1.0, 1.0]]))])
        >>> Q.to_dense()
        tensor([[2., 0., 1.],
                [0., 2., 1.],
                [1., 1., 3.]])
        >>> Q.solve(torch.tensor([3.0, 3.0, 5.0]))
        tensor([1., 1., 1.])
        >>> bool((QuasiDiagonalOperator(Q.values, [(2, 0, torch.tensor([[1.0, 1.0]]))]).to_dense() == Q.to_dense()).all())
        True
    """

    exact = EXACT_QUANTITIES - {"eigvalsh"}

    def __init__(self, values: Tensor, groups: list[tuple], param_shapes=None):
        if values.ndim != 1:
            raise ValueError(f"values must be a vector (d,), got shape {tuple(values.shape)}")
        super().__init__(values.shape[0], values.dtype, values.device, True, param_shapes)
        self.values = values
        self.groups = [(_Positions(bias, cross.shape[:1], values.device),
                        _Positions(weights, cross.shape, values.device), cross)
                       for bias, weights, cross in groups]

    def _matmat(self, V):
        out = self.values[:, None] * V
        for bias, weights, cross in self.groups:
            weights.add_(out, cross[..., None] * bias.take(V)[:, None, :])
            bias.add_(out, (cross[..., None] * weights.take(V)).sum(dim=1))
        return out

    def to_dense(self, chunk_size: int = 256):
        M = torch.diag(self.values)
        for bias, weights, cross in self.groups:
            w = weights.indices()
            rows = bias.indices()[:, None].expand_as(w)
            M[rows, w] = cross
            M[w, rows] = cross
        return M

    def diagonal(self) -> Tensor:
        return self.values.clone()

    def trace(self) -> float:
        return float(self.values.sum())

    def frobenius_norm(self) -> float:
        cross = sum(float((c ** 2).sum()) for _, _, c in self.groups)
        return math.sqrt(float((self.values ** 2).sum()) + 2.0 * cross)

    def schur(self, damping: float, *, definite: bool = True) -> tuple[Tensor, list[Tensor]]:
        """``values + damping`` and, per group, the Schur complements ``sigma`` ``(U,)``.

        ``ValueError`` unless the weights' entries are positive and every ``sigma`` is positive
        (``definite``: the matrix plus damping is then positive definite, as a log-det needs) or
        merely nonzero (``definite=False``: nonsingular, all a solve needs). The quasi-diagonal
        matrix of a Fisher need not be positive semi-definite: the bias-weight terms of a unit
        can outweigh its bias entry (``sigma < 0``), as they do for convolutions, whose bias is
        correlated with all of a filter's weights; NNGeometry's solve does not check this.
        """
        shifted = self.values + check_damping(damping)
        sigmas = [b.take(shifted) - (c ** 2 / w.take(shifted)).sum(dim=1) for b, w, c in self.groups]
        tiny = 1e-12 * float(shifted.abs().max()) if shifted.numel() else 0.0
        bad = (lambda s: s <= 0) if definite else (lambda s: s.abs() <= tiny)
        if bool((shifted <= 0).any()) or any(bool(bad(s).any()) for s in sigmas):
            raise ValueError("the quasi-diagonal matrix plus damping " + _SINGULAR)
        return shifted, sigmas

    def logdet(self) -> float:
        shifted, sigmas = self.schur(0.0)
        # det of an arrowhead = prod D_w * sigma: replace each bias entry's log by log sigma
        total = shifted.log()
        for (b, _, _), s in zip(self.groups, sigmas):
            b.put_(total, s.log())
        return float(total.sum())

    def solve(self, v, damping: float = 0.0):
        shifted, sigmas = self.schur(damping, definite=False)
        return _solve_map(self, v, lambda V: _arrowhead_solve(shifted, self.groups, sigmas, V))

    def inverse(self, damping: float = 0.0) -> "QuasiDiagonalInverseOperator":
        return QuasiDiagonalInverseOperator(self, *self.schur(damping, definite=False))


def _arrowhead_solve(shifted: Tensor, groups, sigmas, V: Tensor) -> Tensor:
    """``(M + lambda I)^-1 V`` per arrowhead: ``x_b = (v_b - c . (v_w / D_w)) / sigma``,
    ``x_w = (v_w - c x_b) / D_w``; ``V`` ``(d, k)``."""
    X = V / shifted[:, None]
    for (bias, weights, cross), sigma in zip(groups, sigmas):
        Dw = weights.take(shifted)[..., None]                  # (U, m, 1)
        vw = weights.take(V)                                   # (U, m, k)
        xb = (bias.take(V) - (cross[..., None] * vw / Dw).sum(dim=1)) / sigma[:, None]
        bias.put_(X, xb)
        weights.put_(X, (vw - cross[..., None] * xb[:, None, :]) / Dw)
    return X


class QuasiDiagonalInverseOperator(LinearOperator):
    """``(Q + lambda I)^-1`` of a :class:`QuasiDiagonalOperator`, applied by Schur complements.

    Exact: products, ``diagonal`` and ``trace`` (per arrowhead, ``1 / D_w + (c / D_w)^2 / sigma``
    and ``1 / sigma``) and ``logdet`` (``-log det(Q + lambda I)``); the rest from products."""

    exact = frozenset({"diagonal", "trace", "logdet"})

    def __init__(self, op: QuasiDiagonalOperator, shifted: Tensor, sigmas: list[Tensor]):
        super().__init__(op.shape[0], op.dtype, op.device, True, op.param_shapes)
        self.op, self.shifted, self.sigmas = op, shifted, sigmas

    def _matmat(self, V):
        return _arrowhead_solve(self.shifted, self.op.groups, self.sigmas, V)

    def diagonal(self) -> Tensor:
        out = 1.0 / self.shifted
        for (bias, weights, cross), sigma in zip(self.op.groups, self.sigmas):
            weights.add_(out, (cross / weights.take(self.shifted)) ** 2 / sigma[:, None])
            bias.put_(out, 1.0 / sigma)
        return out

    def trace(self) -> float:
        return float(self.diagonal().sum())

    def logdet(self) -> float:
        if any(bool((s <= 0).any()) for s in self.sigmas):
            raise ValueError("the quasi-diagonal matrix plus damping is not positive definite: no log-det")
        total = self.shifted.log()
        for (b, _, _), s in zip(self.op.groups, self.sigmas):
            b.put_(total, s.log())
        return -float(total.sum())
