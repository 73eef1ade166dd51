"""Every representation of the Fisher from one entry point, :func:`fisher`.

``fisher(model, loss_fn, data, kind, representation=...)`` returns the Fisher of ``kind``
(:class:`~lib.curvature.losses.FisherKind`: ``"exact"``, ``"mc"``, ``"empirical"``) as a
:class:`~lib.operators.base.LinearOperator` in one of the :class:`Representation` s below.
All share the scale of :mod:`lib.curvature.products` (the reduction constant ``c``) and, for
``"mc"``, the same sampled labels for the same ``seed`` (one generator advanced batch by batch,
as in :func:`lib.curvature.kronecker.kfac`), so representations differ only by what they keep.

The explicit representations (dense, diagonal, block-diagonal, quasi-diagonal, low-rank) are
built in one pass from the per-example square-root rows ``R`` with ``F = R^T R``
(:mod:`lib.curvature.roots`); K-FAC and EKFAC come from :mod:`lib.curvature.kronecker`; the
implicit one is the matrix-free :class:`~lib.curvature.products.GGNOperator`. Memory: dense
``d^2``, low-rank ``N K d`` (``K`` = ``C`` classes for ``"exact"``, ``num_samples`` for ``"mc"``,
1 for ``"empirical"``), block-diagonal ``sum_l d_l^2``, the others ``O(d)`` plus K-FAC's factors.
"""

from __future__ import annotations

from enum import Enum

import torch
from torch import Tensor, nn

from ..operators import (BlockDiagonalOperator, DenseOperator, DiagonalOperator, LinearOperator, LowRankOperator,
                         QuasiDiagonalOperator)
from .kronecker import ekfac, kfac
from .losses import FisherKind, fisher_kind
from .products import GGNOperator
from .roots import LayerDiagonal, layer_diagonals, square_root_rows, sum_over_rows

__all__ = ["Representation", "REPRESENTATIONS", "QUASI_DIAGONAL_MODULES", "fisher", "as_representation",
           "parameter_groups"]

_FISHER_KINDS = (FisherKind.EXACT, FisherKind.MC, FisherKind.EMPIRICAL)
QUASI_DIAGONAL_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
"""The layers the quasi-diagonal representation supports, each with a weight ``(out, ...)`` and a bias ``(out,)``."""


class Representation(str, Enum):
    """How :func:`fisher` represents the matrix, passed as ``representation=`` (a member or its string).

    Exact means: equal to the dense Fisher of the same ``kind`` (and, for ``"mc"``, seed).
    """

    #: The full ``(d, d)`` matrix (:class:`~lib.operators.explicit.DenseOperator`); exact.
    DENSE = "dense"
    #: Its diagonal only (:class:`~lib.operators.explicit.DiagonalOperator`); exact entries.
    DIAGONAL = "diagonal"
    #: One exact dense block per module (layer), cross-layer blocks dropped
    #: (:class:`~lib.operators.structured.BlockDiagonalOperator`).
    BLOCK_DIAGONAL = "block_diagonal"
    #: K-FAC's ``G kron A`` per layer (:func:`lib.curvature.kronecker.kfac`); an approximation
    #: even of the blocks (exact for one example with one output column).
    KFAC = "kfac"
    #: K-FAC's eigenbasis with the exact second moments in it as eigenvalues
    #: (:func:`lib.curvature.kronecker.ekfac`); its diagonal in the eigenbasis is exact.
    EKFAC = "ekfac"
    #: Per output unit of a Linear/Conv layer, the diagonal plus the bias-weight cross terms
    #: (:class:`~lib.operators.structured.QuasiDiagonalOperator`); exact kept entries.
    QUASI_DIAGONAL = "quasi_diagonal"
    #: ``R^T R`` from the per-example square-root rows (:class:`~lib.operators.structured.LowRankOperator`);
    #: exact, rank at most ``N K``.
    LOW_RANK = "low_rank"
    #: Matrix-free products (:class:`~lib.curvature.products.GGNOperator`); exact.
    IMPLICIT = "implicit"

    def __str__(self) -> str:
        return self.value


REPRESENTATIONS = tuple(r.value for r in Representation)


def as_representation(value) -> Representation:
    """``value`` (a :class:`Representation` or its string) as a member; ``ValueError`` listing the
    valid ones otherwise."""
    if not isinstance(value, str) or str(value) not in REPRESENTATIONS:
        raise ValueError(f"unknown Fisher representation {value!r}; choose one of {REPRESENTATIONS}")
    return Representation(str(value))


