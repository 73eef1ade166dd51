"""Tests for lib.book.population: configs, checkpoint steps, trajectories and the cached population."""

import dataclasses
import math

import pytest
import torch

from lib.book import population as pop
from lib.book.synthetic import make_sloppy_gaussian
from lib.book.population import Config, Population, checkpoint_steps, train_population, train_trajectory


@pytest.fixture(scope="module")
def split():
    return make_sloppy_gaussian(200, 50, d=20, seed=0)


def _configs():
    return [Config("mlp", "sgd", 0.1, 50, seed=0, epochs=2, hidden=(16,)),
            Config("mlp", "nesterov", 0.05, 40, seed=1, epochs=2, hidden=(16,)),
            Config("mlp", "adam", 0.01, 64, weight_decay=1e-5, seed=2, epochs=2, hidden=(8,))]


# --------------------------------------------------------------------------- #
# Config and checkpoint_steps
# --------------------------------------------------------------------------- #
def test_config_name_and_key():
    config = Config("MLP", "sgd", 0.1, 64, hidden=[64])
    assert config.name == "mlp-sgd-lr0.1-b64-wd0-s0"
    assert config.hidden == (64,) and config.key()["hidden"] == [64]
    assert Config("mlp", "sgd", 0.1, 64, init="corner", corner_seed=3).name.endswith("-corner3")


@pytest.mark.parametrize("kwargs, error, match", [
    ({"optimizer": "rmsprop"}, ValueError, "unknown optimizer"),
    ({"lr": 0.0}, ValueError, "lr"),
    ({"lr": -1}, ValueError, "lr"),
    ({"batch_size": 0}, ValueError, "batch_size"),
    ({"batch_size": 2.0}, TypeError, "batch_size"),
    ({"weight_decay": -1e-3}, ValueError, "weight_decay"),
    ({"init": "zeros"}, ValueError, "unknown init"),
    ({"epochs": 0}, ValueError, "epochs"),
    ({"hidden": 64}, TypeError, "hidden"),
    ({"lr_schedule": "step"}, ValueError, "unknown lr_schedule"),
])
def test_config_rejects_bad_values(kwargs, error, match):
    args = {"arch": "mlp", "optimizer": "sgd", "lr": 0.1, "batch_size": 8, **kwargs}
    with pytest.raises(error, match=match):
        Config(**args)


