"""A training run's record (:class:`History`) and its checkpoint file, for :func:`lib.book.train.train`.

After every completed epoch (including one that diverged) the file is
rewritten atomically (:func:`lib.book.checkpoint.save_atomic`) with the
model's and optimizer's ``state_dict``, the epoch number, all
:class:`History` fields (``records`` included), the state of the
generator that shuffles the batches, torch's global RNG state (CPU,
and CUDA for a model on a GPU; dropout and callbacks draw from it) and
a fingerprint of the run: the model's parameter names, shapes and
dtypes, the optimizer's class and hyper-parameters, the loss, the
shapes of ``data`` and ``eval_data``, ``batch_size``, ``seed`` and the
``lr_schedule``. Without a schedule ``epochs`` is not part of it, so a
finished run can be extended; with ``"cosine"`` it is, since it sets
the learning rate of every epoch (a finished run cannot be extended,
and an interrupted one must be resumed with the same ``epochs``). The
schedule needs no saved state of its own: its learning rate follows
from the epoch number, ``epochs`` and the initial learning rates, which
the fingerprint pins down.

If the file exists when ``train`` starts, it is loaded with
``weights_only=True`` and, when its fingerprint matches, the model,
optimizer, generators and history are restored and training goes on
from the next epoch; with all ``epochs`` done already, nothing is
trained and the cached result is returned. The callback is not run
again for completed epochs (epoch 0 included): their records come from
the file. Continuing an interrupted run this way gives bit-identical
results to an uninterrupted one on the same device. A resumed run
that had diverged is not trained further.

Callback values must then be None, numbers, strings, tensors, or
lists, tuples and dicts of those, so the file loads with
``weights_only=True``; anything else raises TypeError when it is
returned. Restored tensor records are on the CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .batches import is_pair
from .checkpoint import load_checkpoint, save_atomic

__all__ = ["History", "run_fingerprint", "check_storable", "save_run", "resume_run"]


@dataclass
class History:
    """What :func:`~lib.book.train.train` measured, one entry per completed epoch.

    Attributes:
        epochs: epoch numbers ``1, 2, ...``.
        train_loss: mean training loss over each epoch's mini-batches, each
            measured just before its update (the usual "running" loss). With
            ``reduction="sum"`` it is the sum over the epoch instead.
        eval_loss: loss on ``eval_data`` after each epoch (empty without it).
        eval_accuracy: accuracy on ``eval_data`` after each epoch; empty
            without ``eval_data`` or for real-valued (regression) targets.
        records: ``(epoch, value)`` for every non-None value the callback
            returned, starting with epoch 0 (before training).
        diverged: True if training stopped early on a non-finite loss.
        lr: learning rate of the optimizer's first parameter group during
            each epoch (other groups follow the same schedule from their own
            initial learning rates).
    """

    epochs: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    eval_loss: list[float] = field(default_factory=list)
    eval_accuracy: list[float] = field(default_factory=list)
    records: list[tuple[int, Any]] = field(default_factory=list)
    diverged: bool = False
    lr: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.epochs)


# --------------------------------------------------------------------------- #
# Checkpointing
# --------------------------------------------------------------------------- #
_CHECKPOINT_VERSION = 1
_PLAIN_LEAVES = (type(None), bool, int, float, complex, str, bytes)


def _plain(value: Any) -> Any:
    """``value`` as plain data for the run fingerprint (tuples become lists)."""
    if isinstance(value, Tensor):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if type(value) in _PLAIN_LEAVES:
        return value
    for kind in (bool, int, float, str):  # subclasses, e.g. numpy.float64
        if isinstance(value, kind):
            return kind(value)
    return f"<{type(value).__module__}.{type(value).__qualname__}>"


def _data_shapes(data: Any) -> Any:
    if is_pair(data):
        return [list(data[0].shape), list(data[1].shape)]
    return [[list(X.shape), list(y.shape)] for X, y in data]


def run_fingerprint(model: nn.Module, loss_fn: Callable, optimizer: torch.optim.Optimizer,
                 data: Any, batch_size: int | None, seed: int,
                 eval_data: tuple[Tensor, Tensor] | None, lr_schedule: str | None,
                 epochs: int) -> dict[str, Any]:
    """What must not change between a run and its continuation.

    ``epochs`` is only part of it with a schedule, whose shape it sets. Without
    one there is no ``lr_schedule`` key at all, so checkpoints written before
    schedules existed still match.
    """
    fingerprint = {
        "model": {name: [list(p.shape), str(p.dtype)] for name, p in model.named_parameters()},
        "optimizer": type(optimizer).__qualname__,
        "optimizer_hyperparameters": [
            {**{key: _plain(item) for key, item in group.items() if key != "params"},
             "n_params": len(group["params"])}
            for group in optimizer.param_groups],
        "loss_fn": [type(loss_fn).__qualname__, _plain(getattr(loss_fn, "reduction", None))],
        "data": _data_shapes(data),
        "eval_data": None if eval_data is None else _data_shapes(eval_data),
        "batch_size": batch_size,
        "seed": seed,
    }
    if lr_schedule is not None:
        fingerprint["lr_schedule"] = {"name": lr_schedule, "epochs": epochs}
    return fingerprint


def _differences(saved: Any, current: Any, prefix: str = "") -> list[str]:
    """Human-readable list of where two fingerprints differ."""
    if isinstance(saved, dict) and isinstance(current, dict):
        found = []
        for key in sorted(set(saved) | set(current), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in saved:
                found.append(f"{name}: not in checkpoint, now {current[key]!r}")
            elif key not in current:
                found.append(f"{name}: checkpoint {saved[key]!r}, now absent")
            else:
                found += _differences(saved[key], current[key], name)
        return found
    if (isinstance(saved, list) and isinstance(current, list) and len(saved) == len(current)
            and any(isinstance(item, dict) for item in saved)):
        found = []
        for index, (old, new) in enumerate(zip(saved, current)):
            found += _differences(old, new, f"{prefix}[{index}]")
        return found
    return [] if saved == current else [f"{prefix}: checkpoint {saved!r}, now {current!r}"]


def _unstorable(value: Any, where: str) -> str | None:
    """Where ``value`` holds something ``weights_only`` loading refuses, else None."""
    if type(value) in _PLAIN_LEAVES or type(value) in (Tensor, nn.Parameter):
        return None
    if type(value) in (list, tuple):
        for index, item in enumerate(value):
            problem = _unstorable(item, f"{where}[{index}]")
            if problem:
                return problem
        return None
    if type(value) is dict:
        for key, item in value.items():
            problem = (_unstorable(key, f"key {key!r} of {where}")
                       or _unstorable(item, f"{where}[{key!r}]"))
            if problem:
                return problem
        return None
    return f"{where} is a {type(value).__module__}.{type(value).__qualname__}"


def check_storable(history: History, checkpoint: Any) -> None:
    if not history.records:
        return
    epoch, value = history.records[-1]
    problem = _unstorable(value, "the value")
    if problem:
        raise TypeError(
            f"callback returned a value at epoch {epoch} that cannot be stored in checkpoint "
            f"{checkpoint} ({problem}); return None, numbers, strings, tensors, or lists, "
            "tuples and dicts of those (e.g. float(x) for a numpy scalar), or train without "
            "checkpoint=")


def _rng_states(device: torch.device) -> dict[str, Tensor]:
    states = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def _set_rng_states(states: dict[str, Tensor], device: torch.device) -> None:
    torch.set_rng_state(states["cpu"].cpu())
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"].cpu(), device)


def save_run(path: Any, fingerprint: dict[str, Any], model: nn.Module,
                     optimizer: torch.optim.Optimizer, generator: torch.Generator,
                     history: History, device: torch.device) -> None:
    save_atomic({
        "version": _CHECKPOINT_VERSION,
        "fingerprint": fingerprint,
        "epoch": history.epochs[-1],
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "generator": generator.get_state(),
        "rng": _rng_states(device),
        "history": {
            "epochs": list(history.epochs),
            "train_loss": list(history.train_loss),
            "eval_loss": list(history.eval_loss),
            "eval_accuracy": list(history.eval_accuracy),
            "records": [[epoch, value] for epoch, value in history.records],
            "diverged": history.diverged,
            "lr": list(history.lr),
        },
    }, path)


def resume_run(path: Any, fingerprint: dict[str, Any], epochs: int, model: nn.Module,
            optimizer: torch.optim.Optimizer, generator: torch.Generator,
            device: torch.device, lr: float) -> History | None:
    """Restore the run saved at ``path``; None if there is no checkpoint yet.

    ``lr`` (the first group's initial learning rate) fills ``History.lr`` for
    checkpoints written before it was recorded; those runs had no schedule,
    and the fingerprint guarantees the same learning rate.
    """
    state = load_checkpoint(path, map_location="cpu")
    if state is None:
        return None
    if state.get("version") != _CHECKPOINT_VERSION:
        raise ValueError(f"checkpoint {path} has format version {state.get('version')!r}, "
                         f"expected {_CHECKPOINT_VERSION}; delete it to recompute it")
    differences = _differences(state["fingerprint"], fingerprint)
    if differences:
        raise ValueError(f"checkpoint {path} was written by a different run configuration; "
                         "delete it or use another checkpoint name. Differences: "
                         + "; ".join(differences))
    if state["epoch"] > epochs:
        raise ValueError(f"checkpoint {path} already holds {state['epoch']} epochs but "
                         f"epochs={epochs}; pass epochs >= {state['epoch']} or use another "
                         "checkpoint name")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["generator"].cpu())
    _set_rng_states(state["rng"], device)
    saved = state["history"]
    return History(epochs=list(saved["epochs"]), train_loss=list(saved["train_loss"]),
                   eval_loss=list(saved["eval_loss"]), eval_accuracy=list(saved["eval_accuracy"]),
                   records=[(epoch, value) for epoch, value in saved["records"]],
                   diverged=bool(saved["diverged"]),
                   lr=list(saved.get("lr", [lr] * len(saved["epochs"]))))
