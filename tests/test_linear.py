"""Tests of lib.manifolds.linear: the training manifold of linear least squares (chapter 5, G1-G7).

References are independent of the closed forms under test: Monte-Carlo simulation, explicit
sums over t, scipy's Lyapunov solver, numpy eigensolvers, hand-worked limits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings, strategies as st

from lib.manifolds import linear as L
from lib.manifolds import linear_variants as LV
from lib.sources import mao2025

F64 = torch.float64


def explicit_P(K, y, T, sigma_w, alpha):
    """P(T) of (5.2.5) by literally summing over t = 0..T-1 (numpy)."""
    K, y = K.numpy(), y.numpy()
    n = K.shape[0]
    Kd = np.eye(n) - alpha * K
    S, m, A = np.zeros((n, n)), np.zeros(n), np.eye(n)
    for _ in range(T):
        S += A @ (sigma_w ** 2 * K + np.outer(y, y)) @ A.T
        m += A @ y
        A = A @ Kd
    return S / T - np.outer(m / T, m / T), S / T


def test_closed_form_equals_explicit_sum():
    D = L.sloppy_data(8, 15, 0.4, sigma_star=1.3, seed=2)
    for T in (1, 2, 9):
        P = L.pca_matrix(D.K, D.y, T, sigma_w=0.7, alpha=0.9)
        ref, _ = explicit_P(D.K, D.y, T, 0.7, 0.9)
        np.testing.assert_allclose(P.numpy(), ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("form", ["K", "X"])
def test_monte_carlo_converges_to_closed_form(form):
    """||P(N,T) - P(T)|| shrinks like 1/sqrt(N); at N = 2000 it is within a few standard
    errors, and the error at N = 2000 is clearly below the error at N = 125."""
    D = L.sloppy_data(10, 25, 0.3, sigma_star=1.0, seed=0)
    T, sw, alpha = 6, 0.8, 1.0
    P = L.pca_matrix(D.K, D.y, T, sigma_w=sw, alpha=alpha)
    data = D.K if form == "K" else D.X
    errs = {}
    for N in (125, 2000):
        R = L.simulate_trajectories(data, D.y, T, N, sw, alpha, seed=1)
        errs[N] = float((L.pca_from_trajectories(R) - P).norm() / P.norm())
    # sampling error scale: runs are the independent units, relative std ~ sqrt(2 / N)
    assert errs[2000] < 4 * math.sqrt(2 / 2000)
    assert errs[2000] < errs[125]


def test_p1_sw_eigenvalues_formula_matches_numeric():
    lam = L.sloppy_spectrum(12, 0.5)
    K = L.sloppy_kernel(12, 0.5, seed=4)
    y = torch.zeros(12, dtype=F64)
    for T in (1, 5, 40.5):
        parts = L.pca_parts(K, y, T, sigma_w=1.2, alpha=0.8)
        num = torch.linalg.eigvalsh(T * parts.P1_sw).flip(0)
        formula = mao2025.p1_sw_eigenvalues(lam, T, sigma_w=1.2, alpha=0.8)
        np.testing.assert_allclose(num.numpy(), formula.numpy(), rtol=1e-10)


def test_p1_y_limit_solves_discrete_lyapunov():
    D = L.sloppy_data(9, 20, 0.35, sigma_star=2.0, seed=5)
    alpha = 0.9
    Kd = np.eye(9) - alpha * D.K.numpy()
    ref = scipy.linalg.solve_discrete_lyapunov(Kd, np.outer(D.y, D.y))
    lim = mao2025.lyapunov_limit_p1_y(D.K, D.y, alpha=alpha).numpy()
    np.testing.assert_allclose(lim, ref, rtol=1e-8, atol=1e-10)
    # and T * P1^y(T) approaches it: at T = 4000 the neglected tail is K_d^T ~ 0
    T = 4000
    big = T * L.pca_parts(D.K, D.y, T, sigma_w=0.0, alpha=alpha).P1_y.numpy()
    np.testing.assert_allclose(big, ref, rtol=1e-6, atol=1e-8)


settings_bounds = settings(max_examples=25, deadline=None, derandomize=True)
setting = st.tuples(st.integers(3, 14), st.floats(0.05, 1.5), st.floats(0.05, 1.0),
                    st.integers(1, 300), st.floats(0.0, 2.0), st.floats(0.1, 3.0), st.integers(0, 99))


@settings_bounds
@given(setting)
def test_bounds_hold(s):
    n, c, alpha_frac, T, sw, ss, seed = s
    D = L.sloppy_data(n, n + 5, c, sigma_star=ss, seed=seed)
    lam = L.sloppy_spectrum(n, c)
    alpha = alpha_frac  # lambda_1 = 1, so alpha <= 1 / lambda_1 (assumption iii)
    parts = L.pca_parts(D.K, D.y, T, sigma_w=sw, alpha=alpha)
    tol = 1e-9
    # (5.2.10): eigenvalues of T P1^sw never exceed the bound
    ev_sw = torch.linalg.eigvalsh(T * parts.P1_sw).flip(0)
    bound = mao2025.p1_sw_bound(lam, T, sigma_w=sw, alpha=alpha)
    assert bool((ev_sw <= bound * (1 + tol) + tol).all())
    # Lemma 5.2.2 on T P1^y
    top_y = float(torch.linalg.eigvalsh(T * parts.P1_y)[-1])
    lo, hi = mao2025.lemma_5_2_2_bounds(lam, float(D.y @ D.y), T, alpha=alpha)
    assert lo * (1 - tol) <= top_y <= hi * (1 + tol)
    # Weyl sandwich (5.2.7) for P = P1 - P2
    ev_P = torch.linalg.eigvalsh(parts.P).flip(0)
    lower, upper = mao2025.weyl_sandwich(parts.P1, parts.P2)
    scale = float(upper[0]) * tol + 1e-14
    assert bool((ev_P <= upper + scale).all()) and bool((ev_P >= lower - scale).all())


@settings_bounds
@given(st.integers(4, 14), st.floats(0.1, 1.2), st.floats(0.2, 1.0), st.integers(0, 99))
def test_lemma_5_2_1_decay(n, c, alpha, seed):
    """Eigenvalue ratios of the Gramian T P1^y stay under the Lemma 5.2.1 bound."""
    D = L.sloppy_data(n, n + 3, c, seed=seed)
    lam = L.sloppy_spectrum(n, c)
    ev = torch.linalg.eigvalsh(mao2025.lyapunov_limit_p1_y(D.K, D.y, alpha=alpha)).flip(0)
    ratio = ev / ev[0]
    for a in (None, alpha):
        bound = mao2025.lemma_5_2_1_bound(lam, a if a is None else alpha)
        assert bool((ratio <= bound + 1e-9).all())


def test_ribbon_dimension_hand_worked():
    # diagonal matrix with spectrum 50, 30, 15, 5 (total 100): 95 % needs 3, 80 % needs 2
    M = torch.diag(torch.tensor([5.0, 50.0, 15.0, 30.0], dtype=F64))
    assert int(L.ribbon_dimension(M, 0.95, matrix=True)) == 3
    assert int(L.ribbon_dimension(M, 0.80, matrix=True)) == 2
    assert int(L.ribbon_dimension(M, 1.0, matrix=True)) == 4
    # batched over leading dims, and the zero matrix has dimension 0
    ev = torch.tensor([[[1.0, 0, 0], [0, 0, 0]]], dtype=F64)
    assert L.ribbon_dimension(ev).tolist() == [[1, 0]]


def test_T1_limit_and_zero_matrix():
    """At T = 1 the trajectory is the initial point, P = sigma_w^2 K (yy^T cancels)."""
    K = L.sloppy_kernel(20, 0.15, seed=1)
    y = torch.randn(20, dtype=F64, generator=torch.Generator().manual_seed(0))
    P = L.pca_matrix(K, y, 1, sigma_w=0.6)
    np.testing.assert_allclose(P.numpy(), 0.36 * K.numpy(), atol=1e-12)
    lam = L.sloppy_spectrum(20, 0.15)
    cum = torch.cumsum(lam, 0) / lam.sum()
    expected = int((cum < 0.95).sum()) + 1
    assert int(L.ribbon_dimension(P, matrix=True)) == expected
    Z = L.pca_matrix(K, y, 1, sigma_w=0.0)
    assert float(Z.abs().max()) < 1e-12
    assert int(L.ribbon_dimension(Z, matrix=True)) == 0


def test_phase_diagram_equals_pointwise_loop():
    T, c, ratio = [1, 3, 20, 500.5], [0.08, 0.4, 1.0], [0.3, 2.0]
    n, sw, seed = 12, 0.9, 3
    got = L.phase_diagram(T, c, ratio, n=n, d=30, sigma_w=sw, seed=seed)
    assert got.shape == (4, 3, 2)
    z = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=F64).numpy()
    for a, Tv in enumerate(T):
        for b, cv in enumerate(c):
            lam = np.exp(-cv * np.arange(n))
            K = np.diag(lam)  # any basis gives the same spectrum; use the eigenbasis
            for k, rv in enumerate(ratio):
                y = rv * sw * np.sqrt(lam) * z
                if float(Tv).is_integer():
                    P, _ = explicit_P(torch.tensor(K), torch.tensor(y), int(Tv), sw, 1.0)
                else:  # real T: closed form pieces written out entrywise
                    dK = 1 - lam
                    q = np.outer(dK, dK)
                    G = (1 - q ** Tv) / (Tv * (1 - q))
                    kt = (1 - dK ** Tv) / (Tv * lam)
                    P = np.diag(sw ** 2 * lam * np.diag(G)) + np.outer(y, y) * G - np.outer(kt * y, kt * y)
                ev = np.linalg.eigh(P)[0][::-1].clip(min=0)
                cum = np.cumsum(ev)
                expected = int(np.sum(cum < 0.95 * cum[-1] * (1 - 64 * np.finfo(float).eps))) + 1
                assert int(got[a, b, k]) == expected, (Tv, cv, rv)


def test_phase_diagram_expected_target_and_chunks():
    T, c, r = [1, 10, 100], [0.1, 0.5], [0.5, 3.0]
    full = L.phase_diagram(T, c, r, n=10, d=20)
    assert torch.equal(full, L.phase_diagram(T, c, r, n=10, d=20, chunk=1))
    exp = L.phase_diagram(T, c, r, n=10, d=20, target="expected")
    assert exp.shape == full.shape and bool((exp >= 1).all())


def test_sgd_and_weight_decay_match_simulation():
    D = L.sloppy_data(8, 16, 0.3, sigma_star=1.2, seed=7)
    T, sw, alpha, N = 6, 0.7, 0.8, 3000
    P_wd = LV.weight_decay_pca_matrix(D.K, D.y, T, sigma_w=sw, weight_decay=0.25, alpha=alpha)
    R = L.simulate_trajectories(D.X, D.y, T, N, sw, alpha, seed=2, weight_decay=0.25)
    assert float((L.pca_from_trajectories(R) - P_wd).norm() / P_wd.norm()) < 4 * math.sqrt(2 / N)
    P_sgd = LV.sgd_pca_matrix(D.K, D.y, T, sigma_w=sw, batch_size=3, alpha=alpha)
    R = L.simulate_trajectories(D.K, D.y, T, N, sw, alpha, seed=2, batch_size=3)
    assert float((L.pca_from_trajectories(R) - P_sgd).norm() / P_sgd.norm()) < 4 * math.sqrt(2 / N)
    # the noise term is not negligible here, so this comparison can tell the two apart
    P_gd = L.pca_matrix(D.K, D.y, T, sigma_w=sw, alpha=alpha)
    assert float((P_gd - P_sgd).norm() / P_sgd.norm()) > 0.1


def test_kernel_machines_single_kernel_and_explicit_sum():
    D = L.sloppy_data(7, 12, 0.4, seed=1)
    K2 = L.sloppy_kernel(7, 0.2, seed=9)
    T, sw, alpha = 5, 0.5, 0.9
    single = LV.kernel_machines_pca_matrix([D.K], D.y, T, sigma_w=sw, alpha=alpha)
    np.testing.assert_allclose(single.numpy(), L.pca_matrix(D.K, D.y, T, sigma_w=sw, alpha=alpha).numpy(),
                               atol=1e-12)
    pooled = LV.kernel_machines_pca_matrix([D.K, K2], D.y, T, sigma_w=sw, alpha=alpha)
    # reference: pool the explicit second moments and means of both machines
    S, m = 0, 0
    for K in (D.K, K2):
        P, second = explicit_P(K, D.y, T, sw, alpha)
        S = S + second
        Kd, A, mean = np.eye(7) - alpha * K.numpy(), np.eye(7), np.zeros(7)
        for _ in range(T):
            mean += A @ D.y.numpy() / T
            A = A @ Kd
        m = m + mean
    ref = S / 2 - np.outer(m / 2, m / 2)
    np.testing.assert_allclose(pooled.numpy(), ref, rtol=1e-10, atol=1e-12)


def test_deep_linear_balanced_runs_and_fits():
    D = L.sloppy_data(6, 12, 0.3, seed=0)
    R = LV.simulate_deep_linear(D.X, D.y, 200, 4, width=5, sigma_w=0.5, alpha=0.3, seed=1)
    assert R.shape == (4, 200, 6)
    assert float(R[:, -1].norm()) < 0.2 * float(R[:, 0].norm())


@pytest.mark.parametrize("call, err", [
    (lambda K, y: L.pca_matrix(K, y, 5, sigma_w=1.0, alpha=2.0), ValueError),  # alpha >= 2/lambda_1
    (lambda K, y: L.pca_matrix(K, y, 0.5, sigma_w=1.0), ValueError),  # T < 1
    (lambda K, y: L.pca_matrix(K, y, 5, sigma_w=-1.0), ValueError),  # negative std
    (lambda K, y: L.pca_matrix(K, y[:3], 5, sigma_w=1.0), ValueError),  # shape mismatch
    (lambda K, y: L.pca_matrix(K.numpy(), y, 5, sigma_w=1.0), TypeError),
    (lambda K, y: L.sloppy_spectrum(5, 0.0), ValueError),  # c <= 0
    (lambda K, y: L.sloppy_spectrum(5, -1.0), ValueError),
    (lambda K, y: L.sloppy_data(10, 5, 0.3), ValueError),  # n > d
    (lambda K, y: L.sloppy_data(5, 10, 0.3, sigma_star=-1.0), ValueError),
    (lambda K, y: L.simulate_trajectories(torch.randn(6, 4, dtype=F64), y[:6], 3, 2, 1.0, 0.5), ValueError),
    (lambda K, y: L.simulate_trajectories(K, y, 0, 2, 1.0, 0.5), ValueError),
    (lambda K, y: L.simulate_trajectories(K, y, 2.5, 2, 1.0, 0.5), TypeError),
    (lambda K, y: L.phase_diagram([10], [0.0], [1.0], n=5, d=10), ValueError),
    (lambda K, y: L.phase_diagram([10], [0.3], [1.0], n=20, d=10), ValueError),
    (lambda K, y: L.phase_diagram([10], [0.3], [1.0], n=5, d=10, alpha=2.5), ValueError),
    (lambda K, y: L.phase_diagram([0.5], [0.3], [1.0], n=5, d=10), ValueError),
    (lambda K, y: L.ribbon_dimension(torch.ones(3, dtype=F64), 1.5), ValueError),
    (lambda K, y: mao2025.p1_sw_bound(L.sloppy_spectrum(4, 0.3), 5, sigma_w=1.0, alpha=1.5), ValueError),
])
def test_bad_inputs_raise(call, err):
    D = L.sloppy_data(8, 12, 0.3, seed=0)
    with pytest.raises(err):
        call(D.K, D.y)


def test_p1_sw_eigenvalues_keep_their_digits_for_tiny_eigenvalues():
    """1 - (1 - x)^{2T} for tiny x, against 50-digit decimal arithmetic."""
    from decimal import Decimal, getcontext

    getcontext().prec = 50
    lam = torch.tensor([1.0, 1e-6, 3e-11], dtype=torch.float64)
    T = 37
    ev = mao2025.p1_sw_eigenvalues(lam, T, sigma_w=1.0, alpha=1.0)
    for value, got in zip(lam.tolist(), ev.tolist()):
        x = Decimal(value)
        want = (1 - (1 - x) ** (2 * T)) / (2 - x)
        assert abs(Decimal(got) / want - 1) < Decimal("1e-13")
    assert torch.all(mao2025.p1_sw_bound(lam, T, sigma_w=1.0, alpha=1.0) >= ev * (1 - 1e-14))


# --------------------------------------------------------------------------- Lemma 5.2.3

def _p1_ratio_and_lemma_5_2_3(n, c, T, sw, ss, seed):
    """Eigenvalue ratios lambda_i(P1) / lambda_1(P1) (decreasing) of the closed-form P1(T) at
    alpha = 1 = 1/lambda_1, and the Lemma 5.2.3 bound on them (from the exact sloppy spectrum)."""
    D = L.sloppy_data(n, 2 * n, c, sigma_star=ss, seed=seed)
    P1 = L.pca_parts(D.K, D.y, T, sigma_w=sw, alpha=1.0).P1
    ev = torch.linalg.eigvalsh(P1).flip(0)
    bound = mao2025.lemma_5_2_3_bound(L.sloppy_spectrum(n, c), c, float(D.y @ D.y), T, sigma_w=sw, alpha=1.0)
    return ev / ev[0], bound


@settings(max_examples=25, deadline=None, derandomize=True)
@given(st.integers(6, 30), st.floats(0.05, 1.0), st.one_of(st.integers(1, 2000), st.floats(1.0, 2000.0)),
       st.floats(0.05, 2.0), st.floats(0.1, 5.0), st.integers(0, 10 ** 6))
def test_lemma_5_2_3_bound_holds(n, c, T, sw, ss, seed):
    ratio, bound = _p1_ratio_and_lemma_5_2_3(n, c, T, sw, ss, seed)
    assert bool(torch.isfinite(ratio).all()), "closed-form P1 is not finite"
    assert bool((bound >= ratio * (1 - 1e-9) - 1e-12).all())


def test_lemma_5_2_3_bound_is_not_vacuous():
    """The bound is < 1 (says something) and is within a factor 1e3 of the truth somewhere
    past the top eigenvalue: a bound a thousand times smaller would be violated."""
    ratio, bound = _p1_ratio_and_lemma_5_2_3(12, 0.5, 200, 0.1, 4.0, 3)
    assert float(bound.min()) < 0.1
    assert bool((ratio[1:] > 1e-3 * bound[1:]).any())
    assert not bool((1e-3 * bound >= ratio * (1 - 1e-9) - 1e-12).all())


def test_closed_form_p1_finite_for_real_T_at_alpha_one_over_lambda1():
    """Regression: alpha = 1 = 1/lambda_1 while the computed lambda_1(K) is 1 + 2.2e-16 makes
    1 - alpha lambda_1 a tiny negative number; a real (non-integer) T must not turn the
    geometric sums (q^T of a negative q) into NaN."""
    D = L.sloppy_data(22, 44, 0.9980730495318184, sigma_star=2.782460465509277, seed=854030)
    parts = L.pca_parts(D.K, D.y, 219.00663401627625, sigma_w=1.4277947492404348, alpha=1.0)
    assert bool(torch.isfinite(parts.P1).all()) and bool(torch.isfinite(parts.P).all())


# --------------------------------------------------------------------------- deep linear nets

def test_deep_linear_initial_second_moment():
    """w_0 = s^2 b with b uniform on the sphere: E[w w^T] = s^4 I / d = sigma_w^2 / n I, so the
    initial predictions X w_0 = r_0 + y have second moment sigma_w^2 K."""
    D = L.sloppy_data(6, 12, 0.3, seed=0)
    sw, N = 0.7, 4000
    R = LV.simulate_deep_linear(D.X, D.y, 1, N, width=4, sigma_w=sw, alpha=0.1, seed=3)
    m = R[:, 0] + D.y
    M = m.T @ m / N
    target = sw ** 2 * D.K
    assert float((M - target).norm() / target.norm()) < 0.1
    assert float((M - 2 * target).norm() / (2 * target).norm()) > 0.3  # a wrong scale is caught


def test_deep_linear_first_step_matches_balanced_init():
    """With u = s a, V = s a b^T (|a| = |b| = 1) one GD step is, exactly,
    w_1 = w_0 - alpha s^2 (b b^T + I) g + alpha^2 s^2 (b.g) g,  g = X^T r_0 / n,
    and every term is observable from r_0: X b = (r_0 + y) / s^2. Checked in numpy."""
    D = L.sloppy_data(7, 15, 0.4, sigma_star=1.1, seed=2)
    sw, alpha, n, d = 0.9, 0.4, 7, 15
    R = LV.simulate_deep_linear(D.X, D.y, 2, 5, width=3, sigma_w=sw, alpha=alpha, seed=4).numpy()
    K, y = D.K.numpy(), D.y.numpy()
    s2 = sw * math.sqrt(d / n)
    for r0, r1 in zip(R[:, 0], R[:, 1]):
        m = r0 + y  # X w_0 = s^2 X b
        bg = m @ r0 / (n * s2)  # b . g
        pred = m - alpha * (m * bg + s2 * K @ r0) + alpha ** 2 * s2 * bg * K @ r0
        np.testing.assert_allclose(r1 + y, pred, rtol=1e-10, atol=1e-12)


def test_deep_linear_dynamics_are_not_a_linear_map():
    """The linear model's residuals obey r_{t+1} = K_d r_t exactly, so a least-squares linear
    map from r_t to r_{t+1} fits one run to round-off; the deep net's moving kernel does not."""
    D = L.sloppy_data(6, 12, 0.3, sigma_star=1.0, seed=0)

    def misfit(R):
        A = torch.linalg.lstsq(R[:-1], R[1:]).solution
        return float((R[1:] - R[:-1] @ A).norm() / R[1:].norm())

    deep = LV.simulate_deep_linear(D.X, D.y, 40, 3, width=5, sigma_w=1.0, alpha=0.3, seed=1)
    lin = L.simulate_trajectories(D.X, D.y, 40, 3, 1.0, 0.3, seed=1)
    for i in range(3):
        assert misfit(lin[i]) < 1e-12
        assert misfit(deep[i]) > 1e-5


