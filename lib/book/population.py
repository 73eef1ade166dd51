"""Train many configurations and record their predictions along training.

The "training manifold" of Mao's thesis (chapter 2) is the set of probabilistic
models ``p(y | x_n)`` visited by many networks (architectures, optimizers,
batch sizes, weight decays, seeds) as they train. This module produces it:

* :class:`Config` - one training configuration.
* :func:`checkpoint_steps` - when to record: ``"geometric"`` (denser early in training)
  or ``"epoch"`` (the initialization and every epoch end).
* :func:`train_trajectory` - train one configuration, returning the log-probabilities
  of all train and test examples at each checkpoint; one run can record several
  schedules at once (their union), and :meth:`Population.at` picks one of them out.
* :func:`train_population` - many configurations, each cached in its own file so an
  interrupted run continues where it stopped.
* :class:`Population` - the stacked results.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .._checks import check_int, check_seed
from .checkpoint import cached
from .config import resolve_device
from .data import Split
from .paths import resolve_root
from .models import classifier
from .progress import progress as progress_bar

__all__ = ["OPTIMIZERS", "INITS", "LR_SCHEDULES", "SCHEDULES", "Config", "checkpoint_steps",
           "train_trajectory", "train_population", "Population"]

OPTIMIZERS = ("sgd", "nesterov", "adam")
INITS = ("default", "corner")
LR_SCHEDULES = ("constant", "cosine")
SCHEDULES = ("geometric", "epoch")
_CACHE_VERSION = 1  # bump when the cached result's layout changes
_EVAL_CHUNK = 2048  # examples per forward pass when evaluating


def _number(value: Any, name: str, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if not (value > 0 if positive else value >= 0) or not math.isfinite(value):
        raise ValueError(f"{name} must be {'> 0' if positive else '>= 0'} and finite, got {value}")
    return float(value)


@dataclass(frozen=True)
class Config:
    """One training configuration.

    Attributes:
        arch: network name passed to :func:`lib.book.models.classifier` (``"mlp"``,
            ``"lenet"``, ``"resnet"``, ``"vit"``, ``"wrn-D-K"``), lower-cased.
        optimizer: ``"sgd"``, ``"nesterov"`` (SGD, Nesterov momentum 0.9) or ``"adam"``.
        lr: learning rate, > 0 (the initial one under a cosine schedule).
        batch_size: examples per mini-batch, >= 1.
        weight_decay: L2 coefficient passed to the optimizer, >= 0.
        seed: seeds the initial weights and the mini-batch order.
        epochs: passes over the training set, >= 1.
        hidden: hidden widths of an ``"mlp"`` (ignored by other archs).
        init: ``"default"`` (PyTorch's initialization) or ``"corner"``: every
            ``nn.Linear`` weight is redrawn from a standard normal (no
            ``1/sqrt(fan_in)`` scaling) with a generator seeded by ``corner_seed``,
            so the logits are large and the network starts near a corner of the
            probability simplex (thesis section 2.5.5). Biases and other layers
            keep their ``seed``-dependent default initialization, so configs
            with one ``corner_seed`` and several seeds start near one corner.
        corner_seed: which corner, for ``init="corner"``.
        lr_schedule: ``"constant"`` or ``"cosine"``: update ``t = 0, ..., T-1`` of a run of
            ``T`` updates uses ``lr * (1 + cos(pi t / T)) / 2``, annealed to zero at the end
            of training, stepped after every update (``CosineAnnealingLR(T_max=T)``, as the
            source's runner does).
    """

    arch: str
    optimizer: str
    lr: float
    batch_size: int
    weight_decay: float = 0.0
    seed: int = 0
    epochs: int = 1
    hidden: tuple[int, ...] = (64,)
    init: str = "default"
    corner_seed: int = 0
    lr_schedule: str = "constant"

    def __post_init__(self) -> None:
        if not isinstance(self.arch, str) or not self.arch.strip():
            raise TypeError(f"arch must be a non-empty string, got {self.arch!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of "
                             f"{', '.join(OPTIMIZERS)}")
        if self.init not in INITS:
            raise ValueError(f"unknown init {self.init!r}; choose one of {', '.join(INITS)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown lr_schedule {self.lr_schedule!r}; choose one of "
                             f"{', '.join(LR_SCHEDULES)}")
        if isinstance(self.hidden, (int, str)) or not isinstance(self.hidden, Sequence):
            raise TypeError(f"hidden must be a sequence of ints such as (64,), got {self.hidden!r}")
        # Frozen dataclass: normalized values go in through object.__setattr__.
        values = {
            "arch": self.arch.lower(),
            "lr": _number(self.lr, "lr", positive=True),
            "batch_size": check_int(self.batch_size, "batch_size"),
            "weight_decay": _number(self.weight_decay, "weight_decay", positive=False),
            "seed": check_seed(self.seed),
            "epochs": check_int(self.epochs, "epochs"),
            "hidden": tuple(check_int(width, "each hidden width") for width in self.hidden),
            "corner_seed": check_seed(self.corner_seed, "corner_seed"),
        }
        for field, value in values.items():
            object.__setattr__(self, field, value)

    def key(self) -> dict[str, Any]:
        """All fields as a plain, JSON-serializable dict (``hidden`` as a list).

        ``lr_schedule`` is left out when it is ``"constant"``, so that keys (and cache
        files) written before schedules existed still match.
        """
        key = dataclasses.asdict(self)
        key["hidden"] = list(self.hidden)
        if key["lr_schedule"] == "constant":
            del key["lr_schedule"]
        return key

    @property
    def name(self) -> str:
        """Short readable name such as ``"mlp-sgd-lr0.1-b64-wd0-s0"`` (not unique: see key())."""
        name = (f"{self.arch}-{self.optimizer}-lr{self.lr:g}-b{self.batch_size}"
                f"-wd{self.weight_decay:g}-s{self.seed}")
        name += f"-corner{self.corner_seed}" if self.init == "corner" else ""
        return name + ("-cos" if self.lr_schedule == "cosine" else "")


def checkpoint_steps(total_steps: int, num: int = 70, *, schedule: str = "geometric",
                     steps_per_epoch: int | None = None) -> list[int]:
    """Steps at which to record a trajectory (step 0 is the initialization).

    ``schedule="geometric"`` (the default): ``num`` steps, 0 and ``total_steps`` included,
    ``round(geomspace(1, total_steps + 1, num)) - 1``, spaced evenly in ``log(step + 1)``
    because predictions move fastest at the start, then nudged apart so that there are
    exactly ``num`` distinct steps whenever ``total_steps + 1 >= num`` (otherwise every
    step is returned). Most checkpoints of a long run then fall in its first epoch.

    ``schedule="epoch"``: the initialization and the end of every epoch,
    ``0, steps_per_epoch, 2 steps_per_epoch, ..., total_steps`` (``num`` is ignored). The
    runner published with Mao's thesis records at this granularity: the initialization and
    every epoch end through epoch 21 in one version; the latest adds four points per epoch
    in the first five epochs and thins out to every 4th, then every 15th epoch after epoch 25.

    Args:
        total_steps: number of mini-batch updates, >= 0.
        num: number of checkpoints wanted, >= 2 (geometric schedule).
        schedule: ``"geometric"`` or ``"epoch"``.
        steps_per_epoch: updates per epoch, >= 1, needed by ``"epoch"``; ``total_steps``
            must be a multiple of it.

    Returns:
        Sorted list of distinct ints in ``[0, total_steps]``.
    """
    total_steps = check_int(total_steps, "total_steps", 0)
    num = check_int(num, "num", 2)
    if schedule == "epoch":
        if steps_per_epoch is None:
            raise ValueError("schedule='epoch' needs steps_per_epoch")
        steps_per_epoch = check_int(steps_per_epoch, "steps_per_epoch", 1)
        if total_steps % steps_per_epoch:
            raise ValueError(f"total_steps = {total_steps} is not a whole number of epochs of "
                             f"{steps_per_epoch} steps")
        return list(range(0, total_steps + 1, steps_per_epoch))
    if schedule != "geometric":
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if total_steps + 1 <= num:
        return list(range(total_steps + 1))
    targets = np.geomspace(1, total_steps + 1, num) - 1
    steps, previous = [], -1
    for i, target in enumerate(targets):
        # At least one past the previous step, and leave room for the rest.
        step = min(max(int(round(target)), previous + 1), total_steps - (num - 1 - i))
        steps.append(step)
        previous = step
    return steps


def _check_schedules(schedule: str | Sequence[str]) -> tuple[str, ...]:
    """One schedule name or a non-empty sequence of distinct ones, as a tuple."""
    names = (schedule,) if isinstance(schedule, str) else schedule
    if not isinstance(names, Sequence) or isinstance(names, str) or len(names) == 0:
        raise TypeError(f"schedule must be one of {SCHEDULES} or a sequence of them, got {schedule!r}")
    names = tuple(names)
    for name in names:
        if name not in SCHEDULES:
            raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"schedule lists a name twice: {names}")
    return names


def _corner_init(model: nn.Module, corner_seed: int) -> None:
    """Redraw every ``nn.Linear`` weight from N(0, 1) with a generator seeded by ``corner_seed``."""
    generator = torch.Generator().manual_seed(corner_seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                weight = torch.randn(module.weight.shape, generator=generator)
                module.weight.copy_(weight.to(module.weight))


def _optimizer(config: Config, parameters) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=config.lr, weight_decay=config.weight_decay)
    momentum = 0.9 if config.optimizer == "nesterov" else 0.0
    return torch.optim.SGD(parameters, lr=config.lr, momentum=momentum,
                           nesterov=config.optimizer == "nesterov",
                           weight_decay=config.weight_decay)


@torch.no_grad()
def _log_probs(model: nn.Module, X: Tensor, device: torch.device) -> Tensor:
    """``log_softmax`` outputs ``(N, C)`` float32 on the CPU, in eval mode."""
    model.eval()
    try:
        chunks = [torch.log_softmax(model(X[i:i + _EVAL_CHUNK].to(device)).float(), dim=1).cpu()
                  for i in range(0, X.shape[0], _EVAL_CHUNK)]
    finally:
        model.train()
    return torch.cat(chunks)


def train_trajectory(config: Config, split: Split, *, device: str | torch.device = "cpu",
                     num_checkpoints: int = 70, schedule: str | Sequence[str] = "geometric",
                     input_shape: Sequence[int] | None = None) -> dict[str, Any]:
    """Train one configuration and record its predictions at :func:`checkpoint_steps`.

    Cross-entropy on mini-batches of ``config.batch_size`` drawn without
    replacement, reshuffled every epoch by a ``torch.Generator`` seeded with
    ``config.seed`` (the last batch of an epoch may be smaller). The learning
    rate is constant, or cosine-annealed per update (``config.lr_schedule``), so a
    trajectory depends only on the fields of ``config``. A step is one mini-batch
    update; step 0 is the initialization. Predictions are evaluated in eval mode
    without gradients. On the CPU the result is a deterministic function of
    ``config`` and the data.

    ``schedule`` names the checkpoint schedule (``"geometric"``: ``num_checkpoints``
    steps, denser early; ``"epoch"``: the initialization and every epoch end), or a
    sequence of them: one training run then records the union of their steps, and
    ``"schedules"`` in the result says which checkpoint belongs to which (a step in
    both is recorded once). The weights, and so the predictions at a given step, do
    not depend on the schedule.

    If the mini-batch loss or the recorded predictions become NaN/inf, training
    stops and the trajectory is marked ``"diverged"``; checkpoints after that
    point hold NaN (log-probs, losses and errors alike), so diverged
    trajectories still stack with the others and can be masked out.

    Args:
        config: the configuration.
        split: data with integer labels; ``split.n_classes`` gives C.
        device: where to train (see :func:`lib.book.config.resolve_device`).
        num_checkpoints: number of steps of the geometric schedule (fewer if there are
            fewer steps).
        schedule: ``"geometric"``, ``"epoch"`` or a sequence of these.
        input_shape: shape of one example for the network; default ``split.X_train.shape[1:]``.

    Returns:
        A dict of CPU tensors (K the number of recorded steps) with ``"steps"`` (K,)
        int64, ``"train_log_probs"`` (K, N_train, C) and ``"test_log_probs"`` (K, N_test, C)
        float32, ``"train_loss"``, ``"test_loss"``, ``"train_error"``, ``"test_error"`` (K,)
        float32 (loss and error of the recorded predictions), ``"schedules"`` (dict: name ->
        (K,) bool, the checkpoints of each requested schedule), ``"diverged"`` (bool),
        ``"total_steps"`` (int) and ``"config"`` (``config.key()``).
    """
    if not isinstance(config, Config):
        raise TypeError(f"config must be a Config, got {type(config).__name__}")
    if not isinstance(split, Split) or split.y_train.is_floating_point():
        raise TypeError("split must be a Split with integer class labels")
    names = _check_schedules(schedule)
    device = resolve_device(device)
    shape = tuple(split.X_train.shape[1:]) if input_shape is None else tuple(input_shape)
    model = _initial_model(config, split, shape, device)
    optimizer = _optimizer(config, model.parameters())
    X_train, y_train = split.X_train.reshape(-1, *shape), split.y_train
    X_test = split.X_test.reshape(-1, *shape)

    n = X_train.shape[0]
    steps_per_epoch = math.ceil(n / config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    per_schedule = {name: checkpoint_steps(total_steps, num_checkpoints, schedule=name,
                                           steps_per_epoch=steps_per_epoch) for name in names}
    steps = sorted(set().union(*per_schedule.values()))
    wanted = set(steps)
    records: dict[int, tuple[Tensor, Tensor]] = {}
    generator = torch.Generator().manual_seed(config.seed)
    diverged, step = False, 0

    def record() -> bool:
        train, test = _log_probs(model, X_train, device), _log_probs(model, X_test, device)
        records[step] = (train, test)
        return bool(torch.isfinite(train).all() and torch.isfinite(test).all())

    diverged = not record()
    model.train()
    for _ in range(config.epochs):
        if diverged:
            break
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, config.batch_size):
            if config.lr_schedule == "cosine":
                for group in optimizer.param_groups:
                    group["lr"] = 0.5 * config.lr * (1 + math.cos(math.pi * step / total_steps))
            index = order[start:start + config.batch_size]
            loss = nn.functional.cross_entropy(model(X_train[index].to(device)),
                                               y_train[index].to(device))
            if not torch.isfinite(loss):
                diverged = True
                break
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if step in wanted and not record():
                diverged = True
                break
    result = _assemble(steps, records, split, config, diverged, total_steps)
    result["schedules"] = {name: torch.tensor([s in set(per_schedule[name]) for s in steps])
                           for name in names}
    return result


def _initial_model(config: Config, split: Split, shape: tuple[int, ...], device: torch.device) -> nn.Module:
    """The configuration's network at its initialization, on ``device`` in the data's dtype."""
    model = classifier(config.arch, shape, split.n_classes, hidden=config.hidden, seed=config.seed)
    if config.init == "corner":
        _corner_init(model, config.corner_seed)
    return model.to(device=device, dtype=split.X_train.dtype)


def _assemble(steps: list[int], records: dict[int, tuple[Tensor, Tensor]], split: Split,
              config: Config, diverged: bool, total_steps: int) -> dict[str, Any]:
    """Stack the recorded predictions, NaN where training stopped before a checkpoint."""
    C = split.n_classes
    nan_train = torch.full((split.X_train.shape[0], C), float("nan"))
    nan_test = torch.full((split.X_test.shape[0], C), float("nan"))
    train = torch.stack([records.get(s, (nan_train, None))[0] for s in steps])
    test = torch.stack([records.get(s, (None, nan_test))[1] for s in steps])

    def loss_and_error(log_probs: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        loss = -log_probs.gather(2, y.view(1, -1, 1).expand(len(steps), -1, 1)).squeeze(2)
        error = (log_probs.argmax(dim=2) != y).float()
        error[torch.isnan(log_probs).any(dim=2)] = float("nan")
        return loss.mean(dim=1), error.mean(dim=1)

    train_loss, train_error = loss_and_error(train, split.y_train.cpu())
    test_loss, test_error = loss_and_error(test, split.y_test.cpu())
    return {"steps": torch.tensor(steps, dtype=torch.int64), "train_log_probs": train,
            "test_log_probs": test, "train_loss": train_loss, "test_loss": test_loss,
            "train_error": train_error, "test_error": test_error, "diverged": diverged,
            "total_steps": total_steps, "config": config.key()}


def _fingerprint(split: Split) -> str:
    """SHA-1 of the split's tensors (values, shapes, dtypes), naming the data in cache keys."""
    digest = hashlib.sha1()
    for tensor in (split.X_train, split.y_train, split.X_test, split.y_test):
        array = tensor.detach().cpu().contiguous().numpy()
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def train_population(configs: Sequence[Config], split: Split, name: str, *,
                     device: str | torch.device = "cpu", num_checkpoints: int = 70,
                     schedule: str | Sequence[str] = "geometric",
                     root: str | os.PathLike = "populations", progress: bool = True,
                     input_shape: Sequence[int] | None = None) -> Population:
    """Run :func:`train_trajectory` for every config, caching each result in its own file.

    Each result goes to ``<root>/<name>/<config.name>-<hash>.pt`` (written with
    :func:`lib.book.checkpoint.save_atomic`, read with ``weights_only=True``), where the
    hash covers ``config.key()``, a fingerprint of the data, ``num_checkpoints``,
    ``schedule`` (left out when it is ``"geometric"``, so older files still match) and
    ``input_shape``. Finished configs are never recomputed, so an interrupted run
    continues with the missing ones; a changed setting gets a new file.

    Args:
        configs: the configurations (at least one).
        split: the data.
        name: folder of this population under ``root``, e.g. ``"ch2-digits"``.
        device: see :func:`train_trajectory`.
        num_checkpoints: checkpoints of the geometric schedule; every config must end up
            with the same number K of recorded steps (true when each has at least
            ``num_checkpoints - 1`` steps, and, with ``"epoch"``, the same epochs and
            steps per epoch).
        schedule: see :func:`train_trajectory`; :meth:`Population.at` selects one schedule's
            checkpoints when several are recorded.
        root: cache folder; relative paths are taken inside the data folder
            (:func:`lib.book.paths.data_root`).
        progress: show a progress bar over the configs.
        input_shape: see :func:`train_trajectory`.

    Returns:
        :class:`Population` in the order of ``configs``.
    """
    configs = list(configs)
    if not configs or not all(isinstance(config, Config) for config in configs):
        raise TypeError("configs must be a non-empty sequence of Config")
    if not isinstance(name, str) or not name.strip() or "/" in name or "\\" in name or name == "..":
        raise ValueError(f"name must be a plain folder name, got {name!r}")
    num_checkpoints = check_int(num_checkpoints, "num_checkpoints", 2)
    names = _check_schedules(schedule)
    folder = resolve_root(root) / name
    data = _fingerprint(split)
    shape = None if input_shape is None else [int(n) for n in input_shape]
    results = []
    for config in progress_bar(configs, desc=name, disable=not progress):
        key = {"config": config.key(), "data": data, "num_checkpoints": num_checkpoints,
               "input_shape": shape, "version": _CACHE_VERSION}
        if names != ("geometric",):
            key["schedule"] = list(names)
        digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
        results.append(cached(folder / f"{config.name}-{digest}.pt", key,
                              lambda config=config: train_trajectory(
                                  config, split, device=device, num_checkpoints=num_checkpoints,
                                  schedule=names, input_shape=input_shape)))
    return Population.from_results(configs, results)


_STACKED = ("steps", "train_log_probs", "test_log_probs", "train_loss", "test_loss",
            "train_error", "test_error")


@dataclass
class Population:
    """Stacked trajectories of M configurations with K checkpoints each.

    Attributes:
        configs: the M configurations.
        steps: (M, K) int64 steps of the checkpoints.
        total_steps: (M,) int64 number of updates of each full run.
        train_log_probs: (M, K, N_train, C) float32.
        test_log_probs: (M, K, N_test, C) float32.
        train_loss, test_loss, train_error, test_error: (M, K) float32.
        diverged: (M,) bool.
        schedules: dict from a schedule name (``"geometric"``, ``"epoch"``) to an (M, K)
            bool mask of the checkpoints that schedule asked for; :meth:`at` applies it.
    """

    configs: list[Config]
    steps: Tensor
    total_steps: Tensor
    train_log_probs: Tensor
    test_log_probs: Tensor
    train_loss: Tensor
    test_loss: Tensor
    train_error: Tensor
    test_error: Tensor
    diverged: Tensor
    schedules: dict[str, Tensor] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_results(cls, configs: list[Config], results: list[dict[str, Any]]) -> Population:
        """Stack :func:`train_trajectory` outputs (all with the same K).

        A result without ``"schedules"`` (written before they existed) holds the
        geometric schedule only."""
        counts = {len(result["steps"]) for result in results}
        if len(counts) > 1:
            raise ValueError(f"trajectories have different numbers of checkpoints "
                             f"{sorted(counts)}; "
                             "lower num_checkpoints to at most the smallest number of steps + 1"
                             " (with the 'epoch' schedule, give every config the same epochs "
                             "and batch size)")
        stacked = {field: torch.stack([result[field] for result in results]) for field in _STACKED}
        masks = [result.get("schedules") or {"geometric": torch.ones(len(result["steps"]), dtype=torch.bool)}
                 for result in results]
        if len({tuple(mask) for mask in masks}) > 1:
            raise ValueError("trajectories were recorded with different checkpoint schedules "
                             f"{sorted({tuple(mask) for mask in masks})}")
        schedules = {name: torch.stack([mask[name] for mask in masks]) for name in masks[0]}
        return cls(list(configs), total_steps=torch.tensor([r["total_steps"] for r in results]),
                   diverged=torch.tensor([bool(r["diverged"]) for r in results]),
                   schedules=schedules, **stacked)

    def __len__(self) -> int:
        return len(self.configs)

    @property
    def fraction(self) -> Tensor:
        """(M, K) fraction of training done at each checkpoint, to compare batch sizes."""
        return self.steps.double() / self.total_steps.double()[:, None]

    def models(self, split: str = "train") -> tuple[Tensor, Tensor, Tensor]:
        """All recorded models as rows: log-probs ``(M*K, N, C)``, ``config_index`` and
        ``checkpoint_index`` (both ``(M*K,)`` int64), configuration-major."""
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        log_probs = self.train_log_probs if split == "train" else self.test_log_probs
        M, K = log_probs.shape[:2]
        config_index = torch.arange(M).repeat_interleave(K)
        return log_probs.flatten(0, 1), config_index, torch.arange(K).repeat(M)

    def at(self, schedule: str) -> Population:
        """The same runs with only the checkpoints of one recorded schedule.

        Args:
            schedule: a key of :attr:`schedules`, e.g. ``"epoch"`` (the initialization and
                every epoch end) when the population was trained with
                ``schedule=("geometric", "epoch")``.

        Returns:
            A :class:`Population` with K' checkpoints (those of ``schedule``) whose
            ``schedules`` holds only ``schedule`` (all True).
        """
        if schedule not in self.schedules:
            raise ValueError(f"schedule {schedule!r} was not recorded; this population has "
                             f"{sorted(self.schedules)}")
        mask = self.schedules[schedule]
        counts = set(mask.sum(1).tolist())
        if len(counts) > 1:
            raise ValueError(f"the runs have different numbers of {schedule!r} checkpoints "
                             f"{sorted(counts)}")
        M, K = mask.shape[0], counts.pop()
        fields = {}
        for field in _STACKED:
            value = getattr(self, field)
            fields[field] = value[mask].reshape(M, K, *value.shape[2:])
        return Population(list(self.configs), total_steps=self.total_steps.clone(),
                          diverged=self.diverged.clone(),
                          schedules={schedule: torch.ones(M, K, dtype=torch.bool)}, **fields)

    def select(self, mask_or_fn: Tensor | Sequence[bool] | Callable[[Config], bool]) -> Population:
        """The sub-population picked by a boolean mask of length M or a predicate on Config."""
        if callable(mask_or_fn):
            mask = torch.tensor([bool(mask_or_fn(config)) for config in self.configs])
        else:
            mask = torch.as_tensor(mask_or_fn)
        if mask.dtype != torch.bool or mask.shape != (len(self),):
            raise ValueError(f"mask must be {len(self)} booleans, got {mask.dtype} "
                             f"of shape {tuple(mask.shape)}")
        fields = {field.name: getattr(self, field.name)[mask]
                  for field in dataclasses.fields(self) if field.name not in ("configs", "schedules")}
        return Population([c for c, keep in zip(self.configs, mask.tolist()) if keep],
                          schedules={name: value[mask] for name, value in self.schedules.items()},
                          **fields)
