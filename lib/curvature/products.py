"""Curvature matrices of a model's loss as matrix-free linear operators.

For a model ``f(x; theta)`` with ``d`` trainable parameters and a loss over a dataset

    L(theta) = c * sum_n l(f(x_n; theta), y_n),

with ``c = 1`` for ``reduction="sum"`` and ``c = 1 / N`` (cross-entropy) or
``1 / (N C)`` (mean-squared error over ``C`` outputs) for ``reduction="mean"`` over the
*whole* dataset of ``N`` points, this module builds

* the Hessian ``H = d^2 L / d theta^2``,
* the generalized Gauss-Newton ``G = c sum_n J_n^T (d^2 l / d f^2) J_n``,
* the Fisher ``F = c sum_n J_n^T E_{y ~ p(y | f_n)}[g g^T] J_n`` with
  ``g = d l / d f`` (``kind="exact"``), its Monte-Carlo estimate with sampled labels
  (``kind="mc"``), and the empirical Fisher with the true labels (``kind="empirical"``),

where ``J_n = d f(x_n) / d theta`` has shape ``(C, d)``. Each is a
:class:`~lib.operators.base.LinearOperator` of shape ``(d, d)``; ``op @ v`` accepts a flat
vector ``(d,)``, a block ``(d, k)`` or a list of parameter-shaped tensors.

Products are computed per batch without forming any ``d x d`` or ``C x d`` matrix:
Hessian-vector products by reverse-over-reverse differentiation (measured faster than
forward-over-reverse on CPU, see ``bench/curvature.py``; both are available through
``mode``), Gauss-Newton-type products by one forward pass carrying the tangent ``J v``
(forward-mode AD) followed by one backward pass for ``J^T (M J v)``.

The spectral estimators (:func:`~lib.operators.spectral.trace`, :func:`~lib.operators.spectral.eigvalsh`,
:func:`~lib.operators.spectral.spectral_density`, :func:`~lib.operators.spectral.logdet`) live in
:mod:`lib.operators.spectral` and are re-exported here.
"""

from __future__ import annotations

import contextlib
import warnings

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor, nn
from torch.func import functional_call

from .._checks import check_finite, check_int
from ..book.batches import batch_source, check_batch
from ..operators.spectral import eigvalsh, logdet, relative_difference, spectral_density, trace
from ..operators import (DampedInverseOperator, DenseOperator, DiagonalOperator,
                         IdentityOperator, LinearOperator, ProductOperator,
                         ScaledOperator, SumOperator)

__all__ = [
    "hessian", "ggn", "fisher", "gradient", "CurvatureOperator", "HessianOperator",
    "GGNOperator", "trace", "eigvalsh", "relative_difference", "spectral_density", "logdet", "LinearOperator",
    "DenseOperator", "DiagonalOperator", "IdentityOperator", "SumOperator", "ScaledOperator",
    "ProductOperator", "DampedInverseOperator", "FISHER_KINDS", "HESSIAN_MODES",
]

FISHER_KINDS = ("exact", "mc", "empirical")
HESSIAN_MODES = ("reverse-over-reverse", "forward-over-reverse")


@contextlib.contextmanager
def _quiet_forward_ad():
    """Silence torch's own deprecation notice when forward-mode AD first loads.

    The first use of forward-mode AD in a process makes torch script some internal
    decompositions, which emits a FutureWarning about ``torch.jit.script`` that is
    neither the caller's business nor actionable; any other warning passes through.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*deprecated",
                                category=FutureWarning)
        yield


@contextlib.contextmanager
def _differentiable_attention():
    """Route attention through kernels that support the derivatives the products take.

    On the CPU, scaled-dot-product attention dispatches to a flash kernel with neither a
    double backward nor forward-mode AD, and ``nn.MultiheadAttention`` takes a fused
    inference "fast path" (no forward-mode AD) whenever no input requires grad. Both
    break every curvature product of a transformer; the math kernel computes the same
    attention with ordinary, twice-differentiable operations.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


