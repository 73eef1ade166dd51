"""Tests of lib.geometry.quotient: GL(h) and GL(1) quotient geometry and QuotientGeometry.

The references are independent of the library's formulas: metrics are built as dense
matrices of the flattened weights, Christoffel symbols come from ``torch.func.jacfwd``
of them by the textbook formula, and geodesics from ``scipy.integrate.solve_ivp``.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import scipy.integrate
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call, hessian, jacfwd

from lib.book.models import vit
from lib.geometry.attention import AttentionPair, attention_group_action, attention_pairs
from lib.geometry.gl_pairs import (check_full_rank, gl_action, gl_christoffel, gl_horizontal,
                                   gl_metric, gl_riemannian_gradient, gl_vertical)
from lib.geometry.quotient import QuotientGeometry
from lib.geometry.rescale import (rescale_geodesic, rescale_hessian_trace, rescale_horizontal,
                                  rescale_metric, rescale_riemannian_gradient)

DT = torch.float64
METRIC_NAMES = ["inv", "mix"]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _pair(seed, n=4, m=3, h=2, batch=()):
    g = _gen(seed)
    return (torch.randn(*batch, n, h, generator=g, dtype=DT),
            torch.randn(*batch, m, h, generator=g, dtype=DT))


def _invertible(h, seed, batch=()):
    """Well-conditioned random matrix (singular values in [0.5, 2])."""
    g = _gen(seed)
    U, _ = torch.linalg.qr(torch.randn(*batch, h, h, generator=g, dtype=DT))
    V, _ = torch.linalg.qr(torch.randn(*batch, h, h, generator=g, dtype=DT))
    s = 0.5 + 1.5 * torch.rand(*batch, h, generator=g, dtype=DT)
    return U @ torch.diag_embed(s) @ V.mT


def _like(seed, *tensors):
    g = _gen(seed)
    return [torch.randn(t.shape, generator=g, dtype=t.dtype) for t in tensors]


shapes = st.tuples(st.integers(2, 5), st.integers(2, 5), st.integers(1, 3),
                   st.integers(0, 2)).filter(lambda s: s[2] <= min(s[0], s[1]))
seeds = st.integers(0, 2**20)


# --------------------------------------------------------------------------------------
# Dense references
# --------------------------------------------------------------------------------------
def _dense_metric(metric, n, m, h, eps=0.0):
    """``w -> g(w)``: the metric as a dense (D, D) matrix of the row-major flattened (G, H)."""
    I_h = torch.eye(h, dtype=DT)

    def g(w):
        G, H = w[:n * h].reshape(n, h), w[n * h:].reshape(m, h)
        S_G, S_H = G.T @ G + eps * I_h, H.T @ H + eps * I_h
        K_G, K_H = ((torch.linalg.inv(S_G), torch.linalg.inv(S_H)) if metric == "inv"
                    else (S_H, S_G))
        # row-major flattening: Tr(K a^T b) = sum over rows r of a_r K b_r^T
        return torch.block_diag(*[K_G] * n, *[K_H] * m)
    return g


def _christoffel_tensor(g, w):
    """``Gamma^i_kl = 1/2 g^im (d_k g_ml + d_l g_mk - d_m g_kl)`` with d from jacfwd."""
    dg = jacfwd(g)(w)                     # dg[i, j, k] = d_k g_ij
    first = dg.permute(0, 2, 1)           # [m, k, l] = d_k g_ml
    lower = 0.5 * (first + first.permute(0, 2, 1) - dg.permute(2, 0, 1))
    return torch.einsum("im,mkl->ikl", torch.linalg.inv(g(w)), lower)


def _geodesic_ode(g, w0, v0, times):
    """Solve ``w'' = -Gamma(w', w')`` from ``(w0, v0)``; returns the points at ``times``."""
    D = w0.numel()

    def rhs(_, y):
        w, v = torch.from_numpy(y[:D]), torch.from_numpy(y[D:])
        acc = -torch.einsum("ikl,k,l->i", _christoffel_tensor(g, w), v, v)
        return np.concatenate([y[D:], acc.numpy()])

    y0 = np.concatenate([w0.numpy(), v0.numpy()])
    sol = scipy.integrate.solve_ivp(rhs, (0.0, max(times)), y0, method="DOP853",
                                    t_eval=sorted(times), rtol=1e-12, atol=1e-14)
    assert sol.success
    return {t: torch.from_numpy(sol.y[:D, i]) for i, t in enumerate(sol.t)}


# --------------------------------------------------------------------------------------
# 1. The loss does not change under the GL(h) action
# --------------------------------------------------------------------------------------
class _TinyAttention(nn.Module):
    def __init__(self, embed=4, heads=2, bias=True, **kwargs):
        super().__init__()
        self.attn = nn.MultiheadAttention(embed, heads, bias=bias, batch_first=True, **kwargs)
        self.head = nn.Linear(embed, 1)

    def forward(self, x):
        return self.head(self.attn(x, x, x, need_weights=False)[0]).mean(dim=(1, 2))


def _tiny_attention(seed, bias=True, embed=4, heads=2):
    torch.manual_seed(seed)
    model = _TinyAttention(embed, heads, bias).double().eval()
    with torch.no_grad():  # nonzero biases, so the bias rows of G matter
        for name, p in model.named_parameters():
            if "bias" in name:
                p.normal_()
    return model


def _random_actions(model, seed):
    return {(p.module_name, p.head, p.pair_type): _invertible(p.get(dict(model.named_parameters()))
                                                         [0].shape[-1], seed + i)
            for i, p in enumerate(attention_pairs(model))}


@settings(max_examples=8, deadline=None)
@given(seed=seeds, bias=st.booleans())
def test_loss_invariant_under_action_multihead_attention(seed, bias):
    model = _tiny_attention(seed, bias)
    x = torch.randn(3, 5, 4, generator=_gen(seed), dtype=DT)
    before = model(x)
    old = {n: p.detach().clone() for n, p in model.named_parameters()}
    attention_group_action(model, _random_actions(model, seed))
    moved = max(float((p.detach() - old[n]).abs().max()) for n, p in model.named_parameters())
    assert moved > 1e-2  # the weights really changed
    torch.testing.assert_close(model(x), before, rtol=1e-10, atol=1e-12)


def test_loss_invariant_under_action_vit():
    model = vit(1, 3, image_size=4, patch_size=2, dim=8, depth=2, heads=2, mlp_ratio=1,
                seed=0).double().eval()
    x = torch.randn(4, 1, 4, 4, generator=_gen(1), dtype=DT)
    before = model(x)
    pairs = attention_pairs(model)
    assert [(p.module_name, p.head, p.pair_type) for p in pairs][:4] == [
        ("blocks.0.attn", 0, "qk"), ("blocks.0.attn", 0, "vo"),
        ("blocks.0.attn", 1, "qk"), ("blocks.0.attn", 1, "vo")]
    assert len(pairs) == 8
    attention_group_action(model, _random_actions(model, 3))
    torch.testing.assert_close(model(x), before, rtol=1e-10, atol=1e-12)


def test_attention_pair_layout_and_put():
    model = _tiny_attention(0)
    params = {n: p.detach() for n, p in model.named_parameters()}
    E, dh = 4, 2
    W, b = params["attn.in_proj_weight"], params["attn.in_proj_bias"]
    Wo = params["attn.out_proj.weight"]
    qk1, vo1 = attention_pairs(model)[2:4]
    G, H = qk1.get(params)
    torch.testing.assert_close(G, torch.cat([W[dh:2 * dh].T, b[dh:2 * dh][None]]))
    torch.testing.assert_close(H, torch.cat([W[E + dh:E + 2 * dh].T, b[E + dh:E + 2 * dh][None]]))
    G, H = vo1.get(params)
    torch.testing.assert_close(G, torch.cat([W[2 * E + dh:].T, b[2 * E + dh:][None]]))
    torch.testing.assert_close(H, Wo[:, dh:])
    # put: differentiable, the input dict untouched, only this pair changed
    G2 = G.clone().requires_grad_(True)
    new = vo1.put(params, 2 * G2, H)
    assert new["attn.in_proj_weight"] is not W
    torch.testing.assert_close(vo1.get(new)[0], 2 * G)
    torch.testing.assert_close(qk1.get(new)[0], qk1.get(params)[0])
    new["attn.in_proj_weight"].sum().backward()
    assert float(G2.grad[:E].abs().min()) == 2.0 and float(G2.grad[E].abs().max()) == 0.0
    assert isinstance(qk1, AttentionPair)


# --------------------------------------------------------------------------------------
# 2. The metrics are invariant
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("metric", METRIC_NAMES)
@settings(max_examples=10, deadline=None)
@given(shape=shapes, seed=seeds)
def test_metric_invariant_under_action(metric, shape, seed):
    n, m, h, b = shape
    batch = (b,) if b else ()
    G, H = _pair(seed, n, m, h, batch)
    a_G, a_H, b_G, b_H = _like(seed + 1, G, H, G, H)
    A = _invertible(h, seed + 2, batch)
    G2, H2 = gl_action(G, H, A)
    torch.testing.assert_close(G2 @ H2.mT, G @ H.mT)
    a2, b2 = gl_action(a_G, a_H, A), gl_action(b_G, b_H, A)  # dA is the same linear map
    torch.testing.assert_close(gl_metric(G2, H2, *a2, *b2, metric_name=metric),
                               gl_metric(G, H, a_G, a_H, b_G, b_H, metric_name=metric),
                               rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("metric", METRIC_NAMES)
def test_metric_matches_dense_and_is_positive(metric):
    n, m, h = 4, 3, 2
    G, H = _pair(0, n, m, h)
    a_G, a_H, b_G, b_H = _like(1, G, H, G, H)
    gmat = _dense_metric(metric, n, m, h, eps=0.1)(torch.cat([G.flatten(), H.flatten()]))
    a, b = torch.cat([a_G.flatten(), a_H.flatten()]), torch.cat([b_G.flatten(), b_H.flatten()])
    torch.testing.assert_close(gl_metric(G, H, a_G, a_H, b_G, b_H, metric_name=metric, eps=0.1),
                               a @ gmat @ b)
    assert float(gl_metric(G, H, a_G, a_H, a_G, a_H, metric_name=metric)) > 0


def test_inv_metric_with_eps_only_approximately_invariant():
    G, H = _pair(3)
    a_G, a_H = _like(4, G, H)
    A = 3.0 * _invertible(2, 5)

    def change(eps):
        before = gl_metric(G, H, a_G, a_H, a_G, a_H, eps=eps)
        after = gl_metric(*gl_action(G, H, A), *gl_action(a_G, a_H, A),
                          *gl_action(a_G, a_H, A), eps=eps)
        return abs(float(after / before - 1))
    assert change(1e-2) > 1e-2  # not invariant ...
    assert 0 < change(1e-6) < 1e-4  # ... but nearly so for small eps


# --------------------------------------------------------------------------------------
# 3. Horizontal projection
# --------------------------------------------------------------------------------------
def _vertical_basis(G, H):
    h = G.shape[-1]
    for i in range(h):
        for j in range(h):
            X = torch.zeros(*G.shape[:-2], h, h, dtype=DT)
            X[..., i, j] = 1.0
            yield gl_vertical(G, H, X)


@pytest.mark.parametrize("metric", METRIC_NAMES)
@settings(max_examples=10, deadline=None)
@given(shape=shapes, seed=seeds, eps=st.sampled_from([0.0, 1e-3, 0.5]))
def test_horizontal_projection(metric, shape, seed, eps):
    n, m, h, b = shape
    batch = (b,) if b else ()
    G, H = _pair(seed, n, m, h, batch)
    x_G, x_H = _like(seed + 1, G, H)
    kw = dict(metric_name=metric, eps=eps)
    h_G, h_H = gl_horizontal(G, H, x_G, x_H, **kw)
    scale = float(gl_metric(G, H, x_G, x_H, x_G, x_H, **kw).max())
    for v_G, v_H in _vertical_basis(G, H):  # g-orthogonal to every vertical vector
        v_norm = float(gl_metric(G, H, v_G, v_H, v_G, v_H, **kw).max())
        inner = gl_metric(G, H, h_G, h_H, v_G, v_H, **kw)
        assert float(inner.abs().max()) <= 1e-9 * math.sqrt(scale * v_norm) + 1e-12
    # it is a projection: xi - h is vertical, (G L, -H L^T), and projecting again is a no-op
    L = torch.linalg.lstsq(G, h_G - x_G).solution
    torch.testing.assert_close(h_H - x_H, -H @ L.mT, rtol=1e-7, atol=1e-9)
    again = gl_horizontal(G, H, h_G, h_H, **kw)
    torch.testing.assert_close(again[0], h_G, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(again[1], h_H, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("metric", METRIC_NAMES)
def test_horizontal_projection_equivariant(metric):
    G, H = _pair(7, 5, 4, 3, (2,))
    x_G, x_H = _like(8, G, H)
    A = _invertible(3, 9, (2,))
    h = gl_horizontal(G, H, x_G, x_H, metric_name=metric)
    h_moved = gl_horizontal(*gl_action(G, H, A), *gl_action(x_G, x_H, A), metric_name=metric)
    for got, want in zip(h_moved, gl_action(*h, A)):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)


def test_inv_projection_solves_transposed_sylvester_equation():
    """L^T, not L, solves the paper's ``A X + X A^T = B`` with ``A^T`` replaced by ``A``."""
    G, H = _pair(11, 5, 4, 3)
    x_G, x_H = _like(12, G, H)
    h_G, _ = gl_horizontal(G, H, x_G, x_H, metric_name="inv")
    L = torch.linalg.lstsq(G, h_G - x_G).solution
    P, Q = G.T @ G, H.T @ H
    A = P @ Q
    B = P @ H.T @ x_H - x_G.T @ G @ Q
    ref = scipy.linalg.solve_sylvester(A.numpy(), A.numpy(), B.numpy())
    np.testing.assert_allclose(L.T.numpy(), ref, rtol=1e-8, atol=1e-10)
    # the equation as printed under eq. (15) does not hold for generic inputs
    assert float((A @ L + L @ A.T - B).abs().max()) > 1e-3


