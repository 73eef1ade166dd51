"""Tests of the A6 sine-regression protocols of lib.sources.kristiadi2023.

The GGN evidence (:func:`ggn_log_marginal_likelihood`) is checked against laplace-torch
(Daxberger et al. 2021), the library whose sinusoid example the paper's protocol follows,
against the closed form of Bayesian linear regression (where the GGN is the Hessian and
Laplace is exact), and for invariance under reparametrizations (property tests).
"""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lib.book.synthetic import make_sine
from lib.geometry.invariance import pullback_metric
from lib.geometry.laplace import ggn_log_marginal_likelihood
from lib.sources.kristiadi2023 import (LAPLACE_TORCH_DATA_SEED, SineMLPProblem, fit_mse_adam,
                                       laplace_torch_sine_data, sine_laplace_protocol_run,
                                       sine_laplace_table)
from lib.geometry.reparam import Elementwise, LinearMap, Scaling, WeightNorm

laplace = pytest.importorskip("laplace")


def _net(theta, hidden):
    """``nn.Sequential`` 1-hidden-1 tanh in float64 holding the flat ``theta``."""
    model = nn.Sequential(nn.Linear(1, hidden), nn.Tanh(), nn.Linear(hidden, 1)).double()
    nn.utils.vector_to_parameters(theta, model.parameters())
    return model


class _WeightNormLinear(nn.Module):
    """``w = g v / ||v||`` per output row, written out (laplace-torch's GGN backend needs
    forward-mode AD, which ``torch.nn.utils.parametrizations.weight_norm`` lacks)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach()
        self.v = nn.Parameter(w.clone())
        self.g = nn.Parameter(torch.linalg.vector_norm(w, dim=1))
        self.bias = nn.Parameter(linear.bias.detach().clone())

    def forward(self, x):
        w = self.g[:, None] * self.v / torch.linalg.vector_norm(self.v, dim=1, keepdim=True)
        return F.linear(x, w, self.bias)


def _laplace_torch_log_z(model, X, y, sigma, prior_precision):
    """laplace-torch's full-GGN evidence, computed with float64 as the default dtype."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # the library builds an identity in the default dtype
    try:
        la = laplace.Laplace(model, "regression", sigma_noise=sigma, prior_precision=prior_precision,
                             subset_of_weights="all", hessian_structure="full")
        la.fit(DataLoader(TensorDataset(X, y), batch_size=X.shape[0]))
        return float(la.log_marginal_likelihood()), float(la.log_likelihood), la.n_params
    finally:
        torch.set_default_dtype(old)


@pytest.fixture(scope="module")
def trained():
    X, y = laplace_torch_sine_data(40)
    prob = SineMLPProblem(X, y, hidden=6, sigma=1.0, prior_precision=1.0)
    theta = fit_mse_adam(prob, prob.init_pytorch(0), epochs=150)
    return X, y, prob, theta


def test_data_is_laplace_torch_example_draw():
    with torch.random.fork_rng():
        torch.manual_seed(LAPLACE_TORCH_DATA_SEED)  # laplace-torch's get_sinusoid_example
        X_ref = (torch.rand(150) * 8).unsqueeze(-1)
        y_ref = torch.sin(X_ref) + torch.randn_like(X_ref) * 0.3
    X, y = laplace_torch_sine_data(150)
    assert X.dtype == torch.float64 and X.shape == (150, 1) and y.shape == (150, 1)
    assert torch.equal(X, X_ref.double()) and torch.equal(y, y_ref.double())
    # the default float64 draw is a different one, and a bad sample dtype is refused
    assert not torch.equal(make_sine(150, seed=LAPLACE_TORCH_DATA_SEED, dtype=torch.float64)[0], X)
    with pytest.raises(TypeError, match="sample_dtype"):
        make_sine(10, sample_dtype=torch.int64)


@pytest.mark.parametrize("hidden, seed", [(3, 0), (50, 4)])
def test_init_pytorch_is_nn_linear_default(hidden, seed):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(1, hidden), nn.Tanh(), nn.Linear(hidden, 1))
    ref = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double()
    prob = SineMLPProblem(*laplace_torch_sine_data(10), hidden=hidden)
    assert torch.equal(prob.init_pytorch(seed), ref)


