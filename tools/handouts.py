"""Copies of the chapters for students and for Colab, and the student edition of the site.

The chapters are written in MyST: exercises and solutions are directives, citations are
roles. Jupyter Book renders them; Colab and a plain Jupyter show them raw, every
solution in view. This script writes

* ``_build/handouts/student/``: the notebooks without solutions (MyST kept), for a course;
* ``_build/handouts/colab/``: the notebooks in plain Markdown that Colab and any Jupyter
  render: exercises as numbered paragraphs, solutions folded in ``<details>``, citations
  as "(Author et al. 2023)", links to the published site, the notation macros defined in
  a first cell; ``--ref COMMIT`` pins the install cell to that commit of the repository;
* ``_build/student-src/``: the book's sources with every solution removed and the
  stored outputs used as they are (no execution), which ``make student`` builds into
  ``_build/student/_build/html``: its pages and its downloadable notebooks carry no
  solution;
* with ``--pdf``, only ``_build/pdf-src/``: the sources with solutions, for ``make pdf``.

Usage: ``python tools/handouts.py [--ref COMMIT] [--pdf]`` (``make student`` runs it).
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import nbformat
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import metadata  # noqa: E402  (tools/metadata.py, the one place the book's metadata is read)

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "_build"
SOLUTION_TAG = "solution"  # a code cell with this tag is a solution too

_OPEN = re.compile(r"^(?P<fence>:{3,}|`{3,})\{(?P<name>[\w:-]+)\}\s*(?P<argument>.*)$")
_OPTION = re.compile(r"^:(?P<key>[\w-]+):\s*(?P<value>.*)$")
_CODE_FENCE = re.compile(r"^(`{3,}|~{3,})(?!\{)")
_ROLE = re.compile(r"\{(?P<role>[\w:-]+)\}`(?P<body>[^`]*)`")


# ----------------------------------------------------------------------------- blocks
def _blocks(lines: list[str]):
    """Split Markdown lines into ("text", lines) and ("directive", name, argument,
    options, body lines) items; code fences are text and are never looked into."""
    i, text = 0, []
    while i < len(lines):
        line = lines[i]
        fence = _CODE_FENCE.match(line)
        if fence:  # copy a code block whole
            end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith(fence.group(1))),
                       len(lines) - 1)
            text.extend(lines[i:end + 1])
            i = end + 1
            continue
        opened = _OPEN.match(line)
        if not opened:
            text.append(line)
            i += 1
            continue
        if text:
            yield ("text", text)
            text = []
        close = opened.group("fence")
        j, options = i + 1, {}
        while j < len(lines) and (option := _OPTION.match(lines[j])):
            options[option.group("key")] = option.group("value")
            j += 1
        end = next((k for k in range(j, len(lines)) if lines[k].rstrip() == close), len(lines))
        yield ("directive", opened.group("name"), opened.group("argument"), options, lines[j:end])
        i = end + 1
    if text:
        yield ("text", text)


def drop_solutions(markdown: str) -> str:
    """``markdown`` without its ``{solution}`` directives (everything else kept as written)."""
    out = []
    for block in _blocks(markdown.splitlines()):
        if block[0] == "text":
            out.extend(block[1])
        elif block[1] != "solution":
            _, name, argument, options, body = block
            fence = ":::"
            out.append(f"{fence}{{{name}}} {argument}".rstrip())
            out.extend(f":{key}: {value}".rstrip() for key, value in options.items())
            out.extend(body)
            out.append(fence)
    return "\n".join(out).strip("\n")


# ----------------------------------------------------------------------------- plain Markdown
class PlainMarkdown:
    """Turns the book's MyST into Markdown that Colab renders.

    Args:
        cite: maps a list of bibliography keys and a role (``cite``, ``cite:t``, ...) to text.
        site: address of the published book, for ``{doc}`` links.
        solutions: ``"fold"`` (in ``<details>``) or ``"drop"``.
    """

    def __init__(self, cite: Callable[[list[str], str], str], site: str, solutions: str = "fold"):
        if solutions not in ("fold", "drop"):
            raise ValueError(f"solutions must be 'fold' or 'drop', got {solutions!r}")
        self.cite, self.site, self.solutions = cite, site.rstrip("/"), solutions
        self.exercises = 0

    def roles(self, text: str) -> str:
        def replace(match: re.Match) -> str:
            role, body = match.group("role"), match.group("body")
            if role.startswith("cite"):
                return self.cite([k.strip() for k in body.split(",")], role)
            titled = re.fullmatch(r"(.*?)\s*<(.+)>", body)
            title, target = (titled.group(1), titled.group(2)) if titled else (body, body)
            if role == "doc":
                return f"[{title}]({self.site}/chapters/{Path(target).name}.html)"
            return title  # ref, numref, eq, term: the label's own words
        return _ROLE.sub(replace, text)

    def convert(self, markdown: str) -> str:
        out = []
        for block in _blocks(markdown.splitlines()):
            if block[0] == "text":
                out.extend(self.roles(line) for line in block[1])
                continue
            _, name, argument, options, body = block
            body = [self.roles(line) for line in body]
            if name == "exercise":
                self.exercises += 1
                title = f": {self.roles(argument)}" if argument else ""
                out += [f"**Exercise {self.exercises}{title}.**", "", *body]
            elif name == "solution":
                if self.solutions == "fold":
                    out += ["<details>", "<summary><b>Solution</b></summary>", "", *body, "",
                            "</details>"]
            else:  # admonitions and the like: a quoted block under its title
                title = self.roles(argument) or name.capitalize()
                out += [f"> **{title}**", ">", *[f"> {line}".rstrip() for line in body]]
        return "\n".join(out).strip("\n")


def bibliography_citer(bib: Path) -> Callable[[list[str], str], str]:
    """``cite(keys, role)`` -> "(Kristiadi et al. 2023; Amari 1998)" from ``bib``."""
    from pybtex.database import parse_file

    entries = parse_file(str(bib)).entries

    def short(key: str) -> tuple[str, str]:
        if key not in entries:
            raise KeyError(f"citation {key!r} is not in {bib.name}")
        entry = entries[key]
        people = entry.persons.get("author") or entry.persons.get("editor") or []
        if not people:
            name = str(entry.fields.get("organization", entry.fields.get("title", key)))
        else:
            last = " ".join(people[0].last_names).replace("{", "").replace("}", "")
            name = last + (" et al." if len(people) > 2 else f" and {' '.join(people[1].last_names)}"
                           if len(people) == 2 else "")
        return name.replace("{", "").replace("}", ""), str(entry.fields.get("year", "n.d."))

    def cite(keys: list[str], role: str) -> str:
        parts = [short(k) for k in keys]
        if role == "cite:t":
            return "; ".join(f"{name} ({year})" for name, year in parts)
        return "(" + "; ".join(f"{name} {year}" for name, year in parts) + ")"

    return cite


def macros_cell() -> str:
    """The book's notation macros (from _config.yml) as one Markdown cell of definitions."""
    with open(ROOT / "_config.yml", encoding="utf8") as f:
        config = yaml.safe_load(f)
    macros = config["sphinx"]["config"]["mathjax3_config"]["tex"]["macros"]
    definitions = " ".join(rf"\newcommand{{\{name}}}{{{body}}}" for name, body in macros.items())
    return f"<!-- The book's notation macros, for Colab and Jupyter. -->\n${definitions}$"


