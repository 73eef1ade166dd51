"""Where the book's data, downloads and caches live: the one owner of that decision.

Three places, in this order:

1. ``$BOOK_DATA``, when that environment variable is set (any folder you choose);
2. ``data/`` in the repository, when ``lib`` runs from a clone of the book (the folder
   git ignores, next to ``_config.yml``);
3. otherwise (the package installed with pip, on Colab, ...) a per-user cache folder:
   ``$XDG_CACHE_HOME/parameter-space-geometry`` or ``~/.cache/parameter-space-geometry``
   on Linux, ``~/Library/Caches/parameter-space-geometry`` on macOS and
   ``%LOCALAPPDATA%\\parameter-space-geometry\\Cache`` on Windows.

Never inside ``site-packages``: an installed package's folder may be read-only, is shared
by every user of the environment, and is wiped by the next upgrade.

Every cache file is written with :func:`write_atomically`, so an interrupted run leaves
either the old file or the new one, never half of one.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import IO, Callable

__all__ = ["DATA_ENV", "REPO_ROOT", "data_root", "in_clone", "resolve_root", "user_cache_dir",
           "write_atomically"]

DATA_ENV = "BOOK_DATA"
APP_NAME = "parameter-space-geometry"

# The folder holding the ``lib`` package: the repository root in a clone, and
# ``site-packages`` (or a ``--target`` folder) for an installed package.
REPO_ROOT = Path(__file__).resolve().parents[2]  # lib/book/paths.py -> the checkout


def in_clone() -> bool:
    """True when ``lib`` is imported from a clone of the book's repository (an editable
    install or a checkout on ``sys.path``), recognized by the book's own files beside it."""
    return all((REPO_ROOT / name).is_file() for name in ("_config.yml", "_toc.yml", "pyproject.toml"))


def user_cache_dir() -> Path:
    """The per-user cache folder of this platform for the book (not created)."""
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
        return base / APP_NAME / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / APP_NAME
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / APP_NAME


def data_root() -> Path:
    """The folder that data sets, downloads, checkpoints and caches go to (not created).

    ``$BOOK_DATA`` if set, else the repository's ``data/`` in a clone, else
    :func:`user_cache_dir` (see the module docstring).

    Raises:
        ValueError: ``$BOOK_DATA`` is set to a relative path (it would depend on the
            working directory, which differs between a notebook and a script).
    """
    chosen = os.environ.get(DATA_ENV)
    if chosen:
        path = Path(chosen).expanduser()
        if not path.is_absolute():
            raise ValueError(f"${DATA_ENV} must be an absolute path, got {chosen!r}")
        return path
    return REPO_ROOT / "data" if in_clone() else user_cache_dir()


def resolve_root(root: str | os.PathLike | None = None) -> Path:
    """``root`` as an absolute path: relative paths are taken inside :func:`data_root`.

    Args:
        root: a folder such as ``"checkpoints"``, an absolute path, or None for
            :func:`data_root` itself.

    Returns:
        The absolute ``Path`` (not created).
    """
    if root is None:
        return data_root()
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root must be a str, a path or None, got {type(root).__name__}")
    path = Path(root).expanduser()
    return path if path.is_absolute() else data_root() / path


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX only; a no-op elsewhere)."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    try:
        descriptor = os.open(directory, flags)
    except OSError:  # e.g. Windows, where directories cannot be opened
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def write_atomically(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Write a file so that readers (and a rerun after a crash) never see a partial one.

    ``write`` fills a hidden temporary file in the same folder, which is flushed and
    fsync'ed and then renamed over ``path`` with ``os.replace`` (atomic on POSIX and
    Windows); the rename is made durable by an fsync of the folder. If anything fails,
    the temporary file is removed and an existing ``path`` is left as it was.

    Args:
        path: the file to write; missing parent folders are created.
        write: called once with the open binary file, e.g.
            ``lambda f: torch.save(state, f)`` or ``lambda f: np.savez(f, **arrays)``.

    Returns:
        ``path`` as a ``Path``.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from lib.book.paths import write_atomically
        >>> folder = Path(tempfile.mkdtemp())
        >>> write_atomically(folder / "a" / "cache.bin", lambda f: f.write(b"data")).read_bytes()
        b'data'
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or path, got {type(path).__name__}")
    if not callable(write):
        raise TypeError(f"write must be callable, got {type(write).__name__}")
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.",
                                         suffix=".tmp", delete=False)
    try:
        with handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)
    return path
