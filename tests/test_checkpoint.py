"""Tests for lib.book.checkpoint and checkpointed / resumed training in lib.book.train."""

import re

import numpy as np
import pytest
import torch
from torch import nn

from lib.book.checkpoint import checkpoint_path, load_checkpoint, save_atomic
from lib.book.synthetic import make_regression, make_teacher_classification
from lib.book.paths import data_root
from lib.book.models import mlp
from lib.book.train import train


def _matches_path(path):
    return re.escape(str(path))


# --------------------------------------------------------------------------- #
# save_atomic / load_checkpoint / checkpoint_path
# --------------------------------------------------------------------------- #
def test_save_atomic_round_trip_creates_folders_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "a" / "b" / "run.pt"
    state = {"w": torch.arange(6.0).reshape(2, 3), "epoch": 3, "loss": [0.5, 0.25],
             "meta": {"name": "sgd", "betas": (0.9, 0.99), "none": None}}
    assert save_atomic(state, path) == path
    save_atomic({**state, "epoch": 4}, path)  # overwriting works too
    assert [p.name for p in path.parent.iterdir()] == ["run.pt"]
    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 4 and loaded["loss"] == [0.5, 0.25]
    assert loaded["meta"] == {"name": "sgd", "betas": (0.9, 0.99), "none": None}
    assert torch.equal(loaded["w"], state["w"])


def test_failed_save_keeps_old_file_and_removes_temp_file(tmp_path):
    path = tmp_path / "run.pt"
    save_atomic({"epoch": 1}, path)
    with pytest.raises(Exception):
        save_atomic({"epoch": 2, "bad": lambda: None}, path)  # lambdas cannot be pickled
    assert [p.name for p in tmp_path.iterdir()] == ["run.pt"]
    assert load_checkpoint(path) == {"epoch": 1}
    with pytest.raises(TypeError, match="dict"):
        save_atomic([1, 2], path)


def test_missing_checkpoint_is_none(tmp_path):
    assert load_checkpoint(tmp_path / "nope.pt") is None


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all" * 4, "truncated"])
def test_corrupt_checkpoint_raises_value_error_naming_path(tmp_path, content):
    path = tmp_path / "broken.pt"
    if content == "truncated":
        save_atomic({"w": torch.randn(1000)}, path)
        content = path.read_bytes()[:2000]
    path.write_bytes(content)
    with pytest.raises(ValueError, match=_matches_path(path)):
        load_checkpoint(path)


_UNPICKLED = []


def _executed_on_load():
    _UNPICKLED.append(True)
    return "payload"


class _Payload:
    def __reduce__(self):  # a pickle that runs code when loaded without weights_only
        return (_executed_on_load, ())


def test_loading_is_weights_only_and_runs_no_code(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"x": _Payload()}, path)
    with pytest.raises(ValueError, match="weights_only") as error:
        load_checkpoint(path)
    assert str(path) in str(error.value)
    assert _UNPICKLED == []  # nothing from the file was executed
    torch.save({"x": np.float64(1.0)}, path)  # numpy scalars are pickled objects too
    with pytest.raises(ValueError, match="weights_only"):
        load_checkpoint(path)
    torch.save([1, 2], path)
    with pytest.raises(ValueError, match="expected a dict"):
        load_checkpoint(path)


def test_checkpoint_path_resolves_inside_the_data_root(tmp_path):
    assert checkpoint_path("run") == data_root() / "checkpoints" / "run.pt"
    assert checkpoint_path("ch3/sgd-lr0.1", root=tmp_path) == tmp_path / "ch3" / "sgd-lr0.1.pt"
    assert checkpoint_path("run.pt", root="elsewhere") == data_root() / "elsewhere" / "run.pt"
    for bad in ["", "../escape", "/abs/path", "dir/"]:
        with pytest.raises(ValueError, match="name"):
            checkpoint_path(bad)
    with pytest.raises(TypeError, match="name"):
        checkpoint_path(3)


# --------------------------------------------------------------------------- #
# Checkpointed training
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def problem():
    X, y = make_teacher_classification(96, 4, 3, seed=0)
    return X[:64], y[:64], X[64:], y[64:]


OPTIMIZERS = {
    "sgd-momentum": lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9),
    "adam": lambda params: torch.optim.Adam(params, lr=0.01),
    "lbfgs": lambda params: torch.optim.LBFGS(params, lr=0.5, max_iter=3),
}


