"""Reliability checks found by comparing lib with curvlinops, BackPACK, NNGeometry and
laplace-torch (issue 14, items 12-15): what lib must refuse, and what it must support.

Every test here failed on the code before the fix. References are independent of lib:
dense float64 matrices from ``torch.func``, scipy's generalized eigenvalues, and
curvlinops' ``KFACLinearOperator``.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call, jacrev

from lib import curvature
from lib.geometry.invariance import (dense_metric, diagonal_metric, hessian_operator, pullback_metric)
from lib.curvature.kronecker import ekfac, kfac
from lib.geometry.kfac_optimizer import KFACOptimizer
from lib.curvature.dense import dense_function_hessian
from lib.geometry.laplace import laplace_log_marginal_likelihood
from lib.operators import DenseOperator, DiagonalOperator, IdentityOperator, LinearOperator
from lib.geometry.reparam import Elementwise

DT = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _mlp(seed, sizes=(3, 4, 2)):
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers).double()


def _regression(n=8, d_in=3, d_out=2, seed=0):
    g = _gen(seed)
    return (torch.randn(n, d_in, generator=g, dtype=DT),
            torch.randn(n, d_out, generator=g, dtype=DT))


class _Opaque(LinearOperator):
    """A symmetric operator known only through its products (no factorization)."""

    def __init__(self, M):
        super().__init__(M.shape[0], M.dtype, M.device, True)
        self.M = M

    def _matmat(self, V):
        return self.M @ V


def _spd(d, seed, lo=0.5, hi=5.0):
    g = _gen(seed)
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=DT))
    return Q @ torch.diag(lo + (hi - lo) * torch.rand(d, generator=g, dtype=DT)) @ Q.T


# --------------------------------------------------------------------------------------
# 12. log det(G^-1 H) at a saddle point, whatever the metric
# --------------------------------------------------------------------------------------
SADDLE = torch.diag(torch.tensor([-1.0, -2.0, 3.0, 4.0, 5.0], dtype=DT))  # det H > 0


def _metrics(d):
    """Metrics of every kind the operator accepts: with and without a factorization."""
    eye = IdentityOperator(d, DT)
    return {
        "none": None,
        "diagonal": torch.linspace(0.5, 2.0, d, dtype=DT),
        "dense": _spd(d, 1),
        "identity plus damping (no factorization)": eye + 0.1 * eye,
        "opaque SPD operator": _Opaque(_spd(d, 2)),
        "pulled-back opaque operator": pullback_metric(_Opaque(_spd(d, 3)), Elementwise("softplus"),
                                                       torch.linspace(0.2, 1.0, d, dtype=DT)),
    }


@pytest.mark.parametrize("kind", list(_metrics(5)))
def test_logdet_at_a_saddle_with_an_even_number_of_negative_eigenvalues_raises(kind):
    E = hessian_operator(SADDLE, _metrics(5)[kind])
    with pytest.raises(ValueError, match="non-positive eigenvalue"):
        E.logdet()


@pytest.mark.parametrize("kind", list(_metrics(5)))
def test_laplace_at_a_saddle_raises_for_every_metric(kind):
    def f(t):
        return 0.5 * t @ SADDLE @ t

    with pytest.raises(ValueError, match="Laplace approximation is undefined"):
        laplace_log_marginal_likelihood(f, torch.zeros(5, dtype=DT), metric=_metrics(5)[kind])


def test_laplace_with_a_damped_ggn_metric_at_a_saddle_raises():
    model = _mlp(0)
    X, y = _regression()
    d = sum(p.numel() for p in model.parameters())
    metric = curvature.ggn(model, nn.MSELoss(), (X, y)) + 0.1 * IdentityOperator(d, DT)
    H = torch.diag(torch.cat([-torch.ones(2, dtype=DT), torch.ones(d - 2, dtype=DT)]))
    with pytest.raises(ValueError, match="non-positive eigenvalue"):
        laplace_log_marginal_likelihood(lambda t: 0.5 * t @ H @ t, torch.zeros(d, dtype=DT),
                                        metric=metric)


@settings(derandomize=True, max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), d=st.integers(2, 7), negatives=st.integers(0, 7))
def test_operator_metric_logdet_matches_scipy_or_raises(seed, d, negatives):
    """With a metric known only by products: log det(G^-1 H) is the sum of the logs of
    scipy's generalized eigenvalues when H is positive definite, and a ValueError for any
    number of negative eigenvalues, odd or even."""
    negatives = min(negatives, d)
    g = _gen(seed)
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=DT))
    ev = 0.5 + 3 * torch.rand(d, generator=g, dtype=DT)
    ev[:negatives] *= -1
    H = Q @ torch.diag(ev) @ Q.T
    M = _spd(d, seed % 1000 + 7)
    E = hessian_operator(H, _Opaque(M))
    if negatives:
        with pytest.raises(ValueError, match="non-positive eigenvalue"):
            E.logdet()
    else:
        want = np.log(scipy.linalg.eigh(H.numpy(), M.numpy(), eigvals_only=True)).sum()
        assert E.logdet() == pytest.approx(float(want), abs=1e-9)


def test_operator_metric_that_is_not_positive_definite_raises():
    M = torch.diag(torch.tensor([1.0, -1.0, 2.0], dtype=DT))
    with pytest.raises(ValueError, match="metric is not positive definite"):
        hessian_operator(torch.eye(3, dtype=DT), _Opaque(M)).logdet()


# --------------------------------------------------------------------------------------
# 13. Stochastic forward passes
# --------------------------------------------------------------------------------------
BUILDERS = {
    "hessian": lambda m, l, d: curvature.hessian(m, l, d),
    "ggn": lambda m, l, d: curvature.ggn(m, l, d),
    "fisher mc": lambda m, l, d: curvature.fisher(m, l, d, kind="mc"),
    "kfac": lambda m, l, d: kfac(m, l, d),
    "ekfac": lambda m, l, d: ekfac(m, l, d),
}


@pytest.mark.parametrize("dropout", [nn.AlphaDropout, nn.FeatureAlphaDropout, nn.Dropout])
@pytest.mark.parametrize("build", list(BUILDERS))
def test_every_train_mode_dropout_is_detected_by_type(dropout, build):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), dropout(0.5), nn.Linear(4, 2)).double()
    data = _regression()
    with pytest.raises(ValueError, match=rf"'1' \({dropout.__name__}\) is in training mode"):
        BUILDERS[build](model, nn.MSELoss(), data)
    model.eval()
    BUILDERS[build](model, nn.MSELoss(), data)


class _FunctionalDropout(nn.Module):
    """Dropout through F.dropout: no module type reveals it."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.b(nn.functional.dropout(torch.tanh(self.a(x)), 0.5, training=self.training))


