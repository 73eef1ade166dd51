"""One consistent look for every figure in the book.

Call :func:`use_style` once at the top of a chapter, create figures with
:func:`new_figure` and give every axis a title and labelled axes (with
units where they exist) via :func:`label`.
"""

from __future__ import annotations

from typing import Any

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np

from .._checks import check_int

__all__ = ["BOOK_STYLE", "COLORS", "use_style", "new_figure", "label", "cell_edges"]

# Colour-blind-safe palette (Okabe & Ito), used as the default colour cycle.
#: The default colour cycle.
COLORS = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]

#: matplotlib rcParams of every figure in the book (applied by :func:`use_style`).
BOOK_STYLE: dict[str, Any] = {
    "figure.dpi": 110,
    "savefig.dpi": 110,
    "figure.figsize": (5.0, 3.5),
    "figure.constrained_layout.use": True,
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.prop_cycle": mpl.cycler(color=COLORS),
    "lines.linewidth": 1.6,
    "lines.markersize": 4,
    "legend.frameon": False,
    "image.cmap": "viridis",
}

# Size of one panel in inches; multi-panel figures grow with the grid.
_PANEL_WIDTH, _PANEL_HEIGHT = 4.0, 3.0


def use_style() -> None:
    """Apply :data:`BOOK_STYLE` to matplotlib's global rcParams (idempotent)."""
    mpl.rcParams.update(BOOK_STYLE)


def new_figure(ncols: int = 1, nrows: int = 1, *, width: float | None = None,
               height: float | None = None, squeeze: bool = True, **subplot_kw: Any):
    """Create a figure in the book's style with a grid of axes.

    Args:
        ncols, nrows: grid of panels.
        width, height: figure size in inches; by default 4.0 x 3.0 per panel
            (capped at 12 inches wide so figures fit the page).
        squeeze: as in ``plt.subplots``: a single Axes for a 1x1 grid, a 1-D
            array for one row or column; False always gives a 2-D array.
        **subplot_kw: passed to ``plt.subplots`` (e.g. ``sharey=True``).

    Returns:
        ``(fig, axes)`` like ``plt.subplots``, with constrained layout.
    """
    ncols, nrows = check_int(ncols, "ncols"), check_int(nrows, "nrows")
    use_style()
    width = width if width is not None else min(_PANEL_WIDTH * ncols, 12.0)
    height = height if height is not None else _PANEL_HEIGHT * nrows
    if width <= 0 or height <= 0:
        raise ValueError(f"width and height must be positive, got {width} x {height}")
    return plt.subplots(nrows, ncols, figsize=(width, height), squeeze=squeeze,
                        layout="constrained", **subplot_kw)


def label(ax, title: str | None = None, xlabel: str | None = None,
          ylabel: str | None = None):
    """Set the title and axis labels of ``ax`` (None leaves that one unchanged).

    Args:
        ax: a matplotlib Axes.
        title: panel title.
        xlabel, ylabel: axis labels; include units, e.g. ``"step size (lr)"``.

    Returns:
        ``ax``, for chaining.
    """
    if not hasattr(ax, "set_title") or isinstance(ax, np.ndarray):
        raise TypeError(f"ax must be a single matplotlib Axes, got {type(ax).__name__}")
    for text, setter in ((title, ax.set_title), (xlabel, ax.set_xlabel), (ylabel, ax.set_ylabel)):
        if text is None:
            continue
        if not isinstance(text, str):
            raise TypeError(f"labels must be strings, got {type(text).__name__} {text!r}")
        setter(text)
    return ax


def cell_edges(values: Any, log: bool = False) -> np.ndarray:
    """Edges of heat-map cells centred on a grid, for ``pcolormesh``.

    Args:
        values: ``(k,)`` grid points, k >= 2, increasing (positive where ``log``).
        log: centre the cells on a log axis (geometric midpoints).

    Returns:
        ``(k + 1,)`` edges: the midpoints between neighbours and, at both ends, the
        outer points half a step beyond the first and last value.

    Example:
        >>> cell_edges([1.0, 2.0, 3.0]).tolist()
        [0.5, 1.5, 2.5, 3.5]
    """
    v = np.log(values) if log else np.asarray(values, dtype=float)
    if v.ndim != 1 or len(v) < 2:
        raise ValueError(f"values must be a 1-d grid of at least 2 points, got shape {np.shape(values)}")
    e = np.concatenate([[1.5 * v[0] - 0.5 * v[1]], (v[1:] + v[:-1]) / 2, [1.5 * v[-1] - 0.5 * v[-2]]])
    return np.exp(e) if log else e
