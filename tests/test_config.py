"""Tests for lib.book.config (presets, overrides, device, seeds) and lib.book.plotting (book style)."""

import random

import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("Agg")  # headless: tests must not need a display

import matplotlib.pyplot as plt  # noqa: E402

from lib.book import config, plotting  # noqa: E402
from lib.book.config import Settings, resolve_device, seed_everything, setup  # noqa: E402

PRESETS = {
    "fast": {"epochs": 3, "lr": 0.1, "hidden": [16, 16], "use_bias": True, "name": "demo",
             "optional": None},
    "paper": {"epochs": 100, "lr": 0.05, "hidden": [512], "use_bias": True, "name": "paper",
              "optional": None},
}


# --------------------------------------------------------------------------- #
# setup: presets and overrides
# --------------------------------------------------------------------------- #
def test_setup_returns_preset_values_with_attribute_access():
    cfg = setup("fast", PRESETS, device="cpu")
    assert cfg.preset == "fast"
    assert cfg.epochs == 3 and cfg.lr == 0.1 and cfg.hidden == [16, 16]
    assert cfg.device == torch.device("cpu")
    assert cfg.seed == 0
    assert cfg["epochs"] == 3 and "lr" in cfg


def test_override_replaces_and_none_keeps_preset_value():
    cfg = setup("paper", PRESETS, device="cpu", epochs=7, lr=None)
    assert cfg.epochs == 7
    assert cfg.lr == 0.05


def test_override_does_not_mutate_presets():
    setup("fast", PRESETS, device="cpu", epochs=99)
    assert PRESETS["fast"]["epochs"] == 3


def test_unknown_preset_names_it_and_lists_known():
    with pytest.raises(ValueError, match=r"'huge'.*'fast'.*'paper'"):
        setup("huge", PRESETS)


def test_unknown_knob_is_named():
    with pytest.raises(ValueError, match="epoch"):
        setup("fast", PRESETS, epoch=3)


@pytest.mark.parametrize(
    "knob, value",
    [("epochs", "10"), ("epochs", 2.5), ("epochs", True), ("use_bias", 1), ("lr", "0.1"),
     ("hidden", 16), ("name", 3), ("lr", False)],
)
def test_wrong_override_type_names_knob_expected_and_got(knob, value):
    with pytest.raises(TypeError, match=knob) as error:
        setup("fast", PRESETS, **{knob: value})
    assert type(value).__name__ in str(error.value)


def test_int_is_accepted_and_converted_for_float_knob():
    cfg = setup("fast", PRESETS, device="cpu", lr=1)
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)


def test_sequence_knob_accepts_tuple_converted_to_preset_type():
    assert setup("fast", PRESETS, device="cpu", hidden=(8,)).hidden == [8]


def test_knob_with_none_default_accepts_any_type():
    assert setup("fast", PRESETS, device="cpu", optional="x").optional == "x"


def test_checks_raise_with_description():
    checks = {"epochs": (lambda v: v > 0, "a positive integer")}
    assert setup("fast", PRESETS, device="cpu", checks=checks, epochs=2).epochs == 2
    with pytest.raises(ValueError, match="epochs must be a positive integer, got -1"):
        setup("fast", PRESETS, checks=checks, epochs=-1)


def test_check_for_unknown_knob_or_malformed_check():
    with pytest.raises(ValueError, match="steps"):
        setup("fast", PRESETS, checks={"steps": (lambda v: True, "anything")})
    with pytest.raises(TypeError, match="epochs"):
        setup("fast", PRESETS, checks={"epochs": lambda v: True})


@pytest.mark.parametrize("presets", [{}, [], {"fast": [1, 2]}])
def test_malformed_presets_rejected(presets):
    with pytest.raises(TypeError):
        setup("fast", presets)


@pytest.mark.parametrize("knob", ["seed", "device", "preset", "not valid"])
def test_reserved_or_invalid_knob_names_rejected(knob):
    with pytest.raises(ValueError, match=repr(knob)):
        setup("p", {"p": {knob: 1}})


# --------------------------------------------------------------------------- #
# Settings
# --------------------------------------------------------------------------- #
def test_settings_is_read_only_and_readable():
    cfg = setup("fast", PRESETS, device="cpu", seed=3)
    with pytest.raises(AttributeError, match="read-only"):
        cfg.epochs = 5
    with pytest.raises(AttributeError, match="epochz"):
        cfg.epochz
    text = cfg.table()
    for name in ("preset", "device", "seed", "epochs", "hidden"):
        assert name in text
    assert repr(cfg).startswith("Settings(preset='fast'")
    assert cfg.as_dict()["seed"] == 3
    assert list(cfg)[:3] == ["preset", "device", "seed"]