@pytest.mark.parametrize("build", list(BUILDERS))
def test_a_stochastic_forward_is_detected_by_evaluating_the_first_batch_twice(build):
    model = _FunctionalDropout().double()
    data = _regression()
    with pytest.raises(ValueError, match="forward pass is not deterministic.*model.eval"):
        BUILDERS[build](model, nn.MSELoss(), data)
    model.eval()
    op = BUILDERS[build](model, nn.MSELoss(), data)
    v = torch.randn(op.shape[0], generator=_gen(1), dtype=DT)
    torch.testing.assert_close(op @ v, op @ v, rtol=0, atol=0)


def test_the_determinism_check_costs_two_forward_passes_of_the_first_batch_at_construction():
    model = _mlp(0)
    X, y = _regression(n=10)
    data = [(X[:4], y[:4]), (X[4:], y[4:])]
    sizes = []
    model.register_forward_pre_hook(lambda module, args: sizes.append(len(args[0])))
    op = curvature.ggn(model, nn.MSELoss(), data)
    assert sizes == [4, 4]  # the first batch, twice; no other pass over the data
    v = torch.randn(op.shape[0], generator=_gen(0), dtype=DT)
    sizes.clear()
    op @ v
    per_product = list(sizes)
    sizes.clear()
    op @ v
    assert sizes == per_product  # nothing is re-checked per product
    assert sorted(per_product) == sorted([4, 6] * (len(per_product) // 2))


def test_the_determinism_check_probes_only_the_first_inputs_of_a_large_batch():
    from lib.curvature.inspection import PROBE_SIZE
    model = _mlp(0)
    X, y = _regression(n=3 * PROBE_SIZE)
    sizes = []
    model.register_forward_pre_hook(lambda module, args: sizes.append(len(args[0])))
    curvature.ggn(model, nn.MSELoss(), (X, y))
    assert sizes == [PROBE_SIZE, PROBE_SIZE]  # a fraction of a forward pass, however large the batch


# --------------------------------------------------------------------------------------
# 14. Complex vectors: applied to both parts, for every operator
# --------------------------------------------------------------------------------------
def _operators():
    model = _mlp(0)
    data = _regression()
    d = sum(p.numel() for p in model.parameters())
    G = curvature.ggn(model, nn.MSELoss(), data)
    K = kfac(model, nn.MSELoss(), data)
    M = _spd(d, 4)
    return {
        "dense": DenseOperator(M),
        "diagonal": DiagonalOperator(torch.linspace(1.0, 2.0, d, dtype=DT)),
        "identity": IdentityOperator(d, DT),
        "sum and scaled": G + 0.5 * IdentityOperator(d, DT),
        "product": DenseOperator(M) @ G,
        "damped inverse (CG)": G.inverse(0.1, tol=1e-12),
        "hessian": curvature.hessian(model, nn.MSELoss(), data),
        "ggn": G,
        "fisher mc": curvature.fisher(model, nn.MSELoss(), data, kind="mc"),
        "kfac": K,
        "kfac inverse": K.inverse(0.1),
        "ekfac": ekfac(model, nn.MSELoss(), data),
        "pulled-back metric": pullback_metric(DenseOperator(M), Elementwise("softplus"),
                                              torch.linspace(0.2, 1.0, d, dtype=DT)),
    }


@pytest.mark.parametrize("name", list(_operators()))
def test_complex_vectors_are_applied_to_both_parts(name):
    op = _operators()[name]
    d = op.shape[0]
    g = _gen(5)
    re, im = (torch.randn(d, 3, generator=g, dtype=DT) for _ in range(2))
    want = torch.complex(op @ re, op @ im)
    for V in (torch.complex(re, im), torch.complex(re, im).to(torch.complex64)):
        got = op @ V
        assert got.dtype == torch.complex128
        torch.testing.assert_close(got, want, rtol=1e-5 if V.dtype == torch.complex64 else 1e-10,
                                   atol=1e-6 if V.dtype == torch.complex64 else 1e-12)
        torch.testing.assert_close(op @ V[:, 0], got[:, 0])
    if op.param_shapes is not None:
        flat = torch.complex(re[:, 0], im[:, 0])
        parts = op @ op._split(flat)
        torch.testing.assert_close(torch.cat([p.reshape(-1) for p in parts]), want[:, 0])


def test_complex_vector_with_nan_in_the_imaginary_part_raises():
    op = IdentityOperator(3, DT)
    with pytest.raises(ValueError, match="NaN"):
        op @ torch.complex(torch.ones(3, dtype=DT), torch.tensor([0.0, float("nan"), 0.0], dtype=DT))


# --------------------------------------------------------------------------------------
# 15. Bad data, outputs with extra dimensions, layers called twice, zero parameters
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("build", list(BUILDERS) + ["gradient"])
def test_data_of_another_dtype_raises_type_error(build):
    model = _mlp(0)
    X, y = _regression()
    fn = curvature.gradient if build == "gradient" else BUILDERS[build]
    with pytest.raises(TypeError, match=r"input X of batch 1 has dtype torch.float32 but the "
                                        r"model's parameters have dtype torch.float64"):
        fn(model, nn.MSELoss(), [(X[:4], y[:4]), (X[4:].float(), y[4:])])


@pytest.mark.parametrize("build", list(BUILDERS))
@pytest.mark.parametrize("where, value", [("X", float("nan")), ("X", float("inf")),
                                          ("y", float("nan"))])
def test_non_finite_data_raises(build, where, value):
    model = _mlp(0)
    X, y = _regression()
    (X if where == "X" else y)[6, 1] = value  # in the second batch
    name = "input X" if where == "X" else "target y"
    with pytest.raises(ValueError, match=f"{name} of batch 1 contains NaN or infinite"):
        BUILDERS[build](model, nn.MSELoss(), [(X[:4], y[:4]), (X[4:], y[4:])])


def _dense_ggn(model, X, reduction):
    """c sum_n J_n^T 2 J_n for MSE over all output entries, from torch.func's Jacobian."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def f(flat):
        params, i = {}, 0
        for n, s in zip(names, shapes):
            params[n] = flat[i:i + math.prod(s)].reshape(s)
            i += math.prod(s)
        return functional_call(model, params, (X,)).reshape(-1)

    J = jacrev(f)(theta)
    scale = 1.0 if reduction == "sum" else 1.0 / J.shape[0]
    return scale * 2.0 * J.T @ J


class _SharedLinear(nn.Module):
    """One Linear layer applied at two positions: (B, 2, 4) -> (B, 2, 3)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.layer = nn.Linear(4, 3)

    def forward(self, x):
        return self.layer(x)


def _unflattened_mlp():
    torch.manual_seed(2)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 6), nn.Unflatten(1, (2, 3)))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("net", ["unflatten", "shared"])
