"""The K-FAC factor loop: which layers, what they record, and their Kronecker factors.

One owner for what :func:`lib.curvature.kronecker.kfac`, :func:`~lib.curvature.kronecker.ekfac`
and :class:`lib.geometry.kfac_optimizer.KFACOptimizer` share: the supported layers
(``nn.Linear``, ``nn.Conv2d``), forward hooks recording each layer's input and output
(:class:`LayerRecorder`), the input rows ``a`` and output-gradient rows ``g`` of a layer
(a convolution's unfolded patches, KFC "expand"), and the factors
``A = sum a a^T / (N T)`` and ``G = c sum g g^T`` (:func:`factor_moments`). The module
docstring of :mod:`lib.curvature.kronecker` states the approximation and its conventions.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .losses import Loss

__all__ = ["SUPPORTED_MODULES", "UNSUPPORTED_POLICIES", "KroneckerFactors", "LayerRecorder",
           "supported_layers", "patches", "conv_padding", "input_matrix", "output_grad_matrix",
           "output_grads", "layer_rows", "recorded_batches", "factor_moments",
           "accumulate_factors", "balance_pi", "tikhonov_factors"]

SUPPORTED_MODULES = (nn.Linear, nn.Conv2d)
UNSUPPORTED_POLICIES = ("error", "skip")


# --------------------------------------------------------------------------------------
# Layers: which modules, their inputs and output gradients as matrices
# --------------------------------------------------------------------------------------
def _check_conv(name: str, module: nn.Conv2d):
    if module.groups != 1:
        raise ValueError(f"K-FAC does not support grouped convolutions (module '{name}', "
                         f"groups={module.groups})")
    if module.padding_mode != "zeros":
        raise ValueError(f"K-FAC supports zero padding only (module '{name}', padding_mode="
                         f"'{module.padding_mode}')")
    if isinstance(module.padding, str) and module.padding != "valid":
        if any(k % 2 == 0 for k in module.kernel_size):
            raise ValueError(f"padding='same' with an even kernel is not supported ('{name}')")


def conv_padding(module: nn.Conv2d) -> tuple[int, int]:
    if module.padding == "valid":
        return (0, 0)
    if module.padding == "same":
        return tuple(d * (k - 1) // 2 for d, k in zip(module.dilation, module.kernel_size))
    return module.padding


def supported_layers(model: nn.Module, unsupported: str) -> list[tuple[str, nn.Module]]:
    """The Linear/Conv2d layers with trainable parameters; applies the unsupported policy."""
    if unsupported not in UNSUPPORTED_POLICIES:
        raise ValueError(f"unknown unsupported policy '{unsupported}'; choose one of "
                         f"{UNSUPPORTED_POLICIES}")
    layers, others = [], []
    for name, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        if isinstance(module, SUPPORTED_MODULES):
            if isinstance(module, nn.Conv2d):
                _check_conv(name, module)
            if not module.weight.requires_grad:
                raise ValueError(f"module '{name}' has a frozen weight but a trainable bias; "
                                 "K-FAC needs both trainable or both frozen")
            layers.append((name, module))
        else:
            others.append(f"'{name}' ({type(module).__name__})")
    if others and unsupported == "error":
        raise ValueError(f"K-FAC supports nn.Linear and nn.Conv2d only, but these modules have "
                         f"trainable parameters: {', '.join(others)}; freeze them "
                         "(requires_grad=False) or pass unsupported='skip' to leave them out")
    if others:
        warnings.warn(f"K-FAC leaves out the parameters of {', '.join(others)}", UserWarning,
                      stacklevel=3)
    if not layers:
        raise ValueError("the model has no trainable nn.Linear or nn.Conv2d layer")
    return layers


def patches(module: nn.Conv2d, x: Tensor, extra_columns: int = 0) -> Tensor:
    """The input patches a convolution sees, ``(B, Ho * Wo, C * kh * kw)``.

    The same numbers as ``F.unfold`` (transposed), built from strided views and a single
    copy: ``im2col`` on the CPU was measured several times slower than the convolution.
    ``extra_columns`` leaves that many trailing columns uninitialized (the bias's ones, when
    folded), so no second copy is needed to append them.
    """
    (ph, pw), (kh, kw) = conv_padding(module), module.kernel_size
    (sh, sw), (dh, dw) = module.stride, module.dilation
    x = nn.functional.pad(x, (pw, pw, ph, ph))
    windows = x.unfold(2, (kh - 1) * dh + 1, sh).unfold(3, (kw - 1) * dw + 1, sw)
    windows = windows[..., ::dh, ::dw].permute(0, 2, 3, 1, 4, 5)  # (B, Ho, Wo, C, kh, kw)
    B, Ho, Wo, C = windows.shape[:4]
    out = x.new_empty(B, Ho * Wo, C * kh * kw + extra_columns)
    out[..., :C * kh * kw].view(B, Ho, Wo, C, kh, kw).copy_(windows)
    return out


def input_matrix(module: nn.Module, x: Tensor, fold_bias: bool) -> tuple[Tensor, int]:
    """Rows ``a`` of the layer's input, ``(N * T, in')``, and ``T`` (shared positions)."""
    fold = int(fold_bias and module.bias is not None)
    if isinstance(module, nn.Conv2d):
        unfolded = patches(module, x, extra_columns=fold)
        T = unfolded.shape[1]
        rows = unfolded.reshape(-1, unfolded.shape[2])
        if fold:
            rows[:, -1] = 1.0
        return rows, T
    T = x[0].numel() // x.shape[-1]
    rows = x.reshape(-1, x.shape[-1])
    if fold:
        rows = torch.cat([rows, rows.new_ones(rows.shape[0], 1)], dim=1)
    return rows, T


def output_grad_matrix(module: nn.Module, g: Tensor) -> Tensor:
    """Gradients w.r.t. the layer's output, ``(K, B, ...)``, as rows ``(K, B * T, out)``."""
    if isinstance(module, nn.Conv2d):  # (K, B, out, H, W) -> (K, B * H * W, out)
        return g.flatten(3).transpose(2, 3).reshape(g.shape[0], -1, g.shape[2])
    return g.reshape(g.shape[0], -1, g.shape[-1])


