"""Run a chapter with other parameters: ``python -m lib.book.run CHAPTER -p NAME VALUE ...``.

The front door to papermill for the book's chapters (``make run CHAPTER=... ARGS="..."``
calls it). Before anything executes it

* checks every ``-p`` name against the chapter's ``parameters`` cell (``preset``,
  ``device``, ``seed``, ``knobs``) and its presets' knobs (:mod:`lib.book.presets`): an
  unknown name is an error that names the known ones (papermill itself only logs a
  warning and runs the chapter with its defaults);
* passes a knob of the presets (``-p epochs 3``) in the chapter's ``knobs`` dict, the one
  parameter through which a chapter takes them (plain papermill: ``-y "knobs: {epochs: 3}"``);
* reads each value as a Python literal, so lists need no special flag
  (``-p hidden "[64, 64]"``, ``-p tasks '["digits/mlp"]'``); anything that is not a
  literal stays a string (``-p preset paper``);
* warns when the ``paper`` preset is asked for on a machine without a CUDA GPU.

The executed notebook is written to ``_build/runs/<chapter>.ipynb`` (or ``-o PATH``).
Examples::

    python -m lib.book.run curvature -p preset tiny
    python -m lib.book.run reparametrization -p preset paper -p device cuda
    python -m lib.book.run curvature -p preset tiny -p epochs 3 -p hidden "[32]"
    python -m lib.book.run inpca --list            # the chapter's knobs, their values per preset
"""

from __future__ import annotations

import argparse
import ast
import difflib
import json
import sys
from pathlib import Path
from typing import Any

from .paths import REPO_ROOT, in_clone
from .config import RENAMED_KNOBS

__all__ = ["chapter_path", "chapter_parameters", "chapter_knobs", "parse_value", "check_parameters",
           "paper_warning", "main"]


def chapter_path(chapter: str) -> Path:
    """The notebook of ``chapter``: a path to an ``.ipynb`` file, or a chapter's name
    (``"curvature"``) looked up in the clone's ``chapters/`` folder."""
    path = Path(chapter).expanduser()
    if path.suffix == ".ipynb":
        if not path.is_file():
            raise FileNotFoundError(f"no notebook at {path}")
        return path.resolve()
    folder = REPO_ROOT / "chapters"
    candidate = folder / f"{chapter}.ipynb"
    if in_clone() and candidate.is_file():
        return candidate
    known = sorted(p.stem for p in folder.glob("*.ipynb")) if in_clone() else []
    hint = f"; the chapters are: {', '.join(known)}" if known else (
        "; outside a clone of the book, give the path of the .ipynb file")
    raise FileNotFoundError(f"no chapter called {chapter!r}{hint}")


def chapter_parameters(path: Path) -> dict[str, Any]:
    """The knobs of a chapter and their defaults, read from its ``parameters`` cell.

    Raises:
        ValueError: the notebook has no cell tagged ``parameters``.
    """
    notebook = json.loads(Path(path).read_text(encoding="utf8"))
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            source = "".join(cell["source"])
            knobs = {}
            for node in ast.parse(source).body:
                if isinstance(node, ast.Assign) and len(node.targets) == 1 \
                        and isinstance(node.targets[0], ast.Name):
                    knobs[node.targets[0].id] = ast.literal_eval(node.value)
            return knobs
    raise ValueError(f"{path} has no code cell tagged 'parameters'")


def chapter_knobs(path: Path) -> dict[str, Any]:
    """The knobs of the chapter's presets (:mod:`lib.book.presets`) with their values in its
    ``small`` preset (the first preset where it has none); ``{}`` for a notebook without presets."""
    from . import presets

    stem = Path(path).stem
    if stem not in presets.chapters():
        return {}
    declared = presets.load(stem)
    default = declared.presets.get("small") or next(iter(declared.presets.values()))
    return dict(default)