def test_deep_linear_reproducible():
    D = L.sloppy_data(6, 12, 0.3, seed=0)
    kw = dict(width=4, sigma_w=0.8, alpha=0.2)
    a = LV.simulate_deep_linear(D.X, D.y, 10, 3, seed=5, **kw)
    assert torch.equal(a, LV.simulate_deep_linear(D.X, D.y, 10, 3, seed=5, **kw))
    assert not torch.allclose(a, LV.simulate_deep_linear(D.X, D.y, 10, 3, seed=6, **kw))


# --------------------------------------------------------------------------- step-size boundary

def test_step_size_boundary_two_over_lambda1_raises():
    with pytest.raises(ValueError):
        L.phase_diagram([10], [0.3], [1.0], n=5, d=10, alpha=2.0)
    D = L.sloppy_data(8, 12, 0.3, seed=0)
    lam1 = float(torch.linalg.eigvalsh(D.K)[-1])
    for alpha in (2 / lam1, math.nextafter(2 / lam1, 0.0), math.nextafter(2 / lam1, 3.0)):
        with pytest.raises(ValueError):
            L.pca_matrix(D.K, D.y, 5, sigma_w=1.0, alpha=alpha)
    # just inside the stable range is accepted
    assert bool(torch.isfinite(L.pca_matrix(D.K, D.y, 5, sigma_w=1.0, alpha=2 / lam1 * (1 - 1e-6))).all())
    assert L.phase_diagram([10], [0.3], [1.0], n=5, d=10, alpha=1.999).shape == (1, 1, 1)