def test_inv_projection_with_eps_matches_scipy_sylvester():
    eps = 0.3
    G, H = _pair(13, 4, 4, 3)
    x_G, x_H = _like(14, G, H)
    h_G, _ = gl_horizontal(G, H, x_G, x_H, metric_name="inv", eps=eps)
    L = torch.linalg.lstsq(G, h_G - x_G).solution
    I = torch.eye(3, dtype=DT)
    S_G, S_H = G.T @ G + eps * I, H.T @ H + eps * I
    # orthogonality: (S_G H^T H) Y + Y (G^T G S_H) = S_G H^T xi_H - xi_G^T G S_H, Y = L^T
    ref = scipy.linalg.solve_sylvester((S_G @ H.T @ H).numpy(), (G.T @ G @ S_H).numpy(),
                                       (S_G @ H.T @ x_H - x_G.T @ G @ S_H).numpy())
    np.testing.assert_allclose(L.T.numpy(), ref, rtol=1e-8, atol=1e-10)


def test_mix_projection_matches_closed_form():
    G, H = _pair(15, 5, 4, 3)
    x_G, x_H = _like(16, G, H)
    h_G, h_H = gl_horizontal(G, H, x_G, x_H, metric_name="mix")
    L = 0.5 * (x_H.T @ H @ torch.linalg.inv(H.T @ H) - torch.linalg.inv(G.T @ G) @ G.T @ x_G)
    torch.testing.assert_close(h_G, x_G + G @ L)
    torch.testing.assert_close(h_H, x_H - H @ L.T)
    # App. F.2's characterisation of the horizontal space
    torch.testing.assert_close(G.T @ h_G @ H.T @ H, G.T @ G @ h_H.T @ H)


