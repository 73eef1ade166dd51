"""Tests of lib.curvature.kronecker against dense float64 references (lib.curvature, torch.kron, curvlinops)."""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lib import curvature
from lib.curvature.kronecker import EKFACOperator, ekfac, kfac
from lib.geometry.kfac_optimizer import KFACOptimizer
from operator_problems import compare_with_dense

DT = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _mlp(sizes, seed, bias=True, act=nn.Tanh):
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b, bias=bias))
        if i < len(sizes) - 2 and act is not None:
            layers.append(act())
    return nn.Sequential(*layers).double()


def _cnn(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 2, stride=2),
                         nn.Flatten(), nn.Linear(2 * 2 * 2, 3)).double()


def _data(n, shape, classes, seed, mse=False):
    g = _gen(seed)
    X = torch.randn(n, *shape, generator=g, dtype=DT)
    y = torch.randn(n, classes, generator=g, dtype=DT) if mse else \
        torch.randint(0, classes, (n,), generator=g)
    return X, y


def _blocks(op):
    """Per layer: (slice of the weight, slice of the bias or None) in the flat vector."""
    out, start = [], 0
    for f in op.factors:
        n_w = math.prod(f.weight_shape)
        w = slice(start, start + n_w)
        start += n_w
        b = None
        if f.has_bias:
            b = slice(start, start + f.weight_shape[0])
            start += f.weight_shape[0]
        out.append((w, b))
    return out


def _dense_fisher(model, loss_fn, data):
    return curvature.fisher(model, loss_fn, data, kind="exact").to_dense()


