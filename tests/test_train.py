"""Tests for lib.book.train (loop, History, callbacks, evaluation) and lib.book.progress."""

import math

import pytest
import torch
from torch import nn

from lib.book.checkpoint import load_checkpoint, save_atomic
from lib.book.batches import batches
from lib.book.data import Split
from lib.book.synthetic import make_regression, make_teacher_classification
from lib.book.models import mlp
from lib.book.progress import progress, progress_enabled
from lib.book.runs import History
from lib.book.train import accuracy, evaluate, train


@pytest.fixture
def problem():
    X, y = make_teacher_classification(256, 6, 3, seed=0)
    return X[:192], y[:192], X[192:], y[192:]


def _fit(problem, *, seed=0, epochs=3, momentum=0.0, **kwargs):
    X, y, X_test, y_test = problem
    model = mlp(6, [16], 3, seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=momentum)
    history = train(model, nn.CrossEntropyLoss(), (X, y), optimizer, epochs=epochs,
                    batch_size=32, seed=seed, eval_data=(X_test, y_test), **kwargs)
    return model, history


# --------------------------------------------------------------------------- #
# Training loop
# --------------------------------------------------------------------------- #
def test_train_records_per_epoch_history_and_learns(problem):
    model, history = _fit(problem, epochs=15)
    assert isinstance(history, History) and len(history) == 15
    assert history.epochs == list(range(1, 16))
    assert len(history.train_loss) == len(history.eval_loss) == len(history.eval_accuracy) == 15
    assert history.train_loss[-1] < 0.6 * history.train_loss[0]
    assert history.eval_accuracy[-1] > 0.7
    X_test, y_test = problem[2:]
    assert history.eval_loss[-1] == pytest.approx(evaluate(model, nn.CrossEntropyLoss(), X_test, y_test))
    assert history.eval_accuracy[-1] == accuracy(model, X_test, y_test)
    assert not history.diverged


def test_train_is_reproducible_and_seed_controls_batch_order(problem):
    model_a, history_a = _fit(problem, seed=1)
    torch.rand(5)  # disturbing the global generator must not matter
    model_b, history_b = _fit(problem, seed=1)
    model_c, _ = _fit(problem, seed=2)
    assert history_a == history_b
    assert all(torch.equal(p, q) for p, q in zip(model_a.parameters(), model_b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(model_a.parameters(), model_c.parameters()))


def test_full_batch_epoch_is_one_gradient_step():
    X, y = make_regression(20, 3, seed=0)
    model = mlp(3, [], 1, seed=0)
    before = [p.detach().clone() for p in model.parameters()]
    loss = nn.MSELoss()(model(X), y)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    history = train(model, nn.MSELoss(), (X, y), torch.optim.SGD(model.parameters(), lr=0.1),
                    epochs=1)
    for p, p0, g in zip(model.parameters(), before, grads):
        assert torch.allclose(p, p0 - 0.1 * g)
    assert history.train_loss == [pytest.approx(loss.item())]
    assert history.eval_accuracy == []


def test_callback_runs_before_training_and_after_each_epoch_in_eval_mode(problem):
    calls = []

    def callback(epoch, model):
        calls.append((epoch, model.training))
        return None if epoch == 1 else epoch * 10

    model, history = _fit(problem, epochs=3, callback=callback)
    assert calls == [(0, False), (1, False), (2, False), (3, False)]
    assert history.records == [(0, 0), (2, 20), (3, 30)]
    assert model.training  # mode restored to what it was before train()


def test_zero_epochs_only_runs_epoch_zero_callback(problem):
    _, history = _fit(problem, epochs=0, callback=lambda epoch, model: "init")
    assert len(history) == 0 and history.records == [(0, "init")]


def test_fixed_batches_are_used_every_epoch(problem):
    X, y = problem[:2]
    model = mlp(6, [8], 3, seed=0)
    fixed = batches(X, y, 64)
    history = train(model, nn.CrossEntropyLoss(), fixed, torch.optim.Adam(model.parameters()),
                    epochs=2)
    assert len(history.train_loss) == 2


def test_lbfgs_closure_optimizer_works():
    X, y = make_regression(50, 3, noise=0.0, seed=0)
    model = mlp(3, [], 1, seed=0)
    history = train(model, nn.MSELoss(), (X, y), torch.optim.LBFGS(model.parameters()), epochs=3)
    assert history.train_loss[-1] < 1e-6 < history.train_loss[0]


def test_sum_reduction_reports_sums():
    X, y = make_regression(40, 2, seed=0)
    model = mlp(2, [], 1, seed=0)
    loss_fn = nn.MSELoss(reduction="sum")
    expected = loss_fn(model(X), y).item()
    assert evaluate(model, loss_fn, X, y, batch_size=7) == pytest.approx(expected, rel=1e-5)
    history = train(model, loss_fn, (X, y), torch.optim.SGD(model.parameters(), lr=1e-4),
                    epochs=1)
    assert history.train_loss[0] == pytest.approx(expected, rel=1e-5)


def test_divergence_stops_early_with_warning():
    X, y = make_regression(30, 3, seed=0)
    X = X * 100  # huge inputs + large step size overflow within a few epochs
    model = mlp(3, [], 1, seed=0)
    with pytest.warns(RuntimeWarning, match="stopping early"):
        history = train(model, nn.MSELoss(), (X, y), torch.optim.SGD(model.parameters(), lr=10.0),
                        epochs=100, callback=lambda epoch, model: epoch)
    assert history.diverged and len(history) < 100
    assert history.records[-1][0] == len(history) - 1  # no callback on a diverged model


# --------------------------------------------------------------------------- #
# Learning-rate schedule
# --------------------------------------------------------------------------- #
def _cosine(lr0, t, T):
    return 0.5 * lr0 * (1 + math.cos(math.pi * t / T))


def test_constant_lr_is_recorded(problem):
    _, history = _fit(problem, epochs=3)
    assert history.lr == [0.2, 0.2, 0.2]


def test_cosine_lr_per_epoch_matches_formula_and_torch_scheduler():
    X, y = make_regression(20, 3, seed=0)
    model = mlp(3, [4], 1, seed=0)
    # Two parameter groups: each anneals from its own initial lr.
    optimizer = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.1},
                                 {"params": model[2].parameters(), "lr": 0.03}])
    seen = []

    def callback(epoch, net):
        seen.append([group["lr"] for group in optimizer.param_groups])

    T = 5
    history = train(model, nn.MSELoss(), (X, y), optimizer, epochs=T, batch_size=8,
                    callback=callback, lr_schedule="cosine")
    assert history.lr == pytest.approx([_cosine(0.1, t, T) for t in range(T)], abs=1e-15)
    # seen[t] is the lr after epoch t (seen[0]: before training) = the lr used in it.
    for group, lr0 in enumerate([0.1, 0.03]):
        assert [lrs[group] for lrs in seen[1:]] == pytest.approx(
            [_cosine(lr0, t, T) for t in range(T)], abs=1e-15)
    reference = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(reference, T_max=T)
    expected = []
    for _ in range(T):
        expected.append(scheduler.get_last_lr()[0])
        reference.step()
        scheduler.step()
    assert history.lr == pytest.approx(expected, rel=1e-12, abs=1e-15)
    # The initial rates are back, so the optimizer can start a new schedule.
    assert [group["lr"] for group in optimizer.param_groups] == [0.1, 0.03]


