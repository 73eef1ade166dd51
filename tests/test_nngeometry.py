"""lib's Fisher representations and NTK against NNGeometry 0.4 (George et al.), representation by representation.

NNGeometry is the issue's anchor: an independent implementation (backward hooks on each
layer instead of ``torch.func``), so agreement to round-off in float64 is a real check.

Correspondence of conventions (established here, each line tested below):

* ``FIM(model, loader, PMat*, variant="classif_logits")`` is
  ``F = (1/n) sum_n J_n^T (diag p_n - p_n p_n^T) J_n``, ``n = len(loader.sampler)``: it
  backpropagates the ``C - 1`` rows of an exact Cholesky factor of ``diag p - p p^T``
  (Tanabe & Sagae 1992) and divides every sum by the number of examples. That is
  ``lib.curvature.fisher(model, nn.CrossEntropyLoss(), data, "exact")`` with the default
  ``reduction="mean"`` (``c = 1/N``), exactly, for every representation below.
* ``FIM(..., variant="regression")`` is ``(1/n) sum_n J_n^T J_n``: our exact Fisher of
  ``nn.MSELoss(reduction="sum")`` (output Hessian ``2 I``) divided by ``2 N``, or of the
  default ``"mean"`` MSE (``c = 1/(N C)``) times ``C/2``.
* ``FIM_MonteCarlo(..., trials=T)`` is ``(1/n) sum_n (1/T) sum_t g_nt g_nt^T`` with
  ``g_nt`` the score of a label drawn with ``torch.multinomial`` from the global RNG: our
  *empirical* Fisher (``kind="empirical"``, mean CE) on those very labels, each example
  repeated ``T`` times (our own ``kind="mc"`` draws its labels from its own seeded
  generator, so it equals NNGeometry's only in distribution).
* Parameter order: NNGeometry's ``LayerCollection`` (modules in ``named_modules`` order,
  weight then bias) is ``model.parameters()`` order for these models, so a ``PVector``'s
  ``to_torch()`` is our flat vector.
* ``PMatKFAC`` folds each bias into its layer's input (a column of ones in ``A``): our
  ``fold_bias=True``. Its factors are scaled differently (``A`` times ``sqrt(C-1)``, ``G``
  divided by it, and for a convolution ``A`` summed and ``G`` averaged over locations
  where ours does the opposite) but the products ``G kron A``, hence the matrix, agree.
  ``PMatKFAC.solve(v, regul)`` is **not** ``(K + regul I)^-1 v``: it splits the damping
  over the factors with Martens & Grosse's ``pi``, i.e. our
  ``kfac(...).inverse(factor_damping=regul, pi=True) @ v``.
* ``PMatEKFAC`` equals our ``ekfac(..., fold_bias=True)`` only after
  ``update_diag(loader)``; before it, it is K-FAC in K-FAC's eigenbasis
  (:func:`test_nngeometry_ekfac_before_update_diag_is_kfac`). ``solve(v, regul)`` is
  ``(E + regul I)^-1 v``, our ``solve(v, damping=regul)``.
* ``PMatQuasiDiag`` has the same definition as ours (Ollivier's quasi-diagonal: the
  diagonal plus, per output unit of a Linear/Conv layer, the cross terms between its bias
  and the weights into it; a layer without bias keeps its diagonal only), and the same
  solve (the Schur complement of each arrowhead with ``regul`` added to the diagonal).
* ``PMatLowRank`` keeps ``J / sqrt(n)`` with ``C - 1`` rows per example (the Cholesky
  rows); ours keeps ``C`` rows per example (the columns of ``diag sqrt p - p sqrt p^T``):
  different factors, the same ``R^T R``.
* ``GramMatrix(model, loader)`` (``FMatDense``) has shape ``(C, n, C, n)``, output-major;
  our :func:`lib.curvature.ntk` is ``(n C, n C)``, example-major:
  ``K.reshape(n, C, n, C).permute(1, 0, 3, 2)``. No ``1/n`` in either.
* NNGeometry computes in the *default* dtype in several places (see the bug tests), so
  the comparisons run with ``torch.set_default_dtype(torch.float64)``.

NNGeometry's defects found here, each shown by a deterministic test (not an xfail):

1. ``FIM(variant="classif_logits")`` fails on a float64 model under the default float32
   dtype (a float32 triangular matrix multiplies float64 logits); with other variants, its
   block-diagonal and trace accumulate float64 gradients in float32 buffers.
2. ``PMatLowRank.solve(v, regul)`` drops the part of ``v`` outside the range of ``F``
   when the factor has fewer rows than columns (it solves for the projected ``v``).
3. A layer called twice in one forward pass: NNGeometry's hooks keep only the last call's
   input, so its Gram matrix (and Fisher) is wrong (its issue #94).
4. A BatchNorm layer under K-FAC/EKFAC or the quasi-diagonal: a bare
   ``NotImplementedError``/``AttributeError`` from inside a backward hook, and the hooks
   stay on the model, so every later NNGeometry computation on it fails too.

Also not in NNGeometry: ``PMatImplicit`` has no ``frobenius_norm`` or ``solve``;
``PMatEKFAC`` has no ``get_diag``; ``FMatDense.trace`` has no ``1/n``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap
from torch.utils.data import DataLoader, TensorDataset

from lib import curvature
from operator_problems import SharedLayer

pytest.importorskip("nngeometry")
from nngeometry.gram import GramMatrix  # noqa: E402
from nngeometry.layercollection import LayerCollection  # noqa: E402
from nngeometry.metrics import FIM, FIM_MonteCarlo  # noqa: E402
from nngeometry.object import (PMatBlockDiag, PMatDense, PMatDiag, PMatEKFAC, PMatImplicit,  # noqa: E402
                               PMatKFAC, PMatLowRank, PMatQuasiDiag)
from nngeometry.object.vector import PVector  # noqa: E402

CE = nn.CrossEntropyLoss()
TIGHT = dict(rtol=1e-10, atol=1e-13)
BATCH = 7


pytestmark = pytest.mark.usefixtures("float64_default")  # every model and input here is float64


class Problem:
    """A tiny float64 classifier, its data as NNGeometry's loader and as our batches."""

    def __init__(self, model, X, y):
        self.model, self.X, self.y = model.double(), X.double(), y
        self.loader = DataLoader(TensorDataset(self.X, y), batch_size=BATCH)
        self.batches = [(self.X[i:i + BATCH], y[i:i + BATCH]) for i in range(0, len(X), BATCH)]
        self.d = sum(p.numel() for p in model.parameters())
        self.C = model(self.X[:1]).shape[1]

    def theirs(self, representation, **kw):
        return FIM(self.model, self.loader, representation, variant="classif_logits", **kw)

    def ours(self, representation, kind="exact", **kw):
        return curvature.fisher(self.model, CE, self.batches, kind, representation=representation, **kw)

    def pvector(self, v):
        return PVector(LayerCollection.from_model(self.model), vector_repr=v)

    def vector(self, seed=1):
        return torch.randn(self.d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    return Problem(model, torch.randn(20, 4), torch.randint(0, 3, (20,)))


def cnn():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Tanh(), nn.Conv2d(2, 3, 3, stride=2), nn.Tanh(),
                          nn.Flatten(), nn.Linear(12, 3))
    return Problem(model, torch.randn(12, 1, 6, 6), torch.randint(0, 3, (12,)))


