"""Shared pytest setup for the book's tests.

- Progress bars off (``BOOK_PROGRESS=0``, as the Makefile sets it), also for
  kernels that papermill starts from this process.
- A non-interactive matplotlib backend for code that plots inside the test
  process. This is deliberately *not* done through ``MPLBACKEND``: that variable
  would be inherited by notebook kernels and take away their inline figures.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("BOOK_PROGRESS", "0")

try:  # matplotlib is a dependency, but keep conftest importable without it
    import matplotlib

    matplotlib.use("Agg")
except ImportError:  # pragma: no cover
    pass

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository's root folder."""
    return ROOT


@pytest.fixture(scope="session")
def installed_lib(tmp_path_factory) -> Path:
    """The book's package installed without -e into a fresh folder (its dependencies are
    this environment's), as pip installs it on Colab; returns that folder."""
    import subprocess
    import sys

    import shutil

    # setuptools builds in a build/ folder beside pyproject.toml: install from a copy of
    # what the package is made of, so the checkout stays clean.
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "lib", source / "lib", ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path_factory.mktemp("site-packages")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--target", str(target), str(source)],
                   check=True, cwd=tmp_path_factory.mktemp("build"),
                   env={**os.environ, "PIP_NO_CACHE_DIR": "1"})
    return target


def pytest_collection_finish(session):
    # A test module that changes torch's default dtype when it is imported changes it for
    # every test collected after it (once, a whole CI run trained float64 models on float32
    # data); such a module must use a fixture that restores the dtype.
    import torch

    if torch.get_default_dtype() != torch.float32:
        raise pytest.UsageError(f"a test module set torch's default dtype to {torch.get_default_dtype()} "
                                "at import; set it in a fixture that restores it")


@pytest.fixture
def float64_default():
    """torch's default dtype set to float64 for one test, and restored after it. Test modules
    whose models and inputs are all float64 use it with
    ``pytestmark = pytest.mark.usefixtures("float64_default")`` (never set it at import)."""
    import torch

    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
