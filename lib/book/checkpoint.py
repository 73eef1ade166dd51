"""Crash-safe checkpoints for long runs, cached under ``data/``.

A long computation saves its completed work with :func:`save_atomic` so that
an interrupted run (kernel restart, Ctrl-C, killed job) loses nothing: a
checkpoint file is either the complete old version or the complete new one,
never half written. :func:`load_checkpoint` reads it back with
``torch.load(..., weights_only=True)``, which only rebuilds tensors and plain
Python data (numbers, strings, None, lists, tuples, dicts) and never runs
code from the file, so a checkpoint cannot hide arbitrary pickled objects.

:func:`lib.book.train.train` uses these through its ``checkpoint=`` argument::

    from lib.book.checkpoint import checkpoint_path

    history = train(model, loss_fn, split.train, optimizer, epochs=50,
                    batch_size=128, checkpoint=checkpoint_path("ch3-sgd-lr0.1"))

Checkpoints live in ``checkpoints/`` inside the data folder by default (the
repository's ``data/``, which git ignores, in a clone; see :mod:`lib.book.paths`);
delete a file there to recompute it from scratch.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import zipfile
from pathlib import Path, PurePath
from typing import Any, Callable

import torch

from .paths import resolve_root, write_atomically

__all__ = ["save_atomic", "load_checkpoint", "checkpoint_path", "cached", "ResultCache", "CHECKPOINT_SUFFIX"]

CHECKPOINT_SUFFIX = ".pt"

# What torch.load raises for a truncated, empty or otherwise damaged file.
_CORRUPT_ERRORS = (pickle.UnpicklingError, EOFError, RuntimeError, KeyError, ValueError,
                   IndexError, TypeError, AttributeError, UnicodeDecodeError, zipfile.BadZipFile)


def _as_path(path: str | os.PathLike, name: str = "path") -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a str or path, got {type(path).__name__}")
    return Path(path).expanduser()


def save_atomic(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` with ``torch.save`` so readers never see a partial file.

    Written by :func:`lib.book.paths.write_atomically`: a hidden temporary file in the
    same directory, fsync'ed and renamed over ``path``; if anything fails, an
    existing ``path`` is left untouched.

    Args:
        state: a dict of tensors and plain Python data (numbers, strings,
            None, lists, tuples, dicts of those), e.g. ``model.state_dict()``
            plus bookkeeping. Anything else would make :func:`load_checkpoint`
            refuse the file, because it loads with ``weights_only=True``.
        path: the file to write; missing parent directories are created.
            Relative paths are taken from the current directory (use
            :func:`checkpoint_path` for paths relative to the repository).

    Returns:
        ``path`` as a ``Path``.
    """
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict, got {type(state).__name__}")
    return write_atomically(_as_path(path), lambda handle: torch.save(state, handle))


def load_checkpoint(path: str | os.PathLike,
                    map_location: str | torch.device | None = None) -> dict[str, Any] | None:
    """Load a checkpoint written by :func:`save_atomic`, or None if there is none.

    Loading uses ``torch.load(path, weights_only=True)``: only tensors and
    plain Python data are rebuilt, no code from the file is executed.

    Args:
        path: the checkpoint file.
        map_location: passed to ``torch.load``, e.g. ``"cpu"`` to load a
            checkpoint written on a GPU machine.

    Returns:
        The saved dict, or None if ``path`` does not exist.

    Raises:
        ValueError: naming ``path``, if the file is corrupt or truncated, holds
            objects that ``weights_only`` loading refuses, or is not a dict.
            Delete the file to recompute it.
    """
    path = _as_path(path)
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights only" in str(error).lower():
            raise ValueError(
                f"checkpoint {path} holds objects other than tensors and plain Python data, "
                "which weights_only loading refuses; delete it to recompute it "
                f"({str(error).splitlines()[0]})") from error
        raise ValueError(f"checkpoint {path} is corrupt or truncated; delete it to recompute it "
                         f"({type(error).__name__}: {error})") from error
    except _CORRUPT_ERRORS as error:
        message = str(error).splitlines()[0] if str(error) else ""
        raise ValueError(f"checkpoint {path} is corrupt or truncated; delete it to recompute it "
                         f"({type(error).__name__}: {message})") from error
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path} holds a {type(state).__name__}, expected a dict")
    return state


