"""A plain, reproducible training loop with per-epoch hooks.

The loop is deliberately simple (no early stopping; the learning-rate schedules
are optional cosine annealing, ``lr_schedule="cosine"``, and steps,
``lr_schedule="step:30"``) so that a chapter's results depend only on what it shows.
The ``callback`` hook lets a chapter measure, e.g., the top Hessian
eigenvalue at every epoch, including before training starts::

    def top_eig(epoch, model):
        return eigvalsh(hessian(model, loss_fn, data), k=1)[0].item()

    history = train(model, loss_fn, (X, y), optimizer, epochs=20,
                    batch_size=64, callback=top_eig)
    history.records   # [(0, ...), (1, ...), ..., (20, ...)]

Long runs pass ``checkpoint=checkpoint_path("name")`` (see
:mod:`lib.book.checkpoint`): the state after every epoch is saved atomically under
``data/checkpoints/``, and calling :func:`train` again continues from it, or
just returns the cached result once all epochs are done.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from .._checks import check_int
from .batches import as_batches, batches, check_pair, is_pair
from .models import diagonal_net
from .paths import resolve_root
from .progress import progress
from .runs import History, check_storable, resume_run, run_fingerprint, save_run

__all__ = ["train", "accuracy", "evaluate", "LR_SCHEDULES", "train_diagonal_nets"]

Batch = tuple[Tensor, Tensor]

LR_SCHEDULES = (None, "constant", "cosine", "step:<epochs>")
"""The ``lr_schedule`` values of :func:`train` (``"constant"`` is None, as in
:mod:`lib.book.population`); ``"step:30"`` multiplies the rates by 0.1 every 30 epochs."""


# --------------------------------------------------------------------------- #
# Helpers
# --------------------------------------------------------------------------- #
def _model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer (CPU if it has none)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _reduction(loss_fn: Callable) -> str:
    # Losses without a `reduction` attribute (plain functions) are treated
    # as averaging, like torch's default.
    return getattr(loss_fn, "reduction", "mean")


def _check_labels(scores: Tensor, y: Tensor) -> None:
    if scores.ndim != 2 or scores.shape[1] < 2:
        raise ValueError(f"accuracy needs class scores of shape (N, K) with K >= 2, "
                         f"got model output of shape {tuple(scores.shape)}")
    if y.is_floating_point() or y.ndim != 1:
        raise ValueError(f"accuracy needs integer labels of shape (N,), got {y.dtype} "
                         f"of shape {tuple(y.shape)}")


def _chunks(X: Tensor, y: Tensor, batch_size: int | None) -> list[Batch]:
    if batch_size is None:
        return [(X, y)]
    return batches(X, y, check_int(batch_size, "batch_size", 1))


# --------------------------------------------------------------------------- #
# Evaluation
# --------------------------------------------------------------------------- #
@torch.no_grad()
def accuracy(model: nn.Module, X: Tensor, y: Tensor, *, batch_size: int | None = None) -> float:
    """Fraction of examples whose highest-scoring class is the label.

    The model runs in eval mode (its previous mode is restored) on the
    model's device.

    Args:
        model: maps ``(N, ...)`` inputs to class scores ``(N, K)``.
        X: inputs, shape ``(N, ...)``.
        y: int64 labels, shape ``(N,)``.
        batch_size: evaluate in chunks of this size to bound memory
            (None: all at once).

    Returns:
        Accuracy in [0, 1].
    """
    check_pair(X, y, "accuracy data")
    device, was_training = _model_device(model), model.training
    model.eval()
    try:
        correct = torch.zeros((), dtype=torch.long, device=device)
        for X_chunk, y_chunk in _chunks(X, y, batch_size):
            scores = model(X_chunk.to(device))
            _check_labels(scores, y_chunk)
            correct += (scores.argmax(dim=1) == y_chunk.to(device)).sum()
    finally:
        model.train(was_training)
    return correct.item() / X.shape[0]


@torch.no_grad()
def evaluate(model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], X: Tensor, y: Tensor,
             *, batch_size: int | None = None) -> float:
    """Loss of ``model`` on ``(X, y)`` in eval mode.

    Args:
        model: maps ``(N, ...)`` to outputs ``(N, K)``.
        loss_fn: e.g. ``nn.CrossEntropyLoss()``; with ``reduction="mean"`` the
            result is the mean over all N examples, with ``"sum"`` the sum,
            whatever ``batch_size`` is.
        X: inputs, shape ``(N, ...)``.
        y: targets, shape ``(N,)`` or ``(N, K)``.
        batch_size: evaluate in chunks of this size (None: all at once).

    Returns:
        The loss as a Python float.
    """
    check_pair(X, y, "evaluation data")
    device, was_training = _model_device(model), model.training
    average = _reduction(loss_fn) == "mean"
    model.eval()
    try:
        total = torch.zeros((), device=device)
        for X_chunk, y_chunk in _chunks(X, y, batch_size):
            loss = loss_fn(model(X_chunk.to(device)), y_chunk.to(device))
            total += loss * X_chunk.shape[0] if average else loss
    finally:
        model.train(was_training)
    return total.item() / X.shape[0] if average else total.item()


# --------------------------------------------------------------------------- #
# Learning-rate schedule
# --------------------------------------------------------------------------- #
def _check_lr_schedule(lr_schedule: Any) -> str | None:
    if lr_schedule == "constant":
        return None
    if lr_schedule is None or lr_schedule == "cosine" or _step_period(lr_schedule) is not None:
        return lr_schedule
    raise ValueError(f"unknown lr_schedule {lr_schedule!r}; choose one of "
                     f"{', '.join(map(repr, LR_SCHEDULES))} (e.g. 'step:30', a period >= 1)")


def _step_period(lr_schedule: Any) -> int | None:
    """The period ``K`` of ``"step:K"``, or None if ``lr_schedule`` is not of that form."""
    if not isinstance(lr_schedule, str) or not lr_schedule.startswith("step:"):
        return None
    period = lr_schedule[len("step:"):]
    return int(period) if period.isdigit() and int(period) >= 1 else None


def _scheduled_lr(lr_schedule: str, base_lr: float, epoch: int, epochs: int) -> float:
    """The learning rate of epoch ``epoch`` (1-based) under ``lr_schedule``, in closed form."""
    if lr_schedule == "cosine":
        return _cosine_lr(base_lr, epoch, epochs)
    return base_lr * 0.1 ** ((epoch - 1) // _step_period(lr_schedule))


def _cosine_lr(base_lr: float, epoch: int, epochs: int) -> float:
    """Cosine-annealed learning rate for epoch ``epoch`` (1-based) of ``epochs``.

    This is ``CosineAnnealingLR(T_max=epochs, eta_min=0)`` after ``epoch - 1``
    steps, in closed form. Computing it from the epoch number alone (torch's
    scheduler updates the previous lr recursively) leaves no state besides
    the epoch, so a resumed run uses exactly the same values.
    """
    return 0.5 * base_lr * (1 + math.cos(math.pi * (epoch - 1) / epochs))


def _set_lrs(optimizer: torch.optim.Optimizer, lrs: list[float]) -> None:
    for group, lr in zip(optimizer.param_groups, lrs):
        if isinstance(group["lr"], Tensor):  # e.g. Adam(capturable=True): keep the tensor
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


# --------------------------------------------------------------------------- #
# Training
# --------------------------------------------------------------------------- #
def _run_epoch(model: nn.Module, loss_fn: Callable, optimizer: torch.optim.Optimizer,
               epoch_batches: list[Batch], device: torch.device) -> float:
    """One pass over ``epoch_batches``; returns the epoch's training loss."""
    model.train()
    average = _reduction(loss_fn) == "mean"
    total, count = torch.zeros((), device=device), 0
    for X_batch, y_batch in epoch_batches:
        X_batch, y_batch = X_batch.to(device), y_batch.to(device)
        first_loss: list[Tensor] = []

        def closure() -> Tensor:
            # A closure works for every torch optimizer, including LBFGS,
            # which evaluates it several times per step.
            optimizer.zero_grad()
            loss = loss_fn(model(X_batch), y_batch)
            loss.backward()
            first_loss.append(loss.detach())
            return loss

        optimizer.step(closure)
        # Accumulate on the device and convert once per epoch, to avoid a
        # GPU synchronisation after every batch.
        total += first_loss[0] * X_batch.shape[0] if average else first_loss[0]
        count += X_batch.shape[0]
    return total.item() / count if average else total.item()