def parse_value(text: str) -> Any:
    """A command-line value as a Python literal (number, list, None, True, quoted string),
    else the text itself: ``"0.1"`` -> 0.1, ``"[16, 16]"`` -> [16, 16], ``"paper"`` -> "paper"."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def check_parameters(given: dict[str, Any], knobs: dict[str, Any], chapter: str) -> None:
    """ValueError naming every unknown knob in ``given``, with the closest known names."""
    unknown = [name for name in given if name not in knobs]
    if not unknown:
        return
    lines = []
    for name in unknown:
        if RENAMED_KNOBS.get(name) in knobs:
            lines.append(f"{name!r} (now called {RENAMED_KNOBS[name]!r})")
            continue
        close = difflib.get_close_matches(name, list(knobs), n=2)
        lines.append(f"{name!r}" + (f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""))
    raise ValueError(f"{chapter} has no knob {', '.join(lines)}; its knobs are: {', '.join(knobs)}")


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return torch.cuda.is_available()


def paper_warning(preset: Any, chapter: str) -> str | None:
    """The warning printed before a ``paper`` preset on a machine without CUDA, else None."""
    if preset != "paper" or _cuda_available():
        return None
    return (f"warning: the 'paper' preset of {chapter} runs at the source's scale and expects a "
            "CUDA GPU (and, for some chapters, data sets downloaded on first use); this machine "
            "has none, so expect hours, not minutes.")


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m lib.book.run", description="Run a chapter of the book with other parameters.")
    parser.add_argument("chapter", help="chapter name (e.g. curvature) or path to its .ipynb")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[],
                        metavar=("NAME", "VALUE"), help="set a knob of the parameters cell")
    parser.add_argument("-o", "--output", help="executed notebook (default _build/runs/<chapter>.ipynb)")
    parser.add_argument("--list", action="store_true", help="print the chapter's knobs and exit")
    return parser.parse_args(argv)


def _pack_knobs(given: dict[str, Any], knobs: dict[str, Any]) -> dict[str, Any]:
    """``given`` with the presets' knobs moved into its ``knobs`` dict (where the chapter takes them)."""
    packed = {name: value for name, value in given.items() if name in knobs}
    if not packed:
        return given
    extra = given.get("knobs") or {}
    if not isinstance(extra, dict):
        raise ValueError(f"knobs must be a dict such as {{'epochs': 3}}, got {extra!r}")
    rest = {name: value for name, value in given.items() if name not in knobs}
    return {**rest, "knobs": {**extra, **packed}}


def _print_list(cell: dict[str, Any], chapter: str) -> None:
    from . import presets

    width = max(map(len, cell))
    for name, default in cell.items():
        print(f"{name:<{width}}  {default!r}")
    if chapter in presets.chapters():
        print(f"\nthe knobs of {chapter} (set them with -p NAME VALUE):")
        print(presets.load(chapter).table())


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = _arguments(argv)
    try:
        path = chapter_path(args.chapter)
        cell = chapter_parameters(path)
        knobs = chapter_knobs(path)
        given = {name: parse_value(value) for name, value in args.parameter}
        known = {**{name: value for name, value in cell.items() if name != "knobs" or not knobs}, **knobs}
        check_parameters({name: value for name, value in given.items() if name != "knobs"}, known, path.stem)
        given = _pack_knobs(given, knobs)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.list:
        _print_list(cell, path.stem)
        return 0
    warning = paper_warning(given.get("preset", cell.get("preset")), path.stem)
    if warning:
        print(warning, file=sys.stderr)
    try:
        import papermill
    except ImportError:
        print("error: papermill is not installed (pip install papermill)", file=sys.stderr)
        return 2
    output = Path(args.output) if args.output else (
        (REPO_ROOT if in_clone() else Path.cwd()) / "_build" / "runs" / f"{path.stem}.ipynb")
    output.parent.mkdir(parents=True, exist_ok=True)
    print(f"running {path.name} with {given or 'its defaults'}; output: {output}", file=sys.stderr)
    papermill.execute_notebook(str(path), str(output), parameters=given, cwd=str(path.parent),
                               kernel_name="python3", progress_bar=sys.stderr.isatty())
    return 0


if __name__ == "__main__":
    sys.exit(main())
