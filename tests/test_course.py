"""The course kit: hand-out notebooks, the student edition and the PDF.

- every solution is gone from the student copies (the directive and every line of its
  text), every exercise stays;
- the Colab copies hold no MyST markup that plain Jupyter would show raw, fold each
  solution into a <details> block and define the notation macros first;
- the student edition builds (nothing executed) without a single solution in its HTML or
  in its downloadable notebooks;
- the PDF builds where TeX is installed;
- every chapter opens with learning objectives (three to five) and prerequisites and a
  notation box, and every figure has a caption that says what to see (myst-nb's figure metadata, which also gives
  the image its alt text).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import handouts  # noqa: E402

CHAPTERS = handouts.chapters()
SOLUTION = re.compile(r"^:::\{solution\}.*?^:::$", re.S | re.M)


def solution_lines(path: Path) -> list[str]:
    """Distinctive lines of the chapter's solutions (long enough not to occur elsewhere)."""
    text = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "markdown")
    lines = [l.strip() for block in SOLUTION.findall(text) for l in block.splitlines()[2:-1]]
    return [l for l in lines if len(l) > 40 and l.count(" ") > 5]


def markdown(notebook) -> str:
    return "\n".join(c.source for c in notebook.cells if c.cell_type == "markdown")


def test_drop_solutions_keeps_everything_else():
    text = ("Intro\n\n:::{exercise} Title\n:label: ex1\n\nDo it.\n:::\n\n:::{solution} ex1\n"
            ":class: dropdown\n\nSecret.\n\n```python\n:::\n```\n:::\n\nAfter.")
    out = handouts.drop_solutions(text)
    assert "Secret" not in out and "{solution}" not in out
    assert ":::{exercise} Title\n:label: ex1" in out and "Do it." in out and out.endswith("After.")


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_student_copy_has_no_solution(path):
    original = nbformat.read(path, as_version=4)
    student = handouts.student_notebook(original)
    text = markdown(student)
    assert "{solution}" not in text
    assert text.count("{exercise}") == markdown(original).count("{exercise}") > 0
    leaked = [line for line in solution_lines(path) if line in text]
    assert not leaked, f"solution text left in the student copy: {leaked[:2]}"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_colab_copy_is_plain_markdown(path):
    meta = handouts.metadata.read()
    converter = handouts.PlainMarkdown(handouts.bibliography_citer(ROOT / "references.bib"), meta.pages)
    original = nbformat.read(path, as_version=4)
    plain = handouts.plain_notebook(original, converter, install_ref="0123abc")
    text = markdown(plain)
    leftovers = re.findall(r"^(?::::+|```+)\{[\w:-]+\}|\{[\w:-]+\}`", text, re.M)
    assert not leftovers, f"MyST markup left: {leftovers[:3]}"
    assert text.count("<details>") == markdown(original).count("{solution}")
    assert plain.cells[0].source.startswith("<!-- The book's notation macros")
    assert "\\newcommand{\\Hess}" in plain.cells[0].source
    install = [c for c in plain.cells if handouts.metadata.INSTALL_TAG in c.metadata.get("tags", [])]
    assert install and "@0123abc\"" in install[0].source


