"""Auto-PGD (Croce & Hein 2020, ``croce2020reliable``): a constrained maximiser for sharpness.

:func:`auto_pgd` maximises a function of a perturbation ``xi`` (a dict of tangent vectors,
one per trainable parameter) over the ball ``{xi : geometry.norm(xi) <= rho}`` of any
*geometry* object that implements the protocol

* ``params``: the base point, ``{name: tensor}``;
* ``norm(xi) -> 0-d tensor``, ``project(xi, rho)``, ``ascent_direction(grad)``,
  ``perturb(xi)`` and ``random(rho, generator)``;
* ``radial_projection`` (optional, default False): True when, for vectors already in the
  feasible (horizontal) subspace, the projection onto the ball is a radial rescaling.

:class:`lib.geometry.sharpness.AdaptiveGeometry` and
:class:`lib.geometry.quotient.QuotientGeometry` implement it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from .._checks import check_callable, check_int, check_positive, check_seed

__all__ = ["auto_pgd", "APGD_MOMENTUM", "APGD_SUCCESS_FRACTION"]

# Auto-PGD constants (Croce & Hein 2020, kept as in Andriushchenko et al. 2023)
APGD_MOMENTUM = 0.75
APGD_SUCCESS_FRACTION = 0.75


def _checkpoints(num_steps: int) -> set[int]:
    """Iterations ``w_j = ceil(p_j num_steps)`` with ``p_0 = 0, p_1 = 0.22`` and
    ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)`` (Croce & Hein 2020)."""
    p_prev, p = 0.0, 0.22
    points = set()
    while p <= 1.0:
        points.add(math.ceil(p * num_steps))
        p_prev, p = p, p + max(p - p_prev - 0.03, 0.06)
    points.discard(0)
    return points


def _value_and_grad(objective: Callable, xi: Mapping[str, Tensor], need_grad: bool = True
                    ) -> tuple[float, dict[str, Tensor] | None]:
    """``objective(xi)`` as a float and (with ``need_grad``) its gradient, a dict like ``xi``."""
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
    Euclidean-type norms of ``QuotientGeometry`` and the l2 ``AdaptiveGeometry`` (their
    ``radial_projection`` is True) the projection is then a radial rescaling, which skips
    the per-step horizontal projection (the costly part, an ``O(h^3)`` solve per head).
    Other geometries use ``project``.
    """
    if not getattr(geometry, "radial_projection", False):
        return lambda xi: geometry.project(xi, rho)

    def shrink(xi: dict[str, Tensor]) -> dict[str, Tensor]:
        length = float(geometry.norm(xi))
        if length <= rho:
            return xi
        return {k: t * (rho / length) for k, t in xi.items()}

    return shrink


def _start(objective: Callable, geometry: Any, rho: float, seed: int):
    """Auto-PGD's starting point: ``xi = 0``, or a seeded random point of norm ``rho / 2``
    where the gradient vanishes at 0. Returns ``(x, f, direction)`` of the start and
    ``(best_x, best_f, best_dir)`` of the better of 0 and the start."""
    zero = {k: torch.zeros_like(w) for k, w in geometry.params.items()}
    f0, grad = _value_and_grad(objective, zero)
    direction = geometry.ascent_direction(grad)
    best = (zero, f0, direction)
    if not all(not bool(d.any()) for d in direction.values()):
        return (zero, f0, direction), best
    # stationary start: move off it
    device = next(iter(zero.values())).device
    generator = torch.Generator(device=device).manual_seed(seed)
    x = geometry.project(geometry.random(rho / 2, generator), rho)
    f, grad = _value_and_grad(objective, x)
    direction = geometry.ascent_direction(grad)
    return (x, f, direction), ((x, f, direction) if f > f0 else best)


def auto_pgd(objective: Callable, geometry: Any, rho: float, *, num_steps: int = 20,
             momentum: float = APGD_MOMENTUM, seed: int = 0) -> tuple[dict[str, Tensor], float]:
    """Maximise ``objective(xi)`` over ``{xi : geometry.norm(xi) <= rho}`` by Auto-PGD.

    Algorithm 1 of da Silva et al. (2025) / Croce & Hein (2020). ``objective`` maps a dict of
    tangent vectors (shapes of ``geometry.params``) to a 0-d tensor, differentiably. Start ``xi_0 = 0``
    (invariant under any symmetry, so points on one orbit give the same result); if the gradient
    vanishes there, ``geometry.random(rho / 2)`` seeded with ``seed``. Step size ``eta = 2 rho``;
    ``z = P(xi_k + eta d_k)``, ``xi_{k+1} = P(xi_k + a (z - xi_k) + (1 - a)(xi_k - xi_{k-1}))``
    with ``a = momentum`` and ``d_k = geometry.ascent_direction(grad f(xi_k))``. At the
    checkpoints of :func:`_checkpoints` ``eta`` is halved and the iterate reset to the best
    point if fewer than 75 % of the steps since the last checkpoint increased ``f``
    (Condition 1) or neither ``eta`` nor the best value changed since then (Condition 2).

    Unlike the listing of Algorithm 1 in the paper, each value is paired with the iterate it
    was computed at (there ``l(v^(k+1))``, the loss at ``xi^(k)``, is stored with
    ``xi^(k+1)``), and the restart resets the perturbation ``xi``, not the weights ``w``.

    Costs ``num_steps + 1`` evaluations of ``objective``, ``num_steps`` of them with a gradient
    (one more of each if the random start is needed). Returns ``(xi_max, f_max)``: the best
    feasible tangent vector found (detached dict) and its value (float; ``f(0)`` is a
    candidate, so ``f_max >= objective(0)``).
    """
    check_callable(objective, "objective", "objective(xi)")
    rho = check_positive(rho, "rho")
    num_steps = check_int(num_steps, "num_steps")
    seed = check_seed(seed)
    if not 0 <= float(momentum) <= 1:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    (x, f, direction), (best_x, best_f, best_dir) = _start(objective, geometry, rho, seed)
    eta = 2.0 * rho
    checkpoints = _checkpoints(num_steps)
    last_eta, last_best, successes, last_checkpoint = eta, best_f, 0, 0
    x_prev = x
    into_ball = _ball_projection(geometry, rho)
    for k in range(num_steps):
        z = into_ball({n: x[n] + eta * d for n, d in direction.items()})
        if k == 0:  # no momentum on the first step
            x_new = z
        else:
            x_new = into_ball({n: x[n] + momentum * (z[n] - x[n])
                               + (1 - momentum) * (x[n] - x_prev[n]) for n in x})
        last = k == num_steps - 1  # the final iterate needs its value only
        f_new, grad = _value_and_grad(objective, x_new, need_grad=not last)
        direction = None if last else geometry.ascent_direction(grad)
        successes += f_new > f
        if f_new > best_f:
            best_x, best_f, best_dir = x_new, f_new, direction
        x_prev, x, f = x, x_new, f_new
        step = k + 1
        if step in checkpoints and step < num_steps:
            condition1 = successes < APGD_SUCCESS_FRACTION * (step - last_checkpoint)
            condition2 = last_eta == eta and last_best == best_f
            last_eta, last_best = eta, best_f
            if condition1 or condition2:
                eta /= 2
                # restart from the best point, without momentum (its direction is stored)
                x, x_prev, f, direction = best_x, best_x, best_f, best_dir
            successes, last_checkpoint = 0, step
    return {k: t.detach() for k, t in best_x.items()}, float(best_f)