def test_settings_survive_copy_and_pickle():
    import copy
    import pickle

    cfg = setup("fast", PRESETS, device="cpu")
    assert copy.deepcopy(cfg) == cfg
    assert pickle.loads(pickle.dumps(cfg)) == cfg


def test_settings_equality():
    assert Settings({"a": 1}) == Settings({"a": 1})
    assert Settings({"a": 1}) != Settings({"a": 2})


# --------------------------------------------------------------------------- #
# Devices
# --------------------------------------------------------------------------- #
def test_auto_device_matches_availability():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert setup("fast", PRESETS).device.type == expected


def test_cpu_device_and_torch_device_input():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("name", ["gpu", "tpu", "", "cuda:x", "CPU"])
def test_unknown_device_rejected(name):
    with pytest.raises(ValueError):
        resolve_device(name)


def test_non_string_device_rejected():
    with pytest.raises(TypeError):
        resolve_device(0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error path")
def test_unavailable_cuda_rejected():
    with pytest.raises(ValueError, match="not available"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="not available"):
        resolve_device("cuda:1")


def test_cuda_index_beyond_device_count_rejected(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(ValueError, match="only 1 CUDA"):
        resolve_device("cuda:3")


def test_unavailable_mps_rejected(monkeypatch):
    monkeypatch.setattr(config, "_mps_available", lambda: False)
    with pytest.raises(ValueError, match="mps"):
        resolve_device("mps")


# --------------------------------------------------------------------------- #
# Seeds
# --------------------------------------------------------------------------- #
def _draws():
    return random.random(), np.random.rand(), torch.rand(1).item()


def test_setup_seeds_all_generators_reproducibly():
    setup("fast", PRESETS, device="cpu", seed=5)
    first = _draws()
    setup("fast", PRESETS, device="cpu", seed=5)
    assert _draws() == first
    setup("fast", PRESETS, device="cpu", seed=6)
    assert _draws() != first


def test_seed_everything_returns_seeded_generator():
    a = torch.rand(3, generator=seed_everything(1))
    b = torch.rand(3, generator=seed_everything(1))
    assert torch.equal(a, b)


@pytest.mark.parametrize("seed, error", [(-1, ValueError), (2**32, ValueError), (1.0, TypeError),
                                         ("1", TypeError), (True, TypeError), (None, TypeError)])
def test_bad_seed_rejected(seed, error):
    with pytest.raises(error, match="seed"):
        setup("fast", PRESETS, seed=seed)


# --------------------------------------------------------------------------- #
# Plotting style (lib.book.plotting)
# --------------------------------------------------------------------------- #
def test_use_style_sets_book_rcparams():
    plotting.use_style()
    assert matplotlib.rcParams["figure.dpi"] == 110
    assert matplotlib.rcParams["axes.grid"] is True
    assert matplotlib.rcParams["figure.constrained_layout.use"] is True


def test_new_figure_and_label():
    fig, axes = plotting.new_figure(ncols=2, nrows=1)
    try:
        assert axes.shape == (2,)
        assert fig.get_size_inches().tolist() == [8.0, 3.0]
        ax = plotting.label(axes[0], "Loss", "epoch", "loss (nats)")
        assert ax is axes[0]
        assert (ax.get_title(), ax.get_xlabel(), ax.get_ylabel()) == ("Loss", "epoch", "loss (nats)")
        plotting.label(ax, xlabel="step")  # None leaves the others alone
        assert ax.get_title() == "Loss" and ax.get_xlabel() == "step"
    finally:
        plt.close(fig)


def test_plotting_rejects_bad_input():
    with pytest.raises(ValueError, match="ncols"):
        plotting.new_figure(ncols=0)
    with pytest.raises(TypeError, match="nrows"):
        plotting.new_figure(nrows=1.5)
    fig, axes = plotting.new_figure(ncols=2)
    try:
        with pytest.raises(TypeError, match="single"):
            plotting.label(axes, "title")
        with pytest.raises(TypeError, match="strings"):
            plotting.label(axes[0], title=3)
    finally:
        plt.close(fig)
