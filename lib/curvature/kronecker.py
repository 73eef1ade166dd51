"""Kronecker-factored approximate curvature (K-FAC), its eigenvalue correction, and an optimizer.

For a layer with weight ``W`` of shape ``(out, in)`` (a ``Conv2d`` kernel is read as
``(out, in * kh * kw)``), the per-example gradient is an outer product ``g a^T`` of the
gradient ``g`` with respect to the layer's output and the layer's input ``a``. The
curvature block of ``W`` is a sum of Kronecker products,

    F_W = c * sum_{n, k} (g_nk g_nk^T) kron (a_n a_n^T),

over examples ``n`` and the columns ``k`` of a square root of the loss's output curvature
(see ``fisher_type``). K-FAC (Martens & Grosse 2015) replaces the sum of products by a
product of sums, ``F_W ~ G kron A``, with

    A = (1 / N) sum_n a_n a_n^T,        G = c * sum_{n, k} g_nk g_nk^T,

and ignores the blocks between layers. The factor ``kron(G, A)`` acts on ``W.flatten()``
(row-major), i.e. ``(G kron A) vec(V) = vec(G V A)``. It is exact for a single example
and a single column (e.g. one data point under MSE with one output).

Conventions, chosen to agree with curvlinops' ``KFACLinearOperator`` (``tests/``):

* ``c`` is the loss's reduction constant as in :mod:`lib.curvature` (``1``, ``1/N`` or
  ``1/(N C)``), so the approximated matrix has the scale of ``lib.curvature.fisher``.
* Convolutions use the KFC "expand" approximation (Grosse & Martens 2016): every output
  location is one more example for ``G``; ``A`` averages the unfolded input patches over
  examples *and* locations (``1 / (N T)``).
* The bias is kept separate by default: its block is ``G`` (its input is the constant 1).
  ``fold_bias=True`` appends a 1 to every input instead, so weight and bias share one
  ``G kron A`` block including their cross terms.
* Parameters of other modules (e.g. BatchNorm) are not approximated. By default they
  raise a ``ValueError`` naming the module; ``unsupported="skip"`` leaves them out of the
  operator with a warning, so the operator then acts on the covered parameters only
  (listed in :attr:`KFACOperator.names`).

:func:`kfac` builds a :class:`KFACOperator`, :func:`ekfac` the eigenvalue-corrected
:class:`EKFACOperator` (George et al. 2018), and :class:`KFACOptimizer` is a natural-gradient
optimizer with running averages of the factors.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .._checks import check_int
from ..book.batches import batch_source
from .inspection import check_no_stochastic_layers, inspect_data
from .losses import Loss
from ..operators.base import LinearOperator

__all__ = ["FISHER_TYPES", "SUPPORTED_MODULES", "KroneckerFactors", "KFACOperator",
           "KFACInverseOperator", "EKFACOperator", "kfac", "ekfac", "KFACOptimizer"]

FISHER_TYPES = ("exact", "mc", "empirical", "ggn")
SUPPORTED_MODULES = (nn.Linear, nn.Conv2d)
_UNSUPPORTED_POLICIES = ("error", "skip")


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


def _conv_padding(module: nn.Conv2d) -> tuple[int, int]:
    if module.padding == "valid":
        return (0, 0)
    if module.padding == "same":
        return tuple(d * (k - 1) // 2 for d, k in zip(module.dilation, module.kernel_size))
    return module.padding


def _supported_layers(model: nn.Module, unsupported: str) -> list[tuple[str, nn.Module]]:
    """The Linear/Conv2d layers with trainable parameters; applies the unsupported policy."""
    if unsupported not in _UNSUPPORTED_POLICIES:
        raise ValueError(f"unknown unsupported policy '{unsupported}'; choose one of "
                         f"{_UNSUPPORTED_POLICIES}")
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


def _patches(module: nn.Conv2d, x: Tensor) -> Tensor:
    """The input patches a convolution sees, ``(B, Ho * Wo, C * kh * kw)``.

    The same numbers as ``F.unfold`` (transposed), built from strided views and a single
    copy: ``im2col`` on the CPU was measured several times slower than the convolution.
    """
    (ph, pw), (kh, kw) = _conv_padding(module), module.kernel_size
    (sh, sw), (dh, dw) = module.stride, module.dilation
    x = nn.functional.pad(x, (pw, pw, ph, ph))
    windows = x.unfold(2, (kh - 1) * dh + 1, sh).unfold(3, (kw - 1) * dw + 1, sw)
    windows = windows[..., ::dh, ::dw]  # (B, C, Ho, Wo, kh, kw)
    B, C, Ho, Wo = windows.shape[:4]
    return windows.permute(0, 2, 3, 1, 4, 5).reshape(B, Ho * Wo, C * kh * kw)


def _input_matrix(module: nn.Module, x: Tensor, fold_bias: bool) -> tuple[Tensor, int]:
    """Rows ``a`` of the layer's input, ``(N * T, in')``, and ``T`` (shared positions)."""
    if isinstance(module, nn.Conv2d):
        patches = _patches(module, x)
        T = patches.shape[1]
        rows = patches.reshape(-1, patches.shape[2])
    else:
        T = x[0].numel() // x.shape[-1]
        rows = x.reshape(-1, x.shape[-1])
    if fold_bias and module.bias is not None:
        rows = torch.cat([rows, rows.new_ones(rows.shape[0], 1)], dim=1)
    return rows, T


def _output_grad_matrix(module: nn.Module, g: Tensor) -> Tensor:
    """Gradients w.r.t. the layer's output, ``(K, B, ...)``, as rows ``(K, B * T, out)``."""
    if isinstance(module, nn.Conv2d):  # (K, B, out, H, W) -> (K, B * H * W, out)
        return g.flatten(3).transpose(2, 3).reshape(g.shape[0], -1, g.shape[2])
    return g.reshape(g.shape[0], -1, g.shape[-1])


