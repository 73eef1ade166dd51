"""Author-year labels for the bibliography, so that the list matches the in-text citations.

The chapters cite author-year ("Kristiadi et al. (2023)"); pybtex's styles label the list
with numbers or alpha codes. This Sphinx extension registers the pybtex style
``authoryear``: entries sorted by author, year and title and labelled
"Kristiadi et al., 2023" (with a, b, ... for the same authors and year).
"""

from __future__ import annotations

from collections import Counter

import pybtex.plugin
from pybtex.style.formatting.unsrt import Style as UnsrtStyle
from pybtex.style.labels import BaseLabelStyle
from pybtex.style.sorting.author_year_title import SortingStyle


def _names(entry) -> str:
    people = entry.persons.get("author") or entry.persons.get("editor") or []
    if not people:
        return str(entry.fields.get("organization") or entry.fields.get("title", entry.key))
    last = [" ".join(p.last_names).replace("{", "").replace("}", "") for p in people]
    if len(last) == 1:
        return last[0]
    if len(last) == 2:
        return f"{last[0]} and {last[1]}"
    return f"{last[0]} et al."


class AuthorYearLabels(BaseLabelStyle):
    """Labels "Name, year", with a suffix where two entries would share one."""

    def format_labels(self, sorted_entries):
        entries = list(sorted_entries)
        bases = [f"{_names(e)}, {e.fields.get('year', 'n.d.')}" for e in entries]
        repeated, seen = Counter(bases), Counter()
        for base in bases:
            if repeated[base] == 1:
                yield base
            else:
                yield base + "abcdefghijklmnopqrstuvwxyz"[seen[base]]
                seen[base] += 1


class AuthorYearStyle(UnsrtStyle):
    default_label_style = AuthorYearLabels
    default_sorting_style = SortingStyle


def setup(app):
    pybtex.plugin.register_plugin("pybtex.style.formatting", "authoryear", AuthorYearStyle)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
