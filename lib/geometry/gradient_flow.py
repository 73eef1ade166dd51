"""Gradient descent under an explicit metric, and the same flow in other coordinates.

Gradient descent on a loss ``L`` with a metric field ``x -> G(x)`` (a symmetric
positive-definite metric at every point) steps along the *Riemannian* gradient
``G(x)^-1 grad L(x)``::

    x_{t+1} = x_t - lr * G(x_t)^-1 grad L(x_t)

(the usual gradient descent is the special case ``G = I``). Under a reparametrization
``psi = phi(theta)`` with Jacobian ``J = d psi / d theta`` the gradient is a covector,
``grad_psi = J^-T grad_theta``, while a step is a tangent vector that should transform as
``J v``. Two ways to run gradient descent in psi therefore differ:

* *naive*: keep the identity metric in psi. The psi-step is ``-lr J^-T g``, which
  corresponds to the theta-step ``-lr J^-1 J^-T g``: a different direction, so the
  trajectory mapped back to theta leaves the theta-trajectory, and stays away from it
  however small the step (the two continuous-time flows differ).
* *metric-aware*: use the pulled-back metric ``G_psi = J^-T G J^-1``. The psi-step is
  ``-lr G_psi^-1 J^-T g = -lr J G^-1 g``, exactly ``J`` times the theta-step. The
  continuous-time flows coincide (``phi`` maps one onto the other); with a finite step the
  mapped-back iterate is ``phi^-1(psi_t + lr J v) = theta_t + lr v + O(lr^2)``, so the
  discrete trajectories agree to first order in the step (global error ``O(lr)`` at a
  fixed time ``T = num_steps * lr``), and exactly for a linear ``phi``.

Functions:

* :func:`gradient_descent` runs the iteration and returns the trajectory ``(num_steps+1, d)``;
* :func:`reparametrized_loss` is ``psi -> L(phi^-1(psi))``;
* :func:`pulled_back_metric_field` is the metric field ``psi -> J^-T G(theta) J^-1`` at
  ``theta = phi^-1(psi)`` (dense, for small ``d``);
* :func:`metric_matrix` is a metric field's value at a point as a dense matrix;
* :func:`map_trajectory` applies ``phi`` or ``phi^-1`` to every row of a trajectory.

A *metric field* is a callable ``x (d,) -> metric`` whose value is a symmetric
positive-definite :class:`~lib.operators.base.LinearOperator`, a ``(d, d)`` tensor, or a
positive ``(d,)`` tensor (a diagonal), as :func:`lib.geometry.invariance.hessian_operator`
accepts a metric.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .._checks import check_int
from ..operators import DenseOperator, DiagonalOperator, LinearOperator
from .reparam import Reparametrization

__all__ = ["gradient_descent", "reparametrized_loss", "pulled_back_metric_field", "map_trajectory",
           "metric_matrix", "MetricField"]

# A metric field: x (d,) -> the metric at x (an SPD operator, a (d, d) or a positive (d,) tensor).
MetricField = Callable[[Tensor], "LinearOperator | Tensor"]


def _check_point(x: Tensor, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not torch.is_floating_point(x):
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.ndim != 1 or x.shape[0] < 1:
        raise ValueError(f"{name} must be a non-empty flat vector of shape (d,), got shape "
                         f"{tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or infinite entries")
    return x


def _check_metric_value(G, d: int, dtype, device) -> Tensor | LinearOperator:
    """Validate one value of a metric field: a positive ``(d,)`` diagonal or an SPD ``(d, d)``
    matrix (also when wrapped in a Diagonal/DenseOperator), or another symmetric operator."""
    if isinstance(G, (DiagonalOperator, DenseOperator)):
        G = G.values if isinstance(G, DiagonalOperator) else G.matrix
    elif isinstance(G, LinearOperator):
        if G.shape != (d, d) or not G.symmetric:
            raise ValueError(f"the metric field must return a symmetric ({d}, {d}) operator, got "
                             f"shape {G.shape}, symmetric={G.symmetric}")
        return G
    if not isinstance(G, Tensor) or not torch.is_floating_point(G):
        raise TypeError(f"the metric field must return a LinearOperator or a floating-point tensor, got "
                        f"{type(G).__name__ if not isinstance(G, Tensor) else G.dtype}")
    G = G.to(dtype=dtype, device=device)
    if tuple(G.shape) not in ((d,), (d, d)):
        raise ValueError(f"the metric field must return a diagonal ({d},) or a matrix ({d}, {d}), "
                         f"got shape {tuple(G.shape)}")
    if not bool(torch.isfinite(G).all()):
        raise ValueError("the metric contains NaN or infinite entries")
    if G.ndim == 1:
        if bool((G <= 0).any()):
            raise ValueError(f"the metric is not positive definite: its diagonal has an entry "
                             f"{float(G.min()):.3g} <= 0")
        return G
    asym = float((G - G.T).norm() / G.norm().clamp_min(torch.finfo(G.dtype).tiny))
    if asym > math.sqrt(torch.finfo(G.dtype).eps):
        raise ValueError(f"the metric is not symmetric: ||G - G^T|| / ||G|| = {asym:.3g}")
    G = 0.5 * (G + G.T)
    _, info = torch.linalg.cholesky_ex(G)
    if int(info) != 0:
        raise ValueError("the metric is not positive definite (Cholesky factorization failed)")
    return G


def metric_matrix(metric_field: MetricField | None, x: Tensor) -> Tensor:
    """The validated value of a metric field at ``x`` as a dense SPD ``(d, d)`` matrix
    (identity for ``None``).

    Args:
        metric_field: ``None`` or a metric field (module docstring).
        x: the point, shape ``(d,)``.
    """
    x = _check_point(x, "x")
    d = x.shape[0]
    if metric_field is None:
        return torch.eye(d, dtype=x.dtype, device=x.device)
    G = _check_metric_value(metric_field(x.detach()), d, x.dtype, x.device)
    if isinstance(G, LinearOperator):
        return G.to_dense().to(dtype=x.dtype, device=x.device)
    return torch.diag(G) if G.ndim == 1 else G


def _solve_metric(G: Tensor | LinearOperator, g: Tensor) -> Tensor:
    """``G^-1 g`` for a validated diagonal ``(d,)``, SPD ``(d, d)`` or operator metric."""
    if isinstance(G, LinearOperator):
        return G.solve(g).to(g.dtype)
    if G.ndim == 1:
        return g / G
    L = torch.linalg.cholesky(G)
    return torch.cholesky_solve(g[:, None], L)[:, 0]


def _gradient(loss: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        value = loss(x)
        if not isinstance(value, Tensor) or value.numel() != 1:
            raise ValueError(f"loss must return a scalar tensor, got "
                             f"{type(value).__name__ if not isinstance(value, Tensor) else tuple(value.shape)}")
        (g,) = torch.autograd.grad(value.reshape(()), x, allow_unused=True)
    return torch.zeros_like(x) if g is None else g.detach()


def gradient_descent(loss: Callable[[Tensor], Tensor], x0: Tensor, *, lr: float, num_steps: int,
                     metric_field: MetricField | None = None) -> Tensor:
    """Gradient descent ``x_{t+1} = x_t - lr * G(x_t)^-1 grad L(x_t)``.

    Args:
        loss: differentiable ``(d,) -> scalar`` (0-d or one-element tensor).
        x0: starting point, floating-point of shape ``(d,)``; sets dtype and device.
        lr: step size, a positive finite number.
        num_steps: number of steps, a positive integer.
        metric_field: ``None`` (the identity) or a callable ``x -> G(x)`` returning a
            symmetric positive-definite metric: a ``(d, d)`` tensor, a positive ``(d,)``
            diagonal, or a :class:`~lib.operators.base.LinearOperator` (dense and diagonal
            operators are validated like tensors; others are solved with ``G.solve``).

    Returns:
        The trajectory ``[x_0, ..., x_num_steps]`` of shape ``(num_steps + 1, d)``, detached.

    Raises:
        ValueError: non-positive ``lr`` or ``num_steps``, ``x0`` not a finite vector, a loss
            that is not scalar, a metric of the wrong shape or not SPD (checked at every
            step), or a step that produces a non-finite gradient or point (divergence).
        TypeError: non-numeric ``lr``/``num_steps`` or non-tensor ``x0``.
    """
    if isinstance(lr, bool) or not isinstance(lr, (int, float)):
        raise TypeError(f"lr must be a number, got {type(lr).__name__}")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be positive and finite, got {lr}")
    check_int(num_steps, "num_steps")
    if not callable(loss):
        raise TypeError("loss must be callable")
    if metric_field is not None and not callable(metric_field):
        raise TypeError("metric_field must be None or a callable x -> G(x)")
    x = _check_point(x0, "x0").detach().clone()
    d = x.shape[0]
    trajectory = torch.empty(num_steps + 1, d, dtype=x.dtype, device=x.device)
    trajectory[0] = x
    for t in range(num_steps):
        g = _gradient(loss, x)
        if g.shape != x.shape:
            raise ValueError(f"the gradient has shape {tuple(g.shape)}, expected ({d},)")
        if not bool(torch.isfinite(g).all()):
            raise ValueError(f"non-finite gradient at step {t}: the iteration diverged or left "
                             "the loss's domain")
        if metric_field is None:
            direction = g
        else:
            direction = _solve_metric(_check_metric_value(metric_field(x.clone()), d, x.dtype, x.device), g)
        x = x - lr * direction
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"non-finite iterate at step {t + 1}: the iteration diverged")
        trajectory[t + 1] = x
    return trajectory


def reparametrized_loss(loss: Callable[[Tensor], Tensor],
                        reparam: Reparametrization) -> Callable[[Tensor], Tensor]:
    """The loss in psi-coordinates, ``psi -> L(phi^-1(psi))`` (differentiable in ``psi``).

    Its gradient is the covector ``J^-T grad_theta L`` by the chain rule.
    """
    if not isinstance(reparam, Reparametrization):
        raise TypeError(f"reparam must be a Reparametrization, got {type(reparam).__name__}")

    def loss_psi(psi: Tensor) -> Tensor:
        return loss(reparam.inverse(psi))

    return loss_psi


def pulled_back_metric_field(metric_field: MetricField | None,
                             reparam: Reparametrization) -> Callable[[Tensor], DenseOperator]:
    """The metric field in psi-coordinates: ``psi -> J^-T G(theta) J^-1`` at ``theta = phi^-1(psi)``.

    Gradient descent in psi with this metric field moves ``J`` times the theta-step, so
    mapped back to theta it follows the theta-trajectory under ``metric_field`` (see the
    module docstring). Dense: forms ``(d, d)`` matrices, for small ``d``; for one point,
    :func:`lib.geometry.invariance.pullback_metric` is the matrix-free pull-back.

    Args:
        metric_field: ``None`` (identity in theta) or a metric field ``theta -> G(theta)``.
        reparam: the reparametrization ``psi = phi(theta)``.

    Returns:
        A metric field ``psi (d,) ->`` symmetric positive-definite
        :class:`~lib.operators.explicit.DenseOperator` ``(d, d)``.
    """
    if not isinstance(reparam, Reparametrization):
        raise TypeError(f"reparam must be a Reparametrization, got {type(reparam).__name__}")
    if metric_field is not None and not callable(metric_field):
        raise TypeError("metric_field must be None or a callable theta -> G(theta)")

    def metric_psi(psi: Tensor) -> DenseOperator:
        theta = reparam.inverse(_check_point(psi, "psi").detach())
        G = metric_matrix(metric_field, theta)
        A = reparam.inverse_vjp(theta, G)   # J^-T G; its transpose is G J^-1 (G symmetric)
        M = reparam.inverse_vjp(theta, A.T)  # J^-T G J^-1
        return DenseOperator((0.5 * (M + M.T)).to(psi.dtype), symmetric=True)

    return metric_psi


def map_trajectory(trajectory: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
    """Apply a point map (``reparam.forward`` or ``reparam.inverse``) to every row.

    Args:
        trajectory: ``(n, d)`` points, e.g. from :func:`gradient_descent`.
        fn: a map ``(d,) -> (d,)``.

    Returns:
        ``(n, d)``: row ``i`` is ``fn(trajectory[i])``.
    """
    if not isinstance(trajectory, Tensor) or not torch.is_floating_point(trajectory):
        raise TypeError("trajectory must be a floating-point tensor")
    if trajectory.ndim != 2 or trajectory.shape[0] < 1 or trajectory.shape[1] < 1:
        raise ValueError(f"trajectory must have shape (n, d), got {tuple(trajectory.shape)}")
    if not callable(fn):
        raise TypeError("fn must be callable")
    rows = [fn(x) for x in trajectory]
    for r in rows:
        if not isinstance(r, Tensor) or r.shape != trajectory.shape[1:]:
            raise ValueError(f"fn must map ({trajectory.shape[1]},) to ({trajectory.shape[1]},)")
    return torch.stack(rows)
