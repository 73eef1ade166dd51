"""The launch paths outside a clone: the chapters' install cell and a chapter run alone.

Colab opens one notebook, without the repository. Its install cell (written by
tools/metadata.py) must install the library where ``lib`` cannot be imported, and the
chapter must then run against that installed, non-editable copy, with its caches outside
the package. Both are tested for real: pip installs the package from this checkout (the
cell's ``BOOK_LIB_SOURCE`` override stands in for the repository's address), and a chapter
copied alone into an empty folder is executed with papermill at its ``tiny`` preset.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import metadata  # noqa: E402

CHAPTER = "linear_models"  # the quickest chapter at its tiny preset


def test_the_install_cell_installs_the_library_where_it_is_missing(tmp_path):
    # A fresh virtual environment that sees this environment's packages (torch, pip, ...)
    # through a plain path entry, whose .pth files -- the clone's editable install among
    # them -- are not processed: `lib` cannot be imported there, as on Colab.
    fresh = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(fresh)], check=True)
    python = fresh / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "book-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    code = metadata.install_cell_source(metadata.read()) + "\nimport lib; print(lib.__file__)"
    env = {**os.environ, "BOOK_LIB_SOURCE": str(ROOT), "PIP_NO_DEPS": "1", "PIP_NO_CACHE_DIR": "1"}
    env.pop("PYTHONPATH", None)
    missing = subprocess.run([str(python), "-c", "import importlib.util; print(importlib.util.find_spec('lib'))"],
                             capture_output=True, text=True, cwd=tmp_path, env=env)
    assert missing.stdout.strip() == "None", "the fresh environment should not see the clone's lib"
    result = subprocess.run([str(python), "-c", code], capture_output=True, text=True,
                            cwd=tmp_path, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert Path(result.stdout.strip().splitlines()[-1]).is_relative_to(site), "lib was not installed"


def test_the_install_cell_refuses_a_foreign_lib(tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "__init__.py").write_text("# some other package called lib\n")
    code = metadata.install_cell_source(metadata.read())
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert result.returncode != 0
    assert "another package called 'lib' hides the book's library" in result.stderr


def test_every_chapter_has_the_install_cell_after_its_parameters():
    source = metadata.install_cell_source(metadata.read())
    for path in sorted((ROOT / "chapters").glob("*.ipynb")):
        code = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
        assert "parameters" in code[0].metadata.get("tags", []), path.name
        assert metadata.INSTALL_TAG in code[1].metadata.get("tags", []), (
            f"{path.name}: the second code cell must be the install cell (run `make metadata`)")
        assert code[1].source == source, f"{path.name}: stale install cell (run `make metadata`)"


@pytest.mark.notebook
def test_a_chapter_copied_alone_runs_on_the_installed_package(installed_lib, tmp_path, monkeypatch):
    import papermill

    alone = tmp_path / "empty"
    alone.mkdir()
    notebook = nbformat.read(ROOT / "chapters" / f"{CHAPTER}.ipynb", as_version=4)
    probe = ("import json, lib, lib.book.paths\n"
             "print(json.dumps({'lib': lib.__file__, 'data': str(lib.book.paths.data_root()),"
             " 'version': lib.__version__}))")
    notebook.cells.append(nbformat.v4.new_code_cell(probe))
    nbformat.write(notebook, alone / f"{CHAPTER}.ipynb")
    data = tmp_path / "data"
    monkeypatch.setenv("PYTHONPATH", str(installed_lib))  # what pip on Colab makes importable
    monkeypatch.setenv("BOOK_DATA", str(data))
    out = tmp_path / "out.ipynb"
    papermill.execute_notebook(str(alone / f"{CHAPTER}.ipynb"), str(out), parameters={"preset": "tiny"},
                               cwd=str(alone), kernel_name="python3", progress_bar=False)
    executed = nbformat.read(out, as_version=4)
    seen = json.loads(executed.cells[-1].outputs[0]["text"].strip().splitlines()[-1])
    assert Path(seen["lib"]).is_relative_to(installed_lib), "the chapter did not use the installed copy"
    assert seen["data"] == str(data) and seen["version"] == metadata.read().version
    assert sorted(p.name for p in alone.iterdir()) == [f"{CHAPTER}.ipynb"], "the chapter wrote beside itself"
    stray = [p for p in installed_lib.rglob("*") if p.suffix in (".pt", ".npz")]
    assert not stray, f"the chapter wrote into the installed package: {stray}"
