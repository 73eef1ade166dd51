"""Tests of lib.geometry.gradient_flow: metric-aware gradient descent under reparametrization.

A 2-D non-quadratic loss (a rotated, anisotropic log-cosh bowl) is minimized by gradient
descent in theta and in psi = phi(theta). With the pulled-back metric the psi-trajectory,
mapped back to theta, follows the theta-trajectory: exactly for a linear phi, and with a
first-order error in the step for softplus. Naive gradient descent in psi does not.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn.functional import softplus

from lib.geometry.gradient_flow import (gradient_descent, map_trajectory, metric_matrix,
                               pulled_back_metric_field, reparametrized_loss)
from lib.geometry.invariance import pullback_metric
from lib.geometry.reparam import Elementwise, LinearMap

DT = torch.float64
_C, _S = math.cos(0.5), math.sin(0.5)
R = torch.tensor([[_C, -_S], [_S, _C]], dtype=DT)
SCALES = torch.tensor([4.0, 0.5], dtype=DT)
CENTER = torch.tensor([0.3, 0.8], dtype=DT)
X0 = torch.tensor([2.0, -0.5], dtype=DT)
T = 1.0  # integration time


def loss(x):
    """sum_i a_i log cosh((R (x - m))_i), written stably with softplus; minimum at m."""
    z = R @ (x - CENTER)
    return (SCALES * 0.5 * (softplus(2 * z) + softplus(-2 * z) - 2 * math.log(2))).sum()


def curved_metric(x):
    """A position-dependent dense SPD metric in theta."""
    return torch.stack([torch.stack([2.0 + x[1] ** 2, 0.3 + 0 * x[0]]),
                        torch.stack([0.3 + 0 * x[0], 1.0 + x[0] ** 2])])


METRICS = {"identity": None, "dense": curved_metric}


def _runs(reparam, metric, lr):
    steps = round(T / lr)
    theta = gradient_descent(loss, X0, lr=lr, num_steps=steps, metric_field=metric)
    loss_psi = reparametrized_loss(loss, reparam)
    psi0 = reparam.forward(X0)
    aware = gradient_descent(loss_psi, psi0, lr=lr, num_steps=steps,
                             metric_field=pulled_back_metric_field(metric, reparam))
    # naive: the theta metric's matrix used as is in psi (the identity for metric=None)
    naive_metric = None if metric is None else (lambda psi: metric(reparam.inverse(psi)))
    naive = gradient_descent(loss_psi, psi0, lr=lr, num_steps=steps, metric_field=naive_metric)
    return theta, map_trajectory(aware, reparam.inverse), map_trajectory(naive, reparam.inverse)


def _max_err(a, b):
    return float((a - b).norm(dim=1).max())


def test_gradient_descent_identity_is_plain_update():
    A = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=DT)
    traj = gradient_descent(lambda x: 0.5 * x @ A @ x, X0, lr=0.1, num_steps=3)
    assert traj.shape == (4, 2)
    x = X0.clone()
    for t in range(3):
        x = x - 0.1 * A @ x
        torch.testing.assert_close(traj[t + 1], x, rtol=1e-14, atol=1e-14)


def test_diagonal_metric_equals_dense_diagonal():
    diag = lambda x: 1.0 + x ** 2  # noqa: E731
    a = gradient_descent(loss, X0, lr=0.05, num_steps=10, metric_field=diag)
    b = gradient_descent(loss, X0, lr=0.05, num_steps=10, metric_field=lambda x: torch.diag(diag(x)))
    torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)
    assert loss(a[-1]) < loss(a[0])


@pytest.mark.parametrize("reparam", [Elementwise("softplus"),
                                     LinearMap(torch.tensor([[2.0, 1.0], [0.5, 1.5]], dtype=DT))],
                         ids=["softplus", "linear"])
@pytest.mark.parametrize("metric", list(METRICS.values()), ids=list(METRICS))
def test_pulled_back_metric_matches_invariance_module(reparam, metric):
    psi = reparam.forward(torch.tensor([0.7, -0.2], dtype=DT))
    theta = reparam.inverse(psi)
    expected = pullback_metric(metric_matrix(metric, theta), reparam, theta).to_dense()
    torch.testing.assert_close(pulled_back_metric_field(metric, reparam)(psi).to_dense(), expected,
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("metric", list(METRICS.values()), ids=list(METRICS))
def test_softplus_aware_first_order_naive_off(metric):
    reparam = Elementwise("softplus")
    aware_err, naive_err = [], []
    for lr in (0.02, 0.01, 0.005):
        theta, aware, naive = _runs(reparam, metric, lr)
        aware_err.append(_max_err(aware, theta))
        naive_err.append(_max_err(naive, theta))
    # metric-aware: global error O(lr), halving with the step
    for coarse, fine in zip(aware_err, aware_err[1:]):
        assert 1.8 < coarse / fine < 2.2, aware_err
    assert aware_err[-1] < 5e-3
    # naive: converges to a different flow, the error does not shrink with the step
    assert min(naive_err) > 0.5, naive_err
    assert naive_err[-1] > 0.9 * naive_err[0]
    assert naive_err[-1] > 100 * aware_err[-1]


@pytest.mark.parametrize("lr", [0.01, 0.1, 0.2])
@pytest.mark.parametrize("metric", list(METRICS.values()), ids=list(METRICS))
def test_linear_map_exact_for_any_step(metric, lr):
    reparam = LinearMap(torch.tensor([[2.0, 1.0], [0.5, 1.5]], dtype=DT))
    steps = 20
    theta = gradient_descent(loss, X0, lr=lr, num_steps=steps, metric_field=metric)
    aware = gradient_descent(reparametrized_loss(loss, reparam), reparam.forward(X0), lr=lr,
                             num_steps=steps, metric_field=pulled_back_metric_field(metric, reparam))
    assert _max_err(map_trajectory(aware, reparam.inverse), theta) < 1e-12
    naive = gradient_descent(reparametrized_loss(loss, reparam), reparam.forward(X0), lr=lr,
                             num_steps=steps)
    assert _max_err(map_trajectory(naive, reparam.inverse), theta) > 1e-2


def test_map_trajectory_round_trip():
    reparam = Elementwise("softplus")
    traj = gradient_descent(loss, X0, lr=0.05, num_steps=5)
    psi = map_trajectory(traj, reparam.forward)
    torch.testing.assert_close(map_trajectory(psi, reparam.inverse), traj, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("kwargs, match", [
    (dict(lr=0.0, num_steps=3), "lr"),
    (dict(lr=-0.1, num_steps=3), "lr"),
    (dict(lr=float("nan"), num_steps=3), "lr"),
    (dict(lr=0.1, num_steps=0), "steps"),
    (dict(lr=0.1, num_steps=-2), "steps"),
    (dict(lr=0.1, num_steps=3, metric_field=lambda x: torch.ones(3, dtype=DT)), "shape"),
    (dict(lr=0.1, num_steps=3, metric_field=lambda x: torch.eye(3, dtype=DT)), "shape"),
    (dict(lr=0.1, num_steps=3, metric_field=lambda x: torch.tensor([1.0, -1.0], dtype=DT)), "positive"),
    (dict(lr=0.1, num_steps=3, metric_field=lambda x: torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=DT)),
     "positive definite"),
    (dict(lr=0.1, num_steps=3, metric_field=lambda x: torch.tensor([[1.0, 0.5], [0.0, 1.0]], dtype=DT)),
     "symmetric"),
    (dict(lr=0.1, num_steps=3, metric_field=lambda x: torch.full((2,), float("nan"), dtype=DT)), "NaN"),
])
def test_bad_inputs_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        gradient_descent(loss, X0, **kwargs)


def test_bad_points_and_types():
    with pytest.raises(ValueError, match="shape"):
        gradient_descent(loss, X0[None], lr=0.1, num_steps=1)
    with pytest.raises(ValueError, match="NaN"):
        gradient_descent(loss, torch.tensor([float("nan"), 0.0], dtype=DT), lr=0.1, num_steps=1)
    with pytest.raises(ValueError, match="scalar"):
        gradient_descent(lambda x: x ** 2, X0, lr=0.1, num_steps=1)
    with pytest.raises(TypeError):
        gradient_descent(loss, X0, lr=0.1, num_steps=2.0)
    with pytest.raises(TypeError):
        gradient_descent(loss, [1.0, 2.0], lr=0.1, num_steps=1)
    with pytest.raises(ValueError, match="diverged"):
        gradient_descent(lambda x: (x ** 2).sum(), X0, lr=1e200, num_steps=5)
    with pytest.raises(ValueError, match="shape"):
        map_trajectory(X0, lambda x: x)
    with pytest.raises(ValueError, match="map"):
        map_trajectory(X0[None], lambda x: x[:1])
    with pytest.raises(TypeError):
        pulled_back_metric_field(None, "softplus")
    # the pulled-back metric inherits the reparametrization's domain check (softplus: psi > 0)
    with pytest.raises(ValueError, match="psi > 0"):
        pulled_back_metric_field(None, Elementwise("softplus"))(torch.tensor([-1.0, 1.0], dtype=DT))


def test_metric_fields_may_return_operators():
    """Dense and diagonal operators follow the tensor path bit for bit; other operators use solve."""
    from lib.operators import DenseOperator, DiagonalOperator, IdentityOperator

    def matrix_free(M):  # a sum has no closed-form solve: conjugate gradients
        return DenseOperator(M) + 0.0 * IdentityOperator(M.shape[0], DT)

    diag = lambda x: 1.0 + x ** 2  # noqa: E731
    want = gradient_descent(loss, X0, lr=0.05, num_steps=10, metric_field=curved_metric)
    got = gradient_descent(loss, X0, lr=0.05, num_steps=10, metric_field=lambda x: DenseOperator(curved_metric(x)))
    assert torch.equal(got, want)
    got = gradient_descent(loss, X0, lr=0.05, num_steps=10, metric_field=lambda x: matrix_free(curved_metric(x)))
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9)
    want = gradient_descent(loss, X0, lr=0.05, num_steps=10, metric_field=diag)
    assert torch.equal(gradient_descent(loss, X0, lr=0.05, num_steps=10,
                                        metric_field=lambda x: DiagonalOperator(diag(x))), want)
    torch.testing.assert_close(metric_matrix(lambda x: matrix_free(curved_metric(x)), X0), curved_metric(X0))
    with pytest.raises(ValueError, match="symmetric"):
        gradient_descent(loss, X0, lr=0.1, num_steps=1,
                         metric_field=lambda x: matrix_free(torch.eye(3, dtype=DT)))
