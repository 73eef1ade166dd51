"""Experiment drivers that chapters share or would otherwise define inline: each trains or
measures one piece of a chapter's experiment and caches it with a :class:`~lib.book.checkpoint.ResultCache`.

* :func:`measure` - several measures (sharpness variants, ...) of one model, cached;
* :func:`diagonal_net_draw` - one draw of the diagonal-network experiment (data,
  hyper-parameters, a population of trained networks, their test losses and measures);
* :func:`train_vit` - build, train (or load) one small Vision Transformer;
* :func:`sloppy_populations` - students and runs from corners on one sloppy Gaussian
  data set (the InPCA chapter's synthetic experiment);
* :func:`r_squared` and :func:`bootstrap_r_squared` - R^2 of a linear fit and its
  bootstrap interval over runs.

Measures come in as ``{name: f(model, data) -> float}``, so this module needs nothing from
the geometry layer (``lib.book`` imports no other layer).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .._checks import check_int, check_seed
from .checkpoint import ResultCache
from .models import diagonal_net, vit
from .population import Config, train_population
from .synthetic import make_sloppy_gaussian, make_sparse_regression
from .train import accuracy, train, train_diagonal_nets

__all__ = ["measure", "diagonal_net_draw", "train_vit", "sloppy_populations", "r_squared",
           "bootstrap_r_squared"]

Measure = Callable[[nn.Module, Any], float]


def measure(model: nn.Module, data: tuple[Tensor, Tensor], variants: Mapping[str, Measure],
            key: dict[str, Any], *, cache: ResultCache, **settings: Any) -> dict[str, float]:
    """Every measure ``{name: f(model, data)}`` of one model, as ``{name: float}``, cached.

    Args:
        model: the model measured.
        data: ``(X, y)`` with ``N`` examples.
        variants: ``{name: f}``, each ``f(model, data)`` returning a number.
        key: what identifies the model (its configuration, seed, radius, ...).
        cache: where the result is cached, as ``"sharpness"`` under ``key`` plus the
            variants' names, ``settings`` and ``N`` (``"points"``).
        **settings: further settings the measures depend on (iterations, batch size).

    Example:
        >>> cache = ResultCache("demo", enabled=False)
        >>> net, data = nn.Linear(2, 1), (torch.zeros(3, 2), torch.zeros(3, 1))
        >>> measure(net, data, {"zero": lambda m, d: 0}, {"run": 1}, cache=cache)
        {'zero': 0.0}
    """
    key = {**key, "variants": list(variants), **settings, "points": len(data[1])}
    return cache("sharpness", key, lambda: {v: float(f(model, data)) for v, f in variants.items()})


def diagonal_net_draw(num_train: int, draw: int, variants: Mapping[str, Measure], *, dim: int,
                      num_test: int, num_models: int, max_steps: int, seed: int, cache: ResultCache,
                      **settings: Any) -> dict[str, Any]:
    """One draw of the diagonal-network experiment (the geodesic-sharpness chapter, D3).

    Draw ``k`` uses seed ``seed + 1000 k``: sparse-regression data
    (:func:`lib.book.synthetic.make_sparse_regression`, sparsity 0.9, float64) with
    ``num_train`` training and ``num_test`` test points in ``dim`` dimensions, and
    ``num_models`` initial scales in [0.02, 1] and learning rates in [0.02, 0.06]
    (log-uniform); the networks are trained full batch by
    :func:`lib.book.train.train_diagonal_nets` for at most ``max_steps`` steps, then each
    measure of ``variants`` is taken on the training data. Cached as ``"diagonal-draw"``.

    Returns:
        Dict with ``"u"``, ``"v"`` ``(m, dim)``, ``"train_loss"``, ``"steps"`` ``(m,)``
        (see :func:`~lib.book.train.train_diagonal_nets`), ``"test_loss"`` (m floats),
        ``"zero_loss"`` (the test loss of predicting 0), ``"values"``
        ``{name: m floats}`` and ``"scales"`` (m floats).
    """
    num_models = check_int(num_models, "num_models")
    seed = check_seed(seed + 1000 * check_int(draw, "draw", 0))     # draw 0: the chapter's seed
    data = make_sparse_regression(num_train, num_test, dim, sparsity=0.9, seed=seed, dtype=torch.float64)
    rng = np.random.default_rng(seed)
    scales = np.exp(rng.uniform(np.log(0.02), np.log(1.0), num_models)).tolist()
    lrs = np.exp(rng.uniform(np.log(0.02), np.log(0.06), num_models)).tolist()

    def run():
        nets = train_diagonal_nets(*data.train, scales, lrs, [1000 * seed + i for i in range(num_models)],
                                   max_steps)
        values = {name: [] for name in variants}
        for i in range(num_models):
            net = diagonal_net(dim).double()
            with torch.no_grad():
                net.u.copy_(nets["u"][i])
                net.v.copy_(nets["v"][i])
            for name, f in variants.items():
                values[name].append(float(f(net, data.train)))
        test_loss = ((nets["u"] * nets["v"]) @ data.X_test.T - data.y_test).pow(2).mean(1)
        return {**nets, "test_loss": test_loss.tolist(), "zero_loss": float(data.y_test.pow(2).mean()),
                "values": values}

    key = {"d": dim, "n": num_train, "models": num_models, "steps": max_steps, "draw": draw, **settings,
           "variants": list(variants)}
    return {**cache("diagonal-draw", key, run), "scales": scales}


def train_vit(config: Mapping[str, Any], train_data: tuple[Tensor, Tensor],
              test_data: tuple[Tensor, Tensor], *, image_shape: tuple[int, int, int], patch_size: int,
              cache: ResultCache, device: torch.device | str = "cpu", batch_size: int = 64,
              **settings: Any) -> tuple[nn.Module, float, float]:
    """Build, train with AdamW (or load from the cache) one :func:`lib.book.models.vit`.

    Args:
        config: ``dim``, ``depth``, ``heads``, ``lr``, ``wd`` (weight decay), ``epochs`` and
            ``seed`` (initialization and batch order).
        train_data, test_data: ``(X, y)`` images ``(N, channels, side, side)`` and labels.
        image_shape: ``(channels, side, classes)``, e.g. ``lib.book.data.IMAGE_SHAPES[name]``.
        patch_size: patch side.
        cache: where the trained weights are cached, as ``"vit"`` under ``config``, the
            architecture and ``settings``.
        device: where the model lives.
        batch_size: mini-batch size.
        **settings: further settings the weights depend on (data set, training-set size).

    Returns:
        ``(model in eval mode, train error, test error)``.
    """
    channels, side, classes = image_shape
    arch = dict(in_channels=channels, num_classes=classes, image_size=side, patch_size=patch_size,
                dim=config["dim"], depth=config["depth"], heads=config["heads"])
    model = vit(**arch, seed=config["seed"]).to(device)

    def fit():
        optimizer = torch.optim.AdamW(model.parameters(), lr=config["lr"], weight_decay=config["wd"])
        train(model, nn.CrossEntropyLoss(), train_data, optimizer, epochs=config["epochs"],
              batch_size=batch_size, seed=config["seed"])
        return {"state": {k: v.detach().cpu() for k, v in model.state_dict().items()}}

    key = {**config, "arch": arch, **settings}
    model.load_state_dict(cache("vit", key, fit)["state"])
    model.eval()
    return model, 1 - accuracy(model, *train_data), 1 - accuracy(model, *test_data)


def sloppy_populations(name: str, c: float, *, num_train: int, seed: int, epochs: int,
                       batch_sizes: Sequence[int], weight_decays: Sequence[float], num_seeds: int,
                       corner_counts: Sequence[int], corner_runs: int, num_checkpoints: int,
                       lrs: Mapping[str, float], corner_lrs: Mapping[str, float],
                       device: torch.device | str = "cpu") -> dict[str, Any]:
    """Students and runs from corners on one sloppy Gaussian data set (the InPCA chapter, E2).

    The data are :func:`lib.book.synthetic.make_sloppy_gaussian` with ``num_train`` training
    and ``num_train // 4`` test points and sloppiness ``c``. The students are MLPs of widths
    (512,) and (512, 512), one per optimizer of ``lrs`` (its learning rate), batch size,
    weight decay and seed; for every ``k`` of ``corner_counts``, ``corner_runs`` MLPs (512,)
    start from ``k`` corners (``corner_runs // k`` each), alternating SGD and Nesterov
    with ``corner_lrs``. Each population is trained (and cached under
    ``data/populations/``) by :func:`lib.book.population.train_population`.

    Returns:
        ``{"data": Split, "students": Population, "corners": {k: Population}}``.
    """
    data = make_sloppy_gaussian(num_train, num_train // 4, c=c, seed=seed)
    configs = [Config(arch="mlp", hidden=h, optimizer=o, lr=lrs[o], batch_size=b, weight_decay=wd,
                      seed=1000 * seed + s, epochs=epochs)
               for h in ((512,), (512, 512)) for o in lrs for b in batch_sizes
               for wd in weight_decays for s in range(num_seeds)]
    students = train_population(configs, data, f"inpca-synthetic-{name}", device=device,
                                num_checkpoints=num_checkpoints)
    corners = {}
    for k in corner_counts:
        runs = [Config(arch="mlp", hidden=(512,), optimizer=("sgd", "nesterov")[r % 2],
                       lr=corner_lrs[("sgd", "nesterov")[r % 2]], batch_size=100, weight_decay=0.0,
                       seed=1000 * seed + r, epochs=epochs, init="corner", corner_seed=j)
                for j in range(k) for r in range(corner_runs // k)]
        corners[k] = train_population(runs, data, f"inpca-corners-{name}", device=device,
                                      num_checkpoints=num_checkpoints)
    return dict(data=data, students=students, corners=corners)


def r_squared(x: Any, y: Any) -> float:
    """R^2 of the least-squares line through the points ``(x_i, y_i)``: the squared correlation.

    Example:
        >>> round(r_squared([0.0, 1.0, 2.0], [1.0, 3.0, 5.0]), 12)
        1.0
    """
    return float(np.corrcoef(x, y)[0, 1] ** 2)


def bootstrap_r_squared(x: Any, y: Any, draws: Sequence[Any],
                        percentiles: Sequence[float] = (2.5, 97.5)) -> np.ndarray:
    """Percentiles of :func:`r_squared` over bootstrap samples of whole runs.

    Args:
        x, y: ``(runs, k)`` arrays, ``k`` points per run.
        draws: index arrays of runs, one per bootstrap sample (e.g.
            ``rng.integers(0, runs, runs)``); each sample pools every point of its runs.
        percentiles: which percentiles to return.

    Returns:
        ``(len(percentiles),)`` array.
    """
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 2 or x.shape != y.shape:
        raise ValueError(f"x and y must be (runs, k) arrays of one shape, got {x.shape} and {y.shape}")
    if len(draws) == 0:
        raise ValueError("draws must hold at least one bootstrap sample")
    return np.percentile([r_squared(x[d].ravel(), y[d].ravel()) for d in draws], list(percentiles))
