"""Plain-text tables for the key numbers a chapter prints.

Numbers are rounded to a few significant digits so that nbval compares stored and
fresh outputs across machines without tripping over float round-off.
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral, Real

from .._checks import check_int

__all__ = ["format_table", "show_table", "percent"]


def _cell(value, digits: int) -> str:
    if isinstance(value, Real) and not isinstance(value, Integral):
        return f"{float(value):.{digits}g}"
    return str(value)


def format_table(header: Sequence, rows: Sequence[Sequence], digits: int = 3) -> str:
    """An aligned text table, right-justified; floats get ``digits`` significant digits.

    Args:
        header: column titles, length ``m``.
        rows: rows of length ``m`` (numbers, strings, anything with ``str``).
        digits: significant digits of floats (ints and bools are printed as they are).

    Returns:
        The table as one string, one line per row, header first.
    """
    digits = check_int(digits, "digits")
    text = [[_cell(x, digits) for x in row] for row in [header, *rows]]
    for i, row in enumerate(text[1:], start=1):
        if len(row) != len(header):
            raise ValueError(f"row {i} has {len(row)} cells, the header {len(header)}")
    widths = [max(len(row[j]) for row in text) for j in range(len(header))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in text)


def show_table(header: Sequence, rows: Sequence[Sequence], digits: int = 3) -> None:
    """Print :func:`format_table` (same arguments)."""
    print(format_table(header, rows, digits))


def percent(share: float) -> str:
    """A share in per cent with as many decimals as it takes not to round a value below 1
    up to "100 %" (0.9996 -> "99.96 %"; introduced in the training-manifold chapter)."""
    for digits in range(5):
        text = f"{100 * share:.{digits}f}"
        if float(text) < 100 or share >= 1:
            return text + " %"
    return f"{100 * share:.5f} %"
