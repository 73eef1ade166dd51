"""Tests for lib.geometry.sharpness: Auto-PGD, adaptive and geodesic sharpness, closed forms, tau."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import scipy.optimize
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lib.geometry.auto_pgd import auto_pgd
from lib.geometry.sharpness import (AdaptiveGeometry, adaptive_sharpness, geodesic_sharpness,
                                    kendall_tau, perturbation_objective, trust_region_max)
from lib.sources.dasilva2025 import (diagonal_net_quadratic_model, diagonal_net_sharpness,
                                     scalar_toy_sharpness)

DT = torch.float64
MSE = nn.functional.mse_loss


# --------------------------------------------------------------------------------------
# Tiny models
# --------------------------------------------------------------------------------------
class DiagNet(nn.Module):
    """``x -> x^T (u * v)``, with the rescale symmetry declared for lib.geometry.quotient."""

    rescale_pairs = (("u", "v"),)

    def __init__(self, u: torch.Tensor, v: torch.Tensor):
        super().__init__()
        self.u = nn.Parameter(u.clone())
        self.v = nn.Parameter(v.clone())

    def forward(self, x):
        return x @ (self.u * self.v)


class TinyAttention(nn.Module):
    """One multi-head self-attention layer, mean-pooled, and a linear read-out."""

    def __init__(self, embed_dim: int = 4, num_heads: int = 2):
        super().__init__()
        self.attn = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)
        self.readout = nn.Linear(embed_dim, 2)

    def forward(self, x):
        out, _ = self.attn(x, x, x, need_weights=False)
        return self.readout(out.mean(dim=1))


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2)).to(DT)


def mlp_data(n: int = 32, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=g, dtype=DT), torch.randn(n, 2, generator=g, dtype=DT)


def attention_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = TinyAttention().to(DT)
    with torch.no_grad():  # biases away from zero, so |w| scaling is well defined everywhere
        model.attn.in_proj_bias.normal_(0, 0.3)
        model.attn.out_proj.bias.normal_(0, 0.3)
    return model


def attention_data(n: int = 16, seed: int = 2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 4, generator=g, dtype=DT), torch.randn(n, 2, generator=g, dtype=DT)


def diag_problem(d: int = 3, n: int = 20, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=DT)
    u = 0.5 + torch.rand(d, generator=g, dtype=DT)
    v = torch.randn(d, generator=g, dtype=DT)
    y = X @ torch.randn(d, generator=g, dtype=DT) + 0.1 * torch.randn(n, generator=g, dtype=DT)
    return u, v, X, y


def snapshot(model):
    return {k: t.detach().clone() for k, t in model.state_dict().items()}


def assert_unchanged(model, before):
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k


# --------------------------------------------------------------------------------------
# Exact geodesic maximum for diagonal nets (ground truth for the closed forms)
# --------------------------------------------------------------------------------------
def exact_diag_max(u, v, X, y, rho, starts: int = 12, seed: int = 0) -> float:
    """max over ||B|| <= rho/sqrt 2 of L(beta0 exp(2B)) - L(beta0), multi-start SLSQP."""
    beta0, Xn, yn = (u * v).numpy(), X.numpy(), y.numpy()
    base = np.mean((Xn @ beta0 - yn) ** 2)
    radius = rho / math.sqrt(2)

    def neg(B):
        return -(np.mean((Xn @ (beta0 * np.exp(2 * B)) - yn) ** 2) - base)

    def neg_grad(B):
        beta = beta0 * np.exp(2 * B)
        return -(2 / len(yn)) * (Xn.T @ (Xn @ beta - yn)) * 2 * beta

    rng = np.random.default_rng(seed)
    best = -np.inf
    cons = ({"type": "ineq", "fun": lambda B: radius ** 2 - B @ B,
             "jac": lambda B: -2 * B},)
    for _ in range(starts):
        start = rng.normal(size=beta0.size)
        start *= radius * rng.uniform(0.2, 1.0) / np.linalg.norm(start)
        with np.errstate(all="ignore"):  # SLSQP may probe far outside the ball
            res = scipy.optimize.minimize(neg, start, jac=neg_grad, method="SLSQP",
                                          constraints=cons, options={"ftol": 1e-15, "maxiter": 500})
        if np.isfinite(res.fun):
            best = max(best, -neg(res.x * min(1.0, radius / max(np.linalg.norm(res.x), 1e-300))))
    return float(best)


# --------------------------------------------------------------------------------------
# kendall_tau
# --------------------------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.floats(-1e3, 1e3), st.floats(-1e3, 1e3)), min_size=2, max_size=25,
                unique_by=(lambda t: t[0], lambda t: t[1])))
def test_kendall_tau_matches_scipy_without_ties(pairs):
    a, b = map(list, zip(*pairs))
    assert kendall_tau(a, b) == pytest.approx(scipy.stats.kendalltau(a, b).statistic, abs=1e-12)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=2, max_size=25))
def test_kendall_tau_handles_ties_like_tau_b(pairs):
    a, b = map(list, zip(*pairs))
    expected = scipy.stats.kendalltau(a, b, variant="b").statistic
    got = kendall_tau(a, b)
    if np.isnan(expected):
        assert np.isnan(got)
    else:
        assert got == pytest.approx(expected, abs=1e-12)


def test_kendall_tau_matches_paper_formula_and_bad_inputs():
    t, s = np.array([3.0, 1.0, 2.0, 5.0]), np.array([2.0, 0.5, 1.0, -1.0])
    M = len(t)
    manual = 2 / (M * (M - 1)) * sum(np.sign(t[i] - t[j]) * np.sign(s[i] - s[j])
                                     for i in range(M) for j in range(i + 1, M))
    assert kendall_tau(torch.tensor(t), s) == pytest.approx(manual)
    with pytest.raises(ValueError, match="equal length"):
        kendall_tau([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="two"):
        kendall_tau([1], [1])
    with pytest.raises(ValueError, match="finite"):
        kendall_tau([1, np.nan], [1, 2])


# --------------------------------------------------------------------------------------
# trust_region_max
# --------------------------------------------------------------------------------------
def _scipy_trust_region(a, Q, radius, starts=20, seed=0):
    rng = np.random.default_rng(seed)
    best = -np.inf
    cons = ({"type": "ineq", "fun": lambda B: radius ** 2 - B @ B, "jac": lambda B: -2 * B},)
    for _ in range(starts):
        start = rng.normal(size=a.size)
        start *= radius * rng.uniform(0.1, 1.0) / np.linalg.norm(start)
        res = scipy.optimize.minimize(lambda B: -(a @ B + B @ Q @ B), start,
                                      jac=lambda B: -(a + 2 * Q @ B), method="SLSQP",
                                      constraints=cons, options={"ftol": 1e-14})
        B = res.x * min(1.0, radius / max(np.linalg.norm(res.x), 1e-300))  # may overshoot
        best = max(best, a @ B + B @ Q @ B)
    return best


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 5), st.integers(0, 2**31 - 1), st.floats(0.05, 3.0),
       st.sampled_from(["generic", "a=0", "hard", "negdef"]))
def test_trust_region_max_matches_scipy(d, seed, radius, case):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=d)
    M = rng.normal(size=(d, d))
    Q = (M + M.T) / 2
    if case == "negdef":
        Q = -(M @ M.T) - 0.1 * np.eye(d)
    q, V = np.linalg.eigh(Q)
    if case == "a=0":
        a = np.zeros(d)
    if case == "hard":  # no component along the top eigenvector
        a = a - (V[:, -1] @ a) * V[:, -1]
    res = trust_region_max(torch.tensor(a), torch.tensor(Q), radius)
    B = res.B.numpy()
    assert B @ B <= radius ** 2 * (1 + 1e-9)
    assert res.value == pytest.approx(a @ B + B @ Q @ B, rel=1e-9, abs=1e-12)
    assert res.multiplier >= max(0.0, q[-1]) - 1e-9
    reference = _scipy_trust_region(a, Q, radius)
    assert res.value >= reference - 1e-7 * max(1.0, abs(reference))
    assert res.value <= reference + 1e-6 * max(1.0, abs(reference))
    if case == "a=0":
        assert res.value == pytest.approx(radius ** 2 * max(q[-1], 0.0), abs=1e-10)


def test_trust_region_max_dense_search_2d_and_special_cases():
    rng = np.random.default_rng(3)
    angles = np.linspace(0, 2 * np.pi, 4001)
    radii = np.linspace(0, 1, 401)
    grid = np.stack([np.outer(radii, np.cos(angles)), np.outer(radii, np.sin(angles))], -1)
    for _ in range(5):
        a = rng.normal(size=2)
        M = rng.normal(size=(2, 2))
        Q = M + M.T
        radius = 0.7
        pts = grid.reshape(-1, 2) * radius
        dense = np.max(pts @ a + np.einsum("ni,ij,nj->n", pts, Q, pts))
        value = trust_region_max(torch.tensor(a), torch.tensor(Q), radius).value
        assert value >= dense - 1e-10
        assert value == pytest.approx(dense, abs=1e-4)
    a = torch.tensor([3.0, -4.0], dtype=DT)
    case_a = trust_region_max(a, torch.zeros(2, 2, dtype=DT), 0.5)
    assert case_a.value == pytest.approx(2.5)  # radius * ||a||
    inner = trust_region_max(torch.tensor([0.1, 0.0], dtype=DT), -torch.eye(2, dtype=DT), 10.0)
    assert inner.multiplier == 0 and inner.value == pytest.approx(0.0025)  # interior maximum
    with pytest.raises(ValueError, match="shape"):
        trust_region_max(a, torch.zeros(3, 3, dtype=DT), 1.0)
    with pytest.raises(ValueError, match="radius"):
        trust_region_max(a, torch.zeros(2, 2, dtype=DT), 0.0)


# --------------------------------------------------------------------------------------
# Closed forms
# --------------------------------------------------------------------------------------
def test_diagonal_net_model_reproduces_paper_formulas():
    """With X^T X = n I the mean-loss model is a = 4 r, Q = 4 D (paper eq. 12)."""
    n, d = 12, 4
    g = torch.Generator().manual_seed(0)
    ortho, _ = torch.linalg.qr(torch.randn(n, d, generator=g, dtype=DT))
    X = math.sqrt(n) * ortho
    u, v = torch.rand(d, generator=g, dtype=DT) + 0.5, torch.randn(d, generator=g, dtype=DT)
    y = torch.randn(n, generator=g, dtype=DT)
    beta0, beta_star = u * v, X.T @ y / n
    a, Q = diagonal_net_quadratic_model(u, v, X, y)
    r = beta0 * (beta0 - beta_star)
    D = torch.diag(beta0 * (2 * beta0 - beta_star))
    torch.testing.assert_close(a, 4 * r)
    torch.testing.assert_close(Q, 4 * D)
    rho = 0.01
    # case A: the paper's 4 rho ||r|| with the radius rho / sqrt 2 of the metric ball
    assert diagonal_net_sharpness(u, v, X, y, rho, order=1) == pytest.approx(
        4 * rho / math.sqrt(2) * float(r.norm()))
    # case B (r = 0: beta0 = beta* on its support): (rho^2 / 2) * 4 * max beta0^2, i.e. the
    # paper's rho^2 ||beta0||_inf^2 once its dropped factor 4 and the radius are restored
    beta0 = torch.tensor([0.8, -1.5, 0.0, 0.3], dtype=DT)
    y = X @ beta0
    value = diagonal_net_sharpness(beta0, torch.ones(d, dtype=DT), X, y, rho)
    assert value == pytest.approx(rho ** 2 / 2 * 4 * float(beta0.abs().max()) ** 2, rel=1e-9)


def test_scalar_toy_closed_forms():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(7, generator=g, dtype=DT)
    y = 1.3 * x + 0.2 * torch.randn(7, generator=g, dtype=DT)
    G, H = 0.9, 1.7
    y0 = G * H * x
    grid = torch.linspace(-1, 1, 20001, dtype=DT)
    errors = {1: [], 2: []}
    for rho in (0.08, 0.04):
        B = grid * rho / math.sqrt(2)
        S = ((torch.exp(2 * B)[:, None] * y0 - y) ** 2).mean(1) - ((y0 - y) ** 2).mean()
        exact = scalar_toy_sharpness(G, H, x, y, rho)
        assert exact == pytest.approx(float(S.max()), rel=1e-12)  # the max is at an end point
        for order in (1, 2):
            errors[order].append(abs(scalar_toy_sharpness(G, H, x, y, rho, order=order) - exact))
    assert errors[2][0] / errors[2][1] == pytest.approx(8, rel=0.1)  # O(rho^3)
    assert errors[1][0] / errors[1][1] == pytest.approx(4, rel=0.1)  # O(rho^2)
    # the same model as a DiagNet with d = 1 gives the same closed form
    X1 = x[:, None]
    val = diagonal_net_sharpness(torch.tensor([G], dtype=DT), torch.tensor([H], dtype=DT),
                                 X1, y, 0.04)
    assert val == pytest.approx(scalar_toy_sharpness(G, H, x, y, 0.04, order=2), rel=1e-9)
    with pytest.raises(ValueError, match="order"):
        scalar_toy_sharpness(G, H, x, y, 0.1, order=3)
    with pytest.raises(ValueError, match="rho"):
        scalar_toy_sharpness(G, H, x, y, -0.1)


def test_diagonal_net_closed_form_matches_exact_maximum_to_third_order():
    u, v, X, y = diag_problem(d=3)
    errors = []
    for rho in (0.1, 0.05):
        exact = exact_diag_max(u, v, X, y, rho)
        closed = diagonal_net_sharpness(u, v, X, y, rho)
        errors.append(abs(closed - exact))
        assert closed == pytest.approx(exact, rel=0.05)
    assert 5 < errors[0] / errors[1] < 11  # O(rho^3)
    with pytest.raises(ValueError, match="order"):
        diagonal_net_sharpness(u, v, X, y, 0.1, order=3)


# --------------------------------------------------------------------------------------
# Auto-PGD
# --------------------------------------------------------------------------------------
def _check_apgd(model, geometry, X, y, rho, horizontal: bool):
    objective = perturbation_objective(model, MSE, (X, y), geometry)
    xi, best = auto_pgd(objective, geometry, rho, num_steps=20)
    assert float(geometry.norm(xi)) <= rho * (1 + 1e-6)
    with torch.no_grad():
        assert float(objective(xi)) == pytest.approx(best, rel=1e-9, abs=1e-12)
    if horizontal:  # horizontal vectors are fixed points of the horizontal projection
        again = geometry.project(xi, 1e6 * rho)
        for k in xi:
            torch.testing.assert_close(again[k], xi[k], rtol=1e-6, atol=1e-9)
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for _ in range(50):
            radius = rho * float(torch.rand((), generator=gen, dtype=DT))
            assert float(objective(geometry.random(radius, gen))) <= best + 1e-12
    return best


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_auto_pgd_adaptive_is_feasible_and_beats_random(norm):
    model = mlp()
    X, y = mlp_data()
    geometry = AdaptiveGeometry(model, norm=norm)
    best = _check_apgd(model, geometry, X, y, 0.1, horizontal=False)
    assert best > 0


@pytest.mark.parametrize("metric", ["inv", "mix"])
def test_auto_pgd_geodesic_is_feasible_horizontal_and_beats_random(metric):
    from lib.geometry.quotient import QuotientGeometry

    model = attention_model()
    X, y = attention_data()
    geometry = QuotientGeometry(model, metric_name=metric, eps=1e-6)
    assert _check_apgd(model, geometry, X, y, 0.1, horizontal=True) > 0


def test_geodesic_sharpness_of_diagonal_net_is_close_to_exact_maximum():
    u, v, X, y = diag_problem(d=3)
    rho = 0.1
    exact = exact_diag_max(u, v, X, y, rho)
    value = geodesic_sharpness(DiagNet(u, v), MSE, (X, y), rho, num_steps=40)
    assert value <= exact * (1 + 1e-6)  # feasible points cannot beat the maximum
    assert value >= 0.98 * exact


def test_adaptive_geometry_protocol():
    model = mlp()
    with torch.no_grad():
        model[0].weight[0, 0] = 0.0  # a zero weight cannot move
    gen = torch.Generator().manual_seed(0)
    for norm in ("l2", "linf"):
        geo = AdaptiveGeometry(model, norm=norm)
        xi = geo.random(0.3, gen)
        assert float(geo.norm(xi)) == pytest.approx(0.3)
        assert float(xi["0.weight"][0, 0]) == 0.0
        big = {k: 10 * t for k, t in xi.items()}
        assert float(geo.norm(geo.project(big, 0.3))) == pytest.approx(0.3)
        grad = {k: torch.randn_like(t) for k, t in xi.items()}
        assert float(geo.norm(geo.ascent_direction(grad))) == pytest.approx(1.0)
        perturbed = geo.perturb(xi)
        for k, w in geo.params.items():
            torch.testing.assert_close(perturbed[k], w + xi[k])
    with pytest.raises(ValueError, match="norm"):
        AdaptiveGeometry(model, norm="l1")


# --------------------------------------------------------------------------------------
# Invariance under the GL(h) symmetry of attention
# --------------------------------------------------------------------------------------
def _transformed_copy(model, seed=5):
    from lib.geometry.attention import attention_group_action, attention_pairs

    other = attention_model()
    other.load_state_dict(model.state_dict())
    gen = torch.Generator().manual_seed(seed)
    A = {}
    for pair in attention_pairs(other):
        dh = other.attn.head_dim
        ortho, _ = torch.linalg.qr(torch.randn(dh, dh, generator=gen, dtype=DT))
        scales = torch.exp(4 * torch.rand(dh, generator=gen, dtype=DT) - 2)  # in [e^-2, e^2]
        A[(pair.module_name, pair.head, pair.pair_type)] = ortho * scales
    attention_group_action(other, A)
    return other


def test_geodesic_sharpness_is_invariant_on_an_orbit_while_adaptive_is_not():
    model = attention_model()
    other = _transformed_copy(model)
    for m in (model, other):  # a frozen read-out: only the attention layer is perturbed
        m.readout.requires_grad_(False)
    X, y = attention_data()
    with torch.no_grad():
        torch.testing.assert_close(other(X), model(X))  # same function
    for metric in ("inv", "mix"):
        s1 = geodesic_sharpness(model, MSE, (X, y), 0.05, metric, eps=0.0, num_steps=10)
        s2 = geodesic_sharpness(other, MSE, (X, y), 0.05, metric, eps=0.0, num_steps=10)
        assert s1 > 0
        assert s2 == pytest.approx(s1, rel=1e-5)
    a1 = adaptive_sharpness(model, MSE, (X, y), 0.05, "worst", num_steps=10)
    a2 = adaptive_sharpness(other, MSE, (X, y), 0.05, "worst", num_steps=10)
    assert abs(a1 - a2) > 0.05 * abs(a1)  # about 11 % here


def test_ablation_flags_change_geodesic_sharpness():
    model = attention_model()
    data = attention_data()
    kwargs = dict(num_steps=5)
    base = geodesic_sharpness(model, MSE, data, 0.1, **kwargs)
    no_norm = geodesic_sharpness(model, MSE, data, 0.1, geodesic_norm=False, **kwargs)
    first = geodesic_sharpness(model, MSE, data, 0.1, second_order=False, **kwargs)
    mix = geodesic_sharpness(model, MSE, data, 0.1, "mix", **kwargs)
    for other in (no_norm, first, mix):
        assert math.isfinite(other) and abs(other - base) > 1e-6 * abs(base)
    # float32 runs too and agrees with float64 to single precision
    value32 = geodesic_sharpness(model.float(), MSE, tuple(t.float() for t in data), 0.1, **kwargs)
    assert value32 == pytest.approx(base, rel=1e-3)


@pytest.mark.parametrize("metric", ["inv", "mix"])
def test_adaptive_norm_ablation_is_at_least_a_feasible_value(metric):
    # With geodesic_norm=False the ball is the adaptive one restricted to horizontal
    # attention perturbations. Leaving the attention weights alone is feasible, so the
    # maximum is at least the worst-case adaptive sharpness of the read-out alone. (The
    # solver once projected with the metric instead of the adaptive norm, ascended along
    # a poor direction and stopped at a quarter of that value.)
    model = attention_model()
    data = attention_data()
    readout_only = copy.deepcopy(model)
    readout_only.attn.requires_grad_(False)
    floor = adaptive_sharpness(readout_only, MSE, data, 0.1, "worst", num_steps=10)
    ablated = geodesic_sharpness(model, MSE, data, 0.1, metric, geodesic_norm=False, num_steps=10)
    assert floor > 0
    assert ablated >= floor


# --------------------------------------------------------------------------------------
# Public API: data handling, options, errors, side effects
# --------------------------------------------------------------------------------------
def test_adaptive_sharpness_kinds_batches_and_options():
    model = mlp()
    X, y = mlp_data()
    avg = adaptive_sharpness(model, MSE, (X, y), 0.05, num_samples=10)
    worst = adaptive_sharpness(model, MSE, (X, y), 0.05, "worst", num_steps=10)
    assert worst > avg
    # batches: mean of the per-batch values, and an iterable of batches gives the same
    batched = adaptive_sharpness(model, MSE, (X, y), 0.05, "worst", num_steps=10, batch_size=16)
    pieces = [(X[:16], y[:16]), (X[16:], y[16:])]
    from_pieces = adaptive_sharpness(model, MSE, pieces, 0.05, "worst", num_steps=10)
    assert from_pieces == pytest.approx(batched)
    singles = [adaptive_sharpness(model, MSE, p, 0.05, "worst", num_steps=10) for p in pieces]
    assert batched == pytest.approx(np.mean(singles))
    # the average case is E[L(w + rho c z)] - L(w) ~ rho^2 / 2 * tr(diag(c) H diag(c)) for small rho
    assert adaptive_sharpness(model, MSE, (X, y), 0.1, normalize_logits=True) != pytest.approx(
        adaptive_sharpness(model, MSE, (X, y), 0.1))
    # float32 works too
    model32 = mlp().float()
    value = adaptive_sharpness(model32, MSE, (X.float(), y.float()), 0.05, "worst", "linf",
                               num_steps=5)
    assert math.isfinite(value) and value > 0


class Normalized(nn.Module):
    """A model followed by per-sample L2 normalisation of its outputs."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        out = self.inner(x)
        return out / out.norm(dim=1, keepdim=True)