# ----------------------------------------------------------------------------- notebooks
def student_notebook(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of ``notebook`` without solutions (directives and cells tagged ``solution``)."""
    notebook = nbformat.from_dict(notebook)
    cells = []
    for cell in notebook.cells:
        if SOLUTION_TAG in cell.get("metadata", {}).get("tags", []):
            continue
        if cell.cell_type == "markdown":
            cell.source = drop_solutions(cell.source)
        cells.append(cell)
    notebook.cells = cells
    return notebook


def plain_notebook(notebook: nbformat.NotebookNode, converter: PlainMarkdown,
                   install_ref: str | None = None) -> nbformat.NotebookNode:
    """A copy of ``notebook`` in plain Markdown, with the macros cell first and, if
    ``install_ref`` is given, the install cell pinned to that commit."""
    notebook = nbformat.from_dict(notebook)
    converter.exercises = 0
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            cell.source = converter.convert(cell.source)
        elif install_ref and metadata.INSTALL_TAG in cell.get("metadata", {}).get("tags", []):
            cell.source = cell.source.replace("@main\"", f"@{install_ref}\"")
    if converter.solutions == "drop":
        notebook.cells = [c for c in notebook.cells
                          if SOLUTION_TAG not in c.get("metadata", {}).get("tags", [])]
    notebook.cells.insert(0, nbformat.v4.new_markdown_cell(macros_cell()))
    return notebook


def chapters(root: Path = ROOT) -> list[Path]:
    return sorted((root / "chapters").glob("*.ipynb"))


def write_handouts(out: Path = BUILD / "handouts", ref: str | None = None) -> list[Path]:
    """Write the student and Colab notebooks of every chapter; return their paths."""
    meta = metadata.read()
    converter = PlainMarkdown(bibliography_citer(ROOT / "references.bib"), meta.pages)
    written = []
    for path in chapters():
        notebook = nbformat.read(path, as_version=4)
        for kind, result in (("student", student_notebook(notebook)),
                             ("colab", plain_notebook(notebook, converter, ref))):
            target = out / kind / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(result, target)
            written.append(target)
    return written


def stage_book(dest: Path, *, solutions: bool, title_suffix: str = "") -> Path:
    """A copy of the book's sources in ``dest``, configured to build from the stored
    outputs (nothing executed); without any solution unless ``solutions``."""
    if dest.exists():
        shutil.rmtree(dest)
    for folder in ("chapters", "reference"):
        (dest / folder).mkdir(parents=True)
    for name in ("_toc.yml", "references.bib"):
        shutil.copy2(ROOT / name, dest / name)
    for page in (ROOT / "reference").glob("*.md"):
        shutil.copy2(page, dest / "reference" / page.name)
    shutil.copytree(ROOT / "_ext", dest / "_ext")  # the bibliography style
    keep = (lambda text: text) if solutions else drop_solutions
    for page in (ROOT / "chapters").iterdir():
        if page.suffix == ".md":
            (dest / "chapters" / page.name).write_text(keep(page.read_text("utf8")) + "\n",
                                                       encoding="utf8")
        elif page.suffix == ".ipynb":
            notebook = nbformat.read(page, as_version=4)
            nbformat.write(notebook if solutions else student_notebook(notebook),
                           dest / "chapters" / page.name)
    with open(ROOT / "_config.yml", encoding="utf8") as f:
        config = yaml.safe_load(f)
    config["title"] += title_suffix
    config["execute"]["execute_notebooks"] = "off"  # the stored outputs of a default run
    config["sphinx"]["config"]["hide_solutions"] = not solutions  # none in the HTML either
    if not solutions:  # the launch copies fold the solutions in: no buttons to them
        config["launch_buttons"] = {}
    with open(dest / "_config.yml", "w", encoding="utf8") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    return dest


def stage_student_book(dest: Path = BUILD / "student-src") -> Path:
    """The student edition's sources: every solution removed."""
    return stage_book(dest, solutions=False, title_suffix=" (student edition)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref", help="commit the Colab copies install the library from")
    parser.add_argument("--pdf", action="store_true",
                        help="only stage the sources of the PDF (_build/pdf-src), solutions kept")
    args = parser.parse_args()
    if args.pdf:
        print(f"staged {stage_book(BUILD / 'pdf-src', solutions=True).relative_to(ROOT)}")
        sys.exit(0)
    for path in write_handouts(ref=args.ref):
        print(f"wrote {path.relative_to(ROOT)}")
    print(f"staged {stage_student_book().relative_to(ROOT)}")