# --------------------------------------------------------------------------------------
# Losses: what the operators need to know about l(f, y) in output space
# --------------------------------------------------------------------------------------
class _Loss:
    """Output-space view of a supported loss, for a batch of outputs ``f`` of shape (B, C).

    ``per_sample`` is the unreduced term ``l(f_n, y_n)`` that the reduction sums or
    averages; for MSE we take ``l = sum_c (f_c - y_c)^2`` so that ``mean`` divides by
    ``N C``, exactly as ``nn.MSELoss`` does.
    """

    def __init__(self, loss_fn: nn.Module):
        if isinstance(loss_fn, nn.CrossEntropyLoss):
            if loss_fn.weight is not None or loss_fn.label_smoothing != 0.0:
                raise ValueError("cross-entropy with class weights or label smoothing is not "
                                 "supported: the Fisher/GGN identities assume the plain loss")
            self.name = "cross_entropy"
        elif isinstance(loss_fn, nn.MSELoss):
            self.name = "mse"
        else:
            raise ValueError(f"unsupported loss {type(loss_fn).__name__}: use "
                             "nn.CrossEntropyLoss or nn.MSELoss")
        if loss_fn.reduction not in ("mean", "sum"):
            raise ValueError(f"loss reduction must be 'mean' or 'sum', got "
                             f"'{loss_fn.reduction}'")
        self.loss_fn = loss_fn
        self.reduction = loss_fn.reduction

    def check_output(self, f: Tensor, y: Tensor):
        if self.name == "cross_entropy" and f.ndim != 2:
            raise ValueError(f"model output must have shape (batch, outputs), got {tuple(f.shape)}")
        if self.name == "cross_entropy" and (y.ndim != 1 or y.dtype not in (torch.int64, torch.int32)):
            raise ValueError("cross-entropy targets must be class indices of shape (batch,)")
        if self.name == "mse" and y.shape != f.shape:
            raise ValueError(f"MSE targets have shape {tuple(y.shape)}, outputs {tuple(f.shape)}")

    def scale(self, num_data: int, num_outputs: int) -> float:
        """The constant c in L = c * sum_n l_n."""
        if self.reduction == "sum":
            return 1.0
        return 1.0 / (num_data * num_outputs if self.name == "mse" else num_data)

    def summed(self, f: Tensor, y: Tensor) -> Tensor:
        """sum_n l(f_n, y_n) over a batch; a scalar.

        Written with elementary ops rather than ``nn.MSELoss`` because the latter's
        derivative formulas break under forward-over-reverse differentiation.
        """
        if self.name == "mse":
            return ((f - y) ** 2).sum()
        return nn.functional.cross_entropy(f, y, reduction="sum")

    def hessian_product(self, f: Tensor, u: Tensor) -> Tensor:
        """(d^2 l / d f^2) u per sample; f, u: (B, C) -> (B, C)."""
        if self.name == "mse":
            return 2.0 * u
        p = f.softmax(dim=1)
        return p * u - p * (p * u).sum(dim=1, keepdim=True)

    def gradient(self, f: Tensor, y: Tensor) -> Tensor:
        """d l(f_n, y_n) / d f_n per sample; (B, C)."""
        if self.name == "mse":
            return 2.0 * (f - y)
        return f.softmax(dim=1) - nn.functional.one_hot(y.long(), f.shape[1]).to(f.dtype)

    def sample_gradients(self, f: Tensor, num_samples: int, generator: torch.Generator) -> Tensor:
        """Gradients d l / d f at labels drawn from the model's likelihood; (S, B, C).

        Cross-entropy: y ~ Categorical(softmax f). MSE: l = ||f - y||^2 is the negative
        log-likelihood of N(f, I/2) up to a constant, so y = f + xi / sqrt(2) and
        g = 2 (f - y) = -sqrt(2) xi.
        """
        B, C = f.shape
        if self.name == "mse":
            xi = torch.randn(num_samples, B, C, generator=generator, dtype=f.dtype,
                             device=f.device)
            return -(2.0 ** 0.5) * xi
        p = f.softmax(dim=1)
        labels = torch.multinomial(p, num_samples, replacement=True, generator=generator)
        onehot = nn.functional.one_hot(labels.T, C).to(f.dtype)  # (S, B, C)
        return p[None] - onehot

    def fisher_product(self, f: Tensor, u: Tensor) -> Tensor:
        """E_y[g g^T] u per sample, by its definition as an expectation; (B, C).

        For cross-entropy the expectation is a sum over the C labels weighted by p;
        for MSE it is 2 I in closed form. That both equal ``hessian_product`` is a
        theorem the tests check, not an assumption of this code.
        """
        if self.name == "mse":
            return 2.0 * u
        p = f.softmax(dim=1)
        # g_c = p - e_c for label c; sum_c p_c g_c (g_c . u)
        g = p[:, None, :] - torch.eye(f.shape[1], dtype=f.dtype, device=f.device)[None]
        return torch.einsum("bc,bck,bc->bk", p, g, torch.einsum("bck,bk->bc", g, u))