@pytest.mark.parametrize("fold_bias", [False, True])
def test_kfac_with_extra_output_dimensions_is_exact_where_theory_says_so(reduction, net, fold_bias):
    """One example, MSE, one layer: K-FAC is the GGN, with outputs of shape (1, 2, 3)."""
    g = _gen(4)
    if net == "shared":
        model, X = _SharedLinear().double(), torch.randn(1, 2, 4, generator=g, dtype=DT)
    else:
        torch.manual_seed(2)
        model = nn.Sequential(nn.Linear(4, 6), nn.Unflatten(1, (2, 3))).double()
        X = torch.randn(1, 4, generator=g, dtype=DT)
    y = torch.randn(1, 2, 3, generator=g, dtype=DT)
    want = _dense_ggn(model, X, reduction)
    # a separate bias drops the weight-bias cross terms: compare the diagonal blocks then
    keep = torch.ones_like(want, dtype=torch.bool)
    if not fold_bias:
        n_w = model.layer.weight.numel() if net == "shared" else model[0].weight.numel()
        keep[:n_w, n_w:] = keep[n_w:, :n_w] = False
    for op in (kfac(model, nn.MSELoss(reduction=reduction), (X, y), fold_bias=fold_bias),
               ekfac(model, nn.MSELoss(reduction=reduction), (X, y), fold_bias=fold_bias)):
        got = op.to_dense()
        torch.testing.assert_close(got[keep], want[keep], rtol=1e-10, atol=1e-12)
        assert bool((got[~keep] == 0).all())
    torch.testing.assert_close(curvature.ggn(model, nn.MSELoss(reduction=reduction), (X, y))
                               .to_dense(), want, rtol=1e-10, atol=1e-12)


