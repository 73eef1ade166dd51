"""Kronecker-factored approximate curvature (K-FAC), its eigenvalue correction, and an optimizer.

For a layer with weight ``W`` of shape ``(out, in)`` (a ``Conv2d`` kernel is read as
``(out, in * kh * kw)``), the per-example gradient is an outer product ``g a^T`` of the
gradient ``g`` with respect to the layer's output and the layer's input ``a``. The
curvature block of ``W`` is a sum of Kronecker products,

    F_W = c * sum_{n, k} (g_nk g_nk^T) kron (a_n a_n^T),

over examples ``n`` and the columns ``k`` of a square root of the loss's output curvature
(see ``kind``). K-FAC (Martens & Grosse 2015) replaces the sum of products by a
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
:class:`EKFACOperator` (George et al. 2018); the factor loop they share (with
:class:`lib.geometry.kfac_optimizer.KFACOptimizer`) is :mod:`lib.curvature.factors`.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor, nn

from .._checks import check_damping, check_int
from ..book.batches import batch_source
from ..operators.base import EXACT_QUANTITIES, LinearOperator
from ..operators.linalg import top_ascending
from .factors import (SUPPORTED_MODULES, KroneckerFactors, accumulate_factors,
                      recorded_batches, supported_layers, tikhonov_factors)
from .inspection import check_no_stochastic_layers, inspect_data
from .losses import Loss, fisher_kind

__all__ = ["SUPPORTED_MODULES", "KroneckerFactors", "KFACOperator", "KFACInverseOperator",
           "EKFACOperator", "kfac", "ekfac"]


def _prepare(model, loss_fn, data, kind, num_samples, unsupported):
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    kind = fisher_kind(kind)
    check_int(num_samples, "num_samples")
    if num_samples != 1 and kind != "mc":
        raise ValueError(f"num_samples={num_samples} only applies to kind='mc'")
    loss = Loss(loss_fn)
    check_no_stochastic_layers(model)
    layers = supported_layers(model, unsupported)
    batches = batch_source(data)
    weight = layers[0][1].weight
    num_data, num_outputs = inspect_data(model, batches, weight.device, weight.dtype)
    device = weight.device
    moved = [(X.to(device), y.to(device)) for X, y in batches if len(X) > 0]
    return kind, loss, layers, moved, num_data, num_outputs


def kfac(model: nn.Module, loss_fn: nn.Module, data, kind: str = "exact", *,
         num_samples: int = 1, fold_bias: bool = False, unsupported: str = "error",
         seed: int = 0) -> KFACOperator:
    """The K-FAC approximation of the Fisher (or GGN) of ``model`` on ``data``.

    Args:
        model: a module mapping ``X`` to outputs ``(B, C)``, built from ``nn.Linear`` and
            ``nn.Conv2d`` layers (plus parameter-free modules), each called once per
            forward pass; in eval mode if it has dropout or BatchNorm.
        loss_fn: ``nn.CrossEntropyLoss`` or ``nn.MSELoss``, reduction ``"mean"`` or ``"sum"``.
        data: an ``(X, y)`` pair or a re-iterable of batches; ``"mean"`` spans all of them.
        kind: a :class:`~lib.curvature.losses.FisherKind` or its string: ``"exact"``
            (expectation over the model's labels, C backward passes), ``"mc"``
            (``num_samples`` sampled labels), ``"empirical"`` (true labels) or ``"ggn"``
            (square root of the loss Hessian, C backward passes).
        num_samples: labels drawn per example for ``"mc"``.
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
    kind, loss, layers, batches, num_data, num_outputs = _prepare(
        model, loss_fn, data, kind, num_samples, unsupported)
    A, G = accumulate_factors(model, layers, loss, batches, kind, num_samples, seed, fold_bias,
                              num_data, num_outputs)
    factors = [KroneckerFactors(name, A[name], G[name], module.weight.shape,
                                module.bias is not None and module.bias.requires_grad, fold_bias)
               for name, module in layers]
    params = [p for _, module in layers for p in module.parameters(recurse=False) if p.requires_grad]
    names = [f"{name}.{pname}" if name else pname for name, module in layers
             for pname, p in module.named_parameters(recurse=False) if p.requires_grad]
    return KFACOperator(factors, names, dtype=params[0].dtype, device=params[0].device)


# --------------------------------------------------------------------------------------
# The operators
# --------------------------------------------------------------------------------------
def _eigh(M: Tensor) -> tuple[Tensor, Tensor]:
    evals, evecs = torch.linalg.eigh(0.5 * (M + M.T))
    return evals.clamp_min(0.0), evecs  # PSD by construction; clip round-off below zero


class _BlockOperator(LinearOperator):
    """A block-diagonal operator over layers; subclasses transform each layer's block.

    Every block is ``Q diag(vec M) Q^T`` in a Kronecker eigenbasis ``Q = Q_G kron Q_A``
    (:meth:`_layer_spectrum`), so the whole method set is exact and cheap (``exact``):
    ``trace``, ``logdet`` and ``eigvalsh`` from the ``d`` eigenvalues, ``diagonal`` as
    ``diag(Q diag(vec M) Q^T) = vec((Q_G * Q_G) M (Q_A * Q_A)^T)``, ``solve`` and ``inverse``
    in the same basis.
    """

    exact = EXACT_QUANTITIES

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

    def _layer_spectrum(self, index: int) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """``(Q_G, Q_A, M, M_b)``: the block of layer ``index`` is ``Q diag(vec M) Q^T``,
        ``M`` of shape ``(out, in')``; a separate bias block is ``Q_G diag(M_b) Q_G^T``
        (``M_b`` of shape ``(out,)``, None if the bias is folded or absent)."""
        raise NotImplementedError

    def _eigenvalues(self) -> Tensor:
        """All ``d`` eigenvalues, flat (known in closed form from the blocks)."""
        raise NotImplementedError

    def trace(self) -> float:
        """The sum of the eigenvalues."""
        return float(self._eigenvalues().sum())

    def frobenius_norm(self) -> float:
        """``||M||_F``, the norm of the eigenvalues (the operator is symmetric)."""
        return float(torch.linalg.vector_norm(self._eigenvalues().double()))

    def logdet(self, damping: float = 0.0) -> float:
        """``log det(self + damping I)`` from the eigenvalues; ``ValueError`` if singular."""
        values = self._eigenvalues() + check_damping(damping)
        if bool((values <= 0).any()):
            raise ValueError(f"the {type(self).__name__} matrix is singular (an eigenvalue is "
                             "<= 0); pass damping > 0")
        return float(values.log().sum())

    def eigvalsh(self, k: int | None = None) -> Tensor:
        """The ``k`` largest eigenvalues in ascending order, shape ``(k,)`` (None: all ``d``)."""
        return top_ascending(self._eigenvalues().sort().values, self._check_k(k)).to(self.dtype)

    def _layer_diagonal(self, index: int) -> tuple[Tensor, Tensor | None]:
        """The diagonal of layer ``index``'s block(s): ``(out, in')`` and ``(out,)`` or None."""
        QG, QA, M, Mb = self._layer_spectrum(index)
        D = (QG * QG) @ M.to(QG.dtype) @ (QA * QA).T
        return D, (None if Mb is None else (QG * QG) @ Mb.to(QG.dtype))

    def diagonal(self) -> Tensor:
        """The diagonal ``(d,)`` in closed form, block by block (no product with ``I``)."""
        parts = []
        for index, f in enumerate(self.factors):
            D, Db = self._layer_diagonal(index)
            if f.has_bias and f.fold_bias:
                D, Db = D[:, :-1], D[:, -1]
            parts.append(D.reshape(-1))
            if f.has_bias:
                parts.append(Db)
        return torch.cat(parts).to(self.dtype)

    def solve(self, v, damping: float = 0.0):
        """``(self + damping I)^-1 v`` for ``v`` of shape ``(d,)``, ``(d, k)`` or a list of
        parameter-shaped tensors (returned in the same form), exactly: ``inverse(damping) @ v``."""
        return self.inverse(damping) @ v

    def _spectral_function(self, damping: float, power: float) -> EKFACOperator:
        """``(self + damping I)^power`` as an operator in the same eigenbasis."""
        damping = check_damping(damping)
        spectra = [self._layer_spectrum(i) for i in range(len(self.factors))]
        scalings = [tuple(spectrum[2:]) for spectrum in spectra]
        values = torch.cat([t.reshape(-1) for pair in scalings for t in pair if t is not None])
        if bool((values + damping <= 0).any()):
            raise ValueError(f"the {type(self).__name__} matrix is singular; pass damping > 0")
        return EKFACOperator(self.factors, self.names, [tuple(spectrum[:2]) for spectrum in spectra], scalings,
                             dtype=self.dtype, device=self.device, damping=damping, power=power)

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
    """Block-diagonal ``G_l kron A_l`` over layers (plus ``damping * I``).

    Beyond ``@``, ``shape``, ``to_dense()`` and the operator algebra of
    :class:`~lib.operators.base.LinearOperator`, every quantity of the method set is exact
    (``exact``): ``trace`` and ``diagonal`` from the factors
    (``diag(G kron A) = diag G kron diag A``), and ``logdet``, ``eigvalsh``, ``solve`` and
    ``inverse`` from the factors' eigendecompositions ``A = Q_A L_A Q_A^T``,
    ``G = Q_G L_G Q_G^T``: the block's eigenvalues are the products ``l_G,i l_A,j``. So
    :func:`lib.operators.spectral.trace` of a K-FAC operator is exact.

    Attributes:
        factors: one :class:`~lib.curvature.factors.KroneckerFactors` per layer.
        names: names of the covered parameters, in the order of the flat vector.
        damping: the ``damping`` of ``+ damping * I`` (see :meth:`add_damping`).
    """

    def __init__(self, factors, names, dtype, device, damping: float = 0.0):
        super().__init__(factors, names, dtype, device)
        self.damping = check_damping(damping)
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
                          self.damping + check_damping(damping))
        op._eig = self._eig
        return op

    def eigendecompositions(self) -> list[tuple[Tensor, Tensor, Tensor, Tensor]]:
        """Per layer ``(l_A, Q_A, l_G, Q_G)``, computed once."""
        if self._eig is None:
            self._eig = [(*_eigh(f.A), *_eigh(f.G)) for f in self.factors]
        return self._eig

    def _separate_bias(self, index: int) -> bool:
        f = self.factors[index]
        return f.has_bias and not f.fold_bias

    def _layer_spectrum(self, index):
        lA, QA, lG, QG = self.eigendecompositions()[index]
        Mb = lG + self.damping if self._separate_bias(index) else None
        return QG, QA, torch.outer(lG, lA) + self.damping, Mb

    def _layer_diagonal(self, index):
        f = self.factors[index]
        dG, dA = torch.diagonal(f.G), torch.diagonal(f.A)
        return (torch.outer(dG, dA) + self.damping,
                dG + self.damping if self._separate_bias(index) else None)

    def _eigenvalues(self) -> Tensor:
        values = []
        for index, (lA, _, lG, _) in enumerate(self.eigendecompositions()):
            values.append(torch.outer(lG, lA).reshape(-1) + self.damping)
            if self._separate_bias(index):
                values.append(lG + self.damping)
        return torch.cat(values)

    def trace(self) -> float:
        """``sum_l tr(G_l) tr(A_l)`` (+ ``tr(G_l)`` for a separate bias, + ``damping * d``)."""
        total = self.damping * self.shape[0]
        for f in self.factors:
            total += float(torch.trace(f.G) * torch.trace(f.A))
            if f.has_bias and not f.fold_bias:
                total += float(torch.trace(f.G))
        return total

    def frobenius_norm(self) -> float:
        """``||K||_F``: ``sqrt(sum_l ||G_l||_F^2 ||A_l||_F^2 (+ ||G_l||_F^2 for a separate bias))``,
        from the factors (``||G kron A||_F = ||G||_F ||A||_F``); from the eigenvalues if damped."""
        if self.damping:
            return super().frobenius_norm()
        total = 0.0
        for f in self.factors:
            g2 = float(torch.linalg.matrix_norm(f.G.double()) ** 2)
            total += g2 * float(torch.linalg.matrix_norm(f.A.double()) ** 2)
            if f.has_bias and not f.fold_bias:
                total += g2
        return math.sqrt(total)

    def damped_factors(self, factor_damping: float, *, pi: bool = False) -> KFACOperator:
        """``(G + sqrt(lambda) / pi I) kron (A + pi sqrt(lambda) I)``, ``lambda =
        factor_damping``: Tikhonov damping on the factors, K-FAC's classical heuristic
        (:func:`lib.curvature.factors.tikhonov_factors`). With ``pi=True``, ``pi`` balances
        the factors' average eigenvalues (Martens & Grosse 2015, section 6.3); otherwise
        ``pi = 1``."""
        if self.damping:
            raise ValueError("damped_factors() needs an operator without added damping")
        factor_damping = check_damping(factor_damping, "factor_damping")
        damped = []
        for f in self.factors:
            A, G = tikhonov_factors(f.A, f.G, factor_damping, pi)
            damped.append(KroneckerFactors(f.name, A, G, f.weight_shape, f.has_bias, f.fold_bias))
        return KFACOperator(damped, self.names, self.dtype, self.device)

    def inverse(self, damping: float = 0.0, *, factor_damping: float = 0.0, pi: bool = False
                ) -> KFACInverseOperator:
        """``(K + damping I)^-1``, applied block by block without forming any ``d x d`` matrix.

        With ``factor_damping > 0``, the inverse of :meth:`damped_factors`
        ``(factor_damping, pi=pi)`` (plus ``damping I``), i.e. for ``damping = 0``
        ``(G + ...)^-1 kron (A + ...)^-1``, the update K-FAC's optimizer uses.
        """
        damping = check_damping(damping)
        if check_damping(factor_damping, "factor_damping") > 0:
            return KFACInverseOperator(self.damped_factors(factor_damping, pi=pi), damping)
        if pi:
            raise ValueError("pi splits factor_damping between the factors; pass factor_damping > 0")
        return KFACInverseOperator(self, damping)

    def inverse_sqrt(self, damping: float = 0.0) -> KFACInverseOperator:
        """The symmetric ``(K + damping I)^-1/2``: with it, ``lib.geometry.invariance`` whitens
        ``G^-1 H`` for a K-FAC metric exactly, so Lanczos runs without CG solves."""
        return KFACInverseOperator(self, check_damping(damping), power=-0.5)