# --------------------------------------------------------------------------------------
# Collecting the factors
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


class _LayerRecorder:
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


def _output_grads(f: Tensor, outputs: list[Tensor], S: Tensor, retain_graph: bool = False):
    """``J_s^T S_k`` for every layer output ``s`` and column ``k``; each ``(K, *s.shape)``."""
    if S.shape[0] == 1:
        grads = torch.autograd.grad(f, outputs, S[0], retain_graph=retain_graph)
        return [g[None] for g in grads]
    return torch.autograd.grad(f, outputs, S, retain_graph=retain_graph, is_grads_batched=True)


def _accumulate_factors(model, layers, loss, batches, fisher_type, mc_samples, seed,
                        fold_bias, num_data, num_outputs):
    """One pass over the data: ``A`` and ``G`` of every layer, in the model's dtype."""
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    scale = loss.scale(num_data, num_outputs)
    A = {name: None for name, _ in layers}
    G = {name: None for name, _ in layers}
    recorder = _LayerRecorder(layers)
    try:
        for X, y in batches:
            recorder.clear()
            with torch.enable_grad():
                f = model(X)
            loss.check_output(f, y)
            inputs, outputs = recorder.recorded()
            S = loss.curvature_columns(f.detach(), y, fisher_type, mc_samples, generator)
            grads = _output_grads(f, outputs, S)
            for (name, module), x, g in zip(layers, inputs, grads):
                a, T = _input_matrix(module, x, fold_bias)
                rows = _output_grad_matrix(module, g).flatten(0, 1)
                a_cov = (a.T @ a) / (num_data * T)
                g_cov = scale * (rows.T @ rows)
                A[name] = a_cov if A[name] is None else A[name] + a_cov
                G[name] = g_cov if G[name] is None else G[name] + g_cov
    finally:
        recorder.remove()
    return A, G


def _prepare(model, loss_fn, data, fisher_type, mc_samples, unsupported):
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if fisher_type not in FISHER_TYPES:
        raise ValueError(f"unknown fisher_type '{fisher_type}'; choose one of {FISHER_TYPES}")
    check_int(mc_samples, "mc_samples")
    if mc_samples != 1 and fisher_type != "mc":
        raise ValueError(f"mc_samples={mc_samples} only applies to fisher_type='mc'")
    loss = Loss(loss_fn)
    check_no_stochastic_layers(model)
    layers = _supported_layers(model, unsupported)
    batches = batch_source(data)
    weight = layers[0][1].weight
    num_data, num_outputs = inspect_data(model, batches, weight.device, weight.dtype)
    device = weight.device
    moved = [(X.to(device), y.to(device)) for X, y in batches if len(X) > 0]
    return loss, layers, moved, num_data, num_outputs


