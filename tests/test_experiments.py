"""Tests for lib.book.experiments (the chapters' experiment drivers) and lib.book.checkpoint.ResultCache."""

import numpy as np
import pytest
import torch
from torch import nn

from lib.book.checkpoint import ResultCache, checkpoint_path
from lib.book.experiments import (bootstrap_r_squared, diagonal_net_draw, measure, r_squared,
                                  sloppy_populations, train_vit)
from lib.book.models import diagonal_net
from lib.book.synthetic import make_sparse_regression
from lib.book.train import accuracy, train_diagonal_nets


@pytest.fixture
def data_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("BOOK_DATA", str(tmp_path))
    return tmp_path


def test_result_cache_merges_its_base_key_and_computes_once(data_folder):
    cache = ResultCache("chapter", seed=0, version=2)
    calls = []
    compute = lambda: calls.append(1) or {"value": torch.tensor([1.0, 2.0])}
    first = cache("thing", {"x": 1}, compute)
    again = cache("thing", {"x": 1}, compute)
    assert len(calls) == 1 and torch.equal(first["value"], again["value"])
    assert cache.path("thing", {"x": 1}) == checkpoint_path("chapter/thing", key={"seed": 0, "version": 2, "x": 1})
    assert cache.path("thing", {"x": 1}).is_file()
    cache("thing", {"x": 2}, compute)
    assert len(calls) == 2
    assert cache.key({"seed": 5}) == {"seed": 5, "version": 2}  # the caller's entries win


def test_disabled_result_cache_always_computes(data_folder):
    cache = ResultCache("chapter", enabled=False)
    calls = []
    for _ in range(2):
        cache("thing", {}, lambda: calls.append(1))
    assert len(calls) == 2 and cache.path("thing", {}) is None
    assert not any(data_folder.rglob("*.pt"))
    with pytest.raises(TypeError, match="enabled"):
        ResultCache("chapter", enabled=1)
    with pytest.raises(ValueError, match="name"):
        ResultCache("../outside")
    with pytest.raises(TypeError, match="key"):
        cache("thing", [1], lambda: None)


def test_measure_takes_every_variant_once_and_caches_under_the_points(data_folder):
    cache = ResultCache("chapter")
    net, data = nn.Linear(2, 1), (torch.randn(5, 2), torch.randn(5, 1))
    calls = []
    variants = {"norm": lambda m, d: calls.append("norm") or m.weight.detach().norm(),
                "points": lambda m, d: calls.append("points") or len(d[0])}
    values = measure(net, data, variants, {"model": 1}, cache=cache, num_steps=3)
    assert values == {"norm": float(net.weight.norm()), "points": 5.0} and calls == ["norm", "points"]
    assert measure(net, data, variants, {"model": 1}, cache=cache, num_steps=3) == values and len(calls) == 2
    measure(net, (data[0][:4], data[1][:4]), variants, {"model": 1}, cache=cache, num_steps=3)
    assert len(calls) == 4
    key = {"model": 1, "variants": ["norm", "points"], "num_steps": 3, "points": 5}
    assert checkpoint_path("chapter/sharpness", key=key).is_file()


def test_diagonal_net_draw_matches_its_recipe(data_folder):
    variants = {"weight norm": lambda net, data: float((net.u * net.v).norm())}
    draw = diagonal_net_draw(4, 1, variants, dim=6, num_test=5, num_models=3, max_steps=200, seed=2,
                             cache=ResultCache("chapter"), rho=0.1)
    seed = 2 + 1000
    data = make_sparse_regression(4, 5, 6, sparsity=0.9, seed=seed, dtype=torch.float64)
    rng = np.random.default_rng(seed)
    scales = np.exp(rng.uniform(np.log(0.02), np.log(1.0), 3)).tolist()
    lrs = np.exp(rng.uniform(np.log(0.02), np.log(0.06), 3)).tolist()
    nets = train_diagonal_nets(*data.train, scales, lrs, [1000 * seed + i for i in range(3)], 200)
    assert draw["scales"] == scales and torch.equal(draw["u"], nets["u"]) and torch.equal(draw["v"], nets["v"])
    test_loss = ((nets["u"] * nets["v"]) @ data.X_test.T - data.y_test).pow(2).mean(1)
    assert draw["test_loss"] == test_loss.tolist()
    assert draw["zero_loss"] == float(data.y_test.pow(2).mean())
    assert draw["values"]["weight norm"] == [float((nets["u"][i] * nets["v"][i]).norm()) for i in range(3)]
    net = diagonal_net(6)
    assert set(draw) >= {"train_loss", "steps"} and net.u.shape == (6,)
    assert len(list(data_folder.rglob("diagonal-draw-*.pt"))) == 1


def test_train_vit_trains_once_and_reports_errors(data_folder):
    generator = torch.Generator().manual_seed(0)
    X, y = torch.randn(32, 1, 8, 8, generator=generator), torch.randint(0, 3, (32,), generator=generator)
    config = dict(dim=8, depth=1, heads=2, lr=1e-2, wd=0.0, epochs=1, seed=0)
    cache = ResultCache("chapter")
    kwargs = dict(image_shape=(1, 8, 3), patch_size=4, cache=cache, dataset="noise")
    model, train_err, test_err = train_vit(config, (X[:24], y[:24]), (X[24:], y[24:]), **kwargs)
    assert not model.training
    assert train_err == 1 - accuracy(model, X[:24], y[:24]) and 0 <= test_err <= 1
    again = train_vit(config, (X[:24], y[:24]), (X[24:], y[24:]), **kwargs)[0]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert len(list(data_folder.rglob("vit-*.pt"))) == 1


def test_sloppy_populations_trains_students_and_corner_runs(data_folder):
    out = sloppy_populations("demo", 0.5, num_train=40, seed=0, epochs=1, batch_sizes=[20], weight_decays=[0.0],
                             num_seeds=1, corner_counts=[1, 2], corner_runs=2, num_checkpoints=4,
                             lrs={"sgd": 0.1, "nesterov": 0.05}, corner_lrs={"sgd": 0.1, "nesterov": 0.02})
    assert out["data"].X_train.shape == (40, 200) and out["data"].X_test.shape == (10, 200)
    students, corners = out["students"], out["corners"]
    assert len(students.configs) == 4            # two widths x two optimizers
    assert {c.hidden for c in students.configs} == {(512,), (512, 512)}
    assert sorted(corners) == [1, 2] and all(len(p.configs) == 2 for p in corners.values())
    assert {c.corner_seed for c in corners[2].configs} == {0, 1}
    assert [c.optimizer for c in corners[1].configs] == ["sgd", "nesterov"]


def test_r_squared_and_its_bootstrap_interval():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 5))
    y = 2 * x + 0.5 * rng.normal(size=(6, 5))
    assert r_squared(x.ravel(), y.ravel()) == float(np.corrcoef(x.ravel(), y.ravel())[0, 1] ** 2)
    draws = [rng.integers(0, 6, 6) for _ in range(50)]
    low, high = bootstrap_r_squared(x, y, draws)
    expected = np.percentile([r_squared(x[d].ravel(), y[d].ravel()) for d in draws], [2.5, 97.5])
    assert (low, high) == tuple(expected) and 0 <= low <= high <= 1
    with pytest.raises(ValueError, match="runs, k"):
        bootstrap_r_squared(x.ravel(), y.ravel(), draws)
    with pytest.raises(ValueError, match="draws"):
        bootstrap_r_squared(x, y, [])
