"""Every chapter follows the book's conventions and runs with other parameters.

For each ``chapters/*.ipynb``:

- static checks (fast): one ``parameters`` cell, the first code cell, with
  ``preset = "small"``, ``device = "auto"``, ``seed = 0`` and literal knobs;
  stored outputs of a clean top-to-bottom run; the chapter is in ``_toc.yml``;
  it cites ``references.bib`` and ends with exercises whose solutions are hidden;
- papermill runs (marker ``notebook``): the chapter executes with
  ``preset="tiny"``, and ``preset="no-such-preset"`` fails with a ``ValueError``
  naming the preset in the first code cell after the injected parameters, i.e.
  in the ``lib.book.config.setup`` cell, before any work is done.

The nbval regression of the stored outputs runs separately (``make test``
passes ``--nbval chapters``).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHAPTER_DIR = ROOT / "chapters"
CHAPTERS = sorted(CHAPTER_DIR.glob("*.ipynb"))
REQUIRED_PARAMETERS = {"preset": "small", "device": "auto", "seed": 0}
BAD_PRESET = "no-such-preset"
CELL_TIMEOUT = 600  # seconds, as in _config.yml

if CHAPTERS:
    chapter_params = pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
else:  # nothing to check yet: every test below reports as skipped
    chapter_params = pytest.mark.parametrize(
        "path", [pytest.param(None, marks=pytest.mark.skip(reason="no chapters/*.ipynb yet"))]
    )


def read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def code_cells(nb) -> list:
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def markdown(nb) -> list[str]:
    return [cell.source for cell in nb.cells if cell.cell_type == "markdown"]


def toc_files() -> set[str]:
    """Every ``file:`` entry of _toc.yml (commented-out entries are not YAML)."""
    with open(ROOT / "_toc.yml", encoding="utf8") as f:
        toc = yaml.safe_load(f)
    found: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                found.add(str(node["file"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(toc)
    found.add(str(toc["root"]))
    return found


# --------------------------------------------------------------------------
# Static checks
# --------------------------------------------------------------------------


@chapter_params
def test_parameters_cell(path):
    nb = read(path)
    cells = [cell for cell in code_cells(nb) if "parameters" in tags(cell)]
    assert len(cells) == 1, f"{path.name}: {len(cells)} code cells tagged `parameters`, need exactly 1"
    assert code_cells(nb)[0] is cells[0], f"{path.name}: the `parameters` cell must be the first code cell"

    values: dict[str, object] = {}
    for node in ast.parse(cells[0].source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            pytest.fail(
                f"{path.name}: the parameters cell may only assign literals to names "
                f"(papermill overrides them), found: {ast.unparse(node)!r}"
            )
        assert isinstance(target, ast.Name), f"{path.name}: cannot override {ast.unparse(target)!r}"
        try:
            values[target.id] = ast.literal_eval(value)
        except ValueError:
            pytest.fail(f"{path.name}: {target.id} = {ast.unparse(value)} is not a literal")

    for name, default in REQUIRED_PARAMETERS.items():
        assert name in values, f"{path.name}: the parameters cell does not define {name}"
        assert values[name] == default and type(values[name]) is type(default), (
            f"{path.name}: {name} = {values[name]!r}, the default must be {default!r}"
        )


@chapter_params
def test_stored_outputs_are_a_clean_run(path):
    nb = read(path)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3", (
        f"{path.name}: kernelspec must be `python3` (papermill, nbval and jupyter-book start it)"
    )
    counts = [cell.get("execution_count") for cell in code_cells(nb)]
    assert counts == list(range(1, len(counts) + 1)), (
        f"{path.name}: commit the outputs of one clean top-to-bottom run (Restart & Run All); "
        f"execution counts are {counts}"
    )
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            assert output.get("output_type") != "error", (
                f"{path.name}: cell {index} has a stored error: {output.get('ename')}"
            )


@chapter_params
def test_chapter_is_in_the_toc(path):
    entry = path.relative_to(ROOT).with_suffix("").as_posix()
    assert entry in toc_files(), f"{entry} is not listed in _toc.yml"


def test_toc_entries_exist():
    for entry in toc_files():
        candidates = [ROOT / f"{entry}{suffix}" for suffix in (".md", ".ipynb")]
        assert any(c.exists() for c in candidates), f"_toc.yml lists {entry}, which does not exist"


@chapter_params
def test_cites_and_ends_with_hidden_exercises(path):
    cells = markdown(read(path))
    text = "\n".join(cells)
    assert re.search(r"\{cite(?::[a-z]+)?\}`[^`]+`", text), (
        f"{path.name}: cite at least one source of references.bib with {{cite}}`key`"
    )
    assert "{bibliography}" not in text, (
        f"{path.name}: chapters do not print a bibliography; chapters/references.md does"
    )
    directive = r"^\s*(?:`{3,}|:{3,})\{%s\}"
    assert any(re.search(directive % "exercise", c, re.M) for c in cells), (
        f"{path.name}: no {{exercise}} directive"
    )
    solutions = [c for c in cells if re.search(directive % "solution", c, re.M)]
    assert solutions, f"{path.name}: no {{solution}} directive"
    for cell in solutions:
        count = len(re.findall(directive % "solution", cell, re.M))
        assert cell.count(":class: dropdown") >= count, (
            f"{path.name}: every solution must be hidden (`:class: dropdown`)"
        )

    # the bib keys cited must exist
    bib = (ROOT / "references.bib").read_text(encoding="utf8")
    keys = set(re.findall(r"@\w+\{([^,\s]+),", bib))
    for group in re.findall(r"\{cite(?::[a-z]+)?\}`([^`]+)`", text):
        for key in group.split(","):
            assert key.strip() in keys, f"{path.name}: {key.strip()!r} is not in references.bib"


# --------------------------------------------------------------------------
# papermill runs
# --------------------------------------------------------------------------


def run_papermill(path: Path, out: Path, **parameters):
    import papermill

    return papermill.execute_notebook(
        str(path),
        str(out),
        parameters=parameters,
        kernel_name="python3",
        cwd=str(path.parent),
        progress_bar=False,
        log_output=False,
        execution_timeout=CELL_TIMEOUT,
    )


@pytest.mark.notebook
@chapter_params
def test_runs_with_tiny_preset(path, tmp_path):
    out = tmp_path / path.name
    run_papermill(path, out, preset="tiny")
    nb = read(out)
    assert any("injected-parameters" in tags(cell) for cell in nb.cells)
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            assert output.get("output_type") != "error", f"cell {index}: {output.get('ename')}"


@pytest.mark.notebook
@chapter_params
def test_unknown_preset_fails_in_the_setup_cell(path, tmp_path):
    from papermill.exceptions import PapermillExecutionError

    out = tmp_path / path.name
    with pytest.raises(PapermillExecutionError) as info:
        run_papermill(path, out, preset=BAD_PRESET)
    error = info.value
    assert error.ename == "ValueError", f"expected a ValueError, got {error.ename}: {error.evalue}"
    assert BAD_PRESET in error.evalue, f"the message must name the preset: {error.evalue!r}"

    # papermill adds marker cells to the written notebook; its cell_index counts without them
    cells = [c for c in read(out).cells if "papermill-error-cell-tag" not in tags(c)]
    injected = [i for i, c in enumerate(cells) if "injected-parameters" in tags(c)]
    assert len(injected) == 1, "papermill did not inject the parameters"
    # the install cell (tools/metadata.py) sits between the parameters and the set-up cell
    following = [i for i in range(injected[0] + 1, len(cells))
                 if cells[i].cell_type == "code" and "install-lib" not in tags(cells[i])]
    assert following, "no code cell after the parameters"
    assert error.cell_index == following[0], (
        f"the bad preset must be rejected in the first code cell after the parameters and the "
        f"install cell (cell {following[0]}), it failed in cell {error.cell_index}"
    )
    # nothing after the setup cell ran
    later = [c for c in cells[following[0] + 1:] if c.cell_type == "code"]
    assert all(c.get("execution_count") is None for c in later)


@pytest.mark.notebook
def test_the_fisher_chapter_runs_where_a_stored_fisher_would_not_fit(tmp_path):
    """The ``paper`` preset's code path at the tiny scale: with ``max_stored`` below the dense
    Fisher, section 1 skips what would not fit and section 2 holds its reference implicitly
    (its noise floors then have no solve measures); the step schedule trains."""
    path = CHAPTER_DIR / "fisher_ntk.ipynb"
    out = tmp_path / path.name
    run_papermill(path, out, preset="tiny", knobs={"max_stored": 2000, "lr_schedule": "step:3"})
    nb = read(out)
    texts = []
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            assert output.get("output_type") != "error", f"cell {index}: {output.get('ename')}"
            texts.append(output.get("text", "") or str(output.get("data", {}).get("text/plain", "")))
    skipped = [t for t in texts if "skipped, above max_stored" in t]
    assert skipped and "'dense'" in skipped[0] and "'low_rank'" in skipped[0]
