"""Checks of a model and its data, run once when a curvature object is built.

Every operator of :mod:`lib.curvature` (products, K-FAC, EKFAC) inspects its model and
data here, so that bad data fail when the object is built, with an error that names the
problem, instead of deep inside a product.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._checks import check_finite
from ..book.batches import check_batch

__all__ = ["PROBE_SIZE", "inspect_data", "check_deterministic_forward", "check_no_stochastic_layers"]

PROBE_SIZE = 16
"""How many inputs of the first batch :func:`inspect_data` evaluates twice to check that the
forward pass is deterministic."""


def inspect_data(model: nn.Module, batches, device, dtype) -> tuple[int, int]:
    """Validate the batches once, when an operator is built; return ``N`` and ``C``.

    * every batch is an ``(X, y)`` pair of equal lengths; floating-point inputs ``X``
      have the model's dtype (``TypeError``); ``X`` and floating-point targets ``y`` are
      finite (``ValueError``). This rides on the counting pass over the batches that
      builds ``N`` anyway, one reduction per tensor, never a pass per product;
    * the first :data:`PROBE_SIZE` inputs of the first non-empty batch are evaluated twice
      (without gradients) and the outputs compared (:func:`check_deterministic_forward`;
      a few inputs suffice, since a random operation changes some of their outputs almost
      surely, and they cost a fraction of a forward pass): a forward pass that draws random
      numbers (dropout through ``F.dropout`` in a custom module, noise injection) would
      make every product a different matrix, and no module type reveals it (curvlinops
      probes the same way). The module types that do reveal it are checked first, by
      :func:`check_no_stochastic_layers`.

    Args:
        model: the network.
        batches: a re-iterable of ``(X, y)`` batches (see :mod:`lib.book.batches`).
        device, dtype: those of the model's parameters.

    Returns:
        The number of data points ``N`` and of outputs per point ``C``.

    Raises:
        TypeError: floating-point inputs of another dtype than ``dtype``.
        ValueError: empty data, NaN or infinite inputs or targets, a forward pass that is
            not deterministic.
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
    return num_data, check_deterministic_forward(model, first[:PROBE_SIZE].to(device))


def check_deterministic_forward(model: nn.Module, X: Tensor) -> int:
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


def check_no_stochastic_layers(model: nn.Module, what: str = "the loss"):
    """``ValueError`` naming the first module whose training mode makes ``what`` (the loss,
    a Jacobian, a kernel) depend on the batch (BatchNorm) or on chance (every dropout:
    ``_DropoutNd`` is the base of ``Dropout``, ``Dropout1d/2d/3d``, ``AlphaDropout`` and
    ``FeatureAlphaDropout``)."""
    stochastic_types = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)
    for name, module in model.named_modules():
        if isinstance(module, stochastic_types) and module.training:
            raise ValueError(f"module '{name or type(module).__name__}' "
                             f"({type(module).__name__}) is in training mode, which makes {what} "
                             "depend on the batch or on chance; call model.eval() first")