@pytest.mark.parametrize("sigma, prior_precision", [(1.0, 1.0), (0.3, 2.5)])
def test_ggn_evidence_matches_laplace_torch(trained, sigma, prior_precision):
    X, y, prob, theta = trained
    res = ggn_log_marginal_likelihood(prob.predict, y, theta, sigma=sigma,
                                      prior_precision=prior_precision)
    log_z, log_lik, d = _laplace_torch_log_z(_net(theta, prob.hidden), X, y, sigma, prior_precision)
    assert res.curvature == "ggn" and res.d == d == prob.dim
    assert res.neg_loss == pytest.approx(log_lik, rel=1e-12)
    assert res.log_Z == pytest.approx(log_z, rel=1e-10)
    assert res.log_Z == pytest.approx(res.neg_loss + res.log_prior + res.rest, rel=1e-14)


def test_naive_weightnorm_ggn_evidence_matches_laplace_torch(trained):
    X, y, prob, theta = trained
    wn = WeightNorm(prob.param_shapes, normalize=(0, 2), reference=theta)
    naive = ggn_log_marginal_likelihood(lambda z: prob.predict(wn.from_vg(z)), y, wn.to_vg(theta),
                                        form="naive")
    model = _net(theta, prob.hidden)
    model[0], model[2] = _WeightNormLinear(model[0]), _WeightNormLinear(model[2])
    log_z, log_lik, d = _laplace_torch_log_z(model, X, y, 1.0, 1.0)
    assert naive.d == d == prob.dim + prob.hidden + 1
    assert naive.neg_loss == pytest.approx(log_lik, rel=1e-12)
    assert naive.log_Z == pytest.approx(log_z, rel=1e-10)
    cart = ggn_log_marginal_likelihood(prob.predict, y, theta)
    assert abs(naive.log_Z - cart.log_Z) > 1.0


def test_ggn_evidence_is_exact_for_linear_regression():
    g = torch.Generator().manual_seed(3)
    n, d, sigma, alpha = 25, 4, 0.7, 1.5
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = X @ torch.randn(d, generator=g, dtype=torch.float64) + sigma * torch.randn(n, generator=g, dtype=torch.float64)
    A = X.T @ X / sigma**2 + alpha * torch.eye(d, dtype=torch.float64)
    w_map = torch.linalg.solve(A, X.T @ y / sigma**2)
    cov = sigma**2 * torch.eye(n, dtype=torch.float64) + X @ X.T / alpha
    exact = torch.distributions.MultivariateNormal(torch.zeros(n, dtype=torch.float64), cov).log_prob(y)
    res = ggn_log_marginal_likelihood(lambda w: X @ w, y, w_map, sigma=sigma, prior_precision=alpha)
    assert res.log_Z == pytest.approx(float(exact), rel=1e-12)
    assert res.grad_norm < 1e-10
    # away from the MAP the Laplace value is below the (maximal) value at the MAP
    off = ggn_log_marginal_likelihood(lambda w: X @ w, y, w_map + 0.3, sigma=sigma, prior_precision=alpha)
    assert off.log_Z < res.log_Z and off.grad_norm > 0.1


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), kind=st.sampled_from(["scaling", "linear", "softplus", "weightnorm"]),
       sigma=st.floats(0.2, 2.0))
def test_ggn_evidence_invariant_at_any_point(seed, kind, sigma):
    """The GGN transforms as a tensor everywhere: no critical point needed."""
    g = torch.Generator().manual_seed(seed)
    X = 8 * torch.rand(20, 1, generator=g, dtype=torch.float64)
    y = torch.sin(X) + 0.3 * torch.randn(20, 1, generator=g, dtype=torch.float64)
    prob = SineMLPProblem(X, y, hidden=3, sigma=sigma)
    theta = torch.randn(prob.dim, generator=g, dtype=torch.float64)  # a generic, non-critical point
    if kind == "softplus":
        theta = theta.abs() + 0.1  # inside the image of softplus
    phi = {"scaling": Scaling(0.3),
           "linear": LinearMap(torch.eye(prob.dim, dtype=torch.float64)
                               + 0.3 * torch.randn(prob.dim, prob.dim, generator=g, dtype=torch.float64)),
           "softplus": Elementwise("softplus"),
           "weightnorm": WeightNorm(prob.param_shapes, normalize=(0, 2), reference=theta)}[kind]
    cart = ggn_log_marginal_likelihood(prob.predict, y, theta, sigma=sigma)
    inv = ggn_log_marginal_likelihood(lambda p: prob.predict(phi.inverse(p)), y, phi.forward(theta),
                                      sigma=sigma, prior_map=phi.inverse,
                                      metric=pullback_metric(None, phi, theta))
    naive = ggn_log_marginal_likelihood(lambda p: prob.predict(phi.inverse(p)), y, phi.forward(theta),
                                        sigma=sigma, prior_map=phi.inverse, form="naive")
    assert cart.grad_norm > 1e-3
    assert inv.log_Z == pytest.approx(cart.log_Z, rel=1e-8, abs=1e-8)
    assert inv.neg_loss == pytest.approx(cart.neg_loss, rel=1e-12)
    # ignoring the metric shifts the value by exactly log |det J| (at any point)
    shift = float(phi.log_abs_det_jacobian(theta))
    assert naive.log_Z == pytest.approx(cart.log_Z + shift, rel=1e-8, abs=1e-8)


