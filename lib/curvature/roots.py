"""Per-example square-root factors of a Fisher or GGN: the rows every explicit representation is built from.

For ``F = c sum_n J_n^T M_n J_n`` with ``M_n = sum_k s_nk s_nk^T`` (the loss's curvature
columns, :meth:`lib.curvature.losses.Loss.curvature_columns`: ``C`` of them for the exact
Fisher and the GGN, ``num_samples`` for the Monte-Carlo Fisher, one for the empirical Fisher),
the rows ``r_nk = sqrt(c) J_n^T s_nk`` satisfy

    F = sum_{n, k} r_nk r_nk^T = R^T R,

so the dense matrix, its diagonal, its blocks, the quasi-diagonal entries, the low-rank factor
``R`` and the exact trace ``||R||_F^2`` all come from one pass over the data. Each row is a
vector-Jacobian product of one example (``torch.func.vjp`` under ``torch.func.vmap``); the rows
of a batch are produced in chunks of at most ``max_entries`` numbers.

The Monte-Carlo labels are drawn exactly as by the matrix-free operator
(:class:`lib.curvature.products.GGNOperator`) and by K-FAC: one generator seeded with ``seed``,
advanced batch by batch, so the same ``seed`` gives the same matrix in every representation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor
from torch.func import functional_call, vjp, vmap

__all__ = ["square_root_rows", "sum_over_rows"]


def square_root_rows(op, max_entries: int = 2 ** 22) -> Iterator[Tensor]:
    """The rows ``R`` of ``op = R^T R``, chunk by chunk, each ``(B' K, d)`` in the operator's dtype.

    Args:
        op: a :class:`lib.curvature.products.GGNOperator` (any ``kind``): its model, loss, data,
            ``scale``, ``kind``, ``num_samples`` and ``seed`` define the matrix.
        max_entries: at most this many numbers (``B' K d``) per chunk of rows.
    """
    names, model = op.names, op.model
    params = {n: p.detach() for n, p in zip(names, op.params)}
    generator = None
    if op.kind == "mc":
        generator = torch.Generator(device=op.device).manual_seed(op.seed)
    root = math.sqrt(op.scale)

    def one_example(x, s):  # x: one input, s: (K, *output) -> {name: (K, *shape)}
        def output(p):
            return functional_call(model, p, (x[None],))[0]
        _, pullback = vjp(output, params)
        return vmap(pullback)(s)[0]

    for X, y in op.batches():
        with torch.no_grad():
            f = model(X)
        op.loss.check_output(f, y)
        S = op.loss.curvature_columns(f, y, op.kind, op.num_samples, generator)  # (K, B, *out)
        K = S.shape[0]
        chunk = max(1, max_entries // (K * op.shape[0]))
        for start in range(0, len(X), chunk):
            stop = min(start + chunk, len(X))
            grads = vmap(one_example)(X[start:stop], S[:, start:stop].transpose(0, 1))
            rows = torch.cat([grads[n].reshape((stop - start) * K, -1) for n in names], dim=1)
            yield root * rows.to(op.dtype)


def sum_over_rows(op, reduce: Callable[[Tensor], Tensor], max_entries: int = 2 ** 22) -> Tensor:
    """``sum over chunks of reduce(R_chunk)`` over the rows of :func:`square_root_rows`;
    e.g. ``lambda R: R.T @ R`` is the dense matrix, ``lambda R: (R ** 2).sum(0)`` its diagonal."""
    total = None
    for rows in square_root_rows(op, max_entries):
        part = reduce(rows)
        total = part if total is None else total.add_(part)
    return total
