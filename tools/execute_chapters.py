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


# The kernel choices that make stored outputs repeat on any x86-64 machine with AVX2
# (the Makefile exports them; see its comment).
PINNED_ENVIRONMENT = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2",
                      "ONEDNN_MAX_CPU_ISA": "AVX2", "OMP_NUM_THREADS": "2",
                      "MKL_NUM_THREADS": "2", "PYTHONHASHSEED": "0"}


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
    unpinned = {k: v for k, v in PINNED_ENVIRONMENT.items() if os.environ.get(k) != v}
    if unpinned:
        sys.exit("run through `make outputs`, or set "
                 + " ".join(f"{k}={v}" for k, v in unpinned.items())
                 + ": stored outputs must come from the pinned kernels nbval runs with")
    paths = [Path(p) for p in sys.argv[1:]] or sorted(Path("chapters").glob("*.ipynb"))
    for path in paths:
        print(f"{path}: executed in {execute(path):.1f} s")
