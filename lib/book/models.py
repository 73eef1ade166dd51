"""Small networks whose curvature the book studies.

All builders take an optional ``seed``: with it, the initial weights are the
same on every call regardless of the global random state (the global state
is left untouched). Models are built on the CPU; move them with ``.to(device)``.

* :func:`mlp` - fully connected network.
* :func:`lenet` - LeNet-style CNN for 8x8 digits (2-D) or MNIST-1D (1-D).
* :func:`small_resnet` - residual CNN, without normalization by default.
* :func:`wide_resnet` - Wide ResNet (WRN-d-k) for CIFAR-sized images, with BatchNorm.
* :func:`vit` - small Vision Transformer for 8x8 digits (2-D) or MNIST-1D (1-D).
* :func:`diagonal_net` - diagonal linear network ``x -> x^T (u * v)`` (rescaling symmetry).
* :func:`classifier` - one of the above by name, sized for a data set's inputs.
* :func:`num_parameters` - parameter count.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from .._checks import check_int

__all__ = ["ACTIVATIONS", "mlp", "lenet", "small_resnet", "ResidualBlock", "wide_resnet",
           "WideBasicBlock", "vit", "VisionTransformer", "TransformerBlock", "diagonal_net",
           "DiagonalNet", "classifier", "num_parameters"]

#: The activations a model builder accepts by name, and their modules.
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
}


# --------------------------------------------------------------------------- #
# Argument checks
# --------------------------------------------------------------------------- #


def _activation(name: str) -> Callable[[], nn.Module]:
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def _dims(dims) -> int:
    if dims not in (1, 2) or isinstance(dims, bool):
        raise ValueError(f"dims must be 1 (signals) or 2 (images), got {dims!r}")
    return dims


def _check_io(in_channels, num_classes) -> tuple[int, int]:
    """The input channels and classes every image network takes, checked as integers >= 1."""
    return check_int(in_channels, "in_channels"), check_int(num_classes, "num_classes")


def _build(seed: int | None, make: Callable[[], nn.Module]) -> nn.Module:
    """Call ``make()`` with torch's CPU generator seeded by ``seed`` (if given).

    ``fork_rng`` restores the global generator afterwards, so building a model
    with a seed does not shift random numbers drawn later in a chapter.
    """
    if seed is None:
        return make()
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int or None, got {seed!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


# --------------------------------------------------------------------------- #
# MLP
# --------------------------------------------------------------------------- #
def mlp(in_features: int, hidden: Sequence[int], out_features: int, *,
        activation: str = "relu", bias: bool = True, seed: int | None = None) -> nn.Sequential:
    """Fully connected network ``Linear -> act -> ... -> Linear``.

    Args:
        in_features: input dimension D.
        hidden: widths of the hidden layers, e.g. ``[64, 64]``; empty gives
            a linear model.
        out_features: output dimension K (classes, or regression targets).
        activation: ``"relu"``, ``"tanh"``, ``"sigmoid"`` or ``"gelu"``.
        bias: give every Linear layer a bias.
        seed: seed for the initial weights (None: global generator).

    Returns:
        ``nn.Sequential`` mapping ``(N, D)`` to ``(N, K)``.
    """
    in_features = check_int(in_features, "in_features")
    out_features = check_int(out_features, "out_features")
    if isinstance(hidden, (int, str)) or not isinstance(hidden, Sequence):
        raise TypeError(f"hidden must be a sequence of ints such as [64, 64], got {hidden!r}")
    widths = [check_int(width, "each hidden width") for width in hidden]
    act = _activation(activation)

    def make() -> nn.Sequential:
        layers: list[nn.Module] = []
        sizes = [in_features, *widths]
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(fan_in, fan_out, bias=bias), act()]
        layers.append(nn.Linear(sizes[-1], out_features, bias=bias))
        return nn.Sequential(*layers)

    return _build(seed, make)


# --------------------------------------------------------------------------- #
# LeNet
# --------------------------------------------------------------------------- #
def lenet(in_channels: int = 1, num_classes: int = 10, *, image_size: int = 8,
          conv1d: bool = False, width: int = 8, hidden: int = 64,
          activation: str = "relu", seed: int | None = None) -> nn.Sequential:
    """LeNet-style CNN: two (conv 3 -> act -> max-pool 2) stages, then two Linear layers.

    Convolutions are padded ("same"), so each pooling halves the spatial
    size (rounding down): 8x8 -> 4x4 -> 2x2, or length 40 -> 20 -> 10.

    Args:
        in_channels: input channels C.
        num_classes: outputs K.
        image_size: side S of square images, or the length L with ``conv1d``;
            must be at least 4.
        conv1d: use 1-D convolutions (signals such as MNIST-1D).
        width: channels of the first conv; the second has ``2 * width``.
        hidden: width of the hidden Linear layer.
        activation: see :data:`ACTIVATIONS`.
        seed: seed for the initial weights (None: global generator).

    Returns:
        ``nn.Sequential`` mapping ``(N, C, S, S)`` (or ``(N, C, L)``) to ``(N, K)``.
    """
    in_channels, num_classes = _check_io(in_channels, num_classes)
    image_size = check_int(image_size, "image_size")
    if image_size < 4:
        raise ValueError(f"image_size must be at least 4 (two 2x poolings), got {image_size}")
    width = check_int(width, "width")
    hidden = check_int(hidden, "hidden")
    act = _activation(activation)
    Conv, Pool = (nn.Conv1d, nn.MaxPool1d) if conv1d else (nn.Conv2d, nn.MaxPool2d)
    pooled = image_size // 2 // 2
    flat = 2 * width * (pooled if conv1d else pooled * pooled)

    def make() -> nn.Sequential:
        return nn.Sequential(
            Conv(in_channels, width, kernel_size=3, padding=1), act(), Pool(2),
            Conv(width, 2 * width, kernel_size=3, padding=1), act(), Pool(2),
            nn.Flatten(),
            nn.Linear(flat, hidden), act(),
            nn.Linear(hidden, num_classes),
        )

    return _build(seed, make)


# --------------------------------------------------------------------------- #
# Small ResNet
# --------------------------------------------------------------------------- #
def _norm_layer(norm: str | None, channels: int, dims: int) -> nn.Module:
    if norm is None:
        return nn.Identity()
    return (nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d)(channels)


class ResidualBlock(nn.Module):
    """``x -> act(x + norm(conv(act(norm(conv(x))))))`` with channel count preserved.

    Input and output shapes are equal: ``(N, C, L)`` or ``(N, C, H, W)``.
    """

    def __init__(self, channels: int, *, dims: int = 2, norm: str | None = None,
                 activation: str = "relu"):
        super().__init__()
        Conv = nn.Conv1d if dims == 1 else nn.Conv2d
        # A bias before a BatchNorm is redundant (BN removes the mean).
        bias = norm is None
        self.conv1 = Conv(channels, channels, kernel_size=3, padding=1, bias=bias)
        self.norm1 = _norm_layer(norm, channels, dims)
        self.conv2 = Conv(channels, channels, kernel_size=3, padding=1, bias=bias)
        self.norm2 = _norm_layer(norm, channels, dims)
        self.act = _activation(activation)()

    def forward(self, x: Tensor) -> Tensor:
        branch = self.act(self.norm1(self.conv1(x)))
        branch = self.norm2(self.conv2(branch))
        return self.act(x + branch)


def small_resnet(in_channels: int = 1, num_classes: int = 10, *, width: int = 16,
                 num_blocks: int = 2, dims: int = 2, norm: str | None = None,
                 activation: str = "relu", seed: int | None = None) -> nn.Sequential:
    """Residual CNN: stem conv, ``num_blocks`` residual blocks, global average pool, Linear.

    There is no normalization by default: BatchNorm in training mode couples
    the examples of a batch, which breaks the per-example structure that
    GGN/Fisher computations rely on. ``norm="batch"`` adds it for comparison.
    The spatial size is kept throughout (the inputs here are tiny), so any
    input size works.

    Args:
        in_channels: input channels C.
        num_classes: outputs K.
        width: channels inside the network.
        num_blocks: number of residual blocks (0 allowed: stem + head only).
        dims: 2 for images ``(N, C, H, W)``, 1 for signals ``(N, C, L)``.
        norm: None or ``"batch"``.
        activation: see :data:`ACTIVATIONS`.
        seed: seed for the initial weights (None: global generator).

    Returns:
        ``nn.Sequential`` mapping ``(N, C, H, W)`` (or ``(N, C, L)``) to ``(N, K)``.
    """
    in_channels, num_classes = _check_io(in_channels, num_classes)
    width = check_int(width, "width")
    if isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or num_blocks < 0:
        raise ValueError(f"num_blocks must be a non-negative int, got {num_blocks!r}")
    dims = _dims(dims)
    if norm not in (None, "batch"):
        raise ValueError(f"norm must be None or 'batch', got {norm!r}")
    act = _activation(activation)
    Conv = nn.Conv1d if dims == 1 else nn.Conv2d
    Pool = nn.AdaptiveAvgPool1d if dims == 1 else nn.AdaptiveAvgPool2d

    def make() -> nn.Sequential:
        stem = [Conv(in_channels, width, kernel_size=3, padding=1, bias=norm is None)]
        if norm is not None:
            stem.append(_norm_layer(norm, width, dims))
        return nn.Sequential(
            *stem, act(),
            *[ResidualBlock(width, dims=dims, norm=norm, activation=activation)
              for _ in range(num_blocks)],
            Pool(1), nn.Flatten(),
            nn.Linear(width, num_classes),
        )

    return _build(seed, make)


# --------------------------------------------------------------------------- #
# Wide ResNet
# --------------------------------------------------------------------------- #
class WideBasicBlock(nn.Module):
    """Pre-activation block ``x + conv(drop(relu(bn(conv(relu(bn(x)))))))`` of a Wide ResNet.

    Maps ``(N, C_in, H, W)`` to ``(N, C_out, H', W')`` with ``H' = ceil(H / stride)``.
    When the shape changes (``C_in != C_out`` or ``stride != 1``) the shortcut
    is a 1x1 convolution with that stride, applied, as in the authors' code,
    to the pre-activated input ``relu(bn(x))``; otherwise it is the identity
    on ``x`` itself.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1,
                 dropout: float = 0.0):
        super().__init__()
        # Convolutions have no bias: each one feeds a BatchNorm (or the next
        # block's), which removes the mean anyway.
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.shortcut = (None if in_channels == out_channels and stride == 1 else
                         nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False))
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        activated = self.relu(self.bn1(x))
        branch = self.conv1(activated)
        branch = self.conv2(self.drop(self.relu(self.bn2(branch))))
        skip = x if self.shortcut is None else self.shortcut(activated)
        return skip + branch