# --------------------------------------------------------------------------------------
# 4. Second-order geodesic step against the geodesic ODE
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("metric", METRIC_NAMES)
@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_christoffel_matches_dense_textbook_formula(metric, eps):
    n, m, h = 3, 3, 2
    G, H = _pair(17, n, m, h)
    x_G, x_H = _like(18, G, H)  # any velocity, not only horizontal ones
    w = torch.cat([G.flatten(), H.flatten()])
    v = torch.cat([x_G.flatten(), x_H.flatten()])
    dense = torch.einsum("ikl,k,l->i", _christoffel_tensor(_dense_metric(metric, n, m, h, eps), w),
                         v, v)
    gam = gl_christoffel(G, H, x_G, x_H, metric_name=metric, eps=eps)
    torch.testing.assert_close(torch.cat([gam[0].flatten(), gam[1].flatten()]), dense,
                               rtol=0, atol=1e-10)


@pytest.mark.parametrize("metric", METRIC_NAMES)
def test_second_order_step_error_is_cubic(metric):
    n, m, h = 3, 3, 2
    G, H = _pair(19, n, m, h)
    xi = gl_horizontal(G, H, *_like(20, G, H), metric_name=metric)
    gam = gl_christoffel(G, H, *xi, metric_name=metric)
    w = torch.cat([G.flatten(), H.flatten()])
    v = torch.cat([xi[0].flatten(), xi[1].flatten()])
    gv = torch.cat([gam[0].flatten(), gam[1].flatten()])
    v, gv = v / v.norm(), gv / v.norm() ** 2  # unit speed in flat coordinates
    s_values = [0.1, 0.05, 0.025]
    # gamma_{s xi}(1) = gamma_xi(s): one ODE solve gives every s
    ends = _geodesic_ode(_dense_metric(metric, n, m, h), w, v, s_values)
    errors = [float((w + s * v - 0.5 * s**2 * gv - ends[s]).norm()) for s in s_values]
    slope = np.polyfit(np.log(s_values), np.log(errors), 1)[0]
    assert 2.8 < slope < 3.2, (errors, slope)
    first_order = [float((w + s * v - ends[s]).norm()) for s in s_values]
    assert all(e2 < 0.2 * e1 for e1, e2 in zip(first_order, errors))