def _record(history: History, callback: Callable | None, epoch: int, model: nn.Module) -> None:
    if callback is None:
        return
    was_training = model.training
    model.eval()  # curvature needs per-example outputs, which BN-in-train-mode breaks
    try:
        value = callback(epoch, model)
    finally:
        model.train(was_training)
    if value is not None:
        history.records.append((epoch, value))


def train(model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor],
          data: tuple[Tensor, Tensor] | Iterable[Batch], optimizer: torch.optim.Optimizer, *,
          epochs: int, batch_size: int | None = None, seed: int = 0,
          callback: Callable[[int, nn.Module], Any] | None = None,
          eval_data: tuple[Tensor, Tensor] | None = None, desc: str | None = None,
          checkpoint: str | os.PathLike | None = None,
          lr_schedule: str | None = None) -> History:
    """Train ``model`` with ``optimizer`` for ``epochs`` passes over ``data``.

    Args:
        model: network; batches are moved to its device.
        loss_fn: e.g. ``nn.CrossEntropyLoss()`` or ``nn.MSELoss()``.
        data: either an ``(X, y)`` pair of tensors with shapes ``(N, ...)``,
            ``(N, ...)``, cut into mini-batches every epoch, or an iterable of
            ``(X_batch, y_batch)`` pairs used in the same order every epoch.
        optimizer: a ``torch.optim.Optimizer`` over the model's parameters.
        epochs: number of passes (0 only runs the epoch-0 callback).
        batch_size: mini-batch size for an ``(X, y)`` pair; None means full
            batch. Must be None when ``data`` is already batched.
        seed: seeds the generator that reshuffles ``(X, y)`` every epoch, so
            the batch order does not depend on global random state.
        callback: ``callback(epoch, model)`` called once before training
            (epoch 0) and after every epoch, with the model in eval mode and
            gradients enabled; non-None return values go to ``History.records``.
        eval_data: optional ``(X, y)`` evaluated after every epoch.
        desc: label of the progress bar (see :mod:`lib.book.progress`).
        checkpoint: file to save the run to after every completed epoch and
            to resume it from, e.g. ``lib.book.checkpoint.checkpoint_path("ch3-sgd")``
            (under ``checkpoints/`` in the data folder); a relative path is taken
            inside the data folder (:func:`lib.book.paths.data_root`). See
            "Checkpoints" below.
        lr_schedule: None (or ``"constant"``) keeps the optimizer's learning rates constant.
            ``"cosine"`` anneals each parameter group's learning rate from its
            value when ``train`` is called, lr0, to 0 over ``epochs``, stepped
            once per epoch: epoch ``t + 1`` uses
            ``0.5 * lr0 * (1 + cos(pi * t / epochs))`` for ``t = 0..epochs-1``,
            like ``torch.optim.lr_scheduler.CosineAnnealingLR(T_max=epochs)``.
            ``"step:K"`` multiplies them by 0.1 every ``K`` epochs (epoch
            ``t`` uses ``lr0 * 0.1 ** ((t - 1) // K)``), like
            ``torch.optim.lr_scheduler.StepLR(step_size=K, gamma=0.1)``.
            The initial learning rates are put back when ``train`` returns.
            The rate of every epoch is in ``History.lr``.

    Checkpoints:
        After every completed epoch the run is saved to ``checkpoint`` and a later call
        continues it (bit-identical to an uninterrupted run on the same device) or returns
        the finished result; :mod:`lib.book.runs` says what is saved and when a file
        matches. Callback values must then be storable (None, numbers, strings, tensors,
        and lists, tuples and dicts of those), else TypeError when one is returned.

    Returns:
        :class:`~lib.book.runs.History` of all epochs, including those restored from
        ``checkpoint``. If the training loss becomes NaN or infinite,
        training stops after that epoch with ``history.diverged = True`` and a
        warning (divergence at large step sizes is something chapters show).
        The model's train/eval mode is restored at the end.

    Raises:
        ValueError: if ``lr_schedule`` is unknown, or ``checkpoint`` is
            corrupt, was written by a run with a different fingerprint (the
            message lists what differs) or holds more than ``epochs`` epochs.
        TypeError: if ``checkpoint`` is given and the callback returns a value
            that cannot be stored in it.
    """
    # (long only by its docstring: the code is split into the helpers below)
    epochs, batch_size, seed, lr_schedule, checkpoint = _check_train_arguments(
        model, loss_fn, optimizer, epochs, batch_size, seed, callback, lr_schedule, eval_data, checkpoint)
    if is_pair(data):
        check_pair(*data, "data")
        fixed = None
    else:
        if batch_size is not None:
            raise ValueError("batch_size must be None when data is already a list of batches")
        fixed = as_batches(data)

    device, was_training = _model_device(model), model.training
    generator = torch.Generator().manual_seed(seed)
    # Read before resume_run, whose optimizer state holds the last epoch's
    # (annealed) rates; the fingerprint check makes these equal to the
    # interrupted run's initial rates.
    base_lrs = [float(group["lr"]) for group in optimizer.param_groups]
    fingerprint = None if checkpoint is None else run_fingerprint(
        model, loss_fn, optimizer, data if fixed is None else fixed, batch_size, seed, eval_data,
        lr_schedule, epochs)
    history = _start(checkpoint, fingerprint, epochs, model, optimizer, generator, device, base_lrs,
                     callback)
    first = len(history) + 1 if not history.diverged else epochs + 1
    bar = progress(range(first, epochs + 1), desc=desc)
    saved = (lambda: save_run(checkpoint, fingerprint, model, optimizer, generator, history, device)
             ) if checkpoint is not None else None
    try:
        for epoch in bar:
            epoch_batches = fixed if fixed is not None else _shuffled(data, batch_size, generator)
            if lr_schedule is not None:
                _set_lrs(optimizer, [_scheduled_lr(lr_schedule, lr0, epoch, epochs) for lr0 in base_lrs])
            if not _epoch(history, epoch, model, loss_fn, optimizer, epoch_batches, device, eval_data,
                          bar, callback, checkpoint, saved):
                break
    finally:
        bar.close()
        model.train(was_training)
        if lr_schedule is not None:
            _set_lrs(optimizer, base_lrs)  # so the optimizer can start a new schedule
    return history


