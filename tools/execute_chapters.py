"""Execute chapters in place at their default preset, storing the outputs nbval compares.

Usage: ``make outputs`` (every chapter) or ``.venv/bin/python tools/execute_chapters.py
chapters/<name>.ipynb``. Runs each notebook top to bottom in a fresh ``python3`` kernel
with chapters/ as working directory, without timing metadata, and writes it back.
"""

import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def execute(path: Path) -> float:
    """Run the notebook at ``path`` and overwrite it with its outputs; returns seconds."""
    notebook = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(notebook, kernel_name="python3", timeout=600, record_timing=False,
                   resources={"metadata": {"path": str(path.parent.resolve())}}).execute()
    nbformat.write(notebook, path)
    return time.perf_counter() - start


if __name__ == "__main__":
    if os.environ.get("BOOK_PROGRESS") != "0":
        sys.exit("set BOOK_PROGRESS=0 (make outputs does) so no progress bar is stored")
    paths = [Path(p) for p in sys.argv[1:]] or sorted(Path("chapters").glob("*.ipynb"))
    for path in paths:
        print(f"{path}: executed in {execute(path):.1f} s")
