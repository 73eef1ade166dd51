"""The papermill front door, python -m lib.book.run: knobs checked before anything runs,
values read as literals, a warning before the paper preset without a GPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from lib.book import run

ROOT = Path(__file__).resolve().parent.parent


def test_knobs_come_from_the_parameters_cell_and_the_presets():
    path = run.chapter_path("linear_models")
    cell = run.chapter_parameters(path)
    assert list(cell) == ["preset", "device", "seed", "knobs"]
    assert cell["preset"] == "small" and cell["knobs"] == {}
    knobs = run.chapter_knobs(path)
    assert knobs["num_points"] == 50 and list(knobs)[-1] == "deep_width"  # the small preset's values
    assert run.chapter_knobs(Path("elsewhere/not_a_chapter.ipynb")) == {}


def test_knobs_of_the_presets_travel_in_the_knobs_parameter():
    knobs = {"epochs": 15, "lr": 0.01}
    assert run._pack_knobs({"preset": "tiny"}, knobs) == {"preset": "tiny"}
    assert run._pack_knobs({"preset": "tiny", "epochs": 3, "knobs": {"lr": 0.1}}, knobs) == {
        "preset": "tiny", "knobs": {"lr": 0.1, "epochs": 3}}
    with pytest.raises(ValueError, match="knobs must be a dict"):
        run._pack_knobs({"epochs": 3, "knobs": "lr=0.1"}, knobs)


@pytest.mark.parametrize("text, value", [("0.1", 0.1), ("3", 3), ("[16, 16]", [16, 16]),
                                         ('["digits/mlp"]', ["digits/mlp"]), ("None", None),
                                         ("True", True), ("paper", "paper"), ("cuda:1", "cuda:1"),
                                         ("'quoted'", "quoted")])
def test_values_are_literals_or_strings(text, value):
    assert run.parse_value(text) == value


def test_an_unknown_knob_is_an_error_naming_the_known_ones(capsys):
    assert run.main(["curvature", "-p", "num_sample", "5"]) == 2
    message = capsys.readouterr().err
    assert "no knob 'num_sample' (did you mean 'num_samples' or 'num_probes'?)" in message
    assert "its knobs are: preset, device, seed" in message


def test_unknown_chapter(capsys):
    assert run.main(["no_such_chapter"]) == 2
    assert "no chapter called 'no_such_chapter'; the chapters are: " in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="no notebook"):
        run.chapter_path("missing.ipynb")


def test_list_prints_the_knobs(capsys):
    assert run.main(["linear_models", "--list"]) == 0
    out = capsys.readouterr().out
    assert "preset" in out and "'small'" in out and "deep_width" in out
    assert "what it sets" in out and "hidden width of the two-layer linear nets" in out


def test_paper_preset_without_gpu_warns(monkeypatch):
    monkeypatch.setattr(run, "_cuda_available", lambda: False)
    assert "expects a CUDA GPU" in run.paper_warning("paper", "curvature")
    assert run.paper_warning("small", "curvature") is None
    monkeypatch.setattr(run, "_cuda_available", lambda: True)
    assert run.paper_warning("paper", "curvature") is None


@pytest.mark.notebook
def test_a_run_with_a_list_value(tmp_path):
    """A real execution: the list reaches the chapter without papermill's -y."""
    output = tmp_path / "out.ipynb"
    result = subprocess.run([sys.executable, "-m", "lib.book.run", "linear_models", "-p", "preset", "tiny",
                             "-p", "fig1_times", "[1, 10]", "-o", str(output)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    notebook = nbformat.read(output, as_version=4)
    injected = [c for c in notebook.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert "knobs = " in injected[0].source and '"fig1_times": [1, 10]' in injected[0].source


@pytest.mark.notebook
def test_plain_papermill_takes_a_knob_as_its_own_parameter(tmp_path):
    """`papermill ... -p fig1_times "[1, 10]"` reaches the chapter like knobs={"fig1_times": [1, 10]};
    given twice (also in knobs) it fails in the set-up cell."""
    import papermill

    path = ROOT / "chapters" / "linear_models.ipynb"
    out = papermill.execute_notebook(str(path), str(tmp_path / "out.ipynb"), cwd=str(path.parent),
                                     parameters={"preset": "tiny", "fig1_times": [2, 7]},
                                     kernel_name="python3", progress_bar=False)
    printed = "".join(o.get("text", "") for c in out.cells if c.cell_type == "code" for o in c.outputs)
    assert "fig1_times" in printed and "[2, 7]" in printed
    from papermill.exceptions import PapermillExecutionError

    with pytest.raises(PapermillExecutionError, match="given twice"):
        papermill.execute_notebook(str(path), str(tmp_path / "twice.ipynb"), cwd=str(path.parent),
                                   parameters={"preset": "tiny", "fig1_times": [2, 7],
                                               "knobs": {"fig1_times": [1]}},
                                   kernel_name="python3", progress_bar=False)


def test_an_old_knob_name_is_told_its_new_one(capsys):
    assert run.main(["curvature", "-p", "mc_samples", "5"]) == 2
    assert "no knob 'mc_samples' (now called 'num_samples')" in capsys.readouterr().err