def _dropout(dropout) -> float:
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)):
        raise TypeError(f"dropout must be a number in [0, 1), got {dropout!r}")
    if not 0 <= dropout < 1:  # also rejects NaN
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    return float(dropout)


def wide_resnet(depth: int = 16, widen_factor: int = 4, in_channels: int = 3,
                num_classes: int = 10, *, dropout: float = 0.0,
                seed: int | None = None) -> nn.Sequential:
    """Wide ResNet WRN-``depth``-``widen_factor`` (Zagoruyko & Komodakis, 2016) for CIFAR.

    A 3x3 conv stem with 16 channels, then three groups of ``n = (depth - 4) / 6``
    :class:`WideBasicBlock` s with widths ``16k``, ``32k``, ``64k``
    (``k = widen_factor``) whose first blocks have strides 1, 2, 2, then
    BN-ReLU, global average pooling and a Linear layer. ``depth`` counts the
    stem, the ``6n`` block convolutions and the Linear layer (the 1x1
    shortcuts are not counted). WRN-16-4 has 2,748,890 parameters for 10
    classes, WRN-28-10 has 36,479,194.

    Unlike :func:`small_resnet` this network has BatchNorm, as in the paper:
    in train mode the outputs of a batch's examples depend on each other, so
    per-example curvature (GGN, Fisher) should be computed in eval mode (as
    :func:`lib.book.train.train` does for its callback).

    The weights keep PyTorch's default initialization (Kaiming-uniform
    convolutions, BatchNorm scale 1 and shift 0), not the reference code's
    Kaiming-normal (fan-out) convolutions.

    Args:
        depth: total depth ``6n + 4`` (10, 16, 22, 28, 40, ...).
        widen_factor: width multiplier k.
        in_channels: input channels C.
        num_classes: outputs K.
        dropout: dropout probability between the two convolutions of each
            block, in [0, 1) (the paper tries 0.3).
        seed: seed for the initial weights (None: global generator).

    Returns:
        ``nn.Sequential`` mapping ``(N, C, H, W)`` to ``(N, K)``; any H, W >= 1
        works (32x32 becomes 8x8 before pooling).
    """
    depth = check_int(depth, "depth", 10)
    if (depth - 4) % 6:
        raise ValueError(f"depth must be 6n + 4 for an integer n >= 1 (10, 16, 22, 28, ...), "
                         f"got {depth}: (depth - 4) % 6 == {(depth - 4) % 6}")
    widen_factor = check_int(widen_factor, "widen_factor")
    in_channels, num_classes = _check_io(in_channels, num_classes)
    dropout = _dropout(dropout)
    blocks_per_group = (depth - 4) // 6
    widths = [16 * widen_factor, 32 * widen_factor, 64 * widen_factor]

    def group(in_width: int, width: int, stride: int) -> nn.Sequential:
        return nn.Sequential(*[
            WideBasicBlock(in_width if i == 0 else width, width,
                           stride if i == 0 else 1, dropout)
            for i in range(blocks_per_group)])

    def make() -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(in_channels, 16, kernel_size=3, padding=1, bias=False),
            group(16, widths[0], 1),
            group(widths[0], widths[1], 2),
            group(widths[1], widths[2], 2),
            nn.BatchNorm2d(widths[2]), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(widths[2], num_classes),
        )

    return _build(seed, make)