class KFACInverseOperator(_BlockOperator):
    """``(K + damping I)^power`` (``power`` -1 or -1/2) for a :class:`KFACOperator` ``K``,
    block by block in its Kronecker eigenbasis: ``Q (L_G kron L_A + damping)^power Q^T``
    with ``Q = Q_G kron Q_A``. Every quantity of the method set is exact."""

    def __init__(self, op: KFACOperator, damping: float, power: float = -1.0):
        super().__init__(op.factors, op.names, op.dtype, op.device)
        self.op, self.damping, self.power = op, damping, power
        self._factor_inverses = None
        values = op._eigenvalues() + damping
        if bool((values <= 0).any()):
            raise ValueError("the K-FAC matrix is singular; pass damping > 0")

    def _eigenvalues(self) -> Tensor:
        return (self.op._eigenvalues() + self.damping) ** self.power

    def _layer_spectrum(self, index):
        lA, QA, lG, QG = self.op.eigendecompositions()[index]
        shift = self.damping + self.op.damping
        Mb = (lG + shift) ** self.power if self.op._separate_bias(index) else None
        return QG, QA, (torch.outer(lG, lA) + shift) ** self.power, Mb

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

    def inverse(self, damping: float = 0.0) -> _BlockOperator:
        """``(self + damping I)^-1``: the K-FAC operator ``K + damping' I`` itself for the
        plain inverse without further damping, else an operator in the same eigenbasis."""
        if check_damping(damping) == 0 and self.power == -1:
            return self.op.add_damping(self.damping)
        return self._spectral_function(damping, -1)