def test_logit_normalization_and_average_case_formula():
    model = mlp()
    X, y = mlp_data()
    # normalize_logits is the same as normalising inside the model (same draws, same order)
    for kind in ("average", "worst"):
        assert adaptive_sharpness(model, MSE, (X, y), 0.1, kind, num_steps=5, num_samples=5,
                                  normalize_logits=True) == pytest.approx(
            adaptive_sharpness(Normalized(model), MSE, (X, y), 0.1, kind, num_steps=5, num_samples=5),
            rel=1e-12)
    # a loss quadratic in w: E[L(w + rho c z)] - L(w) = rho^2 / 2 * sum_i c_i^2 H_ii exactly
    lin = nn.Linear(3, 2).to(DT)
    w = torch.cat([lin.weight.detach().reshape(-1), lin.bias.detach()])
    Xb = torch.cat([X, torch.ones(len(X), 1, dtype=DT)], 1)
    # MSE averages over N * 2 outputs: H = (2 / (2 N)) kron(I_2, Xb^T Xb) in (weight, bias) order
    gram = Xb.T @ Xb / len(X)
    diag_h = torch.cat([torch.diag(gram)[:3].repeat(2), torch.diag(gram)[3].repeat(2)])
    expected = 0.1 ** 2 / 2 * float((w ** 2 * diag_h).sum())
    value = adaptive_sharpness(lin, MSE, (X, y), 0.1, num_samples=4000)
    assert value == pytest.approx(expected, rel=0.1)


