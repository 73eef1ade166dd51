"""Tests for lib.book.models: shapes, seeding, per-example structure and bad input."""

import math

import pytest
import torch
from torch import nn

from lib.book.models import (ACTIVATIONS, DiagonalNet, VisionTransformer, classifier, diagonal_net,
                        lenet, mlp, num_parameters, small_resnet, vit, wide_resnet)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _same_parameters(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def _all_parameters_get_gradients(model: nn.Module, x: torch.Tensor) -> bool:
    model(x).square().sum().backward()
    return all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


# --------------------------------------------------------------------------- #
# MLP
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_mlp_shapes_and_structure(activation):
    model = mlp(5, [7, 3], 2, activation=activation, seed=0)
    assert isinstance(model, nn.Sequential)
    assert model(torch.randn(4, 5)).shape == (4, 2)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(5, 7), (7, 3), (3, 2)]
    assert sum(isinstance(m, ACTIVATIONS[activation]) for m in model) == 2


def test_mlp_without_hidden_layers_is_linear():
    model = mlp(3, [], 1, bias=False, seed=0)
    assert len(model) == 1 and num_parameters(model) == 3


def test_num_parameters_counts_and_respects_trainable_only():
    model = mlp(2, [3], 1, seed=0)
    assert num_parameters(model) == 2 * 3 + 3 + 3 * 1 + 1
    model[0].weight.requires_grad_(False)
    assert num_parameters(model) == 7
    assert num_parameters(model, trainable_only=False) == 13
    with pytest.raises(TypeError, match="nn.Module"):
        num_parameters([torch.zeros(2)])


def test_seed_makes_initialization_reproducible_and_keeps_global_rng():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = mlp(4, [8], 3, seed=5)
    assert torch.equal(torch.rand(1), expected_next)  # global generator untouched
    assert _same_parameters(a, mlp(4, [8], 3, seed=5))
    assert not _same_parameters(a, mlp(4, [8], 3, seed=6))
    assert _same_parameters(lenet(seed=1), lenet(seed=1))
    assert _same_parameters(small_resnet(seed=1), small_resnet(seed=1))
    assert _same_parameters(wide_resnet(10, 1, seed=1), wide_resnet(10, 1, seed=1))


@pytest.mark.parametrize("kwargs, error, message", [
    ({"in_features": 0}, ValueError, "in_features"),
    ({"in_features": 2.0}, TypeError, "in_features"),
    ({"out_features": True}, TypeError, "out_features"),
    ({"hidden": 16}, TypeError, "hidden"),
    ({"hidden": "16"}, TypeError, "hidden"),
    ({"hidden": [16, 0]}, ValueError, "hidden width"),
    ({"activation": "swish"}, ValueError, "swish"),
    ({"seed": -1}, ValueError, "seed"),
])
def test_mlp_bad_input(kwargs, error, message):
    arguments = {"in_features": 3, "hidden": [4], "out_features": 2, **kwargs}
    with pytest.raises(error, match=message):
        mlp(**arguments)


# --------------------------------------------------------------------------- #
# LeNet
# --------------------------------------------------------------------------- #
def test_lenet_2d_on_8x8_digits():
    model = lenet(seed=0)
    x = torch.randn(5, 1, 8, 8)
    assert model(x).shape == (5, 10)
    assert _all_parameters_get_gradients(model, x)


def test_lenet_1d_on_mnist1d_length():
    model = lenet(1, 10, image_size=40, conv1d=True, width=4, hidden=16, seed=0)
    assert model(torch.randn(3, 1, 40)).shape == (3, 10)
    assert any(isinstance(m, nn.Conv1d) for m in model)


@pytest.mark.parametrize("size", [4, 7, 10, 28])
def test_lenet_handles_sizes_not_divisible_by_four(size):
    assert lenet(3, 5, image_size=size, seed=0)(torch.randn(2, 3, size, size)).shape == (2, 5)


@pytest.mark.parametrize("kwargs, error", [
    ({"image_size": 3}, ValueError), ({"width": 0}, ValueError), ({"hidden": 2.5}, TypeError),
    ({"in_channels": 0}, ValueError), ({"activation": None}, ValueError),
])
def test_lenet_bad_input(kwargs, error):
    with pytest.raises(error, match=next(iter(kwargs))):
        lenet(**kwargs)