# --------------------------------------------------------------------------------------
# Exactness where theory says so
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("loss_fn", [nn.CrossEntropyLoss(), nn.MSELoss(reduction="sum")])
@pytest.mark.parametrize("sizes", [[5, 3], [4, 6, 5, 3]])
@pytest.mark.parametrize("fold_bias", [False, True])
def test_one_example_linear_networks_are_exact(loss_fn, sizes, fold_bias):
    """One example: every layer's block is exactly G kron A (deep *linear* nets included)."""
    model = _mlp(sizes, 0, act=None)
    mse = isinstance(loss_fn, nn.MSELoss)
    X, y = _data(1, (sizes[0],), sizes[-1], 1, mse=mse)
    F = _dense_fisher(model, loss_fn, (X, y))
    for kind in ["exact", "ggn"]:
        K = kfac(model, loss_fn, (X, y), kind, fold_bias=fold_bias).to_dense()
        for w, b in _blocks(kfac(model, loss_fn, (X, y), fold_bias=fold_bias)):
            torch.testing.assert_close(K[w, w], F[w, w], rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(K[b, b], F[b, b], rtol=1e-10, atol=1e-12)
            if fold_bias:  # the folded block also has the exact weight-bias cross terms
                torch.testing.assert_close(K[w, b], F[w, b], rtol=1e-10, atol=1e-12)
            else:
                assert K[w, b].abs().max() == 0


def test_many_examples_are_not_exact():
    """With several examples the product of sums differs from the sum of products."""
    model = _mlp([4, 3], 0)
    X, y = _data(20, (4,), 3, 2)
    F = _dense_fisher(model, nn.CrossEntropyLoss(), (X, y))
    K = kfac(model, nn.CrossEntropyLoss(), (X, y)).to_dense()
    w, _ = _blocks(kfac(model, nn.CrossEntropyLoss(), (X, y)))[0]
    assert (K[w, w] - F[w, w]).norm() / F[w, w].norm() > 1e-3


def test_exact_fisher_equals_ggn_factors_and_mc_converges():
    model = _mlp([4, 5, 3], 1)
    X, y = _data(12, (4,), 3, 3)
    loss_fn = nn.CrossEntropyLoss()
    exact, ggn = kfac(model, loss_fn, (X, y), "exact"), kfac(model, loss_fn, (X, y), "ggn")
    for fe, fg in zip(exact.factors, ggn.factors):
        torch.testing.assert_close(fe.G, fg.G, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(fe.A, fg.A)
    mc = kfac(model, loss_fn, (X, y), "mc", num_samples=4000, seed=5)
    for fe, fm in zip(exact.factors, mc.factors):
        assert (fm.G - fe.G).norm() / fe.G.norm() < 0.05


def test_empirical_uses_the_true_labels():
    model = _mlp([4, 3], 2)
    X, y = _data(1, (4,), 3, 4)
    op = kfac(model, nn.CrossEntropyLoss(), (X, y), "empirical")
    p = model(X).softmax(1)[0].detach()
    g = p - nn.functional.one_hot(y, 3)[0].to(DT)  # dl/df at the true label
    torch.testing.assert_close(op.factors[0].G, torch.outer(g, g))
    torch.testing.assert_close(op.factors[0].A, torch.outer(X[0], X[0]))


# --------------------------------------------------------------------------------------
# Kronecker structure, inverse, spectral quantities
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("fold_bias", [False, True])
@pytest.mark.parametrize("net", ["mlp", "cnn"])
def test_blocks_are_kronecker_products_of_the_factors(fold_bias, net):
    model = _mlp([4, 5, 3], 3) if net == "mlp" else _cnn(3)
    X, y = _data(6, (4,) if net == "mlp" else (2, 4, 4), 3, 5)
    op = kfac(model, nn.CrossEntropyLoss(reduction="sum"), (X, y), fold_bias=fold_bias)
    K = op.to_dense()
    assert K.shape == (op.shape[0], op.shape[0]) and op.shape[0] == sum(p.numel() for p in model.parameters())
    off_diagonal = K.clone()
    for f, (w, b) in zip(op.factors, _blocks(op)):
        out = f.weight_shape[0]
        if fold_bias:  # reorder [vec(W), b] into the rows of [W | b]
            idx = torch.arange(w.start, b.stop).reshape(-1)
            n_in = f.A.shape[0] - 1
            order = torch.cat([torch.arange(out * n_in).reshape(out, n_in),
                               out * n_in + torch.arange(out)[:, None]], dim=1).reshape(-1)
            block = K[idx][:, idx][order][:, order]
            torch.testing.assert_close(block, torch.kron(f.G, f.A))
            off_diagonal[w.start:b.stop, w.start:b.stop] = 0
        else:
            torch.testing.assert_close(K[w, w], torch.kron(f.G, f.A))
            torch.testing.assert_close(K[b, b], f.G)
            off_diagonal[w, w] = 0
            off_diagonal[b, b] = 0
    assert off_diagonal.abs().max() == 0  # no blocks between layers


def _op_and_dense(seed=4, fold_bias=False):
    model = _cnn(seed)
    X, y = _data(5, (2, 4, 4), 3, seed)
    op = kfac(model, nn.CrossEntropyLoss(), (X, y), fold_bias=fold_bias)
    return op, op.to_dense()


@pytest.mark.parametrize("fold_bias", [False, True])
def test_operator_interface_matches_dense(fold_bias):
    """Every method in closed form (trace, diagonal, eigenvalues, solve, inverse) against
    the dense matrix from products; ``spectral.trace`` uses the closed form."""
    op, K = _op_and_dense(fold_bias=fold_bias)
    compare_with_dense(op, K, rtol=1e-10, eig_rtol=1e-9, k=5, solve_rtol=1e-7)
    assert op.exact >= {"trace", "logdet", "eigvalsh", "diagonal", "solve", "inverse"}
    damping = 1e-2
    want = float(torch.linalg.slogdet(K + damping * torch.eye(len(K), dtype=DT))[1])
    assert abs(op.logdet(damping) - want) < 1e-9 * abs(want)
    with pytest.raises(ValueError, match="singular"):
        op.logdet()  # K-FAC of 5 examples is rank-deficient


@pytest.mark.parametrize("fold_bias", [False, True])
def test_inverse_is_the_inverse_of_the_damped_operator(fold_bias):
    op, K = _op_and_dense(fold_bias=fold_bias)
    V = torch.randn(op.shape[0], 3, generator=_gen(0), dtype=DT)
    damping = 1e-3
    inv = op.inverse(damping)
    torch.testing.assert_close(inv @ (K @ V + damping * V), V, rtol=1e-7, atol=1e-8)
    eye = torch.eye(len(K), dtype=DT)
    compare_with_dense(inv, torch.linalg.inv(K + damping * eye), rtol=1e-8, solve_rtol=1e-7)
    compare_with_dense(op.inverse_sqrt(damping), _inverse_sqrt(K + damping * eye), rtol=1e-8,
                       solve_rtol=1e-7)
    # factor damping: the inverse of the factor-damped operator, with and without pi
    for pi in (False, True):
        damped = op.damped_factors(damping, pi=pi)
        torch.testing.assert_close(op.inverse(factor_damping=damping, pi=pi) @ (damped @ V), V,
                                   rtol=1e-7, atol=1e-8)
    with pytest.raises(ValueError, match="factor_damping"):
        op.inverse(damping, pi=True)
    with pytest.raises(ValueError, match="damping"):
        op.inverse(-1.0)


def _inverse_sqrt(M):
    evals, evecs = torch.linalg.eigh(M)
    return (evecs * evals.rsqrt()) @ evecs.T


def test_operator_algebra():
    """Sums and scalings keep the closed forms (vector shapes: compare_with_dense)."""
    op, K = _op_and_dense()
    v = torch.randn(op.shape[0], generator=_gen(1), dtype=DT)
    torch.testing.assert_close((op + 2.0 * op) @ v, 3 * (K @ v))
    compare_with_dense(3.0 * op, 3.0 * K, rtol=1e-10, eig_rtol=1e-9, solve_rtol=1e-7)


# --------------------------------------------------------------------------------------
# EKFAC
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("net", ["mlp", "cnn"])
def test_ekfac_diagonal_matches_exact_second_moments(net):
    model = _mlp([4, 5, 3], 6) if net == "mlp" else _cnn(6)
    X, y = _data(7, (4,) if net == "mlp" else (2, 4, 4), 3, 7)
    loss_fn = nn.CrossEntropyLoss()
    e = ekfac(model, loss_fn, (X, y))
    F = _dense_fisher(model, loss_fn, (X, y))
    for (QG, QA), (S, Sb), (w, b) in zip(e.bases, e.scalings, _blocks(e)):
        Q = torch.kron(QG, QA)
        torch.testing.assert_close(torch.diagonal(Q.T @ F[w, w] @ Q), S.reshape(-1),
                                   rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(torch.diagonal(QG.T @ F[b, b] @ QG), Sb, rtol=1e-9, atol=1e-12)


def test_ekfac_operator_interface():
    model = _cnn(8)
    X, y = _data(6, (2, 4, 4), 3, 8)
    e = ekfac(model, nn.CrossEntropyLoss(), (X, y))
    assert isinstance(e, EKFACOperator)
    E = e.to_dense()
    torch.testing.assert_close(E, E.T)
    evals = torch.linalg.eigvalsh(E)
    assert abs(e.trace() - float(evals.sum())) < 1e-9 * float(evals.sum())
    compare_with_dense(e, E, rtol=1e-9, eig_rtol=1e-8, k=4, solve_rtol=1e-7)
    damping = 1e-2
    V = torch.randn(e.shape[0], 2, generator=_gen(2), dtype=DT)
    torch.testing.assert_close(e.inverse(damping) @ (E @ V + damping * V), V, rtol=1e-7, atol=1e-8)
    eye = torch.eye(len(E), dtype=DT)
    compare_with_dense(e.inverse(damping), torch.linalg.inv(E + damping * eye), rtol=1e-8,
                       solve_rtol=1e-7)
    compare_with_dense(e.inverse_sqrt(damping), _inverse_sqrt(E + damping * eye), rtol=1e-8,
                       solve_rtol=1e-7)
    want = float(torch.linalg.slogdet(E + damping * torch.eye(len(E), dtype=DT))[1])
    assert abs(e.logdet(damping) - want) < 1e-9 * abs(want)


# --------------------------------------------------------------------------------------
# Agreement with curvlinops
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("loss", ["ce", "mse"])
@pytest.mark.parametrize("kind", ["ggn", "empirical"])
@pytest.mark.parametrize("net", ["mlp", "cnn"])
def test_matches_curvlinops(reduction, loss, kind, net):
    from curvlinops import KFACLinearOperator

    model = _mlp([4, 5, 3], 9) if net == "mlp" else _cnn(9)
    loss_fn = nn.CrossEntropyLoss(reduction=reduction) if loss == "ce" else nn.MSELoss(reduction=reduction)
    data = [_data(5, (4,) if net == "mlp" else (2, 4, 4), 3, s, mse=loss == "mse") for s in (10, 11)]
    ours = kfac(model, loss_fn, data, kind).to_dense()
    theirs_type = {"ggn": "type-2", "empirical": "empirical"}[kind]
    params = list(model.parameters())
    theirs = KFACLinearOperator(model, loss_fn, params, data, fisher_type=theirs_type,
                                check_deterministic=False)
    dense = theirs @ torch.eye(ours.shape[0], dtype=DT)
    torch.testing.assert_close(ours, torch.as_tensor(dense, dtype=DT), rtol=1e-5, atol=1e-10)


# --------------------------------------------------------------------------------------
# Policies and bad input
# --------------------------------------------------------------------------------------
def _bn_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3)).double().eval()


def test_unsupported_modules_error_or_skip_with_warning():
    model = _bn_model()
    X, y = _data(6, (4,), 3, 12)
    with pytest.raises(ValueError, match=r"'1' \(BatchNorm1d\)"):
        kfac(model, nn.CrossEntropyLoss(), (X, y))
    with pytest.warns(UserWarning, match="BatchNorm1d"):
        op = kfac(model, nn.CrossEntropyLoss(), (X, y), unsupported="skip")
    assert op.names == ["0.weight", "0.bias", "3.weight", "3.bias"]
    assert op.shape[0] == 4 * 5 + 5 + 5 * 3 + 3
    for p in model[1].parameters():  # frozen: no warning, no error
        p.requires_grad_(False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert kfac(model, nn.CrossEntropyLoss(), (X, y)).shape == op.shape


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(kind="hessian"), ValueError, "kind"),
    (dict(kind="exact", num_samples=3), ValueError, "num_samples"),
    (dict(kind="mc", num_samples=0), ValueError, "num_samples"),
    (dict(unsupported="ignore"), ValueError, "unsupported"),
])
def test_bad_arguments(kwargs, error, match):
    model = _mlp([4, 3], 0)
    with pytest.raises(error, match=match):
        kfac(model, nn.CrossEntropyLoss(), _data(3, (4,), 3, 0), **kwargs)


