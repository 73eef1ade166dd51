"""Every Fisher representation of lib.curvature.fisher against an independent dense float64 reference.

The reference is :func:`lib.curvature.dense.dense_fisher` (per-example gradients at enumerated
labels, no code shared with the representations). Each representation is checked for what it
keeps (dense, low-rank, implicit: everything; block-diagonal: the layer blocks; diagonal: the
diagonal; quasi-diagonal: the diagonal and the bias-weight entries), and every operation
(``@``, ``vTMv``, ``trace``, ``frobenius_norm``, ``diagonal``, ``to_dense``, ``solve``,
``inverse``, ``logdet``, ``eigvalsh``) against the dense computation of the same representation.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st
import torch
from torch import nn

from lib import curvature
from lib.curvature.dense import dense_fisher
from lib.curvature.representations import REPRESENTATIONS, parameter_groups
from lib.operators import spectral
from operator_problems import SharedLayer, assert_close, compare_with_dense, make_problem



pytestmark = pytest.mark.usefixtures("float64_default")  # every model and input here is float64


SMALL = [("tanh", "ce", "mean"), ("relu", "mse", "mean"), ("conv", "ce", "mean"), ("tanh", "ce", "sum"),
         ("conv", "mse", "sum")]
IDS = ["-".join(c) for c in SMALL]


def _block_mask(names, shapes):
    sizes = [int(torch.Size(s).numel()) for s in shapes]
    offsets = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
    d = offsets[-1]
    mask = torch.zeros(d, d, dtype=torch.bool)
    for _, a, b in parameter_groups(names):
        mask[offsets[a]:offsets[b], offsets[a]:offsets[b]] = True
    return mask


def _quasi_mask(model):
    """True at the entries the quasi-diagonal keeps: the diagonal and (bias_i, weight_ij)."""
    params = [(n, p) for n, p in model.named_parameters()]
    offsets, start = {}, 0
    for n, p in params:
        offsets[n] = (start, p.numel())
        start += p.numel()
    mask = torch.eye(start, dtype=torch.bool)
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)) and module.bias is not None:
            w0, nw = offsets[f"{name}.weight"]
            b0, nb = offsets[f"{name}.bias"]
            per = nw // nb
            for i in range(nb):
                mask[b0 + i, w0 + i * per:w0 + (i + 1) * per] = True
                mask[w0 + i * per:w0 + (i + 1) * per, b0 + i] = True
    return mask


@pytest.mark.parametrize("case", SMALL, ids=IDS)
@pytest.mark.parametrize("kind", ["exact", "empirical"])
def test_each_representation_keeps_the_dense_fisher_entries(case, kind):
    model, loss_fn, data, _, _ = make_problem(*case)
    F = dense_fisher(model, loss_fn, data, kind)
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    got = {r: curvature.fisher(model, loss_fn, data, kind, representation=r).to_dense()
           for r in ("dense", "low_rank", "implicit", "block_diagonal", "diagonal", "quasi_diagonal")}
    for r in ("dense", "low_rank", "implicit"):
        assert_close(got[r], F, 1e-10, r)
    block = _block_mask(names, shapes)
    assert_close(got["block_diagonal"], torch.where(block, F, 0.0), 1e-10, "block_diagonal")
    assert_close(got["diagonal"], torch.diag(torch.diagonal(F)), 1e-10, "diagonal")
    quasi = _quasi_mask(model)
    assert_close(got["quasi_diagonal"], torch.where(quasi, F, 0.0), 1e-10, "quasi_diagonal")


def test_kfac_is_exact_for_one_linear_layer_and_one_example():
    """K-FAC and EKFAC (bias folded into A, so the cross terms are kept) equal the Fisher for one
    example under MSE with one output; with a separate bias the bias-weight block is dropped."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 1))
    X, y = torch.randn(1, 3), torch.randn(1, 1)
    F = dense_fisher(model, nn.MSELoss(), (X, y))
    for r in ("kfac", "ekfac"):
        op = curvature.fisher(model, nn.MSELoss(), (X, y), representation=r, fold_bias=True)
        assert_close(op.to_dense(), F, 1e-10, r)
        separate = curvature.fisher(model, nn.MSELoss(), (X, y), representation=r).to_dense()
        assert_close(separate, torch.block_diag(F[:3, :3], F[3:, 3:]), 1e-10, f"{r}, separate bias")


