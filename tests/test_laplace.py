"""Tests of the Laplace log marginal likelihood (lib.geometry.laplace)."""

import math

import pytest
import torch

from lib.geometry.laplace import laplace_log_marginal_likelihood
from lib.geometry.reparam import Elementwise, LinearMap, Scaling, WeightNorm

N, D, SIGMA, ALPHA = 30, 6, 0.5, 2.0


def _blr(seed=0):
    """Bayesian linear regression: closed-form MAP and log Z."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(N, D, generator=g, dtype=torch.float64)
    w = torch.rand(D, generator=g, dtype=torch.float64) + 0.5
    y = X @ w + SIGMA * torch.randn(N, generator=g, dtype=torch.float64)

    def nll(t):
        r = y - X @ t
        return 0.5 * (r * r).sum() / SIGMA**2 + N * (math.log(SIGMA) + 0.5 * math.log(2 * math.pi))

    def log_prior(t):
        return 0.5 * D * (math.log(ALPHA) - math.log(2 * math.pi)) - 0.5 * ALPHA * (t * t).sum()

    def nlj(t):
        return nll(t) - log_prior(t)

    A = X.T @ X / SIGMA**2 + ALPHA * torch.eye(D, dtype=torch.float64)
    theta = torch.linalg.solve(A, X.T @ y / SIGMA**2)
    cov = SIGMA**2 * torch.eye(N, dtype=torch.float64) + X @ X.T / ALPHA
    exact = torch.distributions.MultivariateNormal(torch.zeros(N, dtype=torch.float64), cov).log_prob(y)
    return nlj, log_prior, theta, float(exact)


def test_gaussian_conjugate_closed_form():
    nlj, log_prior, theta, exact = _blr()
    res = laplace_log_marginal_likelihood(nlj, theta, log_prior=log_prior)
    assert abs(res.log_Z - exact) < 1e-8
    naive = laplace_log_marginal_likelihood(nlj, theta, log_prior=log_prior, form="naive")
    assert abs(naive.log_Z - exact) < 1e-8  # Cartesian, G = I: both forms agree
    assert res.d == D and res.grad_norm < 1e-9


def test_decomposition_adds_up():
    nlj, log_prior, theta, _ = _blr(1)
    res = laplace_log_marginal_likelihood(nlj, theta, log_prior=log_prior, reparam=Scaling(3.0))
    assert res.log_Z == pytest.approx(res.neg_loss + res.log_prior + res.rest, rel=1e-14)
    assert res.log_Z == pytest.approx(-res.neg_log_joint + res.rest, rel=1e-14)
    assert res.table_rest == pytest.approx(res.log_prior + res.rest, rel=1e-14)
    assert res.rest == pytest.approx(0.5 * D * math.log(2 * math.pi) - 0.5 * res.logdet_operator)
    assert res.logdet_operator == pytest.approx(res.logdet_hessian - res.logdet_metric, abs=1e-9)


def _reparams(theta):
    g = torch.Generator().manual_seed(5)
    A = torch.randn(D, D, generator=g, dtype=torch.float64) + 3 * torch.eye(D, dtype=torch.float64)
    return {
        "scaling": Scaling(0.25),
        "vector scaling": Scaling(torch.linspace(0.5, 4.0, D, dtype=torch.float64)),
        "linear": LinearMap(A),
        "softplus": Elementwise("softplus"),
        "log (positive params)": Elementwise("log"),
        "weightnorm": WeightNorm([(2, 3)], reference=theta + 0.1),
    }


@pytest.mark.parametrize("name", ["scaling", "vector scaling", "linear", "softplus",
                                  "log (positive params)", "weightnorm"])
def test_invariant_equal_naive_differs(name):
    nlj, log_prior, theta, exact = _blr()
    assert bool((theta > 0).all())  # the log map needs positive parameters
    reparam = _reparams(theta)[name]
    cart = laplace_log_marginal_likelihood(nlj, theta, log_prior=log_prior)
    inv = laplace_log_marginal_likelihood(nlj, theta, log_prior=log_prior, reparam=reparam)
    naive = laplace_log_marginal_likelihood(nlj, theta, log_prior=log_prior, reparam=reparam,
                                            form="naive")
    assert inv.log_Z == pytest.approx(cart.log_Z, rel=1e-6)
    assert inv.log_Z == pytest.approx(exact, rel=1e-6)
    assert inv.neg_loss == pytest.approx(cart.neg_loss, rel=1e-12)
    assert abs(naive.log_Z - cart.log_Z) > 1e-3
    # naive differs exactly by the log-Jacobian at a critical point
    shift = float(reparam.log_abs_det_jacobian(theta))
    assert naive.log_Z == pytest.approx(cart.log_Z + shift, rel=1e-6)


def test_weightnorm_naive_vg_is_overparametrized():
    nlj, log_prior, theta, _ = _blr()
    wn = WeightNorm([(2, 3)], reference=theta)
    vg = wn.to_vg(theta)

    def vg_prior(z):
        return 0.5 * z.numel() * (math.log(ALPHA) - math.log(2 * math.pi)) - 0.5 * ALPHA * (z * z).sum()

    def vg_nlj(z):
        return nlj(wn.from_vg(z)) + log_prior(wn.from_vg(z)) - vg_prior(z)

    res = laplace_log_marginal_likelihood(vg_nlj, vg, log_prior=vg_prior, form="naive",
                                          check_critical=False)
    cart = laplace_log_marginal_likelihood(nlj, theta, log_prior=log_prior)
    assert res.d == D + 2
    assert res.neg_loss == pytest.approx(cart.neg_loss, rel=1e-12)
    assert abs(res.log_Z - cart.log_Z) > 1e-2


def test_bad_inputs():
    nlj, log_prior, theta, _ = _blr()
    with pytest.raises(ValueError, match="form"):
        laplace_log_marginal_likelihood(nlj, theta, form="bogus")
    with pytest.raises(ValueError, match="naive"):
        laplace_log_marginal_likelihood(nlj, theta, form="naive", metric=torch.ones(D, dtype=torch.float64))
    with pytest.raises(ValueError, match="flat"):
        laplace_log_marginal_likelihood(nlj, theta[None])
    with pytest.raises(ValueError, match="not positive definite|undefined"):
        laplace_log_marginal_likelihood(lambda t: -(t * t).sum(), theta, check_critical=False)
    with pytest.warns(UserWarning, match="gradient norm"):
        laplace_log_marginal_likelihood(nlj, theta + 0.1)


def test_metric_in_cartesian_coordinates_gives_riemannian_value():
    nlj, log_prior, theta, _ = _blr()
    m = torch.linspace(1.0, 3.0, D, dtype=torch.float64)
    with_g = laplace_log_marginal_likelihood(nlj, theta, metric=m)
    plain = laplace_log_marginal_likelihood(nlj, theta)
    assert with_g.log_Z == pytest.approx(plain.log_Z + 0.5 * float(m.log().sum()), rel=1e-12)
    inv = laplace_log_marginal_likelihood(nlj, theta, metric=m, reparam=LinearMap(
        torch.eye(D, dtype=torch.float64) + 0.1 * torch.ones(D, D, dtype=torch.float64)))
    assert inv.log_Z == pytest.approx(with_g.log_Z, rel=1e-9)
