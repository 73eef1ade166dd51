"""Each chapter's presets, declared as data: one module per chapter, named after it.

A chapter module (``lib/book/presets/curvature.py`` for ``chapters/curvature.ipynb``) holds

* ``KNOBS``: ``{knob: what it sets}``, in the order the settings table prints them;
* ``PRESETS``: ``{preset: {knob: value}}`` with ``"tiny"`` (CI), ``"small"`` (the stored
  outputs) and ``"paper"`` (the source's scale);
* ``RULES`` (optional): explicit rules where inference from the values cannot know them,
  see :mod:`lib.book.rules`;
* ``RELATIONS`` (optional): ``[(predicate, message)]`` between knobs.

They live in the library, not beside the chapter, so that a chapter opened alone (Colab,
a downloaded notebook) finds them in the installed package. The chapter's set-up cell
calls ``lib.setup(preset, "curvature", device=device, seed=seed, knobs=knobs)``;
``python -m lib.book.run curvature --list`` prints the knobs, their values and what they set.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ChapterPresets", "load", "chapters"]


@dataclass(frozen=True)
class ChapterPresets:
    """A chapter's declared presets: ``knobs`` ``{name: description}``, ``presets``
    ``{preset: {knob: value}}``, ``rules`` ``{knob: rule}`` and ``relations``."""

    chapter: str
    knobs: Mapping[str, str]
    presets: Mapping[str, Mapping[str, Any]]
    rules: Mapping[str, Any] = field(default_factory=dict)
    relations: tuple[tuple[Callable[..., bool], str], ...] = ()

    def table(self) -> str:
        """Every knob with its value in each preset and what it sets, as aligned text."""
        names = list(self.presets)
        rows = [["knob", *names, "what it sets"]]
        rows += [[knob, *(repr(self.presets[p].get(knob)) for p in names), about]
                 for knob, about in self.knobs.items()]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
        return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1]
                         for row in rows)


def chapters() -> list[str]:
    """The names of the chapters that declare presets here."""
    return sorted(info.name for info in pkgutil.iter_modules(__path__) if not info.name.startswith("_"))


def load(chapter: str) -> ChapterPresets:
    """The presets of ``chapter`` (a chapter's name, e.g. ``"curvature"``).

    Raises:
        TypeError: ``chapter`` is not a string.
        ValueError: no chapter of that name declares presets, or its ``KNOBS`` and
            ``PRESETS`` disagree on the knobs' names.
    """
    if not isinstance(chapter, str):
        raise TypeError(f"chapter must be a chapter's name (str), got {type(chapter).__name__}")
    known = chapters()
    if chapter not in known:
        raise ValueError(f"no presets for chapter {chapter!r}; chapters with presets: {', '.join(known)}")
    module = importlib.import_module(f"{__name__}.{chapter}")
    declared = ChapterPresets(chapter, module.KNOBS, module.PRESETS, getattr(module, "RULES", {}),
                              tuple(getattr(module, "RELATIONS", ())))
    for name, knobs in declared.presets.items():
        if list(knobs) != list(declared.knobs):
            differ = sorted(set(knobs) ^ set(declared.knobs))
            raise ValueError(f"preset {name!r} of {chapter} must set exactly the knobs of KNOBS, in "
                             f"their order; it differs in {differ or 'the order'}")
    return declared