@pytest.fixture(scope="module", params=["mlp", "cnn"])
def problem(request):
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield {"mlp": mlp, "cnn": cnn}[request.param]()
    torch.set_default_dtype(old)


def close(a, b, **kw):
    torch.testing.assert_close(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64),
                               **(kw or TIGHT))


def check_operations(problem, theirs, ours, *, solve=True, regul=0.1):
    """mv, vTMv, trace, frobenius_norm and the damped solve of both agree."""
    v = problem.vector()
    pv = problem.pvector(v)
    close(theirs.mv(pv).to_torch(), ours @ v)
    close(theirs.vTMv(pv), ours.vTMv(v))
    close(theirs.trace(), ours.trace())
    close(theirs.frobenius_norm(), ours.frobenius_norm())
    if solve:
        close(theirs.solve(pv, regul).to_torch(), ours.solve(v, damping=regul))


# --------------------------------------------------------------------------------------
# The scaling conventions
# --------------------------------------------------------------------------------------
def test_dense_exact_fisher_is_mean_cross_entropy(problem):
    theirs, ours = problem.theirs(PMatDense), problem.ours("dense")
    close(theirs.to_torch(), ours.to_dense())
    close(theirs.get_diag(), ours.diagonal())
    check_operations(problem, theirs, ours)
    close(theirs.inverse(0.1).to_torch(), ours.inverse(damping=0.1).to_dense(), rtol=1e-9, atol=1e-11)


