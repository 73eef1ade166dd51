"""The loss in output space: reduction, output curvature, sampled labels, Fisher kinds.

Every curvature object of :mod:`lib.curvature` sees the loss ``L = c * sum_n l(f_n, y_n)``
through one :class:`Loss`: the reduction constant ``c``, the per-example loss ``l``, its
gradient and Hessian with respect to the model output ``f_n`` of shape ``(C,)``, and labels
drawn from the model's likelihood (Monte-Carlo Fisher). :class:`FisherKind` names the
Fisher variants; every function that takes one calls its argument ``kind``.
"""

from __future__ import annotations

import math
from enum import Enum

import torch
from torch import Tensor, nn

__all__ = ["FisherKind", "Loss", "fisher_kind", "multinomial_cholesky"]


class FisherKind(str, Enum):
    """The Fisher variants, passed as ``kind=`` (a member or its plain string value).

    A member compares equal to its string (``FisherKind.MC == "mc"``), so code and callers
    may use either. With ``g_n`` the gradient of ``l`` at a label ``y`` and ``c`` the
    reduction constant:
    """

    #: ``c sum_n E_{y ~ p(y | x_n)}[g_n g_n^T]``: the expectation over the model's labels,
    #: in closed form (a sum over the ``C`` classes for cross-entropy, ``2 I`` in output
    #: space for the squared error). Equals the GGN for both supported losses.
    EXACT = "exact"
    #: The expectation replaced by the mean over ``num_samples`` labels drawn from the
    #: model's likelihood (seeded, so the operator is one fixed matrix).
    MC = "mc"
    #: ``c sum_n g_n g_n^T`` at the data's own labels; not a Fisher in general.
    EMPIRICAL = "empirical"
    #: The generalized Gauss-Newton ``c sum_n J_n^T (d^2 l / d f^2) J_n`` written from the
    #: loss Hessian (K-FAC only; :func:`lib.curvature.products.ggn` is the GGN operator).
    GGN = "ggn"

    def __str__(self) -> str:
        return self.value


def fisher_kind(kind, allowed=tuple(FisherKind), name: str = "kind") -> FisherKind:
    """``kind`` (a :class:`FisherKind` or its string value) as a member of ``allowed``.

    Raises:
        ValueError: ``kind`` names no member of ``allowed``; the message lists them.
    """
    values = [str(k) for k in allowed]
    if not isinstance(kind, str) or str(kind) not in values:
        raise ValueError(f"unknown Fisher {name} {kind!r}; choose one of {tuple(values)}")
    return FisherKind(str(kind))


