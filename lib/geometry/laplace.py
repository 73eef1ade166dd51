"""The Laplace log marginal likelihood, naive and reparametrization-invariant.

For a negative log joint ``L_MAP(theta) = -log p(D | theta) - log p(theta)`` with a strict
minimum ``theta*`` and Hessian ``H = H(theta*)``, a second-order expansion of ``L_MAP``
around ``theta*`` and a Gaussian integral give::

    log Z = log int exp(-L_MAP(theta)) dtheta
          ~ -L_MAP(theta*) + (d/2) log(2 pi) - (1/2) log det H.

This is the correct form. Kristiadi, Dangel & Hennig (2023, eq. 5) print the last two
terms with the opposite signs; with their signs the Gaussian normalizer would be
inverted (``log Z`` would *grow* with the curvature), which the Bayesian linear
regression test (where Laplace is exact) rules out.

**Invariant form.** The parameter space carries a metric ``G`` (``None``: the identity,
i.e. Cartesian coordinates with the Lebesgue measure). ``L_MAP`` is read as minus the
log joint density *with respect to the Riemannian volume form* ``sqrt(det G) dtheta``,
a scalar function, so in new coordinates ``psi = phi(theta)`` it is simply
``L_MAP o phi^-1`` and ``G`` is pulled back (``J^-T G J^-1``). The Laplace approximation
of ``Z = int exp(-L_MAP) sqrt(det G) dtheta`` is::

    log Z ~ -L_MAP* + (d/2) log(2 pi) - (1/2) log det H + (1/2) log det G
          = -L_MAP* + (d/2) log(2 pi) - (1/2) log det(G^-1 H),

where ``+ (1/2) log det G`` is the volume term. At a critical point ``G^-1 H`` transforms
by similarity, so this value is the same in every coordinate system, and with
``G = I`` in Cartesian coordinates it is the classical value above.

**Naive form.** Autodiff Hessian in whatever coordinates one works in, the metric ignored
(implicitly ``G = I`` there): ``-L_MAP* + (d/2) log(2 pi) - (1/2) log det H``. It changes
under reparametrization (by ``log |det J|`` at a critical point), and with an
over-parametrization such as WeightNorm's ``(v, g)`` even ``d`` changes.

Decomposition (:class:`~lib.geometry.laplace.LaplaceResult`): ``log_Z = neg_loss + log_prior + rest`` with
``neg_loss = log p(D | theta*)`` (the paper's ``-L``), ``log_prior = log p(theta*)`` and
``rest = (d/2) log(2 pi) - (1/2) log det(G^-1 H)``. The paper's Table 1 column "Rest" is
``log_prior + rest`` (:attr:`~lib.geometry.laplace.LaplaceResult.table_rest`).

The paper's A6 experiment (section 5.2, Table 1), which uses these tools on a sine
regression, is in :mod:`lib.sources.kristiadi2023`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .._checks import check_vector
from ..curvature.dense import dense_function_hessian
from .invariance import check_critical_point, hessian_operator, pullback_metric
from .reparam import Reparametrization

__all__ = ["LaplaceResult", "laplace_log_marginal_likelihood",
           "ggn_log_marginal_likelihood", "gaussian_log_density", "fit_map", "LAPLACE_FORMS"]

LAPLACE_FORMS = ("invariant", "naive")
_LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True)
class LaplaceResult:
    """The Laplace log marginal likelihood and its parts (all Python floats).

    Attributes:
        log_Z: the approximation, ``= -neg_log_joint + rest``.
        neg_log_joint: ``L_MAP`` at the point.
        neg_loss: ``log p(D | theta*) = -L_MAP* - log_prior`` (the paper's ``-L``), or
            ``None`` if no ``log_prior`` was given.
        log_prior: ``log p(theta*)``, or ``None``.
        rest: ``(d/2) log(2 pi) - (1/2) logdet_operator``.
        logdet_hessian: ``log det H`` (autodiff Hessian in the working coordinates), or of
            the GGN posterior precision for :func:`ggn_log_marginal_likelihood`.
        logdet_metric: ``log det G`` in the working coordinates (0 for the naive form).
        logdet_operator: ``log det(G^-1 H)``, the one used in ``rest``.
        d: number of coordinates. grad_norm: ``||grad L_MAP||`` at the point.
        form: ``"invariant"`` or ``"naive"``.
        curvature: ``"hessian"`` (the exact Hessian) or ``"ggn"`` (the generalized
            Gauss-Newton posterior precision).
    """

    log_Z: float
    neg_log_joint: float
    neg_loss: float | None
    log_prior: float | None
    rest: float
    logdet_hessian: float
    logdet_metric: float
    logdet_operator: float
    d: int
    grad_norm: float
    form: str
    curvature: str = "hessian"

    @property
    def table_rest(self) -> float | None:
        """``log_prior + rest``: everything but ``-L`` (the paper's Table 1 "Rest")."""
        return None if self.log_prior is None else self.log_prior + self.rest


def _metric_logdets(H, metric) -> tuple[float, float]:
    """``(log det(G^-1 H), log det G)`` for a curvature ``H`` and a metric ``G``; raises the
    Laplace approximation's ValueError where ``G^-1 H`` is not positive definite."""
    E = hessian_operator(H, metric)
    try:
        logdet_e = E.logdet()
    except ValueError as err:
        raise ValueError(f"the Laplace approximation is undefined: {err}") from err
    return logdet_e, float(torch.linalg.slogdet(E.G.to_dense()).logabsdet)


def _check_form(form: str, metric) -> None:
    """ValueError for an unknown ``form`` or a metric given with the naive form."""
    if form not in LAPLACE_FORMS:
        raise ValueError(f"unknown form '{form}'; choose one of {LAPLACE_FORMS}")
    if form == "naive" and metric is not None:
        raise ValueError("the naive form ignores the metric (it uses the curvature as is); "
                         "pass metric=None or use form='invariant'")


def _check_flat_point(x, name: str) -> Tensor:
    """``x`` detached if it is a flat, finite, non-empty floating-point ``(d,)`` tensor, else
    TypeError/ValueError naming it."""
    check_vector(x, name)
    if x.numel() == 0:
        raise ValueError(f"{name} has no entries (d = 0): the Laplace approximation needs at "
                         "least one parameter")
    return x.detach()


def laplace_log_marginal_likelihood(neg_log_joint: Callable[[Tensor], Tensor], theta_map: Tensor,
                                    *, log_prior: Callable[[Tensor], Tensor] | None = None,
                                    metric=None, reparam: Reparametrization | None = None,
                                    form: str = "invariant", check_critical: bool = True,
                                    tol: float = 1e-6) -> LaplaceResult:
    """The Laplace approximation of ``log Z`` at a strict minimum of ``neg_log_joint``.

    Args:
        neg_log_joint: ``L_MAP(theta) = -log p(D|theta) - log p(theta)`` on flat parameters
            (float64 recommended), returning a 0-d tensor.
        theta_map: the minimum ``theta*``, flat ``(d,)``, in the coordinates of
            ``neg_log_joint``.
        log_prior: optional ``log p(theta)`` (same coordinates) for the decomposition.
        metric: ``G`` at ``theta*`` in those coordinates (``None``: identity; a ``(d,)``
            tensor: diagonal; ``(d, d)``: dense; or an SPD operator). Invariant form only.
        reparam: optional ``phi``; then everything is computed in ``psi = phi(theta)``
            coordinates: the functions become ``f o phi^-1``, the Hessian is the autodiff
            Hessian in ``psi`` and (invariant form) the metric is pulled back.
        form: ``"invariant"`` (``log det(G^-1 H)``) or ``"naive"`` (``log det H``).
        check_critical: warn (``UserWarning``) if ``||grad|| > tol`` at the point; the
            invariance needs a critical point. Set ``False`` where the point is knowingly
            not critical (e.g. the naive WeightNorm computation).

    Returns:
        A :class:`~lib.geometry.laplace.LaplaceResult`.

    Raises:
        ValueError: unknown ``form``; a metric with the naive form; a bad point (not flat,
            not finite, or with no entries); a Hessian (or ``G^-1 H``) that is not positive
            definite (not a strict minimum), whatever the metric.
    """
    # long because the docstring states the conventions; the code itself is under 40 lines
    _check_form(form, metric)
    theta_map = _check_flat_point(theta_map, "theta_map")
    if reparam is not None:
        if not isinstance(reparam, Reparametrization):
            raise TypeError(f"reparam must be a Reparametrization, got {type(reparam).__name__}")
        point = reparam.forward(theta_map).detach()
        f = lambda psi: neg_log_joint(reparam.inverse(psi))  # noqa: E731
        prior = None if log_prior is None else (lambda psi: log_prior(reparam.inverse(psi)))  # noqa: E731
    else:
        point, f, prior = theta_map, neg_log_joint, log_prior

    value, grad, H = dense_function_hessian(f, point)
    d = point.shape[0]
    grad_norm = float(grad.norm())
    if check_critical:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            check_critical_point(grad, tol)
    sign_h, logdet_h = torch.linalg.slogdet(H)
    if form == "naive":
        if float(sign_h) <= 0 or bool((torch.linalg.eigvalsh(H) <= 0).any()):
            raise ValueError("the Hessian is not positive definite at this point, so the Laplace "
                             "approximation is undefined (not a strict minimum)")
        logdet_g, logdet_e = 0.0, float(logdet_h)
    else:
        if reparam is not None:
            G = pullback_metric(metric, reparam, theta_map)
        else:
            G = metric
        logdet_e, logdet_g = _metric_logdets(H, G)
    rest = 0.5 * d * _LOG_2PI - 0.5 * logdet_e
    neg_log_joint_value = float(value)
    lp = None if prior is None else float(prior(point).detach())
    neg_loss = None if lp is None else -neg_log_joint_value - lp
    return LaplaceResult(log_Z=-neg_log_joint_value + rest, neg_log_joint=neg_log_joint_value,
                         neg_loss=neg_loss, log_prior=lp, rest=rest,
                         logdet_hessian=float(logdet_h), logdet_metric=logdet_g,
                         logdet_operator=float(logdet_e), d=d, grad_norm=grad_norm, form=form)


def ggn_log_marginal_likelihood(predict: Callable[[Tensor], Tensor], y: Tensor, point: Tensor, *,
                                sigma: float = 1.0, prior_precision: float = 1.0,
                                prior_map: Callable[[Tensor], Tensor] | None = None,
                                metric=None, form: str = "invariant") -> LaplaceResult:
    """The Laplace ``log Z`` of Gaussian regression with the GGN as the curvature.

    The model: ``y_i ~ N(f_i(point), sigma^2)`` with ``f = predict(point)`` of shape
    ``(n,)``, and the prior ``N(0, prior_precision^-1 I)`` on ``theta = prior_map(point)``
    (default: on ``point`` itself). Both terms of ``L_MAP`` are convex functions of an
    inner map (the outputs ``f`` and the prior's argument ``theta``), and the curvature is
    their generalized Gauss-Newton matrix (Schraudolph 2002)

        ``P = J_f^T J_f / sigma^2 + prior_precision J_theta^T J_theta``   ``(d, d)``,

    the posterior precision of the Laplace library (laplace-torch, Daxberger et al. 2021,
    ``hessian_structure="full"`` with its default GGN backend). Then

        ``log Z = log p(y | f) + log p(theta) + (d/2) log(2 pi) - (1/2) log det(G^-1 P)``,

    equal to laplace-torch's ``log_likelihood - (log det P - log det P_0 + scatter) / 2``
    for ``G = I``. Unlike the Hessian, ``P`` needs only first derivatives, so it transforms
    as ``J^-T P J^-1`` under a reparametrization at *every* point, and with ``prior_map =
    phi^-1`` and the pulled-back metric the value is invariant at any point (no critical
    point needed). It is also positive definite by construction (``prior_precision > 0``
    and an injective ``prior_map``), so it exists where the Hessian is indefinite.

    Args:
        predict: ``point -> f`` of shape ``(n,)`` (float64 recommended).
        y: targets, ``(n,)`` or ``(n, 1)``.
        point: flat ``(d,)`` point in the coordinates of ``predict``.
        sigma: the likelihood's noise standard deviation (> 0).
        prior_precision: the prior's precision (> 0).
        prior_map: ``point -> theta``, the coordinates the Gaussian prior is placed on
            (e.g. a reparametrization's ``inverse``); ``None``: the point's own coordinates.
        metric: ``G`` at the point in its coordinates (``None``: identity; see
            :func:`lib.geometry.invariance.hessian_operator`). Invariant form only.
        form: ``"invariant"`` or ``"naive"`` (a label; the naive form takes no metric).

    Returns:
        A :class:`~lib.geometry.laplace.LaplaceResult` with ``curvature="ggn"``; ``logdet_hessian`` is
        ``log det P``, ``grad_norm`` the norm of the gradient of ``L_MAP`` at the point.

    Raises:
        ValueError: bad ``form``, ``sigma``, ``prior_precision``, point or shapes; a metric
            with the naive form.
    """
    # long because the docstring states the conventions; the code itself is under 40 lines
    _check_form(form, metric)
    if not sigma > 0 or not prior_precision > 0:
        raise ValueError(f"sigma and prior_precision must be positive, got {sigma} and {prior_precision}")
    point = _check_flat_point(point, "point")
    y = torch.as_tensor(y).detach().to(point.dtype).reshape(-1)
    prior_map = (lambda t: t) if prior_map is None else prior_map  # noqa: E731
    sigma, prior_precision = float(sigma), float(prior_precision)
    d = point.shape[0]
    f = predict(point).detach()
    if f.shape != y.shape:
        raise ValueError(f"predict returned shape {tuple(f.shape)}, but y has {y.shape[0]} targets")
    n = y.shape[0]

    def log_lik(p):
        r = y - predict(p)
        return -0.5 * (r * r).sum() / sigma**2 - n * (math.log(sigma) + 0.5 * _LOG_2PI)

    def log_prior(p):
        return gaussian_log_density(prior_map(p), prior_precision)

    J_f = torch.func.jacrev(predict)(point)                              # (n, d)
    J_p = torch.func.jacrev(prior_map)(point)                            # (d_theta, d)
    P = J_f.T @ J_f / sigma**2 + prior_precision * (J_p.T @ J_p)
    P = 0.5 * (P + P.T)
    grad = torch.func.grad(lambda p: -log_lik(p) - log_prior(p))(point)
    logdet_e, logdet_g = _metric_logdets(P, metric)
    ll, lp = float(log_lik(point)), float(log_prior(point))
    rest = 0.5 * d * _LOG_2PI - 0.5 * logdet_e
    return LaplaceResult(log_Z=ll + lp + rest, neg_log_joint=-(ll + lp), neg_loss=ll, log_prior=lp,
                         rest=rest, logdet_hessian=float(torch.linalg.slogdet(P).logabsdet),
                         logdet_metric=logdet_g, logdet_operator=float(logdet_e), d=d,
                         grad_norm=float(grad.norm()), form=form, curvature="ggn")


def gaussian_log_density(theta: Tensor, precision: float) -> Tensor:
    """``log N(theta | 0, precision^-1 I)`` of a flat ``theta`` ``(d,)``, a 0-d tensor."""
    d = theta.shape[0]
    return 0.5 * d * (math.log(precision) - _LOG_2PI) - 0.5 * precision * (theta * theta).sum()


def fit_map(neg_log_joint: Callable[[Tensor], Tensor], theta0: Tensor, *, adam_steps: int = 3000,
            lr: float = 1e-2, grad_tol: float = 1e-8, max_lbfgs_rounds: int = 10,
            max_newton_steps: int = 100) -> Tensor:
    """Minimize ``neg_log_joint`` from ``theta0``: Adam, L-BFGS, then damped Newton, in float64.

    Stops once ``||grad|| < grad_tol``; warns (``UserWarning``) if it does not get there.
    Returns the detached float64 minimizer.
    """
    theta = theta0.detach().to(torch.float64).clone().requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=lr)
    for _ in range(adam_steps):
        opt.zero_grad()
        neg_log_joint(theta).backward()
        opt.step()
    lbfgs = torch.optim.LBFGS([theta], lr=1.0, max_iter=200, history_size=50,
                              tolerance_grad=grad_tol * 1e-2, tolerance_change=0.0,
                              line_search_fn="strong_wolfe")

    def closure():
        lbfgs.zero_grad()
        loss = neg_log_joint(theta)
        loss.backward()
        return loss

    for _ in range(max_lbfgs_rounds):
        lbfgs.step(closure)
    # polish with damped Newton steps (dense Hessian; small d), accepted only if they descend
    x = theta.detach()
    value, grad, H = dense_function_hessian(neg_log_joint, x)
    damping = 0.0
    for _ in range(max_newton_steps):
        if float(grad.norm()) < grad_tol:
            break
        eye = torch.eye(x.shape[0], dtype=x.dtype)
        step = torch.linalg.solve(H + damping * eye, grad)
        cand = x - step
        cand_value = neg_log_joint(cand).detach()
        if torch.isfinite(cand_value) and float(cand_value) <= float(value) + 1e-12 * abs(float(value)):
            x, damping = cand, damping / 10
            value, grad, H = dense_function_hessian(neg_log_joint, x)
        else:
            damping = max(10 * damping, 1e-6 * float(H.diagonal().abs().max()))
    grad_norm = float(grad.norm())
    theta = x
    if not grad_norm < grad_tol:
        warnings.warn(f"fit_map stopped at gradient norm {grad_norm:.3e} >= {grad_tol:.1e}",
                      UserWarning, stacklevel=2)
    return theta.detach()