def test_regression_variant_is_summed_mse_over_2n():
    p = mlp()
    targets = torch.randn(len(p.X), p.C)
    theirs = FIM(p.model, DataLoader(TensorDataset(p.X, targets), batch_size=BATCH), PMatDense,
                 variant="regression").to_torch()
    for reduction, factor in (("sum", 1 / (2 * len(p.X))), ("mean", p.C / 2)):
        ours = curvature.fisher(p.model, nn.MSELoss(reduction=reduction), (p.X, targets),
                                representation="dense").to_dense()
        close(theirs, factor * ours)


def test_monte_carlo_fisher_is_empirical_fisher_on_its_labels():
    """FIM_MonteCarlo with T trials = our empirical Fisher on the labels it draws, each
    example repeated T times (the labels reproduced from the same torch seed)."""
    p, T = mlp(), 3
    torch.manual_seed(123)
    theirs = FIM_MonteCarlo(p.model, p.loader, PMatDense, trials=T).to_torch()
    torch.manual_seed(123)
    data = []
    with torch.no_grad():
        for X, _ in p.loader:  # the loader draws its base seed; one multinomial call per batch
            labels = torch.multinomial(torch.softmax(p.model(X), dim=1), T, replacement=True)
            data.append((X.repeat_interleave(T, dim=0), labels.reshape(-1)))
    ours = curvature.fisher(p.model, CE, data, "empirical", representation="dense").to_dense()
    close(theirs, ours)


# --------------------------------------------------------------------------------------
# Representation by representation
# --------------------------------------------------------------------------------------
def test_diagonal(problem):
    theirs, ours = problem.theirs(PMatDiag), problem.ours("diagonal")
    close(theirs.get_diag(), ours.diagonal())
    close(theirs.to_torch(), ours.to_dense())
    check_operations(problem, theirs, ours)


def test_block_diagonal(problem):
    theirs, ours = problem.theirs(PMatBlockDiag), problem.ours("block_diagonal")
    assert len(theirs.data) == len(ours.blocks)
    for block, mine in zip(theirs.data.values(), ours.blocks):
        close(block, mine)
    close(theirs.to_torch(), ours.to_dense())
    close(theirs.get_diag(), ours.diagonal())
    check_operations(problem, theirs, ours)


def test_kfac_with_folded_bias(problem):
    theirs, ours = problem.theirs(PMatKFAC), problem.ours("kfac", fold_bias=True)
    close(theirs.to_torch(), ours.to_dense())
    close(theirs.get_diag(), ours.diagonal())
    check_operations(problem, theirs, ours, solve=False)
    # NNGeometry's solve damps the factors, split by pi: our factor damping
    v, regul = problem.vector(), 0.1
    expected = ours.inverse(factor_damping=regul, pi=True) @ v
    close(theirs.solve(problem.pvector(v), regul).to_torch(), expected, rtol=1e-9, atol=1e-12)
    close(theirs.inverse(regul).mv(problem.pvector(v)).to_torch(), expected, rtol=1e-9, atol=1e-12)
    # ... which is not the solve of K + regul I
    exact = ours.solve(v, damping=regul)
    assert float((expected - exact).norm() / exact.norm()) > 1e-3


def test_ekfac_after_update_diag(problem):
    theirs = problem.theirs(PMatEKFAC)
    theirs.update_diag(problem.loader)
    ours = problem.ours("ekfac", fold_bias=True)
    close(theirs.to_torch(), ours.to_dense())
    check_operations(problem, theirs, ours)
    close(theirs.inverse(0.1).mv(problem.pvector(problem.vector())).to_torch(),
          ours.inverse(damping=0.1) @ problem.vector())