def test_reproducible_with_seed_and_parameters_unchanged():
    model = mlp()
    model.train()
    data = mlp_data()
    before = snapshot(model)
    a = adaptive_sharpness(model, MSE, data, 0.1, num_samples=5, seed=3)
    assert adaptive_sharpness(model, MSE, data, 0.1, num_samples=5, seed=3) == a
    assert adaptive_sharpness(model, MSE, data, 0.1, num_samples=5, seed=4) != a
    w = adaptive_sharpness(model, MSE, data, 0.1, "worst", "linf", num_steps=5)
    assert adaptive_sharpness(model, MSE, data, 0.1, "worst", "linf", num_steps=5) == w
    assert_unchanged(model, before)
    assert model.training  # the mode is restored

    attn = attention_model()
    adata = attention_data()
    before = snapshot(attn)
    g = geodesic_sharpness(attn, MSE, adata, 0.1, num_steps=4)
    assert geodesic_sharpness(attn, MSE, adata, 0.1, num_steps=4) == g
    geodesic_sharpness(attn, MSE, adata, 0.1, "mix", num_steps=4, second_order=False)
    adaptive_sharpness(attn, MSE, adata, 0.1, "worst", num_steps=4)
    assert_unchanged(attn, before)
    diag = DiagNet(*diag_problem()[:2])
    before = snapshot(diag)
    geodesic_sharpness(diag, MSE, diag_problem()[2:], 0.1, num_steps=4)
    assert_unchanged(diag, before)