@pytest.mark.parametrize("case", SMALL, ids=IDS)
@pytest.mark.parametrize("rep", [r for r in REPRESENTATIONS if r != "implicit"])
def test_every_operation_matches_the_dense_matrix_of_the_representation(case, rep):
    """Products, to_dense, diagonal, trace, eigvalsh, logdet, solve, inverse (shared harness),
    plus vTMv and frobenius_norm, against the representation's own dense matrix."""
    model, loss_fn, data, _, _ = make_problem(*case)
    op = curvature.fisher(model, loss_fn, data, representation=rep)
    M = op.to_dense()
    # A low-rank / singular matrix needs damping for solve: the harness adds it relative to |lambda|max.
    compare_with_dense(op, M, rtol=1e-9, solve_rtol=1e-7)
    V = torch.randn(M.shape[0], 2, generator=torch.Generator().manual_seed(1))
    assert_close(op.vTMv(V), (V * (M @ V)).sum(0), 1e-10, "vTMv block")
    assert abs(op.vTMv(V[:, 0]) - float(V[:, 0] @ M @ V[:, 0])) <= 1e-10 * float(M.abs().max()) * M.shape[0]
    assert "frobenius_norm" in op.exact and "trace" in op.exact
    assert abs(op.frobenius_norm() - float(torch.linalg.matrix_norm(M))) <= 1e-10 * float(torch.linalg.matrix_norm(M))
    # The quasi-diagonal matrix need not be PSD (it drops weight-weight terms): shift past lambda_min.
    evals = torch.linalg.eigvalsh(M)
    shift = 0.1 * float(evals.abs().max()) + max(0.0, -float(evals[0]))
    inv = op.inverse(shift)
    dense_inv = torch.linalg.inv(M + shift * torch.eye(len(M)))
    assert_close(inv.to_dense(), dense_inv, 1e-8, "inverse(damping).to_dense")
    for name in ("trace", "diagonal", "logdet", "frobenius_norm"):
        if name in inv.exact:
            want = {"trace": torch.trace(dense_inv), "diagonal": torch.diagonal(dense_inv),
                    "logdet": torch.linalg.slogdet(dense_inv)[1],
                    "frobenius_norm": torch.linalg.matrix_norm(dense_inv)}[name]
            assert_close(getattr(inv, name)(), want, 1e-8, f"inverse {name}")


def test_kfac_frobenius_norm_with_a_separate_bias_and_damping():
    model, loss_fn, data, _, _ = make_problem("conv", "ce", "mean")
    op = curvature.fisher(model, loss_fn, data, representation="kfac")
    for K in (op, op.add_damping(0.3)):
        assert abs(K.frobenius_norm() - float(torch.linalg.matrix_norm(K.to_dense()))) < 1e-10 * K.frobenius_norm()


@pytest.mark.parametrize("case", SMALL, ids=IDS)
def test_the_implicit_trace_is_exact_in_one_pass(case):
    model, loss_fn, data, _, _ = make_problem(*case)
    op = curvature.fisher(model, loss_fn, data)
    assert "trace" in op.exact
    want = float(torch.trace(dense_fisher(model, loss_fn, data)))
    assert abs(op.trace() - want) <= 1e-10 * want
    assert spectral.trace(op) == op.trace()


@pytest.mark.parametrize("kind", ["exact", "mc", "empirical"])
@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_the_implicit_vTMv_needs_no_backward_and_is_exact(kind, loss):
    model, loss_fn, data, _, _ = make_problem("conv", loss, "mean")
    op = curvature.fisher(model, loss_fn, data, kind, num_samples=2, seed=1) if kind == "mc" else \
        curvature.fisher(model, loss_fn, data, kind)
    M = op.to_dense()
    V = torch.randn(M.shape[0], 3, generator=torch.Generator().manual_seed(2))
    assert_close(op.vTMv(V), (V * (M @ V)).sum(0), 1e-10, "vTMv")
    assert abs(op.vTMv(V[:, 1]) - float(V[:, 1] @ M @ V[:, 1])) < 1e-10 * float(M.abs().max()) * len(M)
    shaped = op._split(V[:, 0])
    assert abs(op.vTMv(shaped) - float(V[:, 0] @ M @ V[:, 0])) < 1e-10 * float(M.abs().max()) * len(M)


