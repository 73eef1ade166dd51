"""Adaptive and geodesic sharpness, the Auto-PGD solver behind them, and closed forms.

Sharpness measures how much the training loss can rise when the weights ``w`` move a
little. Plain Euclidean balls are not invariant under the symmetries of a network
(rescalings, the ``GL(h)`` symmetry of attention), so two parameter points that compute
the same function can get very different values. This module implements

* **adaptive sharpness** (Kwon et al. 2021; Andriushchenko et al. 2023,
  ``andriushchenko2023modern``): perturbations ``delta`` with ``||delta / |w| ||_p <= rho``
  on the straight line ``w + delta``, average case (Gaussian ``delta``) or worst case
  (maximised by Auto-PGD), :func:`adaptive_sharpness`;
* **geodesic sharpness** (da Silva et al. 2025, ``dasilva2025hideseek``): horizontal
  perturbations ``xi`` of the quotient geometry of :mod:`lib.geometry.quotient`, measured in its
  metric and followed along an (approximate) geodesic, :func:`geodesic_sharpness`;
* **Auto-PGD** (Croce & Hein 2020, ``croce2020reliable``) for any *geometry* object that
  implements ``norm / project / ascent_direction / perturb / random``
  (:class:`AdaptiveGeometry` here, ``QuotientGeometry`` in :mod:`lib.geometry.quotient`),
  :func:`auto_pgd`;
* :func:`trust_region_max`, the global maximum of a quadratic on a ball (the closed forms of
  :mod:`lib.sources.dasilva2025` reduce to it);
* :func:`kendall_tau`, the rank correlation used to compare sharpness with generalisation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from .._checks import check_int, check_seed
from ..book.batches import as_batches

__all__ = [
    "adaptive_sharpness", "geodesic_sharpness", "auto_pgd", "AdaptiveGeometry",
    "perturbation_objective", "kendall_tau", "discordant_pairs", "trust_region_max",
    "TrustRegionResult",
]

KINDS = ("average", "worst")
NORMS = ("l2", "linf")
METRICS = ("inv", "mix")

# Auto-PGD constants (Croce & Hein 2020, kept as in Andriushchenko et al. 2023)
APGD_MOMENTUM = 0.75
APGD_SUCCESS_FRACTION = 0.75


# --------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------
def _check_rho(rho: Any) -> float:
    if isinstance(rho, bool) or not isinstance(rho, (int, float, np.integer, np.floating)):
        raise TypeError(f"rho must be a positive real number, got {type(rho).__name__} {rho!r}")
    rho = float(rho)
    if not math.isfinite(rho) or rho <= 0:
        raise ValueError(f"rho must be a positive finite number, got {rho}")
    return rho


def _check_choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def _check_model(model: Any) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return model


def _check_loss_fn(loss_fn: Any) -> Callable:
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable as loss_fn(outputs, targets), "
                        f"got {type(loss_fn).__name__}")
    return loss_fn


def _check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return value


def _trainable(model: nn.Module) -> dict[str, Tensor]:
    """Detached copies of the trainable parameters: the fixed base point ``w``."""
    params = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError("model has no trainable parameters (requires_grad=True)")
    return params


# --------------------------------------------------------------------------------------
# The loss of a perturbed model
# --------------------------------------------------------------------------------------
def _normalize(outputs: Tensor) -> Tensor:
    """Divide each sample's outputs (all dims but the first) by their L2 norm
    (logit normalisation of Andriushchenko et al. 2023); zero rows are left alone."""
    flat = outputs.reshape(outputs.shape[0], -1) if outputs.ndim > 0 else outputs.reshape(1, 1)
    scale = flat.norm(dim=1).clamp_min(torch.finfo(outputs.dtype).tiny)
    return outputs / scale.reshape((-1,) + (1,) * (outputs.ndim - 1))


def _loss(model: nn.Module, loss_fn: Callable, params: Mapping[str, Tensor], X: Tensor, y: Tensor,
          normalize_logits: bool) -> Tensor:
    outputs = functional_call(model, dict(params), (X,))
    if normalize_logits:
        outputs = _normalize(outputs)
    loss = loss_fn(outputs, y)
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        raise ValueError("loss_fn must return a scalar tensor (use mean reduction)")
    return loss.reshape(())


def perturbation_objective(model: nn.Module, loss_fn: Callable, geometry: Any, X: Tensor,
                           y: Tensor, *, normalize_logits: bool = False) -> Callable:
    """The function ``f(xi) = L(geometry.perturb(xi)) - L(w)`` that Auto-PGD maximises.

    ``X`` ``(N, ...)``, ``y`` ``(N, ...)`` is one batch; ``xi`` a dict of tangent vectors
    shaped like the trainable parameters. ``f`` returns a 0-d tensor, differentiable in
    ``xi``; the model's own parameters are never touched (``torch.func.functional_call``).
    """
    with torch.no_grad():
        base = _loss(model, loss_fn, geometry.params, X, y, normalize_logits)

    def objective(xi: Mapping[str, Tensor]) -> Tensor:
        return _loss(model, loss_fn, geometry.perturb(xi), X, y, normalize_logits) - base

    return objective


# --------------------------------------------------------------------------------------
# Adaptive geometry
# --------------------------------------------------------------------------------------
class AdaptiveGeometry:
    """Adaptive (``|w|``-scaled) perturbations on the straight line ``w + xi``.

    With ``c = |w|`` the norm of a tangent vector ``xi`` (dict, one tensor per trainable
    parameter, same shapes) is ``||xi / c||_2`` (``norm="l2"``) or ``||xi / c||_inf``
    (``norm="linf"``); entries where ``w == 0`` cannot move (they are zeroed by
    :meth:`project`, as the ``c``-scaled parametrisation ``xi = c * z`` implies). Implements
    the geometry protocol shared with ``lib.geometry.quotient.QuotientGeometry``.
    """

    def __init__(self, model: nn.Module, *, norm: str = "l2"):
        _check_model(model)
        self.norm_kind = _check_choice(norm, "norm", NORMS)
        self.params = _trainable(model)
        self.scale = {k: w.abs() for k, w in self.params.items()}
        # 1/c where c > 0 and 0 elsewhere, so frozen (zero) entries drop out of every norm
        self.inv_scale = {k: torch.where(c > 0, 1.0 / c.clamp_min(torch.finfo(c.dtype).tiny),
                                         torch.zeros_like(c)) for k, c in self.scale.items()}

    def norm(self, xi: Mapping[str, Tensor]) -> Tensor:
        """The adaptive norm of ``xi`` (0-d tensor)."""
        scaled = [(xi[k] * s).reshape(-1) for k, s in self.inv_scale.items()]
        flat = torch.cat(scaled)
        return flat.abs().max() if self.norm_kind == "linf" else flat.norm()

    def project(self, xi: Mapping[str, Tensor], rho: float) -> dict[str, Tensor]:
        """Closest point (in the adaptive norm) of the ball of radius ``rho``:
        rescaling for ``l2``, clamping ``xi / c`` to ``[-rho, rho]`` for ``linf``."""
        if self.norm_kind == "linf":
            return {k: torch.maximum(torch.minimum(xi[k], rho * c), -rho * c)
                    for k, c in self.scale.items()}
        masked = {k: xi[k] * (c > 0) for k, c in self.scale.items()}
        factor = (rho / self.norm(masked).clamp_min(1e-300)).clamp(max=1.0)
        return {k: t * factor for k, t in masked.items()}

    def ascent_direction(self, grad: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Steepest ascent of unit norm: ``grad * c^2 / ||grad * c||_2`` (the normalised
        Riemannian gradient of the metric ``diag(1/c^2)``) for ``l2``, ``c * sign(grad)``
        for ``linf``; zeros when the gradient vanishes."""
        if self.norm_kind == "linf":
            return {k: c * torch.sign(grad[k]) for k, c in self.scale.items()}
        length = torch.cat([(grad[k] * c).reshape(-1) for k, c in self.scale.items()]).norm()
        if length == 0:
            return {k: torch.zeros_like(c) for k, c in self.scale.items()}
        return {k: grad[k] * c * c / length for k, c in self.scale.items()}

    def perturb(self, xi: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The perturbed parameters ``w + xi`` (differentiable in ``xi``)."""
        return {k: w + xi[k] for k, w in self.params.items()}

    def random(self, rho: float, generator: torch.Generator) -> dict[str, Tensor]:
        """A random vector of norm exactly ``rho``: ``c * z`` rescaled, with ``z``
        standard normal (``l2``) or uniform on ``[-1, 1]`` (``linf``)."""
        draws = {}
        for k, c in self.scale.items():
            if self.norm_kind == "linf":
                z = 2 * torch.rand(c.shape, generator=generator, dtype=c.dtype, device=c.device) - 1
            else:
                z = torch.randn(c.shape, generator=generator, dtype=c.dtype, device=c.device)
            draws[k] = c * z
        length = self.norm(draws)
        if length == 0:
            raise ValueError("every trainable weight is zero: adaptive perturbations cannot move")
        return {k: t * (rho / length) for k, t in draws.items()}


# --------------------------------------------------------------------------------------
# Auto-PGD
# --------------------------------------------------------------------------------------
def _checkpoints(n_iter: int) -> set[int]:
    """Iterations ``w_j = ceil(p_j n_iter)`` with ``p_0 = 0, p_1 = 0.22`` and
    ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)`` (Croce & Hein 2020)."""
    p_prev, p = 0.0, 0.22
    points = set()
    while p <= 1.0:
        points.add(math.ceil(p * n_iter))
        p_prev, p = p, p + max(p - p_prev - 0.03, 0.06)
    points.discard(0)
    return points


def _value_and_grad(objective: Callable, xi: Mapping[str, Tensor], need_grad: bool = True
                    ) -> tuple[float, dict[str, Tensor] | None]:
    if not need_grad:
        with torch.no_grad():
            return float(objective(xi)), None
    leaves = {k: t.detach().requires_grad_(True) for k, t in xi.items()}
    with torch.enable_grad():
        value = objective(leaves)
        grads = torch.autograd.grad(value, list(leaves.values()), allow_unused=True)
    grad = {k: torch.zeros_like(t) if g is None else g for (k, t), g in zip(leaves.items(), grads)}
    return float(value.detach()), grad


def _ball_projection(geometry: Any, rho: float) -> Callable:
    """Projection onto the feasible set for vectors that are already horizontal.

    Auto-PGD only ever projects linear combinations of feasible points and ascent
    directions, which lie in the (fixed, linear) horizontal space at ``w``. For the
    Euclidean-type norms of ``QuotientGeometry`` and the l2 ``AdaptiveGeometry`` the
    projection is then a radial rescaling, which skips the per-step horizontal projection
    (the costly part, an ``O(h^3)`` solve per head). Other geometries use ``project``.
    """
    radial = isinstance(geometry, AdaptiveGeometry) and geometry.norm_kind == "l2"
    try:  # lazy import: lib.geometry.quotient is optional for adaptive sharpness
        from .quotient import QuotientGeometry
        radial = radial or isinstance(geometry, QuotientGeometry)
    except ImportError:  # pragma: no cover
        pass
    if not radial:
        return lambda xi: geometry.project(xi, rho)

    def shrink(xi: dict[str, Tensor]) -> dict[str, Tensor]:
        length = float(geometry.norm(xi))
        if length <= rho:
            return xi
        return {k: t * (rho / length) for k, t in xi.items()}

    return shrink


def auto_pgd(objective: Callable, geometry: Any, rho: float, *, n_iter: int = 20,
             momentum: float = APGD_MOMENTUM, seed: int = 0) -> tuple[dict[str, Tensor], float]:
    """Maximise ``objective(xi)`` over ``{xi : geometry.norm(xi) <= rho}`` by Auto-PGD.

    Algorithm 1 of da Silva et al. (2025) / Croce & Hein (2020). ``objective`` maps a dict of
    tangent vectors (shapes of ``geometry.params``) to a 0-d tensor, differentiably. Start
    ``xi_0 = 0`` (invariant under any symmetry, so points on one orbit give the same
    result); if the gradient vanishes there, ``geometry.random(rho / 2)`` from a generator
    seeded with ``seed``. Step size ``eta = 2 rho``;
    ``z = P(xi_k + eta d_k)``, ``xi_{k+1} = P(xi_k + a (z - xi_k) + (1 - a)(xi_k - xi_{k-1}))``
    with ``a = momentum`` and ``d_k = geometry.ascent_direction(grad f(xi_k))``. At the
    checkpoints of :func:`_checkpoints` ``eta`` is halved and the iterate reset to the best
    point if fewer than 75 % of the steps since the last checkpoint increased ``f``
    (Condition 1) or neither ``eta`` nor the best value changed since then (Condition 2).

    Unlike the listing of Algorithm 1 in the paper, each value is paired with the iterate it
    was computed at (there ``l(v^(k+1))``, the loss at ``xi^(k)``, is stored with
    ``xi^(k+1)``), and the restart resets the perturbation ``xi``, not the weights ``w``.

    Costs ``n_iter + 1`` evaluations of ``objective``, ``n_iter`` of them with a gradient
    (one more of each if the random start is needed). Returns
    ``(xi_max, f_max)``: the best feasible tangent vector found (detached dict) and its value
    (float; ``f(0)`` is a candidate, so ``f_max >= objective(0)``).
    """
    if not callable(objective):
        raise TypeError("objective must be callable")
    rho = _check_rho(rho)
    n_iter = check_int(n_iter, "n_iter")
    seed = check_seed(seed)
    if not 0 <= float(momentum) <= 1:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    zero = {k: torch.zeros_like(w) for k, w in geometry.params.items()}
    f0, grad = _value_and_grad(objective, zero)
    direction = geometry.ascent_direction(grad)
    best_x, best_f, best_dir = zero, f0, direction
    if all(not bool(d.any()) for d in direction.values()):  # stationary start: move off it
        device = next(iter(zero.values())).device
        generator = torch.Generator(device=device).manual_seed(seed)
        x = geometry.project(geometry.random(rho / 2, generator), rho)
        f, grad = _value_and_grad(objective, x)
        direction = geometry.ascent_direction(grad)
        if f > best_f:
            best_x, best_f, best_dir = x, f, direction
    else:
        x, f = zero, f0

    eta = 2.0 * rho
    checkpoints = _checkpoints(n_iter)
    last_eta, last_best, successes, last_checkpoint = eta, best_f, 0, 0
    x_prev = x
    into_ball = _ball_projection(geometry, rho)
    for k in range(n_iter):
        z = into_ball({n: x[n] + eta * d for n, d in direction.items()})
        if k == 0:  # no momentum on the first step
            x_new = z
        else:
            x_new = into_ball({n: x[n] + momentum * (z[n] - x[n])
                               + (1 - momentum) * (x[n] - x_prev[n]) for n in x})
        last = k == n_iter - 1  # the final iterate needs its value only
        f_new, grad = _value_and_grad(objective, x_new, need_grad=not last)
        direction = None if last else geometry.ascent_direction(grad)
        successes += f_new > f
        if f_new > best_f:
            best_x, best_f, best_dir = x_new, f_new, direction
        x_prev, x, f = x, x_new, f_new
        step = k + 1
        if step in checkpoints and step < n_iter:
            condition1 = successes < APGD_SUCCESS_FRACTION * (step - last_checkpoint)
            condition2 = last_eta == eta and last_best == best_f
            last_eta, last_best = eta, best_f
            if condition1 or condition2:
                eta /= 2
                # restart from the best point, without momentum (its direction is stored)
                x, x_prev, f, direction = best_x, best_x, best_f, best_dir
            successes, last_checkpoint = 0, step
    return {k: t.detach() for k, t in best_x.items()}, float(best_f)


# --------------------------------------------------------------------------------------
# Public sharpness measures
# --------------------------------------------------------------------------------------
class _EvalMode:
    """Put a model in eval mode for the duration of a ``with`` block, then restore it."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self):
        self.modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()

    def __exit__(self, *exc):
        for module, training in self.modes:
            module.training = training