def kfac(model: nn.Module, loss_fn: nn.Module, data, fisher_type: str = "exact",
         mc_samples: int = 1, *, fold_bias: bool = False, unsupported: str = "error",
         seed: int = 0) -> KFACOperator:
    """The K-FAC approximation of the Fisher (or GGN) of ``model`` on ``data``.

    Args:
        model: a module mapping ``X`` to outputs ``(B, C)``, built from ``nn.Linear`` and
            ``nn.Conv2d`` layers (plus parameter-free modules), each called once per
            forward pass; in eval mode if it has dropout or BatchNorm.
        loss_fn: ``nn.CrossEntropyLoss`` or ``nn.MSELoss``, reduction ``"mean"`` or ``"sum"``.
        data: an ``(X, y)`` pair or a re-iterable of batches; ``"mean"`` spans all of them.
        fisher_type: ``"exact"`` (expectation over the model's labels, C backward passes),
            ``"mc"`` (``mc_samples`` sampled labels), ``"empirical"`` (true labels) or
            ``"ggn"`` (square root of the loss Hessian, C backward passes).
        mc_samples: labels drawn per example for ``"mc"``.
        fold_bias: fold each bias into its layer's ``A`` (see the module docstring).
        unsupported: ``"error"`` or ``"skip"`` for trainable parameters of other modules.
        seed: seed of the sampled labels (``"mc"``).

    Returns:
        :class:`KFACOperator` of shape ``(d, d)``, ``d`` the number of covered parameters,
        in ``model.parameters()`` order.

    Raises:
        TypeError, ValueError: bad data, as for :class:`lib.curvature.products.CurvatureOperator`
            (the same checks); a covered layer called more than once, or never, in a
            forward pass.

    Outputs may have extra dimensions, ``(B, d_1, ..., d_m)``, under MSE (read as
    ``C = d_1 ... d_m`` outputs, as in :mod:`lib.curvature`); cross-entropy needs ``(B, C)``.
    """
    loss, layers, batches, num_data, num_outputs = _prepare(model, loss_fn, data, fisher_type,
                                                            mc_samples, unsupported)
    A, G = _accumulate_factors(model, layers, loss, batches, fisher_type, mc_samples, seed,
                               fold_bias, num_data, num_outputs)
    factors = [KroneckerFactors(name, A[name], G[name], module.weight.shape,
                                module.bias is not None and module.bias.requires_grad, fold_bias)
               for name, module in layers]
    params = [p for _, module in layers for p in module.parameters(recurse=False) if p.requires_grad]
    names = [f"{name}.{pname}" if name else pname for name, module in layers
             for pname, p in module.named_parameters(recurse=False) if p.requires_grad]
    return KFACOperator(factors, names, dtype=params[0].dtype, device=params[0].device)


# --------------------------------------------------------------------------------------
# The operator
# --------------------------------------------------------------------------------------
def _eigh(M: Tensor) -> tuple[Tensor, Tensor]:
    evals, evecs = torch.linalg.eigh(0.5 * (M + M.T))
    return evals.clamp_min(0.0), evecs  # PSD by construction; clip round-off below zero


class _BlockOperator(LinearOperator):
    """A block-diagonal operator over layers; subclasses transform each layer's block."""

    def __init__(self, factors: list[KroneckerFactors], names: list[str], dtype, device):
        shapes = []
        for f in factors:
            shapes.append(f.weight_shape)
            if f.has_bias:
                shapes.append(torch.Size([f.weight_shape[0]]))
        super().__init__(sum(f.num_params for f in factors), dtype, device, True, shapes)
        self.factors, self.names = factors, names

    def _layer_apply(self, index: int, M: Tensor, Mb: Tensor | None):
        """Apply the block of layer ``index`` to weight rows ``M`` (k, out, in') and bias
        columns ``Mb`` (k, out) (None if folded or absent)."""
        raise NotImplementedError

    def _eigenvalues(self) -> Tensor:
        """All ``d`` eigenvalues, flat (known in closed form from the blocks)."""
        raise NotImplementedError

    def logdet(self, damping: float = 0.0) -> float:
        """``log det(self + damping I)`` from the eigenvalues; ``ValueError`` if singular."""
        values = self._eigenvalues() + _check_damping(damping)
        if bool((values <= 0).any()):
            raise ValueError(f"the {type(self).__name__} matrix is singular (an eigenvalue is "
                             "<= 0); pass damping > 0")
        return float(values.log().sum())

    def eigvalsh(self, k: int = 1) -> Tensor:
        """The ``k`` largest eigenvalues, descending, shape ``(k,)``."""
        check_int(k, "k")
        if k > self.shape[0]:
            raise ValueError(f"k={k} exceeds the operator's dimension {self.shape[0]}")
        return self._eigenvalues().sort(descending=True).values[:k].to(self.dtype)

    def _matmat(self, V):
        k, out, start = V.shape[1], [], 0
        for index, f in enumerate(self.factors):
            n_out = f.weight_shape[0]
            n_w = math.prod(f.weight_shape)
            M = V[start:start + n_w].T.reshape(k, n_out, -1)
            start += n_w
            Mb = None
            if f.has_bias:
                Mb = V[start:start + n_out].T
                start += n_out
                if f.fold_bias:
                    M, Mb = torch.cat([M, Mb[:, :, None]], dim=2), None
            R, Rb = self._layer_apply(index, M, Mb)
            if f.has_bias and f.fold_bias:
                R, Rb = R[:, :, :-1], R[:, :, -1]
            out.append(R.reshape(k, -1).T)
            if f.has_bias:
                out.append(Rb.T)
        return torch.cat(out, dim=0)