def test_bad_models_and_data():
    X, y = _data(3, (4,), 3, 0)
    with pytest.raises(TypeError, match="nn.Module"):
        kfac(lambda x: x, nn.CrossEntropyLoss(), (X, y))
    with pytest.raises(ValueError, match="unsupported loss"):
        kfac(_mlp([4, 3], 0), nn.NLLLoss(), (X, y))
    with pytest.raises(ValueError, match="empty"):
        kfac(_mlp([4, 3], 0), nn.CrossEntropyLoss(), (X[:0], y[:0]))
    grouped = nn.Sequential(nn.Conv2d(2, 2, 3, groups=2), nn.Flatten(), nn.Linear(8, 3)).double()
    with pytest.raises(ValueError, match="grouped"):
        kfac(grouped, nn.CrossEntropyLoss(), _data(3, (2, 4, 4), 3, 0))
    dropout = nn.Sequential(nn.Linear(4, 5), nn.Dropout(0.5), nn.Linear(5, 3)).double()
    with pytest.raises(ValueError, match="training mode"):
        kfac(dropout, nn.CrossEntropyLoss(), (X, y))


# --------------------------------------------------------------------------------------
# Property: K-FAC is symmetric PSD and invariant to how the data are batched
# --------------------------------------------------------------------------------------
@settings(derandomize=True, max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 9), split=st.integers(1, 8),
       reduction=st.sampled_from(["mean", "sum"]))
