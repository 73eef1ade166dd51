"""Argument checks shared by the library's modules, so every error reads the same."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

MAX_SEED = 2**32 - 1  # numpy's legacy global seeding accepts 0 <= seed < 2**32


def check_int(value: Any, name: str, minimum: int = 1) -> int:
    """Return ``value`` as an int; TypeError if it is not an integer (bools are not),
    ValueError if it is below ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_seed(seed: Any, name: str = "seed") -> int:
    """Return ``seed`` as an int in ``[0, 2**32 - 1]``, else raise TypeError/ValueError."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"{name} must be a non-negative int, got {type(seed).__name__} {seed!r}")
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"{name} must be an int in [0, 2**32 - 1], got {seed}")
    return int(seed)


def check_square_matrix(matrix: Any, name: str) -> torch.Tensor:
    """Return ``matrix`` if it is a finite, square, floating-point ``(d, d)`` tensor;
    TypeError if it is not a floating tensor, ValueError otherwise."""
    if not isinstance(matrix, torch.Tensor) or not torch.is_floating_point(matrix):
        raise TypeError(f"{name} must be a floating-point tensor")
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"{name} must be a square matrix, got shape {tuple(matrix.shape)}")
    if not bool(torch.isfinite(matrix).all()):
        raise ValueError(f"{name} contains NaN or infinite entries")
    return matrix


def check_finite(tensor: torch.Tensor, name: str) -> torch.Tensor:
    """Return ``tensor`` if all its entries are finite, else raise ValueError naming it.

    A finite sum implies finite entries, so one reduction settles the common case; the
    elementwise check (about 10x slower on large tensors) runs only to confirm a
    non-finite sum, which may also be an overflow of finite entries.
    """
    if not bool(torch.isfinite(tensor.sum())) and not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} contains NaN or infinite entries")
    return tensor


def check_float_dtype(dtype: Any, name: str = "dtype") -> torch.dtype:
    """Return ``dtype`` if it is a floating ``torch.dtype``, else raise TypeError naming it."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating torch.dtype such as torch.float32, got {dtype!r}")
    return dtype


def check_non_negative(value: Any, name: str) -> float:
    """Return ``value`` as a float if it is a real number >= 0; TypeError if it is not a
    number (bools are not), ValueError if it is negative or NaN."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if not value >= 0:  # also rejects NaN
        raise ValueError(f"{name} must be >= 0, got {value}")
    return float(value)
