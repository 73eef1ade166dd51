"""Function space: the Jacobian object and the empirical NTK, against ``torch.func.jacrev``
of the whole float64 model (an independent reference: one reverse-mode Jacobian of all
outputs of all examples, no per-example vmap, no batching), and the kernel tools of
:mod:`lib.manifolds.kernels`."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev

from lib.curvature import jacobian, jacobians, ntk
from lib.curvature.dense import flat_parameters
from lib.manifolds.kernels import kernel_pca, kernel_target_alignment, normalize_gram
from operator_problems import SharedLayer

pytestmark = pytest.mark.usefixtures("float64_default")  # every model and input here is float64


def make(arch: str, n: int = 5, seed: int = 0):
    """A float64 model and inputs: ``mlp`` (3 -> 4 -> 3, tanh), ``conv`` (Conv2d(1, 2, 3),
    ReLU, Linear(18, 3) on 5 x 5 images), ``shared`` (a layer used twice)."""
    torch.manual_seed(seed)
    if arch == "mlp":
        return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double(), torch.randn(n, 3)
    if arch == "conv":
        model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(18, 3))
        return model.double(), torch.randn(n, 1, 5, 5)
    return SharedLayer(out=3, inner=torch.relu).double(), torch.randn(n, 3)


def reference(model, X, select=lambda f: f) -> torch.Tensor:
    """``(n C', d)``: jacrev of all (selected) outputs of all examples at once."""
    theta, unflatten = flat_parameters(model)
    J = jacrev(lambda t: select(functional_call(model, unflatten(t), (X,))))(theta)
    return J.reshape(-1, len(theta))


SELECTIONS = {
    None: lambda f: f,
    2: lambda f: f[:, 2],
    (0, 2): lambda f: f[:, 2] - f[:, 0],
    "callable": lambda f: (f ** 2).sum(1),
}


def as_output(key):
    return SELECTIONS["callable"] if key == "callable" else key


@pytest.mark.parametrize("arch", ["mlp", "conv", "shared"])
@pytest.mark.parametrize("key", list(SELECTIONS), ids=str)
def test_jacobian_matches_jacrev(arch, key):
    model, X = make(arch)
    ref = reference(model, X, SELECTIONS[key])
    J = jacobian(model, X, as_output(key), batch_size=2)  # 3 uneven blocks
    assert J.shape == ref.shape == (len(X) * (3 if key is None else 1), ref.shape[1])
    torch.testing.assert_close(J.to_dense(), ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(J.T.to_dense(), ref.T, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("arch", ["mlp", "conv", "shared"])
@pytest.mark.parametrize("key", [None, (0, 2)], ids=str)
def test_push_forward_and_pull_back(arch, key):
    model, X = make(arch)
    ref = reference(model, X, SELECTIONS[key])
    m, d = ref.shape
    J = jacobian(model, X, key, batch_size=2)
    g = torch.Generator().manual_seed(1)
    v, V = torch.randn(d, generator=g), torch.randn(d, 4, generator=g)
    u, U = torch.randn(m, generator=g), torch.randn(m, 3, generator=g)
    close = dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(J @ v, ref @ v, **close)
    torch.testing.assert_close(J.push_forward(V), ref @ V, **close)
    params = [p for p in model.parameters()]
    split = list(v.split([p.numel() for p in params]))
    torch.testing.assert_close(J @ [s.reshape(p.shape) for s, p in zip(split, params)], ref @ v, **close)
    torch.testing.assert_close(J.T @ u, ref.T @ u, **close)
    torch.testing.assert_close(J.pull_back(U), ref.T @ U, **close)
    # adjointness <J v, u> = <v, J^T u>, from the two products alone
    torch.testing.assert_close((J @ v) @ u, v @ (J.T @ u), **close)
    assert J.T.T.shape == J.shape and not J.T.T.transposed


def test_frozen_parameters_are_not_coordinates():
    model, X = make("mlp")
    model[0].weight.requires_grad_(False)
    J = jacobian(model, X)
    assert J.shape == (15, 4 + 12 + 3)
    full = reference(make("mlp")[0], X)  # same seed: same weights, all parameters
    torch.testing.assert_close(J.to_dense(), full[:, 12:], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("arch", ["mlp", "conv", "shared"])
@pytest.mark.parametrize("key", list(SELECTIONS), ids=str)
def test_ntk_matches_jacrev(arch, key):
    model, X1 = make(arch, n=5)
    X2 = make(arch, n=3, seed=1)[1]
    R1, R2 = reference(model, X1, SELECTIONS[key]), reference(model, X2, SELECTIONS[key])
    K = ntk(model, X1, X2, output=as_output(key), batch_size=2)
    C = 3 if key is None else 1
    assert K.shape == (5 * C, 3 * C)
    torch.testing.assert_close(K, R1 @ R2.T, rtol=1e-10, atol=1e-12)
    K11 = ntk(model, X1, output=as_output(key), batch_size=2)
    torch.testing.assert_close(K11, R1 @ R1.T, rtol=1e-10, atol=1e-12)
    assert torch.equal(K11, K11.T)


@pytest.mark.parametrize("symmetric", [True, False])
def test_ntk_without_the_cache_recomputes_blocks(monkeypatch, symmetric):
    """Past CACHE_ENTRIES the blocks of J(X2) are streamed: same matrix."""
    model, X = make("conv", n=5)
    X2 = None if symmetric else make("conv", n=4, seed=2)[1]
    R = reference(model, X)
    expected = R @ (R if symmetric else reference(model, X2)).T
    monkeypatch.setattr(jacobians, "CACHE_ENTRIES", 0)
    torch.testing.assert_close(ntk(model, X, X2, batch_size=2), expected, rtol=1e-10, atol=1e-12)


def test_ntk_layout_of_all_outputs():
    """(n1 C, n2 C) example-major: reshape(n1, C, n2, C)[i, :, j, :] = J_i J_j^T."""
    model, X = make("mlp", n=4)
    J = reference(model, X).reshape(4, 3, -1)
    K = ntk(model, X).reshape(4, 3, 4, 3)
    torch.testing.assert_close(K[1, :, 3, :], J[1] @ J[3].T, rtol=1e-10, atol=1e-12)


def test_default_blocks_and_float32():
    model, X = make("mlp", n=7)
    R = reference(model, X, lambda f: f[:, 1])
    K = ntk(model.float(), X.float(), output=1)
    assert K.dtype == torch.float32
    torch.testing.assert_close(K.double(), R @ R.T, rtol=1e-4, atol=1e-5)


# -- bad inputs ------------------------------------------------------------------------------
@pytest.mark.parametrize("layer", [nn.Dropout(0.5), nn.BatchNorm1d(4)], ids=["dropout", "batchnorm"])
def test_train_mode_dropout_or_batchnorm_is_refused(layer):
    model = nn.Sequential(nn.Linear(3, 4), layer, nn.Linear(4, 2)).double()
    X = torch.randn(6, 3)
    with pytest.raises(ValueError, match=f"{type(layer).__name__}.*training mode.*eval"):
        ntk(model, X)
    with pytest.raises(ValueError, match="training mode"):
        jacobian(model, X)
    model.eval()  # then the Gram matrix is one deterministic matrix
    R = reference(model, X)
    torch.testing.assert_close(ntk(model, X), R @ R.T, rtol=1e-10, atol=1e-12)


def test_a_random_forward_pass_is_refused():
    class Noisy(nn.Linear):
        def forward(self, x):
            return super().forward(x) + torch.randn(len(x), self.out_features)

    with pytest.raises(ValueError, match="not deterministic"):
        ntk(Noisy(3, 2).double(), torch.randn(4, 3))


def test_bad_inputs():
    model, X = make("mlp")
    J = jacobian(model, X)
    with pytest.raises(ValueError, match="feature shape"):
        ntk(model, X, torch.randn(2, 4))
    with pytest.raises(TypeError, match="X2 must be a tensor"):
        ntk(model, X, [[0.0, 1.0, 2.0]])
    with pytest.raises(TypeError, match="dtype"):
        ntk(model, X.float())
    with pytest.raises(TypeError, match="X must be a tensor"):
        jacobian(model, X.tolist())
    with pytest.raises(ValueError, match="at least one example"):
        jacobian(model, X[:0])
    with pytest.raises(ValueError, match="NaN or infinite"):
        jacobian(model, torch.full((2, 3), float("nan")))
    with pytest.raises(TypeError, match="nn.Module"):
        jacobian(lambda x: x, X)
    with pytest.raises(ValueError, match="out of range"):
        jacobian(model, X, output=3)
    with pytest.raises(ValueError, match="out of range"):
        jacobian(model, X, output=(0, -1))
    with pytest.raises(ValueError, match="pick two classes"):
        jacobian(model, X, output=(1, 1))
    with pytest.raises(ValueError, match="pair"):
        jacobian(model, X, output=(0, 1, 2))
    with pytest.raises(TypeError, match="output must be"):
        jacobian(model, X, output="logit")
    with pytest.raises(ValueError, match="one number per example"):
        jacobian(model, X, output=lambda f: f[:, :2])
    with pytest.raises(ValueError, match=r"v has shape \(5,\)"):
        J @ torch.randn(5)
    with pytest.raises(ValueError, match=r"u has shape \(27,\)"):
        J.T @ torch.randn(27)
    with pytest.raises(TypeError, match="floating-point"):
        J @ torch.ones(J.shape[1], dtype=torch.long)
    with pytest.raises(ValueError, match="parameter-shaped"):
        J @ [torch.randn(2)]
    with pytest.raises(ValueError, match="batch_size"):
        jacobian(model, X, batch_size=0)


# -- kernel tools ----------------------------------------------------------------------------
def random_gram(n=12, r=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    F = torch.randn(n, r, generator=g)
    return F @ F.T


def test_kernel_pca_matches_sklearn():
    from sklearn.decomposition import KernelPCA as SkKernelPCA

    K = random_gram()
    pca = kernel_pca(K, k=3)
    sk = SkKernelPCA(n_components=3, kernel="precomputed")
    expected = torch.from_numpy(sk.fit_transform(K.numpy()))
    torch.testing.assert_close(pca.eigenvalues, torch.from_numpy(sk.eigenvalues_), rtol=1e-10, atol=1e-10)
    signs = torch.sign((pca.projections * expected).sum(0))  # components agree up to sign
    torch.testing.assert_close(pca.projections, expected * signs, rtol=1e-8, atol=1e-10)
    peak = pca.projections.abs().argmax(0)
    assert bool((pca.projections[peak, torch.arange(3)] > 0).all())  # the documented sign


def test_kernel_pca_of_an_ntk_is_the_top_of_the_centred_matrix():
    """On an NTK Gram matrix: the projections reproduce the centred matrix's top part."""
    model, X = make("mlp", n=8)
    K = ntk(model, X, output=(0, 1))
    pca = kernel_pca(K, k=2)
    n = len(K)
    H = torch.eye(n) - 1 / n
    values, vectors = torch.linalg.eigh(H @ K @ H)
    torch.testing.assert_close(pca.eigenvalues, values.flip(0)[:2], rtol=1e-9, atol=1e-12)
    top = vectors[:, -2:] @ torch.diag(values[-2:]) @ vectors[:, -2:].T
    torch.testing.assert_close(pca.projections @ pca.projections.T, top, rtol=1e-9, atol=1e-12)


def test_alignment_against_a_hand_computation():
    K = random_gram(n=6)
    labels = torch.tensor([0, 2, 2, 1, 0, 2])
    num = sum(float(K[i, j]) * (labels[i] == labels[j]).item() for i in range(6) for j in range(6))
    same = sum((labels[i] == labels[j]).item() for i in range(6) for j in range(6))
    expected = num / (float(K.norm()) * same ** 0.5)
    assert abs(kernel_target_alignment(K, labels) - expected) < 1e-12
    onehot = torch.nn.functional.one_hot(labels).double()  # the same Y from a one-hot matrix
    assert abs(kernel_target_alignment(K, onehot) - expected) < 1e-12
    s = torch.tensor([1.0, -1, -1, 1, 1, -1])
    num = sum(float(K[i, j]) * float(s[i] * s[j]) for i in range(6) for j in range(6))
    assert abs(kernel_target_alignment(K, s) - num / (float(K.norm()) * 6)) < 1e-12
    H = torch.eye(6) - 1 / 6
    Kc, Yc = H @ K @ H, H @ torch.outer(s, s) @ H
    centred = float((Kc * Yc).sum() / (Kc.norm() * Yc.norm()))
    assert abs(kernel_target_alignment(K, s, centered=True) - centred) < 1e-12


def test_alignment_bounds():
    s = torch.tensor([1.0, -1, 1, 1, -1])
    Y = torch.outer(s, s)
    assert abs(kernel_target_alignment(3.0 * Y, s) - 1.0) < 1e-12
    assert abs(kernel_target_alignment(-Y, s) + 1.0) < 1e-12
    for seed in range(5):  # symmetric, indefinite: anywhere in [-1, 1]; PSD: in [0, 1]
        A = torch.randn(5, 5, generator=torch.Generator().manual_seed(seed))
        assert -1.0 <= kernel_target_alignment(A + A.T, s) <= 1.0
        assert -1.0 <= kernel_target_alignment(A + A.T, s, centered=True) <= 1.0
        assert 0.0 <= kernel_target_alignment(A @ A.T, s) <= 1.0


def test_normalize_gram():
    K = random_gram(n=5)
    N = normalize_gram(K)
    d = K.diagonal().sqrt()
    torch.testing.assert_close(N, K / torch.outer(d, d), rtol=1e-12, atol=0)
    torch.testing.assert_close(N.diagonal(), torch.ones(5), rtol=1e-12, atol=1e-12)
    assert float(N.abs().max()) <= 1 + 1e-12


def test_kernel_tools_bad_inputs():
    K = random_gram(n=4)
    with pytest.raises(ValueError, match="diagonal entries <= 0"):
        normalize_gram(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="not symmetric"):
        kernel_pca(K + torch.triu(torch.ones(4, 4), 1))
    with pytest.raises(ValueError, match="k must be <= n"):
        kernel_pca(K, k=5)
    with pytest.raises(ValueError, match="square"):
        kernel_pca(torch.ones(3, 2))
    with pytest.raises(TypeError, match="floating"):
        kernel_pca(torch.ones(3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="4 examples"):
        kernel_target_alignment(torch.eye(3), torch.tensor([1, -1, 1, 1]))
    with pytest.raises(ValueError, match="-1 or \\+1"):
        kernel_target_alignment(K, torch.tensor([0.5, 1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="single class"):
        kernel_target_alignment(K, torch.tensor([2, 2, 2, 2]), centered=True)
    with pytest.raises(TypeError, match="centered"):
        kernel_target_alignment(K, torch.tensor([1, 0, 1, 0]), centered=1)