def fisher(model: nn.Module, loss_fn: nn.Module, data, kind: str = "exact", *,
           representation: str = "implicit", num_samples: int = 1, seed: int = 0,
           fold_bias: bool = False, unsupported: str = "error") -> LinearOperator:
    """The Fisher of ``model`` under ``loss_fn`` on ``data`` as a ``(d, d)`` operator in a chosen representation.

    Args:
        model, loss_fn, data: as for :class:`lib.curvature.products.CurvatureOperator`
            (``data`` an ``(X, y)`` pair or a re-iterable of pairs).
        kind: ``"exact"``, ``"mc"`` or ``"empirical"`` (:class:`~lib.curvature.losses.FisherKind`);
            ``"mc"`` works for cross-entropy and for MSE (Gaussian labels).
        representation: a :class:`Representation` or its string; default ``"implicit"``, the
            matrix-free operator of :func:`lib.curvature.products.fisher`.
        num_samples, seed: labels drawn per example for ``"mc"``, and their seed.
        fold_bias, unsupported: K-FAC/EKFAC only (see :func:`lib.curvature.kronecker.kfac`).

    Returns:
        A :class:`~lib.operators.base.LinearOperator` ``(d, d)`` (``d`` trainable parameters in
        ``model.parameters()`` order; K-FAC/EKFAC with ``unsupported="skip"``: the covered ones);
        ``op.exact`` names the quantities it has in closed form (all but the implicit and the
        inverse of the quasi-diagonal one have ``trace``, ``frobenius_norm``, ``solve``, ``inverse``).

    Raises:
        ValueError: an unknown ``representation`` or ``kind``; a layer the representation does
            not support (K-FAC/EKFAC: other than Linear/Conv2d; quasi-diagonal: other than
            Linear/ConvNd), named; and every check of the data (:mod:`lib.curvature.inspection`).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from lib import curvature
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
        >>> X, y = torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 2, (8,))
        >>> F = curvature.fisher(model, nn.CrossEntropyLoss(), (X, y), representation="dense")
        >>> Q = curvature.fisher(model, nn.CrossEntropyLoss(), (X, y), representation="quasi_diagonal")
        >>> F.shape, abs(Q.trace() - F.trace()) < 1e-12  # the same diagonal
        ((26, 26), True)
        >>> v = torch.randn(26, dtype=torch.float64)
        >>> L = curvature.fisher(model, nn.CrossEntropyLoss(), (X, y), representation="low_rank")
        >>> bool(torch.allclose(L.solve(v, damping=0.1), F.solve(v, damping=0.1)))
        True
    """
    rep = as_representation(representation)
    kind = fisher_kind(kind, _FISHER_KINDS)
    if rep in (Representation.KFAC, Representation.EKFAC):
        build = kfac if rep == Representation.KFAC else ekfac
        return build(model, loss_fn, data, kind, num_samples=num_samples, fold_bias=fold_bias,
                     unsupported=unsupported, seed=seed)
    if fold_bias or unsupported != "error":
        raise ValueError(f"fold_bias and unsupported apply to representation 'kfac' and 'ekfac' only, "
                         f"not {rep.value!r}")
    if rep == Representation.QUASI_DIAGONAL:
        check_quasi_diagonal_layers(model)
    op = GGNOperator(model, loss_fn, data, kind=kind, num_samples=num_samples, seed=seed)
    return op if rep == Representation.IMPLICIT else _BUILDERS[rep](op)


def parameter_groups(names: list[str]) -> list[tuple[str, int, int]]:
    """``(module name, first, stop)`` per run of consecutive parameters of one module: the
    parameter indices ``first:stop`` into ``names`` (dotted names, ``module.param``)."""
    groups = []
    for i, name in enumerate(names):
        module = name.rsplit(".", 1)[0] if "." in name else ""
        if groups and groups[-1][0] == module:
            groups[-1][2] = i + 1
        else:
            groups.append([module, i, i + 1])
    return [tuple(g) for g in groups]


def check_quasi_diagonal_layers(model: nn.Module):
    """``ValueError`` naming every module with trainable parameters that is not one of
    :data:`QUASI_DIAGONAL_MODULES` (whose units are an output neuron or channel)."""
    others = [f"'{name}' ({type(m).__name__})" for name, m in model.named_modules()
              if any(p.requires_grad for p in m.parameters(recurse=False))
              and not isinstance(m, QUASI_DIAGONAL_MODULES)]
    if others:
        raise ValueError(f"the quasi-diagonal Fisher supports nn.Linear and nn.Conv1d/2d/3d only, but these "
                         f"modules have trainable parameters: {', '.join(others)}; freeze them "
                         "(requires_grad=False) or use representation 'block_diagonal' or 'diagonal'")