def _fit(problem, path, *, epochs, optimizer="sgd-momentum", lr=None, batch_size=16, seed=0,
         hidden=8, dropout=False, calls=None, callback=None):
    """Train a fresh model, as a new process resuming from ``path`` would."""
    X, y, X_test, y_test = problem
    model = mlp(4, [hidden], 3, seed=0)
    if dropout:
        model = nn.Sequential(model[0], nn.Dropout(0.3), *model[1:])
    opt = OPTIMIZERS[optimizer](model.parameters())
    if lr is not None:
        opt.param_groups[0]["lr"] = lr

    def record(epoch, net):
        if calls is not None:
            calls.append(epoch)
        with torch.no_grad():
            mean_weight = float(next(net.parameters()).mean())
        return {"epoch": epoch, "mean_weight": mean_weight, "draw": torch.rand(()).item()}

    history = train(model, nn.CrossEntropyLoss(), (X, y), opt, epochs=epochs,
                    batch_size=batch_size, seed=seed, eval_data=(X_test, y_test),
                    callback=callback or record, checkpoint=path)
    return model, history


def _same_parameters(model_a, model_b):
    return all(torch.equal(p, q) for p, q in zip(model_a.state_dict().values(),
                                                  model_b.state_dict().values()))


@pytest.mark.parametrize("optimizer, dropout", [("sgd-momentum", False), ("adam", True),
                                                ("lbfgs", False)])
def test_resume_is_bit_identical_to_uninterrupted_run(problem, tmp_path, optimizer, dropout):
    torch.manual_seed(123)
    straight, history_straight = _fit(problem, tmp_path / "straight.pt", epochs=4,
                                      optimizer=optimizer, dropout=dropout)
    after_straight = torch.rand(3)  # global RNG state after the run

    torch.manual_seed(123)
    path = tmp_path / "resumed.pt"
    _fit(problem, path, epochs=2, optimizer=optimizer, dropout=dropout)
    assert load_checkpoint(path)["epoch"] == 2
    torch.manual_seed(999)  # a "new process" whose global RNG differs
    calls = []
    resumed, history_resumed = _fit(problem, path, epochs=4, optimizer=optimizer,
                                    dropout=dropout, calls=calls)
    assert calls == [3, 4]  # callbacks of completed epochs (0, 1, 2) are not re-run
    assert _same_parameters(straight, resumed)
    assert history_resumed.train_loss == history_straight.train_loss
    assert history_resumed == history_straight  # epochs, eval metrics and records as well
    assert [epoch for epoch, _ in history_resumed.records] == [0, 1, 2, 3, 4]
    assert torch.equal(torch.rand(3), after_straight)  # global RNG continues identically


def test_interrupted_run_loses_no_completed_epoch(problem, tmp_path):
    straight, history_straight = _fit(problem, None, epochs=3)
    path = tmp_path / "run.pt"

    def interrupt_at_3(epoch, model):
        if epoch == 3:
            raise KeyboardInterrupt
        return epoch

    with pytest.raises(KeyboardInterrupt):
        _fit(problem, path, epochs=3, callback=interrupt_at_3)
    assert load_checkpoint(path)["epoch"] == 2
    resumed, history = _fit(problem, path, epochs=3, callback=lambda epoch, model: epoch)
    assert _same_parameters(straight, resumed)
    assert history.train_loss == history_straight.train_loss
    assert history.records == [(0, 0), (1, 1), (2, 2), (3, 3)]


def test_finished_run_is_returned_from_cache(problem, tmp_path):
    path = tmp_path / "run.pt"
    model, history = _fit(problem, path, epochs=2)
    calls = []
    cached, cached_history = _fit(problem, path, epochs=2, calls=calls)
    assert calls == [] and cached_history == history and _same_parameters(model, cached)
    with pytest.raises(ValueError, match=r"already holds 2 epochs.*epochs=1"):
        _fit(problem, path, epochs=1)


def test_checkpoint_holds_only_weights_only_data(problem, tmp_path):
    path = tmp_path / "run.pt"
    _, history = _fit(problem, path, epochs=1,
                      callback=lambda epoch, model: (torch.ones(2) * epoch, [epoch, "x"]))
    state = torch.load(path, weights_only=True)  # must not need weights_only=False
    assert state["epoch"] == 1 and state["history"]["train_loss"] == history.train_loss
    assert set(state) >= {"model", "optimizer", "generator", "fingerprint", "history"}
    assert state["generator"].dtype == torch.uint8
    assert "epochs" not in state["fingerprint"]
    _, resumed = _fit(problem, path, epochs=1)
    assert torch.equal(resumed.records[1][1][0], torch.ones(2))
    assert resumed.records[1][1][1] == [1, "x"]