def test_bad_inputs_raise_clear_errors():
    model = mlp()
    X, y = mlp_data()
    data = (X, y)
    for rho in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="rho"):
            adaptive_sharpness(model, MSE, data, rho)
        with pytest.raises(ValueError, match="rho"):
            geodesic_sharpness(model, MSE, data, rho)
    with pytest.raises(TypeError, match="rho"):
        adaptive_sharpness(model, MSE, data, "0.1")
    with pytest.raises(ValueError, match="estimate"):
        adaptive_sharpness(model, MSE, data, 0.1, estimate="max")
    with pytest.raises(ValueError, match="norm"):
        adaptive_sharpness(model, MSE, data, 0.1, norm="l1")
    with pytest.raises(ValueError, match="metric_name"):
        geodesic_sharpness(attention_model(), MSE, attention_data(), 0.1, metric_name="euclid")
    with pytest.raises(ValueError, match="num_steps"):
        adaptive_sharpness(model, MSE, data, 0.1, "worst", num_steps=0)
    with pytest.raises(ValueError, match="num_steps"):
        geodesic_sharpness(attention_model(), MSE, attention_data(), 0.1, num_steps=0)
    with pytest.raises(TypeError, match="normalize_logits"):
        adaptive_sharpness(model, MSE, data, 0.1, normalize_logits="yes")
    with pytest.raises(ValueError, match="num_samples"):
        adaptive_sharpness(model, MSE, data, 0.1, num_samples=0)
    with pytest.raises(TypeError, match="loss_fn"):
        adaptive_sharpness(model, "mse", data, 0.1)
    with pytest.raises(TypeError, match="loss_fn"):
        geodesic_sharpness(model, None, data, 0.1)
    with pytest.raises(TypeError, match="model"):
        adaptive_sharpness(lambda x: x, MSE, data, 0.1)
    with pytest.raises(ValueError, match="rows"):
        adaptive_sharpness(model, MSE, (X, y[:-1]), 0.1)
    with pytest.raises(TypeError, match="data"):
        adaptive_sharpness(model, MSE, 3.0, 0.1)
    with pytest.raises(ValueError, match="empty"):
        adaptive_sharpness(model, MSE, [], 0.1)
    with pytest.raises(ValueError, match="batch_size"):
        adaptive_sharpness(model, MSE, [data], 0.1, batch_size=4)
    with pytest.raises(ValueError, match="scalar"):
        adaptive_sharpness(model, lambda o, t: (o - t) ** 2, data, 0.1)
    with pytest.raises(ValueError, match="adaptive_sharpness"):  # no symmetry to factor out
        geodesic_sharpness(model, MSE, data, 0.1)
    with pytest.raises(ValueError, match="eps"):
        geodesic_sharpness(attention_model(), MSE, attention_data(), 0.1, eps=-1.0)
    with pytest.raises(TypeError, match="objective"):
        auto_pgd(None, AdaptiveGeometry(model), 0.1)
    objective = perturbation_objective(model, MSE, (X, y), AdaptiveGeometry(model))
    with pytest.raises(ValueError, match="num_steps"):
        auto_pgd(objective, AdaptiveGeometry(model), 0.1, num_steps=0)
    with pytest.raises(ValueError, match="rho"):
        auto_pgd(objective, AdaptiveGeometry(model), -0.1)