class KFACOperator(_BlockOperator):
    """Block-diagonal ``G_l kron A_l`` over layers, with the curvature core's interface.

    Beyond ``@``, ``shape``, ``to_dense()`` and the operator algebra of
    :class:`~lib.operators.base.LinearOperator`, everything spectral comes from the
    factors' eigendecompositions ``A = Q_A L_A Q_A^T``, ``G = Q_G L_G Q_G^T``: the block's
    eigenvalues are the products ``l_G,i l_A,j``.

    Attributes:
        factors: one :class:`KroneckerFactors` per layer.
        names: names of the covered parameters, in the order of the flat vector.
    """

    def __init__(self, factors, names, dtype, device, damping: float = 0.0):
        super().__init__(factors, names, dtype, device)
        self.damping = _check_damping(damping)
        self._eig = None

    def _layer_apply(self, index, M, Mb):
        f = self.factors[index]
        G, A = f.G.to(M.dtype), f.A.to(M.dtype)
        R, Rb = G @ M @ A, (None if Mb is None else Mb @ G)
        if self.damping:
            R, Rb = R + self.damping * M, (None if Mb is None else Rb + self.damping * Mb)
        return R, Rb

    def add_damping(self, damping: float) -> KFACOperator:
        """``K + damping I`` as a K-FAC operator (same factors, eigenvalues shifted), so its
        inverse, inverse square root and log-determinant stay exact and cheap; e.g. a
        positive-definite metric for :func:`lib.geometry.invariance.hessian_operator`."""
        op = KFACOperator(self.factors, self.names, self.dtype, self.device,
                          self.damping + _check_damping(damping))
        op._eig = self._eig
        return op

    def eigendecompositions(self) -> list[tuple[Tensor, Tensor, Tensor, Tensor]]:
        """Per layer ``(l_A, Q_A, l_G, Q_G)``, computed once."""
        if self._eig is None:
            self._eig = [(*_eigh(f.A), *_eigh(f.G)) for f in self.factors]
        return self._eig

    def _block_eigenvalues(self) -> list[Tensor]:
        """Per layer, all eigenvalues of its block(s) (damping included), flat."""
        values = []
        for f, (lA, _, lG, _) in zip(self.factors, self.eigendecompositions()):
            values.append(torch.outer(lG, lA).reshape(-1) + self.damping)
            if f.has_bias and not f.fold_bias:
                values.append(lG + self.damping)
        return values

    def trace(self) -> float:
        """``sum_l tr(G_l) tr(A_l)`` (+ ``tr(G_l)`` for a separate bias, + ``damping * d``)."""
        total = self.damping * self.shape[0]
        for f in self.factors:
            total += float(torch.trace(f.G) * torch.trace(f.A))
            if f.has_bias and not f.fold_bias:
                total += float(torch.trace(f.G))
        return total

    def _eigenvalues(self) -> Tensor:
        return torch.cat(self._block_eigenvalues())

    def damped_factors(self, damping: float, *, pi: bool = False) -> KFACOperator:
        """``(G + sqrt(damping) / pi I) kron (A + pi sqrt(damping) I)``: Tikhonov damping on
        the factors, K-FAC's classical heuristic. With ``pi=True``, ``pi`` balances the
        factors' average eigenvalues, ``pi = sqrt((tr A / dim A) / (tr G / dim G))``
        (Martens & Grosse 2015, section 6.3); otherwise ``pi = 1``."""
        if self.damping:
            raise ValueError("damped_factors() needs an operator without added damping")
        root = math.sqrt(_check_damping(damping))
        damped = []
        for f in self.factors:
            p = _pi(f) if pi else 1.0
            eye_A = torch.eye(f.A.shape[0], dtype=f.A.dtype, device=f.A.device)
            eye_G = torch.eye(f.G.shape[0], dtype=f.G.dtype, device=f.G.device)
            damped.append(KroneckerFactors(f.name, f.A + p * root * eye_A, f.G + root / p * eye_G,
                                           f.weight_shape, f.has_bias, f.fold_bias))
        return KFACOperator(damped, self.names, self.dtype, self.device)

    def inverse(self, damping: float = 0.0, *, method: str = "exact", pi: bool = False
                ) -> KFACInverseOperator:
        """An inverse, applied block by block without forming any ``d x d`` matrix.

        ``method="exact"``: ``(K + damping I)^-1`` through the eigendecompositions.
        ``method="factors"``: the inverse of :meth:`damped_factors` ``(damping, pi=pi)``,
        i.e. ``(G + ...)^-1 kron (A + ...)^-1``, the update K-FAC's optimizer uses.
        """
        if method == "exact":
            return KFACInverseOperator(self, _check_damping(damping))
        if method == "factors":
            return KFACInverseOperator(self.damped_factors(damping, pi=pi), 0.0)
        raise ValueError(f"unknown inverse method '{method}'; choose 'exact' or 'factors'")

    def inverse_sqrt(self, damping: float = 0.0) -> KFACInverseOperator:
        """The symmetric ``(K + damping I)^-1/2``: with it, ``lib.geometry.invariance`` whitens
        ``G^-1 H`` for a K-FAC metric exactly, so Lanczos runs without CG solves."""
        return KFACInverseOperator(self, _check_damping(damping), power=-0.5)