def _offsets(op: GGNOperator) -> list[int]:
    sizes = [p.numel() for p in op.params]
    return [sum(sizes[:i]) for i in range(len(sizes) + 1)]


def _dense(op: GGNOperator) -> DenseOperator:
    F = None
    for R in square_root_rows(op):  # accumulate in place: no (d, d) temporary per chunk
        F = R.T @ R if F is None else F.addmm_(R.T, R)
    return DenseOperator(0.5 * (F + F.T), symmetric=True, param_shapes=op.param_shapes)


def _diagonal(op: GGNOperator) -> DiagonalOperator:
    layers = layer_diagonals(op)
    if layers is None:
        values = sum_over_rows(op, lambda R: (R ** 2).sum(dim=0))
    else:
        values = torch.cat([t.reshape(-1) for layer in layers for t in layer[:2] if t is not None])
    return DiagonalOperator(values, param_shapes=op.param_shapes)


def _block_diagonal(op: GGNOperator) -> BlockDiagonalOperator:
    offsets = _offsets(op)
    spans = [(offsets[a], offsets[b]) for _, a, b in parameter_groups(op.names)]
    blocks = [None] * len(spans)
    for R in square_root_rows(op):
        for i, (a, b) in enumerate(spans):
            part = R[:, a:b]
            blocks[i] = part.T @ part if blocks[i] is None else blocks[i].addmm_(part.T, part)
    blocks = [0.5 * (B + B.T) for B in blocks]
    return BlockDiagonalOperator(blocks, op.param_shapes, [m for m, _, _ in parameter_groups(op.names)])


def _quasi_diagonal(op: GGNOperator) -> QuasiDiagonalOperator:
    """Each unit's weights and bias are contiguous runs of the flat vector (a layer's weight
    ``(out, ...)`` is row-major, its bias follows), so the groups store their starts, not indices."""
    layers = layer_diagonals(op, cross=True)
    if layers is None:
        layers = _quasi_diagonal_from_rows(op)
    offsets, values, groups = _offsets(op), [], []
    position = 0
    for weight, bias, cross in layers:
        values.append(weight.reshape(-1))
        if bias is not None:
            values.append(bias)
            groups.append((offsets[position + 1], offsets[position], cross))
        position += 1 if bias is None else 2
    return QuasiDiagonalOperator(torch.cat(values), groups, param_shapes=op.param_shapes)


def _quasi_diagonal_from_rows(op: GGNOperator) -> list[LayerDiagonal]:
    """:func:`~lib.curvature.roots.layer_diagonals` (with ``cross``) from the rows ``R``: the
    general path, for layers the hooks do not cover (e.g. ``Conv1d``, shared weights)."""
    offsets, spans = _offsets(op), []
    for module, first, stop in parameter_groups(op.names):
        out = op.params[first].shape[0]
        bias = first + 1 if stop - first == 2 else None
        spans.append((out, offsets[first], offsets[first + 1], None if bias is None else offsets[bias + 1]))
    sums = [[None, None, None] for _ in spans]
    for R in square_root_rows(op):
        for total, (out, a, b, c) in zip(sums, spans):
            W = R[:, a:b].reshape(len(R), out, -1)                     # (rows, out, m)
            parts = [(W ** 2).sum(dim=0)]
            if c is not None:
                Rb = R[:, b:c]                                         # (rows, out)
                parts += [(Rb ** 2).sum(dim=0), torch.einsum("rum,ru->um", W, Rb)]
            for i, part in enumerate(parts):
                total[i] = part if total[i] is None else total[i].add_(part)
    return [LayerDiagonal(*total) for total in sums]


def _low_rank(op: GGNOperator) -> LowRankOperator:
    chunks = list(square_root_rows(op, max_entries=None))  # one per batch: R is kept whole anyway
    return LowRankOperator(chunks[0] if len(chunks) == 1 else torch.cat(chunks), param_shapes=op.param_shapes)


_BUILDERS = {Representation.DENSE: _dense, Representation.DIAGONAL: _diagonal,
             Representation.BLOCK_DIAGONAL: _block_diagonal, Representation.QUASI_DIAGONAL: _quasi_diagonal,
             Representation.LOW_RANK: _low_rank}