# --------------------------------------------------------------------------- #
# Small ResNet
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("dims, shape", [(2, (4, 1, 8, 8)), (1, (4, 1, 40))])
def test_small_resnet_shapes(dims, shape):
    model = small_resnet(1, 10, width=4, num_blocks=2, dims=dims, seed=0)
    x = torch.randn(*shape)
    assert model(x).shape == (4, 10)
    assert _all_parameters_get_gradients(model, x)


def test_small_resnet_has_no_batchnorm_by_default():
    plain = small_resnet(seed=0)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in plain.modules())
    batch = small_resnet(norm="batch", seed=0)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in batch.modules()) == 1 + 2 * 2


def test_without_norm_examples_do_not_interact_even_in_train_mode():
    # Per-example curvature (GGN, Fisher) needs each output to depend only on
    # its own input; BatchNorm in train mode breaks that, which is why it is off.
    x = torch.randn(6, 1, 8, 8)
    other = x.clone()
    other[1:] = torch.randn(5, 1, 8, 8)
    plain = small_resnet(width=4, seed=0).train()
    assert torch.allclose(plain(x)[0], plain(other)[0])
    batch = small_resnet(width=4, norm="batch", seed=0).train()
    assert not torch.allclose(batch(x)[0], batch(other)[0])


def test_small_resnet_zero_blocks():
    model = small_resnet(2, 3, width=4, num_blocks=0, seed=0)
    assert model(torch.randn(2, 2, 5, 5)).shape == (2, 3)


@pytest.mark.parametrize("kwargs", [{"dims": 3}, {"dims": True}, {"norm": "layer"},
                                    {"num_blocks": -1}, {"num_blocks": 1.0}, {"width": 0}])
def test_small_resnet_bad_input(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        small_resnet(**kwargs)


# --------------------------------------------------------------------------- #
# Wide ResNet
# --------------------------------------------------------------------------- #
def _wrn_parameter_count(depth, k, in_channels, num_classes):
    """Parameters of WRN-depth-k counted from the architecture, layer by layer."""
    def conv(c_in, c_out, size):
        return c_in * c_out * size * size  # no biases

    def bn(channels):
        return 2 * channels  # scale and shift

    n = (depth - 4) // 6
    count, c_in = conv(in_channels, 16, 3), 16
    for width in (16 * k, 32 * k, 64 * k):
        for _ in range(n):
            count += bn(c_in) + conv(c_in, width, 3) + bn(width) + conv(width, width, 3)
            if c_in != width:  # 1x1 shortcut; the strided blocks also change the width
                count += conv(c_in, width, 1)
            c_in = width
    return count + bn(c_in) + c_in * num_classes + num_classes


def test_wrn_16_4_parameter_count_and_output_shape():
    model = wide_resnet(16, 4, seed=0)
    # By hand (conv c_in*c_out*9, 1x1 shortcut c_in*c_out, BN 2c): stem 432;
    # group 1 (width 64): 47,264 + 73,984; group 2 (128): 229,760 + 295,424;
    # group 3 (256): 918,272 + 1,180,672; final BN 512; Linear 2,570.
    assert num_parameters(model) == _wrn_parameter_count(16, 4, 3, 10) == 2_748_890
    assert num_parameters(wide_resnet(28, 10)) == _wrn_parameter_count(28, 10, 3, 10)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_wrn_structure_and_gradients():
    model = wide_resnet(10, 2, in_channels=1, num_classes=4, dropout=0.3, seed=0)
    x = torch.randn(3, 1, 12, 12)
    assert model(x).shape == (3, 4)
    assert _all_parameters_get_gradients(model, x)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    # stem + 2 convs per block (one block per group) + 3 shortcuts (widths change)
    assert len(convs) == 1 + 2 * 3 + 3
    assert sum(isinstance(m, nn.Dropout) and m.p == 0.3 for m in model.modules()) == 3
    plain = wide_resnet(10, 1, seed=0)
    # With k = 1 the first group keeps 16 channels, so its shortcut is the identity.
    assert sum(m.kernel_size == (1, 1) for m in plain.modules() if isinstance(m, nn.Conv2d)) == 2
    assert not any(isinstance(m, nn.Dropout) for m in plain.modules())


def test_wrn_downsamples_32x32_to_8x8():
    model = wide_resnet(10, 1, seed=0)
    features = model[:-3](torch.randn(2, 3, 32, 32))  # everything before pooling
    assert features.shape == (2, 64, 8, 8)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"depth": 17}, ValueError, r"6n \+ 4"),
    ({"depth": 4}, ValueError, "depth"),
    ({"depth": 16.0}, TypeError, "depth"),
    ({"widen_factor": 0}, ValueError, "widen_factor"),
    ({"in_channels": 0}, ValueError, "in_channels"),
    ({"num_classes": 0}, ValueError, "num_classes"),
    ({"dropout": 1.0}, ValueError, "dropout"),
    ({"dropout": -0.1}, ValueError, "dropout"),
    ({"dropout": math.nan}, ValueError, "dropout"),
    ({"dropout": "0.3"}, TypeError, "dropout"),
    ({"seed": -1}, ValueError, "seed"),
])
def test_wrn_bad_input(kwargs, error, message):
    with pytest.raises(error, match=message):
        wide_resnet(**kwargs)