def _extra_dimension_problem(net, seed=6):
    g = _gen(seed)
    model = _SharedLinear().double() if net == "shared" else _unflattened_mlp().double()
    shape = (2, 4) if net == "shared" else (4,)
    data = [(torch.randn(n, *shape, generator=g, dtype=DT),
             torch.randn(n, 2, 3, generator=g, dtype=DT)) for n in (3, 4)]
    return model, data


def _curvlinops_kfac(model, loss_fn, data, fisher_type, **kwargs):
    from curvlinops import KFACLinearOperator

    op = KFACLinearOperator(model, loss_fn, list(model.parameters()), data,
                            fisher_type=fisher_type, check_deterministic=False, **kwargs)
    d = sum(p.numel() for p in model.parameters())
    return torch.as_tensor(op @ torch.eye(d, dtype=DT), dtype=DT)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("kind, net", [("ggn", "shared"), ("empirical", "shared"),
                                              ("empirical", "unflatten")])
def test_kfac_with_extra_output_dimensions_matches_curvlinops(reduction, kind, net):
    """curvlinops moves the extra output dimensions into the batch. Where they are
    positions a layer is applied at (weight sharing) its type-2 columns equal ours; its
    empirical Fisher uses one column and agrees for every network."""
    model, data = _extra_dimension_problem(net)
    loss_fn = nn.MSELoss(reduction=reduction)
    ours = kfac(model, loss_fn, data, kind).to_dense()
    theirs = _curvlinops_kfac(model, loss_fn, data,
                              {"ggn": "type-2", "empirical": "empirical"}[kind])
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-12)


def test_kfac_with_mixed_output_positions_matches_curvlinops_monte_carlo_fisher():
    """Where the extra dimensions come from one layer's output (Unflatten), curvlinops'
    type-2 backpropagates each Hessian column through all positions at once, which is not
    the GGN (the one-example test above pins ours to the dense GGN); its Monte-Carlo
    Fisher estimates the Fisher and agrees with our exact one within sampling error."""
    model, data = _extra_dimension_problem("unflatten")
    loss_fn = nn.MSELoss()
    ours = kfac(model, loss_fn, data, "exact")
    theirs = _curvlinops_kfac(model, loss_fn, data, "mc", mc_samples=3000, seed=0)
    dense, start = ours.to_dense(), 0
    for f in ours.factors:
        block = slice(start, start + f.num_params)
        start += f.num_params
        err = (dense[block, block] - theirs[block, block]).norm() / theirs[block, block].norm()
        assert err < 0.1, (f.name, float(err))  # sampling error ~0.02; type-2 is off by ~0.7