def test_cosine_lr_is_used_for_the_updates():
    X, y = make_regression(20, 3, seed=0)
    model = mlp(3, [], 1, seed=0)
    expected = [p.detach().clone() for p in model.parameters()]
    for lr in (0.1, _cosine(0.1, 1, 2)):  # full batch: one step per epoch
        check = mlp(3, [], 1, seed=0)
        with torch.no_grad():
            for p, value in zip(check.parameters(), expected):
                p.copy_(value)
        grads = torch.autograd.grad(nn.MSELoss()(check(X), y), list(check.parameters()))
        expected = [p.detach() - lr * g for p, g in zip(check.parameters(), grads)]
    train(model, nn.MSELoss(), (X, y), torch.optim.SGD(model.parameters(), lr=0.1), epochs=2,
          lr_schedule="cosine")
    for p, q in zip(model.parameters(), expected):
        assert torch.allclose(p, q)


def test_cosine_resume_after_interruption_equals_uninterrupted_run(problem, tmp_path):
    torch.manual_seed(0)
    straight, history_straight = _fit(problem, epochs=4, momentum=0.9, lr_schedule="cosine",
                                      callback=lambda epoch, model: epoch)
    path = tmp_path / "cosine.pt"

    def interrupt_at_3(epoch, model):
        if epoch == 3:
            raise KeyboardInterrupt
        return epoch

    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        _fit(problem, epochs=4, momentum=0.9, lr_schedule="cosine", callback=interrupt_at_3,
             checkpoint=path)
    assert load_checkpoint(path)["epoch"] == 2
    torch.manual_seed(999)  # a "new process" whose global RNG differs
    resumed, history = _fit(problem, epochs=4, momentum=0.9, lr_schedule="cosine",
                            callback=lambda epoch, model: epoch, checkpoint=path)
    assert all(torch.equal(p, q) for p, q in zip(straight.state_dict().values(),
                                                  resumed.state_dict().values()))
    assert history == history_straight  # lr, losses, eval metrics and records
    assert history.lr == [_cosine(0.2, t, 4) for t in range(4)]