@pytest.mark.parametrize("device", DEVICES)
def test_models_run_on_device(device):
    for model, x in [(mlp(4, [8], 2, seed=0), torch.randn(3, 4)),
                     (lenet(seed=0), torch.randn(3, 1, 8, 8)),
                     (small_resnet(dims=1, width=4, seed=0), torch.randn(3, 1, 40)),
                     (wide_resnet(10, 1, seed=0), torch.randn(3, 3, 8, 8))]:
        out = model.to(device)(x.to(device))
        assert out.device.type == device and torch.isfinite(out).all()


# --------------------------------------------------------------------------- #
# Vision Transformer
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("shape, kwargs", [
    ((1, 8, 8), {}),                                        # 8x8 digits: 16 tokens
    ((1, 40), {"image_size": 40, "conv1d": True}),          # MNIST-1D: 20 tokens
    ((3, 12, 12), {"image_size": 12, "patch_size": 4, "depth": 0}),
])
def test_vit_shapes_and_gradients(shape, kwargs):
    model = vit(shape[0], 10, seed=0, **kwargs)
    assert isinstance(model, VisionTransformer)
    x = torch.randn(5, *shape)
    assert model(x).shape == (5, 10)
    assert _all_parameters_get_gradients(model, x)


def test_vit_seed_reproducible_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b, c = vit(seed=1), vit(seed=1), vit(seed=2)
    assert torch.equal(state, torch.random.get_rng_state())
    assert _same_parameters(a, b) and not _same_parameters(a, c)
    x = torch.randn(3, 1, 8, 8)
    a.eval(), b.eval()
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_vit_examples_are_independent():
    # No BatchNorm or batch-coupled ops: an example's output ignores the rest of the batch.
    model = vit(seed=0).eval()
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[:1], model(x[:1]))


@pytest.mark.parametrize("kwargs, error, match", [
    ({"patch_size": 3}, ValueError, "not divisible by patch_size"),
    ({"patch_size": 0}, ValueError, "patch_size"),
    ({"dim": 30, "heads": 4}, ValueError, "not divisible by heads"),
    ({"depth": -1}, ValueError, "depth"),
    ({"conv1d": 1}, TypeError, "conv1d"),
])
def test_vit_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        vit(**kwargs)