def test_kfac_optimizer_with_extra_output_dimensions_collects_kfac_factors():
    """The optimizer's first factors are those of kfac() with the same sampled labels."""
    model = _unflattened_mlp().double()
    g = _gen(7)
    X, y = torch.randn(5, 4, generator=g, dtype=DT), torch.randn(5, 2, 3, generator=g, dtype=DT)
    ref = kfac(copy.deepcopy(model), nn.MSELoss(), (X, y), "mc", fold_bias=True, seed=3)
    opt = KFACOptimizer(model, nn.MSELoss(), lr=0.1, seed=3)
    nn.MSELoss()(model(X), y).backward()
    opt.step()
    for (_, module), factors in zip(opt.layers, ref.factors):
        state = opt.state[module.weight]
        torch.testing.assert_close(state["A"], factors.A, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(state["G"], factors.G, rtol=1e-12, atol=1e-14)


def test_kfac_with_cross_entropy_over_extra_dimensions_raises():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Unflatten(1, (3, 2))).double()
    X = torch.randn(5, 4, dtype=DT)
    y = torch.randint(0, 3, (5, 2))
    with pytest.raises(ValueError, match=r"shape \(batch, outputs\)"):
        kfac(model, nn.CrossEntropyLoss(), (X, y))


class _Twice(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.inner = nn.Linear(3, 3)
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        return self.head(torch.tanh(self.inner(torch.tanh(self.inner(x)))))


class _Unused(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.used, self.spare = nn.Linear(3, 2), nn.Linear(3, 2)

    def forward(self, x):
        return self.used(x)


@pytest.mark.parametrize("build", [kfac, ekfac])
def test_a_layer_called_twice_or_never_in_one_forward_pass_raises(build):
    X, y = _regression()
    with pytest.raises(ValueError, match="module 'inner' \\(Linear\\) was called 2 times in one "
                                         "forward pass"):
        build(_Twice().double(), nn.MSELoss(), (X, y))
    with pytest.raises(ValueError, match="module 'spare' \\(Linear\\) was not called"):
        build(_Unused().double(), nn.MSELoss(), (X, y))


def test_kfac_optimizer_raises_for_a_layer_called_twice_but_not_for_several_passes():
    X, y = _regression()
    model = _mlp(0)
    opt = KFACOptimizer(model, nn.MSELoss(), lr=0.1)
    for _ in range(3):  # several passes, also in eval mode in between: counted per pass
        with torch.no_grad():
            model.eval()
            model(X)
            model.train()
        opt.zero_grad()
        nn.MSELoss()(model(X), y).backward()
        opt.step()
    twice = _Twice().double()
    opt = KFACOptimizer(twice, nn.MSELoss(), lr=0.1)
    with pytest.raises(ValueError, match="module 'inner' \\(Linear\\) was called 2 times"):
        twice(X)


def test_laplace_and_dense_hessian_with_zero_parameters_raise():
    empty = torch.zeros(0, dtype=DT)
    with pytest.raises(ValueError, match="no entries"):
        laplace_log_marginal_likelihood(lambda t: (t * t).sum(), empty)
    with pytest.raises(ValueError, match="no entries"):
        dense_function_hessian(lambda t: (t * t).sum(), empty)


def test_the_checks_leave_good_input_alone():
    """The default metrics, dense_metric and diagonal_metric still give log det(G^-1 H)."""
    H, M = _spd(4, 8), _spd(4, 9)
    want = float(torch.logdet(H) - torch.logdet(M))
    assert hessian_operator(H, dense_metric(M)).logdet() == pytest.approx(want, abs=1e-10)
    assert hessian_operator(H, _Opaque(M)).logdet() == pytest.approx(want, abs=1e-10)
    m = torch.linspace(1.0, 2.0, 4, dtype=DT)
    want_diag = float(torch.logdet(H) - m.log().sum())
    assert hessian_operator(H, diagonal_metric(m)).logdet() == pytest.approx(want_diag, abs=1e-10)
