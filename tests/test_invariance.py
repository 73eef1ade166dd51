"""Tests of lib.geometry.invariance: metrics, transformation rules and the invariant operator G^-1 H.

The psi-coordinate Hessians in the invariance tests are computed by autodiff of
``L(phi^-1(psi))``, never by the transformation rule, so the tests can fail.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import hessian as autodiff_hessian

from lib.curvature import ggn
from lib.geometry.invariance import (check_critical_point, dense_metric, diagonal_metric,
                            euclidean_metric, hessian_operator, pullback_metric,
                            transform_covector, transform_density_lebesgue,
                            transform_density_riemannian, transform_hessian_at_critical_point,
                            transform_vector)
from lib.operators import DenseOperator, IdentityOperator, LinearOperator
from lib.geometry.reparam import Elementwise, LinearMap, Scaling

DT = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _spd(d, seed, lo=0.5, hi=5.0):
    g = _gen(seed)
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=DT))
    ev = lo + (hi - lo) * torch.rand(d, generator=g, dtype=DT)
    return Q @ torch.diag(ev) @ Q.T


def _sym(d, seed):
    B = torch.randn(d, d, generator=_gen(seed), dtype=DT)
    return B + B.T


def _well_conditioned(d, seed, lo, hi):
    g = _gen(seed)
    U, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=DT))
    V, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=DT))
    s = lo + (hi - lo) * torch.rand(d, generator=g, dtype=DT)
    return U @ torch.diag(s) @ V.T


def _rel(a, b):
    a, b = float(a), float(b)
    return abs(a - b) / max(abs(b), 1e-300)


class _OpaqueOperator(LinearOperator):
    """A symmetric operator known only by products (no factorization available)."""

    def __init__(self, M):
        super().__init__(M.shape[0], M.dtype, M.device, True)
        self.M = M

    def _matmat(self, V):
        return self.M @ V


# --------------------------------------------------------------------------------------
# The paper's worked example (App. A) and the scaling law of the raw trace
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("d", range(1, 7))
def test_worked_example_determinants(d):
    loss = lambda theta: (theta ** 2).sum()  # noqa: E731
    phi = Scaling(3.0)
    theta = torch.zeros(d, dtype=DT)  # the minimum
    psi = phi.forward(theta)
    H_theta = autodiff_hessian(loss)(theta)
    H_psi = autodiff_hessian(lambda p: loss(phi.inverse(p)))(psi)
    assert float(torch.linalg.det(H_theta)) == pytest.approx(2.0 ** d, rel=1e-14)
    assert float(torch.linalg.det(H_psi)) == pytest.approx((2.0 / 9.0) ** d, rel=1e-13)
    G_theta = euclidean_metric(d)
    G_psi = pullback_metric(G_theta, phi, theta)
    torch.testing.assert_close(G_psi.to_dense(), torch.eye(d, dtype=DT) / 9, rtol=1e-15, atol=0)
    E_theta = hessian_operator(H_theta, G_theta)
    E_psi = hessian_operator(H_psi, G_psi)
    for E in (E_theta, E_psi):
        assert math.exp(E.logdet()) == pytest.approx(2.0 ** d, rel=1e-13)
        assert float(torch.linalg.det(E.to_dense())) == pytest.approx(2.0 ** d, rel=1e-13)


@pytest.mark.parametrize("c", [3.0, 0.5, -2.0, 10.0])
def test_scaling_divides_raw_trace_by_c_squared(c):
    d = 5
    A = _spd(d, 0)
    loss = lambda theta: 0.5 * theta @ A @ theta  # noqa: E731
    theta = torch.zeros(d, dtype=DT)
    phi = Scaling(c)
    H_theta = autodiff_hessian(loss)(theta)
    H_psi = autodiff_hessian(lambda p: loss(phi.inverse(p)))(phi.forward(theta))
    assert _rel(torch.trace(H_psi), torch.trace(H_theta) / c ** 2) < 1e-14
    for metric in (None, torch.rand(d, generator=_gen(1), dtype=DT) + 0.1, _spd(d, 2)):
        G = hessian_operator(H_theta, metric).G
        E_theta = hessian_operator(H_theta, G)
        E_psi = hessian_operator(H_psi, pullback_metric(G, phi, theta))
        assert _rel(E_psi.trace(), E_theta.trace()) < 1e-13


# --------------------------------------------------------------------------------------
# Generalized eigenvalues
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["diagonal", "dense", "pullback", "tensor-diagonal"])
def test_generalized_eigenvalues_match_scipy(kind):
    d, k = 9, 4
    H = _sym(d, 10)
    if kind in ("diagonal", "tensor-diagonal"):
        values = torch.rand(d, generator=_gen(11), dtype=DT) + 0.2
        G_dense = torch.diag(values)
        metric = diagonal_metric(values) if kind == "diagonal" else values
    elif kind == "dense":
        G_dense = _spd(d, 12)
        metric = dense_metric(G_dense)
    else:  # a dense metric pulled back through softplus: an operator with a known factor
        theta = torch.randn(d, generator=_gen(13), dtype=DT)
        phi = Elementwise("softplus")
        base = _spd(d, 14)
        metric = pullback_metric(base, phi, theta)
        J_inv = torch.linalg.inv(phi.jacobian(theta))
        G_dense = J_inv.T @ base @ J_inv
    want = scipy.linalg.eigh(H.numpy(), G_dense.numpy(), eigvals_only=True)[::-1][:k]
    E = hessian_operator(H, metric)
    for method in ("lanczos", "exact"):
        got = E.eigvalsh(k, method=method).flip(0)  # ascending
        assert got.shape == (k,)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-9, atol=1e-11)
    # and the dense G^-1 H has the same spectrum
    ev = np.sort(np.linalg.eigvals(E.to_dense().numpy()).real)[::-1][:k]
    np.testing.assert_allclose(ev, want, rtol=1e-9, atol=1e-11)


def test_trace_methods_agree():
    d = 12
    H, G = _spd(d, 20), _spd(d, 21)
    want = float(torch.trace(torch.linalg.solve(G, H)))
    E = hessian_operator(H, G)
    assert _rel(E.trace(method="exact"), want) < 1e-12
    assert _rel(E.trace(method="hutchpp", num_probes=3 * d), want) < 1e-10  # sketch spans R^d
    assert _rel(E.trace(method="hutchinson", num_probes=4000), want) < 0.05


def test_operator_metric_trace_logdet_and_eigvalsh():
    d = 8
    H, M = _spd(d, 30), _spd(d, 31)
    G = _OpaqueOperator(M)
    E = hessian_operator(H, G)
    want_trace = float(torch.trace(torch.linalg.solve(M, H)))
    assert _rel(E.trace(method="exact"), want_trace) < 1e-8
    assert _rel(E.trace(method="hutchpp", num_probes=3 * d), want_trace) < 1e-8
    want_logdet = float(torch.logdet(H) - torch.logdet(M))
    assert abs(E.logdet(method="exact") - want_logdet) < 1e-10
    want_ev = scipy.linalg.eigh(H.numpy(), M.numpy(), eigvals_only=True)[::-1][:3]
    np.testing.assert_allclose(E.eigvalsh(3, method="exact").flip(0).numpy(), want_ev, rtol=1e-10)
    # matrix-free: Lanczos in the G-inner product, never factorizing G
    np.testing.assert_allclose(E.eigvalsh(3).flip(0).numpy(), want_ev, rtol=1e-8)


def test_operator_metric_eigvalsh_indefinite_hessian():
    """Generalized Lanczos finds the largest eigenvalues also when H is indefinite."""
    d = 30
    g = _gen(35)
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=DT))
    H = Q @ torch.diag(torch.linspace(-3.0, 10.0, d, dtype=DT) ** 3) @ Q.T
    M = _spd(d, 36, 0.05, 20.0)  # ill-conditioned metric
    want = scipy.linalg.eigh(H.numpy(), M.numpy(), eigvals_only=True)[::-1][:5]
    got = hessian_operator(H, _OpaqueOperator(M)).eigvalsh(5).flip(0)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-7)


def test_operator_metric_pulled_back_keeps_trace_and_logdet():
    d = 5
    A, M = _spd(d, 32), _spd(d, 33)
    b = torch.randn(d, generator=_gen(34), dtype=DT)
    theta_star = torch.linalg.solve(A, b)
    loss = lambda theta: 0.5 * theta @ A @ theta - b @ theta  # noqa: E731
    phi = Elementwise("softplus")
    H_psi = autodiff_hessian(lambda p: loss(phi.inverse(p)))(phi.forward(theta_star))
    E_theta = hessian_operator(A, _OpaqueOperator(M))
    E_psi = hessian_operator(H_psi, pullback_metric(_OpaqueOperator(M), phi, theta_star))
    assert E_psi.whitened is None  # no factorization: CG solves
    assert _rel(E_psi.trace(), E_theta.trace()) < 1e-8
    assert abs(E_psi.logdet() - E_theta.logdet()) < 1e-9


def test_ggn_with_damping_as_metric():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    X = torch.randn(20, 3, dtype=DT)
    y = torch.randn(20, 2, dtype=DT)
    d = sum(p.numel() for p in model.parameters())
    G_op = ggn(model, nn.MSELoss(), (X, y)) + 0.1 * IdentityOperator(d, dtype=DT)
    H = _spd(d, 40)
    E = hessian_operator(H, G_op)
    G_dense = G_op.to_dense()
    want = float(torch.trace(torch.linalg.solve(G_dense, H)))
    assert _rel(E.trace(method="exact"), want) < 1e-7
    assert abs(E.logdet(method="exact") - float(torch.logdet(H) - torch.logdet(G_dense))) < 1e-8
    want_ev = scipy.linalg.eigh(H.numpy(), G_dense.numpy(), eigvals_only=True)[::-1][:4]
    np.testing.assert_allclose(E.eigvalsh(4).flip(0).numpy(), want_ev, rtol=1e-7)


def test_slq_logdet_close_to_exact():
    d = 60
    H, G = _spd(d, 50, 1.0, 3.0), _spd(d, 51, 1.0, 2.0)
    E = hessian_operator(H, G)
    exact = E.logdet(method="exact")
    assert abs(E.logdet(method="slq", num_probes=30, num_steps=30) - exact) < 0.05 * abs(exact) + 0.5
    E_op = hessian_operator(H, _OpaqueOperator(G))
    assert abs(E_op.logdet(method="slq", num_probes=30, num_steps=30) - exact) < 0.05 * abs(exact) + 0.5


# --------------------------------------------------------------------------------------
# Property tests: invariance at a minimum under random reparametrizations
# --------------------------------------------------------------------------------------
def _random_reparam(kind, d, seed):
    g = _gen(seed)
    if kind == "scaling":
        mag = 1.5 + 1.5 * torch.rand(d, generator=g, dtype=DT)
        sign = torch.where(torch.rand(d, generator=g, dtype=DT) < 0.5, -1.0, 1.0).to(DT)
        return Scaling(mag * sign)
    if kind == "linear":  # singular values in [1.5, 3]: J^-T H J^-1 <= H / 2.25
        return LinearMap(_well_conditioned(d, seed, 1.5, 3.0))
    return Elementwise("softplus")  # J = sigmoid < 1: the raw trace grows


def _random_metric(kind, d, seed):
    if kind == "euclidean":
        return euclidean_metric(d)
    if kind == "diagonal":
        return diagonal_metric(0.1 + torch.rand(d, generator=_gen(seed), dtype=DT))
    if kind == "operator":  # no factorization: Lanczos in the G-inner product with CG
        return _OpaqueOperator(_spd(d, seed, 0.3, 3.0))
    return dense_metric(_spd(d, seed, 0.3, 3.0))


def _check_invariance(loss, theta_star, reparam, metric, k):
    grad = torch.func.grad(loss)(theta_star)
    assert float(grad.norm()) < 1e-10
    H_theta = autodiff_hessian(loss)(theta_star)
    psi_star = reparam.forward(theta_star)
    H_psi = autodiff_hessian(lambda p: loss(reparam.inverse(p)))(psi_star)
    E_theta = hessian_operator(H_theta, metric, gradient=grad, tol=1e-10)
    E_psi = hessian_operator(H_psi, pullback_metric(metric, reparam, theta_star))
    assert _rel(E_psi.trace(), E_theta.trace()) < 1e-8
    np.testing.assert_allclose(E_psi.eigvalsh(k).numpy(), E_theta.eigvalsh(k).numpy(), rtol=1e-8)
    assert _rel(E_psi.logdet(), E_theta.logdet()) < 1e-8 or \
        abs(E_psi.logdet() - E_theta.logdet()) < 1e-9
    # the raw Hessian (implicit Euclidean metric in each chart) is not invariant
    assert _rel(torch.trace(H_psi), torch.trace(H_theta)) > 1e-3


@settings(derandomize=True, max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), d=st.integers(1, 6),
       reparam_kind=st.sampled_from(["scaling", "linear", "softplus"]),
       metric_kind=st.sampled_from(["euclidean", "diagonal", "dense", "operator"]))
def test_invariance_quadratic(seed, d, reparam_kind, metric_kind):
    A = _spd(d, seed)
    b = torch.randn(d, generator=_gen(seed + 1), dtype=DT)
    theta_star = torch.linalg.solve(A, b)
    loss = lambda theta: 0.5 * theta @ A @ theta - b @ theta  # noqa: E731
    reparam = _random_reparam(reparam_kind, d, seed + 2)
    _check_invariance(loss, theta_star, reparam, _random_metric(metric_kind, d, seed + 3), min(d, 3))


def _logistic_problem(seed, d, n=25, lam=1.0):
    g = _gen(seed)
    X = torch.randn(n, d, generator=g, dtype=DT)
    y = (torch.rand(n, generator=g, dtype=DT) < 0.5).to(DT)

    def loss(theta):
        z = X @ theta
        return (torch.nn.functional.softplus(z) - y * z).sum() + 0.5 * lam * theta @ theta

    theta = torch.zeros(d, dtype=DT)
    for _ in range(50):  # Newton; strictly convex, so it converges quadratically
        grad = torch.func.grad(loss)(theta)
        if float(grad.norm()) < 1e-12:
            break
        theta = theta - torch.linalg.solve(autodiff_hessian(loss)(theta), grad)
    return loss, theta


@settings(derandomize=True, max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), d=st.integers(2, 5),
       reparam_kind=st.sampled_from(["scaling", "linear", "softplus"]),
       metric_kind=st.sampled_from(["euclidean", "diagonal", "dense", "operator"]))
def test_invariance_logistic_regression(seed, d, reparam_kind, metric_kind):
    loss, theta_star = _logistic_problem(seed, d)
    reparam = _random_reparam(reparam_kind, d, seed + 2)
    _check_invariance(loss, theta_star, reparam, _random_metric(metric_kind, d, seed + 3), min(d, 3))


def test_hessian_rule_matches_autodiff_at_minimum_only():
    d = 4
    loss, theta_star = _logistic_problem(7, d)
    phi = Elementwise("softplus")
    H_theta = autodiff_hessian(loss)(theta_star)
    rule = transform_hessian_at_critical_point(H_theta, phi, theta_star).to_dense()
    auto = autodiff_hessian(lambda p: loss(phi.inverse(p)))(phi.forward(theta_star))
    torch.testing.assert_close(rule, auto, rtol=1e-9, atol=1e-10)
    theta_off = theta_star + 0.5  # not critical: the chain rule's second-order term appears
    rule_off = transform_hessian_at_critical_point(autodiff_hessian(loss)(theta_off), phi,
                                                   theta_off).to_dense()
    auto_off = autodiff_hessian(lambda p: loss(phi.inverse(p)))(phi.forward(theta_off))
    assert float((rule_off - auto_off).norm()) > 1e-3


# --------------------------------------------------------------------------------------
# Vectors, covectors, densities
# --------------------------------------------------------------------------------------
def test_vector_covector_and_metric_pairings_are_invariant():
    d = 5
    theta = torch.randn(d, generator=_gen(60), dtype=DT)
    v = torch.randn(d, generator=_gen(61), dtype=DT)
    w = torch.randn(d, generator=_gen(62), dtype=DT)
    G = _spd(d, 63)
    for phi in (Elementwise("softplus"), LinearMap(_well_conditioned(d, 64, 0.5, 2.0)),
                Scaling(-2.5)):
        v_psi, w_psi = transform_vector(v, phi, theta), transform_vector(w, phi, theta)
        g_psi = transform_covector(w, phi, theta)
        assert _rel(g_psi @ v_psi, w @ v) < 1e-12  # covector acting on a vector
        G_psi = pullback_metric(G, phi, theta)
        assert _rel(v_psi @ (G_psi @ w_psi), v @ G @ w) < 1e-12  # inner product
        # the gradient of L o phi^-1 is the transformed covector
        loss = lambda t: (t ** 3).sum() + t @ G @ t  # noqa: E731
        grad_psi = torch.func.grad(lambda p: loss(phi.inverse(p)))(phi.forward(theta))
        torch.testing.assert_close(grad_psi, transform_covector(torch.func.grad(loss)(theta),
                                                                phi, theta))


@pytest.mark.parametrize("kind", ["softplus", "log"])
def test_lebesgue_mode_moves_riemannian_mode_does_not(kind):
    mu, sigma = (0.3, 0.8) if kind == "softplus" else (2.0, 0.6)
    phi = Elementwise(kind)

    def log_p(theta):  # Gaussian in theta (restricted to theta > 0 for log: mass ~1)
        return -0.5 * ((theta - mu) / sigma) ** 2 - math.log(sigma * math.sqrt(2 * math.pi))

    psi_mode_naive = float(phi.forward(torch.tensor([mu], dtype=DT)))
    lo, hi = (psi_mode_naive - 3.0, psi_mode_naive + 3.0)
    if kind == "softplus":
        lo = max(lo, 1e-3)
    grid = torch.linspace(lo, hi, 6001, dtype=DT)
    step = float(grid[1] - grid[0])
    leb, riem = [], []
    for p in grid:
        theta = phi.inverse(p[None])
        lp = log_p(theta).sum()
        leb.append(float(transform_density_lebesgue(lp, phi, theta)))
        riem.append(float(transform_density_riemannian(lp, phi, theta)))
    leb, riem = torch.tensor(leb), torch.tensor(riem)
    # the Lebesgue density is a normalized density on psi
    assert float(leb.exp().sum() * step) == pytest.approx(1.0, abs=2e-3)
    riem_mode = float(grid[riem.argmax()])
    leb_mode = float(grid[leb.argmax()])
    assert abs(riem_mode - psi_mode_naive) <= step
    assert abs(leb_mode - psi_mode_naive) > 50 * step
    # Riemannian density times the volume element sqrt(det G_psi) is the Lebesgue density
    theta = phi.inverse(grid[1000:1001])
    G_psi = pullback_metric(euclidean_metric(1), phi, theta).to_dense()
    assert float(riem[1000] + 0.5 * torch.logdet(G_psi)) == pytest.approx(float(leb[1000]),
                                                                         abs=1e-6)


# --------------------------------------------------------------------------------------
# Bad inputs
# --------------------------------------------------------------------------------------
def test_bad_metrics():
    with pytest.raises(ValueError, match="positive definite"):
        dense_metric(torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=DT))
    with pytest.raises(ValueError, match="symmetric"):
        dense_metric(torch.tensor([[1.0, 0.5], [0.0, 1.0]], dtype=DT))
    with pytest.raises(ValueError, match="square"):
        dense_metric(torch.ones(2, 3, dtype=DT))
    with pytest.raises(ValueError, match="<= 0"):
        diagonal_metric(torch.tensor([1.0, 0.0], dtype=DT))
    with pytest.raises(ValueError, match="finite"):
        diagonal_metric(torch.tensor([1.0, float("inf")], dtype=DT))
    H = _spd(3, 0)
    with pytest.raises(ValueError, match=r"shape \(3, 3\).*shape \(4, 4\)"):
        hessian_operator(H, euclidean_metric(4))
    with pytest.raises(ValueError, match="positive definite"):
        hessian_operator(H, torch.tensor([1.0, -1.0, 1.0], dtype=DT))
    with pytest.raises(ValueError, match="symmetric"):
        hessian_operator(H, DenseOperator(torch.triu(torch.ones(3, 3, dtype=DT))))
    with pytest.raises(ValueError, match="has shape"):
        pullback_metric(euclidean_metric(3), Scaling(2.0), torch.ones(4, dtype=DT))


def test_bad_hessians():
    with pytest.raises(ValueError, match="symmetric"):
        hessian_operator(torch.tensor([[1.0, 1.0], [0.0, 1.0]], dtype=DT))
    with pytest.raises(ValueError, match="symmetric"):
        hessian_operator(DenseOperator(torch.tensor([[1.0, 1.0], [0.0, 1.0]], dtype=DT)))
    with pytest.raises(ValueError, match="square"):
        hessian_operator(torch.ones(2, 3, dtype=DT))
    with pytest.raises(ValueError, match="non-positive eigenvalue"):
        hessian_operator(-_spd(3, 1)).logdet()
    with pytest.raises(ValueError, match="unknown trace method"):
        hessian_operator(_spd(3, 1)).trace(method="bogus")


def test_reparam_outside_domain_in_rules():
    with pytest.raises(ValueError, match="theta > 0"):
        pullback_metric(euclidean_metric(2), Elementwise("log"),
                        torch.tensor([1.0, -1.0], dtype=DT)).to_dense()
    with pytest.raises(ValueError, match="singular"):
        LinearMap(torch.zeros(2, 2, dtype=DT))


def test_gradient_norm_warning():
    H = _spd(3, 2)
    with pytest.warns(UserWarning, match=r"gradient norm 5\.000e-01"):
        hessian_operator(H, gradient=torch.tensor([0.3, 0.4, 0.0], dtype=DT))
    with pytest.warns(UserWarning, match="gradient norm"):
        transform_hessian_at_critical_point(H, Scaling(2.0), torch.zeros(3, dtype=DT),
                                            gradient=[torch.ones(2, dtype=DT), torch.ones(1)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hessian_operator(H, gradient=torch.full((3,), 1e-9, dtype=DT))
        assert check_critical_point(torch.zeros(3), tol=0.0) == 0.0


def test_adam_metric_reads_the_bias_corrected_second_moment():
    import lib.geometry.invariance as inv
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(3, 2))
    b = torch.nn.Parameter(torch.randn(3))
    opt = torch.optim.Adam([w, b], lr=0.1, betas=(0.9, 0.99), eps=1e-6)
    grads = []
    for _ in range(3):
        opt.zero_grad()
        loss = ((w.sum(1) + b) ** 2).sum()
        loss.backward()
        grads.append(torch.cat([w.grad.reshape(-1), b.grad]).clone())
        opt.step()
    # v_t = (1 - beta2) sum_s beta2^(t-s) g_s^2, bias-corrected by 1 - beta2^t
    v = sum((1 - 0.99) * 0.99 ** (2 - s) * g ** 2 for s, g in enumerate(grads)) / (1 - 0.99 ** 3)
    torch.testing.assert_close(inv.adam_metric(opt).values, v.sqrt() + 1e-6)
    with pytest.raises(TypeError, match="Adam"):
        inv.adam_metric(torch.optim.SGD([w], lr=0.1))
    with pytest.raises(ValueError, match="no Adam state"):
        inv.adam_metric(torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))]))


# --------------------------------------------------------------------------------------
# G^-1 H is a LinearOperator with the whole method set
# --------------------------------------------------------------------------------------
def _invariant_cases(d=6):
    M = _spd(d, 60)
    theta = torch.randn(d, generator=_gen(61), dtype=DT)
    phi = Elementwise("softplus")
    J_inv = torch.linalg.inv(phi.jacobian(theta))
    values = torch.linspace(0.5, 2.0, d, dtype=DT)
    return {
        "identity": (None, torch.eye(d, dtype=DT)),
        "diagonal": (values, torch.diag(values)),
        "dense": (M, M),
        "operator (CG)": (_OpaqueOperator(M), M),
        "pulled back": (pullback_metric(M, phi, theta), J_inv.T @ M @ J_inv),
    }


@pytest.mark.parametrize("name", list(_invariant_cases()))
def test_invariant_operator_method_set_matches_dense(name):
    from lib.operators import spectral

    metric, G = _invariant_cases()[name]
    d = G.shape[0]
    H = _spd(d, 62)
    E = hessian_operator(H, metric)
    E_dense = torch.linalg.solve(G, H)
    assert isinstance(E, LinearOperator) and E.shape == (d, d)
    V = torch.randn(d, 3, generator=_gen(63), dtype=DT)
    close = dict(rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(E @ V, E_dense @ V, **close)
    torch.testing.assert_close(E @ V[:, 0], E_dense @ V[:, 0], **close)
    torch.testing.assert_close(E.to_dense(), E_dense, **close)
    torch.testing.assert_close(E.diagonal(), torch.diagonal(E_dense), **close)
    want = torch.from_numpy(scipy.linalg.eigh(H.numpy(), G.numpy(), eigvals_only=True))  # ascending
    torch.testing.assert_close(E.eigvalsh(), want, **close)
    torch.testing.assert_close(E.eigvalsh(2), want[-2:], **close)
    assert E.logdet() == pytest.approx(float(want.log().sum()), rel=1e-9)
    for damping in (0.0, 0.3):
        shifted = E_dense + damping * torch.eye(d, dtype=DT)
        torch.testing.assert_close(E.solve(V, damping), torch.linalg.solve(shifted, V), rtol=1e-7, atol=1e-9)
        torch.testing.assert_close(E.inverse(damping) @ V[:, 0], torch.linalg.solve(shifted, V[:, 0]),
                                   rtol=1e-7, atol=1e-9)
    # the estimators defer to the operator's own methods
    assert spectral.trace(E) == E.trace()
    assert spectral.logdet(E) == E.logdet()
    assert torch.equal(spectral.eigvalsh(E, 2), E.eigvalsh(2).flip(0))
