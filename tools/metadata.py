"""The book's metadata lives in one place, pyproject.toml; this script copies it everywhere else.

``[project]`` holds the version, the authors and the repository address, ``[tool.book]`` the
title, the year and the release date. From them this script writes

* ``_config.yml``: ``author``, ``copyright``, ``repository.url`` and ``html.baseurl``;
* ``CITATION.cff``: the whole file;
* ``chapters/intro.md``: the BibTeX entry between the ``citation`` markers;
* every chapter: the set-up cell that installs the library outside a clone (Colab).

Publishing under the real address is then one edit of pyproject.toml followed by
``make metadata`` (this script). ``tests/test_metadata.py`` runs ``--check``, which fails
when any file is out of step with pyproject.toml.

Usage: ``python tools/metadata.py`` (write) or ``python tools/metadata.py --check``.
"""

from __future__ import annotations

import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CITATION_START, CITATION_END = "<!-- citation:start -->", "<!-- citation:end -->"
INSTALL_TAG = "install-lib"  # tag of the chapters' set-up cell that installs the library


@dataclass(frozen=True)
class Metadata:
    """What pyproject.toml says about the book."""

    name: str
    version: str
    title: str
    authors: tuple[str, ...]
    year: str
    released: str
    repository: str
    license: str
    text_license: str

    @property
    def pages(self) -> str:
        """Address of the published HTML (GitHub Pages of the repository)."""
        match = re.fullmatch(r"https://github\.com/([^/]+)/([^/]+?)/?", self.repository)
        if not match:
            raise ValueError(f"the repository URL {self.repository!r} is not a GitHub repository")
        owner, repo = match.groups()
        return f"https://{owner.lower()}.github.io/{repo}/"

    @property
    def install_source(self) -> str:
        """What the chapters' install cell hands to pip: the library from the repository."""
        return f"{self.name} @ git+{self.repository}@main"


def read(root: Path = ROOT) -> Metadata:
    """The metadata from ``root/pyproject.toml``."""
    with open(root / "pyproject.toml", "rb") as f:
        data = tomllib.load(f)
    project, book = data["project"], data["tool"]["book"]
    return Metadata(name=project["name"], version=project["version"], title=book["title"],
                    authors=tuple(a["name"] for a in project["authors"]), year=str(book["year"]),
                    released=str(book["released"]), repository=project["urls"]["Repository"],
                    license=project["license"], text_license=book["text-license"])


# ----------------------------------------------------------------------------- files
def config_yml(text: str, meta: Metadata) -> str:
    """``_config.yml`` with the metadata fields replaced (comments and order kept)."""
    replacements = [
        (r'^author: .*$', f'author: "{", ".join(meta.authors)}"'),
        (r'^copyright: .*$', f'copyright: "{meta.year}"'),
        (r'^(repository:\n  url: ).*$', rf'\g<1>{meta.repository}'),
        (r'^(html:\n  baseurl: ).*$', rf'\g<1>{meta.pages}'),
    ]
    for pattern, replacement in replacements:
        text, count = re.subn(pattern, replacement, text, count=1, flags=re.M)
        if count != 1:
            raise ValueError(f"_config.yml has no line matching {pattern!r}")
    return text


def _cff_person(name: str) -> str:
    return f'  - name: "{name}"'


def citation_cff(meta: Metadata) -> str:
    """The whole ``CITATION.cff`` (Citation File Format 1.2.0)."""
    authors = "\n".join(_cff_person(a) for a in meta.authors)
    return f"""# Written by tools/metadata.py from pyproject.toml; edit pyproject.toml, then run `make metadata`.
cff-version: 1.2.0
message: "If you use this book or its library, please cite it as below, together with the sources of the chapters you used."
type: software
title: "{meta.title}"
version: "{meta.version}"
date-released: "{meta.released}"
authors:
{authors}
license:
  - {meta.license}
  - {meta.text_license}
repository-code: "{meta.repository}"
url: "{meta.pages}"
keywords:
  - Hessian
  - Fisher information
  - natural gradient
  - K-FAC
  - sharpness
  - information geometry
  - executable book
preferred-citation:
  type: book
  title: "{meta.title}: An Executable Book"
  authors:
{chr(10).join('  ' + _cff_person(a) for a in meta.authors)}
  year: {meta.year}
  version: "{meta.version}"
  url: "{meta.pages}"
"""


