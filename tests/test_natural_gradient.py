"""Tests of lib.geometry.natural_gradient against independent references.

Closed forms and dense float64 autograd computations (torch.autograd.functional.hessian,
lib.curvature.fisher(...).to_dense()), numpy's condition number, and a hypothesis property
test of the invariance claim: natural-gradient directions computed in two linear
coordinate systems are the same tangent vector.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lib import curvature as curv
from lib.geometry.gradient_flow import gradient_descent, map_trajectory, pulled_back_metric_field, reparametrized_loss
from lib.geometry.natural_gradient import (classifier_kl, condition_number, fisher_diagonal, fisher_matrix,
                                  logistic_fisher,
                                  logistic_loss)
from lib.geometry.reparam import LinearMap
from lib.operators import DenseOperator, DiagonalOperator

DT = torch.float64


def logistic_data(n=40, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=DT)
    y = (torch.rand(n, generator=g, dtype=DT) < torch.sigmoid(X @ torch.ones(d, dtype=DT))).to(DT)
    return X, y


def tiny_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).to(DT)


def classification_data(n=30, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g, dtype=DT), torch.randint(0, 3, (n,), generator=g)


def flat_params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


# --- logistic regression --------------------------------------------------------------
def test_logistic_loss_matches_closed_form():
    X, y = logistic_data()
    theta = torch.tensor([0.3, -0.2, 0.5], dtype=DT)
    p = torch.sigmoid(X @ theta)
    expected = -(y * p.log() + (1 - y) * (1 - p).log()).mean()
    assert torch.allclose(logistic_loss(theta, X, y), expected, atol=1e-12)


def test_logistic_fisher_equals_the_hessian_of_the_log_loss():
    X, y = logistic_data()
    theta = torch.tensor([0.3, -0.2, 0.5], dtype=DT)
    H = torch.autograd.functional.hessian(lambda t: logistic_loss(t, X, y), theta)
    assert torch.allclose(logistic_fisher(theta, X).to_dense(), H, atol=1e-12)


def test_logistic_fisher_is_the_expected_score_outer_product():
    X, _ = logistic_data(n=5)
    theta = torch.tensor([0.1, 0.4, -0.3], dtype=DT)
    F = torch.zeros(3, 3, dtype=DT)
    for label in (0.0, 1.0):  # enumerate the model's labels
        for n in range(5):
            x = X[n:n + 1]
            s = torch.autograd.functional.jacobian(
                lambda t: -logistic_loss(t, x, torch.tensor([label], dtype=DT)), theta)
            prob = torch.sigmoid(x[0] @ theta) if label == 1.0 else 1 - torch.sigmoid(x[0] @ theta)
            F += prob * torch.outer(s, s) / 5
    assert torch.allclose(logistic_fisher(theta, X).to_dense(), F, atol=1e-12)


def test_logistic_input_validation():
    X, y = logistic_data()
    with pytest.raises(ValueError, match="shape"):
        logistic_fisher(torch.zeros(2, dtype=DT), X)
    with pytest.raises(TypeError):
        logistic_fisher([0.0, 0.0, 0.0], X)
    with pytest.raises(ValueError, match="labels 0 and 1"):
        logistic_loss(torch.zeros(3, dtype=DT), X, 2 * y + 1)
    with pytest.raises(ValueError, match="matrix"):
        logistic_fisher(torch.zeros(3, dtype=DT), X[0])


@settings(max_examples=25, deadline=None)
@given(entries=st.lists(st.floats(-2, 2), min_size=9, max_size=9),
       theta=st.lists(st.floats(-1.5, 1.5), min_size=3, max_size=3))
def test_natural_gradient_direction_is_coordinate_free(entries, theta):
    """For psi = A theta: J^-1 F_psi^-1 grad_psi L == F^-1 grad_theta L (a tangent vector)."""
    A = torch.tensor(entries, dtype=DT).reshape(3, 3) + 3 * torch.eye(3, dtype=DT)
    if torch.linalg.cond(A) > 1e3:
        return
    X, y = logistic_data()
    phi, t = LinearMap(A), torch.tensor(theta, dtype=DT)
    loss = lambda v: logistic_loss(v, X, y)  # noqa: E731
    g_theta = torch.autograd.functional.jacobian(loss, t)
    ng_theta = torch.linalg.solve(logistic_fisher(t, X).to_dense(), g_theta)
    psi = phi.forward(t)
    g_psi = torch.autograd.functional.jacobian(reparametrized_loss(loss, phi), psi)
    F_psi = pulled_back_metric_field(lambda v: logistic_fisher(v, X), phi)(psi).to_dense()
    ng_psi = torch.linalg.solve(F_psi, g_psi)
    assert torch.allclose(torch.linalg.solve(A, ng_psi), ng_theta, atol=1e-8, rtol=1e-7)
    # plain gradient directions are not tangent-vector related unless A^T A = I
    gd_back = torch.linalg.solve(A, g_psi)
    if torch.linalg.norm(A.T @ A - torch.eye(3, dtype=DT)) > 0.5 and g_theta.norm() > 1e-3:
        assert not torch.allclose(gd_back, g_theta, atol=1e-6)


def test_natural_gradient_descent_paths_coincide_for_a_linear_map():
    X, y = logistic_data()
    A = torch.tensor([[5.0, 1.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.3, 2.0]], dtype=DT)
    phi, t0 = LinearMap(A), torch.zeros(3, dtype=DT)
    loss = lambda v: logistic_loss(v, X, y)  # noqa: E731
    metric = lambda v: logistic_fisher(v, X)  # noqa: E731
    ref = gradient_descent(loss, t0, lr=0.2, num_steps=20, metric_field=metric)
    other = map_trajectory(gradient_descent(reparametrized_loss(loss, phi), phi.forward(t0), lr=0.2,
                                            num_steps=20, metric_field=pulled_back_metric_field(metric, phi)),
                           phi.inverse)
    assert (other - ref).abs().max() < 1e-10


# --- softmax classifiers --------------------------------------------------------------
@pytest.mark.parametrize("kind", ["exact", "empirical"])
@pytest.mark.parametrize("batch_size", [None, 7])
def test_fisher_diagonal_matches_the_dense_fisher(kind, batch_size):
    model, (X, y) = tiny_net(), classification_data()
    F = curv.fisher(model, nn.CrossEntropyLoss(), (X, y), kind=kind).to_dense()
    diag = fisher_diagonal(model, nn.CrossEntropyLoss(), (X, y), kind=kind, batch_size=batch_size)
    assert isinstance(diag, DiagonalOperator) and diag.shape == F.shape
    assert torch.allclose(diag.diagonal(), torch.diagonal(F), atol=1e-12, rtol=1e-9)
    dense = fisher_matrix(model, nn.CrossEntropyLoss(), (X, y), kind=kind, batch_size=batch_size)
    assert isinstance(dense, DenseOperator)
    assert torch.allclose(dense.to_dense(), F, atol=1e-12, rtol=1e-9)
    # the same data as an iterable of batches, and a summed loss (no 1/N)
    chunks = [(X[:5], y[:5]), (X[5:], y[5:])]
    torch.testing.assert_close(fisher_matrix(model, nn.CrossEntropyLoss(), chunks, kind=kind).to_dense(),
                               F, atol=1e-12, rtol=1e-9)
    summed = fisher_diagonal(model, nn.CrossEntropyLoss(reduction="sum"), (X, y), kind=kind)
    torch.testing.assert_close(summed.diagonal(), len(X) * torch.diagonal(F), atol=1e-10, rtol=1e-9)
    assert [p.shape for p in model.parameters()] == diag.param_shapes


def test_fisher_diagonal_validation():
    model, (X, y) = tiny_net(), classification_data()
    CE = nn.CrossEntropyLoss()
    with pytest.raises(ValueError, match="unknown kind"):
        fisher_diagonal(model, CE, (X, y), kind="mc")
    with pytest.raises(ValueError, match="labels"):
        fisher_diagonal(model, CE, (X, y.double()), kind="empirical")
    with pytest.raises(ValueError, match="batch_size"):
        fisher_diagonal(model, CE, (X, y), batch_size=0)
    with pytest.raises(TypeError):
        fisher_diagonal("model", CE, (X, y))
    with pytest.raises(TypeError, match="CrossEntropyLoss"):
        fisher_matrix(model, nn.MSELoss(), (X, y))
    with pytest.raises(ValueError, match="reduction"):
        fisher_matrix(model, nn.CrossEntropyLoss(reduction="none"), (X, y))
    with pytest.raises(TypeError, match="pair"):
        fisher_matrix(model, CE, X)


def test_classifier_kl_closed_form_and_quadratic_limit():
    model, (X, y) = tiny_net(), classification_data()
    theta = flat_params(model)
    g = torch.Generator().manual_seed(3)
    delta = torch.randn(theta.numel(), generator=g, dtype=DT)
    # closed form at a finite step, with a copy of the model moved by delta
    moved = tiny_net()
    torch.nn.utils.vector_to_parameters(theta + 0.3 * delta, moved.parameters())
    log_p, log_q = torch.log_softmax(model(X), -1), torch.log_softmax(moved(X), -1)
    expected = float((log_p.exp() * (log_p - log_q)).sum(-1).mean().detach())
    assert math.isclose(classifier_kl(model, X, 0.3 * delta), expected, rel_tol=1e-10)
    assert math.isclose(classifier_kl(model, X, 0.3 * delta, batch_size=4), expected, rel_tol=1e-10)
    assert torch.equal(flat_params(model), theta)  # not modified
    # second order: KL(t delta) / (t^2 delta^T F delta / 2) -> 1
    F = curv.fisher(model, nn.CrossEntropyLoss(), (X, y), kind="exact").to_dense()
    quad = 0.5 * float(delta @ F @ delta)
    ratios = [classifier_kl(model, X, t * delta) / (t ** 2 * quad) for t in (1e-1, 1e-2, 1e-3)]
    errors = [abs(r - 1) for r in ratios]
    assert errors[2] < 1e-2 * 1.01 and errors[2] < errors[1] < errors[0]
    assert classifier_kl(model, X, 0 * delta) == 0.0


def test_classifier_kl_validation():
    model, (X, _) = tiny_net(), classification_data()
    with pytest.raises(ValueError, match="shape"):
        classifier_kl(model, X, torch.zeros(3, dtype=DT))
    with pytest.raises(ValueError, match="finite"):
        classifier_kl(model, X, torch.full((sum(p.numel() for p in model.parameters()),), math.nan,
                                            dtype=DT))


# --- conditioning ---------------------------------------------------------------------
def test_condition_number_matches_numpy_and_ignores_the_null_space():
    g = torch.Generator().manual_seed(0)
    B = torch.randn(6, 6, generator=g, dtype=DT)
    M = B @ B.T
    kappa, rank = condition_number(M)
    assert rank == 6 and math.isclose(kappa, float(np.linalg.cond(M.numpy())), rel_tol=1e-8)
    C = torch.randn(6, 3, generator=g, dtype=DT)
    P = C @ C.T  # rank 3
    values = torch.linalg.eigvalsh(P)[-3:]
    kappa, rank = condition_number(P)
    assert rank == 3 and math.isclose(kappa, float(values[-1] / values[0]), rel_tol=1e-8)
    assert condition_number(torch.eye(4))[0] == 1.0
    assert condition_number(DenseOperator(M)) == condition_number(M)  # an operator is materialized
    assert condition_number(DiagonalOperator(torch.tensor([1.0, 4.0, 0.0], dtype=DT))) == (4.0, 2)
    assert math.isnan(condition_number(torch.zeros(3, 3))[0])
    with pytest.raises(ValueError, match="square"):
        condition_number(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="rtol"):
        condition_number(M, rtol=1.5)