def test_rescale_geodesic_solves_the_ode():
    u = torch.tensor([0.7, -1.3], dtype=DT)
    v = torch.tensor([1.1, 0.4], dtype=DT)
    x_u, x_v = rescale_horizontal(u, v, *_like(21, u, v))
    w, vel = torch.cat([u, v]), torch.cat([x_u, x_v])
    ends = _geodesic_ode(lambda z: torch.diag(1 / z**2), w, vel, [0.5, 1.0])
    for t, point in ends.items():
        got = torch.cat(rescale_geodesic(u, v, x_u, x_v, t=t))
        torch.testing.assert_close(got, point, rtol=1e-9, atol=1e-10)


# --------------------------------------------------------------------------------------
# 5. Riemannian gradients
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("metric", METRIC_NAMES)
@settings(max_examples=10, deadline=None)
@given(shape=shapes, seed=seeds, eps=st.sampled_from([0.0, 0.1]))
def test_riemannian_gradient_represents_euclidean_gradient(metric, shape, seed, eps):
    n, m, h, b = shape
    G, H = _pair(seed, n, m, h, (b,) if b else ())
    g_G, g_H, v_G, v_H = _like(seed + 1, G, H, G, H)
    r = gl_riemannian_gradient(G, H, g_G, g_H, metric_name=metric, eps=eps)
    euclid = (g_G * v_G).sum((-2, -1)) + (g_H * v_H).sum((-2, -1))
    torch.testing.assert_close(gl_metric(G, H, *r, v_G, v_H, metric_name=metric, eps=eps), euclid)


def test_rescale_riemannian_gradient_and_horizontal():
    u, v = torch.tensor([0.5, -2.0, 1.5], dtype=DT), torch.tensor([1.0, 0.3, -0.8], dtype=DT)
    g_u, g_v, a_u, a_v = _like(22, u, v, u, v)
    r = rescale_riemannian_gradient(u, v, g_u, g_v)
    torch.testing.assert_close(rescale_metric(u, v, *r, a_u, a_v), (g_u * a_u + g_v * a_v).sum())
    h_u, h_v = rescale_horizontal(u, v, a_u, a_v)
    torch.testing.assert_close(h_u / u, h_v / v)
    X = torch.randn(3, generator=_gen(23), dtype=DT)  # vertical: (u X, -v X)
    torch.testing.assert_close(rescale_metric(u, v, h_u, h_v, u * X, -v * X),
                               torch.zeros((), dtype=DT), atol=1e-12, rtol=0)
    B = h_u / u
    torch.testing.assert_close(rescale_metric(u, v, h_u, h_v, h_u, h_v), 2 * (B**2).sum())


# --------------------------------------------------------------------------------------
# 6. QuotientGeometry on a tiny ViT
# --------------------------------------------------------------------------------------
def _tiny_vit(seed=0):
    model = vit(1, 3, image_size=4, patch_size=2, dim=8, depth=1, heads=2, mlp_ratio=1,
                seed=seed).double().eval()
    with torch.no_grad():  # trained-looking weights: no exactly-zero biases
        for name, p in model.named_parameters():
            if "bias" in name:
                p.normal_(0, 0.1, generator=_gen(seed + 1))
    return model


