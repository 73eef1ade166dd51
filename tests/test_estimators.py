"""Spectral estimators and operator algebra against dense linear algebra (torch, scipy)."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings, strategies as st

from lib import curvature
from lib.operators import EXACT_QUANTITIES, LinearOperator
from lib.operators.spectral import lanczos, top_eigenpairs
from lib.operators import DampedInverseOperator, DenseOperator, DiagonalOperator, IdentityOperator


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
    torch.testing.assert_close(curvature.eigvalsh(DenseOperator(A), k, method="lanczos"), expected,
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
    estimate = curvature.logdet(op, num_probes=40, num_steps=30, method="slq", seed=0)
    assert estimate == pytest.approx(float(spectrum.log().sum()), rel=0.05)


def test_logdet_rejects_indefinite_operator():
    with pytest.raises(ValueError, match="positive definite"):
        curvature.logdet(DenseOperator(random_symmetric(20, 9)), num_steps=20, method="slq")
    with pytest.raises(ValueError, match="positive definite"):
        curvature.logdet(DenseOperator(random_symmetric(20, 9)))  # closed form


def test_damped_inverse_matches_scipy_solve():
    A = random_symmetric(30, 10, torch.linspace(0, 4, 30, dtype=torch.float64))
    B = torch.randn(30, 4, dtype=torch.float64)
    expected = scipy.linalg.solve(A.numpy() + 0.1 * np.eye(30), B.numpy(), assume_a="pos")
    got = DampedInverseOperator(DenseOperator(A), 0.1, tol=1e-12) @ B  # conjugate gradients
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-8, atol=1e-10)
    got = DenseOperator(A).inverse(0.1) @ B  # closed form
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-8, atol=1e-10)


def test_damped_inverse_warns_when_cg_stops_early():
    A = random_symmetric(50, 11, torch.logspace(-3, 3, 50, dtype=torch.float64))
    with pytest.warns(RuntimeWarning, match="CG stopped"):
        DampedInverseOperator(DenseOperator(A), 0.0, max_steps=3) @ torch.ones(50, dtype=torch.float64)


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
        op.inverse(-1.0)
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


# -- the operator method set against dense float64 linear algebra ---------------------------
class MatrixFree(DenseOperator):
    """A dense matrix seen only through products: every quantity takes the base-class fallback."""

    exact = frozenset()
    to_dense = LinearOperator.to_dense
    diagonal = LinearOperator.diagonal
    trace = LinearOperator.trace
    logdet = LinearOperator.logdet
    eigvalsh = LinearOperator.eigvalsh
    solve = LinearOperator.solve
    inverse = LinearOperator.inverse


def _spd(d, seed):
    return random_symmetric(d, seed, spectrum=torch.linspace(0.5, 3.0, d, dtype=torch.float64))


def _method_set_cases(d=7):
    A, B = _spd(d, 30), _spd(d, 31)
    values = torch.linspace(0.5, 2.0, d, dtype=torch.float64)
    eye = torch.eye(d, dtype=torch.float64)
    ident = IdentityOperator(d, torch.float64)
    return {
        "dense": (DenseOperator(A), A),
        "diagonal": (DiagonalOperator(values), torch.diag(values)),
        "identity": (ident, eye),
        "scaled": (2.5 * DenseOperator(A), 2.5 * A),
        "negatively scaled": (-1.5 * DenseOperator(-B), 1.5 * B),
        "sum": (DenseOperator(A) + 0.3 * ident, A + 0.3 * eye),
        "damped inverse": (DampedInverseOperator(DenseOperator(A), 0.2, tol=1e-13),
                           torch.linalg.inv(A + 0.2 * eye)),
        "damped inverse of products": (DampedInverseOperator(MatrixFree(A), 0.2, tol=1e-13),
                                       torch.linalg.inv(A + 0.2 * eye)),
        "products only": (MatrixFree(A), A),
    }


@pytest.mark.parametrize("name", list(_method_set_cases()))
def test_method_set_matches_dense(name):
    op, M = _method_set_cases()[name]
    d = M.shape[0]
    close = dict(rtol=1e-8, atol=1e-10)
    evals = torch.linalg.eigvalsh(M)
    torch.testing.assert_close(op.to_dense(), M, **close)
    torch.testing.assert_close(op.diagonal(), torch.diagonal(M), **close)
    assert op.trace() == pytest.approx(float(torch.trace(M)), rel=1e-10)
    assert op.logdet() == pytest.approx(float(torch.logdet(M)), rel=1e-8)
    torch.testing.assert_close(op.eigvalsh(), evals, **close)
    torch.testing.assert_close(op.eigvalsh(3), evals[-3:], **close)
    g = torch.Generator().manual_seed(0)
    v, V = torch.randn(d, generator=g, dtype=torch.float64), torch.randn(d, 3, generator=g, dtype=torch.float64)
    for damping in (0.0, 0.7):
        shifted = M + damping * torch.eye(d, dtype=torch.float64)
        torch.testing.assert_close(op.solve(v, damping), torch.linalg.solve(shifted, v), rtol=1e-7, atol=1e-9)
        torch.testing.assert_close(op.solve(V, damping=damping), torch.linalg.solve(shifted, V),
                                   rtol=1e-7, atol=1e-9)
        torch.testing.assert_close(op.inverse(damping) @ V, torch.linalg.solve(shifted, V), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("name", list(_method_set_cases()))
def test_estimators_use_the_closed_form_when_there_is_one(name):
    op, M = _method_set_cases()[name]
    assert op.exact <= EXACT_QUANTITIES
    if "trace" in op.exact:
        assert curvature.trace(op) == op.trace()
    else:  # Hutch++ by default, bit for bit
        assert curvature.trace(op) == curvature.trace(op, "hutchpp")
    if "logdet" in op.exact:
        assert curvature.logdet(op) == op.logdet()
    if "eigvalsh" in op.exact:
        assert torch.equal(curvature.eigvalsh(op, 2), op.eigvalsh(2).flip(0))
    else:
        assert torch.equal(curvature.eigvalsh(op, 2), curvature.eigvalsh(op, 2, method="lanczos"))
    # a named method always runs that method
    assert curvature.trace(op, "hutchinson", num_probes=4) == pytest.approx(
        curvature.trace(MatrixFree(op.to_dense()), "hutchinson", num_probes=4), rel=1e-9)


def test_fallbacks_above_the_dense_limit_are_iterative():
    d = 60
    A = random_symmetric(d, 40, spectrum=torch.linspace(1.0, 3.0, d, dtype=torch.float64))
    op = MatrixFree(A)
    op.dense_limit = 10
    assert op.trace(num_probes=30, seed=3) == curvature.trace(op, "hutchpp", 30, seed=3)
    assert op.trace(num_probes=300) == pytest.approx(float(torch.trace(A)), rel=0.05)
    assert op.logdet(num_probes=40) == curvature.logdet(op, 40, method="slq")
    assert op.logdet(num_probes=40) == pytest.approx(float(torch.logdet(A)), rel=0.05)
    torch.testing.assert_close(op.eigvalsh(3), torch.linalg.eigvalsh(A)[-3:], rtol=1e-6, atol=1e-8)
    diag = op.diagonal(num_probes=4000)
    assert float((diag - torch.diagonal(A)).abs().max()) < 0.15 * float(torch.diagonal(A).abs().max())
    with pytest.raises(ValueError, match="pass k"):
        op.eigvalsh()


def test_method_set_on_parameter_lists_and_complex_vectors():
    d, shapes = 7, [torch.Size([2, 3]), torch.Size([1])]
    A = _spd(d, 41)
    op = DenseOperator(A, param_shapes=shapes)
    v = torch.randn(d, dtype=torch.float64)
    got = op.solve([v[:6].reshape(2, 3), v[6:]], 0.5)
    assert [t.shape for t in got] == shapes
    expected = torch.linalg.solve(A + 0.5 * torch.eye(d, dtype=torch.float64), v)
    torch.testing.assert_close(torch.cat([t.reshape(-1) for t in got]), expected)
    w = torch.complex(v, 2 * v)
    torch.testing.assert_close(op.solve(w), torch.complex(torch.linalg.solve(A, v), torch.linalg.solve(A, 2 * v)))
    torch.testing.assert_close(DiagonalOperator(torch.diagonal(A), shapes).solve([t for t in got])[1],
                               got[1] / A[6, 6])


def test_method_set_rejects_bad_input():
    A = DenseOperator(random_symmetric(6, 42))
    with pytest.raises(ValueError, match="positive definite"):
        A.logdet()
    with pytest.raises(ValueError, match="k=7 exceeds"):
        A.eigvalsh(7)
    with pytest.raises(ValueError, match="symmetric"):
        DenseOperator(torch.triu(torch.ones(3, 3))).eigvalsh()
    with pytest.raises(ValueError, match="singular"):
        DenseOperator(torch.zeros(3, 3)).inverse()
    with pytest.raises(ValueError, match="singular"):
        DenseOperator(torch.zeros(3, 3)).solve(torch.ones(3))
    with pytest.raises(ValueError, match="positive definite"):
        DiagonalOperator(torch.tensor([1.0, -1.0])).logdet()
    with pytest.raises(ValueError, match="damping"):
        IdentityOperator(3).solve(torch.ones(3), damping=-1.0)
    with pytest.raises(TypeError, match="damping"):
        DiagonalOperator(torch.ones(3)).inverse(damping="1")
    with pytest.raises(TypeError, match="solve needs"):
        A.solve("v")
    with pytest.raises(ValueError, match="unknown eigvalsh method"):
        curvature.eigvalsh(A, 1, method="power")
    with pytest.raises(ValueError, match="unknown logdet method"):
        curvature.logdet(A, method="exact")


# -- the block Krylov eigensolver (InPCA's top-k) --------------------------------------------
@pytest.mark.parametrize("which", ["magnitude", "largest"])
def test_top_eigenpairs_match_dense(which):
    d, k = 300, 4
    spectrum = torch.cat([torch.tensor([-9.0, 7.0, 7.0, -5.0], dtype=torch.float64),
                          torch.linspace(-1.0, 1.0, d - 4, dtype=torch.float64)])
    A = random_symmetric(d, 50, spectrum)
    lam, U = top_eigenpairs(MatrixFree(A), k, which=which, seed=1)
    key = spectrum.abs() if which == "magnitude" else spectrum
    want = spectrum[torch.argsort(key, descending=True, stable=True)[:k]]
    torch.testing.assert_close(lam, want, rtol=1e-9, atol=1e-9)  # the repeated 7 is found twice
    torch.testing.assert_close(A @ U, U * lam, rtol=0, atol=1e-8)
    torch.testing.assert_close(U.T @ U, torch.eye(k, dtype=torch.float64), rtol=0, atol=1e-10)


def test_eigvalsh_block_method_and_small_problems():
    A = random_symmetric(200, 51, spectrum=torch.linspace(-3.0, 2.0, 200, dtype=torch.float64))
    torch.testing.assert_close(curvature.eigvalsh(MatrixFree(A), 3, method="block", tol=1e-12),
                               torch.linalg.eigvalsh(A).flip(0)[:3], rtol=1e-9, atol=1e-9)
    B = random_symmetric(20, 52)  # d <= 8 p: solved densely
    lam, U = top_eigenpairs(MatrixFree(B), 2)
    evals = torch.linalg.eigvalsh(B)
    torch.testing.assert_close(lam, evals[torch.argsort(evals.abs(), descending=True)[:2]])
    with pytest.raises(ValueError, match="which"):
        top_eigenpairs(MatrixFree(B), 2, which="smallest")
    with pytest.raises(ValueError, match="k=21 exceeds"):
        top_eigenpairs(MatrixFree(B), 21)
    with pytest.raises(ValueError, match="metric"):
        curvature.eigvalsh(MatrixFree(B), 2, method="block", metric=IdentityOperator(20, torch.float64))


# -- the one Krylov engine under Lanczos, SLQ and the block solver ------------------------------
def _spans(Q, V, atol):
    """Every column of V lies in the span of Q's orthonormal columns."""
    return bool(torch.linalg.vector_norm(V - Q @ (Q.T @ V), dim=0).max() <= atol)


