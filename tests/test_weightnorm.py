"""Tests of the WeightNorm reparametrization (lib.geometry.reparam.WeightNorm)."""

import math

import pytest
import torch

from lib.geometry.reparam import WeightNorm

SHAPES = [(4, 1), (4,), (2, 4), (2,)]
D = 4 + 4 + 8 + 2


def _point(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(D, generator=g, dtype=torch.float64)


@pytest.fixture
def wn_and_theta():
    theta = _point()
    ref = theta + 0.2 * _point(1)
    ref[:4] = theta[:4]  # n = 1 rows: the reference must share the sign
    return WeightNorm(SHAPES, reference=ref), theta


def test_round_trip_and_vg(wn_and_theta):
    wn, theta = wn_and_theta
    psi = wn.forward(theta)
    assert psi.shape == (D,)
    torch.testing.assert_close(wn.inverse(psi), theta, rtol=0, atol=1e-13)
    assert torch.equal(psi[4:8], theta[4:8]) and torch.equal(psi[-2:], theta[-2:])  # biases
    vg = wn.to_vg(theta)
    assert vg.shape == (wn.vg_dim,) and wn.vg_dim == D + 6
    torch.testing.assert_close(wn.from_vg(vg), theta, rtol=0, atol=1e-14)
    vg2 = vg.clone()
    vg2[12:20] *= 3.0  # layout v1, g1, b1, v2, g2, b2: rescaling v2 keeps w
    torch.testing.assert_close(wn.from_vg(vg2), theta, rtol=0, atol=1e-14)


def test_jacobian_products_and_logdet(wn_and_theta):
    wn, theta = wn_and_theta
    J_ref = torch.func.jacrev(wn.forward)(theta)
    J = wn.jacobian(theta)
    torch.testing.assert_close(J, J_ref, rtol=0, atol=1e-12)
    V = torch.randn(D, 3, dtype=torch.float64)
    torch.testing.assert_close(wn.jvp(theta, V), J_ref @ V)
    torch.testing.assert_close(wn.vjp(theta, V[:, 0]), J_ref.T @ V[:, 0])
    torch.testing.assert_close(wn.inverse_jvp(theta, V), torch.linalg.solve(J_ref, V))
    torch.testing.assert_close(wn.inverse_vjp(theta, V), torch.linalg.solve(J_ref.T, V))
    torch.testing.assert_close(wn.log_abs_det_jacobian(theta), torch.linalg.slogdet(J_ref).logabsdet)
    # closed form: sum over rows of (n-1) [log((1 + |u|^2)/2) - log r]
    psi = wn.forward(theta)
    P = psi[8:16].reshape(2, 4)
    r, u2 = P[:, 0], (P[:, 1:] ** 2).sum(1)
    closed = (3 * (torch.log((1 + u2) / 2) - torch.log(r))).sum()
    torch.testing.assert_close(wn.log_abs_det_jacobian(theta), closed)


def test_reference_point_maps_to_chart_centre():
    theta = _point(2)
    theta[:4] = theta[:4].abs() + 0.1
    wn = WeightNorm(SHAPES, normalize=[0, 2], reference=theta)
    psi = wn.forward(theta)
    assert torch.allclose(psi[9:12], torch.zeros(3, dtype=torch.float64), atol=1e-15)
    torch.testing.assert_close(psi[8], theta[8:12].norm())


def test_domain_errors():
    theta = _point(3)
    wn = WeightNorm(SHAPES, reference=theta)
    bad = theta.clone()
    bad[8:12] = 0.0
    with pytest.raises(ValueError, match="zero row"):
        wn.forward(bad)
    with pytest.raises(ValueError, match="zero row"):
        wn.jacobian(bad)
    with pytest.raises(ValueError, match="zero row"):
        wn.to_vg(bad)
    with pytest.raises(ValueError, match="zero row"):
        WeightNorm(SHAPES, reference=bad)
    anti = theta.clone()
    anti[8:12] = -theta[8:12]
    with pytest.raises(ValueError, match="antipode"):
        wn.forward(anti)
    psi = wn.forward(theta)
    psi[8] = -1.0
    with pytest.raises(ValueError, match="r > 0"):
        wn.inverse(psi)
    with pytest.raises(ValueError, match="2-D|matrix"):
        WeightNorm(SHAPES, normalize=[1])
    with pytest.raises(ValueError):
        wn.forward(theta[:-1])