def test_nngeometry_ekfac_before_update_diag_is_kfac(problem):
    """NNGeometry's documented two-step EKFAC: without update_diag it is K-FAC, not EKFAC;
    ours is built complete."""
    theirs = problem.theirs(PMatEKFAC).to_torch()
    close(theirs, problem.ours("kfac", fold_bias=True).to_dense())
    full = problem.ours("ekfac", fold_bias=True).to_dense()
    assert float((theirs - full).norm() / full.norm()) > 1e-2


def test_quasi_diagonal(problem):
    theirs, ours = problem.theirs(PMatQuasiDiag), problem.ours("quasi_diagonal")
    close(theirs.to_torch(), ours.to_dense())
    close(theirs.get_diag(), ours.diagonal())
    check_operations(problem, theirs, ours, regul=1.0)  # not PSD in general: damp well


def test_low_rank(problem):
    theirs, ours = problem.theirs(PMatLowRank), problem.ours("low_rank")
    n = len(problem.X)
    assert theirs.data.shape == (problem.C - 1, n, problem.d)  # C - 1 Cholesky rows
    assert ours.factor.shape == (n * (problem.C - 1), problem.d)  # the same count
    close(theirs.to_torch(), ours.to_dense())
    close(theirs.get_diag(), ours.diagonal())
    check_operations(problem, theirs, ours, solve=False)


def test_nngeometry_low_rank_solve_drops_the_null_space(problem):
    """PMatLowRank.solve(v, regul) = V diag(1 / (s^2 + regul)) V^T v from a thin SVD of its
    factor: when the factor has fewer rows than columns it misses (I - V V^T) v / regul, a
    vector in the null space of F. So its residual (F + regul I) x - v is not zero but lies
    in that null space, and only the part of x in the range of F is right. Ours is exact."""
    theirs, ours = problem.theirs(PMatLowRank), problem.ours("low_rank")
    assert theirs.data.shape[0] * theirs.data.shape[1] < problem.d
    v, regul = problem.vector(), 0.1
    x_theirs = theirs.solve(problem.pvector(v), regul).to_torch()
    F = problem.ours("dense").to_dense()
    exact = torch.linalg.solve(F + regul * torch.eye(problem.d), v)
    close(ours.solve(v, damping=regul), exact, rtol=1e-9, atol=1e-11)
    residual = F @ x_theirs + regul * x_theirs - v
    assert float(residual.norm() / v.norm()) > 0.1
    close(F @ residual, torch.zeros(problem.d), atol=1e-10, rtol=0)
    close(F @ x_theirs, F @ exact, rtol=1e-8, atol=1e-10)