def test_the_implicit_frobenius_norm_falls_back_to_hutchinson():
    model, loss_fn, data, _, _ = make_problem("tanh", "ce", "mean")
    op = curvature.fisher(model, loss_fn, data)
    exact = float(torch.linalg.matrix_norm(dense_fisher(model, loss_fn, data)))
    assert abs(op.frobenius_norm() - exact) < 1e-10 * exact  # d <= dense_limit: exact
    op.dense_limit = 1
    estimates = [op.frobenius_norm(num_probes=200, seed=s) for s in range(3)]
    assert all(abs(e - exact) < 0.15 * exact for e in estimates)
    assert len(set(estimates)) == 3  # really an estimate


@pytest.mark.parametrize("loss", ["ce", "mse"])
@pytest.mark.parametrize("rep", ["dense", "diagonal", "low_rank", "quasi_diagonal", "block_diagonal"])
def test_mc_representations_use_the_implicit_operators_labels(loss, rep):
    """Same seed, same sampled labels: every explicit MC representation keeps the entries of the
    matrix-free MC Fisher (and MC works for regression)."""
    model, loss_fn, data, _, _ = make_problem("tanh", loss, "mean")
    implicit = curvature.fisher(model, loss_fn, data, "mc", num_samples=2, seed=3).to_dense()
    dense = curvature.fisher(model, loss_fn, data, "mc", num_samples=2, seed=3, representation="dense").to_dense()
    assert_close(dense, implicit, 1e-10, "mc dense vs implicit")
    op = curvature.fisher(model, loss_fn, data, "mc", num_samples=2, seed=3, representation=rep)
    assert_close(op.diagonal(), torch.diagonal(implicit), 1e-10, f"mc {rep} diagonal")
    other = curvature.fisher(model, loss_fn, data, "mc", num_samples=2, seed=4, representation=rep)
    assert not torch.allclose(other.diagonal(), op.diagonal())


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_mc_converges_to_the_exact_fisher(loss):
    model, loss_fn, data, _, _ = make_problem("tanh", loss, "mean")
    F = dense_fisher(model, loss_fn, data)
    errors = [float(torch.linalg.matrix_norm(curvature.fisher(model, loss_fn, data, "mc", num_samples=s,
                                                              representation="dense").to_dense() - F))
              for s in (1, 400)]
    assert errors[1] < 0.25 * errors[0]