def test_batching_does_not_change_the_factors(seed, n, split, reduction):
    model = _mlp([3, 4, 2], seed % 1000)
    X, y = _data(n, (3,), 2, seed)
    loss_fn = nn.CrossEntropyLoss(reduction=reduction)
    whole = kfac(model, loss_fn, (X, y)).to_dense()
    k = min(split, n - 1)
    parts = kfac(model, loss_fn, [(X[:k], y[:k]), (X[k:], y[k:])]).to_dense()
    torch.testing.assert_close(parts, whole, rtol=1e-10, atol=1e-13)
    assert float(torch.linalg.eigvalsh(whole).min()) > -1e-10


# --------------------------------------------------------------------------------------
# The optimizer
# --------------------------------------------------------------------------------------
def _regression_problem(seed=0, n=256, d=10):
    g = _gen(seed)
    scales = torch.logspace(0, 1.5, d, dtype=torch.float32)  # ill-conditioned inputs
    X = torch.randn(n, d, generator=g) * scales
    w = torch.randn(d, 1, generator=g)
    return X, X @ w + 0.01 * torch.randn(n, 1, generator=g)


def _steps_to(optimizer_fn, target, max_steps=500):
    X, y = _regression_problem()
    torch.manual_seed(0)
    model = nn.Linear(X.shape[1], 1)
    loss_fn = nn.MSELoss()
    opt = optimizer_fn(model, loss_fn)
    for step in range(max_steps):
        opt.zero_grad()
        loss = loss_fn(model(X), y)
        if loss.item() < target:
            return step
        loss.backward()
        opt.step()
    return max_steps