def _random_vector(geo, seed):
    g = _gen(seed)
    return {n: torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in geo.params.items()}


def _attention_vector(geo, seed):
    """Random in the attention weights, zero elsewhere (so the attention part is not
    dwarfed by small "other" weights, whose adaptive norm is large)."""
    return {n: t if ".attn." in n and "out_proj.bias" not in n else torch.zeros_like(t)
            for n, t in _random_vector(geo, seed).items()}


def _map_vector(model, xi, actions):
    """Push a tangent vector forward by the action (the same linear map on each pair)."""
    out = dict(xi)
    for pair in attention_pairs(model):
        out = pair.put(out, *gl_action(*pair.get(xi), actions[(pair.module_name, pair.head,
                                                                pair.pair_type)]))
    return out


def _loss(model, params, x, y):
    return nn.functional.cross_entropy(functional_call(model, params, (x,)), y)


@pytest.mark.parametrize("metric", METRIC_NAMES)
def test_geometry_protocol_on_vit(metric):
    model = _tiny_vit()
    geo = QuotientGeometry(model, metric_name=metric)
    xi = _random_vector(geo, 0)
    rho = 0.05
    p = geo.project(xi, rho)
    assert float(geo.norm(p)) == pytest.approx(rho, rel=1e-12)  # a random xi is far outside
    small = {k: 1e-6 * t for k, t in p.items()}
    for k, t in geo.project(small, rho).items():  # inside the ball: unchanged
        torch.testing.assert_close(t, small[k], rtol=1e-9, atol=1e-18)
    for pair in attention_pairs(model):  # horizontal
        G, H = pair.get(geo.params)
        for v_G, v_H in _vertical_basis(G, H):
            assert abs(float(gl_metric(G, H, *pair.get(p), v_G, v_H, metric_name=metric,
                                       eps=geo.eps))) < 1e-10
    d = geo.ascent_direction(xi)
    assert float(geo.norm(d)) == pytest.approx(1.0, rel=1e-12)
    zero = {k: torch.zeros_like(t) for k, t in xi.items()}
    assert all(float(t.abs().max()) == 0 for t in geo.ascent_direction(zero).values())
    perturbed = geo.perturb(zero)
    for name, w in model.named_parameters():
        assert torch.equal(perturbed[name], w.detach())
    r = geo.random(0.3, _gen(5))
    assert float(geo.norm(r)) == pytest.approx(0.3, rel=1e-12)
    torch.testing.assert_close(geo.horizontal(r), r)


def test_geometry_perturb_is_differentiable_and_second_order():
    model = _tiny_vit()
    geo = QuotientGeometry(model)
    x = torch.randn(6, 1, 4, 4, generator=_gen(2), dtype=DT)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    xi = {k: t.requires_grad_(True) for k, t in geo.project(_attention_vector(geo, 3), 0.5).items()}
    _loss(model, geo.perturb(xi), x, y).backward()
    assert all(t.grad is not None and bool(torch.isfinite(t.grad).all()) for t in xi.values())
    # attention blocks follow w + xi - Gamma/2, other weights the straight line
    pert = geo.perturb({k: t.detach() for k, t in xi.items()})
    pair = attention_pairs(model)[0]
    G, H = pair.get(geo.params)
    gam = gl_christoffel(G, H, *(t.detach() for t in pair.get(xi)), eps=geo.eps)
    assert float(gam[0].abs().max()) > 1e-3
    torch.testing.assert_close(pair.get(pert)[0], G + pair.get(xi)[0].detach() - gam[0] / 2)
    name = "head.weight"
    torch.testing.assert_close(pert[name], geo.params[name] + xi[name].detach())


@pytest.mark.parametrize("metric", METRIC_NAMES)
def test_geometry_equivariant_under_action(metric):
    model = _tiny_vit(4)
    moved = copy.deepcopy(model)
    actions = _random_actions(model, 6)
    attention_group_action(moved, actions)
    geo, geo_moved = (QuotientGeometry(mod, metric_name=metric, eps=0.0) for mod in (model, moved))
    xi = {n: t + _random_vector(geo, 10)[n] for n, t in _attention_vector(geo, 7).items()}
    xi_moved = _map_vector(model, xi, actions)
    torch.testing.assert_close(geo_moved.norm(xi_moved), geo.norm(xi))
    h, h_moved = geo.project(xi, 0.5), geo_moved.project(xi_moved, 0.5)
    mapped = _map_vector(model, h, actions)
    for k in h:
        torch.testing.assert_close(h_moved[k], mapped[k], rtol=1e-8, atol=1e-10)
    x = torch.randn(5, 1, 4, 4, generator=_gen(8), dtype=DT)
    y = torch.tensor([0, 1, 2, 1, 0])
    # Gamma is equivariant, so the perturbed models are again on one orbit
    a, b = _loss(model, geo.perturb(h), x, y), _loss(moved, geo_moved.perturb(h_moved), x, y)
    assert float(abs(a - b)) < 1e-11
    assert float(abs(a - _loss(model, geo.params, x, y))) > 1e-4


