"""Kristiadi, Dangel & Hennig (2023), ``kristiadi2023geometry``: Table 1's sine regression (A6).

The experiment of their section 5.2 (Table 1, experiment A6), computed with the Laplace
tools of :mod:`lib.geometry.laplace`.

Two protocols of the same experiment:

* :func:`sine_laplace_protocol_run`: the protocol of the Laplace library's sinusoid example
  (laplace-torch, Daxberger et al. 2021), which the paper's appendix E.3.1 describes: a
  1-50-1 tanh network trained on the MSE with Adam (:func:`fit_mse_adam`), then the
  evidence with the generalized Gauss-Newton (GGN) posterior precision, noise
  ``sigma = 1`` and prior precision 1
  (:func:`lib.geometry.laplace.ggn_log_marginal_likelihood`), on the library's data
  (:func:`laplace_torch_sine_data`);
* :func:`sine_laplace_table`: the exact MAP of a stated model (true noise 0.3, 1-20-1,
  :class:`SineMLPProblem`) and the exact Hessian there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..book.synthetic import make_sine
from ..geometry.invariance import pullback_metric
from ..curvature.dense import dense_function_hessian
from ..geometry.laplace import (LaplaceResult, fit_map, gaussian_log_density,
                                ggn_log_marginal_likelihood, laplace_log_marginal_likelihood)
from ..geometry.reparam import WeightNorm

__all__ = ["SineMLPProblem", "fit_mse_adam", "sine_laplace_table", "laplace_torch_sine_data",
           "sine_laplace_protocol_run", "SineProtocolRun", "LAPLACE_TORCH_DATA_SEED"]

_LOG_2PI = math.log(2 * math.pi)


class SineMLPProblem:
    """A 1-``hidden``-1 tanh MLP on 1-D regression with a Gaussian likelihood and prior
    (the model of Kristiadi et al. 2023, section 5.2, experiment A6).

    Flat parameters (float64) in the order of ``nn.Linear`` layers:
    ``W1 (hidden, 1), b1 (hidden,), W2 (1, hidden), b2 (1,)``, ``d = 3 hidden + 1``.
    Likelihood ``y ~ N(f(x), sigma^2)``; prior ``theta ~ N(0, prior_precision^-1 I)`` on
    these Cartesian weights.
    """

    def __init__(self, X: Tensor, y: Tensor, *, hidden: int = 20, sigma: float = 0.3,
                 prior_precision: float = 1.0):
        if sigma <= 0 or prior_precision <= 0:
            raise ValueError("sigma and prior_precision must be positive")
        self.X, self.y = X.to(torch.float64), y.to(torch.float64).reshape(-1)
        self.hidden, self.sigma, self.prior_precision = int(hidden), float(sigma), float(prior_precision)
        h = self.hidden
        self.param_shapes = [(h, 1), (h,), (1, h), (1,)]
        self.dim = 3 * h + 1

    def unflatten(self, theta: Tensor):
        h = self.hidden
        return (theta[:h].reshape(h, 1), theta[h:2 * h], theta[2 * h:3 * h].reshape(1, h),
                theta[3 * h:])

    def predict(self, theta: Tensor, X: Tensor | None = None) -> Tensor:
        W1, b1, W2, b2 = self.unflatten(theta)
        X = self.X if X is None else X.to(torch.float64)
        return (torch.tanh(X @ W1.T + b1) @ W2.T + b2).reshape(-1)

    def nll(self, theta: Tensor) -> Tensor:
        """``-log p(D | theta)`` (summed over the data, with its normalizer)."""
        r = self.y - self.predict(theta)
        n = r.shape[0]
        return 0.5 * (r * r).sum() / self.sigma**2 + n * (math.log(self.sigma) + 0.5 * _LOG_2PI)

    def log_prior(self, theta: Tensor) -> Tensor:
        return gaussian_log_density(theta, self.prior_precision)

    def neg_log_joint(self, theta: Tensor) -> Tensor:
        return self.nll(theta) - self.log_prior(theta)

    def init(self, seed: int) -> Tensor:
        """``N(0, 1/fan_in)`` weights (fan_in 1 and ``hidden``), zero biases."""
        g = torch.Generator().manual_seed(seed)
        h = self.hidden
        W1 = torch.randn(h, generator=g, dtype=torch.float64)
        W2 = torch.randn(h, generator=g, dtype=torch.float64) / math.sqrt(h)
        return torch.cat([W1, torch.zeros(h, dtype=torch.float64), W2,
                          torch.zeros(1, dtype=torch.float64)])

    def init_pytorch(self, seed: int) -> Tensor:
        """PyTorch's default ``nn.Linear`` initialization, number for number, in float64.

        The values of ``torch.manual_seed(seed); nn.Sequential(nn.Linear(1, h), nn.Tanh(),
        nn.Linear(h, 1))`` (weights and biases ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``,
        drawn in float32 in the order ``W1, b1, W2, b2``), from a private generator, so
        the global random state is untouched. This is how the Laplace library's sinusoid
        example initializes its network.
        """
        g = torch.Generator().manual_seed(int(seed))
        parts = []
        for shape, fan_in in [((self.hidden, 1), 1), ((1, self.hidden), self.hidden)]:
            # kaiming_uniform_(a=sqrt(5)) for the weight, U(+-1/sqrt(fan_in)) for the bias
            w_bound = math.sqrt(3.0) * (math.sqrt(2.0 / (1 + 5)) / math.sqrt(fan_in))
            b_bound = 1 / math.sqrt(fan_in)
            parts.append(torch.empty(shape).uniform_(-w_bound, w_bound, generator=g).reshape(-1))
            parts.append(torch.empty(shape[0]).uniform_(-b_bound, b_bound, generator=g))
        return torch.cat(parts).to(torch.float64)


def fit_mse_adam(problem: "SineMLPProblem", theta0: Tensor, *, epochs: int = 1000,
                 lr: float = 1e-2) -> Tensor:
    """Train on the mean squared error with full-batch Adam, as the Laplace library's example
    that Kristiadi et al. (2023, appendix E.3.1) follow.

    ``epochs`` steps of ``torch.optim.Adam(lr=lr)`` (default betas and eps, no weight decay)
    on ``mean((y - f(theta))^2)`` over all of ``problem``'s data, in float64. Neither the
    noise ``sigma`` nor the prior enters: the result is *not* the MAP of
    ``problem.neg_log_joint``. Returns the detached ``(d,)`` end point.
    """
    if int(epochs) < 1 or not lr > 0:
        raise ValueError(f"need epochs >= 1 and lr > 0, got {epochs} and {lr}")
    theta = theta0.detach().to(torch.float64).clone().requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=lr)
    for _ in range(int(epochs)):
        opt.zero_grad()
        r = problem.y - problem.predict(theta)
        (r * r).mean().backward()
        opt.step()
    return theta.detach()


def sine_laplace_table(seed: int, *, num_points: int = 150, hidden: int = 20, sigma: float = 0.3,
                       prior_precision: float = 1.0, adam_steps: int = 3000,
                       data: tuple[Tensor, Tensor] | None = None, with_ggn: bool = False
                       ) -> dict[str, LaplaceResult]:
    """Kristiadi et al. (2023), section 5.2, Table 1 (experiment A6) for one seed, at the exact
    MAP with the exact Hessian.

    Data: ``data = (X, y)`` if given (e.g. :func:`laplace_torch_sine_data`), else
    ``make_sine(num_points, noise=0.3, seed=seed)`` (``x ~ U[0, 8]``,
    ``y = sin x + N(0, 0.3^2)``); model and prior: :class:`SineMLPProblem` (likelihood
    noise ``sigma``, default the true 0.3; prior ``N(0, prior_precision^-1 I)`` on the
    Cartesian weights); MAP by :func:`~lib.geometry.laplace.fit_map` from ``SineMLPProblem.init(seed)``.

    Returns three :class:`~lib.geometry.laplace.LaplaceResult` at the same network (the same function), and with
    ``with_ggn`` a fourth, ``"cartesian_ggn"``: :func:`~lib.geometry.laplace.ggn_log_marginal_likelihood` at the
    same MAP (the GGN instead of the Hessian):

    * ``"cartesian"``: the classical value (``G = I`` in Cartesian coordinates).
    * ``"weightnorm_naive"``: what a practitioner gets by wrapping both trained layers in
      WeightNorm (``v = w``, ``g = ||w||``, as ``torch.nn.utils.weight_norm`` does) and
      taking the autodiff Hessian in those ``d + units`` coordinates, with the same
      Gaussian prior ``N(0, prior_precision^-1 I)`` put on every ``(v, g)`` coordinate
      (the likelihood alone is flat along each ``v``). That point is not a critical point
      of the ``(v, g)`` objective (the prior pulls ``||v||`` towards 0 at no cost to the
      fit), as in the paper's procedure, so no critical-point check is made.
    * ``"weightnorm_invariant"``: the bijective :class:`~lib.geometry.reparam.WeightNorm` (polar,
      ``||v|| = 1``, stereographic direction charts centred at the MAP), the objective
      composed with ``phi^-1``, the autodiff Hessian in ``psi`` and the pulled-back
      identity metric: equal to ``"cartesian"`` up to round-off.
    """
    X, y = make_sine(num_points, noise=0.3, seed=seed, dtype=torch.float64) if data is None else data
    prob = SineMLPProblem(X, y, hidden=hidden, sigma=sigma, prior_precision=prior_precision)
    theta = fit_map(prob.neg_log_joint, prob.init(seed), adam_steps=adam_steps)
    cart = laplace_log_marginal_likelihood(prob.neg_log_joint, theta, log_prior=prob.log_prior)

    wn = WeightNorm(prob.param_shapes, normalize=(0, 2), reference=theta)
    vg = wn.to_vg(theta)

    def vg_log_prior(z):
        return gaussian_log_density(z, prob.prior_precision)

    def vg_neg_log_joint(z):
        return prob.nll(wn.from_vg(z)) - vg_log_prior(z)

    naive = laplace_log_marginal_likelihood(vg_neg_log_joint, vg, log_prior=vg_log_prior,
                                            form="naive", check_critical=False)
    inv = laplace_log_marginal_likelihood(prob.neg_log_joint, theta, log_prior=prob.log_prior,
                                          reparam=wn, form="invariant")
    out = {"cartesian": cart, "weightnorm_naive": naive, "weightnorm_invariant": inv}
    if with_ggn:
        out["cartesian_ggn"] = ggn_log_marginal_likelihood(
            prob.predict, prob.y, theta, sigma=prob.sigma, prior_precision=prob.prior_precision)
    return out


LAPLACE_TORCH_DATA_SEED = 711  # the seed of laplace-torch's regression example


def laplace_torch_sine_data(num_points: int = 150, *, seed: int = LAPLACE_TORCH_DATA_SEED,
                            dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """The sinusoid data of the Laplace library's regression example, value for value (the
    data of Kristiadi et al. 2023, appendix E.3.1).

    ``x = 8 rand(N)``, ``y = sin x + 0.3 randn`` drawn in float32 after
    ``torch.manual_seed(seed)`` (its ``get_sinusoid_example``), here from a private
    generator (:func:`lib.book.synthetic.make_sine` with ``sample_dtype=torch.float32``) and cast to
    ``dtype``. Returns ``(X, y)`` of shapes ``(N, 1)``.
    """
    return make_sine(num_points, noise=0.3, low=0.0, high=8.0, seed=seed, dtype=dtype,
                     sample_dtype=torch.float32)


@dataclass(frozen=True)
class SineProtocolRun:
    """One seed of experiment A6 (Kristiadi et al. 2023, Table 1) under the Laplace
    library's protocol.

    Attributes:
        theta: the trained point ``(d,)`` (float64).
        results: :class:`~lib.geometry.laplace.LaplaceResult` (GGN) by name: ``"cartesian"`` and, if computed,
            ``"weightnorm_naive"`` and ``"weightnorm_invariant"``.
        grad_norm: ``||grad L_MAP(theta)||`` of the evidence's own objective (noise
            ``sigma``, the prior) at the trained point: 0 at a MAP.
        hessian_min_eigenvalue: smallest eigenvalue of the exact Hessian of ``L_MAP`` at
            ``theta`` (negative: a saddle region, the Hessian Laplace is undefined), or
            ``None`` if not computed.
    """

    theta: Tensor
    results: dict
    grad_norm: float
    hessian_min_eigenvalue: float | None

    @property
    def sq_norm(self) -> float:
        """``|theta|^2``; the prior contributes ``-prior_precision |theta|^2 / 2`` to ``log Z``."""
        return float((self.theta * self.theta).sum())


def sine_laplace_protocol_run(seed: int, *, data: tuple[Tensor, Tensor] | None = None,
                              hidden: int = 50, sigma: float = 1.0, prior_precision: float = 1.0,
                              epochs: int = 1000, lr: float = 1e-2, weightnorm: bool = True,
                              hessian: bool = True) -> SineProtocolRun:
    """Kristiadi et al. (2023), section 5.2, Table 1 (experiment A6) for one seed, under the
    protocol of their appendix E.3.1 (laplace-torch's sinusoid example).

    The paper's appendix E.3.1 (150 points ``x ~ U[0, 8]``, ``y = sin x + N(0, 0.3^2)``,
    one hidden tanh layer, 1000 epochs) is the regression example of the Laplace library
    (Daxberger et al. 2021), whose evidence it computes with that library's defaults:

    * data: ``data`` or :func:`laplace_torch_sine_data` (drawn once; the same for every
      ``seed``);
    * model: 1-``hidden``-1 tanh MLP, :meth:`SineMLPProblem.init_pytorch` ``(seed)``;
    * training: :func:`fit_mse_adam` (full-batch Adam, ``lr``, MSE, no weight decay,
      ``epochs`` steps): not the MAP of the evidence's model;
    * evidence: :func:`~lib.geometry.laplace.ggn_log_marginal_likelihood` with noise ``sigma`` (laplace-torch's
      default 1) and prior precision ``prior_precision`` (default 1), at the trained point.

    With ``weightnorm`` also the two WeightNorm values at the same network, both with the
    GGN: ``"weightnorm_naive"`` (over-parametrized ``(v, g)`` coordinates, ``d + units``
    of them, with the prior ``N(0, prior_precision^-1 I)`` on every ``(v, g)`` coordinate:
    what the library computes for a network wrapped in ``weight_norm``) and
    ``"weightnorm_invariant"`` (the bijective :class:`~lib.geometry.reparam.WeightNorm`, the prior
    on ``theta = phi^-1(psi)``, the pulled-back identity metric): equal to
    ``"cartesian"`` up to round-off. With ``hessian`` the smallest eigenvalue of the exact
    Hessian of ``L_MAP`` at the trained point.
    """
    X, y = laplace_torch_sine_data(150) if data is None else data
    prob = SineMLPProblem(X, y, hidden=hidden, sigma=sigma, prior_precision=prior_precision)
    theta = fit_mse_adam(prob, prob.init_pytorch(seed), epochs=epochs, lr=lr)
    kw = dict(sigma=prob.sigma, prior_precision=prob.prior_precision)
    results = {"cartesian": ggn_log_marginal_likelihood(prob.predict, prob.y, theta, **kw)}
    if weightnorm:
        wn = WeightNorm(prob.param_shapes, normalize=(0, 2), reference=theta)
        results["weightnorm_naive"] = ggn_log_marginal_likelihood(
            lambda z: prob.predict(wn.from_vg(z)), prob.y, wn.to_vg(theta), form="naive", **kw)
        results["weightnorm_invariant"] = ggn_log_marginal_likelihood(
            lambda p: prob.predict(wn.inverse(p)), prob.y, wn.forward(theta), prior_map=wn.inverse,
            metric=pullback_metric(None, wn, theta), **kw)
    min_eig = None
    if hessian:
        _, _, H = dense_function_hessian(prob.neg_log_joint, theta)
        min_eig = float(torch.linalg.eigvalsh(H)[0])
    return SineProtocolRun(theta=theta, results=results, grad_norm=results["cartesian"].grad_norm,
                           hessian_min_eigenvalue=min_eig)