# --------------------------------------------------------------------------- #
# Vision Transformer
# --------------------------------------------------------------------------- #
class TransformerBlock(nn.Module):
    """Pre-LayerNorm encoder block ``x + attn(ln(x))``, then ``x + mlp(ln(x))``.

    Maps ``(N, T, dim)`` tokens to ``(N, T, dim)``; the MLP is
    ``Linear(dim, mlp_ratio * dim) -> GELU -> Linear(mlp_ratio * dim, dim)``.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(),
                                 nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm1(x)
        # need_weights=False skips averaging the attention maps, which nobody reads.
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """Patch embedding + position embedding, encoder blocks, mean pooling, LayerNorm, Linear.

    Maps ``(N, C, S, S)`` (or ``(N, C, L)`` with ``conv1d``) to ``(N, K)``; see :func:`vit`.
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: int, patch_size: int,
                 dim: int, depth: int, heads: int, mlp_ratio: int, conv1d: bool):
        super().__init__()
        Conv = nn.Conv1d if conv1d else nn.Conv2d
        # A strided convolution with kernel = stride = patch cuts the input into
        # non-overlapping patches and applies one shared Linear map to each.
        self.patch_embed = Conv(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        tokens = image_size // patch_size if conv1d else (image_size // patch_size) ** 2
        # Small random position embedding (std 0.02, as in ViT/timm), drawn from
        # the global generator so `_build`'s seed fixes it too.
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, tokens, dim))
        self.blocks = nn.Sequential(*[TransformerBlock(dim, heads, mlp_ratio)
                                      for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # (N, T, dim)
        tokens = self.blocks(tokens + self.pos_embed)
        return self.head(self.norm(tokens.mean(dim=1)))


def vit(in_channels: int = 1, num_classes: int = 10, *, image_size: int = 8,
        patch_size: int = 2, dim: int = 32, depth: int = 2, heads: int = 4,
        mlp_ratio: int = 2, conv1d: bool = False, seed: int | None = None) -> VisionTransformer:
    """Small Vision Transformer (Dosovitskiy et al., 2021) built from torch primitives.

    The input is cut into non-overlapping ``patch_size`` patches (a strided
    convolution), each embedded in ``dim`` dimensions with a learned position
    embedding added, then passed through ``depth`` pre-LayerNorm blocks
    (multi-head self-attention and a GELU MLP, see :class:`TransformerBlock`).
    The tokens are averaged (mean pooling, as in many small-data ViTs) rather
    than read off a class token: one parameter fewer to tune and it trains
    more easily on tiny inputs. A final LayerNorm and Linear give the logits.
    There is no dropout and no BatchNorm, so examples stay independent.

    Args:
        in_channels: input channels C.
        num_classes: outputs K.
        image_size: side S of square images, or the length L with ``conv1d``;
            must be divisible by ``patch_size``.
        patch_size: side (or length) P of a patch; ``(S / P)^2`` tokens (``L / P`` in 1-D).
        dim: embedding width; must be divisible by ``heads``.
        depth: number of encoder blocks (0 allowed: embedding + head only).
        heads: attention heads.
        mlp_ratio: hidden width of each block's MLP, as a multiple of ``dim``.
        conv1d: signals ``(N, C, L)`` (e.g. MNIST-1D) instead of images.
        seed: seed for the initial weights (None: global generator).

    Returns:
        :class:`VisionTransformer` mapping ``(N, C, S, S)`` (or ``(N, C, L)``) to ``(N, K)``.
    """
    in_channels, num_classes = _check_io(in_channels, num_classes)
    image_size = check_int(image_size, "image_size")
    patch_size = check_int(patch_size, "patch_size")
    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not divisible by patch_size {patch_size}")
    dim = check_int(dim, "dim")
    depth = check_int(depth, "depth", 0)
    heads = check_int(heads, "heads")
    if dim % heads:
        raise ValueError(f"dim {dim} is not divisible by heads {heads}")
    mlp_ratio = check_int(mlp_ratio, "mlp_ratio")
    if not isinstance(conv1d, bool):
        raise TypeError(f"conv1d must be a bool, got {type(conv1d).__name__}")
    return _build(seed, lambda: VisionTransformer(in_channels, num_classes, image_size, patch_size,
                                                  dim, depth, heads, mlp_ratio, conv1d))


# --------------------------------------------------------------------------- #
# Diagonal linear network
# --------------------------------------------------------------------------- #
class DiagonalNet(nn.Module):
    """Diagonal linear network ``x -> x^T (u * v)`` with parameters ``u, v`` of shape ``(d,)``.

    Maps ``(N, d)`` to ``(N,)``. The map only depends on ``beta = u * v``, so the
    elementwise rescaling ``(a * u, v / a)`` (any ``a`` with non-zero entries)
    leaves it unchanged; :attr:`rescale_pairs` names that symmetry for code that
    looks for it (e.g. :class:`lib.geometry.quotient.QuotientGeometry`).
    """

    #: Pairs ``(name_u, name_v)`` of this module's parameters related by the
    #: elementwise rescaling symmetry ``(a u, v / a)``.
    rescale_pairs = (("u", "v"),)

    def __init__(self, d: int, init_scale: float):
        super().__init__()
        # Independent Gaussian factors: generic (no zero entries, so the rescaling
        # metric 1/u^2 is finite) and small init_scale gives the "rich", sparse regime.
        self.u = nn.Parameter(init_scale * torch.randn(d))
        self.v = nn.Parameter(init_scale * torch.randn(d))

    @property
    def beta(self) -> Tensor:
        """Effective linear predictor ``u * v``, shape ``(d,)``."""
        return self.u * self.v

    def forward(self, x: Tensor) -> Tensor:
        return x @ (self.u * self.v)


def diagonal_net(d: int, *, init_scale: float = 0.1, seed: int | None = None) -> DiagonalNet:
    """Diagonal linear network ``y = x^T (u * v)`` (Woodworth et al., 2020).

    Both factors start as independent ``N(0, init_scale^2)`` entries. A small
    ``init_scale`` biases gradient descent towards sparse interpolators (the
    "rich" regime), a large one towards the minimum-L2-norm one (the kernel regime).

    Args:
        d: input dimension.
        init_scale: standard deviation of the initial entries of ``u`` and ``v``, > 0.
        seed: seed for the initial weights (None: global generator).

    Returns:
        :class:`DiagonalNet` with parameters ``u``, ``v`` of shape ``(d,)`` mapping
        ``(N, d)`` to ``(N,)``; ``rescale_pairs == (("u", "v"),)``.
    """
    d = check_int(d, "d")
    if isinstance(init_scale, bool) or not isinstance(init_scale, (int, float)):
        raise TypeError(f"init_scale must be a positive number, got "
                        f"{type(init_scale).__name__} {init_scale!r}")
    if not init_scale > 0 or init_scale == float("inf"):  # also rejects NaN
        raise ValueError(f"init_scale must be a positive finite number, got {init_scale}")
    return _build(seed, lambda: DiagonalNet(d, float(init_scale)))


def classifier(arch: str, input_shape: Sequence[int], num_classes: int, *,
               hidden: Sequence[int] = (64,), seed: int | None = None) -> nn.Module:
    """A classifier named by ``arch`` for inputs of one example's shape ``input_shape``.

    Lets a chapter's preset name its networks (``"mlp"`` on digits, ``"wrn-16-4"`` on
    CIFAR-10) and build them with one call, whatever the data's layout.

    Args:
        arch: ``"mlp"`` (a :func:`mlp` after flattening the input, ReLU), ``"lenet"``
            (:func:`lenet`, 2-D for ``(C, S, S)`` inputs, 1-D for ``(C, L)``),
            ``"resnet"`` (:func:`small_resnet` with width 16, 2 blocks and BatchNorm,
            without which plain SGD barely trains it on 8x8 digits; 2-D for
            ``(C, H, W)``, 1-D for ``(C, L)``), ``"vit"`` (:func:`vit` with its
            defaults, patch size 2 for sides (or lengths) up to 16 and 4 above, 2-D for
            ``(C, S, S)``, 1-D for ``(C, L)``), or ``"wrn-D-K"`` (:func:`wide_resnet`
            of depth D and widen factor K, for ``(C, H, W)``). Case is ignored.
        input_shape: shape of one example, e.g. ``(1, 8, 8)``, ``(1, 40)`` or ``(64,)``.
        num_classes: outputs K.
        hidden: hidden widths of the MLP (ignored by the CNNs).
        seed: seed for the initial weights.

    Returns:
        A module mapping ``(N, *input_shape)`` to ``(N, K)``.
    """
    if not isinstance(arch, str):
        raise TypeError(f"arch must be a string, got {type(arch).__name__}")
    shape = tuple(check_int(n, "input_shape entry") for n in input_shape)
    name = arch.lower()
    if name == "mlp":
        features = 1
        for n in shape:
            features *= n
        net = mlp(features, hidden, num_classes, seed=seed)
        return nn.Sequential(nn.Flatten(), *net) if len(shape) > 1 else net
    if name == "lenet":
        if len(shape) not in (2, 3) or (len(shape) == 3 and shape[1] != shape[2]):
            raise ValueError(f"lenet needs (C, L) signals or (C, S, S) square images, got {shape}")
        return lenet(shape[0], num_classes, image_size=shape[1], conv1d=len(shape) == 2, seed=seed)
    if name == "resnet":
        if len(shape) not in (2, 3):
            raise ValueError(f"resnet needs (C, L) signals or (C, H, W) images, got {shape}")
        return small_resnet(shape[0], num_classes, width=16, num_blocks=2, dims=len(shape) - 1, norm="batch",
                            seed=seed)
    if name == "vit":
        if len(shape) not in (2, 3) or (len(shape) == 3 and shape[1] != shape[2]):
            raise ValueError(f"vit needs (C, L) signals or (C, S, S) square images, got {shape}")
        # Patches of 2 keep 16 tokens on 8x8 digits; larger inputs use 4 so the
        # token count (and attention cost) stays small.
        patch_size = 2 if shape[1] <= 16 else 4
        return vit(shape[0], num_classes, image_size=shape[1], patch_size=patch_size,
                   conv1d=len(shape) == 2, seed=seed)
    parts = name.split("-")
    if len(parts) == 3 and parts[0] == "wrn" and parts[1].isdigit() and parts[2].isdigit():
        if len(shape) != 3:
            raise ValueError(f"{arch} needs (C, H, W) images, got input shape {shape}")
        return wide_resnet(int(parts[1]), int(parts[2]), in_channels=shape[0],
                           num_classes=num_classes, seed=seed)
    raise ValueError(f"unknown arch {arch!r}; choose 'mlp', 'lenet', 'resnet', 'vit' "
                     "or 'wrn-D-K' (e.g. 'wrn-16-4')")


def num_parameters(model: nn.Module, *, trainable_only: bool = True) -> int:
    """Count the scalar parameters of ``model``.

    Args:
        model: any ``nn.Module``.
        trainable_only: count only parameters with ``requires_grad``.

    Returns:
        Number of scalars, i.e. the dimension of the parameter space.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