def test_geometry_ablation_flags():
    model = _tiny_vit()
    xi = _random_vector(QuotientGeometry(model), 9)
    flat = QuotientGeometry(model, geodesic_norm=False, second_order=False)
    h = flat.horizontal(xi)
    adaptive = sum(((h[n] / p.abs()) ** 2).sum() for n, p in flat.params.items()).sqrt()
    torch.testing.assert_close(flat.norm(h), adaptive)
    pert = flat.perturb(h)
    for n, p in flat.params.items():
        torch.testing.assert_close(pert[n], p + h[n])
    d = flat.ascent_direction(xi)
    assert float(flat.norm(d)) == pytest.approx(1.0)


def _dense_horizontal_basis(geo, model, metric, eps):
    """Orthonormal basis (columns) of the horizontal space of the whole model, flattened in
    the order of ``geo.params``: the null space of the functionals ``xi -> <xi, v>_metric``
    over every vertical basis vector ``v`` of every attention pair (other weights free)."""
    names = list(geo.params)
    sizes = [geo.params[n].numel() for n in names]
    rows = []
    for pair in attention_pairs(model):
        G, H = pair.get(geo.params)
        for v_G, v_H in _vertical_basis(G, H):
            flat = torch.zeros(sum(sizes), dtype=DT, requires_grad=True)
            xi = dict(zip(names, (t.reshape(geo.params[n].shape)
                                  for n, t in zip(names, flat.split(sizes)))))
            value = gl_metric(G, H, *pair.get(xi), v_G, v_H, metric_name=metric, eps=eps)
            rows.append(torch.autograd.grad(value, flat)[0])
    return torch.as_tensor(scipy.linalg.null_space(torch.stack(rows).numpy(), rcond=1e-10))


@pytest.mark.parametrize("metric", METRIC_NAMES)
def test_adaptive_norm_ablation_projects_orthogonally_in_the_adaptive_norm(metric):
    # geodesic_norm=False: horizontal vectors of the metric, measured in the adaptive norm.
    # The projection must be the orthogonal one *in that norm*, so that the normalised
    # projected gradient is the steepest ascent direction of the ablated ball. Reference:
    # a dense basis B of the horizontal space; with A = diag(1 / w^2) the projector is
    # B (B^T A B)^-1 B^T A and max{<g, d> : d horizontal, |d|_A <= 1} = |B^T g|_(B^T A B)^-1.
    model = _tiny_vit(3)
    geo = QuotientGeometry(model, metric_name=metric, geodesic_norm=False)
    B = _dense_horizontal_basis(geo, model, metric, geo.eps)
    w = torch.cat([p.reshape(-1) for p in geo.params.values()])
    A = torch.diag(w ** -2)
    flat = lambda d: torch.cat([d[n].reshape(-1) for n in geo.params])
    xi = _random_vector(geo, 4)
    projector = B @ torch.linalg.solve(B.T @ A @ B, B.T @ A)
    torch.testing.assert_close(flat(geo.horizontal(xi)), projector @ flat(xi), rtol=1e-7, atol=1e-9)
    grad = _random_vector(geo, 5)
    g = flat(grad)
    best = float((B.T @ g) @ torch.linalg.solve(B.T @ A @ B, B.T @ g)) ** 0.5
    d = geo.ascent_direction(grad)
    assert float(geo.norm(d)) == pytest.approx(1.0, rel=1e-10)
    assert float(g @ flat(d)) == pytest.approx(best, rel=1e-8)
    assert float((B @ (B.T @ flat(d)) - flat(d)).abs().max()) < 1e-9       # horizontal


def test_geometry_zero_weights_do_not_move():
    model = vit(1, 3, image_size=4, patch_size=2, dim=8, depth=1, heads=2, mlp_ratio=1,
                seed=0).double()  # out_proj.bias is zero at initialization
    geo = QuotientGeometry(model)
    assert float(geo.params["blocks.0.attn.out_proj.bias"].abs().max()) == 0
    p = geo.project(_random_vector(geo, 1), 0.1)
    assert float(p["blocks.0.attn.out_proj.bias"].abs().max()) == 0
    assert float(geo.norm(p)) == pytest.approx(0.1)
    flat = QuotientGeometry(model, geodesic_norm=False)  # zero bias rows of G stay zero
    assert float(flat.norm(flat.project(_random_vector(geo, 1), 0.1))) == pytest.approx(0.1)
    # an "other" weight that is exactly zero: moving it has infinite norm, and the
    # horizontal part and the Riemannian gradient leave it at zero
    with torch.no_grad():
        model.head.bias[1] = 0.0
    geo = QuotientGeometry(model)
    xi = _random_vector(geo, 2)
    assert float(geo.norm(xi)) == math.inf
    for t in (geo.horizontal(xi), geo.riemannian_gradient(xi), geo.project(xi, 0.1)):
        assert float(t["head.bias"][1]) == 0.0 and float(t["head.bias"][0]) != 0.0
    assert math.isfinite(float(geo.norm(geo.horizontal(xi))))


class _DiagonalNet(nn.Module):
    rescale_pairs = (("u", "v"),)

    def __init__(self, d, seed):
        super().__init__()
        g = _gen(seed)
        self.u = nn.Parameter(torch.randn(d, generator=g, dtype=DT))
        self.v = nn.Parameter(torch.randn(d, generator=g, dtype=DT))
        self.scale = nn.Parameter(torch.ones((), dtype=DT))

    def forward(self, x):
        return self.scale * (x @ (self.u * self.v))


