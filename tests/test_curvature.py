"""Curvature operators against dense float64 references built independently.

The references (:mod:`lib.curvature.dense`) never use lib's closed forms: Hessians come
from ``torch.func.hessian`` of the flattened loss, Jacobians from ``torch.func.jacrev``,
loss Hessians in output space from ``torch.func.hessian`` of the per-sample loss, and
Fishers from per-sample parameter gradients at every label (exact) or at the data labels
(empirical). Every operator goes through the shared checker of ``operator_problems``.
"""

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from lib import curvature
from lib.book.models import vit
from lib.curvature.dense import dense_fisher, dense_ggn, dense_hessian
from operator_problems import assert_close, compare_with_dense, make_problem, tiny_problem  # noqa: F401

RTOL = 1e-6


@pytest.mark.parametrize("mode", curvature.HESSIAN_MODES)
def test_hessian_matches_dense(tiny_problem, mode):
    model, loss_fn, data, X, y = tiny_problem
    H = curvature.hessian(model, loss_fn, data, mode=mode)
    compare_with_dense(H, dense_hessian(model, loss_fn, data), rtol=RTOL)


def test_ggn_matches_dense(tiny_problem):
    model, loss_fn, data, X, y = tiny_problem
    compare_with_dense(curvature.ggn(model, loss_fn, data), dense_ggn(model, loss_fn, data),
                       rtol=RTOL)


@pytest.mark.parametrize("arch,reduction", [(a, r) for a in ("tanh", "conv") for r in ("mean", "sum")])
def test_exact_fisher_matches_label_enumeration_and_ggn_for_cross_entropy(arch, reduction):
    model, loss_fn, data, X, y = make_problem(arch, "ce", reduction)
    F = curvature.fisher(model, loss_fn, data, kind="exact")
    compare_with_dense(F, dense_fisher(model, loss_fn, data, "exact"), rtol=RTOL)
    assert_close(F.to_dense(), dense_ggn(model, loss_fn, data), RTOL)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_exact_fisher_matches_label_enumeration_for_squared_error(reduction):
    model, loss_fn, data, X, y = make_problem("tanh", "mse", reduction)
    F = curvature.fisher(model, loss_fn, data, kind=curvature.FisherKind.EXACT)
    compare_with_dense(F, dense_fisher(model, loss_fn, data, "exact"), rtol=RTOL)


def test_empirical_fisher_matches_per_sample_gradients(tiny_problem):
    model, loss_fn, data, X, y = tiny_problem
    F = curvature.fisher(model, loss_fn, data, kind="empirical")
    compare_with_dense(F, dense_fisher(model, loss_fn, data, "empirical"), rtol=RTOL)


@pytest.mark.parametrize("loss_name", ["ce", "mse"])
def test_ggn_equals_hessian_for_a_model_linear_in_its_parameters(loss_name):
    model, loss_fn, data, X, y = make_problem("linear", loss_name, "mean")
    G = curvature.ggn(model, loss_fn, data).to_dense()
    assert_close(G, curvature.hessian(model, loss_fn, data).to_dense())
    assert_close(G, dense_hessian(model, loss_fn, data))


def test_fisher_kind_is_a_documented_string_enum():
    kinds = curvature.FisherKind
    assert [k.value for k in kinds] == ["exact", "mc", "empirical", "ggn"]
    assert kinds.MC == "mc" and str(kinds.EMPIRICAL) == "empirical"
    model, loss_fn, data, X, y = make_problem("tanh", "ce", "mean")
    as_string = curvature.fisher(model, loss_fn, data, "empirical").to_dense()
    assert torch.equal(curvature.fisher(model, loss_fn, data, kinds.EMPIRICAL).to_dense(), as_string)
    with pytest.raises(ValueError, match="kind 'ggn'"):  # the GGN has its own entry point
        curvature.fisher(model, loss_fn, data, "ggn")


