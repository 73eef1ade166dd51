"""Every formula of every page survives MyST parsing whole.

When a ``$$ ... $$`` block follows a line of text without a blank line between them, the
block is part of the paragraph, and a line inside it that starts with ``- `` or ``+ `` (or
``1. ``, ``> ``, ``# ``) is read by the Markdown parser as a list item, a quote or a heading
before the math extension sees it: the formula is cut in two and renders as broken text,
and the strict build does not notice. The same happens to ``$ ... $`` spanning two lines. This test parses each Markdown cell with the book's own MyST
configuration (the extensions of _config.yml) and checks that every display-math block of
the source comes out as one math token with the same content.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
import yaml
from markdown_it.renderer import RendererHTML
from myst_parser.config.main import MdParserConfig
from myst_parser.parsers.mdit import create_md_parser

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted((ROOT / "chapters").rglob("*.ipynb")) + sorted((ROOT / "chapters").rglob("*.md"))
CODE_FENCE = re.compile(r"^(`{3,}|~{3,})(?!\{).*?^\1", re.S | re.M)
DISPLAY_MATH = re.compile(r"\$\$(.+?)\$\$", re.S)
INLINE_MATH = re.compile(r"(?<![\\$])\$(?!\$)(.+?)(?<![\\$])\$(?!\$)", re.S)
CODE_SPAN = re.compile(r"`[^`]*`")


def parser():
    with open(ROOT / "_config.yml", encoding="utf8") as f:
        extensions = yaml.safe_load(f)["parse"]["myst_enable_extensions"]
    return create_md_parser(MdParserConfig(enable_extensions=set(extensions)), RendererHTML)


def markdown_cells(path: Path) -> list[str]:
    if path.suffix == ".md":
        return [path.read_text(encoding="utf8")]
    notebook = nbformat.read(path, as_version=4)
    return [cell.source for cell in notebook.cells if cell.cell_type == "markdown"]


def tokens(items, md):
    """Every token, also inside inline children and inside directives (``:::{exercise}``,
    whose body MyST parses separately: it is parsed here the same way)."""
    for token in items:
        yield token
        if token.children:
            yield from tokens(token.children, md)
        if token.type in ("colon_fence", "fence") and token.info.startswith("{"):
            body = re.sub(r"\A(?::[\w-]+:.*\n)+", "", token.content)  # the directive's options
            yield from tokens(md.parse(body), md)


def squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def lost_formulas(markdown: str, md) -> list[str]:
    """The math of ``markdown`` (``$$ ... $$`` blocks and ``$ ... $`` spans, also across
    lines) that does not come out of the parser as one math token."""
    source = CODE_SPAN.sub("", CODE_FENCE.sub("", markdown))
    parsed = {squash(t.content) for t in tokens(md.parse(markdown), md)
              if t.type.startswith("math") or t.type == "amsmath"}
    formulas = DISPLAY_MATH.findall(source) + INLINE_MATH.findall(DISPLAY_MATH.sub(" ", source))
    return [formula for formula in map(squash, formulas) if formula not in parsed]


def test_the_check_catches_a_line_that_starts_with_a_minus():
    md = parser()
    assert lost_formulas("Text\n$$\na = b\n- c\n$$\n", md) == ["a = b - c"]
    assert lost_formulas("Text\n$$\na = b\n+ c\n$$\n", md) == ["a = b + c"]
    assert lost_formulas("Text\n\n$$\na = b\n- c\n$$\n", md) == []  # a block of its own
    assert lost_formulas("Text\n$$\na = b -\nc\n$$\n", md) == []  # reflowed
    assert lost_formulas("Text $a = b\n- c$ more\n", md) == ["a = b - c"]  # inline, two lines
    assert lost_formulas("Text $a = b -\nc$ and $d$, costs \\$5\n", md) == []


@pytest.mark.parametrize("path", PAGES, ids=lambda p: str(p.relative_to(ROOT / "chapters")))
def test_every_formula_survives_parsing(path):
    md = parser()
    lost = [formula[:80] for cell in markdown_cells(path) for formula in lost_formulas(cell, md)]
    assert not lost, (f"{path.name}: these formulas are cut by the Markdown parser (a line inside "
                      f"the formula starts with '- ', '+ ' or similar: reflow it, or put a blank line "
                      f"before a $$ block): {lost}")