# --------------------------------------------------------------------------------------
# Factors and the loop that collects them
# --------------------------------------------------------------------------------------
@dataclass
class KroneckerFactors:
    """The two factors of one layer: its block is ``G kron A`` (plus ``G`` for a separate bias).

    Attributes:
        name: the module's name in the model.
        A: input second moment, ``(in', in')`` (``in' = in * kh * kw``, ``+ 1`` if the bias
            is folded in).
        G: output-gradient second moment, ``(out, out)``.
        weight_shape: shape of the layer's weight.
        has_bias: whether the layer has a (trainable) bias.
        fold_bias: whether the bias is folded into ``A``.
    """
    name: str
    A: Tensor
    G: Tensor
    weight_shape: torch.Size
    has_bias: bool
    fold_bias: bool

    @property
    def num_params(self) -> int:
        return math.prod(self.weight_shape) + (self.weight_shape[0] if self.has_bias else 0)


def balance_pi(A: Tensor, G: Tensor) -> float:
    """``pi = sqrt((tr A / dim A) / (tr G / dim G))``, which balances the factors' average
    eigenvalues when damping is split between them (Martens & Grosse 2015, section 6.3)."""
    ratio = (torch.trace(A) / A.shape[0]) / (torch.trace(G) / G.shape[0])
    return float(ratio.clamp_min(1e-30).sqrt())


def tikhonov_factors(A: Tensor, G: Tensor, factor_damping: float, pi: bool
                     ) -> tuple[Tensor, Tensor]:
    """``(A + pi sqrt(lambda) I, G + sqrt(lambda) / pi I)``, ``lambda = factor_damping``:
    K-FAC's Tikhonov damping of the factors (``pi`` from :func:`balance_pi` if ``pi``,
    else 1). Shapes as given, ``(in', in')`` and ``(out, out)``."""
    root = math.sqrt(factor_damping)
    p = balance_pi(A, G) if pi else 1.0
    eye_A = torch.eye(A.shape[0], dtype=A.dtype, device=A.device)
    eye_G = torch.eye(G.shape[0], dtype=G.dtype, device=G.device)
    return A + p * root * eye_A, G + root / p * eye_G


class LayerRecorder:
    """Forward hooks that keep each layer's input and output and count its calls.

    K-FAC needs exactly one input and one output per layer and forward pass: a layer
    applied twice in one pass (its weight shared across the calls) would silently keep
    only the last call's statistics, and a layer never called would have none. So the
    hooks count calls since :meth:`clear` (called before every forward pass), and
    :meth:`recorded` raises a ``ValueError`` naming any layer not called exactly once.
    """

    def __init__(self, layers):
        self.layers = list(layers)
        self.clear()
        self.handles = [module.register_forward_hook(self._hook(name))
                        for name, module in self.layers]

    def _hook(self, name):
        def hook(module, args, output):
            self.inputs[name] = args[0].detach()
            self.outputs[name] = output
            self.calls[name] = self.calls.get(name, 0) + 1
        return hook

    def clear(self):
        """Forget the recorded pass: call before each forward pass."""
        self.inputs, self.outputs, self.calls = {}, {}, {}

    def recorded(self) -> tuple[list[Tensor], list[Tensor]]:
        """Inputs and outputs of every layer (in layer order) in the pass since :meth:`clear`."""
        for name, module in self.layers:
            calls = self.calls.get(name, 0)
            if calls == 0:
                raise ValueError(f"module '{name}' ({type(module).__name__}) was not called in "
                                 "the forward pass, so K-FAC has no statistics for its "
                                 "parameters; freeze them (requires_grad=False) or remove it")
            if calls > 1:
                raise ValueError(f"module '{name}' ({type(module).__name__}) was called {calls} "
                                 "times in one forward pass; K-FAC's factors need one input and "
                                 "one output per layer and pass (a weight shared across calls "
                                 "is not supported): use a separate module for each call")
        return ([self.inputs[name] for name, _ in self.layers],
                [self.outputs[name] for name, _ in self.layers])

    def remove(self):
        for handle in self.handles:
            handle.remove()