@pytest.mark.notebook
def test_the_student_edition_builds_without_solutions(tmp_path):
    source = handouts.stage_student_book(tmp_path / "src")
    result = subprocess.run([str(Path(sys.executable).parent / "jupyter-book"), "build", str(source),
                             "--path-output", str(tmp_path / "out"), "-W", "-n", "--keep-going"],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    html = tmp_path / "out" / "_build" / "html"
    for path in CHAPTERS:
        page = (html / "chapters" / f"{path.stem}.html").read_text(encoding="utf8")
        download = (html / "_sources" / "chapters" / path.name).read_text(encoding="utf8")
        # sphinx-exercise renders a solution as a block of class "solution" titled
        # "Solution to Exercise N" (the word alone also occurs in the prose: "sparse solutions")
        assert 'class="solution' not in page, f"{path.name}: a solution block is in the page"
        assert "solution to" not in re.sub(r"<[^>]+>", "", page).lower(), path.name
        for line in solution_lines(path)[:5]:
            assert line not in download, f"{path.name}: a solution is in the downloadable notebook"


@pytest.mark.notebook
@pytest.mark.skipif(shutil.which("latexmk") is None, reason="make pdf needs TeX (latexmk, xelatex)")
def test_the_pdf_builds(tmp_path):
    source = handouts.stage_book(tmp_path / "src", solutions=True)
    result = subprocess.run([str(Path(sys.executable).parent / "jupyter-book"), "build", str(source),
                             "--path-output", str(tmp_path / "out"), "--builder", "pdflatex"],
                            capture_output=True, text=True, timeout=1200)
    pdf = tmp_path / "out" / "_build" / "latex" / "parameter-space-geometry.pdf"
    assert result.returncode == 0 and pdf.exists(), result.stdout[-4000:]
    assert pdf.stat().st_size > 500_000


OBJECTIVES = re.compile(r"```\{admonition\} Learning objectives\n(.*?)\n```", re.S)


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_the_chapter_opens_with_learning_objectives_and_prerequisites(path):
    cells = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "markdown"]
    found = [OBJECTIVES.search(c.source) for c in cells[:3]]
    box = next((m.group(1) for m in found if m), None)
    assert box is not None, "no 'Learning objectives' admonition among the first markdown cells"
    objectives = [line for line in box.splitlines() if line.startswith("- ")]
    assert 3 <= len(objectives) <= 5, f"{len(objectives)} objectives, the kit asks for three to five"
    assert "**Prerequisites:**" in box


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_every_figure_has_a_caption_and_alt_text(path):
    for k, cell in enumerate(c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"):
        images = sum("image/png" in o.get("data", {}) for o in cell.get("outputs", []))
        if not images:
            continue
        assert images == 1, f"code cell {k} draws {images} figures; one per cell, each with its caption"
        options = cell.metadata.get("mystnb", {})
        caption = options.get("figure", {}).get("caption", "")
        assert len(caption.split()) >= 8, f"code cell {k}: no caption that says what to see"
        assert options.get("image", {}).get("alt"), f"code cell {k}: no alt text"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_the_chapter_has_a_notation_box_near_its_top(path):
    # Letters mean different things in different sources (G: a metric, a GGN or a weight
    # block), so each chapter says what its symbols mean before it uses them.
    cells = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "markdown"]
    assert any("```{admonition} Notation in this chapter" in c.source for c in cells[:4]), (
        "no 'Notation in this chapter' admonition among the first four markdown cells")


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_the_set_up_cell_is_folded_and_short(path):
    # Readers see the computation first: the set-up cell (imports, lib.setup) is folded in the
    # HTML (its output, the settings table, stays visible), and with the parameters cell it
    # stays short because the presets are data (lib/book/presets/<chapter>.py).
    code = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    parameters, setup = code[0], code[2]
    assert "hide-input" in setup.metadata.get("tags", []), "the set-up cell is not tagged hide-input"
    assert f'lib.setup(preset, "{path.stem}"' in setup.source
    lines = len(parameters.source.splitlines()) + len(setup.source.splitlines())
    # imports that one or two cells use sit at the top of those cells, not here
    assert lines <= 26, f"parameters and set-up cells have {lines} lines"


DRAWS = re.compile(r"\bnew_figure\(|\bplt\.subplots\(")
# Code cells that draw a figure and stay unfolded: {(chapter, first line of the cell): reason}. Empty:
# every drawing cell only draws.
UNFOLDED_DRAWING: dict[tuple[str, str], str] = {}


def drawing_cells(notebook, folded: bool) -> list:
    """The code cells that draw a figure and are (folded=True) or are not tagged hide-input."""
    return [cell for cell in notebook.cells if cell.cell_type == "code" and DRAWS.search(cell.source)
            and ("hide-input" in cell.metadata.get("tags", [])) == folded]


def test_an_unfolded_drawing_cell_is_found():
    cells = [nbformat.v4.new_code_cell("x = 1\nfig, ax = new_figure()\nplt.show()"),
             nbformat.v4.new_code_cell("fig, ax = plt.subplots()\nplt.show()"),
             nbformat.v4.new_code_cell("fig, ax = new_figure()", metadata={"tags": ["hide-input"]}),
             nbformat.v4.new_code_cell("x = 2  # figure_size(3)")]
    found = drawing_cells(nbformat.v4.new_notebook(cells=cells), folded=False)
    assert [c.source.splitlines()[0] for c in found] == ["x = 1", "fig, ax = plt.subplots()"]


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_the_drawing_cells_are_folded(path):
    # Readers see the computation first: a cell that draws does nothing else (the computation and
    # what it prints are the visible cell before it) and is folded in the HTML, its figure and
    # caption stay visible. Exceptions are listed, with their reason, in UNFOLDED_DRAWING.
    notebook = nbformat.read(path, as_version=4)
    allowed = {line for chapter, line in UNFOLDED_DRAWING if chapter == path.stem}
    unfolded = {cell.source.splitlines()[0] for cell in drawing_cells(notebook, folded=False)}
    assert unfolded <= allowed, f"cells that draw, not tagged hide-input: {sorted(unfolded - allowed)}"
    assert allowed <= unfolded, f"stale entries in UNFOLDED_DRAWING: {sorted(allowed - unfolded)}"
    for cell in drawing_cells(notebook, folded=True):
        printed = [o for o in cell.get("outputs", []) if o.get("output_type") != "display_data"]
        assert not printed, (f"the folded drawing cell {cell.source.splitlines()[0]!r} prints: "
                             "its computation belongs in the visible cell before it")