# --------------------------------------------------------------------------------------
# Eigenvalue-corrected K-FAC
# --------------------------------------------------------------------------------------
class EKFACOperator(_BlockOperator):
    """Eigenvalue-corrected K-FAC (George et al. 2018): K-FAC's Kronecker eigenbasis
    ``Q_G kron Q_A`` with the exact second moments of the gradients in that basis as
    eigenvalues, ``S_ij = c sum_{n,k} ((Q_G^T grad_nk Q_A)_ij)^2``.

    The method set of :class:`KFACOperator`, all exact. It keeps the eigenbases and the
    scalings only (not K-FAC's factors ``A`` and ``G``): the memory of NNGeometry's EKFAC.

    Args:
        factors: per layer, its :class:`~lib.curvature.factors.KroneckerFactors` (only their
            layout is kept: shapes, bias; ``A`` and ``G`` are dropped).
        names: names of the covered parameters, in the order of the flat vector.
        bases: per layer ``(Q_G, Q_A)``, orthogonal ``(out, out)`` and ``(in', in')``.
        scalings: per layer ``(S, S_b)``: ``(out, in')`` and, for a separate bias, ``(out,)``
            or None.
        damping, power: the operator applies ``(S + damping)^power`` in the basis.
    """

    def __init__(self, factors: list[KroneckerFactors], names: list[str], bases: list[tuple[Tensor, Tensor]],
                 scalings: list[tuple[Tensor, Tensor | None]], *, dtype, device, damping: float = 0.0,
                 power: float = 1):
        layouts = [dataclasses.replace(f, A=None, G=None) for f in factors]
        super().__init__(layouts, names, dtype, device)
        self.bases, self.scalings, self.damping, self.power = bases, scalings, damping, power

    def _scaled(self, index: int) -> tuple[Tensor, Tensor | None]:
        return tuple(None if t is None else (t + self.damping) ** self.power for t in self.scalings[index])

    def _layer_apply(self, index, M, Mb):
        QG, QA = (t.to(M.dtype) for t in self.bases[index])
        S, Sb = (None if t is None else t.to(M.dtype) for t in self._scaled(index))
        Rb = None if Mb is None else ((Mb @ QG) * Sb) @ QG.T
        return QG @ ((QG.T @ M @ QA) * S) @ QA.T, Rb

    def _layer_spectrum(self, index):
        return (*self.bases[index], *self._scaled(index))

    def _eigenvalues(self) -> Tensor:
        values = torch.cat([t.reshape(-1) for pair in self.scalings for t in pair if t is not None])
        return (values + self.damping) ** self.power

    def inverse(self, damping: float = 0.0) -> EKFACOperator:
        """``(E + damping I)^-1`` in the same eigenbasis."""
        return self._spectral_function(damping, -1)

    def inverse_sqrt(self, damping: float = 0.0) -> EKFACOperator:
        """The symmetric ``(E + damping I)^-1/2`` (see :meth:`KFACOperator.inverse_sqrt`)."""
        return self._spectral_function(damping, -0.5)


