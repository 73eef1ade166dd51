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


def check_damping(value: Any, name: str = "damping") -> float:
    """Return ``value`` as a float if it is a finite number ``>= 0`` (the ``lambda`` of
    ``A + lambda I``); TypeError if it is not a number (bools are not), ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not value >= 0 or not np.isfinite(value):
        raise ValueError(f"{name} must be finite and >= 0, got {value}")
    return float(value)


def check_real(value: Any, name: str, *, minimum: float | None = None,
               strict: bool = False) -> float:
    """Return ``value`` as a finite float; TypeError if it is not a real number (bools are
    not; a one-element tensor is), ValueError if it is not finite or, with ``minimum``,
    below it (``strict``: not above it)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.dtype == torch.bool:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum}, got {value}")
    return value


def check_positive(value: Any, name: str) -> float:
    """Return ``value`` as a finite float ``> 0`` (see :func:`check_real`)."""
    return check_real(value, name, minimum=0.0, strict=True)


def check_choice(value: Any, name: str, choices: tuple) -> Any:
    """Return ``value`` if it is one of ``choices``; TypeError if the choices are strings and
    ``value`` is not one, ValueError if it is not among them."""
    if all(isinstance(c, str) for c in choices) and not isinstance(value, str):
        raise TypeError(f"{name} must be a str, one of {choices}, got {type(value).__name__} "
                        f"{value!r}")
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def check_bool(value: Any, name: str) -> bool:
    """Return ``value`` if it is a bool, else raise TypeError naming it."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return value


def check_module(model: Any, name: str = "model") -> torch.nn.Module:
    """Return ``model`` if it is a ``torch.nn.Module``, else raise TypeError naming it."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {type(model).__name__}")
    return model


def check_callable(fn: Any, name: str, usage: str = "") -> Any:
    """Return ``fn`` if it is callable, else raise TypeError naming it (``usage``, e.g.
    ``"loss_fn(outputs, targets)"``, says how it is called)."""
    if not callable(fn):
        how = f" as {usage}" if usage else ""
        raise TypeError(f"{name} must be callable{how}, got {type(fn).__name__}")
    return fn


def check_float_tensor(x: Any, name: str) -> torch.Tensor:
    """Return ``x`` if it is a floating-point tensor, else raise TypeError naming it."""
    if not isinstance(x, torch.Tensor) or not torch.is_floating_point(x):
        raise TypeError(f"{name} must be a floating-point tensor, got {type(x).__name__}")
    return x


def check_shape_like(ref: torch.Tensor, x: Any, name: str) -> torch.Tensor:
    """Return ``x`` if it is a floating-point tensor of ``ref``'s shape; TypeError or
    ValueError naming it otherwise."""
    check_float_tensor(x, name)
    if x.shape != ref.shape:
        raise ValueError(f"{name} must have shape {tuple(ref.shape)}, got {tuple(x.shape)}")
    return x


def check_vector(x: Any, name: str, dim: int | None = None, *, owner: str = "") -> torch.Tensor:
    """Return ``x`` if it is a finite, flat, floating-point ``(d,)`` tensor (with ``d == dim``
    when given; ``owner`` says what fixes ``dim`` in the message); TypeError if it is not a
    floating-point tensor, ValueError otherwise."""
    check_float_tensor(x, name)
    if x.ndim != 1:
        raise ValueError(f"{name} must be a flat vector of shape (d,), got shape {tuple(x.shape)}")
    if dim is not None and x.shape[0] != dim:
        raise ValueError(f"{name} has shape {tuple(x.shape)}, but {owner or 'it must have'} "
                         f"({dim},)")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or infinite entries")
    return x


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
