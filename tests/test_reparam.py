"""Tests of lib.geometry.reparam: bijectivity, Jacobians against autodiff, products, domains."""

from __future__ import annotations

import pytest
import torch
from torch.func import jacrev

from lib.geometry.reparam import Elementwise, LinearMap, Scaling

D = 6
DT = torch.float64


def _point(kind_needs_positive: bool, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(D, generator=g, dtype=DT)
    return x.abs() + 0.1 if kind_needs_positive else x


def _cases():
    g = torch.Generator().manual_seed(1)
    U, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=DT))
    V, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=DT))
    A = U @ torch.diag(torch.linspace(0.5, 3.0, D, dtype=DT)) @ V.T
    c = torch.tensor([0.5, -2.0, 3.0, 1.5, -0.7, 4.0], dtype=DT)
    return [
        ("scaling-scalar", Scaling(3.0), False),
        ("scaling-vector", Scaling(c), False),
        ("linear", LinearMap(A), False),
        ("softplus", Elementwise("softplus"), False),
        ("exp", Elementwise("exp"), False),
        ("log", Elementwise("log"), True),
    ]


CASES = _cases()
IDS = [c[0] for c in CASES]


@pytest.mark.parametrize("name,reparam,positive", CASES, ids=IDS)
def test_inverse_of_forward_is_identity(name, reparam, positive):
    theta = _point(positive)
    psi = reparam.forward(theta)
    assert psi.shape == theta.shape and psi.dtype == DT
    torch.testing.assert_close(reparam.inverse(psi), theta, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(reparam(theta), psi)


@pytest.mark.parametrize("name,reparam,positive", CASES, ids=IDS)
def test_jacobian_matches_autodiff(name, reparam, positive):
    theta = _point(positive)
    J = reparam.jacobian(theta)
    torch.testing.assert_close(J, jacrev(reparam.forward)(theta), rtol=1e-12, atol=1e-12)
    # the Jacobian of the inverse at psi is J^-1
    J_inv = jacrev(reparam.inverse)(reparam.forward(theta))
    torch.testing.assert_close(J_inv, torch.linalg.inv(J), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(reparam.log_abs_det_jacobian(theta),
                               torch.linalg.slogdet(J).logabsdet, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name,reparam,positive", CASES, ids=IDS)
@pytest.mark.parametrize("block", [False, True], ids=["vector", "block"])
def test_products_match_dense(name, reparam, positive, block):
    theta = _point(positive)
    g = torch.Generator().manual_seed(2)
    v = torch.randn(D, 3, generator=g, dtype=DT) if block else torch.randn(D, generator=g, dtype=DT)
    J = reparam.jacobian(theta)
    J_inv = torch.linalg.inv(J)
    for got, want in [(reparam.jvp(theta, v), J @ v), (reparam.vjp(theta, v), J.T @ v),
                      (reparam.inverse_jvp(theta, v), J_inv @ v),
                      (reparam.inverse_vjp(theta, v), J_inv.T @ v)]:
        assert got.shape == v.shape
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_softplus_is_stable_at_extremes():
    sp = Elementwise("softplus")
    theta = torch.tensor([-30.0, -5.0, 0.0, 5.0, 40.0], dtype=DT)
    psi = sp.forward(theta)
    torch.testing.assert_close(psi, torch.nn.functional.softplus(theta, threshold=100.0))
    torch.testing.assert_close(sp.inverse(psi), theta, rtol=1e-10, atol=1e-10)


def test_float32_and_dtype_follow_input():
    theta = torch.rand(4, dtype=torch.float32) + 0.5
    for r in (Scaling(2.0), Elementwise("softplus"), Elementwise("log")):
        assert r.forward(theta).dtype == torch.float32
        assert r.inverse_jvp(theta, torch.ones(4)).dtype == torch.float32


def test_domain_errors():
    with pytest.raises(ValueError, match="theta > 0"):
        Elementwise("log").forward(torch.tensor([1.0, 0.0], dtype=DT))
    with pytest.raises(ValueError, match="theta > 0"):
        Elementwise("log").jacobian(torch.tensor([-1.0], dtype=DT))
    with pytest.raises(ValueError, match="psi > 0"):
        Elementwise("softplus").inverse(torch.tensor([0.5, -0.1], dtype=DT))
    with pytest.raises(ValueError, match="psi > 0"):
        Elementwise("exp").inverse(torch.tensor([0.0], dtype=DT))
    with pytest.raises(ValueError, match="overflow"):
        Elementwise("exp").forward(torch.tensor([1000.0], dtype=DT))
    with pytest.raises(ValueError, match="not invertible"):
        Elementwise("softplus").inverse_jvp(torch.tensor([-1000.0], dtype=DT),
                                            torch.ones(1, dtype=DT))
    with pytest.raises(ValueError, match="unknown elementwise function"):
        Elementwise("tanh")


def test_invalid_maps():
    with pytest.raises(ValueError, match="singular or too ill-conditioned"):
        LinearMap(torch.tensor([[1.0, 2.0], [2.0, 4.0]], dtype=DT))
    with pytest.raises(ValueError, match="singular or too ill-conditioned"):
        LinearMap(torch.diag(torch.tensor([1.0, 1e-13], dtype=DT)))
    with pytest.raises(ValueError, match="square"):
        LinearMap(torch.ones(2, 3, dtype=DT))
    with pytest.raises(ValueError, match="nonzero"):
        Scaling(0.0)
    with pytest.raises(ValueError, match="nonzero"):
        Scaling(torch.tensor([1.0, 0.0], dtype=DT))


def test_shape_errors():
    with pytest.raises(ValueError, match="acts on"):
        Scaling(torch.ones(3, dtype=DT)).forward(torch.ones(4, dtype=DT))
    with pytest.raises(ValueError, match="flat vector"):
        Elementwise("exp").forward(torch.ones(2, 2, dtype=DT))
    with pytest.raises(ValueError, match="expected"):
        LinearMap(torch.eye(3, dtype=DT)).jvp(torch.ones(3, dtype=DT), torch.ones(4, dtype=DT))