_MAX_ENTRIES = 2 ** 24  # numbers of per-example gradients EKFAC forms at once


def _eigenbasis_moments(module, a, T, g, basis, batch_size, fold_bias, scale):
    """A batch's share of a layer's EKFAC scalings: ``c sum (Q_G^T grad Q_A)^2`` over
    examples and columns, ``(out, in')``, and for a separate bias ``(out,)`` (else None).
    ``a``, ``T``, ``g`` as from :func:`lib.curvature.factors.layer_rows`."""
    QG, QA = basis
    K, B = g.shape[0], batch_size
    a = (a @ QA.to(a.dtype)).reshape(B, T, -1)                     # (B, T, in')
    rows = g.reshape(K, B, T, -1) @ QG.to(a.dtype)
    if T == 1:  # per-example gradient r a^T: its squares are (r * r)(a * a)^T, no (K, B, out, in')
        r2 = (rows[:, :, 0] ** 2).sum(dim=0)                       # (B, out)
        moment = scale * (r2.T @ a[:, 0] ** 2)
        summed = r2
    else:
        # per-example gradients in the eigenbasis, sum_t g_t a_t^T, (K, B', out, in'), for chunks
        # of examples: all at once they can outgrow memory (ResNet-50: 47 GB for 500 examples)
        moment = a.new_zeros(rows.shape[3], a.shape[2])
        chunk = max(1, _MAX_ENTRIES // (K * rows.shape[3] * a.shape[2]))
        for start in range(0, B, chunk):
            proj = torch.einsum("kbto,bti->kboi", rows[:, start:start + chunk], a[start:start + chunk])
            moment += (proj ** 2).sum(dim=(0, 1))
        moment = scale * moment
        summed = None
    bias = None
    if module.bias is not None and module.bias.requires_grad and not fold_bias:
        bias = scale * (summed.sum(dim=0) if T == 1 else (rows.sum(dim=2) ** 2).sum(dim=(0, 1)))
    return moment, bias


def ekfac(model: nn.Module, loss_fn: nn.Module, data, kind: str = "exact", *,
          num_samples: int = 1, fold_bias: bool = False, unsupported: str = "error",
          seed: int = 0) -> EKFACOperator:
    """Eigenvalue-corrected K-FAC; arguments as in :func:`kfac`.

    Two passes over the data: the first builds K-FAC's factors and their eigenbases, the
    second the second moments of the per-example gradients in that basis (with the same
    sampled labels for ``"mc"``).
    """
    op = kfac(model, loss_fn, data, kind, num_samples=num_samples, fold_bias=fold_bias,
              unsupported=unsupported, seed=seed)
    kind, loss, layers, batches, num_data, num_outputs = _prepare(
        model, loss_fn, data, kind, num_samples, unsupported)
    scale = loss.scale(num_data, num_outputs)
    bases = [(QG, QA) for _, QA, _, QG in op.eigendecompositions()]
    sums = [[None, None] for _ in layers]
    for X, rows in recorded_batches(model, layers, loss, batches, kind, num_samples, seed,
                                    fold_bias):
        for i, (module, a, T, g) in enumerate(rows):
            moment, bias = _eigenbasis_moments(module, a, T, g, bases[i], len(X), fold_bias,
                                               scale)
            old = sums[i]
            sums[i] = [moment if old[0] is None else old[0] + moment,
                       bias if old[1] is None else old[1] + bias]
    return EKFACOperator(op.factors, op.names, bases, [tuple(pair) for pair in sums], dtype=op.dtype,
                         device=op.device)
