"""The "Library reference" part of the book, generated from the docstrings of ``lib``.

Writes ``reference/index.md`` (one line per module, its docstring's first sentence) and
``reference/<module>.md`` for every public module of ``lib`` (Sphinx autodoc renders the
docstrings at build time). ``_toc.yml`` picks the pages up with a glob, so a new module
only needs ``make reference`` (this script); ``--check`` (run by the tests) fails when a
page is missing or stale.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "reference"

INDEX_HEAD = """# Library reference

The chapters run on `lib`, the book's library; everything a chapter computes comes from
here. Each page below is generated from the docstrings of one module (shapes, defaults,
the errors it raises, and the source each formula comes from). Install the library on its
own with `pip install "{install}"` (the README has the details) and
import it as `import lib`.

| module | what it holds |
| --- | --- |
"""


def modules() -> list[str]:
    """Every public module of ``lib`` (no name part starting with ``_``), sorted."""
    sys.path.insert(0, str(ROOT))
    package = importlib.import_module("lib")
    names = [info.name for info in pkgutil.walk_packages(package.__path__, "lib.")]
    return sorted(n for n in names if not any(part.startswith("_") for part in n.split(".")))


def summary(name: str) -> str:
    """The first sentence of a module's docstring, for the index table."""
    doc = (importlib.import_module(name).__doc__ or "").strip()
    first = doc.split("\n\n")[0].replace("\n", " ")
    return first.replace("|", "\\|")


def page(name: str) -> str:
    """A module's or subpackage's page documents what it defines itself (not what it
    re-exports, which has its own page)."""
    return (f"# `{name}`\n\n```{{eval-rst}}\n.. automodule:: {name}\n   :members:\n"
            f"   :ignore-module-all:\n   :show-inheritance:\n```\n")


def pages() -> dict[Path, str]:
    """Each generated page and its text."""
    names = modules()
    rows = "".join(f"| {{doc}}`{name} <{name}>` | {summary(name)} |\n" for name in names)
    sys.path.insert(0, str(ROOT / "tools"))
    import metadata

    head = INDEX_HEAD.replace("{install}", metadata.read().install_source.replace("@main", ""))
    out = {OUT / "index.md": head + rows}
    out.update({OUT / f"{name}.md": page(name) for name in names})
    return out


def stale() -> list[Path]:
    """Pages that are missing or differ from what the docstrings give, and stray pages."""
    wanted = pages()
    out = [p for p, text in wanted.items() if not p.exists() or p.read_text("utf8") != text]
    return out + [p for p in OUT.glob("*.md") if p not in wanted]


if __name__ == "__main__":
    if sys.argv[1:] == ["--check"]:
        bad = stale()
        for path in bad:
            print(f"{path.relative_to(ROOT)} is out of date: run `make reference`")
        sys.exit(1 if bad else 0)
    OUT.mkdir(exist_ok=True)
    wanted = pages()
    for path in OUT.glob("*.md"):
        if path not in wanted:
            path.unlink()
    for path, text in wanted.items():
        if not path.exists() or path.read_text("utf8") != text:
            path.write_text(text, encoding="utf8")
            print(f"wrote {path.relative_to(ROOT)}")
