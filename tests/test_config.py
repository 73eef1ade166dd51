"""Tests for lib.book.config (presets, overrides, device, seeds) and lib.book.plotting (book style)."""

import random
import re

import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("Agg")  # headless: tests must not need a display

import matplotlib.pyplot as plt  # noqa: E402

from lib.book import config, plotting, presets  # noqa: E402
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
# Rules inferred from the presets' values, explicit rules, relations
# --------------------------------------------------------------------------- #
RULED = {
    "tiny": {"epochs": 2, "lr": 0.1, "momentum": 0.0, "hidden": [8], "data": "digits", "wd": [0.0],
             "cache": False, "files": None, "offset": -1},
    "paper": {"epochs": 100, "lr": 0.01, "momentum": 0.9, "hidden": [512, 256], "data": "mnist",
              "wd": [0.0, 5e-4], "cache": True, "files": None, "offset": 3},
}


@pytest.mark.parametrize("knob, value, message", [
    ("epochs", 0, "epochs must be an integer >= 1, got 0"),
    ("lr", 0.0, "lr must be a number > 0, got 0.0"),
    ("momentum", -0.5, "momentum must be a number >= 0, got -0.5"),
    ("hidden", [], "hidden must be a non-empty list of integers >= 1, got []"),
    ("hidden", [8, 0], "hidden must be a non-empty list of integers >= 1, got [8, 0]"),
    ("hidden", [8, 2.5], "hidden must be a non-empty list of integers >= 1"),
    ("data", "cifar10", "data must be one of 'digits', 'mnist', got 'cifar10'"),
    ("wd", [-1e-4], "wd must be a non-empty list of numbers >= 0"),
])
def test_rules_are_inferred_from_the_presets_values(knob, value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        setup("tiny", RULED, device="cpu", **{knob: value})


def test_inferred_rules_accept_what_the_presets_allow():
    cfg = setup("tiny", RULED, device="cpu", epochs=1, momentum=0.0, hidden=(3, 3), data="mnist",
                offset=-7, files=["anything"], wd=[1e-3])
    assert (cfg.epochs, cfg.hidden, cfg.offset, cfg.files) == (1, [3, 3], -7, ["anything"])


def test_rules_of_a_knob_with_none_in_some_presets_accept_none():
    presets = {"a": {"width": None}, "b": {"width": 4}}
    assert setup("a", presets, device="cpu").width is None
    with pytest.raises(ValueError, match="width must be None or an integer >= 1, got 0"):
        setup("b", presets, device="cpu", width=0)


@pytest.mark.parametrize("rule, good, bad, text", [
    (">= 4", 4, 3, "an integer >= 4"),
    ("in [0, 1)", 0.0, 1.0, "a number in [0, 1)"),
    ("in (0, 0.5]", 0.5, 0.0, "a number in (0, 0.5]"),
    ("< 0", -1, 0, "an integer < 0"),
    ("one of digits, mnist, cifar10", "cifar10", "svhn", "one of 'digits', 'mnist', 'cifar10'"),
    ("matches (digits|mnist)/(mlp|lenet)", "mnist/mlp", "mnist/vit", "matching (digits|mnist)/(mlp|lenet)"),
    ((">= 3", "Hutch++ needs three groups"), 3, 2, "an integer >= 3 (Hutch++ needs three groups)"),
    ((lambda v: v % 2 == 0, "an even number"), 4, 3, "an even number"),
])
def test_explicit_rules(rule, good, bad, text):
    kind = type(good)
    presets = {"p": {"x": kind(good) if kind is not str else good}}
    assert setup("p", presets, device="cpu", checks={"x": rule}, x=good).x == good
    with pytest.raises(ValueError, match=re.escape(f"x must be {text}, got {bad!r}")):
        setup("p", presets, device="cpu", checks={"x": rule}, x=bad)


def test_explicit_rules_apply_to_each_element_of_a_list():
    presets = {"p": {"tasks": ["digits/mlp"], "targets": [90.0]}}
    checks = {"tasks": "matches (digits|mnist)/(mlp|lenet)", "targets": "in (0, 100)"}
    assert setup("p", presets, device="cpu", checks=checks, tasks=["mnist/lenet", "digits/mlp"]).tasks
    with pytest.raises(ValueError, match="tasks must be a non-empty list of strings matching"):
        setup("p", presets, device="cpu", checks=checks, tasks=["mnist/lenet", "svhn/mlp"])
    with pytest.raises(ValueError, match=re.escape("targets must be a non-empty list of numbers in (0, 100)")):
        setup("p", presets, device="cpu", checks=checks, targets=[50.0, 100.0])


def test_any_switches_inference_off():
    presets = {"p": {"name": "demo"}}
    with pytest.raises(ValueError, match="name must be one of 'demo'"):
        setup("p", presets, device="cpu", name="other")
    assert setup("p", presets, device="cpu", checks={"name": "any"}, name="other").name == "other"


@pytest.mark.parametrize("rule, error", [(">= four", ValueError), ("in [0, 1", ValueError),
                                         ("between 1 and 2", ValueError), (3, TypeError),
                                         (("a", "b", "c"), TypeError)])
def test_malformed_rules_name_the_knob(rule, error):
    with pytest.raises(error, match="epochs"):
        setup("fast", PRESETS, checks={"epochs": rule})


def test_relations_between_knobs():
    presets = {"p": {"n": 10, "d": 20}}
    relations = [(lambda d, n: d > n, "the analysis needs d > n, got d = {d}, n = {n}")]
    assert setup("p", presets, device="cpu", relations=relations, d=11).d == 11
    with pytest.raises(ValueError, match="needs d > n, got d = 10, n = 10"):
        setup("p", presets, device="cpu", relations=relations, d=10)
    with pytest.raises(ValueError, match="unknown knobs"):
        setup("p", presets, device="cpu", relations=[(lambda m: True, "m")])
    with pytest.raises(TypeError, match="relation"):
        setup("p", presets, device="cpu", relations=[lambda d: True])


def test_knobs_dict_is_the_papermill_parameter():
    assert setup("fast", PRESETS, device="cpu", knobs={"epochs": 7}).epochs == 7
    assert setup("fast", PRESETS, device="cpu", knobs={}).epochs == 3
    with pytest.raises(TypeError, match="knobs must be a dict"):
        setup("fast", PRESETS, knobs="epochs=7")
    with pytest.raises(ValueError, match="epoch"):
        setup("fast", PRESETS, knobs={"epoch": 7})
    with pytest.raises(ValueError, match="both"):
        setup("fast", PRESETS, knobs={"epochs": 7}, epochs=8)


# --------------------------------------------------------------------------- #
# The chapters' presets (lib.book.presets)
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("chapter", presets.chapters())
def test_every_preset_of_every_chapter_is_valid(chapter):
    declared = presets.load(chapter)
    assert list(declared.presets)[:3] == ["tiny", "small", "paper"] or set(declared.presets) >= {"tiny", "small"}
    for name in declared.presets:
        cfg = setup(name, chapter, device="cpu")
        assert list(cfg)[3:] == list(declared.knobs)
    assert all(isinstance(about, str) and about for about in declared.knobs.values())


def test_chapter_presets_reject_bad_values_naming_the_knob():
    with pytest.raises(TypeError, match="num_points"):
        setup("tiny", "linear_models", knobs={"num_points": "20"})
    with pytest.raises(ValueError, match="num_points must be an integer >= 4, got 3"):
        setup("tiny", "linear_models", knobs={"num_points": 3})
    with pytest.raises(ValueError, match="n_features > num_points"):
        setup("tiny", "linear_models", knobs={"n_features": 20})
    with pytest.raises(ValueError, match="momentum must be a number in"):
        setup("tiny", "curvature", knobs={"momentum": 1.0})
    with pytest.raises(ValueError, match="dataset must be one of 'digits', 'mnist'"):
        setup("tiny", "curvature", knobs={"dataset": "cifar10"})
    with pytest.raises(ValueError, match="targets must give one accuracy per task"):
        setup("tiny", "natural_gradient", knobs={"targets": [80.0, 90.0]})
    with pytest.raises(ValueError, match="patch_size 3 does not divide"):
        setup("tiny", "geodesic_sharpness", knobs={"patch_size": 3})
    with pytest.raises(ValueError, match="checkpoints must be None or a list of at least 3 existing"):
        setup("tiny", "geodesic_sharpness", knobs={"checkpoints": ["no/such/file.pt"] * 3})
    with pytest.raises(ValueError, match="corner_runs = 3 must be divisible"):
        setup("tiny", "inpca", knobs={"corner_runs": 3})
    with pytest.raises(ValueError, match="sharp_tasks must be a non-empty list of strings matching"):
        setup("tiny", "reparametrization", knobs={"sharp_tasks": ["digits/vit"]})
    assert setup("tiny", "reparametrization", device="cpu",
                 knobs={"sharp_tasks": ["cifar10/wrn-16-4"]}).sharp_tasks == ["cifar10/wrn-16-4"]


def test_unknown_chapter_and_misdeclared_presets(monkeypatch):
    with pytest.raises(ValueError, match="no presets for chapter 'nope'"):
        setup("small", "nope")
    with pytest.raises(TypeError, match="chapter"):
        presets.load(3)
    with pytest.raises(TypeError, match="checks"):
        setup("small", "curvature", checks={"epochs": ">= 1"})
    import lib.book.presets.inpca as module
    monkeypatch.setitem(module.PRESETS, "broken", {"archs": ["mlp"]})
    with pytest.raises(ValueError, match="preset 'broken' of inpca must set exactly the knobs"):
        presets.load("inpca")


def test_presets_table_lists_every_knob():
    text = presets.load("curvature").table()
    assert text.splitlines()[0].split()[:4] == ["knob", "tiny", "small", "paper"]
    assert "num_samples" in text and "label samples of the Monte-Carlo Fisher" in text


@pytest.mark.parametrize("chapter, old, new", [("curvature", "mc_samples", "num_samples"),
                                               ("geodesic_sharpness", "n_iter", "num_steps"),
                                               ("linear_models", "n_samples", "num_points"),
                                               ("natural_gradient", "kfac_damping", "kfac_factor_damping")])
def test_a_renamed_knob_names_its_new_name(chapter, old, new):
    with pytest.raises(ValueError, match=f"knob '{old}' is now called '{new}'"):
        setup("tiny", chapter, knobs={old: 1})


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


def test_cell_edges_centre_cells_on_the_grid():
    assert plotting.cell_edges([1.0, 2.0, 4.0]).tolist() == [0.5, 1.5, 3.0, 5.0]
    edges = plotting.cell_edges([1.0, 10.0, 100.0], log=True)
    assert np.allclose(edges, [10 ** -0.5, 10 ** 0.5, 10 ** 1.5, 10 ** 2.5])
    with pytest.raises(ValueError, match="values"):
        plotting.cell_edges([1.0])


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