@pytest.mark.parametrize("loss_name", ["ce", "mse"])
def test_mc_fisher_converges_to_exact(loss_name):
    model, loss_fn, data, X, y = make_problem("tanh", loss_name, "mean")
    exact = curvature.fisher(model, loss_fn, data, kind="exact").to_dense()
    errors = []
    for samples in (10, 1000):
        mc = curvature.fisher(model, loss_fn, data, kind="mc", num_samples=samples, seed=1)
        errors.append(float(torch.linalg.norm(mc.to_dense() - exact) / torch.linalg.norm(exact)))
    # Error shrinks like 1/sqrt(S): a factor of 10 between S = 10 and S = 1000.
    assert errors[1] < errors[0] / 4
    assert errors[1] < 0.1


def test_mc_fisher_is_unbiased_across_seeds():
    model, loss_fn, data, X, y = make_problem("tanh", "ce", "sum")
    exact = curvature.fisher(model, loss_fn, data, kind="exact").to_dense()
    draws = torch.stack([curvature.fisher(model, loss_fn, data, kind="mc", seed=s).to_dense()
                         for s in range(200)])
    mean, sem = draws.mean(0), draws.std(0) / math.sqrt(len(draws))
    z = ((mean - exact).abs() / sem.clamp_min(1e-12))[sem > 1e-9]
    assert float((z > 4).float().mean()) < 0.01


def test_mc_fisher_is_a_fixed_symmetric_matrix():
    model, loss_fn, data, X, y = make_problem("tanh", "ce", "mean")
    F = curvature.fisher(model, loss_fn, data, kind="mc", num_samples=3, seed=5)
    D1, D2 = F.to_dense(), F.to_dense(chunk_size=7)
    assert torch.equal(D1, D2) or torch.allclose(D1, D2, rtol=1e-12, atol=1e-15)
    assert torch.allclose(D1, D1.T, atol=1e-14)
    other = curvature.fisher(model, loss_fn, data, kind="mc", num_samples=3, seed=6).to_dense()
    assert not torch.allclose(D1, other)


def test_dataset_given_as_single_pair_or_one_shot_iterator():
    model, loss_fn, data, X, y = make_problem("tanh", "ce", "mean")
    ref = curvature.ggn(model, loss_fn, data).to_dense()
    assert_close(curvature.ggn(model, loss_fn, (X, y)).to_dense(), ref)
    assert_close(curvature.ggn(model, loss_fn, iter(data)).to_dense(), ref)


def test_gradient_matches_autograd_on_the_full_batch():
    model, loss_fn, data, X, y = make_problem("relu", "mse", "mean")
    g = torch.autograd.grad(loss_fn(model(X), y), list(model.parameters()))
    assert_close(curvature.gradient(model, loss_fn, data), torch.cat([t.reshape(-1) for t in g]))


def test_operator_algebra_and_damped_inverse():
    model, loss_fn, data, X, y = make_problem("tanh", "ce", "mean")
    H = curvature.hessian(model, loss_fn, data)
    G = curvature.ggn(model, loss_fn, data)
    Hd, Gd = H.to_dense(), G.to_dense()
    eye = torch.eye(H.shape[0], dtype=torch.float64)
    assert_close((H + 2.0 * G - G).to_dense(), Hd + Gd)
    assert_close((G @ H).to_dense(), Gd @ Hd)
    inv = G.inverse(1e-2, tol=1e-12)
    assert_close((inv @ H).to_dense(), torch.linalg.solve(Gd + 1e-2 * eye, Hd), rtol=1e-5)


def test_float32_model_runs_in_float32():
    model, loss_fn, data, X, y = make_problem("tanh", "ce", "mean")
    model = model.float()
    data = [(Xb.float(), yb) for Xb, yb in data]
    H = curvature.hessian(model, loss_fn, data)
    assert H.dtype == torch.float32
    assert (H @ torch.ones(H.shape[0])).dtype == torch.float32


# -- bad input -----------------------------------------------------------------------------
@pytest.fixture
def problem():
    return make_problem("tanh", "ce", "mean")