@pytest.mark.parametrize("total, num", [(1000, 70), (69, 70), (100, 70), (5, 70), (0, 5), (12, 2)])
def test_checkpoint_steps(total, num):
    steps = checkpoint_steps(total, num)
    assert steps[0] == 0 and steps[-1] == total
    assert steps == sorted(set(steps))
    assert len(steps) == (num if total + 1 >= num else total + 1)
    if total == 1000:  # denser early: the first half of the checkpoints lies in the first 10%
        assert steps[num // 2] < 0.1 * total


def test_checkpoint_steps_epoch_schedule():
    assert checkpoint_steps(12, 5, schedule="epoch", steps_per_epoch=3) == [0, 3, 6, 9, 12]
    assert checkpoint_steps(0, schedule="epoch", steps_per_epoch=4) == [0]
    assert checkpoint_steps(12, 5, schedule="geometric") == checkpoint_steps(12, 5)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        checkpoint_steps(12, schedule="epoch")
    with pytest.raises(ValueError, match="whole number of epochs"):
        checkpoint_steps(10, schedule="epoch", steps_per_epoch=3)
    with pytest.raises(ValueError, match="unknown schedule"):
        checkpoint_steps(10, schedule="linear")


def test_config_lr_schedule_key_and_name():
    constant, cosine = Config("mlp", "sgd", 0.1, 64), Config("mlp", "sgd", 0.1, 64, lr_schedule="cosine")
    assert "lr_schedule" not in constant.key()          # keys of constant-lr runs are unchanged
    assert cosine.key()["lr_schedule"] == "cosine" and cosine.name.endswith("-cos")


# --------------------------------------------------------------------------- #
# train_trajectory
# --------------------------------------------------------------------------- #
def test_train_trajectory_outputs_and_determinism(split):
    config = _configs()[1]
    a = train_trajectory(config, split, num_checkpoints=5)
    b = train_trajectory(config, split, num_checkpoints=5)
    total = 2 * 5  # 2 epochs of ceil(200 / 40) batches
    assert a["steps"].tolist() == checkpoint_steps(total, 5) and a["total_steps"] == total
    assert a["train_log_probs"].shape == (5, 200, 5) and a["test_log_probs"].shape == (5, 50, 5)
    assert a["train_log_probs"].dtype == torch.float32
    for key in ("train_loss", "test_loss", "train_error", "test_error"):
        assert a[key].shape == (5,)
    torch.testing.assert_close(a["train_log_probs"].logsumexp(dim=2), torch.zeros(5, 200),
                               atol=1e-5, rtol=0)
    assert not a["diverged"] and a["config"] == config.key()
    assert a["train_loss"][-1] < a["train_loss"][0]
    for key in ("train_log_probs", "test_log_probs", "train_loss"):
        assert torch.equal(a[key], b[key])


def test_corner_init_starts_near_a_corner(split):
    default = Config("mlp", "sgd", 0.1, 50, epochs=1, hidden=(32,))
    corner = Config("mlp", "sgd", 0.1, 50, epochs=1, hidden=(32,), init="corner")
    max_prob = {c.init: train_trajectory(c, split, num_checkpoints=2)["train_log_probs"][0]
                .exp().max(dim=1).values.mean().item() for c in (default, corner)}
    assert max_prob["corner"] > 0.8
    assert max_prob["default"] < 0.4  # near uniform (1/5) at PyTorch's initialization


def test_cosine_schedule_anneals_per_update(split, monkeypatch):
    # the learning rate of update t of T is lr (1 + cos(pi t / T)) / 2, as CosineAnnealingLR(T_max=T)
    config = Config("mlp", "nesterov", 0.05, 40, seed=1, epochs=2, hidden=(16,), lr_schedule="cosine")
    seen, real = [], pop._optimizer

    def spy(config, parameters):
        optimizer = real(config, parameters)
        step = optimizer.step

        def recorded_step(*args, **kwargs):
            seen.append(optimizer.param_groups[0]["lr"])
            return step(*args, **kwargs)

        optimizer.step = recorded_step
        return optimizer

    monkeypatch.setattr(pop, "_optimizer", spy)
    result = train_trajectory(config, split, num_checkpoints=3)
    T = result["total_steps"]
    assert T == 10 and len(seen) == T
    expected = [0.5 * 0.05 * (1 + math.cos(math.pi * t / T)) for t in range(T)]
    assert seen == pytest.approx(expected, rel=1e-12)
    # the reference torch scheduler gives the same values
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.05)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=T)
    torch_lrs = []
    for _ in range(T):
        torch_lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx(torch_lrs, rel=1e-9)
    constant = train_trajectory(dataclasses.replace(config, lr_schedule="constant"), split, num_checkpoints=3)
    assert not torch.equal(constant["train_log_probs"][-1], result["train_log_probs"][-1])


def test_two_schedules_from_one_run(split):
    # one training run records the union; each schedule's checkpoints equal a run with that schedule alone
    config = Config("mlp", "sgd", 0.1, 50, seed=0, epochs=3, hidden=(16,), lr_schedule="cosine")
    both = train_trajectory(config, split, num_checkpoints=6, schedule=("geometric", "epoch"))
    geometric = train_trajectory(config, split, num_checkpoints=6)
    epoch = train_trajectory(config, split, num_checkpoints=6, schedule="epoch")
    assert epoch["steps"].tolist() == [0, 4, 8, 12]
    assert both["steps"].tolist() == sorted(set(geometric["steps"].tolist()) | {0, 4, 8, 12})
    for name, alone in (("geometric", geometric), ("epoch", epoch)):
        mask = both["schedules"][name]
        assert both["steps"][mask].tolist() == alone["steps"].tolist()
        for key in ("train_log_probs", "test_log_probs", "train_error", "test_loss"):
            assert torch.equal(both[key][mask], alone[key])
        assert list(alone["schedules"]) == [name] and alone["schedules"][name].all()
    with pytest.raises(ValueError, match="unknown schedule"):
        train_trajectory(config, split, schedule=("geometric", "linear"))
    with pytest.raises(ValueError, match="twice"):
        train_trajectory(config, split, schedule=("epoch", "epoch"))


def test_diverged_trajectory_is_marked_and_padded_with_nan(split):
    config = Config("mlp", "sgd", 1e30, 50, epochs=2, hidden=(16,), init="corner")
    result = train_trajectory(config, split, num_checkpoints=5)
    assert result["diverged"]
    assert torch.isnan(result["train_log_probs"][-1]).all()
    assert torch.isfinite(result["train_log_probs"][0]).all()


