"""Phase boundaries of the section 5.3 variants (lib.manifolds.linear.variant_phase_diagram) and the
prefix-sum PCA over time (lib.manifolds.linear.pca_over_time), against direct computations."""

from __future__ import annotations

import pytest
import torch

from lib.manifolds import linear as L
from lib.manifolds import linear_variants as LV

F64 = torch.float64
GRID = dict(ratio=3.0, n=8, d=16, sigma_w=0.5, seed=1)
TS, CS = [1, 3, 10, 40], [0.1, 0.4, 0.9]


def test_pca_over_time_equals_one_pca_per_prefix():
    R = torch.randn(7, 30, 5, dtype=F64, generator=torch.Generator().manual_seed(0)) + 3.0  # offset: cancellation
    times = [1, 2, 9, 30]
    got = LV.pca_over_time(R, times)
    for k, t in enumerate(times):
        torch.testing.assert_close(got[k], L.pca_from_trajectories(R[:, :t]), rtol=1e-10, atol=1e-12)


def test_sgd_with_huge_batch_and_zero_weight_decay_are_gradient_descent():
    gd = LV.variant_phase_diagram(TS, CS, variant="gd", **GRID)
    assert torch.equal(LV.variant_phase_diagram(TS, CS, variant="sgd", batch_size=10**12, **GRID), gd)
    assert torch.equal(LV.variant_phase_diagram(TS, CS, variant="weight_decay", weight_decay=0.0, **GRID), gd)
    # small batches add noise, which must move the diagram (not always upwards: the noise
    # covariance is shaped like K, so at large c it can concentrate the variance further)
    noisy = LV.variant_phase_diagram(TS, CS, variant="sgd", batch_size=1, **GRID)
    assert not torch.equal(noisy, gd)


def test_gd_grid_is_the_pointwise_dimension():
    got = LV.variant_phase_diagram(TS, CS, variant="gd", **GRID)
    for j, c in enumerate(CS):
        D = L.sloppy_data(8, 16, c, sigma_star=1.5, seed=1)
        for i, t in enumerate(TS):
            P = L.pca_matrix(D.K, D.y, t, sigma_w=0.5)
            assert int(got[i, j]) == int(L.ribbon_dimension(P, matrix=True))


def test_kernel_machines_and_deep_linear_grids_match_direct_calls():
    km = LV.variant_phase_diagram(TS, CS, variant="kernel_machines", machines=3, **GRID)
    deep = LV.variant_phase_diagram(TS, CS, variant="deep_linear", width=4, runs=20, alpha=0.4, **GRID)
    for j, c in enumerate(CS):
        D = L.sloppy_data(8, 16, c, sigma_star=1.5, seed=1)
        kernels = [L.sloppy_kernel(8, c, seed=1 + m) for m in range(3)]
        R = LV.simulate_deep_linear(D.X, D.y, max(TS), 20, width=4, sigma_w=0.5, alpha=0.4, seed=1)
        for i, t in enumerate(TS):
            P = LV.kernel_machines_pca_matrix(kernels, D.y, t, sigma_w=0.5)
            assert int(km[i, j]) == int(L.ribbon_dimension(P, matrix=True))
            assert int(deep[i, j]) == int(L.ribbon_dimension(L.pca_from_trajectories(R[:, :t]), matrix=True))


@pytest.mark.parametrize("call, err", [
    (lambda: LV.variant_phase_diagram(TS, CS, variant="adam", **GRID), ValueError),
    (lambda: LV.variant_phase_diagram(TS, CS, variant="sgd", **GRID), ValueError),  # no batch size
    (lambda: LV.variant_phase_diagram(TS, CS, variant="deep_linear", **GRID), ValueError),  # no width
    (lambda: LV.variant_phase_diagram([2.5], CS, **GRID), TypeError),  # simulations need integer T
    (lambda: LV.variant_phase_diagram(TS, [0.0], **GRID), ValueError),  # c <= 0
    (lambda: LV.variant_phase_diagram([], CS, **GRID), ValueError),
    (lambda: LV.pca_over_time(torch.zeros(2, 5, 3, dtype=F64), [6]), ValueError),  # beyond T_max
    (lambda: LV.pca_over_time(torch.zeros(5, 3, dtype=F64), [1]), ValueError),
    (lambda: L.phase_diagram([10.5], [0.3], [1.0], n=5, d=10, alpha=1.5), ValueError),  # real T, q < 0
])
def test_bad_inputs_raise(call, err):
    with pytest.raises(err):
        call()
