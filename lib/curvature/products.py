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

from .._checks import check_int
from ..book.batches import batch_source
from .inspection import check_no_stochastic_layers, inspect_data
from .losses import FisherKind, Loss, fisher_kind
from .roots import layer_diagonals, sum_over_rows
from ..operators.spectral import eigvalsh, logdet, relative_difference, spectral_density, trace
from ..operators import (DampedInverseOperator, DenseOperator, DiagonalOperator,
                         IdentityOperator, LinearOperator, ProductOperator,
                         ScaledOperator, SumOperator)

__all__ = [
    "hessian", "ggn", "fisher", "gradient", "CurvatureOperator", "HessianOperator",
    "GGNOperator", "trace", "eigvalsh", "relative_difference", "spectral_density", "logdet", "LinearOperator",
    "DenseOperator", "DiagonalOperator", "IdentityOperator", "SumOperator", "ScaledOperator",
    "ProductOperator", "DampedInverseOperator", "HESSIAN_MODES",
]

_FISHER_KINDS = (FisherKind.EXACT, FisherKind.MC, FisherKind.EMPIRICAL)
HESSIAN_MODES = ("reverse-over-reverse", "forward-over-reverse")


@contextlib.contextmanager
def quiet_forward_ad():
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
def differentiable_attention():
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
# Operators tied to a model and a dataset
# --------------------------------------------------------------------------------------
class CurvatureOperator(LinearOperator):
    """Base class of the curvature operators of ``model`` under ``loss_fn`` on ``data``.

    Args:
        model: a module mapping a batch ``X`` to outputs ``(B, C)``; every parameter with
            ``requires_grad=True`` is a coordinate, in ``model.parameters()`` order.
        loss_fn: ``nn.CrossEntropyLoss`` or ``nn.MSELoss``, reduction ``"mean"`` or ``"sum"``.
        data: an ``(X, y)`` pair or a re-iterable of ``(X, y)`` batches (a list, a
            ``DataLoader``); ``"mean"`` averages over all points of all batches.

    The data are checked once, when the operator is built
    (:func:`lib.curvature.inspection.inspect_data`).

    Raises:
        TypeError: floating-point inputs of another dtype than the model's parameters.
        ValueError: empty data, NaN or infinite inputs or targets, a dropout or BatchNorm
            module in training mode, or a forward pass that is not deterministic.
    """

    def __init__(self, model: nn.Module, loss_fn: nn.Module, data):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        self.loss = Loss(loss_fn)
        check_no_stochastic_layers(model)
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
        return inspect_data(self.model, self.data, self.params[0].device, self.params[0].dtype)

    def batches(self):
        """The data's non-empty batches ``(X, y)``, moved to the operator's device (a generator)."""
        return self._batches()

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
        with differentiable_attention():
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
        with quiet_forward_ad():
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

        with quiet_forward_ad():
            if V.shape[1] == 1:
                return hvp(V[:, 0])[:, None].to(V.dtype)
            return torch.vmap(hvp, in_dims=1, out_dims=1)(V).to(V.dtype)


class GGNOperator(CurvatureOperator):
    """Operators of the form ``c sum_n J_n^T M_n J_n``: the GGN and the Fishers.

    ``kind`` (a :class:`~lib.curvature.losses.FisherKind`) selects ``M_n``: ``"ggn"`` the loss Hessian in output space, ``"exact"`` the
    expected outer product of output gradients under the model, ``"mc"`` its average
    over ``num_samples`` sampled labels (drawn afresh from ``seed`` in every product, so
    the operator is one fixed matrix), ``"empirical"`` the outer product at the true labels.

    ``trace`` is exact (``exact``), in one pass over the data: ``sum_n ||J_n^T M_n^(1/2)||_F^2``
    from per-example square-root factors (:mod:`lib.curvature.roots`), whatever ``d``.
    """

    exact = frozenset({"trace"})

    def __init__(self, model, loss_fn, data, kind: str = "ggn", num_samples: int = 1,
                 seed: int = 0):
        kind = fisher_kind(kind)
        check_int(num_samples, "num_samples")
        super().__init__(model, loss_fn, data)
        self.kind, self.num_samples, self.seed = kind, num_samples, seed

    def trace(self, **options) -> float:
        """``tr(c sum_n J_n^T M_n J_n) = sum_{n,k} ||sqrt(c) J_n^T s_nk||^2``, exact, in one pass of
        per-example vector-Jacobian products (``C`` per example for the exact Fisher and the GGN,
        ``num_samples`` for ``"mc"``, one for ``"empirical"``); ``options`` are ignored."""
        with differentiable_attention():
            layers = layer_diagonals(self)
            if layers is not None:  # Linear/Conv2d layers: no rows needed
                return float(sum(float(t.double().sum()) for layer in layers for t in layer[:2] if t is not None))
            return float(sum_over_rows(self, lambda R: (R.double() ** 2).sum()))

    def _quadratic(self, V: Tensor) -> Tensor:
        """``v^T F v = c sum_n (J_n v)^T M_n (J_n v)`` per column: forward-mode passes only, no
        backward (half the cost of ``v . (F v)``); same sampled labels as the products."""
        generator = None
        if self.kind == "mc":
            generator = torch.Generator(device=self.device).manual_seed(self.seed)

        def batch_quadratic(X, y):
            out, JV = self._output_and_jvps(X, V)
            self.loss.check_output(out, y)
            y = y if self.loss.name == "cross_entropy" else y.reshape(len(y), -1)
            f = out.detach().reshape(len(out), -1)
            JV = JV.detach().reshape(V.shape[1], *f.shape)
            return self.scale * (JV * self._output_curvature(f, y, JV, generator)).sum(dim=(1, 2))
        with differentiable_attention(), torch.no_grad():
            return self._sum_over_batches(batch_quadratic).to(V.dtype)

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

        with quiet_forward_ad():
            return out, torch.vmap(jvp_of, in_dims=1)(V.to(self.dtype))

    def _output_and_jvp(self, X, tangent: list[Tensor]) -> tuple[Tensor, Tensor]:
        """The outputs f(X) (with an autograd graph to the parameters) and J v."""
        with quiet_forward_ad(), fwAD.dual_level():
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
    gradient of ``l`` with respect to the parameters at a label ``y``, ``kind`` (a
    :class:`~lib.curvature.losses.FisherKind` or its string) is

    * ``"exact"``: ``c sum_n E_{y ~ p(y|x_n)}[g_n g_n^T]`` (equals the GGN for both losses);
    * ``"mc"``: the expectation replaced by the mean over ``num_samples`` drawn labels;
    * ``"empirical"``: ``c sum_n g_n g_n^T`` at the data's labels (not a Fisher in general).

    ``c`` is the reduction's constant (module docstring), so all kinds share the GGN's scale.
    """
    kind = fisher_kind(kind, _FISHER_KINDS)
    return GGNOperator(model, loss_fn, data, kind=kind, num_samples=num_samples, seed=seed)


def gradient(model: nn.Module, loss_fn: nn.Module, data) -> Tensor:
    """The gradient of the dataset loss, flat, shape ``(d,)`` (same conventions as above)."""
    op = HessianOperator(model, loss_fn, data)
    total = torch.zeros(op.shape[0], dtype=op.dtype, device=op.device)
    for X, y in op._batches():
        grads = torch.autograd.grad(op._batch_loss(model(X), y), op.params, allow_unused=True)
        total += op._flat(grads)
    return total