def _pi(f: KroneckerFactors) -> float:
    ratio = (torch.trace(f.A) / f.A.shape[0]) / (torch.trace(f.G) / f.G.shape[0])
    return float(ratio.clamp_min(1e-30).sqrt())


def _check_damping(damping) -> float:
    if isinstance(damping, bool) or not isinstance(damping, (int, float)):
        raise TypeError(f"damping must be a number, got {type(damping).__name__}")
    if not (math.isfinite(damping) and damping >= 0):
        raise ValueError(f"damping must be finite and >= 0, got {damping}")
    return float(damping)


class KFACInverseOperator(_BlockOperator):
    """``(K + damping I)^power`` (``power`` -1 or -1/2) for a :class:`KFACOperator` ``K``,
    block by block in its Kronecker eigenbasis: ``Q (L_G kron L_A + damping)^power Q^T``
    with ``Q = Q_G kron Q_A``."""

    def __init__(self, op: KFACOperator, damping: float, power: float = -1.0):
        super().__init__(op.factors, op.names, op.dtype, op.device)
        self.op, self.damping, self.power = op, damping, power
        self._factor_inverses = None
        values = op._eigenvalues() + damping
        if bool((values <= 0).any()):
            raise ValueError("the K-FAC matrix is singular; pass damping > 0")

    def _eigenvalues(self) -> Tensor:
        return (self.op._eigenvalues() + self.damping) ** self.power

    def _layer_apply(self, index, M, Mb):
        lA, QA, lG, QG = (t.to(M.dtype) for t in self.op.eigendecompositions()[index])
        shift = self.damping + self.op.damping
        if shift == 0 and self.power == -1:
            # Undamped (e.g. factor-damped K-FAC): the inverse is the Kronecker product of
            # the factors' inverses, two products per vector instead of four.
            if self._factor_inverses is None:
                self._factor_inverses = [((Qg / lg) @ Qg.T, (Qa / la) @ Qa.T)
                                         for la, Qa, lg, Qg in self.op.eigendecompositions()]
            G_inv, A_inv = (t.to(M.dtype) for t in self._factor_inverses[index])
            return G_inv @ M @ A_inv, (None if Mb is None else Mb @ G_inv)
        inner = QG.T @ M @ QA * (torch.outer(lG, lA) + shift) ** self.power
        Rb = None if Mb is None else ((Mb @ QG) * (lG + shift) ** self.power) @ QG.T
        return QG @ inner @ QA.T, Rb


# --------------------------------------------------------------------------------------
# Eigenvalue-corrected K-FAC
# --------------------------------------------------------------------------------------
class EKFACOperator(_BlockOperator):
    """Eigenvalue-corrected K-FAC (George et al. 2018): K-FAC's Kronecker eigenbasis
    ``Q_G kron Q_A`` with the exact second moments of the gradients in that basis as
    eigenvalues, ``S_ij = c sum_{n,k} ((Q_G^T grad_nk Q_A)_ij)^2``.

    Same interface as :class:`KFACOperator` (``trace``, ``logdet``, ``eigvalsh``,
    ``inverse(damping)``). Attributes: ``kfac`` (the underlying K-FAC operator),
    ``scalings`` (per layer, ``(out, in')`` and, for a separate bias, ``(out,)`` or None),
    and ``power`` / ``damping``: the operator applies ``(S + damping)^power`` in the basis.
    """

    def __init__(self, op: KFACOperator, scalings: list[tuple[Tensor, Tensor | None]],
                 *, damping: float = 0.0, power: int = 1):
        super().__init__(op.factors, op.names, op.dtype, op.device)
        self.kfac, self.scalings, self.damping, self.power = op, scalings, damping, power

    def _layer_apply(self, index, M, Mb):
        _, QA, _, QG = (t.to(M.dtype) for t in self.kfac.eigendecompositions()[index])
        S, Sb = ((None if t is None else ((t + self.damping) ** self.power).to(M.dtype))
                 for t in self.scalings[index])
        Rb = None if Mb is None else ((Mb @ QG) * Sb) @ QG.T
        return QG @ ((QG.T @ M @ QA) * S) @ QA.T, Rb

    def _eigenvalues(self) -> Tensor:
        values = torch.cat([t.reshape(-1) for pair in self.scalings for t in pair if t is not None])
        return (values + self.damping) ** self.power

    def trace(self) -> float:
        """Sum of the (corrected) eigenvalues."""
        return float(self._eigenvalues().sum())

    def _power(self, damping: float, power: float) -> EKFACOperator:
        if self.power != 1 or self.damping != 0:
            raise ValueError("inverses apply to the EKFAC operator itself, not to an inverse")
        damping = _check_damping(damping)
        if bool((self._eigenvalues() + damping <= 0).any()):
            raise ValueError("the EKFAC matrix is singular; pass damping > 0")
        return EKFACOperator(self.kfac, self.scalings, damping=damping, power=power)

    def inverse(self, damping: float = 0.0) -> EKFACOperator:
        """``(E + damping I)^-1`` in the same eigenbasis."""
        return self._power(damping, -1)

    def inverse_sqrt(self, damping: float = 0.0) -> EKFACOperator:
        """The symmetric ``(E + damping I)^-1/2`` (see :meth:`KFACOperator.inverse_sqrt`)."""
        return self._power(damping, -0.5)