class Loss:
    """Output-space view of a supported loss, for a batch of outputs ``f`` of shape ``(B, C)``.

    ``per-sample`` is the unreduced term ``l(f_n, y_n)`` that the reduction sums or
    averages; for MSE ``l = sum_c (f_c - y_c)^2``, so that ``mean`` divides by ``N C``
    exactly as ``nn.MSELoss`` does. Read as negative log-likelihoods, cross-entropy is a
    categorical model and the squared error a Gaussian with covariance ``I / 2``.

    Args:
        loss_fn: ``nn.CrossEntropyLoss`` (no class weights, no label smoothing) or
            ``nn.MSELoss``, with reduction ``"mean"`` or ``"sum"``.

    Attributes:
        name: ``"cross_entropy"`` or ``"mse"``.
        loss_fn: the module given.
        reduction: ``"mean"`` or ``"sum"``.

    Raises:
        ValueError: another loss, class weights or label smoothing, or reduction ``"none"``.
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
        """``ValueError`` unless outputs ``f`` and targets ``y`` fit the loss:
        cross-entropy needs ``f`` of shape ``(B, C)`` and integer ``y`` of shape ``(B,)``,
        MSE ``y`` of ``f``'s shape."""
        if self.name == "cross_entropy" and f.ndim != 2:
            raise ValueError(f"model output must have shape (batch, outputs), got {tuple(f.shape)}")
        if self.name == "cross_entropy" and (y.ndim != 1 or y.dtype not in (torch.int64, torch.int32)):
            raise ValueError("cross-entropy targets must be class indices of shape (batch,)")
        if self.name == "mse" and y.shape != f.shape:
            raise ValueError(f"MSE targets have shape {tuple(y.shape)}, outputs {tuple(f.shape)}")

    def scale(self, num_data: int, num_outputs: int) -> float:
        """The constant ``c`` in ``L = c * sum_n l_n`` for ``num_data`` points of
        ``num_outputs`` outputs: ``1`` (sum), ``1 / N`` or ``1 / (N C)`` (mean: CE, MSE)."""
        if self.reduction == "sum":
            return 1.0
        return 1.0 / (num_data * num_outputs if self.name == "mse" else num_data)

    def summed(self, f: Tensor, y: Tensor) -> Tensor:
        """``sum_n l(f_n, y_n)`` over a batch; a scalar.

        Written with elementary ops rather than ``nn.MSELoss`` because the latter's
        derivative formulas break under forward-over-reverse differentiation.
        """
        if self.name == "mse":
            return ((f - y) ** 2).sum()
        return nn.functional.cross_entropy(f, y, reduction="sum")

    def hessian_product(self, f: Tensor, u: Tensor) -> Tensor:
        """``(d^2 l / d f^2) u`` per sample; ``f``, ``u``: ``(B, C)`` -> ``(B, C)``."""
        if self.name == "mse":
            return 2.0 * u
        p = f.softmax(dim=1)
        return p * u - p * (p * u).sum(dim=1, keepdim=True)

    def gradient(self, f: Tensor, y: Tensor) -> Tensor:
        """``d l(f_n, y_n) / d f_n`` per sample; ``(B, C)``."""
        if self.name == "mse":
            return 2.0 * (f - y)
        return f.softmax(dim=1) - nn.functional.one_hot(y.long(), f.shape[1]).to(f.dtype)

    def sample_gradients(self, f: Tensor, num_samples: int, generator: torch.Generator) -> Tensor:
        """Gradients ``d l / d f`` at labels drawn from the model's likelihood; ``(S, B, C)``.

        Cross-entropy: ``y ~ Categorical(softmax f)``. MSE: ``l = ||f - y||^2`` is the
        negative log-likelihood of ``N(f, I/2)`` up to a constant, so
        ``y = f + xi / sqrt(2)`` and ``g = 2 (f - y) = -sqrt(2) xi``.
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
        """``E_y[g g^T] u`` per sample, by its definition as an expectation; ``(B, C)``.

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

    def curvature_columns(self, f: Tensor, y: Tensor | None, kind, num_samples: int,
                          generator: torch.Generator | None, *, minimal: bool = False) -> Tensor:
        """Columns ``S`` with ``sum_k S_k S_k^T`` the per-example output curvature of ``kind``.

        Args:
            f: outputs ``(B, d_1, ..., d_m)``, read as ``C = d_1 ... d_m`` outputs (MSE
                only: cross-entropy needs ``(B, C)``, which :meth:`check_output` enforces).
            y: targets (used by ``"empirical"`` only; may be None otherwise).
            kind: a :class:`FisherKind`.
            num_samples, generator: labels drawn per example for ``"mc"``, and their stream.
            minimal: for cross-entropy's exact Fisher and GGN, ``C - 1`` columns instead of
                ``C``: ``diag(p) - p p^T`` has rank ``C - 1`` (its null space is the constant
                vector), and its Cholesky factor (Tanabe & Sagae 1992,
                :func:`multinomial_cholesky`) has a zero last column, dropped. The same
                matrix with one backpropagation fewer per example; a square-root factor
                ``R`` of the Fisher then has ``N (C - 1)`` rows.

        Returns:
            ``(K, *f.shape)``: ``K = C`` (exact, GGN; ``C - 1`` with ``minimal`` for
            cross-entropy), ``num_samples`` (MC) or 1 (empirical).

        The squared error sums over all entries and its output Hessian is ``2 I``, so the
        columns are those of the Fisher (= GGN) of :mod:`lib.curvature` with that ``C``.
        curvlinops instead moves the extra dimensions into the batch and backpropagates
        each of its ``d_m`` type-2 columns through all positions at once: the same matrix
        where the positions are ones a layer is applied at (weight sharing, K-FAC
        "expand"), but not the GGN where they mix inside the network (e.g. an
        ``nn.Unflatten`` of one layer's output); its Monte-Carlo and empirical Fishers
        agree with these columns in both cases (``tests/test_input_checks.py``).

        * ``"exact"``: the Fisher by definition, ``E_y[g g^T] = sum_c p_c g_c g_c^T``, so
          the columns are ``sqrt(p_c) g_c`` (cross-entropy) or ``sqrt(2) e_c`` (MSE).
        * ``"ggn"``: a square root of the loss Hessian ``d^2 l / d f^2``: for cross-entropy
          ``diag(sqrt p) - p sqrt(p)^T`` (columns ``sqrt(p_c) (e_c - p)``), for MSE
          ``sqrt(2) I``. For these two losses it equals the exact Fisher; it is written
          from the Hessian so that the tests can check that theorem.
        * ``"mc"``: gradients at ``num_samples`` labels drawn from the model, over ``sqrt(S)``.
        * ``"empirical"``: the gradient at the true label.
        """
        shape = f.shape
        f = f.reshape(len(f), -1)
        if self.name == "mse" and y is not None:
            y = y.reshape(len(y), -1)
        if minimal and self.name == "cross_entropy" and kind in ("exact", "ggn"):
            S = multinomial_cholesky(f.softmax(dim=1)).permute(2, 0, 1)
        else:
            S = self._flat_columns(f, y, kind, num_samples, generator)
        return S.reshape(S.shape[0], *shape)

    def _flat_columns(self, f, y, kind, num_samples, generator) -> Tensor:
        """:meth:`curvature_columns` for outputs ``f`` of shape ``(B, C)``; ``(K, B, C)``."""
        B, C = f.shape
        if kind == "mc":
            return self.sample_gradients(f, num_samples, generator) / math.sqrt(num_samples)
        if kind == "empirical":
            return self.gradient(f, y)[None]
        eye = torch.eye(C, dtype=f.dtype, device=f.device)
        if self.name == "mse":
            return math.sqrt(2.0) * eye[:, None, :].expand(C, B, C)
        p = f.softmax(dim=1)
        sqrt_p = p.sqrt().T[:, :, None]  # (C, B, 1)
        if kind == "exact":
            return sqrt_p * (p[None] - eye[:, None, :])
        return sqrt_p * eye[:, None, :] - p[None] * sqrt_p