def _check_train_arguments(model, loss_fn, optimizer, epochs, batch_size, seed, callback, lr_schedule,
                           eval_data, checkpoint) -> tuple:
    """The checked ``(epochs, batch_size, seed, lr_schedule, checkpoint)`` of :func:`train`."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not callable(loss_fn):
        raise TypeError("loss_fn must be callable, e.g. nn.CrossEntropyLoss()")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    epochs = check_int(epochs, "epochs", 0)
    if batch_size is not None:
        batch_size = check_int(batch_size, "batch_size", 1)
    seed = check_int(seed, "seed", 0)
    if callback is not None and not callable(callback):
        raise TypeError("callback must be callable as callback(epoch, model)")
    lr_schedule = _check_lr_schedule(lr_schedule)
    if eval_data is not None:
        if not is_pair(eval_data):
            raise TypeError("eval_data must be an (X, y) pair of tensors")
        check_pair(*eval_data, name="eval_data")
    if checkpoint is not None:
        if not isinstance(checkpoint, (str, os.PathLike)):
            raise TypeError(f"checkpoint must be a str or path, got {type(checkpoint).__name__}")
        checkpoint = resolve_root(checkpoint)
    return epochs, batch_size, seed, lr_schedule, checkpoint


def _start(checkpoint, fingerprint, epochs, model, optimizer, generator, device, base_lrs,
           callback) -> History:
    """The history a run starts from: the checkpoint's, or a new one with the epoch-0 record."""
    history = None
    if checkpoint is not None:
        history = resume_run(checkpoint, fingerprint, epochs, model, optimizer, generator, device,
                             base_lrs[0])
        if history is not None and history.diverged:
            warnings.warn(f"checkpoint {checkpoint} holds a run that diverged at epoch "
                          f"{len(history)}; not training it further", RuntimeWarning, stacklevel=3)
    if history is None:
        history = History()
        _record(history, callback, 0, model)
        if checkpoint is not None:
            check_storable(history, checkpoint)
    return history


