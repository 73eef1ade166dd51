"""The train and test tensors of one data set (:class:`Split`), as every loader and generator returns them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["Split"]


@dataclass
class Split:
    """Train and test tensors of one data set.

    Attributes:
        X_train: inputs, shape ``(N_train, *feature_shape)``.
        y_train: targets, shape ``(N_train,)`` (int64 class labels) or
            ``(N_train, k)`` (float regression targets).
        X_test: inputs, shape ``(N_test, *feature_shape)``.
        y_test: targets, like ``y_train``.
        n_classes: number of classes; inferred as ``max label + 1`` for
            integer labels when not given, None for regression targets.
    """

    X_train: Tensor
    y_train: Tensor
    X_test: Tensor
    y_test: Tensor
    n_classes: int | None = None

    def __post_init__(self) -> None:
        for name in ("X_train", "y_train", "X_test", "y_test"):
            if not isinstance(getattr(self, name), Tensor):
                raise TypeError(f"Split.{name} must be a torch.Tensor, got "
                                f"{type(getattr(self, name)).__name__}")
        _check_same_length(self.X_train, self.y_train, "X_train", "y_train")
        _check_same_length(self.X_test, self.y_test, "X_test", "y_test")
        if self.X_train.shape[1:] != self.X_test.shape[1:]:
            raise ValueError(f"X_train has feature shape {tuple(self.X_train.shape[1:])} but "
                             f"X_test has {tuple(self.X_test.shape[1:])}")
        if self.n_classes is None and not self.y_train.is_floating_point():
            labels = torch.cat([self.y_train.flatten(), self.y_test.flatten()])
            self.n_classes = int(labels.max()) + 1 if labels.numel() else 0

    @property
    def n_features(self) -> int:
        """Number of input features per example, ``prod(feature_shape)``."""
        return int(np.prod(self.X_train.shape[1:]))

    @property
    def train(self) -> tuple[Tensor, Tensor]:
        """``(X_train, y_train)``, e.g. for :func:`lib.book.train.train`."""
        return self.X_train, self.y_train

    @property
    def test(self) -> tuple[Tensor, Tensor]:
        """``(X_test, y_test)``, e.g. as ``eval_data``."""
        return self.X_test, self.y_test

    @classmethod
    def from_arrays(cls, X_train: Any, y_train: Any, X_test: Any, y_test: Any, dtype: torch.dtype,
                    n_classes: int | None = None) -> Split:
        """A Split of arrays or tensors: inputs as ``dtype``, labels as int64 class labels."""
        return cls(torch.as_tensor(X_train, dtype=dtype), torch.as_tensor(y_train, dtype=torch.long),
                   torch.as_tensor(X_test, dtype=dtype), torch.as_tensor(y_test, dtype=torch.long),
                   n_classes)

    def to(self, device: str | torch.device) -> Split:
        """Return a new Split with all four tensors on ``device``."""
        return Split(self.X_train.to(device), self.y_train.to(device),
                     self.X_test.to(device), self.y_test.to(device), self.n_classes)

    def __repr__(self) -> str:
        return (f"Split(train={tuple(self.X_train.shape)}, test={tuple(self.X_test.shape)}, "
                f"n_classes={self.n_classes}, dtype={self.X_train.dtype}, "
                f"device={self.X_train.device})")


def _check_same_length(X: Tensor, y: Tensor, x_name: str = "X", y_name: str = "y") -> None:
    if X.ndim == 0 or y.ndim == 0:
        raise ValueError(f"{x_name} and {y_name} need a leading batch dimension")
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"{x_name} has {X.shape[0]} examples but {y_name} has {y.shape[0]}")
