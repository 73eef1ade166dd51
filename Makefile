# The two entry points of the README's quick start:
#
#   make book   create .venv if missing, install the pinned dependencies, execute
#               every chapter at its default preset and build the HTML book into
#               _build/html
#   make test   same setup, then one pytest run: unit tests (tests/), papermill runs
#               of every chapter with tiny parameters (tests/test_notebooks.py) and
#               the nbval regression of every chapter's stored outputs
#
# Nothing here activates the virtual environment: every tool is called through
# $(VENV)/bin. Works on a Linux machine that has only python3 (>= 3.11) and pip.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS := book,test
# Touched after a successful install; pip runs again only when pyproject.toml
# is newer than it (or when it is missing).
STAMP := $(VENV)/.installed-pyproject

SANITIZE := tests/nbval_sanitize.cfg
PYTEST_ARGS ?=

# Progress bars off: stored outputs and nbval stay clean (lib.progress reads it).
export BOOK_PROGRESS := 0
# Kernels must keep ipykernel's inline matplotlib backend, otherwise executed
# chapters lose their figures (and nbval their display outputs). Unit tests pick
# a non-interactive backend themselves (tests/conftest.py).
unexport MPLBACKEND
# Kernel specs from this environment come first, so the `python3` kernel that
# papermill, nbval and jupyter-book start is this environment's Python.
export JUPYTER_PATH := $(abspath $(VENV))/share/jupyter
# Same hash seed in every run (and kernel), so set/dict orders of strings repeat.
export PYTHONHASHSEED := 0
# Stored outputs depend on round-off, and several chapters train chaotically enough
# (SGD at a large learning rate) for a last-bit difference to reach the printed digits.
# PyTorch, MKL and oneDNN each pick their kernels by the CPU's instruction set and
# split reductions by thread count, so an AVX-512 machine and an AVX2 machine print
# different numbers. These fix the AVX2 kernels and two threads for every run that
# makes or checks stored outputs (tools/execute_chapters.py refuses to run without
# them), so every x86-64 machine with AVX2 repeats them bit for bit.
export ATEN_CPU_CAPABILITY := avx2
export MKL_CBWR := AVX2
export ONEDNN_MAX_CPU_ISA := AVX2
export OMP_NUM_THREADS := 2
export MKL_NUM_THREADS := 2

.PHONY: help install book test test-unit test-notebooks test-nbval outputs clean

help:
	@echo "make book   build the executed HTML book into _build/html"
	@echo "make test   unit tests, papermill runs of every chapter (tiny preset), nbval of every chapter"
	@echo "(sub-targets: install, test-unit, test-notebooks, test-nbval, outputs, clean)"

$(PY):
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 is required, found " + sys.version.split()[0]'
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --progress-bar off -e ".[$(EXTRAS)]"
	touch $@

install: $(STAMP)

# --all: Sphinx re-reads, and so re-executes, every chapter: a change in lib/
# always shows up in the book.
book: $(STAMP)
	$(VENV)/bin/jupyter-book build . --all -W -n --keep-going
	@echo
	@echo "The book is in $(CURDIR)/_build/html; open $(CURDIR)/_build/html/index.html in a browser."

test: $(STAMP)
	$(PY) -m pytest tests chapters --nbval --nbval-current-env \
	    --nbval-sanitize-with $(SANITIZE) --nbval-cell-timeout=600 $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(PY) -m pytest tests -m "not notebook" $(PYTEST_ARGS)

test-notebooks: $(STAMP)
	$(PY) -m pytest tests/test_notebooks.py $(PYTEST_ARGS)

test-nbval: $(STAMP)
	$(PY) -m pytest chapters --nbval --nbval-current-env \
	    --nbval-sanitize-with $(SANITIZE) --nbval-cell-timeout=600 $(PYTEST_ARGS)

# Re-execute every chapter in place at its default preset (the stored outputs that
# nbval compares); commit the result.
outputs: $(STAMP)
	$(PY) tools/execute_chapters.py

clean:
	rm -rf _build .pytest_cache .hypothesis