# --------------------------------------------------------------------------- #
# train_population: caching and resuming
# --------------------------------------------------------------------------- #
def test_interrupted_population_resumes_identically(split, tmp_path, monkeypatch):
    configs = _configs()
    reference = train_population(configs, split, "ref", num_checkpoints=5, root=tmp_path / "a",
                                 progress=False)

    real, calls = pop.train_trajectory, []

    def interrupted(config, *args, **kwargs):
        calls.append(config)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(config, *args, **kwargs)

    monkeypatch.setattr(pop, "train_trajectory", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_population(configs, split, "ref", num_checkpoints=5, root=tmp_path / "b",
                         progress=False)
    assert len(list((tmp_path / "b" / "ref").glob("*.pt"))) == 1
    resumed = train_population(configs, split, "ref", num_checkpoints=5, root=tmp_path / "b",
                               progress=False)
    assert calls == [configs[0], configs[1], configs[1], configs[2]]  # config 0 not retrained
    for field in ("steps", "train_log_probs", "test_log_probs", "train_error", "diverged"):
        assert torch.equal(getattr(reference, field), getattr(resumed, field))
    # A third call only reads the files.
    train_population(configs, split, "ref", num_checkpoints=5, root=tmp_path / "b", progress=False)
    assert len(calls) == 4
    names = sorted(p.name for p in (tmp_path / "b" / "ref").glob("*.pt"))
    assert names == sorted(p.name for p in (tmp_path / "a" / "ref").glob("*.pt"))
    assert names[0].startswith("mlp-adam-lr0.01-b64-wd1e-05-s2-")


def test_population_views(split, tmp_path):
    population = train_population(_configs(), split, "views", num_checkpoints=4, root=tmp_path,
                                  progress=False)
    assert isinstance(population, Population) and len(population) == 3
    assert population.train_log_probs.shape == (3, 4, 200, 5)
    assert population.steps.shape == (3, 4) and population.diverged.tolist() == [False] * 3
    assert torch.equal(population.fraction[:, -1], torch.ones(3, dtype=torch.float64))
    models, config_index, checkpoint_index = population.models("test")
    assert models.shape == (12, 50, 5)
    assert torch.equal(models[5], population.test_log_probs[1, 1])
    assert config_index[5] == 1 and checkpoint_index[5] == 1
    sgd = population.select(lambda c: c.optimizer != "adam")
    assert [c.optimizer for c in sgd.configs] == ["sgd", "nesterov"]
    assert torch.equal(sgd.train_loss, population.train_loss[:2])
    assert len(population.select([True, False, True])) == 2
    with pytest.raises(ValueError, match="booleans"):
        population.select([True])
    with pytest.raises(ValueError, match="split"):
        population.models("valid")
    assert list(population.schedules) == ["geometric"] and population.schedules["geometric"].all()
    with pytest.raises(ValueError, match="not recorded"):
        population.at("epoch")


def test_population_at_schedule(split, tmp_path):
    configs = [Config("mlp", o, 0.05, 50, seed=s, epochs=3, hidden=(16,), lr_schedule="cosine")
               for o in ("sgd", "adam") for s in range(2)]
    both = train_population(configs, split, "both", num_checkpoints=6, schedule=("geometric", "epoch"),
                            root=tmp_path, progress=False)
    geometric = train_population(configs, split, "both", num_checkpoints=6, root=tmp_path, progress=False)
    assert len(list((tmp_path / "both").glob("*.pt"))) == 8     # a different schedule is a different file
    per_epoch = both.at("epoch")
    assert per_epoch.steps.tolist() == [[0, 4, 8, 12]] * 4
    assert per_epoch.train_log_probs.shape == (4, 4, 200, 5) and list(per_epoch.schedules) == ["epoch"]
    assert torch.equal(per_epoch.train_error[:, -1], both.train_error[:, -1])
    again = both.at("geometric")
    for field in ("steps", "train_log_probs", "test_log_probs", "train_loss", "test_error"):
        assert torch.equal(getattr(again, field), getattr(geometric, field))
    sub = both.select([True, False, True, False])
    assert sub.schedules["epoch"].shape == (2, both.steps.shape[1])
    assert torch.equal(sub.at("epoch").test_log_probs, per_epoch.test_log_probs[[0, 2]])
    with pytest.raises(ValueError, match="not recorded"):
        per_epoch.at("geometric")