def test_wrong_vector_size_raises(problem):
    model, loss_fn, data, X, y = problem
    H = curvature.hessian(model, loss_fn, data)
    with pytest.raises(ValueError, match="shape"):
        H @ torch.ones(H.shape[0] + 1, dtype=torch.float64)


def test_nan_vector_raises(problem):
    model, loss_fn, data, X, y = problem
    v = torch.ones(curvature.ggn(model, loss_fn, data).shape[0], dtype=torch.float64)
    v[0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        curvature.ggn(model, loss_fn, data) @ v


def test_integer_vector_raises(problem):
    model, loss_fn, data, X, y = problem
    H = curvature.hessian(model, loss_fn, data)
    with pytest.raises(TypeError, match="floating"):
        H @ torch.ones(H.shape[0], dtype=torch.int64)


def test_unknown_fisher_kind_raises(problem):
    model, loss_fn, data, X, y = problem
    with pytest.raises(ValueError, match="kind 'bogus'"):
        curvature.fisher(model, loss_fn, data, kind="bogus")


def test_unknown_hessian_mode_raises(problem):
    model, loss_fn, data, X, y = problem
    with pytest.raises(ValueError, match="mode 'sideways'"):
        curvature.hessian(model, loss_fn, data, mode="sideways")


def test_empty_data_raises(problem):
    model, loss_fn, data, X, y = problem
    with pytest.raises(ValueError, match="empty"):
        curvature.hessian(model, loss_fn, [])
    with pytest.raises(ValueError, match="empty"):
        curvature.ggn(model, loss_fn, [(X[:0], y[:0])])


def test_unsupported_loss_and_reduction_raise(problem):
    model, loss_fn, data, X, y = problem
    with pytest.raises(ValueError, match="unsupported loss"):
        curvature.ggn(model, nn.L1Loss(), data)
    with pytest.raises(ValueError, match="reduction"):
        curvature.ggn(model, nn.CrossEntropyLoss(reduction="none"), data)


def test_training_mode_dropout_raises(problem):
    model, loss_fn, data, X, y = problem
    noisy = nn.Sequential(model, nn.Dropout(0.5))
    with pytest.raises(ValueError, match="model.eval"):
        curvature.hessian(noisy, loss_fn, data)
    noisy.eval()
    curvature.hessian(noisy, loss_fn, data)


def test_wrong_parameter_shapes_raise(problem):
    model, loss_fn, data, X, y = problem
    H = curvature.hessian(model, loss_fn, data)
    with pytest.raises(ValueError, match="shapes"):
        H @ [torch.zeros(2, 2, dtype=torch.float64)]


# -- properties over random tiny networks ------------------------------------------------

@settings(max_examples=15, deadline=None)
@given(width=st.integers(1, 5), depth=st.integers(1, 2), act=st.sampled_from([nn.Tanh, nn.Sigmoid]),
       loss_name=st.sampled_from(["ce", "mse"]), reduction=st.sampled_from(["mean", "sum"]),
       n=st.integers(1, 9), split=st.integers(0, 9), seed=st.integers(0, 2 ** 16))
def test_random_networks_match_dense_and_obey_the_identities(width, depth, act, loss_name,
                                                             reduction, n, split, seed):
    """For random architectures, batchings and seeds: H matches torch.func; G matches the
    Jacobian reference, is symmetric PSD; the exact Fisher equals G."""
    torch.manual_seed(seed)
    layers, fan_in = [], 3
    for _ in range(depth):
        layers += [nn.Linear(fan_in, width), act()]
        fan_in = width
    model = nn.Sequential(*layers, nn.Linear(fan_in, 3)).double()
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 3, generator=g, dtype=torch.float64)
    if loss_name == "ce":
        y, loss_fn = torch.randint(0, 3, (n,), generator=g), nn.CrossEntropyLoss(reduction=reduction)
    else:
        y, loss_fn = torch.randn(n, 3, generator=g, dtype=torch.float64), nn.MSELoss(reduction=reduction)
    k = min(split, n)
    data = [(X[:k], y[:k]), (X[k:], y[k:])]  # one of the batches may be empty
    H = curvature.hessian(model, loss_fn, data).to_dense()
    G = curvature.ggn(model, loss_fn, data).to_dense()
    assert_close(H, dense_hessian(model, loss_fn, data))
    assert_close(G, dense_ggn(model, loss_fn, data))
    assert_close(curvature.fisher(model, loss_fn, data, "exact").to_dense(), G)
    torch.testing.assert_close(G, G.T, rtol=0, atol=1e-12)
    assert float(torch.linalg.eigvalsh(G).min()) > -1e-10 * max(1.0, float(G.abs().max()))