# --------------------------------------------------------------------------- #
# classifier(arch, input_shape, ...): builders by name
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("arch, shape, expected", [
    ("mlp", (64,), lambda: mlp(64, [16], 10, seed=3)),
    ("MLP", (1, 8, 8), lambda: mlp(64, [16], 10, seed=3)),
    ("lenet", (1, 8, 8), lambda: lenet(1, 10, image_size=8, seed=3)),
    ("lenet", (1, 40), lambda: lenet(1, 10, image_size=40, conv1d=True, seed=3)),
    ("wrn-10-1", (3, 16, 16), lambda: wide_resnet(10, 1, in_channels=3, num_classes=10, seed=3)),
    ("resnet", (1, 8, 8), lambda: small_resnet(1, 10, width=16, num_blocks=2, norm="batch", seed=3)),
    ("resnet", (1, 40), lambda: small_resnet(1, 10, width=16, num_blocks=2, dims=1, norm="batch", seed=3)),
    ("vit", (1, 8, 8), lambda: vit(1, 10, image_size=8, patch_size=2, seed=3)),
    ("vit", (1, 40), lambda: vit(1, 10, image_size=40, patch_size=4, conv1d=True, seed=3)),
    ("vit", (3, 32, 32), lambda: vit(3, 10, image_size=32, patch_size=4, seed=3)),
])
def test_classifier_builds_the_named_network(arch, shape, expected):
    model, reference = classifier(arch, shape, 10, hidden=[16], seed=3), expected()
    assert num_parameters(model) == num_parameters(reference)
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q)
    X = torch.randn(2, *shape)
    model.eval(), reference.eval()
    with torch.no_grad():
        flat = X.reshape(2, -1) if arch.lower() == "mlp" else X
        torch.testing.assert_close(model(X), reference(flat))


@pytest.mark.parametrize("arch, shape, error, match", [
    ("resnet50", (1, 8, 8), ValueError, "unknown arch"),
    ("wrn-16", (3, 32, 32), ValueError, "unknown arch"),
    ("vit", (1, 8, 6), ValueError, "square"),
    ("vit", (1, 9, 9), ValueError, "divisible"),
    ("resnet", (64,), ValueError, "signals"),
    ("lenet", (1, 8, 6), ValueError, "square"),
    ("wrn-16-4", (1, 40), ValueError, "images"),
    (3, (1, 8, 8), TypeError, "string"),
])
def test_classifier_bad_input(arch, shape, error, match):
    with pytest.raises(error, match=match):
        classifier(arch, shape, 10)


# --------------------------------------------------------------------------- #
# Diagonal network
# --------------------------------------------------------------------------- #
def test_diagonal_net_forward_symmetry_and_seed():
    torch.manual_seed(7)
    expected_next = torch.rand(1)
    torch.manual_seed(7)
    model = diagonal_net(6, init_scale=0.5, seed=3)
    assert torch.equal(torch.rand(1), expected_next)  # global generator untouched
    assert isinstance(model, DiagonalNet) and model.rescale_pairs == (("u", "v"),)
    assert [name for name, _ in model.named_parameters()] == ["u", "v"]
    assert model.u.shape == (6,) and model.v.shape == (6,) and num_parameters(model) == 12
    assert abs(model.u.std().item() - 0.5) < 0.5  # scale, loosely (6 draws)
    x = torch.randn(4, 6)
    out = model(x)
    assert out.shape == (4,)
    torch.testing.assert_close(out, x @ (model.u * model.v))
    torch.testing.assert_close(model.beta, model.u * model.v)
    # The elementwise rescaling (a u, v / a) leaves the function unchanged.
    a = torch.rand(6) + 0.5
    with torch.no_grad():
        model.u.mul_(a)
        model.v.div_(a)
    torch.testing.assert_close(model(x), out)
    assert _same_parameters(diagonal_net(6, seed=1), diagonal_net(6, seed=1))
    assert not _same_parameters(diagonal_net(6, seed=1), diagonal_net(6, seed=2))
    assert diagonal_net(3).double()(torch.randn(2, 3, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("kwargs, error", [
    ({"d": 0}, ValueError),
    ({"d": 2.0}, TypeError),
    ({"init_scale": 0.0}, ValueError),
    ({"init_scale": float("nan")}, ValueError),
    ({"init_scale": "big"}, TypeError),
    ({"seed": -1}, ValueError),
])
def test_diagonal_net_bad_input(kwargs, error):
    arguments = {"d": 4, **kwargs}
    with pytest.raises(error):
        diagonal_net(**arguments)
