"""The correlation spectra a study of sloppiness plots, for a model and its data (Mao 2025, chapter 4).

Introduced for the chapter "Sloppiness" (issue 18). Each function returns eigenvalues in
descending order (float64), as the source plots them:

* :func:`input_spectrum`: the input correlations ``E[x x^T]`` (flattened inputs, uncentred);
* :func:`activation_spectra`: per ``nn.Linear`` / ``nn.Conv2d`` layer, the correlations of its
  input ``E[a a^T]`` (for a convolution, of its unfolded patches): K-FAC's factor ``A``
  (:func:`lib.curvature.kronecker.kfac`), so the activations of layer ``k`` appear as the
  inputs of layer ``k + 1``;
* :func:`activation_gradient_spectra`: per layer, the correlations of the gradients with
  respect to its output, ``c sum_{n,k} g g^T`` for the Fisher ``kind``: K-FAC's factor ``G``;
* :func:`logit_jacobian_spectrum`: the correlations of the logit Jacobians,
  ``(1 / N) sum_n J_n^T J_n``, whose nonzero eigenvalues are those of the ``N C x N C`` tangent
  kernel ``J J^T / N`` (:func:`lib.curvature.jacobians.ntk`), so they cost an ``N C`` problem
  rather than a ``d`` one.

The Fisher's and the Hessian's come from the operators themselves (``op.eigvalsh(k)``: dense
``eigh`` or Lanczos), K-FAC's in closed form from its factors.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .jacobians import ntk
from .kronecker import kfac

__all__ = ["input_spectrum", "activation_spectra", "activation_gradient_spectra", "logit_jacobian_spectrum"]


def _descending(values: Tensor) -> Tensor:
    return values.detach().to(torch.float64).sort(descending=True).values


def input_spectrum(X: Tensor) -> Tensor:
    """Eigenvalues of ``E[x x^T] = X^T X / N`` for inputs ``X`` ``(N, ...)`` (flattened), ``(D,)``."""
    if not isinstance(X, Tensor) or X.ndim < 2 or len(X) == 0:
        raise ValueError("X must be a non-empty tensor of inputs (N, ...)")
    flat = X.reshape(len(X), -1).to(torch.float64)
    return _descending(torch.linalg.eigvalsh(flat.T @ flat / len(X)))


def _factor_spectra(model: nn.Module, loss_fn: nn.Module, data, kind: str, which: str) -> dict[str, Tensor]:
    op = kfac(model, loss_fn, data, kind)
    return {f.name: _descending(torch.linalg.eigvalsh(getattr(f, which).to(torch.float64))) for f in op.factors}


def activation_spectra(model: nn.Module, loss_fn: nn.Module, data) -> dict[str, Tensor]:
    """``{layer name: eigenvalues of E[a a^T]}`` of every ``nn.Linear`` / ``nn.Conv2d`` layer's input
    ``a`` (a convolution's patches, averaged over positions), ``(in',)`` each; ``data`` an ``(X, y)``
    pair or batches (the labels are not used, but K-FAC's checks of the data apply)."""
    return _factor_spectra(model, loss_fn, data, "exact", "A")


def activation_gradient_spectra(model: nn.Module, loss_fn: nn.Module, data, kind: str = "exact"
                                ) -> dict[str, Tensor]:
    """``{layer name: eigenvalues of c sum g g^T}`` of the gradients with respect to every layer's
    output, ``(out,)`` each, for the Fisher ``kind`` (``"exact"``: expected over the model's labels;
    ``"empirical"``: at the true labels; ``"mc"``, ``"ggn"``), with the loss's reduction constant ``c``."""
    return _factor_spectra(model, loss_fn, data, kind, "G")


def logit_jacobian_spectrum(model: nn.Module, X: Tensor) -> Tensor:
    """The ``N C`` largest eigenvalues of ``(1 / N) sum_n J_n^T J_n`` (every other one is 0), from
    the tangent kernel ``J J^T / N``; ``J_n`` the ``C x d`` Jacobian of the logits of example ``n``."""
    if not isinstance(X, Tensor) or len(X) == 0:
        raise ValueError("X must be a non-empty tensor of inputs (N, ...)")
    K = ntk(model, X)
    return _descending(torch.linalg.eigvalsh(K.to(torch.float64) / len(X))).clamp_min(0.0)