def bibtex(meta: Metadata) -> str:
    """The BibTeX entry the intro page shows."""
    authors = " and ".join(f"{{{a}}}" for a in meta.authors)
    return (f"```bibtex\n@book{{parameter_space_geometry,\n  author  = {{{authors}}},\n"
            f"  title   = {{{meta.title}: An Executable Book}},\n  year    = {{{meta.year}}},\n"
            f"  version = {{{meta.version}}},\n  url     = {{{meta.pages}}},\n}}\n```")


def intro_md(text: str, meta: Metadata) -> str:
    """``chapters/intro.md`` with the BibTeX block between the citation markers replaced."""
    pattern = re.compile(re.escape(CITATION_START) + r".*?" + re.escape(CITATION_END), re.S)
    if not pattern.search(text):
        raise ValueError(f"chapters/intro.md has no {CITATION_START} ... {CITATION_END} block")
    return pattern.sub(lambda _: f"{CITATION_START}\n{bibtex(meta)}\n{CITATION_END}", text)


def install_cell_source(meta: Metadata) -> str:
    """The chapters' install cell: pip-installs the library only where ``lib`` is missing
    (Colab, a notebook downloaded alone); in a clone it only checks that ``lib`` is ours."""
    return f'''# Outside a clone of the book (Colab, a downloaded notebook) install its library first.
import importlib, importlib.util, os, subprocess, sys
if importlib.util.find_spec("lib") is None:
    source = os.environ.get("BOOK_LIB_SOURCE", "{meta.install_source}")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", source], check=True)
    importlib.invalidate_caches()
if getattr(importlib.import_module("lib"), "__distribution__", None) != "{meta.name}":
    raise ImportError("another package called 'lib' hides the book's library: "
                      "pip uninstall it, or run the chapter from a clone of the book")'''


def chapter(text: str, meta: Metadata) -> str:
    """A chapter notebook (JSON text) with its install cell brought up to date."""
    import nbformat

    notebook = nbformat.reads(text, as_version=4)
    cells = [c for c in notebook.cells if INSTALL_TAG in c.get("metadata", {}).get("tags", [])]
    if len(cells) > 1:
        raise ValueError(f"expected one cell tagged {INSTALL_TAG!r}, found {len(cells)}")
    if not cells:  # a new chapter: the install cell goes right after the parameters cell
        index = next(i for i, c in enumerate(notebook.cells)
                     if "parameters" in c.get("metadata", {}).get("tags", []))
        cell = nbformat.v4.new_code_cell("", metadata={"tags": [INSTALL_TAG, "hide-cell"]})
        notebook.cells.insert(index + 1, cell)
        cells = [cell]
    if cells[0].source == install_cell_source(meta):
        return text
    cells[0].source = install_cell_source(meta)
    return nbformat.writes(notebook) + "\n"


# ----------------------------------------------------------------------------- driver
def targets(root: Path = ROOT) -> dict[Path, callable]:
    """Each generated file and the function that writes its new text from (old text, meta)."""
    files = {root / "_config.yml": config_yml,
             root / "CITATION.cff": lambda _, meta: citation_cff(meta),
             root / "chapters" / "intro.md": intro_md}
    for path in sorted((root / "chapters").glob("*.ipynb")):
        files[path] = chapter
    return files


def stale(root: Path = ROOT) -> list[Path]:
    """The files that differ from what pyproject.toml says they should hold."""
    meta = read(root)
    out = []
    for path, render in targets(root).items():
        old = path.read_text(encoding="utf8") if path.exists() else ""
        if render(old, meta) != old:
            out.append(path)
    return out


def write(root: Path = ROOT) -> list[Path]:
    """Bring every generated file up to date; return the ones that changed."""
    meta = read(root)
    changed = []
    for path, render in targets(root).items():
        old = path.read_text(encoding="utf8") if path.exists() else ""
        new = render(old, meta)
        if new != old:
            path.write_text(new, encoding="utf8")
            changed.append(path)
    return changed


if __name__ == "__main__":
    if sys.argv[1:] == ["--check"]:
        out_of_step = stale()
        for path in out_of_step:
            print(f"{path.relative_to(ROOT)} is out of step with pyproject.toml: run `make metadata`")
        sys.exit(1 if out_of_step else 0)
    for path in write():
        print(f"wrote {path.relative_to(ROOT)}")