# --------------------------------------------------------------------------------------
# Operators tied to a model and a dataset
# --------------------------------------------------------------------------------------
def _inspect_data(model: nn.Module, batches, device, dtype) -> tuple[int, int]:
    """Validate the batches once, when an operator is built; return ``N`` and ``C``.

    The one place where the data are inspected, for every operator of this module and of
    :mod:`lib.curvature.kronecker`, so that bad data fail here with an error that names the problem
    instead of deep inside a product:

    * every batch is an ``(X, y)`` pair of equal lengths; floating-point inputs ``X``
      have the model's dtype (``TypeError``); ``X`` and floating-point targets ``y`` are
      finite (``ValueError``). This rides on the counting pass over the batches that
      builds ``N`` anyway, one reduction per tensor, never a pass per product;
    * the first non-empty batch is evaluated twice (without gradients) and the outputs
      compared: a forward pass that draws random numbers (dropout through
      ``F.dropout`` in a custom module, noise injection) would make every product a
      different matrix, and no module type reveals it (curvlinops probes the same way).
      The module types that do reveal it are checked first, by
      :func:`_check_no_stochastic_layers`.

    Returns:
        The number of data points ``N`` and of outputs per point ``C``.
    """
    num_data, first = 0, None
    for index, batch in enumerate(batches):
        X, y = check_batch(batch, index)
        if torch.is_floating_point(X) and X.dtype != dtype:
            raise TypeError(f"the input X of batch {index} has dtype {X.dtype} but the model's "
                            f"parameters have dtype {dtype}; convert one of them (e.g. "
                            f"X.to({dtype}) or model.to({dtype}))")
        check_finite(X, f"the input X of batch {index}")
        if torch.is_floating_point(y):
            check_finite(y, f"the target y of batch {index}")
        num_data += len(X)
        if first is None and len(X) > 0:
            first = X
    if num_data == 0:
        raise ValueError("data is empty: the loss of zero data points has no curvature")
    return num_data, _check_deterministic_forward(model, first.to(device))


def _check_deterministic_forward(model: nn.Module, X: Tensor) -> int:
    """Evaluate ``model`` twice on the batch ``X``; ``ValueError`` if the outputs differ.

    Returns the number of outputs per data point, ``C``.
    """
    with torch.no_grad():
        first, second = model(X), model(X)
    if torch.equal(first, second):  # the usual case, one cheap comparison
        return first[0].numel()
    # Not bitwise equal: NaN entries, or kernels that sum in a varying order (some GPU
    # ones); accept round-off relative to the largest finite output.
    if first.shape != second.shape:
        what = f"outputs of shapes {tuple(first.shape)} and {tuple(second.shape)}"
    else:
        finite = first[torch.isfinite(first)]
        atol = 1e-6 * float(finite.abs().max()) if finite.numel() else 0.0
        if torch.allclose(first, second, rtol=1e-5, atol=atol, equal_nan=True):
            return first[0].numel()
        what = f"outputs that differ by up to {float((first - second).abs().max()):.3g}"
    raise ValueError(f"the model's forward pass is not deterministic: two evaluations of the "
                     f"first batch give {what}, so every curvature product would be a "
                     "different matrix. A random operation in training mode (e.g. F.dropout "
                     "in a custom module) does this; call model.eval() first or remove the "
                     "randomness")


def _check_no_stochastic_layers(model: nn.Module):
    """``ValueError`` naming the first module whose training mode makes the loss depend
    on the batch (BatchNorm) or on chance (every dropout: ``_DropoutNd`` is the base of
    ``Dropout``, ``Dropout1d/2d/3d``, ``AlphaDropout`` and ``FeatureAlphaDropout``)."""
    stochastic_types = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)
    for name, module in model.named_modules():
        if isinstance(module, stochastic_types) and module.training:
            raise ValueError(f"module '{name or type(module).__name__}' "
                             f"({type(module).__name__}) is in training mode, which makes the "
                             "loss depend on the batch or on chance; call model.eval() first")