def test_implicit(problem):
    theirs, ours = problem.theirs(PMatImplicit), problem.ours("implicit")
    v = problem.vector()
    pv = problem.pvector(v)
    close(theirs.mv(pv).to_torch(), ours @ v)
    close(theirs.vTMv(pv), ours.vTMv(v))
    close(theirs.trace(), ours.trace())
    with pytest.raises(NotImplementedError):
        theirs.frobenius_norm()
    with pytest.raises(TypeError):  # PMatImplicit.solvePVec(*args) refuses solve's keywords
        theirs.solve(pv, 0.1)
    F = problem.ours("dense")  # ours has both: exact for small d, CG for the solve
    close(ours.frobenius_norm(), F.frobenius_norm(), rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------------------
# Neural tangent kernel
# --------------------------------------------------------------------------------------
def jacrev_ntk(model, X, output=None):
    """Reference: per-example Jacobians from torch.func.jacrev, (n, C, d) -> K (n C, n C)."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def f(p, x):
        out = functional_call(model, p, (x[None],))[0]
        return out if output is None else output(out[None])[0][None]
    J = vmap(jacrev(f), in_dims=(None, 0))(params, X)
    J = torch.cat([J[k].reshape(len(X), -1, params[k].numel()) for k in params], dim=2)
    J = J.reshape(-1, J.shape[-1])
    return J @ J.T


def test_ntk_all_outputs(problem):
    n, C = len(problem.X), problem.C
    theirs = GramMatrix(problem.model, problem.loader).to_torch()  # (C, n, C, n)
    ours = curvature.ntk(problem.model, problem.X)
    assert theirs.shape == (C, n, C, n)
    close(ours, jacrev_ntk(problem.model, problem.X))
    close(theirs, ours.reshape(n, C, n, C).permute(1, 0, 3, 2))


def test_ntk_one_output(problem):
    def diff(*d):
        out = problem.model(d[0])
        return out[:, 2] - out[:, 0]
    theirs = GramMatrix(problem.model, problem.loader, function=diff).to_torch()
    n = len(problem.X)
    ours = curvature.ntk(problem.model, problem.X, output=(0, 2))
    close(ours, jacrev_ntk(problem.model, problem.X, output=lambda f: f[:, 2] - f[:, 0]))
    close(theirs.reshape(n, n), ours)


# --------------------------------------------------------------------------------------
# NNGeometry's defects, shown deterministically
# --------------------------------------------------------------------------------------
def test_nngeometry_ntk_is_wrong_for_a_layer_called_twice():
    torch.manual_seed(0)
    model, X = SharedLayer().double(), torch.randn(6, 3)
    loader = DataLoader(TensorDataset(X, torch.zeros(6)), batch_size=3)
    reference = jacrev_ntk(model, X)
    ours = curvature.ntk(model, X)
    close(ours, reference)
    theirs = GramMatrix(model, loader).to_torch().permute(1, 0, 3, 2).reshape(12, 12)
    assert float((theirs - reference).norm() / reference.norm()) > 1e-2


def test_nngeometry_fails_on_float64_models_under_float32_default():
    p = mlp()
    torch.set_default_dtype(torch.float32)  # the fixture restores float64 afterwards
    with pytest.raises(RuntimeError, match="dtype"):
        FIM(p.model, p.loader, PMatDense, variant="classif_logits")
    # the regression variant runs (on a fresh model: the failed call left its hooks on that
    # one), but accumulates float64 gradients in float32 buffers
    p = mlp()
    targets = torch.zeros(len(p.X), p.C, dtype=torch.float64)
    loader = DataLoader(TensorDataset(p.X, targets), batch_size=BATCH)
    ours = curvature.fisher(p.model, nn.MSELoss(reduction="sum"), (p.X, targets),
                            representation="block_diagonal").to_dense() / (2 * len(p.X))
    blocks = FIM(p.model, loader, PMatBlockDiag, variant="regression").to_torch()
    error = float((blocks.double() - ours).abs().max() / ours.abs().max())
    assert 1e-12 < error < 1e-5  # float32 round-off on a float64 model
    trace = FIM(p.model, loader, PMatImplicit, variant="regression").trace()
    assert trace.dtype == torch.float32


def batchnorm_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 3)).double().eval()


def test_nngeometry_batchnorm_kfac_error_is_bare_and_poisons_the_model():
    p = mlp()
    model = batchnorm_model()
    with pytest.raises(NotImplementedError) as info:
        FIM(model, p.loader, PMatKFAC)
    assert str(info.value) == ""  # no message, raised from inside a backward hook
    with pytest.raises(AttributeError):
        FIM(batchnorm_model(), p.loader, PMatQuasiDiag)
    # its hooks stay on the model: the dense Fisher, fine on a fresh copy, now fails too
    assert any(len(m._forward_hooks) for m in model)
    close(FIM(batchnorm_model(), p.loader, PMatDense).to_torch(),
          curvature.fisher(batchnorm_model(), CE, p.batches, representation="dense").to_dense())
    with pytest.raises(NotImplementedError):
        FIM(model, p.loader, PMatDense)
    # ours names the layer, before any pass, and leaves the model as it was
    fresh = batchnorm_model()
    for representation in ("kfac", "ekfac", "quasi_diagonal"):
        with pytest.raises(ValueError, match=r"'1' \(BatchNorm1d\)"):
            curvature.fisher(fresh, CE, p.batches, representation=representation)
    assert not any(len(m._forward_hooks) or len(m._backward_hooks) for m in fresh)