@pytest.mark.parametrize("change, what", [
    ({"lr": 0.05}, "lr"),
    ({"optimizer": "adam"}, "optimizer"),
    ({"batch_size": 32}, "batch_size"),
    ({"seed": 1}, "seed"),
    ({"hidden": 9}, "model"),
])
def test_fingerprint_mismatch_raises(problem, tmp_path, change, what):
    path = tmp_path / "run.pt"
    _fit(problem, path, epochs=1)
    before = path.read_bytes()
    with pytest.raises(ValueError, match=_matches_path(path)) as error:
        _fit(problem, path, epochs=2, **change)
    assert what in str(error.value)
    assert path.read_bytes() == before  # the existing checkpoint is not overwritten


def test_unstorable_callback_value_raises_type_error_before_training(problem, tmp_path):
    path = tmp_path / "run.pt"
    with pytest.raises(TypeError, match=r"epoch 0.*numpy"):
        _fit(problem, path, epochs=2, callback=lambda epoch, model: np.float64(epoch))
    assert not path.exists()
    with pytest.raises(TypeError, match=r"epoch 1.*\['obj'\]"):
        _fit(problem, path, epochs=2,
             callback=lambda epoch, model: {"obj": object()} if epoch else None)
    # Without checkpointing any value is fine, as before.
    _, history = _fit(problem, None, epochs=1, callback=lambda epoch, model: np.float64(epoch))
    assert history.records == [(0, 0.0), (1, 1.0)]


def test_corrupt_checkpoint_in_train_raises(problem, tmp_path):
    path = tmp_path / "run.pt"
    path.write_bytes(b"garbage")
    with pytest.raises(ValueError, match=_matches_path(path)):
        _fit(problem, path, epochs=1)


def test_diverged_run_is_not_continued(tmp_path):
    X, y = make_regression(30, 3, seed=0)
    path = tmp_path / "diverged.pt"

    def run(epochs):
        model = mlp(3, [], 1, seed=0)
        return train(model, nn.MSELoss(), (X * 100, y),
                     torch.optim.SGD(model.parameters(), lr=10.0), epochs=epochs,
                     checkpoint=path)

    with pytest.warns(RuntimeWarning, match="stopping early"):
        history = run(100)
    assert history.diverged and load_checkpoint(path)["epoch"] == len(history)
    with pytest.warns(RuntimeWarning, match="diverged"):
        again = run(200)
    assert again.diverged and again.epochs == history.epochs


def test_relative_checkpoint_is_taken_from_repo_root(problem, monkeypatch, tmp_path):
    import lib.book.runs

    seen = []
    monkeypatch.setattr(lib.book.runs, "load_checkpoint", lambda path, **kw: seen.append(path))
    _fit(problem, None, epochs=0)
    _fit(problem, "checkpoints/never-written.pt", epochs=0)
    assert seen == [data_root() / "checkpoints" / "never-written.pt"]
    with pytest.raises(TypeError, match="checkpoint"):
        _fit(problem, 3, epochs=0)


# --------------------------------------------------------------------------- #
# cached: finished results of a long run
# --------------------------------------------------------------------------- #
def test_cached_computes_once_per_key_and_recomputes_on_a_new_key(tmp_path):
    from lib.book.checkpoint import cached

    calls = []

    def compute():
        calls.append(1)
        return {"trace": 3.5 + len(calls), "values": torch.arange(3.0)}

    path = tmp_path / "sub" / "row.pt"
    first = cached(path, {"seed": 0, "lr": 0.1}, compute)
    again = cached(path, {"seed": 0, "lr": 0.1}, compute)
    assert len(calls) == 1 and again["trace"] == first["trace"] == 4.5
    torch.testing.assert_close(again["values"], torch.arange(3.0))
    changed = cached(path, {"seed": 0, "lr": 0.2}, compute)
    assert len(calls) == 2 and changed["trace"] == 5.5
    assert cached(None, {"seed": 0}, compute)["trace"] == 6.5  # no path: always computed


def test_cached_bad_arguments(tmp_path):
    from lib.book.checkpoint import cached

    with pytest.raises(TypeError, match="key"):
        cached(tmp_path / "a.pt", ["seed", 0], lambda: 1)
    with pytest.raises(TypeError, match="compute"):
        cached(tmp_path / "a.pt", {"seed": 0}, 3)


def test_checkpoint_path_key_digest_separates_settings(tmp_path):
    a = checkpoint_path("ch2/run", tmp_path, key={"lr": 0.1, "seed": 0})
    assert a == checkpoint_path("ch2/run.pt", tmp_path, key={"seed": 0, "lr": 0.1})  # order-free
    assert a != checkpoint_path("ch2/run", tmp_path, key={"lr": 0.2, "seed": 0})
    assert a.parent == tmp_path / "ch2" and a.name.startswith("run-") and a.suffix == ".pt"
    with pytest.raises(TypeError, match="key"):
        checkpoint_path("run", tmp_path, key=[1, 2])