def test_checkpoint_from_another_schedule_is_rejected(problem, tmp_path):
    cosine, constant = tmp_path / "cosine.pt", tmp_path / "constant.pt"
    _fit(problem, epochs=2, lr_schedule="cosine", checkpoint=cosine)
    _fit(problem, epochs=2, checkpoint=constant)
    with pytest.raises(ValueError, match="lr_schedule"):
        _fit(problem, epochs=2, checkpoint=cosine)
    with pytest.raises(ValueError, match="lr_schedule"):
        _fit(problem, epochs=2, lr_schedule="cosine", checkpoint=constant)
    # The horizon sets every epoch's lr, so a cosine run cannot be extended.
    with pytest.raises(ValueError, match=r"lr_schedule\.epochs"):
        _fit(problem, epochs=3, lr_schedule="cosine", checkpoint=cosine)
    _, cached = _fit(problem, epochs=2, lr_schedule="cosine", checkpoint=cosine)
    assert cached.lr == [_cosine(0.2, t, 2) for t in range(2)]


def test_checkpoint_without_recorded_lr_still_resumes(problem, tmp_path):
    # Checkpoints written before History.lr existed had a constant lr.
    path = tmp_path / "old.pt"
    _fit(problem, epochs=1, checkpoint=path)
    state = load_checkpoint(path)
    del state["history"]["lr"]
    save_atomic(state, path)
    _, history = _fit(problem, epochs=2, checkpoint=path)
    assert history.lr == [0.2, 0.2] and len(history) == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_train_moves_cpu_batches_to_model_device(problem):
    X, y, X_test, y_test = problem
    model = mlp(6, [8], 3, seed=0).cuda()
    history = train(model, nn.CrossEntropyLoss(), (X, y), torch.optim.SGD(model.parameters(), lr=0.1),
                    epochs=1, batch_size=32, eval_data=(X_test, y_test))
    assert len(history) == 1


# --------------------------------------------------------------------------- #
# Bad input
# --------------------------------------------------------------------------- #
def _train_with(**overrides):
    X, y = make_teacher_classification(16, 3, 2, seed=0)
    model = mlp(3, [4], 2, seed=0)
    arguments = dict(model=model, loss_fn=nn.CrossEntropyLoss(), data=(X, y),
                     optimizer=torch.optim.SGD(model.parameters(), lr=0.1), epochs=1)
    arguments.update(overrides)
    return train(arguments.pop("model"), arguments.pop("loss_fn"), arguments.pop("data"),
                 arguments.pop("optimizer"), **arguments)


@pytest.mark.parametrize("overrides, error, message", [
    ({"model": lambda x: x}, TypeError, "nn.Module"),
    ({"loss_fn": "cross-entropy"}, TypeError, "loss_fn"),
    ({"optimizer": "sgd"}, TypeError, "optimizer"),
    ({"epochs": -1}, ValueError, "epochs"),
    ({"epochs": 2.0}, TypeError, "epochs"),
    ({"batch_size": 0}, ValueError, "batch_size"),
    ({"seed": -3}, ValueError, "seed"),
    ({"callback": 3}, TypeError, "callback"),
    ({"eval_data": torch.zeros(3)}, TypeError, "eval_data"),
    ({"eval_data": (torch.zeros(3, 3), torch.zeros(2))}, ValueError, "eval_data"),
    ({"data": (torch.zeros(5, 3), torch.zeros(4, dtype=torch.long))}, ValueError, "same number"),
    ({"data": []}, ValueError, "no batches"),
    ({"data": [torch.zeros(3)]}, TypeError, "batch 0"),
    ({"data": torch.zeros(3, 3)}, TypeError, "data"),
    ({"data": Split(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long),
                    torch.zeros(1, 3), torch.zeros(1, dtype=torch.long))}, TypeError, "split.train"),
    ({"data": [(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))], "batch_size": 2},
     ValueError, "batch_size"),
    ({"lr_schedule": "step"}, ValueError, "None, 'constant', 'cosine'"),
    ({"lr_schedule": "Cosine"}, ValueError, "lr_schedule"),
    ({"lr_schedule": 1}, ValueError, "lr_schedule"),
])
def test_train_bad_input(overrides, error, message):
    with pytest.raises(error, match=message):
        _train_with(**overrides)


# --------------------------------------------------------------------------- #
# accuracy / evaluate
# --------------------------------------------------------------------------- #
class _Fixed(nn.Module):
    """Returns preset scores regardless of input, to test metrics exactly."""

    def __init__(self, scores):
        super().__init__()
        self.scores = nn.Parameter(scores)

    def forward(self, x):
        return self.scores[: x.shape[0]]