def test_ggn_bad_inputs(trained):
    X, y, prob, theta = trained
    with pytest.raises(ValueError, match="form"):
        ggn_log_marginal_likelihood(prob.predict, y, theta, form="bogus")
    with pytest.raises(ValueError, match="naive"):
        ggn_log_marginal_likelihood(prob.predict, y, theta, form="naive", metric=torch.ones(prob.dim, dtype=torch.float64))
    with pytest.raises(ValueError, match="positive"):
        ggn_log_marginal_likelihood(prob.predict, y, theta, sigma=0.0)
    with pytest.raises(ValueError, match="positive"):
        ggn_log_marginal_likelihood(prob.predict, y, theta, prior_precision=-1.0)
    with pytest.raises(ValueError, match="flat"):
        ggn_log_marginal_likelihood(prob.predict, y, theta[None])
    with pytest.raises(ValueError, match="NaN"):
        ggn_log_marginal_likelihood(prob.predict, y, theta * math.nan)
    with pytest.raises(ValueError, match="targets"):
        ggn_log_marginal_likelihood(prob.predict, y[:-1], theta)
    with pytest.raises(ValueError, match="epochs"):
        fit_mse_adam(prob, theta, epochs=0)


def test_fit_mse_adam_trains_without_prior(trained):
    X, y, prob, theta = trained
    theta0 = prob.init_pytorch(0)
    mse = lambda t: float(((prob.y - prob.predict(t)) ** 2).mean())  # noqa: E731
    assert mse(theta) < 0.5 * mse(theta0)
    # sigma and the prior do not enter the training
    other = SineMLPProblem(X, y, hidden=6, sigma=0.3, prior_precision=10.0)
    assert torch.equal(fit_mse_adam(other, theta0, epochs=150), theta)


def test_protocol_run_small():
    run = sine_laplace_protocol_run(1, data=laplace_torch_sine_data(30), hidden=4, epochs=100)
    cart, naive, inv = (run.results[k] for k in ["cartesian", "weightnorm_naive", "weightnorm_invariant"])
    assert cart.d == inv.d == 13 and naive.d == 13 + 5
    assert inv.log_Z == pytest.approx(cart.log_Z, rel=1e-9)
    assert naive.neg_loss == pytest.approx(cart.neg_loss, rel=1e-12)
    assert run.grad_norm == cart.grad_norm > 0 and isinstance(run.hessian_min_eigenvalue, float)
    assert run.sq_norm == pytest.approx(float(run.theta @ run.theta))
    # log p(theta) = (d/2) log(alpha / 2 pi) - alpha |theta|^2 / 2 with alpha = 1
    assert cart.log_prior == pytest.approx(-0.5 * cart.d * math.log(2 * math.pi) - 0.5 * run.sq_norm)
    lean = sine_laplace_protocol_run(1, data=laplace_torch_sine_data(30), hidden=4, epochs=100,
                                     weightnorm=False, hessian=False)
    assert list(lean.results) == ["cartesian"] and lean.hessian_min_eigenvalue is None
    assert lean.results["cartesian"].log_Z == cart.log_Z


def test_exact_map_table_with_given_data_and_ggn():
    data = laplace_torch_sine_data(30)
    out = sine_laplace_table(0, hidden=3, adam_steps=300, data=data, with_ggn=True)
    assert set(out) == {"cartesian", "weightnorm_naive", "weightnorm_invariant", "cartesian_ggn"}
    assert out["cartesian"].grad_norm < 1e-6
    assert out["cartesian_ggn"].neg_loss == pytest.approx(out["cartesian"].neg_loss, rel=1e-12)
    assert out["cartesian_ggn"].curvature == "ggn" and out["cartesian"].curvature == "hessian"
