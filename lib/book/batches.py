"""Data as batches: the one place where the library turns ``data`` into ``(X, y)`` batches.

Everything that evaluates a model's loss over data takes ``data`` in the same two forms:

* an ``(X, y)`` pair of tensors with the same number of rows (cut into consecutive
  batches of ``batch_size`` rows where a function takes ``batch_size``; otherwise one
  batch), or
* an iterable of such pairs (a list, a ``torch.utils.data.DataLoader``, ...), used as it
  is.

:func:`as_batches` returns a validated list; :func:`batch_source` keeps a re-iterable
source (a ``DataLoader`` streams its batches on every pass, so a data set that does not
fit in memory still works) and lists a one-shot iterator so that it can be replayed.
:func:`check_batch` is the per-batch check both use. :func:`batches` cuts and optionally
shuffles a pair into mini-batches for training.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from .._checks import check_int

__all__ = ["Batch", "is_pair", "check_pair", "check_batch", "batch_source", "as_batches", "batches"]

Batch = tuple[Tensor, Tensor]


def is_pair(data: Any) -> bool:
    """True when ``data`` is a tuple or list of exactly two tensors."""
    return isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data)


def check_pair(X: Any, y: Any, name: str) -> Batch:
    """Return ``(X, y)`` if both are tensors with the same, non-zero number of rows along
    dim 0; TypeError or ValueError naming ``name`` otherwise."""
    if not isinstance(X, Tensor) or not isinstance(y, Tensor):
        raise TypeError(f"{name} must be a pair of tensors (X, y), got "
                        f"{type(X).__name__} and {type(y).__name__}")
    if X.ndim == 0 or y.ndim == 0 or X.shape[0] != y.shape[0]:
        raise ValueError(f"{name}: X has shape {tuple(X.shape)} but y has shape {tuple(y.shape)}; "
                         "they need the same number of rows (examples along dim 0)")
    return X, y


def check_batch(batch: Any, index: int) -> Batch:
    """Return batch number ``index`` of an iterable as an ``(X, y)`` pair, or raise
    TypeError if it is not a pair of tensors and ValueError if their lengths differ."""
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise TypeError(f"batch {index} is not an (X, y) pair of tensors, got {type(batch).__name__}")
    return check_pair(*batch, name=f"batch {index}")


def _check_source(data: Any) -> None:
    if hasattr(data, "X_train"):  # a lib.book.data.Split: which half is meant is not ours to guess
        raise TypeError("pass split.train or split.test (an (X, y) pair), not the whole Split")
    if isinstance(data, (Tensor, str, bytes)) or not isinstance(data, Iterable):
        raise TypeError("data must be an (X, y) pair of tensors or an iterable of (X, y) batches, "
                        f"got {type(data).__name__}")


def batch_source(data: Any) -> Iterable[Batch]:
    """``data`` as something that yields its ``(X, y)`` batches on every pass.

    A pair becomes a one-batch list, a one-shot iterator (a generator) is listed so it can
    be replayed, and any other iterable is returned as it is; its batches are checked by
    whoever iterates (with :func:`check_batch`), so a ``DataLoader`` is never loaded whole.

    Raises:
        TypeError: ``data`` is neither a pair of tensors nor an iterable of batches.
    """
    if is_pair(data):
        return [tuple(data)]
    _check_source(data)
    return list(data) if iter(data) is data else data


def as_batches(data: Any, *, batch_size: int | None = None,
               device: torch.device | str | None = None) -> list[Batch]:
    """``data`` as a checked list of ``(X, y)`` batches.

    Args:
        data: an ``(X, y)`` pair of tensors of shapes ``(N, ...)`` and ``(N, ...)``, or an
            iterable of such pairs.
        batch_size: rows per batch when ``data`` is a pair (the last batch may be
            smaller); None keeps the pair as one batch. Not allowed with an iterable,
            whose batches are used as they are.
        device: where to move every batch; None leaves them where they are.

    Returns:
        A non-empty list of ``(X_b, y_b)`` pairs with ``len(X_b) == len(y_b) >= 1``.

    Raises:
        TypeError: ``data`` or one of its batches is not made of tensors.
        ValueError: X and y of a batch differ in length, a batch or ``data`` is empty, or
            ``batch_size`` is given with an iterable.

    Example:
        >>> import torch
        >>> from lib.book.batches import as_batches
        >>> X, y = torch.zeros(5, 3), torch.zeros(5)
        >>> [len(Xb) for Xb, yb in as_batches((X, y), batch_size=2)]
        [2, 2, 1]
    """
    if batch_size is not None:
        batch_size = check_int(batch_size, "batch_size")
    if is_pair(data):
        X, y = check_pair(*data, name="data")
        pairs = [(X, y)] if batch_size is None else list(zip(X.split(batch_size), y.split(batch_size)))
    else:
        _check_source(data)
        if batch_size is not None:
            raise ValueError("batch_size applies only when data is an (X, y) pair of tensors; "
                             "an iterable of batches is used as it is")
        pairs = [check_batch(batch, index) for index, batch in enumerate(data)]
    if not pairs:
        raise ValueError("data is empty: it holds no batches")
    if any(len(X) == 0 for X, _ in pairs):
        raise ValueError("data contains an empty batch")
    if device is not None:
        pairs = [(X.to(device), y.to(device)) for X, y in pairs]
    return pairs


def batches(X: Tensor, y: Tensor, batch_size: int, *, shuffle: bool = False,
            generator: torch.Generator | None = None) -> list[Batch]:
    """Cut ``(X, y)`` into mini-batches along the first dimension, for training.

    Args:
        X: inputs, shape ``(N, ...)``.
        y: targets, shape ``(N, ...)``.
        batch_size: examples per batch; the last batch may be smaller.
        shuffle: permute the examples first.
        generator: CPU ``torch.Generator`` for the permutation; None uses
            torch's global generator (seeded by :func:`lib.book.config.setup`).

    Returns:
        List of ``ceil(N / batch_size)`` tuples ``(X_batch, y_batch)`` of shapes
        ``(B, ...)``; without shuffling they are views of ``X`` and ``y``.
    """
    if not isinstance(X, Tensor) or not isinstance(y, Tensor):
        raise TypeError(f"X and y must be tensors, got {type(X).__name__} and {type(y).__name__}")
    if len(X) != len(y):
        raise ValueError(f"X has {len(X)} rows but y has {len(y)}")
    batch_size = check_int(batch_size, "batch_size")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if shuffle:
        order = torch.randperm(X.shape[0], generator=generator).to(X.device)
        X, y = X[order], y[order.to(y.device)]
    return [(X[start:start + batch_size], y[start:start + batch_size])
            for start in range(0, X.shape[0], batch_size)]
