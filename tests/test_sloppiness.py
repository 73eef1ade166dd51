"""lib.geometry.sloppiness against hand computations, brute force and dense Gaussian algebra."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from lib.geometry.sloppiness import (descending, effective_dimensionality, eigenvector_overlaps, pac_bayes_bound,
                                     pac_bayes_objective, posterior_precisions, sloppy_factor, strength)

spectra = st.lists(st.floats(0.0, 1e3, allow_subnormal=False), min_size=2, max_size=40)


def test_a_step_spectrum_by_hand():
    values = [8.0] * 3 + [0.001] * 5        # n = 11, eps = 20: threshold 1, lambda_bar = 20 * 8 + 20 = 180
    assert effective_dimensionality(values, 11, 20.0) == 3
    assert strength(values, 11, 20.0) == pytest.approx(3 * (1 + math.log(9.0)), rel=1e-14)
    assert posterior_precisions(values, 11, 20.0)[0] == 180.0


@settings(max_examples=100, deadline=None)
@given(spectra, st.integers(2, 10 ** 6), st.floats(1e-3, 1e3))
def test_effective_dimensionality_counts_by_brute_force(values, n, eps):
    threshold = eps / (2 * (n - 1))
    assert effective_dimensionality(values, n, eps) == sum(abs(v) >= threshold for v in values)


def test_exact_exponential_decay_has_its_rate_in_both_readings():
    values = torch.exp(-0.3 * torch.arange(50, dtype=torch.float64))
    for r in (1, 7, 30):
        assert sloppy_factor(values, r) == pytest.approx(0.3, rel=1e-12)
        assert sloppy_factor(values, r, "fit") == pytest.approx(0.3, rel=1e-12)
    assert sloppy_factor(values.flip(0), 7) == pytest.approx(0.3, rel=1e-12)  # any order in


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(1e-6, 1e3, allow_subnormal=False), min_size=3, max_size=30), st.data())
def test_the_supremum_is_the_largest_rate_whose_envelope_holds(values, data):
    lam = sorted(values, reverse=True)
    r = data.draw(st.integers(1, len(lam) - 1))
    c = sloppy_factor(lam, r)

    def holds(rate):
        return all(lam[i - 1] <= lam[r - 1] * math.exp(-rate * (i - r)) * (1 + 1e-12) for i in range(r, len(lam) + 1))
    assert c >= 0 and holds(c)
    assert not holds(c * (1 + 1e-6) + 1e-9)


def test_the_supremum_ignores_zeros_and_a_flat_tail_has_rate_zero():
    assert sloppy_factor([4.0, 2.0, 0.0, 0.0], 2) == math.inf
    assert sloppy_factor([4.0, 2.0, 1.0, 0.0], 2) == pytest.approx(math.log(2.0))
    assert sloppy_factor([3.0, 1.0, 1.0, 1.0], 2) == 0.0
    assert sloppy_factor([3.0, 1.0, 1.0, 1.0], 2, "fit") == 0.0


def _dense_objective(H, n, eps, w, w0):
    """e(Q) - e(w) + KL(Q, P) / (2 (n - 1)) with Q = N(w, (2 (n - 1) H + eps I)^-1), P = N(w0, I / eps),
    from the Gaussian formulas (4.7.1) with dense matrices."""
    d = H.shape[0]
    Sq = torch.linalg.inv(2 * (n - 1) * H + eps * torch.eye(d, dtype=H.dtype))
    gap = 0.5 * torch.trace(H @ Sq)
    kl = 0.5 * (eps * torch.trace(Sq) - d + eps * (w - w0) @ (w - w0) - d * math.log(eps) - torch.logdet(Sq))
    return float(gap + kl / (2 * (n - 1)))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 8), st.integers(2, 1000), st.floats(0.01, 100.0), st.integers(0, 10 ** 6))
def test_the_objective_is_the_dense_gaussian_computation_and_the_bound_is_above_it(d, n, eps, seed):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(d, d, generator=g, dtype=torch.float64)
    H = A @ A.T * torch.rand(1, generator=g, dtype=torch.float64) * 10
    w, w0 = torch.randn(d, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
    distance = float((w - w0) @ (w - w0))
    values = torch.linalg.eigvalsh(H).clamp_min(0.0)
    exact = pac_bayes_objective(values, n, eps, distance)
    assert exact == pytest.approx(_dense_objective(H, n, eps, w, w0), rel=1e-8, abs=1e-10)
    padded = torch.cat([values, torch.zeros(5, dtype=torch.float64)])  # zero eigenvalues add nothing
    assert pac_bayes_objective(padded, n, eps, distance) == pytest.approx(exact, rel=1e-12, abs=1e-14)
    terms = pac_bayes_bound(values, n, eps, distance)
    assert terms.bound >= exact * (1 - 1e-12)
    assert terms.p == effective_dimensionality(values, n, eps) and terms.distance == pytest.approx(eps * distance)


def test_the_bound_reads_c_three_ways():
    values = torch.exp(-0.05 * torch.arange(400, dtype=torch.float64))    # threshold 1e-3: p = 139
    n, eps = 1001, 2.0
    tail = pac_bayes_bound(values, n, eps, 1.0)
    sup = pac_bayes_bound(values, n, eps, 1.0, "supremum")
    fit = pac_bayes_bound(values, n, eps, 1.0, "fit")
    assert tail.p == sup.p == fit.p == 139
    assert sup.c == pytest.approx(0.05, rel=1e-10) and fit.c == pytest.approx(0.05, rel=1e-10)
    threshold = eps / (2 * (n - 1))
    assert tail.c == pytest.approx(threshold / float(values[139:].sum()), rel=1e-12)
    assert tail.bound >= pac_bayes_objective(values, n, eps, 1.0)


def test_overlaps_of_a_subspace_with_itself_are_one_and_random_ones_match_k_over_d():
    g = torch.Generator().manual_seed(0)
    d, k = 60, 6
    U = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64))[0]
    same = eigenvector_overlaps(U, U)
    assert torch.allclose(same.per_vector, torch.ones(k, dtype=torch.float64)) and same.mean == pytest.approx(1.0)
    means = [eigenvector_overlaps(U, torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64))[0]).mean
             for _ in range(400)]
    expected = k / d
    spread = torch.tensor(means).std().item() / math.sqrt(len(means))
    assert abs(sum(means) / len(means) - expected) < 4 * spread
    assert eigenvector_overlaps(U, U).random == expected


@pytest.mark.parametrize("call, message", [
    (lambda: effective_dimensionality([1.0], 10, 0.0), "eps"),
    (lambda: effective_dimensionality([1.0], 10, -1.0), "eps"),
    (lambda: strength([1.0], 1, 1.0), "n .* >= 2"),
    (lambda: sloppy_factor([3.0, 2.0, 1.0], 3), "r must be in 1..2"),
    (lambda: sloppy_factor([3.0, 2.0, 1.0], 0), "r must be >= 1"),
    (lambda: sloppy_factor([3.0, 0.0, 0.0], 2), "lambda_r must be positive"),
    (lambda: sloppy_factor([3.0, 2.0], 1, "slope"), "unknown method"),
    (lambda: pac_bayes_bound([1.0, -0.5], 10, 1.0, 0.0), "minimum"),
    (lambda: pac_bayes_bound([1.0], 10, 1.0, -1.0), "distance_sq"),
    (lambda: pac_bayes_objective([1.0, -10.0], 10, 1.0, 0.0), "logarithm"),
    (lambda: descending([]), "empty"),
    (lambda: descending([1.0, float("nan")]), "finite"),
    (lambda: eigenvector_overlaps(torch.eye(3), torch.eye(4)), "same d"),
])
def test_bad_input_is_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_the_search_picks_the_grid_point_of_the_smallest_bound_and_pays_for_the_grid():
    from lib.geometry.sloppiness import pac_bayes_search
    values = torch.exp(-0.02 * torch.arange(300, dtype=torch.float64)) * 0.05
    n, distance = 5000, 3.0
    found = pac_bayes_search(values, n, distance, train_loss=0.01, num_steps=600)

    def bound(j):  # the formula, written out again
        eps = 1e4 * math.exp(-j / 100)
        bar = 2 * (n - 1) * values + eps
        kl = 0.5 * (eps * distance + float((torch.log(bar / eps) + eps / bar - 1).sum()))
        expected = 0.01 + 0.5 * float((values / bar).sum())
        return expected + math.sqrt((kl + 2 * math.log(j) + math.log(math.pi ** 2 * n / (6 * 0.025))) / (2 * (n - 1)))
    bounds = [bound(j) for j in range(1, 601)]
    assert found.index == 1 + min(range(600), key=bounds.__getitem__)
    assert found.bound == pytest.approx(min(bounds), rel=1e-12)
    assert found.eps == pytest.approx(1e4 * math.exp(-found.index / 100))
    assert found.bound > found.expected_loss >= 0.01   # the square-root term is positive
    with pytest.raises(ValueError, match="delta"):
        pac_bayes_search(values, n, distance, delta=1.5)
    with pytest.raises(ValueError, match="minimum"):
        pac_bayes_search([1.0, -1.0], n, distance)