def _shuffled(data: tuple[Tensor, Tensor], batch_size: int | None,
              generator: torch.Generator) -> list[Batch]:
    """One epoch's mini-batches of an ``(X, y)`` pair (the whole pair when full batch)."""
    X, y = data
    size = batch_size or X.shape[0]
    return batches(X, y, size, shuffle=size < X.shape[0], generator=generator)


def _epoch(history, epoch, model, loss_fn, optimizer, epoch_batches, device, eval_data, bar, callback,
           checkpoint, save) -> bool:
    """Train one epoch and record it; False when the loss diverged (training stops)."""
    lr = float(optimizer.param_groups[0]["lr"])
    loss = _run_epoch(model, loss_fn, optimizer, epoch_batches, device)
    history.epochs.append(epoch)
    history.train_loss.append(loss)
    history.lr.append(lr)
    postfix = {"loss": f"{loss:.4g}"}
    if eval_data is not None:
        postfix.update(_evaluate_epoch(history, model, loss_fn, *eval_data))
    bar.set_postfix(postfix)
    if not math.isfinite(loss):
        history.diverged = True
        warnings.warn(f"training loss became {loss} at epoch {epoch}; stopping early",
                      RuntimeWarning, stacklevel=3)
        if save is not None:
            save()
        return False
    _record(history, callback, epoch, model)
    if save is not None:
        check_storable(history, checkpoint)
        save()
    return True


