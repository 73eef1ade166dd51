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

@pytest.fixture(autouse=True)
def _float64():
    """Every model and input here is float64 (restored afterwards)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


class Shared(nn.Module):
    """One Linear used twice (the case of NNGeometry issue #94: its Gram matrix disagreed
    with a torch.func Jacobian)."""

    def __init__(self):
        super().__init__()
        self.fc, self.out = nn.Linear(3, 3), nn.Linear(3, 3)

    def forward(self, x):
        return self.out(torch.relu(self.fc(torch.tanh(self.fc(x)))))


def make(arch: str, n: int = 5, seed: int = 0):
    """A float64 model and inputs: ``mlp`` (3 -> 4 -> 3, tanh), ``conv`` (Conv2d(1, 2, 3),
    ReLU, Linear(18, 3) on 5 x 5 images), ``shared`` (a layer used twice)."""
    torch.manual_seed(seed)
    if arch == "mlp":
        return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double(), torch.randn(n, 3)
    if arch == "conv":
        model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(18, 3))
        return model.double(), torch.randn(n, 1, 5, 5)
    return Shared().double(), torch.randn(n, 3)


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