def test_kfac_and_fisher_draw_the_same_mc_labels():
    """One example, one linear layer, one sample: K-FAC is exact, so equal to the MC dense Fisher
    only if both drew the same label."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4))
    X, y = torch.randn(1, 3), torch.randint(0, 4, (1,))
    for seed in range(3):
        dense = curvature.fisher(model, nn.CrossEntropyLoss(), (X, y), "mc", seed=seed, representation="dense")
        K = curvature.fisher(model, nn.CrossEntropyLoss(), (X, y), "mc", seed=seed, representation="kfac",
                             fold_bias=True)
        assert_close(K.to_dense(), dense.to_dense(), 1e-10, f"seed {seed}")


def test_the_default_is_the_implicit_operator_of_products():
    model, loss_fn, data, _, _ = make_problem("tanh", "ce", "mean")
    op = curvature.fisher(model, loss_fn, data, "empirical")
    assert isinstance(op, curvature.GGNOperator) and op.kind == "empirical"
    old = curvature.products.fisher(model, loss_fn, data, "empirical")
    assert torch.equal(op.to_dense(), old.to_dense())


# -- bad inputs -------------------------------------------------------------------------------
def _bn_model():
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).eval()


@pytest.mark.parametrize("rep", ["kfac", "ekfac", "quasi_diagonal"])
def test_unsupported_layers_are_named(rep):
    X, y = torch.randn(6, 3), torch.randint(0, 2, (6,))
    with pytest.raises(ValueError, match=r"'1' \(BatchNorm1d\)"):
        curvature.fisher(_bn_model(), nn.CrossEntropyLoss(), (X, y), representation=rep)


def test_block_diagonal_supports_any_layer():
    X, y = torch.randn(6, 3), torch.randint(0, 2, (6,))
    model = _bn_model()
    op = curvature.fisher(model, nn.CrossEntropyLoss(), (X, y), representation="block_diagonal")
    assert op.names == ["0", "1", "2"]
    F = dense_fisher(model, nn.CrossEntropyLoss(), (X, y))
    assert_close(op.blocks[1], F[16:24, 16:24], 1e-10, "BatchNorm block")


def test_unknown_representation_and_kind_list_the_valid_ones():
    model, loss_fn, data, _, _ = make_problem("tanh", "ce", "mean")
    with pytest.raises(ValueError, match="quasi_diagonal"):
        curvature.fisher(model, loss_fn, data, representation="pmat")
    with pytest.raises(ValueError, match="empirical"):
        curvature.fisher(model, loss_fn, data, "ggn", representation="dense")
    with pytest.raises(ValueError, match="kfac"):
        curvature.fisher(model, loss_fn, data, representation="dense", fold_bias=True)


@pytest.mark.parametrize("rep", REPRESENTATIONS)
def test_negative_damping_is_rejected(rep):
    model, loss_fn, data, _, _ = make_problem("tanh", "ce", "mean")
    op = curvature.fisher(model, loss_fn, data, representation=rep)
    v = torch.ones(op.shape[0])
    with pytest.raises(ValueError, match="damping"):
        op.solve(v, -1.0)
    with pytest.raises(ValueError, match="damping"):
        op.inverse(-1.0)


def test_singular_low_rank_and_quasi_diagonal_need_damping():
    model, loss_fn, data, _, _ = make_problem("tanh", "ce", "mean", n=2)
    L = curvature.fisher(model, loss_fn, data, representation="low_rank")
    with pytest.raises(ValueError, match="damping > 0"):
        L.solve(torch.ones(L.shape[0]))
    with pytest.raises(ValueError, match="singular"):
        L.logdet()


def test_an_indefinite_quasi_diagonal_matrix_still_solves_where_nonsingular():
    # A convolution's bias is correlated with every weight of its filter, so the bias-weight
    # terms outweigh the bias entry and the quasi-diagonal matrix is indefinite; its damped
    # solve is still the unique solution of (Q + lam I) x = v (what NNGeometry computes).
    model, loss_fn, data, _, _ = make_problem("conv", "ce", "mean", n=10)
    Q = curvature.fisher(model, loss_fn, data, representation="quasi_diagonal")
    dense = Q.to_dense()
    lam = 1e-3 * float(torch.linalg.eigvalsh(dense).abs().max())
    shifted = dense + lam * torch.eye(Q.shape[0], dtype=dense.dtype)
    assert float(torch.linalg.eigvalsh(shifted).min()) < 0, "the problem should be indefinite"
    v = torch.randn(Q.shape[0], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(Q.solve(v, damping=lam), torch.linalg.solve(shifted, v), rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(Q.inverse(damping=lam) @ v, torch.linalg.solve(shifted, v), rtol=1e-8, atol=1e-10)
    with pytest.raises(ValueError, match="not positive definite"):
        Q.inverse(damping=lam).logdet()
    with pytest.raises(ValueError, match="positive definite"):
        (Q).logdet()


# --------------------------------------------------------------------------------------
# The two ways to the diagonal: per-layer hooks (Linear/Conv2d) and the rows R (any layer)
# --------------------------------------------------------------------------------------
def _sequence_model():
    """A Linear applied at 4 positions (T > 1), then a Conv2d: both per-example sums."""
    return nn.Sequential(nn.Unflatten(1, (4, 3)), nn.Linear(3, 2), nn.Tanh(), nn.Unflatten(1, (1, 4)),
                         nn.Conv2d(1, 2, (2, 2), padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(2 * 5 * 3, 3))


@pytest.mark.parametrize("kind", ["exact", "mc", "empirical"])
@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_the_layer_path_and_the_rows_give_the_same_quasi_diagonal(kind, loss):
    from lib.curvature.products import GGNOperator
    from lib.curvature.representations import _quasi_diagonal_from_rows
    from lib.curvature.roots import layer_diagonals
    torch.manual_seed(0)
    model = _sequence_model().double()
    X = torch.randn(9, 12)
    y = torch.randint(0, 3, (9,)) if loss == "ce" else torch.randn(9, 3)
    loss_fn = nn.CrossEntropyLoss() if loss == "ce" else nn.MSELoss()
    op = GGNOperator(model, loss_fn, [(X[:5], y[:5]), (X[5:], y[5:])], kind=kind, num_samples=3, seed=4)
    hooks = layer_diagonals(op, cross=True, max_entries=50)   # forces several chunks for T > 1
    rows = _quasi_diagonal_from_rows(op)
    assert hooks is not None and len(hooks) == len(rows) == 3
    for got, want in zip(hooks, rows):
        for a, b in zip(got, want):
            assert_close(a, b, 1e-10, "layer path")
    from lib.curvature.roots import _hooked_layers, _hooked_rows, _vmap_rows
    by_hooks = torch.cat(list(_hooked_rows(op, _hooked_layers(op), max_entries=200)))  # several chunks
    assert_close(by_hooks, torch.cat(list(_vmap_rows(op, max_entries=200))), 1e-10, "rows, row by row")
    F = dense_fisher(model, loss_fn, [(X[:5], y[:5]), (X[5:], y[5:])], kind) if kind != "mc" else None
    if F is not None:
        assert abs(op.trace() - float(torch.trace(F))) < 1e-10 * float(torch.trace(F))


def test_shared_weights_and_other_layers_take_the_rows():
    from lib.curvature.products import GGNOperator
    from lib.curvature.roots import layer_diagonals
    torch.manual_seed(0)
    data = (torch.randn(6, 3), torch.randint(0, 2, (6,)))
    model = SharedLayer().double()  # the hooks see two calls, so the rows must be used
    assert layer_diagonals(GGNOperator(model, nn.CrossEntropyLoss(), data, kind="exact")) is None
    L = curvature.fisher(model, nn.CrossEntropyLoss(), data, representation="low_rank")
    assert_close(L.to_dense(), dense_fisher(model, nn.CrossEntropyLoss(), data, "exact"), 1e-10, "shared low-rank")
    F = dense_fisher(model, nn.CrossEntropyLoss(), data, "exact")
    D = curvature.fisher(model, nn.CrossEntropyLoss(), data, representation="diagonal")
    assert_close(D.diagonal(), torch.diagonal(F), 1e-10, "diagonal with a shared layer")
    assert abs(curvature.fisher(model, nn.CrossEntropyLoss(), data).trace() - float(torch.trace(F))) < 1e-10
    conv1d = nn.Sequential(nn.Unflatten(1, (1, 3)), nn.Conv1d(1, 2, 2), nn.Tanh(), nn.Flatten(),
                           nn.Linear(4, 2)).double()
    Q = curvature.fisher(conv1d, nn.CrossEntropyLoss(), data, representation="quasi_diagonal").to_dense()
    F = dense_fisher(conv1d, nn.CrossEntropyLoss(), data, "exact")
    assert_close(Q, torch.where(_quasi_mask_conv1d(conv1d), F, 0.0), 1e-10, "quasi-diagonal with Conv1d")


def _quasi_mask_conv1d(model):
    mask = torch.eye(sum(p.numel() for p in model.parameters()), dtype=torch.bool)
    start = 0
    for module in (model[1], model[4]):
        nw, nb = module.weight.numel(), module.bias.numel()
        per = nw // nb
        for i in range(nb):
            mask[start + nw + i, start + i * per:start + (i + 1) * per] = True
            mask[start + i * per:start + (i + 1) * per, start + nw + i] = True
        start += nw + nb
    return mask


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 12), st.floats(0.0, 80.0), st.integers(0, 2 ** 16))
def test_the_multinomial_cholesky_factor_is_a_square_root(C, scale, seed):
    """``L L^T = diag(p) - p p^T`` with C - 1 columns, also for near one-hot ``p`` (tiny tails)."""
    from lib.curvature.losses import Loss, multinomial_cholesky
    g = torch.Generator().manual_seed(seed)
    f = scale * torch.randn(7, C, generator=g)
    p = f.softmax(dim=1)
    L = multinomial_cholesky(p)
    assert L.shape == (7, C, C - 1) and bool(torch.isfinite(L).all())
    M = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    assert float((L @ L.transpose(1, 2) - M).abs().max()) < 1e-13
    S = Loss(nn.CrossEntropyLoss()).curvature_columns(f, None, "exact", 1, None, minimal=True)
    full = Loss(nn.CrossEntropyLoss()).curvature_columns(f, None, "exact", 1, None)
    assert S.shape == (C - 1, 7, C)
    assert float((torch.einsum("kbi,kbj->bij", S, S) - torch.einsum("kbi,kbj->bij", full, full)).abs().max()) < 1e-13
