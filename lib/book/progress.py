"""Progress bars that can be switched off for builds and tests.

Set the environment variable ``BOOK_PROGRESS=0`` (the Makefile does so for
the book build and the tests) so stored notebook outputs stay free of bars.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from typing import Any

__all__ = ["progress", "progress_enabled"]


def progress_enabled() -> bool:
    """Return False when the environment variable ``BOOK_PROGRESS`` is ``"0"``.

    Read on every call (not at import) so a notebook or test can flip it.
    """
    return os.environ.get("BOOK_PROGRESS", "1").strip() != "0"


def _tqdm_class():
    # Without ipywidgets, tqdm.auto warns once inside notebooks and falls
    # back to the text bar; that fallback is fine, the warning is noise.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from tqdm.auto import tqdm
    return tqdm


def progress(iterable: Iterable | None = None, desc: str | None = None,
             total: int | None = None, **kw: Any):
    """Wrap ``iterable`` in a tqdm progress bar (notebook widget when available).

    Args:
        iterable: anything iterable, e.g. ``range(epochs)``; may be None when
            the bar is driven manually with ``.update()``.
        desc: label shown left of the bar.
        total: number of items, for iterables without ``len``.
        **kw: passed to tqdm (e.g. ``leave=False``); ``disable=True`` forces
            the bar off even when progress is enabled.

    Returns:
        A tqdm object; iterating it yields the items of ``iterable``. When
        ``BOOK_PROGRESS == "0"`` the bar is disabled: it prints nothing but
        still iterates and accepts ``set_postfix``/``update`` calls.
    """
    disable = bool(kw.pop("disable", False)) or not progress_enabled()
    return _tqdm_class()(iterable, desc=desc, total=total, disable=disable, **kw)