def _evaluate_epoch(history: History, model: nn.Module, loss_fn: Callable,
                    X: Tensor, y: Tensor) -> dict[str, str]:
    """Append eval loss (and accuracy for integer labels) to ``history``."""
    history.eval_loss.append(evaluate(model, loss_fn, X, y))
    postfix = {"eval_loss": f"{history.eval_loss[-1]:.4g}"}
    if not y.is_floating_point():
        history.eval_accuracy.append(accuracy(model, X, y))
        postfix["eval_acc"] = f"{history.eval_accuracy[-1]:.3f}"
    return postfix


def train_diagonal_nets(X: Tensor, y: Tensor, scales: list[float], lrs: list[float], seeds: list[int],
                        max_steps: int, tol: float = 1e-5) -> dict[str, Tensor]:
    """Full-batch gradient descent on ``mean((X (u * v) - y)^2)`` for many diagonal linear
    networks at once (introduced in the geodesic-sharpness chapter, D3).

    Network ``i`` starts as ``lib.book.models.diagonal_net(d, init_scale=scales[i], seed=seeds[i])``
    and steps with learning rate ``lrs[i]`` until its training loss is at most ``tol`` or
    ``max_steps`` steps have run; finished networks drop out of the batch, so a population
    costs about as much as its slowest member. Computed in float64.

    Args:
        X: ``(n, d)`` inputs; y: ``(n,)`` targets.
        scales, lrs, seeds: one entry per network (``m`` networks).
        max_steps: most steps per network.
        tol: training loss at which a network stops.

    Returns:
        Dict with ``"u"``, ``"v"`` ``(m, d)`` float64 weights, ``"train_loss"`` ``(m,)`` and
        ``"steps"`` ``(m,)`` int64 (the step at which each network stopped).
    """
    if not (len(scales) == len(lrs) == len(seeds)) or len(scales) == 0:
        raise ValueError(f"scales, lrs and seeds must have the same non-zero length, got "
                         f"{len(scales)}, {len(lrs)} and {len(seeds)}")
    nets = [diagonal_net(X.shape[1], init_scale=s, seed=k) for s, k in zip(scales, seeds)]
    U = torch.stack([net.u.detach() for net in nets]).double()
    V = torch.stack([net.v.detach() for net in nets]).double()
    lr, steps = torch.tensor(lrs, dtype=torch.float64)[:, None], torch.full((len(U),), max_steps)
    active, u, v = torch.arange(len(U)), U.clone(), V.clone()       # the networks still training
    for step in range(max_steps):
        residual = (u * v) @ X.T - y                                  # (networks, n)
        keep = residual.pow(2).mean(1) > tol
        if not keep.all():                                            # store the finished ones
            done = active[~keep]
            U[done], V[done], steps[done] = u[~keep], v[~keep], step
            active, u, v, residual, lr = active[keep], u[keep], v[keep], residual[keep], lr[keep]
            if len(active) == 0:
                break
        step_beta = lr * (2 / X.shape[0] * residual @ X)              # lr * dL/dbeta, (networks, d)
        u, v = u - step_beta * v, v - step_beta * u                   # the chain rule through beta = u * v
    U[active], V[active] = u, v
    loss = ((U * V) @ X.T - y).pow(2).mean(1)
    return {"u": U, "v": V, "train_loss": loss, "steps": steps}
