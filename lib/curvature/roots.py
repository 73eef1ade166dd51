"""Per-example square-root factors of a Fisher or GGN: the rows every explicit representation is built from.

For ``F = c sum_n J_n^T M_n J_n`` with ``M_n = sum_k s_nk s_nk^T`` (the loss's curvature
columns, :meth:`lib.curvature.losses.Loss.curvature_columns`: ``C`` of them for the exact
Fisher and the GGN, ``num_samples`` for the Monte-Carlo Fisher, one for the empirical Fisher),
the rows ``r_nk = sqrt(c) J_n^T s_nk`` satisfy

    F = sum_{n, k} r_nk r_nk^T = R^T R,

so the dense matrix, its diagonal, its blocks, the quasi-diagonal entries, the low-rank factor
``R`` and the exact trace ``||R||_F^2`` all come from one pass over the data. Each row is a
vector-Jacobian product of one example (``torch.func.vjp`` under ``torch.func.vmap``); the rows
of a batch are produced in chunks of at most ``max_entries`` numbers. For cross-entropy's exact
Fisher, ``K = C - 1`` (the rank of ``M_n``, through its Cholesky factor:
:func:`lib.curvature.losses.multinomial_cholesky`).

Where only the diagonal (and the quasi-diagonal cross terms) are needed, and every trainable
layer is an ``nn.Linear`` or ``nn.Conv2d``, :func:`layer_diagonals` avoids the rows: a layer's
per-example gradient is ``sum_t g_t a_t^T`` (output gradients ``g`` and inputs ``a`` at its
``T`` positions, recorded by hooks in one batched backward pass per column), and for ``T = 1``
(a dense layer) the squares sum in closed form, ``sum_n (g_n * g_n)(a_n * a_n)^T``, one matrix
product per layer instead of ``N K`` rows of length ``d``.

The Monte-Carlo labels are drawn exactly as by the matrix-free operator
(:class:`lib.curvature.products.GGNOperator`) and by K-FAC: one generator seeded with ``seed``,
advanced batch by batch, so the same ``seed`` gives the same matrix in every representation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch
from torch import Tensor
from torch.func import functional_call, vjp, vmap

from .factors import LayerRecorder, layer_rows, supported_layers

__all__ = ["square_root_rows", "sum_over_rows", "layer_diagonals", "LayerDiagonal"]


def square_root_rows(op, max_entries: int | None = 2 ** 22) -> Iterator[Tensor]:
    """The rows ``R`` of ``op = R^T R``, chunk by chunk, each ``(B' K, d)`` in the operator's dtype.

    Args:
        op: a :class:`lib.curvature.products.GGNOperator` (any ``kind``): its model, loss, data,
            ``scale``, ``kind``, ``num_samples`` and ``seed`` define the matrix.
        max_entries: at most this many numbers (``B' K d``) per chunk of rows; None: one
            chunk per batch (for a consumer that keeps every row anyway).

    Rows are ordered example by example (the ``K`` rows of an example together). Where every
    trainable layer is an ``nn.Linear`` or ``nn.Conv2d`` called once per forward pass, they are
    assembled from the layers' recorded inputs and output gradients (one batched backward pass
    per column); otherwise by per-example vector-Jacobian products, which work for any layer.
    """
    layers = _hooked_layers(op)
    if layers is not None:
        rows = _hooked_rows(op, layers, max_entries)
        try:
            first = next(rows)
        except _HooksDoNotApply:
            pass
        except StopIteration:
            return
        else:
            yield first
            yield from rows
            return
    yield from _vmap_rows(op, max_entries)


def _vmap_rows(op, max_entries: int) -> Iterator[Tensor]:
    """:func:`square_root_rows` by per-example ``vjp`` under ``vmap``: any model."""
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
        S = op.loss.curvature_columns(f, y, op.kind, op.num_samples, generator, minimal=True)
        K = S.shape[0]
        chunk = len(X) if max_entries is None else max(1, max_entries // (K * op.shape[0]))
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


class LayerDiagonal(NamedTuple):
    """One layer's share of the diagonal of ``R^T R`` (see :func:`layer_diagonals`)."""

    #: The weight entries, shape ``(out, m)``, ``m`` the inputs of one output unit (``in`` or ``in kh kw``).
    weight: Tensor
    #: The bias entries, shape ``(out,)``; None without a trainable bias.
    bias: Tensor | None
    #: The bias-weight entries ``F[bias_u, weight_uj]`` of each unit, shape ``(out, m)``; None
    #: unless asked for and the layer has a trainable bias.
    cross: Tensor | None


def _hooked_layers(op) -> list | None:
    """The op's layers if every trainable parameter is the weight or bias of an ``nn.Linear``
    or a plain ``nn.Conv2d`` (in the op's parameter order); None otherwise."""
    try:
        layers = supported_layers(op.model, "error")
    except ValueError:
        return None
    params = [p for _, m in layers for p in m.parameters(recurse=False) if p.requires_grad]
    same = len(params) == len(op.params) and all(p is q for p, q in zip(params, op.params))
    return layers if same and all(m.weight.requires_grad for _, m in layers) else None


class _HooksDoNotApply(Exception):
    """A layer was called other than once in a forward pass: per-layer hooks cannot attribute
    its gradient, so the caller falls back to the rows."""


def _recorded_layers(op, layers) -> Iterator[tuple[int, list]]:
    """Per batch, ``(B, [(module, a, T, g), ...])`` as from :func:`lib.curvature.factors.layer_rows`
    (the minimal curvature columns; the op's labels, not yet scaled by ``c``). Raises
    :class:`_HooksDoNotApply` if a layer is called other than once per forward pass."""
    generator = None
    if op.kind == "mc":
        generator = torch.Generator(device=op.device).manual_seed(op.seed)
    recorder = LayerRecorder(layers)
    try:
        for X, y in op.batches():
            recorder.clear()
            with torch.enable_grad():
                f = op.model(X)
            op.loss.check_output(f, y)
            try:
                recorder.recorded()
            except ValueError as error:  # shared weights, or a layer that was skipped
                raise _HooksDoNotApply(str(error)) from None
            yield len(X), list(layer_rows(op.loss, f, y, recorder, op.kind, op.num_samples, generator,
                                          fold_bias=False, minimal=True))
    finally:
        recorder.remove()


def _hooked_rows(op, layers, max_entries: int | None) -> Iterator[Tensor]:
    """:func:`square_root_rows` from per-layer per-example gradients ``sum_t g_t a_t^T``, each
    chunk written in place into one buffer (no concatenation: for a small network, copies
    would cost more than the products)."""
    root = math.sqrt(op.scale)
    d = op.shape[0]
    for B, rows in _recorded_layers(op, layers):
        K = rows[0][3].shape[0]
        chunk = B if max_entries is None else max(1, max_entries // (K * d))
        for start in range(0, B, chunk):
            stop = min(start + chunk, B)
            buffer = rows[0][1].new_empty(stop - start, K, d)
            column = 0
            for module, a, T, g in rows:
                a_c = a.reshape(B, T, -1)[start:stop]                                 # (B', T, in)
                g_c = root * g.reshape(K, B, T, -1)[:, start:stop].transpose(0, 1)     # (B', K, T, out)
                out, m = g_c.shape[3], a_c.shape[2]
                weight = buffer[:, :, column:column + out * m].view(stop - start, K, out, m)
                if T == 1:
                    torch.mul(g_c[:, :, 0, :, None], a_c[:, None, 0, None, :], out=weight)
                else:
                    weight.copy_(torch.einsum("bkto,bti->bkoi", g_c, a_c))
                column += out * m
                if module.bias is not None and module.bias.requires_grad:
                    buffer[:, :, column:column + out].copy_(g_c.sum(dim=2))
                    column += out
            yield buffer.view((stop - start) * K, d).to(op.dtype)


def layer_diagonals(op, cross: bool = False, max_entries: int = 2 ** 22) -> list[LayerDiagonal] | None:
    """The diagonal of ``op = R^T R`` layer by layer, without forming ``R``; None where the
    layer path does not apply (a trainable parameter outside ``nn.Linear``/``nn.Conv2d``, a
    grouped convolution, a layer called other than once per forward pass).

    Args:
        op: a :class:`lib.curvature.products.GGNOperator` (same matrix, labels and scale as
            :func:`square_root_rows`).
        cross: also the bias-weight entries of every unit (the quasi-diagonal representation).
        max_entries: at most this many numbers of per-example gradients (``K B' out m``) at
            once, for layers with ``T > 1`` positions (convolutions).

    Returns:
        One :class:`LayerDiagonal` per layer, in parameter order, in the op's dtype.
    """
    layers = _hooked_layers(op)
    if layers is None:
        return None
    totals = [None] * len(layers)
    try:
        for _, rows in _recorded_layers(op, layers):
            for i, (module, a, T, g) in enumerate(rows):
                has_bias = module.bias is not None and module.bias.requires_grad
                part = _batch_diagonal(a, T, g, has_bias, cross, max_entries)
                totals[i] = part if totals[i] is None else [t if u is None else t.add_(u)
                                                            for t, u in zip(totals[i], part)]
    except _HooksDoNotApply:
        return None
    return [LayerDiagonal(*(None if t is None else (op.scale * t).to(op.dtype) for t in parts))
            for parts in totals]


def _batch_diagonal(a: Tensor, T: int, g: Tensor, has_bias: bool, cross: bool, max_entries: int):
    """One batch's unscaled ``[weight, bias, cross]`` sums; ``a`` ``(B T, m)``, ``g`` ``(K, B T, out)``."""
    K, out = g.shape[0], g.shape[2]
    if T == 1:  # per-example gradient g a^T: its squares are (g * g)(a * a)^T
        g2 = (g ** 2).sum(dim=0)                                       # (B, out)
        return [g2.T @ (a ** 2), g2.sum(dim=0) if has_bias else None,
                g2.T @ a if has_bias and cross else None]
    B, m = a.shape[0] // T, a.shape[1]
    a, g = a.reshape(B, T, m), g.reshape(K, B, T, out)
    weight = a.new_zeros(out, m)
    bias = a.new_zeros(out) if has_bias else None
    mixed = a.new_zeros(out, m) if has_bias and cross else None
    chunk = max(1, max_entries // (K * out * m))
    for start in range(0, B, chunk):
        gc = g[:, start:start + chunk]
        P = torch.einsum("kbto,bti->kboi", gc, a[start:start + chunk])  # per-example gradients
        weight += (P ** 2).sum(dim=(0, 1))
        if has_bias:
            gb = gc.sum(dim=2)                                         # (K, B', out)
            bias += (gb ** 2).sum(dim=(0, 1))
            if cross:
                mixed += torch.einsum("kboi,kbo->oi", P, gb)
    return [weight, bias, mixed]