class CurvatureOperator(LinearOperator):
    """Base class of the curvature operators of ``model`` under ``loss_fn`` on ``data``.

    Args:
        model: a module mapping a batch ``X`` to outputs ``(B, C)``; every parameter with
            ``requires_grad=True`` is a coordinate, in ``model.parameters()`` order.
        loss_fn: ``nn.CrossEntropyLoss`` or ``nn.MSELoss``, reduction ``"mean"`` or ``"sum"``.
        data: an ``(X, y)`` pair or a re-iterable of ``(X, y)`` batches (a list, a
            ``DataLoader``); ``"mean"`` averages over all points of all batches.

    The data are checked once, when the operator is built (``_inspect_data``).

    Raises:
        TypeError: floating-point inputs of another dtype than the model's parameters.
        ValueError: empty data, NaN or infinite inputs or targets, a dropout or BatchNorm
            module in training mode, or a forward pass that is not deterministic.
    """

    def __init__(self, model: nn.Module, loss_fn: nn.Module, data):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        self.loss = _Loss(loss_fn)
        _check_no_stochastic_layers(model)
        self.model = model
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("model has no trainable parameters")
        self.data = batch_source(data)
        self.num_data, self.num_outputs = self._inspect_data()
        first = self.params[0]
        super().__init__(sum(p.numel() for p in self.params), first.dtype, first.device,
                         True, [p.shape for p in self.params])

    def _inspect_data(self) -> tuple[int, int]:
        return _inspect_data(self.model, self.data, self.params[0].device, self.params[0].dtype)

    def _batches(self):
        for X, y in self.data:
            if len(X) == 0:
                continue
            yield X.to(self.device), y.to(self.device)

    # Columns per pass: one vmapped pass over a block beats a loop of single products, but
    # past a few million entries (d * columns) memory traffic makes it slower again
    # (bench/invariance.py: on the 535k-parameter MLP, chunks of ~8 columns were fastest).
    block_entries = 2 ** 22

    def _matmat(self, V):
        chunk = max(1, min(V.shape[1], self.block_entries // self.shape[0]))
        with _differentiable_attention():
            if chunk >= V.shape[1]:
                return self._matmat_block(V)
            return torch.cat([self._matmat_block(V[:, i:i + chunk])
                              for i in range(0, V.shape[1], chunk)], dim=1)

    def _matmat_block(self, V):
        raise NotImplementedError

    def _sum_over_batches(self, batch_product) -> Tensor:
        """sum over batches of batch_product(X, y); in place after the first batch."""
        total = None
        for X, y in self._batches():
            result = batch_product(X, y)
            total = result if total is None else total.add_(result)
        return total

    @property
    def scale(self) -> float:
        return self.loss.scale(self.num_data, self.num_outputs)

    def _as_param_list(self, v: Tensor) -> list[Tensor]:
        """Flat (d,) -> parameter-shaped tensors."""
        return [t.to(p.dtype) for t, p in zip(self._split(v), self.params)]

    def _split_block(self, V: Tensor) -> list[Tensor]:
        """Block (d, k) -> per parameter (k, *shape): the layout of batched tangents."""
        sizes = [p.numel() for p in self.params]
        return [b.T.reshape(V.shape[1], *p.shape).to(p.dtype)
                for b, p in zip(V.split(sizes), self.params)]

    def _flat(self, tensors) -> Tensor:
        """Parameter-shaped tensors (None: unused parameter, zero) -> flat (d,)."""
        return torch.cat([(torch.zeros_like(p) if t is None else t).reshape(-1)
                          for t, p in zip(tensors, self.params)])

    def _flat_block(self, tensors, k: int) -> Tensor:
        """Per parameter (k, *shape) (None: zero) -> block (d, k)."""
        return torch.cat([(p.new_zeros(k, p.numel()) if t is None else t.reshape(k, -1))
                          for t, p in zip(tensors, self.params)], dim=1).T


class HessianOperator(CurvatureOperator):
    """The Hessian of the dataset loss; see :func:`hessian`."""

    def __init__(self, model, loss_fn, data, mode: str = "reverse-over-reverse"):
        if mode not in HESSIAN_MODES:
            raise ValueError(f"unknown Hessian mode '{mode}'; choose one of {HESSIAN_MODES}")
        super().__init__(model, loss_fn, data)
        self.mode = mode

    def _batch_loss(self, out: Tensor, y: Tensor) -> Tensor:
        """The batch's share of L = c sum_n l_n (mean reductions span the whole dataset)."""
        self.loss.check_output(out, y)
        return self.scale * self.loss.summed(out, y)

    def _matmat_block(self, V):
        batch_product = self._rr if self.mode == "reverse-over-reverse" else self._fr
        return self._sum_over_batches(lambda X, y: batch_product(X, y, V))

    def _rr(self, X, y, V):
        # One forward and one differentiable backward per batch serve every column;
        # a block of columns goes through the second backward at once (vmapped).
        loss = self._batch_loss(self.model(X), y)
        grads = torch.autograd.grad(loss, self.params, create_graph=True)
        if V.shape[1] == 1:
            hv = torch.autograd.grad(grads, self.params, grad_outputs=self._as_param_list(V[:, 0]),
                                     allow_unused=True)
            return self._flat(hv)[:, None].to(V.dtype)
        with _quiet_forward_ad():
            hv = torch.autograd.grad(grads, self.params, grad_outputs=self._split_block(V),
                                     is_grads_batched=True, allow_unused=True)
        return self._flat_block(hv, V.shape[1]).to(V.dtype)

    def _fr(self, X, y, V):
        primals = {n: p.detach() for n, p in zip(self.names, self.params)}

        def loss_of(params):
            return self._batch_loss(functional_call(self.model, params, (X,)), y)

        def hvp(flat_tangent):
            tangent = dict(zip(self.names, self._split(flat_tangent)))
            _, hv = torch.func.jvp(torch.func.grad(loss_of), (primals,), (tangent,))
            return self._flat([hv[n] for n in self.names])

        with _quiet_forward_ad():
            if V.shape[1] == 1:
                return hvp(V[:, 0])[:, None].to(V.dtype)
            return torch.vmap(hvp, in_dims=1, out_dims=1)(V).to(V.dtype)


class GGNOperator(CurvatureOperator):
    """Operators of the form ``c sum_n J_n^T M_n J_n``: the GGN and the Fishers.

    ``kind`` selects ``M_n``: ``"ggn"`` the loss Hessian in output space, ``"exact"`` the
    expected outer product of output gradients under the model, ``"mc"`` its average
    over ``num_samples`` sampled labels (drawn afresh from ``seed`` in every product, so
    the operator is one fixed matrix), ``"empirical"`` the outer product at the true labels.
    """

    def __init__(self, model, loss_fn, data, kind: str = "ggn", num_samples: int = 1,
                 seed: int = 0):
        if kind not in ("ggn",) + FISHER_KINDS:
            raise ValueError(f"unknown Fisher kind '{kind}'; choose one of {FISHER_KINDS}")
        check_int(num_samples, "num_samples")
        super().__init__(model, loss_fn, data)
        self.kind, self.num_samples, self.seed = kind, num_samples, seed

    def _output_curvature(self, f: Tensor, y: Tensor, U: Tensor, generator) -> Tensor:
        """M_n u_n for every sample and column; f: (B, C), U: (k, B, C) -> (k, B, C)."""
        if self.kind == "ggn":
            return torch.stack([self.loss.hessian_product(f, u) for u in U])
        if self.kind == "exact":
            return torch.stack([self.loss.fisher_product(f, u) for u in U])
        if self.kind == "empirical":
            g = self.loss.gradient(f, y)[None]  # (1, B, C)
        else:
            g = self.loss.sample_gradients(f, self.num_samples, generator)  # (S, B, C)
        # (1/S) sum_s g_s (g_s . u) for every column u
        return torch.einsum("sbc,ksb->kbc", g, torch.einsum("sbc,kbc->ksb", g, U)) / g.shape[0]

    def _matmat_block(self, V):
        generator = None
        if self.kind == "mc":
            generator = torch.Generator(device=self.device).manual_seed(self.seed)
        return self._sum_over_batches(lambda X, y: self._batch_matmat(X, y, V, generator))

    def _batch_matmat(self, X, y, V, generator):
        if V.shape[1] == 1:
            out, jv = self._output_and_jvp(X, self._as_param_list(V[:, 0]))
            JV = jv.detach()[None]
        else:
            out, JV = self._output_and_jvps(X, V)
        self.loss.check_output(out, y)
        y = y if self.loss.name == "cross_entropy" else y.reshape(len(y), -1)
        f = out.detach().reshape(len(out), -1)
        MU = self.scale * self._output_curvature(f, y, JV.reshape(V.shape[1], *f.shape), generator)
        return self._vjps(out, MU.reshape(V.shape[1], *out.shape)).to(V.dtype)

    def _vjps(self, out: Tensor, MU: Tensor) -> Tensor:
        """J^T u for each u in MU (k, *out.shape) -> (d, k), in one (vmapped) backward."""
        if len(MU) == 1:
            grads = torch.autograd.grad(out, self.params, grad_outputs=MU[0], allow_unused=True)
            return self._flat(grads)[:, None]
        grads = torch.autograd.grad(out, self.params, grad_outputs=MU, is_grads_batched=True,
                                    allow_unused=True)
        return self._flat_block(grads, len(MU))

    def _output_and_jvps(self, X, V) -> tuple[Tensor, Tensor]:
        """f(X) with a graph to the parameters and J v for every column of V: (k, *f.shape)."""
        out = self.model(X)
        primals = {n: p.detach() for n, p in zip(self.names, self.params)}

        def jvp_of(flat_tangent):
            tangent = dict(zip(self.names, self._split(flat_tangent)))
            return torch.func.jvp(lambda p: functional_call(self.model, p, (X,)),
                                  (primals,), (tangent,))[1]

        with _quiet_forward_ad():
            return out, torch.vmap(jvp_of, in_dims=1)(V.to(self.dtype))

    def _output_and_jvp(self, X, tangent: list[Tensor]) -> tuple[Tensor, Tensor]:
        """The outputs f(X) (with an autograd graph to the parameters) and J v."""
        with _quiet_forward_ad(), fwAD.dual_level():
            duals = {n: fwAD.make_dual(p, t) for n, p, t in zip(self.names, self.params, tangent)}
            out = functional_call(self.model, duals, (X,))
            f, jv = fwAD.unpack_dual(out)
        if jv is None:  # the output does not depend on these parameters
            jv = torch.zeros_like(f)
        return f, jv


# --------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------
def hessian(model: nn.Module, loss_fn: nn.Module, data, *,
            mode: str = "reverse-over-reverse") -> HessianOperator:
    """The Hessian of the dataset loss as a ``(d, d)`` operator.

    Args:
        model, loss_fn, data: see :class:`CurvatureOperator`.
        mode: ``"reverse-over-reverse"`` (default, the faster one measured on CPU) or
            ``"forward-over-reverse"`` (``torch.func.jvp`` of ``torch.func.grad``).

    Returns:
        ``H`` with ``H @ v`` for ``v`` of shape ``(d,)``, ``(d, k)`` or parameter-shaped.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from lib import curvature
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
        >>> X, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
        >>> H = curvature.hessian(model, nn.CrossEntropyLoss(), (X, y))
        >>> H.shape  # d = 3 * 4 + 4 + 4 * 2 + 2 parameters
        (26, 26)
        >>> v = torch.randn(26)
        >>> torch.allclose(H @ v, H.to_dense() @ v, atol=1e-6)
        True
    """
    return HessianOperator(model, loss_fn, data, mode=mode)


def ggn(model: nn.Module, loss_fn: nn.Module, data) -> GGNOperator:
    """The generalized Gauss-Newton ``c sum_n J_n^T (d^2 l / d f^2) J_n`` as an operator.

    It equals the Hessian when the model is linear in its parameters, and is positive
    semi-definite for convex losses. Shapes as for :func:`hessian`.
    """
    return GGNOperator(model, loss_fn, data, kind="ggn")


def fisher(model: nn.Module, loss_fn: nn.Module, data, kind: str = "exact", *,
           num_samples: int = 1, seed: int = 0) -> GGNOperator:
    """The Fisher information of the model's likelihood, as a ``(d, d)`` operator.

    The loss is read as a negative log-likelihood: cross-entropy as a categorical model,
    ``sum_c (f_c - y_c)^2`` as a Gaussian with covariance ``I / 2``. With ``g_n`` the
    gradient of ``l`` with respect to the parameters at a label ``y``:

    * ``"exact"``: ``c sum_n E_{y ~ p(y|x_n)}[g_n g_n^T]`` (equals the GGN for both losses);
    * ``"mc"``: the expectation replaced by the mean over ``num_samples`` drawn labels;
    * ``"empirical"``: ``c sum_n g_n g_n^T`` at the data's labels (not a Fisher in general).

    ``c`` is the reduction's constant (module docstring), so all kinds share the GGN's scale.
    """
    if kind not in FISHER_KINDS:
        raise ValueError(f"unknown Fisher kind '{kind}'; choose one of {FISHER_KINDS}")
    return GGNOperator(model, loss_fn, data, kind=kind, num_samples=num_samples, seed=seed)


def gradient(model: nn.Module, loss_fn: nn.Module, data) -> Tensor:
    """The gradient of the dataset loss, flat, shape ``(d,)`` (same conventions as above)."""
    op = HessianOperator(model, loss_fn, data)
    total = torch.zeros(op.shape[0], dtype=op.dtype, device=op.device)
    for X, y in op._batches():
        grads = torch.autograd.grad(op._batch_loss(model(X), y), op.params, allow_unused=True)
        total += op._flat(grads)
    return total