def test_kfac_optimizer_beats_sgd_on_an_ill_conditioned_convex_problem():
    target = 1e-2
    sgd = _steps_to(lambda m, _: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9), target)
    kfac_steps = _steps_to(lambda m, l: KFACOptimizer(m, l, lr=0.5, factor_damping=1e-4, momentum=0.0,
                                                      kl_clip=None, inverse_interval=1), target)
    assert kfac_steps < sgd / 5, (kfac_steps, sgd)


def test_kfac_optimizer_state_dict_round_trip():
    X, y = _regression_problem(n=64)
    loss_fn = nn.MSELoss()

    def run(model, opt, steps):
        for _ in range(steps):
            opt.zero_grad()
            loss_fn(model(X), y).backward()
            opt.step()

    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(10, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = KFACOptimizer(model, loss_fn, lr=0.05, inverse_interval=3, kind="mc", seed=3)
    run(model, opt, 4)
    saved_model = {k: v.clone() for k, v in model.state_dict().items()}
    saved_opt = copy.deepcopy(opt.state_dict())  # state_dict() shares the live tensors
    gen_state = opt.generator.get_state()
    run(model, opt, 5)
    reference = [p.detach().clone() for p in model.parameters()]

    torch.manual_seed(1)
    model2 = nn.Sequential(nn.Linear(10, 8), nn.Tanh(), nn.Linear(8, 1))
    model2.load_state_dict(saved_model)
    opt2 = KFACOptimizer(model2, loss_fn, lr=0.05, inverse_interval=3, kind="mc", seed=3)
    opt2.load_state_dict(saved_opt)
    opt2.generator.set_state(gen_state)
    run(model2, opt2, 5)
    for p, q in zip(model2.parameters(), reference):
        torch.testing.assert_close(p, q)


def test_kfac_optimizer_trains_with_lib_train_and_batchnorm():
    from lib.book.train import accuracy, train

    g = _gen(13)
    X = torch.randn(128, 4, generator=g)
    y = (X @ torch.randn(4, 3, generator=g)).argmax(1)  # a learnable (linear) teacher
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    with pytest.warns(UserWarning, match="BatchNorm1d"):
        opt = KFACOptimizer(model, nn.CrossEntropyLoss(), lr=0.05)
    history = train(model, nn.CrossEntropyLoss(), (X, y), opt, epochs=15, batch_size=16, seed=0)
    assert len(history.train_loss) == 15
    assert accuracy(model, X, y) > 0.9  # chance is 1/3


@pytest.mark.parametrize("kwargs, match", [
    (dict(lr=-1.0), "lr"), (dict(factor_damping=0.0), "factor_damping"), (dict(momentum=1.0), "momentum"),
    (dict(ema_decay=1.0), "ema_decay"), (dict(kl_clip=0.0), "kl_clip"),
    (dict(kind="exact"), "kind"), (dict(inverse_interval=0), "inverse_interval"),
])
def test_kfac_optimizer_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        KFACOptimizer(nn.Linear(3, 2), nn.CrossEntropyLoss(), **kwargs)


# --------------------------------------------------------------------------------------
# K-FAC as a metric: damping, inverse square root, lib.geometry.invariance
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("fold_bias", [False, True])
def test_add_damping_and_inverse_sqrt(fold_bias):
    op, K = _op_and_dense(fold_bias=fold_bias)
    damping = 1e-2
    Kd = K + damping * torch.eye(len(K), dtype=DT)
    damped = op.add_damping(damping)
    torch.testing.assert_close(damped.to_dense(), Kd)
    compare_with_dense(damped, Kd, rtol=1e-10, eig_rtol=1e-9, solve_rtol=1e-7)  # logdet too
    assert abs(damped.logdet() - float(torch.linalg.slogdet(Kd)[1])) < 1e-9
    V = torch.randn(len(K), 2, generator=_gen(3), dtype=DT)
    torch.testing.assert_close(damped.inverse() @ (Kd @ V), V, rtol=1e-7, atol=1e-8)
    S = damped.inverse_sqrt().to_dense()
    torch.testing.assert_close(S, S.T)
    torch.testing.assert_close(S @ Kd @ S, torch.eye(len(K), dtype=DT), rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("kind", ["kfac", "ekfac"])
def test_kfac_metric_in_the_invariant_hessian_operator(kind):
    import scipy.linalg

    from lib.geometry.invariance import hessian_operator

    model = _cnn(14)
    X, y = _data(6, (2, 4, 4), 3, 14)
    loss_fn = nn.CrossEntropyLoss()
    H = curvature.hessian(model, loss_fn, (X, y))
    damping = 1e-2
    if kind == "kfac":
        metric = kfac(model, loss_fn, (X, y)).add_damping(damping)
        G = metric.to_dense()
    else:
        e = ekfac(model, loss_fn, (X, y))
        G = e.to_dense() + damping * torch.eye(e.shape[0], dtype=DT)
        metric = EKFACOperator(e.factors, e.names, e.bases,
                               [(S + damping, None if Sb is None else Sb + damping) for S, Sb in e.scalings],
                               dtype=e.dtype, device=e.device)
    E = hessian_operator(H, metric)
    assert E.whitened is not None  # exact whitening through inverse_sqrt, no CG
    Hd = H.to_dense()
    want_trace = float(torch.trace(torch.linalg.solve(G, Hd)))
    assert abs(E.trace() - want_trace) < 1e-7 * abs(want_trace)
    want = scipy.linalg.eigh(Hd.numpy(), G.numpy(), eigvals_only=True)[::-1][:3]
    np.testing.assert_allclose(E.eigvalsh(3).flip(0).numpy(), want, rtol=1e-7)


@pytest.mark.parametrize("kwargs", [dict(kernel_size=3, padding=1), dict(kernel_size=(2, 3), stride=2),
                                    dict(kernel_size=3, dilation=2, padding="same"),
                                    dict(kernel_size=(3, 1), stride=(1, 2), padding=(2, 0), dilation=(2, 1))])
def test_patches_match_unfold(kwargs):
    from lib.curvature.factors import conv_padding, patches

    conv = nn.Conv2d(3, 4, **kwargs)
    x = torch.randn(2, 3, 9, 8, generator=_gen(0))
    want = nn.functional.unfold(x, conv.kernel_size, dilation=conv.dilation,
                                padding=conv_padding(conv), stride=conv.stride).transpose(1, 2)
    torch.testing.assert_close(patches(conv, x), want)


@pytest.mark.parametrize("fold_bias", [True, False])
def test_kfac_optimizer_on_a_cnn_and_the_empirical_fisher(fold_bias):
    X, y = _data(32, (2, 4, 4), 3, 15)
    X = X.float()
    torch.manual_seed(0)
    model = _cnn(15).float()
    loss_fn = nn.CrossEntropyLoss()
    opt = KFACOptimizer(model, loss_fn, lr=0.05, kind="empirical", fold_bias=fold_bias,
                        inverse_interval=2)
    with pytest.raises(ValueError, match="set_targets"):
        loss_fn(model(X), y)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        opt.set_targets(y)
        loss = loss_fn(model(X), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    conv = model[0]
    assert opt.state[conv.weight]["A"].shape == (2 * 9 + fold_bias,) * 2
    assert opt.state[conv.weight]["G"].shape == (3, 3)


def test_ekfac_forms_per_example_gradients_in_chunks(monkeypatch):
    """A convolution's per-example gradients in the eigenbasis are summed chunk by chunk (all at
    once they outgrow memory for a ResNet-50); the chunks change nothing but round-off."""
    import lib.curvature.kronecker as kronecker
    model = _cnn(3)
    X, y = _data(9, (2, 4, 4), 3, 3)
    whole = ekfac(model, nn.CrossEntropyLoss(), (X, y))
    monkeypatch.setattr(kronecker, "_MAX_ENTRIES", 50)  # a few examples per chunk
    chunked = ekfac(model, nn.CrossEntropyLoss(), (X, y))
    for (S, Sb), (T, Tb) in zip(whole.scalings, chunked.scalings):
        torch.testing.assert_close(S, T, rtol=1e-12, atol=1e-15)