def test_geometry_rescale_pairs():
    model = _DiagonalNet(4, 0)
    geo = QuotientGeometry(model)
    xi = _random_vector(geo, 1)
    h = geo.horizontal(xi)
    u, v = geo.params["u"], geo.params["v"]
    torch.testing.assert_close(h["u"] / u, h["v"] / v)
    B = h["u"] / u
    norm_sq = 2 * (B**2).sum() + (h["scale"] / geo.params["scale"]) ** 2
    torch.testing.assert_close(geo.norm(h) ** 2, norm_sq)
    pert = geo.perturb(h)
    torch.testing.assert_close(pert["u"], u * torch.exp(B))
    torch.testing.assert_close(pert["u"] * pert["v"], u * v * torch.exp(2 * B))
    straight = QuotientGeometry(model, second_order=False).perturb(h)
    torch.testing.assert_close(straight["u"], u + h["u"])
    frozen = _DiagonalNet(4, 0)
    frozen.scale.requires_grad_(False)
    geo = QuotientGeometry(frozen)
    assert "scale" not in geo.params and "scale" in geo.perturb(geo.random(0.1, _gen(0)))


def test_geometry_float32():
    model = _tiny_vit().float()
    geo = QuotientGeometry(model, metric_name="inv")
    r = geo.random(0.2, _gen(0))
    assert all(t.dtype == torch.float32 for t in r.values())
    assert float(geo.norm(r)) == pytest.approx(0.2, rel=1e-4)
    assert float(geo.norm(geo.ascent_direction(_random_vector(geo, 1)))) == pytest.approx(
        1.0, rel=1e-4)


# --------------------------------------------------------------------------------------
# 7. Bad inputs
# --------------------------------------------------------------------------------------
def test_bad_eps_and_rank():
    G, H = _pair(0)
    with pytest.raises(ValueError, match="eps"):
        check_full_rank(G, H, -1e-3)
    with pytest.raises(ValueError, match="eps"):
        gl_metric(G, H, G, H, G, H, eps=-1.0)
    low = G[:, :1] @ torch.ones(1, 2, dtype=DT)  # rank 1 < h = 2
    with pytest.raises(ValueError, match="G is rank-deficient.*eps > 0"):
        check_full_rank(low, H, 0.0)
    check_full_rank(low, H, 1e-6)
    with pytest.raises(ValueError, match="H is rank-deficient"):
        check_full_rank(G, torch.zeros_like(H), 0.0)
    model = _tiny_attention(0)
    with torch.no_grad():
        model.attn.out_proj.weight[:, :2] = 0.0  # head 0's H of the VO pair
    with pytest.raises(ValueError, match="rank-deficient"):
        QuotientGeometry(model, eps=0.0)
    QuotientGeometry(model, eps=1e-6)


def test_bad_models_and_arguments():
    with pytest.raises(ValueError, match="no trainable attention.*adaptive_sharpness"):
        QuotientGeometry(nn.Linear(3, 2))
    with pytest.raises(ValueError, match="metric_name must be one of"):
        QuotientGeometry(_tiny_attention(0), metric_name="euclid")
    with pytest.raises(ValueError, match="metric_name must be one of"):
        gl_metric(*_pair(0), *_pair(0), *_pair(0), metric_name="foo")
    with pytest.raises(ValueError, match="unknown symmetries"):
        QuotientGeometry(_tiny_attention(0), symmetries=["conv"])
    with pytest.raises(ValueError, match="no trainable"):
        QuotientGeometry(_tiny_attention(0), symmetries=["rescale"])
    with pytest.raises(TypeError, match="model"):
        QuotientGeometry("model")
    with pytest.raises(TypeError, match="metric_name"):
        QuotientGeometry(_tiny_attention(0), metric_name=1)
    with pytest.raises(TypeError, match="eps"):
        QuotientGeometry(_tiny_attention(0), eps="0")
    with pytest.raises(TypeError, match="G"):
        gl_horizontal(np.ones((3, 2)), torch.ones(3, 2), torch.ones(3, 2), torch.ones(3, 2))
    with pytest.raises(ValueError, match="share"):
        gl_horizontal(torch.ones(3, 2), torch.ones(3, 3), torch.ones(3, 2), torch.ones(3, 3))
    with pytest.raises(ValueError, match="xi_H"):
        gl_horizontal(*_pair(0), *_pair(0)[:1], torch.ones(2, 2, dtype=DT))
    with pytest.raises(ValueError, match="zero entries"):
        rescale_hessian_trace(lambda u, v: (u * v).sum(), torch.zeros(2), torch.ones(2))
    geo = QuotientGeometry(_tiny_attention(0))
    xi = _random_vector(geo, 0)
    with pytest.raises(ValueError, match="missing"):
        geo.norm({k: t for k, t in list(xi.items())[1:]})
    with pytest.raises(TypeError, match="xi"):
        geo.perturb([1, 2])
    with pytest.raises(ValueError, match="rho"):
        geo.project(xi, 0.0)
    with pytest.raises(TypeError, match="generator"):
        geo.random(0.1, 3)
    with pytest.raises(ValueError, match="unknown attention pairs"):
        attention_group_action(_tiny_attention(0), {("nope", 0, "qk"): torch.eye(2)})