@pytest.mark.parametrize("kind", ["hessian", "ggn", "mc"])
def test_products_in_column_chunks_equal_one_block(kind):
    model, loss_fn, data, X, y = make_problem("tanh", "ce", "mean")
    make = {"hessian": lambda: curvature.hessian(model, loss_fn, data),
            "ggn": lambda: curvature.ggn(model, loss_fn, data),
            "mc": lambda: curvature.fisher(model, loss_fn, data, "mc", num_samples=2, seed=3)}[kind]
    whole, chunked = make(), make()
    chunked.block_entries = 3 * chunked.shape[0]  # three columns per pass
    V = torch.randn(whole.shape[0], 8, dtype=torch.float64)
    assert_close(chunked @ V, whole @ V, rtol=1e-12)


@pytest.mark.parametrize("mode", curvature.HESSIAN_MODES)
def test_products_through_multi_head_attention(mode):
    # On the CPU, attention dispatches to kernels without double backward / forward-mode
    # AD; the operators must route around them (lib.curvature.products.differentiable_attention).
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model = vit(1, 3, image_size=4, patch_size=2, dim=8, depth=1, heads=2, mlp_ratio=1,
                seed=0).double().eval()
    g = torch.Generator().manual_seed(0)
    X = torch.randn(4, 1, 4, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (4,), generator=g)
    loss_fn = nn.CrossEntropyLoss()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH):  # the dense references need the same kernels
            # reverse-over-reverse reference: torch.func.hessian (forward-over-reverse on
            # the flat vector) is off by ~30 % on this model in torch 2.14, while finite
            # differences of the gradient agree with this reference to 1e-10.
            H_ref = dense_hessian(model, loss_fn, (X, y), mode="reverse-over-reverse")
            G_ref = dense_ggn(model, loss_fn, (X, y))
    finally:
        torch.backends.mha.set_fastpath_enabled(True)
    assert_close(curvature.hessian(model, loss_fn, [(X, y)], mode=mode).to_dense(), H_ref)
    assert_close(curvature.ggn(model, loss_fn, [(X, y)]).to_dense(), G_ref)
    assert torch.backends.mha.get_fastpath_enabled()  # the global setting is restored


def test_dense_references_on_a_quadratic_and_a_float32_model():
    """dense_function_hessian (laplace's signature) is exact on a quadratic; the model
    references work in float64 whatever the model's dtype."""
    from lib.curvature.dense import dense_function_hessian

    A = torch.tensor([[2.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    x = torch.tensor([1.0, -1.0], dtype=torch.float64)
    value, gradient, H = dense_function_hessian(lambda t: 0.5 * t @ A @ t, x)
    assert float(value) == 1.5 and torch.equal(gradient, A @ x) and torch.equal(H, A)
    with pytest.raises(ValueError, match="flat"):
        dense_function_hessian(lambda t: t.sum(), x[None])
    model, loss_fn, data, X, y = make_problem("tanh", "ce", "mean")
    as32 = [(Xb.float(), yb) for Xb, yb in data]
    H64 = dense_hessian(model.float(), loss_fn, as32)
    assert H64.dtype == torch.float64
    assert_close(H64, dense_hessian(model.double(), loss_fn, data), 1e-5)
    with pytest.raises(ValueError, match="no deterministic reference"):
        dense_fisher(model, loss_fn, data, "mc")