@pytest.mark.parametrize("p", [1, 3])
def test_krylov_basis_is_the_orthonormal_block_krylov_space(p):
    from lib.operators.krylov import krylov_basis
    A = random_symmetric(60, 53, spectrum=torch.linspace(0.5, 2.0, 60, dtype=torch.float64))
    X = torch.randn(60, p, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    Q, AQ, residual = krylov_basis(MatrixFree(A), X, 4)
    assert Q.shape == AQ.shape == (60, 4 * p)
    torch.testing.assert_close(Q.T @ Q, torch.eye(4 * p, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(AQ, A @ Q, rtol=0, atol=1e-12)
    powers = [X]
    for _ in range(3):
        powers.append(A @ powers[-1])
    assert _spans(Q, torch.cat(powers, 1) / torch.linalg.vector_norm(torch.cat(powers, 1), dim=0), 1e-10)
    # the residual is what the next block adds: the part of A Q's last block outside span(Q)
    last = AQ[:, -p:]
    assert residual == pytest.approx(float(torch.linalg.vector_norm(last - Q @ (Q.T @ last))), rel=1e-8)


def test_lanczos_is_the_engine_with_one_column():
    from lib.operators.krylov import krylov_basis
    A = random_symmetric(40, 54)
    v0 = torch.randn(40, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    alpha, beta, Q = lanczos(MatrixFree(A), 12, v0, return_basis=True)
    Q1, _, _ = krylov_basis(MatrixFree(A), v0[:, None], 12)
    torch.testing.assert_close(Q, Q1, rtol=0, atol=0)
    T = Q.T @ A @ Q  # tridiagonal: its band is alpha, beta and nothing else
    torch.testing.assert_close(torch.diagonal(T), alpha, rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.diagonal(T, 1), beta, rtol=0, atol=1e-12)
    assert float((torch.triu(T, 2)).abs().max()) < 1e-10


def test_krylov_basis_ends_or_refills_at_an_invariant_subspace():
    from lib.operators.krylov import krylov_basis
    A = torch.diag(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], dtype=torch.float64))
    x = torch.tensor([1.0, 1.0, 0, 0, 0, 0], dtype=torch.float64)[:, None]  # lives in span(e1, e2)
    Q, _, residual = krylov_basis(MatrixFree(A), x, 5)
    assert Q.shape[1] == 2 and residual < 1e-10                       # Lanczos: the space ends
    generator = torch.Generator().manual_seed(0)
    Q, AQ, _ = krylov_basis(MatrixFree(A), x, 5,
                            refill=lambda c: torch.randn(6, c, generator=generator, dtype=torch.float64))
    assert Q.shape[1] == 5                                            # block: a random column instead
    torch.testing.assert_close(Q.T @ Q, torch.eye(5, dtype=torch.float64), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="start vector is zero"):
        krylov_basis(MatrixFree(A), torch.zeros(6, 1, dtype=torch.float64), 3)
