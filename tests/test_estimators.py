"""Spectral estimators and operator algebra against dense linear algebra (torch, scipy)."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings, strategies as st

from lib import curvature
from lib.operators.spectral import lanczos
from lib.operators.base import DenseOperator, DiagonalOperator, IdentityOperator


def random_symmetric(d, seed, spectrum=None, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=dtype))
    if spectrum is None:
        spectrum = torch.randn(d, generator=g, dtype=dtype)
    return (Q * spectrum) @ Q.T


def test_exact_trace_matches_dense():
    A = random_symmetric(50, 0)
    assert curvature.trace(DenseOperator(A), "exact", chunk_size=7) == pytest.approx(
        float(torch.trace(A)), rel=1e-12)


@pytest.mark.parametrize("method", ["hutchinson", "hutchpp"])
def test_stochastic_traces_are_unbiased(method):
    """Mean over 400 seeds lies within 4 standard errors of the true trace."""
    A = random_symmetric(40, 1, spectrum=torch.linspace(-1.0, 3.0, 40, dtype=torch.float64))
    op = DenseOperator(A)
    estimates = torch.tensor([curvature.trace(op, method, num_probes=6, seed=s) for s in range(400)])
    sem = float(estimates.std()) / math.sqrt(len(estimates))
    assert abs(float(estimates.mean()) - float(torch.trace(A))) < 4 * sem


def test_hutchinson_variance_matches_theory():
    A = random_symmetric(30, 2)
    estimates = torch.tensor([curvature.trace(DenseOperator(A), "hutchinson", num_probes=1, seed=s)
                              for s in range(2000)])
    theory = 2 * (float((A ** 2).sum()) - float((torch.diagonal(A) ** 2).sum()))
    assert float(estimates.var()) == pytest.approx(theory, rel=0.15)


def test_hutchpp_beats_hutchinson_on_a_decaying_spectrum():
    spectrum = torch.tensor([0.5 ** i for i in range(60)], dtype=torch.float64)
    op = DenseOperator(random_symmetric(60, 3, spectrum))
    true = float(spectrum.sum())
    err = {m: np.mean([(curvature.trace(op, m, num_probes=18, seed=s) - true) ** 2
                       for s in range(50)]) for m in ("hutchinson", "hutchpp")}
    assert err["hutchpp"] < err["hutchinson"] / 10


@pytest.mark.parametrize("d,k", [(30, 1), (60, 5), (200, 10)])
def test_lanczos_top_k_matches_eigvalsh(d, k):
    A = random_symmetric(d, d)
    expected = torch.linalg.eigvalsh(A).flip(0)[:k]
    torch.testing.assert_close(curvature.eigvalsh(DenseOperator(A), k), expected,
                               rtol=1e-6, atol=1e-8)


def test_lanczos_on_a_network_hessian_matches_dense():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()
    X, y = torch.randn(30, 5, dtype=torch.float64), torch.randint(0, 3, (30,))
    H = curvature.hessian(model, torch.nn.CrossEntropyLoss(), (X, y))
    expected = torch.linalg.eigvalsh(H.to_dense()).flip(0)[:4]
    torch.testing.assert_close(curvature.eigvalsh(H, 4), expected, rtol=1e-6, atol=1e-9)


def test_lanczos_basis_is_orthonormal_and_tridiagonalizes():
    A = random_symmetric(40, 5)
    alpha, beta, Q = lanczos(DenseOperator(A), 15, return_basis=True)
    torch.testing.assert_close(Q.T @ Q, torch.eye(15, dtype=torch.float64), atol=1e-10, rtol=0)
    T = torch.diag(alpha) + torch.diag(beta, 1) + torch.diag(beta, -1)
    torch.testing.assert_close(Q.T @ A @ Q, T, atol=1e-10, rtol=0)


def test_generalized_lanczos_basis_is_metric_orthonormal():
    """With a metric M: Q^T M Q = I, Q^T A Q = T, and the Ritz values are those of (A, M)."""
    d, m = 40, 15
    A = random_symmetric(d, 6)
    M = random_symmetric(d, 7, spectrum=torch.linspace(0.1, 10.0, d, dtype=torch.float64))
    alpha, beta, Q = lanczos(DenseOperator(A), m, metric=DenseOperator(M), return_basis=True)
    torch.testing.assert_close(Q.T @ M @ Q, torch.eye(m, dtype=torch.float64), atol=1e-9, rtol=0)
    T = torch.diag(alpha) + torch.diag(beta, 1) + torch.diag(beta, -1)
    torch.testing.assert_close(Q.T @ A @ Q, T, atol=1e-9, rtol=0)
    alpha, beta = lanczos(DenseOperator(A), d, metric=DenseOperator(M))
    ritz = torch.linalg.eigvalsh(torch.diag(alpha) + torch.diag(beta, 1) + torch.diag(beta, -1))
    want = scipy.linalg.eigh(A.numpy(), M.numpy(), eigvals_only=True)
    np.testing.assert_allclose(ritz.numpy(), want, rtol=1e-8, atol=1e-10)


def test_generalized_eigvalsh_with_an_exact_metric_solve():
    d = 25
    A = random_symmetric(d, 8)
    values = torch.linspace(0.5, 4.0, d, dtype=torch.float64)
    got = curvature.eigvalsh(DenseOperator(A), 4, tol=1e-12, metric=DiagonalOperator(values),
                             metric_solve=DiagonalOperator(values).inverse())
    want = scipy.linalg.eigh(A.numpy(), torch.diag(values).numpy(), eigvals_only=True)[::-1][:4]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10)


def test_generalized_lanczos_rejects_bad_metrics():
    A = DenseOperator(random_symmetric(5, 9))
    with pytest.raises(ValueError, match="metric has shape"):
        lanczos(A, 3, metric=IdentityOperator(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="symmetric"):
        lanczos(A, 3, metric=DenseOperator(torch.triu(torch.ones(5, 5, dtype=torch.float64))))
    with pytest.raises(ValueError, match="needs a metric"):
        lanczos(A, 3, metric_solve=IdentityOperator(5, dtype=torch.float64))
    with pytest.raises(TypeError, match="LinearOperator"):
        lanczos(A, 3, metric=torch.eye(5, dtype=torch.float64))


def test_lanczos_stops_at_an_invariant_subspace():
    A = torch.diag(torch.tensor([3.0, 3.0, 1.0, 1.0], dtype=torch.float64))
    alpha, beta = lanczos(DenseOperator(A), 4, seed=0)
    assert len(alpha) == 2  # two distinct eigenvalues
    ritz = torch.linalg.eigvalsh(torch.diag(alpha) + torch.diag(beta, 1) + torch.diag(beta, -1))
    torch.testing.assert_close(ritz, torch.tensor([1.0, 3.0], dtype=torch.float64))


def test_spectral_density_moments_match_the_spectrum():
    """SLQ with m steps integrates polynomials up to degree 2m-1 exactly per probe."""
    spectrum = torch.linspace(-2, 5, 300, dtype=torch.float64)
    op = DenseOperator(random_symmetric(300, 7, spectrum))
    density = curvature.spectral_density(op, num_probes=30, num_steps=20, seed=0)
    for power in (0, 1, 2):
        slq = float((density.weights * density.nodes ** power).sum(1).mean())
        assert slq == pytest.approx(float((spectrum ** power).mean()), rel=0.1, abs=0.05)
    integral = float(torch.trapezoid(density.density, density.grid))
    assert integral == pytest.approx(1.0, abs=1e-3)


def test_logdet_matches_dense():
    spectrum = torch.logspace(-2, 1, 200, dtype=torch.float64)
    op = DenseOperator(random_symmetric(200, 8, spectrum))
    estimate = curvature.logdet(op, num_probes=40, num_steps=30, seed=0)
    assert estimate == pytest.approx(float(spectrum.log().sum()), rel=0.05)


def test_logdet_rejects_indefinite_operator():
    with pytest.raises(ValueError, match="positive definite"):
        curvature.logdet(DenseOperator(random_symmetric(20, 9)), num_steps=20)


def test_damped_inverse_matches_scipy_solve():
    A = random_symmetric(30, 10, torch.linspace(0, 4, 30, dtype=torch.float64))
    B = torch.randn(30, 4, dtype=torch.float64)
    expected = scipy.linalg.solve(A.numpy() + 0.1 * np.eye(30), B.numpy(), assume_a="pos")
    got = DenseOperator(A).damped_inverse(0.1, tol=1e-12) @ B
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-8, atol=1e-10)


def test_damped_inverse_warns_when_cg_stops_early():
    A = random_symmetric(50, 11, torch.logspace(-3, 3, 50, dtype=torch.float64))
    with pytest.warns(RuntimeWarning, match="CG stopped"):
        DenseOperator(A).damped_inverse(0.0, max_iter=3) @ torch.ones(50, dtype=torch.float64)


# -- operator algebra: property tests over random cases ------------------------------------
matrices = st.integers(min_value=1, max_value=12).flatmap(
    lambda d: st.tuples(st.just(d), st.integers(0, 2 ** 16), st.integers(0, 2 ** 16)))


@settings(max_examples=40, deadline=None)
@given(matrices, st.floats(-3, 3, allow_nan=False), st.integers(1, 4))
def test_algebra_of_operators_matches_dense(case, scalar, k):
    d, seed_a, seed_b = case
    A, B = random_symmetric(d, seed_a), random_symmetric(d, seed_b)
    a, b = DenseOperator(A), DenseOperator(B)
    V = torch.randn(d, k, dtype=torch.float64, generator=torch.Generator().manual_seed(seed_a))
    torch.testing.assert_close((a + b) @ V, (A + B) @ V)
    torch.testing.assert_close((scalar * a - b) @ V, (scalar * A - B) @ V)
    torch.testing.assert_close((a @ b) @ V, A @ (B @ V))
    torch.testing.assert_close((-a).to_dense(), -A)
    assert (a @ b).symmetric is False or d == 1 or torch.allclose(A @ B, B @ A)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 20), st.integers(0, 2 ** 16))
def test_diagonal_operator_and_its_inverse(d, seed):
    g = torch.Generator().manual_seed(seed)
    values = torch.rand(d, generator=g, dtype=torch.float64) + 0.1
    D = DiagonalOperator(values)
    torch.testing.assert_close((D.inverse() @ D).to_dense(), torch.eye(d, dtype=torch.float64))
    torch.testing.assert_close((IdentityOperator(d, torch.float64) @ D).to_dense(), torch.diag(values))


# -- bad input ------------------------------------------------------------------------------
def test_estimators_reject_bad_input():
    op = DenseOperator(random_symmetric(10, 0))
    with pytest.raises(ValueError, match="method 'magic'"):
        curvature.trace(op, "magic")
    with pytest.raises(ValueError, match="k=11 exceeds"):
        curvature.eigvalsh(op, 11)
    with pytest.raises(ValueError, match="k must be >= 1"):
        curvature.eigvalsh(op, 0)
    with pytest.raises(TypeError, match="integer"):
        curvature.eigvalsh(op, 2.5)
    with pytest.raises(ValueError, match="num_probes"):
        curvature.trace(op, "hutchinson", num_probes=0)
    with pytest.raises(ValueError, match="hutchpp needs"):
        curvature.trace(op, "hutchpp", num_probes=2)
    with pytest.raises(TypeError, match="LinearOperator"):
        curvature.trace(torch.eye(3))
    with pytest.raises(ValueError, match="symmetric"):
        curvature.eigvalsh(DenseOperator(torch.triu(torch.ones(4, 4))), 1)
    with pytest.raises(ValueError, match="cannot add"):
        op + DenseOperator(torch.eye(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="damping"):
        op.damped_inverse(-1.0)
    with pytest.raises(ValueError, match="zero"):
        DiagonalOperator(torch.zeros(3)).inverse()


def test_relative_difference_estimates_the_frobenius_distance():
    A, B = random_symmetric(80, 20), random_symmetric(80, 21)
    exact = float(torch.linalg.norm(A - B) / torch.linalg.norm(B))
    estimate = curvature.relative_difference(DenseOperator(A), DenseOperator(B), 400, seed=0)
    assert estimate == pytest.approx(exact, rel=0.1)
    assert curvature.relative_difference(DenseOperator(A), DenseOperator(A)) == 0.0
    with pytest.raises(ValueError, match="shapes"):
        curvature.relative_difference(DenseOperator(A), DenseOperator(torch.eye(3, dtype=torch.float64)))