def test_accuracy_exact_and_batched():
    model = _Fixed(torch.tensor([[2.0, 1.0], [0.0, 3.0], [5.0, 1.0], [0.0, 1.0]]))
    X, y = torch.zeros(4, 1), torch.tensor([0, 1, 1, 0])
    assert accuracy(model, X, y) == 0.5
    model.eval()
    accuracy(model, X, y)
    assert not model.training  # previous mode restored


def test_evaluate_batched_mean_equals_full():
    X, y = make_teacher_classification(50, 4, 3, seed=1)
    model = mlp(4, [5], 3, seed=0)
    full = evaluate(model, nn.CrossEntropyLoss(), X, y)
    assert evaluate(model, nn.CrossEntropyLoss(), X, y, batch_size=8) == pytest.approx(full)
    assert accuracy(model, X, y, batch_size=8) == accuracy(model, X, y)


def test_metrics_bad_input():
    model = mlp(2, [], 1, seed=0)
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        accuracy(model, torch.zeros(3, 2), torch.zeros(3, dtype=torch.long))
    classifier = mlp(2, [], 3, seed=0)
    with pytest.raises(ValueError, match="integer labels"):
        accuracy(classifier, torch.zeros(3, 2), torch.zeros(3))
    with pytest.raises(ValueError, match="same number"):
        evaluate(classifier, nn.CrossEntropyLoss(), torch.zeros(3, 2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="batch_size"):
        evaluate(classifier, nn.CrossEntropyLoss(), torch.zeros(3, 2),
                 torch.zeros(3, dtype=torch.long), batch_size=0)


# --------------------------------------------------------------------------- #
# progress
# --------------------------------------------------------------------------- #
def test_progress_disabled_by_environment(monkeypatch, capsys):
    monkeypatch.setenv("BOOK_PROGRESS", "0")
    assert not progress_enabled()
    bar = progress(range(3), desc="quiet")
    assert bar.disable
    assert list(bar) == [0, 1, 2]
    bar.set_postfix(loss=1.0)  # must be a harmless no-op
    assert capsys.readouterr().err == ""


def test_progress_enabled_otherwise(monkeypatch, capsys):
    monkeypatch.setenv("BOOK_PROGRESS", "1")
    assert progress_enabled()
    bar = progress(range(2), desc="loud")
    assert not bar.disable
    assert list(bar) == [0, 1]
    assert "loud" in capsys.readouterr().err
    assert progress(range(2), disable=True).disable
    monkeypatch.delenv("BOOK_PROGRESS")
    assert progress_enabled()


def test_train_prints_no_bar_when_disabled(problem, monkeypatch, capsys):
    monkeypatch.setenv("BOOK_PROGRESS", "0")
    _fit(problem, epochs=2, desc="training")
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_train_diagonal_nets_matches_one_network_trained_alone():
    from lib.book.train import train_diagonal_nets
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(10, 6, generator=gen, dtype=torch.float64)
    y = X @ torch.tensor([1.0, 0, 0, -0.5, 0, 0], dtype=torch.float64)
    many = train_diagonal_nets(X, y, [0.1, 0.5], [0.05, 0.02], [1, 2], max_steps=4000)
    alone = train_diagonal_nets(X, y, [0.5], [0.02], [2], max_steps=4000)
    # batched products round differently in the last bits; the dynamics are the same
    assert torch.allclose(many["u"][1], alone["u"][0], atol=1e-8)
    assert abs(int(many["steps"][1]) - int(alone["steps"][0])) <= 1
    assert bool((many["train_loss"] <= 1e-5).all())
    with pytest.raises(ValueError):
        train_diagonal_nets(X, y, [0.1], [0.05, 0.02], [1], max_steps=10)


def test_step_lr_matches_torch_steplr_and_bad_schedules_are_named():
    X, y = make_regression(20, 3, seed=0)
    model = mlp(3, [4], 1, seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    history = train(model, nn.MSELoss(), (X, y), optimizer, epochs=7, batch_size=8, lr_schedule="step:3")
    reference = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(reference, step_size=3, gamma=0.1)
    expected = []
    for _ in range(7):
        expected.append(scheduler.get_last_lr()[0])
        reference.step()
        scheduler.step()
    assert history.lr == pytest.approx(expected, rel=1e-12)
    assert optimizer.param_groups[0]["lr"] == 0.1  # put back
    constant = train(model, nn.MSELoss(), (X, y), optimizer, epochs=2, lr_schedule="constant")
    assert constant.lr == [0.1, 0.1]
    for bad in ("step", "step:0", "step:-2", "step:x", "steps:3", 3):
        with pytest.raises(ValueError, match="lr_schedule"):
            train(model, nn.MSELoss(), (X, y), optimizer, epochs=1, lr_schedule=bad)