def ekfac(model: nn.Module, loss_fn: nn.Module, data, fisher_type: str = "exact",
          mc_samples: int = 1, *, fold_bias: bool = False, unsupported: str = "error",
          seed: int = 0) -> EKFACOperator:
    """Eigenvalue-corrected K-FAC; arguments as in :func:`kfac`.

    Two passes over the data: the first builds K-FAC's factors and their eigenbases, the
    second the second moments of the per-example gradients in that basis (with the same
    sampled labels for ``"mc"``).
    """
    op = kfac(model, loss_fn, data, fisher_type, mc_samples, fold_bias=fold_bias,
              unsupported=unsupported, seed=seed)
    loss, layers, batches, num_data, num_outputs = _prepare(model, loss_fn, data, fisher_type,
                                                            mc_samples, unsupported)
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    scale = loss.scale(num_data, num_outputs)
    bases = op.eigendecompositions()
    sums = [[None, None] for _ in layers]
    recorder = _LayerRecorder(layers)
    try:
        for X, y in batches:
            recorder.clear()
            with torch.enable_grad():
                f = model(X)
            inputs, outputs = recorder.recorded()
            S = loss.curvature_columns(f.detach(), y, fisher_type, mc_samples, generator)
            grads = _output_grads(f, outputs, S)
            for i, ((name, module), x, g) in enumerate(zip(layers, inputs, grads)):
                _, QA, _, QG = bases[i]
                a, T = _input_matrix(module, x, fold_bias)
                K, B = g.shape[0], X.shape[0]
                a = (a @ QA.to(a.dtype)).reshape(B, T, -1)                     # (B, T, in')
                rows = _output_grad_matrix(module, g).reshape(K, B, T, -1) @ QG.to(a.dtype)
                # per-example gradient in the eigenbasis: sum_t g_t a_t^T, (K, B, out, in')
                proj = torch.einsum("kbto,bti->kboi", rows, a)
                moment = scale * (proj ** 2).sum(dim=(0, 1))
                bias = None
                if module.bias is not None and module.bias.requires_grad and not fold_bias:
                    bias = scale * (rows.sum(dim=2) ** 2).sum(dim=(0, 1))
                old = sums[i]
                sums[i] = [moment if old[0] is None else old[0] + moment,
                           bias if old[1] is None else old[1] + bias]
    finally:
        recorder.remove()
    return EKFACOperator(op, [tuple(pair) for pair in sums])