def checkpoint_path(name: str, root: str | os.PathLike = "checkpoints", *,
                    key: dict[str, Any] | None = None) -> Path:
    """Path of the checkpoint called ``name`` under ``root``.

    Args:
        name: e.g. ``"ch3-sgd-lr0.1"`` or ``"ch3/sgd-lr0.1"`` (subfolders are
            allowed, ``..`` and absolute paths are not). ``".pt"`` is appended
            unless the name already ends with it.
        root: folder of the checkpoints; relative paths are taken inside the data
            folder (see :func:`lib.book.paths.data_root`), so the same call works from
            ``chapters/``.
        key: optional settings of the run (JSON-serializable); a digest of them is
            appended to the name, so a run with other settings gets its own file
            instead of meeting a checkpoint it does not match.

    Returns:
        The absolute path (neither the file nor its folder is created).
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    pure = PurePath(name)
    if not name.strip() or pure.is_absolute() or ".." in pure.parts or name.endswith(("/", "\\")):
        raise ValueError(
            f"name must be a relative file name inside root without '..', got {name!r}")
    if key is not None:
        if not isinstance(key, dict):
            raise TypeError(f"key must be a dict of settings, got {type(key).__name__}")
        text = json.dumps(key, sort_keys=True, default=str)
        name = name.removesuffix(CHECKPOINT_SUFFIX) + "-" + hashlib.sha1(text.encode()).hexdigest()[:12]
    if not name.endswith(CHECKPOINT_SUFFIX):
        name += CHECKPOINT_SUFFIX
    return resolve_root(root) / name


def cached(path: str | os.PathLike | None, key: dict[str, Any], compute: Callable[[], Any]) -> Any:
    """The result stored at ``path`` under ``key``, or ``compute()``, saved atomically first.

    For finished pieces of a long run (e.g. one seed's measurements): a rerun after an
    interruption returns them from disk instead of recomputing them.

    Args:
        path: the cache file (see :func:`checkpoint_path`), or None to always compute.
        key: plain data naming everything the result depends on (settings, seed). A file
            holding another key is recomputed and overwritten, so a changed setting never
            returns a stale result.
        compute: called without arguments; must return tensors and plain Python data
            (what ``weights_only`` loading accepts).

    Returns:
        The (cached) result.
    """
    if not isinstance(key, dict):
        raise TypeError(f"key must be a dict of plain data, got {type(key).__name__}")
    if not callable(compute):
        raise TypeError(f"compute must be callable, got {type(compute).__name__}")
    if path is None:
        return compute()
    state = load_checkpoint(path)
    if state is not None and state.get("key") == key:
        return state["result"]
    result = compute()
    save_atomic({"key": key, "result": result}, path)
    return result


class ResultCache:
    """A chapter's cache of finished results, one file per result under ``checkpoints/<folder>/``.

    ``cache(name, key, compute)`` is :func:`cached` at ``checkpoint_path(f"{folder}/{name}",
    key=full_key)``, where ``full_key`` is ``key`` with the ``base`` entries (seed, version,
    ...) that every result of the chapter depends on; a disabled cache always computes.

    Example:
        >>> cache = ResultCache("demo", enabled=False, seed=0)
        >>> cache("square", {"x": 3}, lambda: 3 ** 2)
        9
    """

    def __init__(self, folder: str, *, enabled: bool = True, **base: Any):
        if not isinstance(enabled, bool):
            raise TypeError(f"enabled must be True or False, got {type(enabled).__name__}")
        checkpoint_path(folder)  # checks the folder name
        self.folder, self.enabled, self.base = folder, enabled, dict(base)

    def key(self, key: dict[str, Any]) -> dict[str, Any]:
        """``key`` with the cache's base entries (those of ``key`` win)."""
        if not isinstance(key, dict):
            raise TypeError(f"key must be a dict of plain data, got {type(key).__name__}")
        return {**self.base, **key}

    def path(self, name: str, key: dict[str, Any]) -> Path | None:
        """The file of result ``name`` under ``key``, or None when the cache is disabled."""
        return checkpoint_path(f"{self.folder}/{name}", key=self.key(key)) if self.enabled else None

    def __call__(self, name: str, key: dict[str, Any], compute: Callable[[], Any]) -> Any:
        """The cached result ``name`` under ``key``, or ``compute()`` (saved when enabled)."""
        return cached(self.path(name, key), self.key(key), compute)