def output_grads(f: Tensor, outputs: list[Tensor], S: Tensor, retain_graph: bool = False):
    """``J_s^T S_k`` for every layer output ``s`` and column ``k``; each ``(K, *s.shape)``."""
    if S.shape[0] == 1:
        grads = torch.autograd.grad(f, outputs, S[0], retain_graph=retain_graph)
        return [g[None] for g in grads]
    return torch.autograd.grad(f, outputs, S, retain_graph=retain_graph, is_grads_batched=True)




def layer_rows(loss: Loss, f: Tensor, y: Tensor | None, recorder: LayerRecorder, kind,
               num_samples: int, generator: torch.Generator | None, fold_bias: bool,
               retain_graph: bool = False, minimal: bool = False):
    """Per recorded layer, the rows its factors are built from, after a forward pass ``f``.

    Draws the loss's curvature columns ``S`` (:meth:`~lib.curvature.losses.Loss.curvature_columns`, ``(K, *f.shape)``),
    backpropagates them to every layer output in one (batched) backward pass, and yields,
    in layer order, ``(module, a, T, g)``: input rows ``a`` of shape ``(B * T, in')``, the
    number ``T`` of positions per example, and output-gradient rows ``g`` of shape
    ``(K, B * T, out)``. ``minimal``: as for :meth:`~lib.curvature.losses.Loss.curvature_columns`.
    """
    inputs, outputs = recorder.recorded()
    S = loss.curvature_columns(f.detach(), y, kind, num_samples, generator, minimal=minimal)
    grads = output_grads(f, outputs, S, retain_graph=retain_graph)
    for (_, module), x, g in zip(recorder.layers, inputs, grads):
        a, T = input_matrix(module, x, fold_bias)
        yield module, a, T, output_grad_matrix(module, g)


def recorded_batches(model: nn.Module, layers, loss: Loss, batches, kind, num_samples: int,
                     seed: int, fold_bias: bool):
    """One pass over ``batches``: per batch ``(X, rows)`` with ``rows`` as from
    :func:`layer_rows`; the sampled labels (``"mc"``) come from one stream seeded by
    ``seed``, so two passes with the same seed see the same labels."""
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    recorder = LayerRecorder(layers)
    try:
        for X, y in batches:
            recorder.clear()
            with torch.enable_grad():
                f = model(X)
            loss.check_output(f, y)
            yield X, layer_rows(loss, f, y, recorder, kind, num_samples, generator, fold_bias)
    finally:
        recorder.remove()


def factor_moments(a: Tensor, T: int, g: Tensor, num_data: int, scale: float
                   ) -> tuple[Tensor, Tensor]:
    """A layer's share of ``A = sum a a^T / (N T)`` and ``G = c sum g g^T``.

    Args:
        a: input rows ``(B * T, in')``; g: output-gradient rows ``(K, B * T, out)``.
        T: positions per example; num_data: ``N``; scale: the loss's constant ``c``.
    """
    rows = g.flatten(0, 1)
    return (a.T @ a) / (num_data * T), scale * (rows.T @ rows)


def accumulate_factors(model, layers, loss: Loss, batches, kind, num_samples: int, seed: int,
                       fold_bias: bool, num_data: int, num_outputs: int):
    """One pass over the data: dicts ``A`` and ``G`` of every layer, in the model's dtype."""
    scale = loss.scale(num_data, num_outputs)
    A = {name: None for name, _ in layers}
    G = {name: None for name, _ in layers}
    for _, rows in recorded_batches(model, layers, loss, batches, kind, num_samples, seed,
                                    fold_bias):
        for (name, _), (module, a, T, g) in zip(layers, rows):
            a_cov, g_cov = factor_moments(a, T, g, num_data, scale)
            A[name] = a_cov if A[name] is None else A[name] + a_cov
            G[name] = g_cov if G[name] is None else G[name] + g_cov
    return A, G