def test_zero_gradient_start_uses_seeded_random_point():
    """At an interpolating point the gradient at xi = 0 vanishes; Auto-PGD must move off it."""
    model = mlp()
    X, _ = mlp_data()
    with torch.no_grad():
        y = model(X)
    values = [adaptive_sharpness(model, MSE, (X, y), 0.1, "worst", num_steps=8, seed=s)
              for s in (0, 0, 1)]
    assert values[0] > 0 and values[0] == values[1]
    assert values[2] > 0 and values[2] != values[0]


def test_closed_forms_accept_parameters_without_warnings():
    # Parameters (requires_grad=True) go in as they are; no autograd warning may reach
    # stderr (the book turns warnings into build errors).
    import warnings
    g = torch.Generator().manual_seed(0)
    u = nn.Parameter(torch.randn(4, generator=g, dtype=torch.float64))
    v = nn.Parameter(torch.randn(4, generator=g, dtype=torch.float64))
    X = torch.randn(6, 4, generator=g, dtype=torch.float64)
    y = torch.randn(6, generator=g, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for order in (1, 2):
            plain = diagonal_net_sharpness(u.detach(), v.detach(), X, y, 0.1, order=order)
            assert diagonal_net_sharpness(u, v, X, y, 0.1, order=order) == plain


def test_discordant_pairs_counts_oppositely_ordered_pairs():
    from itertools import combinations

    from lib.geometry.sharpness import discordant_pairs
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 5, 12).astype(float), rng.normal(size=12)   # ties in a
    brute = sum((a[i] - a[j]) * (b[i] - b[j]) < 0 for i, j in combinations(range(12), 2))
    assert discordant_pairs(a, b) == brute
    assert discordant_pairs(b, b) == 0 and discordant_pairs(b, -b) == 66
    with pytest.raises(ValueError):
        discordant_pairs([1, 2], [1, 2, 3])
