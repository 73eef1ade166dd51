"""Adaptive and geodesic sharpness, their rank correlation, and a quadratic's maximum on a ball.

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
* both worst cases are maximised by Auto-PGD (:mod:`lib.geometry.auto_pgd`), for any
  *geometry* object that implements its protocol (:class:`AdaptiveGeometry` here,
  ``QuotientGeometry`` in :mod:`lib.geometry.quotient`);
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

from .._checks import (check_bool, check_callable, check_choice, check_int, check_module,
                       check_positive, check_seed)
from ..book.batches import as_batches, check_pair, is_pair
from .auto_pgd import auto_pgd
from .gl_pairs import METRIC_NAMES
from .quotient import QuotientGeometry

__all__ = [
    "adaptive_sharpness", "geodesic_sharpness", "AdaptiveGeometry", "perturbation_objective",
    "kendall_tau", "discordant_pairs", "trust_region_max", "TrustRegionResult", "ESTIMATES",
    "NORMS",
]

ESTIMATES = ("average", "worst")
NORMS = ("l2", "linf")


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
    """``loss_fn(model(X), y)`` with the parameters ``params``, a 0-d tensor."""
    outputs = functional_call(model, dict(params), (X,))
    if normalize_logits:
        outputs = _normalize(outputs)
    loss = loss_fn(outputs, y)
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        raise ValueError("loss_fn must return a scalar tensor (use mean reduction)")
    return loss.reshape(())


def perturbation_objective(model: nn.Module, loss_fn: Callable, data: Any, geometry: Any, *,
                           normalize_logits: bool = False) -> Callable:
    """The function ``f(xi) = L(geometry.perturb(xi)) - L(w)`` that Auto-PGD maximises.

    ``data = (X, y)`` with ``X`` ``(N, ...)``, ``y`` ``(N, ...)`` is one batch; ``xi`` a dict
    of tangent vectors shaped like the trainable parameters. ``f`` returns a 0-d tensor,
    differentiable in ``xi``; the model's own parameters are never touched
    (``torch.func.functional_call``).
    """
    if not is_pair(data):
        raise TypeError(f"data must be one (X, y) batch of tensors, got {type(data).__name__}")
    X, y = check_pair(*data, "data")
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
    the geometry protocol of :mod:`lib.geometry.auto_pgd`, shared with
    ``lib.geometry.quotient.QuotientGeometry``.
    """

    def __init__(self, model: nn.Module, *, norm: str = "l2"):
        check_module(model)
        self.norm_name = check_choice(norm, "norm", NORMS)
        self.params = _trainable(model)
        self.scale = {k: w.abs() for k, w in self.params.items()}
        # 1/c where c > 0 and 0 elsewhere, so frozen (zero) entries drop out of every norm
        self.inv_scale = {k: torch.where(c > 0, 1.0 / c.clamp_min(torch.finfo(c.dtype).tiny),
                                         torch.zeros_like(c)) for k, c in self.scale.items()}

    @property
    def radial_projection(self) -> bool:
        """True for ``l2``: on the feasible set the projection onto a ball is a rescaling."""
        return self.norm_name == "l2"

    def norm(self, xi: Mapping[str, Tensor]) -> Tensor:
        """The adaptive norm of ``xi`` (0-d tensor)."""
        scaled = [(xi[k] * s).reshape(-1) for k, s in self.inv_scale.items()]
        flat = torch.cat(scaled)
        return flat.abs().max() if self.norm_name == "linf" else flat.norm()

    def project(self, xi: Mapping[str, Tensor], rho: float) -> dict[str, Tensor]:
        """Closest point (in the adaptive norm) of the ball of radius ``rho``:
        rescaling for ``l2``, clamping ``xi / c`` to ``[-rho, rho]`` for ``linf``."""
        if self.norm_name == "linf":
            return {k: torch.maximum(torch.minimum(xi[k], rho * c), -rho * c)
                    for k, c in self.scale.items()}
        masked = {k: xi[k] * (c > 0) for k, c in self.scale.items()}
        factor = (rho / self.norm(masked).clamp_min(1e-300)).clamp(max=1.0)
        return {k: t * factor for k, t in masked.items()}

    def ascent_direction(self, grad: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Steepest ascent of unit norm: ``grad * c^2 / ||grad * c||_2`` (the normalised
        Riemannian gradient of the metric ``diag(1/c^2)``) for ``l2``, ``c * sign(grad)``
        for ``linf``; zeros when the gradient vanishes."""
        if self.norm_name == "linf":
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
            if self.norm_name == "linf":
                z = 2 * torch.rand(c.shape, generator=generator, dtype=c.dtype, device=c.device) - 1
            else:
                z = torch.randn(c.shape, generator=generator, dtype=c.dtype, device=c.device)
            draws[k] = c * z
        length = self.norm(draws)
        if length == 0:
            raise ValueError("every trainable weight is zero: adaptive perturbations cannot move")
        return {k: t * (rho / length) for k, t in draws.items()}

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
    """The device of ``model``'s first parameter (the CPU if it has none)."""
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def _worst_case(model, loss_fn, batches, geometry, rho, num_steps, normalize_logits, seed) -> float:
    """Mean over the batches of Auto-PGD's maximum of the loss change."""
    values = []
    for batch in batches:
        objective = perturbation_objective(model, loss_fn, batch, geometry,
                                           normalize_logits=normalize_logits)
        values.append(auto_pgd(objective, geometry, rho, num_steps=num_steps, seed=seed)[1])
    return float(np.mean(values))


def _average_case(model, loss_fn, batches, geometry, rho, num_samples, normalize_logits,
                  seed) -> float:
    """Mean over the batches and ``num_samples`` Gaussian draws ``rho * c * N(0, I)`` of the
    loss change."""
    generator = torch.Generator(device=_device(model)).manual_seed(seed)
    values = []
    with torch.no_grad():
        for X, y in batches:
            base = _loss(model, loss_fn, geometry.params, X, y, normalize_logits)
            for _ in range(num_samples):
                delta = {k: rho * c * torch.randn(c.shape, generator=generator, dtype=c.dtype,
                                                  device=c.device)
                         for k, c in geometry.scale.items()}
                loss = _loss(model, loss_fn, geometry.perturb(delta), X, y, normalize_logits)
                values.append(float(loss - base))
    return float(np.mean(values))


def adaptive_sharpness(model: nn.Module, loss_fn: Callable, data: Any, rho: float,
                       estimate: str = "average", norm: str = "l2", *,
                       batch_size: int | None = None, num_steps: int = 20, num_samples: int = 20,
                       normalize_logits: bool = False, seed: int = 0) -> float:
    """Adaptive sharpness of ``model`` at its current weights ``w`` (Andriushchenko et al. 2023).

    With ``c = |w|`` (all trainable parameters) and one batch ``(X, y)``:

    * ``estimate="average"``: mean over ``num_samples`` draws ``delta = rho * c * N(0, I)`` of
      ``L(w + delta) - L(w)`` (``norm`` is validated but not used: the Gaussian is the same);
    * ``estimate="worst"``: ``max L(w + delta) - L(w)`` over ``||delta / c||_p <= rho``
      (``p`` = ``norm``), found by :func:`lib.geometry.auto_pgd.auto_pgd` with ``num_steps``
      steps.

    ``data`` is an ``(X, y)`` pair (cut into consecutive batches of ``batch_size``; ``None``:
    one batch) or an iterable of ``(X, y)`` batches; the value is the unweighted mean of the
    per-batch values (the paper: 2048 points in batches of 256).
    ``loss_fn(outputs, targets)`` must return a scalar (mean reduction). With
    ``normalize_logits`` the outputs are divided by their per-sample L2 norm first. The
    model runs in eval mode and its parameters are not modified. Random draws come from a
    generator seeded with ``seed``. Returns a float.
    """
    check_module(model)
    check_callable(loss_fn, "loss_fn", "loss_fn(outputs, targets)")
    rho = check_positive(rho, "rho")
    check_choice(estimate, "estimate", ESTIMATES)
    check_choice(norm, "norm", NORMS)
    num_steps = check_int(num_steps, "num_steps")
    num_samples = check_int(num_samples, "num_samples")
    seed = check_seed(seed)
    check_bool(normalize_logits, "normalize_logits")
    batches = as_batches(data, batch_size=batch_size, device=_device(model))
    geometry = AdaptiveGeometry(model, norm=norm)
    with _EvalMode(model):
        if estimate == "worst":
            return _worst_case(model, loss_fn, batches, geometry, rho, num_steps,
                               normalize_logits, seed)
        return _average_case(model, loss_fn, batches, geometry, rho, num_samples,
                             normalize_logits, seed)


def geodesic_sharpness(model: nn.Module, loss_fn: Callable, data: Any, rho: float,
                       metric_name: str = "inv", *, eps: float = 1e-6, symmetries: Any = None,
                       geodesic_norm: bool = True, second_order: bool = True,
                       batch_size: int | None = None, num_steps: int = 20,
                       normalize_logits: bool = False, seed: int = 0) -> float:
    """Worst-case geodesic sharpness (da Silva et al. 2025): ``max L(exp_w(xi)) - L(w)`` over
    horizontal ``xi`` with metric norm ``<= rho``, solved by
    :func:`lib.geometry.auto_pgd.auto_pgd`.

    The geometry is ``lib.geometry.quotient.QuotientGeometry(model, metric_name=metric_name,
    eps=eps, symmetries=symmetries, geodesic_norm=geodesic_norm, second_order=second_order)``:
    ``GL(h)`` blocks of every ``nn.MultiheadAttention`` head (``metric_name`` ``"inv"``, eq. 15,
    or ``"mix"``, eq. 34, relaxed by ``eps``), rescale pairs of modules with a
    ``rescale_pairs`` attribute (exact geodesics), every other weight adaptive (App. C.1).
    ``geodesic_norm=False`` / ``second_order=False`` are the ablations of Figs. 9-10.
    A model without any such symmetry raises ``ValueError`` (use :func:`adaptive_sharpness`).
    ``data``, ``batch_size``, ``num_steps``, ``normalize_logits``, ``seed`` as in
    :func:`adaptive_sharpness`. The model's parameters are not modified. Returns a float.
    """
    check_module(model)
    check_callable(loss_fn, "loss_fn", "loss_fn(outputs, targets)")
    rho = check_positive(rho, "rho")
    check_choice(metric_name, "metric_name", METRIC_NAMES)
    num_steps = check_int(num_steps, "num_steps")
    seed = check_seed(seed)
    check_bool(normalize_logits, "normalize_logits")
    batches = as_batches(data, batch_size=batch_size, device=_device(model))
    geometry = QuotientGeometry(model, metric_name=metric_name, eps=eps, symmetries=symmetries,
                                geodesic_norm=geodesic_norm, second_order=second_order)
    with _EvalMode(model):
        return _worst_case(model, loss_fn, batches, geometry, rho, num_steps, normalize_logits,
                           seed)


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


def _secular_root(alpha: np.ndarray, q: np.ndarray, radius: float, lo: float, tol: float) -> float:
    """The multiplier ``lam > lo`` with ``||alpha / (2 (lam - q))|| = radius``, by bisection
    (the norm decreases in ``lam``); returns the upper end of the final bracket."""
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
    return hi


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
    radius = check_positive(radius, "radius")
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
            lam = _secular_root(alpha, q, radius, lo, tol)
            c = alpha / (2 * (lam - q))
            c *= radius / max(np.linalg.norm(c), 1e-300)  # land exactly on the sphere
    B = V @ c
    value = float(av @ B + B @ Qv @ B)
    return TrustRegionResult(value, torch.as_tensor(B, dtype=a.dtype, device=a.device), float(lam))
