# The two entry points of the README's quick start:
#
#   make book   create .venv if missing, install the pinned dependencies, execute
#               every chapter at its default preset and build the HTML book into
#               _build/html
#   make test   same setup, then one pytest run: unit tests (tests/), papermill runs
#               of every chapter with tiny parameters (tests/test_notebooks.py) and
#               the nbval regression of every chapter's stored outputs
#
# The environment is installed with the exact versions of constraints.txt (the lock
# file); pyproject.toml declares the compatible ranges of the library.
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
LOCK := constraints.txt
# Touched after a successful install; pip runs again only when pyproject.toml or
# the lock is newer than it (or when it is missing).
STAMP := $(VENV)/.installed-pyproject

SANITIZE := tests/nbval_sanitize.cfg
PYTEST_ARGS ?=

# Progress bars off: stored outputs and nbval stay clean (lib.book.progress reads it).
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
# different numbers. Every target that makes or checks stored outputs fixes the AVX2
# kernels and two threads (tools/execute_chapters.py refuses to run without them), so
# every x86-64 machine with AVX2 repeats them bit for bit. `make run` and `make lab`
# keep the machine's fastest kernels and all its cores.
PINNED_TARGETS := book test test-nbval test-notebooks outputs
$(PINNED_TARGETS): export ATEN_CPU_CAPABILITY := avx2
$(PINNED_TARGETS): export MKL_CBWR := AVX2
$(PINNED_TARGETS): export ONEDNN_MAX_CPU_ISA := AVX2
$(PINNED_TARGETS): export OMP_NUM_THREADS := 2
$(PINNED_TARGETS): export MKL_NUM_THREADS := 2

.PHONY: help install book test test-unit test-notebooks test-nbval outputs run lab student pdf \
        metadata reference lock clean

help:
	@echo "make book     build the executed HTML book into _build/html"
	@echo "make test     unit tests, papermill runs of every chapter (tiny preset), nbval of every chapter"
	@echo "make run CHAPTER=name ARGS=\"-p knob value ...\"   run one chapter with other parameters"
	@echo "make lab      open the chapters in JupyterLab (MyST rendered)"
	@echo "make student  the book without solutions and hand-out notebooks (_build/student, _build/handouts)"
	@echo "make pdf      the book as a PDF (needs a TeX installation: latexmk, xelatex)"
	@echo "(also: install, test-unit, test-notebooks, test-nbval, outputs, metadata, reference, lock, clean)"

$(PY):
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 is required, found " + sys.version.split()[0]'
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml $(LOCK) | $(PY)
	$(PY) -m pip install --progress-bar off -c $(LOCK) -e ".[$(EXTRAS)]"
	touch $@

install: $(STAMP)

# --all: Sphinx re-reads, and so re-executes, every chapter: a change in lib/
# always shows up in the book.
book: $(STAMP)
	$(VENV)/bin/jupyter-book build . --all -W -n --keep-going
	@echo
	@echo "The book is in $(CURDIR)/_build/html; open $(CURDIR)/_build/html/index.html in a browser."

# --doctest-modules runs the examples in lib's docstrings as well.
test: $(STAMP)
	$(PY) -m pytest tests chapters lib --doctest-modules --nbval --nbval-current-env \
	    --nbval-sanitize-with $(SANITIZE) --nbval-cell-timeout=600 $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(PY) -m pytest tests -m "not notebook" $(PYTEST_ARGS)

test-notebooks: $(STAMP)
	$(PY) -m pytest tests/test_notebooks.py $(PYTEST_ARGS)

test-nbval: $(STAMP)
	$(PY) -m pytest chapters --nbval --nbval-current-env \
	    --nbval-sanitize-with $(SANITIZE) --nbval-cell-timeout=600 $(PYTEST_ARGS)

# Re-execute every chapter (or those in CHAPTERS=...) in place at its default preset
# (the stored outputs that nbval compares); commit the result.
outputs: $(STAMP)
	$(PY) tools/execute_chapters.py $(CHAPTERS)

# Run one chapter with other parameters through lib.book.run, which checks the knobs first:
#   make run CHAPTER=curvature ARGS="-p preset paper -p device cuda"
run: $(STAMP)
	@test -n "$(CHAPTER)" || { echo 'usage: make run CHAPTER=name ARGS="-p knob value ..."'; exit 2; }
	$(PY) -m lib.book.run $(CHAPTER) $(ARGS)

# JupyterLab with jupyterlab-myst, which renders exercises, solutions and citations.
lab: $(STAMP)
	$(PY) -m pip install --progress-bar off -c $(LOCK) -e ".[$(EXTRAS),lab]"
	$(VENV)/bin/jupyter lab chapters

# For a course: the site without solutions, built from the stored outputs (nothing is
# executed), and the hand-out notebooks (_build/handouts/student without solutions,
# _build/handouts/colab in plain Markdown with folded solutions).
student: $(STAMP)
	$(PY) tools/handouts.py
	$(VENV)/bin/jupyter-book build _build/student-src --path-output _build/student -W -n --keep-going
	@echo
	@echo "Student edition: $(CURDIR)/_build/student/_build/html/index.html; hand-outs: $(CURDIR)/_build/handouts/"

# The book as one PDF, from the stored outputs (nothing is executed).
pdf: $(STAMP)
	@command -v latexmk > /dev/null || { echo "make pdf needs TeX (latexmk, xelatex): e.g. apt-get install latexmk texlive-xetex texlive-latex-extra texlive-fonts-recommended"; exit 2; }
	$(PY) tools/handouts.py --pdf
	$(VENV)/bin/jupyter-book build _build/pdf-src --path-output _build/pdf --builder pdflatex
	@echo
	@echo "PDF: $$(ls $(CURDIR)/_build/pdf/_build/latex/*.pdf)"

# Copy the metadata of pyproject.toml (version, authors, repository) everywhere else.
metadata: $(STAMP)
	$(PY) tools/metadata.py

# Regenerate the Library reference pages (reference/) after adding a module to lib.
reference: $(STAMP)
	$(PY) tools/reference.py

# Rewrite the lock file from the current environment (after an upgrade); then
# re-store the chapters' outputs with `make outputs` and commit both.
lock: $(STAMP)
	{ sed -n '/^#/p' $(LOCK); $(PY) -m pip freeze --exclude-editable | grep -iv '^parameter-space-geometry'; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)

clean:
	rm -rf _build .pytest_cache .hypothesis