def _device(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def _worst_case(model, loss_fn, batches, geometry, rho, n_iter, normalize_logits, seed) -> float:
    values = []
    for X, y in batches:
        objective = perturbation_objective(model, loss_fn, geometry, X, y,
                                           normalize_logits=normalize_logits)
        values.append(auto_pgd(objective, geometry, rho, n_iter=n_iter, seed=seed)[1])
    return float(np.mean(values))


def adaptive_sharpness(model: nn.Module, loss_fn: Callable, data: Any, rho: float,
                       kind: str = "average", norm: str = "l2", *, batch_size: int | None = None,
                       n_iter: int = 20, n_samples: int = 20, normalize_logits: bool = False,
                       seed: int = 0) -> float:
    """Adaptive sharpness of ``model`` at its current weights ``w`` (Andriushchenko et al. 2023).

    With ``c = |w|`` (all trainable parameters) and one batch ``(X, y)``:

    * ``kind="average"``: mean over ``n_samples`` draws ``delta = rho * c * N(0, I)`` of
      ``L(w + delta) - L(w)`` (``norm`` is validated but not used: the Gaussian is the same);
    * ``kind="worst"``: ``max L(w + delta) - L(w)`` over ``||delta / c||_p <= rho``
      (``p`` = ``norm``), found by :func:`auto_pgd` with ``n_iter`` steps.

    ``data`` is an ``(X, y)`` pair (cut into consecutive batches of ``batch_size``; ``None``:
    one batch) or an iterable of ``(X, y)`` batches; the value is the unweighted mean of the
    per-batch values (the paper: 2048 points in batches of 256).
    ``loss_fn(outputs, targets)`` must return a scalar (mean reduction). With
    ``normalize_logits`` the outputs are divided by their per-sample L2 norm first. The
    model runs in eval mode and its parameters are not modified. Random draws come from a
    generator seeded with ``seed``. Returns a float.
    """
    _check_model(model)
    _check_loss_fn(loss_fn)
    rho = _check_rho(rho)
    _check_choice(kind, "kind", KINDS)
    _check_choice(norm, "norm", NORMS)
    n_iter = check_int(n_iter, "n_iter")
    n_samples = check_int(n_samples, "n_samples")
    seed = check_seed(seed)
    _check_bool(normalize_logits, "normalize_logits")
    batches = as_batches(data, batch_size=batch_size, device=_device(model))
    geometry = AdaptiveGeometry(model, norm=norm)
    with _EvalMode(model):
        if kind == "worst":
            return _worst_case(model, loss_fn, batches, geometry, rho, n_iter,
                               normalize_logits, seed)
        generator = torch.Generator(device=_device(model)).manual_seed(seed)
        values = []
        with torch.no_grad():
            for X, y in batches:
                base = _loss(model, loss_fn, geometry.params, X, y, normalize_logits)
                for _ in range(n_samples):
                    delta = {k: rho * c * torch.randn(c.shape, generator=generator, dtype=c.dtype,
                                                      device=c.device)
                             for k, c in geometry.scale.items()}
                    loss = _loss(model, loss_fn, geometry.perturb(delta), X, y, normalize_logits)
                    values.append(float(loss - base))
        return float(np.mean(values))


def geodesic_sharpness(model: nn.Module, loss_fn: Callable, data: Any, rho: float,
                       metric: str = "inv", *, eps: float = 1e-6, symmetries: Any = None,
                       geodesic_norm: bool = True, second_order: bool = True,
                       batch_size: int | None = None, n_iter: int = 20,
                       normalize_logits: bool = False, seed: int = 0) -> float:
    """Worst-case geodesic sharpness (da Silva et al. 2025): ``max L(exp_w(xi)) - L(w)`` over
    horizontal ``xi`` with metric norm ``<= rho``, solved by :func:`auto_pgd`.

    The geometry is ``lib.geometry.quotient.QuotientGeometry(model, metric=metric, eps=eps,
    symmetries=symmetries, geodesic_norm=geodesic_norm, second_order=second_order)``:
    ``GL(h)`` blocks of every ``nn.MultiheadAttention`` head (metric ``"inv"``, eq. 15, or
    ``"mix"``, eq. 34, relaxed by ``eps``), rescale pairs of modules with a
    ``rescale_pairs`` attribute (exact geodesics), every other weight adaptive (App. C.1).
    ``geodesic_norm=False`` / ``second_order=False`` are the ablations of Figs. 9-10.
    A model without any such symmetry raises ``ValueError`` (use :func:`adaptive_sharpness`).
    ``data``, ``batch_size``, ``n_iter``, ``normalize_logits``, ``seed`` as in
    :func:`adaptive_sharpness`. The model's parameters are not modified. Returns a float.
    """
    _check_model(model)
    _check_loss_fn(loss_fn)
    rho = _check_rho(rho)
    _check_choice(metric, "metric", METRICS)
    n_iter = check_int(n_iter, "n_iter")
    seed = check_seed(seed)
    _check_bool(normalize_logits, "normalize_logits")
    batches = as_batches(data, batch_size=batch_size, device=_device(model))
    from .quotient import QuotientGeometry  # lazy: the quotient module is the heavier import

    geometry = QuotientGeometry(model, metric=metric, eps=eps, symmetries=symmetries,
                                geodesic_norm=geodesic_norm, second_order=second_order)
    with _EvalMode(model):
        return _worst_case(model, loss_fn, batches, geometry, rho, n_iter, normalize_logits, seed)


# --------------------------------------------------------------------------------------
# Rank correlation
# --------------------------------------------------------------------------------------
def discordant_pairs(a: Any, b: Any) -> int:
    """Number of pairs ``i < j`` that two sequences order oppositely (ties in either not
    counted): why two sharpness measures have equal or nearly equal Kendall tau
    (introduced in the geodesic-sharpness chapter, D5).

    Args:
        a, b: sequences (or 1-D arrays) of the same length ``M``.

    Returns:
        An int between 0 and ``M (M - 1) / 2``.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"a and b must be 1-D of the same length, got shapes {a.shape} and {b.shape}")
    signs = np.sign(a[:, None] - a[None, :]) * np.sign(b[:, None] - b[None, :])
    return int((signs < 0).sum() // 2)


def kendall_tau(a: Any, b: Any) -> float:
    """Kendall's rank correlation ``tau_b`` of two sequences of equal length ``M >= 2``.

    ``tau_b = sum_{i<j} s_ij t_ij / sqrt(sum s_ij^2 * sum t_ij^2)`` with
    ``s_ij = sign(a_i - a_j)``, ``t_ij = sign(b_i - b_j)``: on tie-free data this is
    ``2 / (M (M - 1)) sum_{i<j} s_ij t_ij`` (eq. in Section 5 of the paper) and equals
    ``scipy.stats.kendalltau``; ties are handled like scipy's ``tau-b``. ``nan`` when one
    sequence is constant. O(M^2) memory, meant for tens to a few thousand models.
    """
    x = np.asarray(a.detach().cpu() if isinstance(a, Tensor) else a, dtype=float)
    z = np.asarray(b.detach().cpu() if isinstance(b, Tensor) else b, dtype=float)
    if x.ndim != 1 or z.ndim != 1 or x.shape != z.shape:
        raise ValueError(f"a and b must be 1-D sequences of equal length, got shapes "
                         f"{x.shape} and {z.shape}")
    if x.size < 2:
        raise ValueError("kendall_tau needs at least two observations")
    if not (np.isfinite(x).all() and np.isfinite(z).all()):
        raise ValueError("a and b must be finite")
    s = np.sign(x[:, None] - x[None, :])
    t = np.sign(z[:, None] - z[None, :])
    denominator = math.sqrt(float((s * s).sum()) * float((t * t).sum()))
    if denominator == 0:
        return float("nan")
    return float((s * t).sum() / denominator)  # both sums count every pair twice


# --------------------------------------------------------------------------------------
# A quadratic on a ball
# --------------------------------------------------------------------------------------
class TrustRegionResult(NamedTuple):
    """``value = a^T B + B^T Q B`` at the maximiser ``B`` (tensor ``(d,)``); ``multiplier``
    the Lagrange multiplier ``lam >= max(0, lambda_max(Q))`` with ``(lam I - Q) B = a / 2``."""
    value: float
    B: Tensor
    multiplier: float


def trust_region_max(a: Tensor, Q: Tensor, radius: float) -> TrustRegionResult:
    """Global maximum of ``m(B) = a^T B + B^T Q B`` over ``||B||_2 <= radius``.

    ``a`` ``(d,)``, symmetric ``Q`` ``(d, d)``. Writing it as the trust-region problem
    ``min -m``, whose Hessian is ``-2 Q``, the global solution (Moré & Sorensen 1983) is
    characterised by ``(lam I - Q) B = a / 2`` with ``lam >= max(0, lambda_max(Q))``
    (so ``lam I - Q`` is positive semi-definite) and ``lam (||B|| - radius) = 0``. (The
    paper's App. E states only ``lam >= 0``, which also admits saddle points, and presents
    the interior stationary point ``-Q^{-1} a / 2`` without noting that it is a maximum only
    when ``Q`` is negative definite.) With ``Q = V diag(q) V^T`` and ``alpha = V^T a``:

    * interior: ``Q`` negative definite and ``||Q^{-1} a|| / 2 <= radius`` -> ``lam = 0``;
    * boundary: ``lam > max(0, q_max)`` solves the secular equation
      ``phi(lam) = sum_i alpha_i^2 / (4 (lam - q_i)^2) = radius^2`` (``phi`` decreases, so
      bisection on a bracket converges);
    * hard case: ``alpha`` has no component on the top eigenspace of ``Q`` (``q_max >= 0``)
      and ``phi(q_max) <= radius^2``: ``lam = q_max`` and the missing length is added
      along a top eigenvector.

    Special cases: ``a = 0`` gives ``radius^2 max(q_max, 0)`` (case B of the paper);
    ``Q = 0`` gives ``radius ||a||`` (case A). Computed in float64 on the CPU; ``B`` is
    returned with ``a``'s dtype and device.
    """
    if not isinstance(a, Tensor) or not isinstance(Q, Tensor):
        raise TypeError("a and Q must be tensors")
    if a.ndim != 1 or Q.shape != (a.shape[0], a.shape[0]):
        raise ValueError(f"need a of shape (d,) and Q of shape (d, d), got {tuple(a.shape)} "
                         f"and {tuple(Q.shape)}")
    radius = _check_rho(radius)
    av = a.detach().cpu().double().numpy()
    Qv = Q.detach().cpu().double().numpy()
    Qv = 0.5 * (Qv + Qv.T)
    # torch's LAPACK, not numpy's: numpy's threaded eigh of a 200 x 200 matrix can take
    # 100x longer on a busy machine (thread oversubscription); the result is the same.
    q, V = (t.numpy() for t in torch.linalg.eigh(torch.from_numpy(Qv)))
    alpha = V.T @ av
    q_max = q[-1]
    scale = max(np.abs(q).max(), np.abs(alpha).max() / radius, 1e-300)
    tol = 1e-12 * scale

    def coords(lam: float) -> np.ndarray:
        gap = lam - q
        return np.divide(alpha, 2 * gap, out=np.zeros_like(alpha), where=np.abs(gap) > tol)

    if q_max < 0 and np.linalg.norm(coords(0.0)) <= radius:
        lam, c = 0.0, coords(0.0)
    else:
        lo = max(0.0, q_max)
        top = np.abs(q - q_max) <= tol
        hard = bool(np.all(np.abs(alpha[top]) <= tol)) and q_max >= 0
        if hard and np.linalg.norm(coords(lo)) <= radius:
            lam, c = lo, coords(lo)
            c[np.argmax(top)] = math.sqrt(max(radius ** 2 - float(c @ c), 0.0))
        else:
            # phi(hi) <= radius^2 since |alpha| / (2 (hi - q_max)) <= radius
            hi = lo + np.linalg.norm(alpha) / (2 * radius) + tol
            for _ in range(200):
                mid = 0.5 * (lo + hi)
                if mid in (lo, hi):
                    break
                if np.linalg.norm(alpha / (2 * (mid - q))) > radius:
                    lo = mid
                else:
                    hi = mid
            lam = hi
            c = alpha / (2 * (lam - q))
            c *= radius / max(np.linalg.norm(c), 1e-300)  # land exactly on the sphere
    B = V @ c
    value = float(av @ B + B @ Qv @ B)
    return TrustRegionResult(value, torch.as_tensor(B, dtype=a.dtype, device=a.device), float(lam))