# --------------------------------------------------------------------------------------
# The optimizer
# --------------------------------------------------------------------------------------
class KFACOptimizer(torch.optim.Optimizer):
    """Natural-gradient descent with K-FAC (Martens & Grosse 2015), as a torch optimizer.

    Every ``curvature_interval`` steps the factors ``A_l`` and ``G_l`` of the current
    mini-batch enter exponential moving averages (decay ``ema_decay``); ``G_l`` uses
    ``mc_samples`` labels drawn from the model (``fisher_type="mc"``) or the true labels
    (``"empirical"``), obtained from an extra backward pass to the layer outputs only,
    right after the forward pass, so no second forward pass is needed. Every
    ``inverse_interval`` steps the damped factors are inverted (Cholesky). A step
    preconditions each layer's gradient, ``Delta_l = (G_l + sqrt(lambda)/pi I)^-1 grad_l
    (A_l + pi sqrt(lambda) I)^-1``, rescales all of them by
    ``nu = min(1, sqrt(kl_clip / (lr^2 sum_l <Delta_l, grad_l>)))`` (KL clipping, Ba et al.
    2017), and applies SGD with momentum to the result. Parameters of other modules
    (e.g. BatchNorm) get the plain gradient, with a warning naming them.

    Usage is that of any optimizer: ``loss.backward(); optimizer.step()`` or
    ``optimizer.step(closure)`` (e.g. :func:`lib.book.train.train`). The model must be in
    training mode with gradients enabled for its forward passes to be recorded.

    Args:
        model: the network (its ``Linear``/``Conv2d`` layers are preconditioned).
        loss_fn: ``nn.CrossEntropyLoss`` or ``nn.MSELoss`` (defines the likelihood).
        lr, momentum, weight_decay: as in SGD.
        damping: Tikhonov damping ``lambda`` of the factors.
        pi_damping: split the damping between the factors by ``pi`` (see
            :meth:`KFACOperator.damped_factors`).
        ema_decay: weight of the old factors in the moving averages.
        curvature_interval, inverse_interval: steps between factor updates / inversions.
        kl_clip: bound on the squared step length in the Fisher metric (None: off).
        fisher_type: ``"mc"`` or ``"empirical"``.
        mc_samples: labels drawn per example for ``"mc"``.
        fold_bias: fold biases into ``A`` (default) or precondition them by ``G`` alone.
        seed: seed of the sampled labels.
    """

    def __init__(self, model: nn.Module, loss_fn: nn.Module, lr: float = 0.01, *,
                 momentum: float = 0.9, weight_decay: float = 0.0, damping: float = 1e-3,
                 pi_damping: bool = True, ema_decay: float = 0.95, curvature_interval: int = 1,
                 inverse_interval: int = 10, kl_clip: float | None = 1e-3,
                 fisher_type: str = "mc", mc_samples: int = 1, fold_bias: bool = True,
                 seed: int = 0):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        for name, value, low in [("lr", lr, 0.0), ("weight_decay", weight_decay, 0.0)]:
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= low):
                raise ValueError(f"{name} must be a finite number >= {low}, got {value!r}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay!r}")
        if _check_damping(damping) <= 0:
            raise ValueError("damping must be > 0: K-FAC's factors can be singular")
        if kl_clip is not None and not (isinstance(kl_clip, (int, float)) and kl_clip > 0):
            raise ValueError(f"kl_clip must be a positive number or None, got {kl_clip!r}")
        if fisher_type not in ("mc", "empirical"):
            raise ValueError(f"the optimizer supports fisher_type 'mc' or 'empirical', got "
                             f"'{fisher_type}'")
        check_int(curvature_interval, "curvature_interval")
        check_int(inverse_interval, "inverse_interval")
        check_int(mc_samples, "mc_samples")
        self.model, self.loss = model, Loss(loss_fn)
        self.layers = _supported_layers(model, "skip")
        self.layer_params = {id(p) for _, m in self.layers for p in m.parameters(recurse=False)}
        params = [p for p in model.parameters() if p.requires_grad]
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, damping=damping)
        super().__init__(params, defaults)
        self.pi_damping, self.ema_decay, self.kl_clip = pi_damping, ema_decay, kl_clip
        self.curvature_interval, self.inverse_interval = curvature_interval, inverse_interval
        self.fisher_type, self.mc_samples, self.fold_bias = fisher_type, mc_samples, fold_bias
        self.generator = torch.Generator(device=params[0].device).manual_seed(seed)
        self._recorder = _LayerRecorder(self.layers)
        self._batch_targets = None
        self._pre_handle = model.register_forward_pre_hook(self._before_forward)
        self._handle = model.register_forward_hook(self._after_forward)

    # -- statistics ---------------------------------------------------------------------
    def _layer_state(self, module: nn.Module) -> dict:
        return self.state[module.weight]

    def _steps(self) -> int:
        state = self._layer_state(self.layers[0][1])
        return int(state["step"]) if "step" in state else 0

    def set_targets(self, y: Tensor) -> None:
        """Give the true labels of the next forward pass (only ``fisher_type="empirical"``)."""
        self._batch_targets = y

    def _before_forward(self, model, args):
        """Before the model's forward pass: forget the layers' previous calls."""
        self._recorder.clear()

    def _after_forward(self, model, args, f):
        """After the model's forward pass: the factors of this mini-batch (on stats steps)."""
        if not (model.training and torch.is_grad_enabled() and f.requires_grad):
            return
        if self._steps() % self.curvature_interval != 0:
            return
        if self.fisher_type == "empirical" and self._batch_targets is None:
            raise ValueError("fisher_type='empirical' needs the labels: call "
                             "optimizer.set_targets(y) before the forward pass")
        inputs, outputs = self._recorder.recorded()
        y = self._batch_targets if self.fisher_type == "empirical" else None
        S = self.loss.curvature_columns(f.detach(), y, self.fisher_type, self.mc_samples,
                            self.generator)
        # The curvature of the batch's mean loss: c = 1 / B (or 1 / (B C) for MSE).
        scale = self.loss.scale(f.shape[0], f[0].numel())
        grads = _output_grads(f, outputs, S, retain_graph=True)
        with torch.no_grad():
            for (name, module), x, g in zip(self.layers, inputs, grads):
                a, T = _input_matrix(module, x, self.fold_bias)
                rows = _output_grad_matrix(module, g).flatten(0, 1)
                self._update_average(module, "A", (a.T @ a) / (f.shape[0] * T))
                self._update_average(module, "G", scale * (rows.T @ rows))

    def _update_average(self, module, key: str, value: Tensor):
        state = self._layer_state(module)
        if key not in state:
            state[key] = value.clone()
        else:
            state[key].mul_(self.ema_decay).add_(value, alpha=1 - self.ema_decay)

    def _invert(self, module, damping: float):
        state = self._layer_state(module)
        A, G = state["A"], state["G"]
        pi = _pi(KroneckerFactors("", A, G, module.weight.shape, False, False)) \
            if self.pi_damping else 1.0
        root = math.sqrt(damping)
        eye_A = torch.eye(A.shape[0], dtype=A.dtype, device=A.device)
        eye_G = torch.eye(G.shape[0], dtype=G.dtype, device=G.device)
        state["A_inv"] = torch.cholesky_inverse(torch.linalg.cholesky(A + pi * root * eye_A))
        state["G_inv"] = torch.cholesky_inverse(torch.linalg.cholesky(G + root / pi * eye_G))

    # -- the step -----------------------------------------------------------------------
    def _gradient_matrix(self, module, weight_decay: float) -> Tensor:
        w = module.weight
        grad = w.grad.reshape(w.shape[0], -1) + weight_decay * w.detach().reshape(w.shape[0], -1)
        bias = module.bias
        if bias is not None and bias.requires_grad:
            gb = (bias.grad + weight_decay * bias.detach())[:, None]
            grad = torch.cat([grad, gb], dim=1) if self.fold_bias else grad
        return grad

    def _precondition(self, module, grad: Tensor) -> tuple[Tensor, Tensor | None]:
        state = self._layer_state(module)
        step = state["G_inv"] @ grad @ state["A_inv"]
        bias = module.bias
        step_b = None
        if bias is not None and bias.requires_grad and not self.fold_bias:
            step_b = state["G_inv"] @ bias.grad
        return step, step_b

    @torch.no_grad()
    def step(self, closure=None):
        """One natural-gradient step; ``closure`` as for any torch optimizer."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        group = self.param_groups[0]
        lr, damping, wd = group["lr"], group["damping"], group["weight_decay"]
        steps = self._steps()
        updates, inner = {}, 0.0
        for name, module in self.layers:
            state = self._layer_state(module)
            if module.weight.grad is None:
                continue
            if "A" not in state:
                raise RuntimeError(f"no curvature statistics for layer '{name}': the forward "
                                   "pass must run in training mode with gradients enabled")
            if steps % self.inverse_interval == 0 or "A_inv" not in state:
                self._invert(module, damping)
            grad = self._gradient_matrix(module, wd)
            step, step_b = self._precondition(module, grad)
            inner += float((step * grad).sum())
            if step_b is not None:
                inner += float((step_b * (module.bias.grad + wd * module.bias)).sum())
            updates[name] = (step, step_b)
        nu = 1.0
        if self.kl_clip is not None and inner > 0:
            nu = min(1.0, math.sqrt(self.kl_clip / (lr ** 2 * inner)))
        for name, module in self.layers:
            if name not in updates:
                continue
            step, step_b = updates[name]
            w = module.weight
            if module.bias is not None and module.bias.requires_grad and self.fold_bias:
                self._apply(w, nu * step[:, :-1].reshape(w.shape), group)
                self._apply(module.bias, nu * step[:, -1], group)
            else:
                self._apply(w, nu * step.reshape(w.shape), group)
                if step_b is not None:
                    self._apply(module.bias, nu * step_b, group)
        for p in group["params"]:  # other modules: momentum SGD on the plain gradient
            if id(p) not in self.layer_params and p.grad is not None:
                self._apply(p, p.grad + wd * p, group)
        for _, module in self.layers:
            state = self._layer_state(module)
            state["step"] = torch.tensor(float(steps + 1))
        return loss

    def _apply(self, p: Tensor, direction: Tensor, group: dict):
        if group["momentum"] > 0:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = direction.clone()
            else:
                state["momentum_buffer"].mul_(group["momentum"]).add_(direction)
            direction = state["momentum_buffer"]
        p.add_(direction, alpha=-group["lr"])

    def remove_hooks(self) -> None:
        """Detach the optimizer from the model's forward passes."""
        self._recorder.remove()
        self._pre_handle.remove()
        self._handle.remove()