def multinomial_cholesky(p: Tensor) -> Tensor:
    """The Cholesky factor of the multinomial covariance ``diag(p) - p p^T``, without its zero
    last column: ``L`` of shape ``(B, C, C - 1)`` with ``L_b L_b^T = diag(p_b) - p_b p_b^T``.

    The closed form of Tanabe & Sagae (1992): with the tail masses ``q_j = sum_{i > j} p_i``,
    column ``j`` is ``sqrt(d_j) (e_j - [i > j] p_i / q_j)``, ``d_j = p_j q_j / (p_j + q_j)``.
    The tails are summed from the end (not as ``1 - cumsum``), so a tail much smaller than 1
    keeps its relative precision; a column whose tail is exactly zero is zero (``d_j = 0``).

    Args:
        p: probabilities ``(B, C)``, rows summing to 1.

    Example:
        >>> import torch
        >>> p = torch.tensor([[0.5, 0.3, 0.2]], dtype=torch.float64)
        >>> L = multinomial_cholesky(p)
        >>> L.shape, bool(torch.allclose(L[0] @ L[0].T, torch.diag(p[0]) - torch.outer(p[0], p[0])))
        (torch.Size([1, 3, 2]), True)
    """
    C = p.shape[1]
    tail_from = p.flip(1).cumsum(1).flip(1)                        # sum_{i >= j} p_i
    q, head = tail_from[:, 1:], tail_from[:, :-1]                  # (B, C - 1)
    d = torch.where(head > 0, p[:, :-1] * q / head.clamp_min(torch.finfo(p.dtype).tiny), 0.0)
    ratio = p[:, :, None] / q.clamp_min(torch.finfo(p.dtype).tiny)[:, None, :]  # p_i / q_j
    below = torch.ones(C, C - 1, dtype=torch.bool, device=p.device).tril(-1)     # i > j
    eye = torch.eye(C, C - 1, dtype=p.dtype, device=p.device)
    return torch.where(below, -ratio, eye) * d.sqrt()[:, None, :]