@pytest.mark.parametrize("kwargs, match", [
    (dict(add_bias_kv=True), "add_bias_kv"),
    (dict(kdim=3, vdim=5), "separate q, k, v"),
])
def test_unsupported_attention_variants(kwargs, match):
    model = nn.Sequential(nn.MultiheadAttention(4, 2, **kwargs))
    with pytest.raises(ValueError, match=match):
        attention_pairs(model)
    with pytest.raises(ValueError, match=match):
        QuotientGeometry(model)


# --------------------------------------------------------------------------------------
# 8. Trace of the Riemannian Hessian for rescale pairs
# --------------------------------------------------------------------------------------
def _dense_riemannian_hessian_trace(f, u, v):
    w = torch.cat([u.reshape(-1), v.reshape(-1)])
    d = u.numel()

    def flat(z):
        return f(z[:d].reshape(u.shape), z[d:].reshape(v.shape))

    def metric(z):
        return torch.diag(1 / z**2)
    grad = torch.func.grad(flat)(w)
    covariant = hessian(flat)(w) - torch.einsum("kij,k->ij", _christoffel_tensor(metric, w), grad)
    return torch.trace(torch.linalg.inv(metric(w)) @ covariant)


def _toy_loss(x, y):
    return lambda G, H: ((G * H * x - y) ** 2).mean()


def _diag_net_loss(X, y):
    return lambda u, v: ((X @ (u * v) - y) ** 2).mean()


def test_rescale_hessian_trace_matches_dense():
    g = _gen(0)
    X, y = torch.randn(7, 3, generator=g, dtype=DT), torch.randn(7, generator=g, dtype=DT)
    u, v = torch.randn(3, generator=g, dtype=DT), torch.randn(3, generator=g, dtype=DT)
    f = _diag_net_loss(X, y)
    torch.testing.assert_close(rescale_hessian_trace(f, u, v),
                               _dense_riemannian_hessian_trace(f, u, v))
    f = _toy_loss(torch.randn(5, generator=g, dtype=DT), torch.randn(5, generator=g, dtype=DT))
    G, H = torch.tensor(0.8, dtype=DT), torch.tensor(-1.7, dtype=DT)
    torch.testing.assert_close(rescale_hessian_trace(f, G, H),
                               _dense_riemannian_hessian_trace(f, G, H))


@settings(max_examples=10, deadline=None)
@given(seed=seeds, a=st.floats(0.05, 20.0))
def test_rescale_hessian_trace_invariant_along_orbit(seed, a):
    g = _gen(seed)
    x, y = torch.randn(6, generator=g, dtype=DT), torch.randn(6, generator=g, dtype=DT)
    f = _toy_loss(x, y)
    G, H = 0.5 + torch.rand((), generator=g, dtype=DT), 0.5 + torch.rand((), generator=g, dtype=DT)
    base = rescale_hessian_trace(f, G, H)
    torch.testing.assert_close(rescale_hessian_trace(f, a * G, H / a), base, rtol=1e-9,
                               atol=1e-12)

    def euclid(G, H):
        return torch.trace(hessian(lambda z: f(z[0], z[1]))(torch.stack([G, H])))
    if abs(a - 1) > 0.1:  # the Euclidean trace is not invariant
        assert abs(float(euclid(a * G, H / a) - euclid(G, H))) > 1e-6 * abs(float(euclid(G, H)))


def test_rescale_hessian_trace_simple_cases():
    u, v = torch.tensor([2.0, -1.0], dtype=DT), torch.tensor([0.5, 3.0], dtype=DT)
    # f = sum(u): Laplacian in log|u| of sum(u) is sum(u)
    torch.testing.assert_close(rescale_hessian_trace(lambda a, b: a.sum(), u, v), u.sum())
    # f = sum(u^2 v^2) = sum(e^{2 s_u + 2 s_v}): Laplacian 8 sum(u^2 v^2)
    torch.testing.assert_close(rescale_hessian_trace(lambda a, b: (a * b).pow(2).sum(), u, v),
                               8 * (u * v).pow(2).sum())


def test_low_level_functions_check_rank_without_eps():
    G, H = _pair(0)
    low = G[:, :1] @ torch.ones(1, 2, dtype=DT)
    for fn in (gl_horizontal, gl_christoffel, gl_riemannian_gradient):
        with pytest.raises(ValueError, match="rank-deficient"):
            fn(low, H, G, H, metric_name="mix")
        fn(low, H, G, H, metric_name="mix", eps=1e-3)


def test_metric_forward_mode_derivative_matches_reverse_mode():
    # Forward-mode AD (jvp, hessian) through the metric must agree with reverse mode;
    # torch.cholesky_inverse once broke this.
    g = torch.Generator().manual_seed(3)
    G, H, aG, aH = (torch.randn(4, 2, generator=g, dtype=torch.float64) for _ in range(4))
    dG = torch.randn(4, 2, generator=g, dtype=torch.float64)

    def f(G):
        return gl_metric(G, H, aG, aH, aG, aH, metric_name="inv", eps=0.0)

    _, forward = torch.func.jvp(f, (G,), (dG,))
    reverse = (torch.func.grad(f)(G) * dG).sum()
    assert torch.allclose(forward, reverse, rtol=1e-10, atol=1e-12)
