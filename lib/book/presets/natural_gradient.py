"""Presets of chapters/natural_gradient.ipynb (see lib.book.presets)."""

from ..data import DATASETS

KNOBS = {
    "ng_lr": "B1: step size of the natural-gradient and GD paths",
    "ng_time": "B1: integration time (steps times step size)",
    "dense_sizes": "B2: square layer widths for which the dense block is inverted",
    "factor_sizes": "B2: layer widths for which only the two factors are inverted",
    'tasks': 'B3: "data/network" pairs, e.g. ["digits/mlp", "mnist1d/mlp"]',
    "targets": "B3: target test accuracy per task, in percent",
    "seeds": "B3 and B6: seeds per optimizer",
    "epochs": "B3: epochs per run",
    "mlp_hidden": "hidden widths of the MLPs",
    "batch_size": "B3: mini-batch size",
    "sgd_lr": "SGD with momentum 0.9",
    "adam_lr": "Adam learning rate",
    "kfac_lr": "K-FAC with momentum 0.9 and KL clipping",
    "kfac_factor_damping": "K-FAC factor (Tikhonov) damping of the optimizer",
    "kfac_kl_clip": "K-FAC's bound on the KL change per step",
    "curvature_samples": "B2, B4, B5: training examples in the curvature matrices",
    "bn_epochs": "B5: SGD epochs before the factors are measured after training",
    "large_batch": "B6: batch size of large-batch SGD and of K-FAC",
    "flat_epochs": "B6: epochs at the large batch size",
    "num_probes": "B6: Hutch++ products per Hessian trace",
    "cache": "keep finished runs under data/checkpoints",
}

PRESETS = {
    "tiny": dict(ng_lr=0.4, ng_time=4.0, dense_sizes=[8, 16], factor_sizes=[16, 32],
                 tasks=["digits/mlp"], targets=[80.0], seeds=1, epochs=2, mlp_hidden=[16, 16],
                 batch_size=64, sgd_lr=0.05, adam_lr=0.003, kfac_lr=0.01, kfac_factor_damping=0.1,
                 kfac_kl_clip=0.001, curvature_samples=128, bn_epochs=1, large_batch=256,
                 flat_epochs=2, num_probes=9, cache=False),
    "small": dict(ng_lr=0.2, ng_time=8.0, dense_sizes=[16, 32, 48],
                  factor_sizes=[16, 64, 256, 512], tasks=["digits/mlp", "mnist1d/mlp"],
                  targets=[95.0, 55.0], seeds=5, epochs=10, mlp_hidden=[64, 64], batch_size=64,
                  sgd_lr=0.05, adam_lr=0.003, kfac_lr=0.01, kfac_factor_damping=0.1, kfac_kl_clip=0.001,
                  curvature_samples=512, bn_epochs=3, large_batch=512, flat_epochs=15,
                  num_probes=15, cache=False),
    "paper": dict(ng_lr=0.05, ng_time=8.0, dense_sizes=[16, 32, 48, 64, 96],
                  factor_sizes=[16, 64, 256, 1024, 2048], tasks=["mnist/lenet", "mnist1d/lenet"],
                  targets=[98.0, 70.0], seeds=5, epochs=30, mlp_hidden=[256, 256], batch_size=128,
                  sgd_lr=0.05, adam_lr=0.001, kfac_lr=0.01, kfac_factor_damping=0.1, kfac_kl_clip=0.001,
                  curvature_samples=2000, bn_epochs=20, large_batch=2048, flat_epochs=60,
                  num_probes=30, cache=True),
}

RULES = {
    "ng_lr": "in (0, 0.5]",
    "dense_sizes": ">= 2",
    "factor_sizes": ">= 2",
    "tasks": (f"matches ({'|'.join(DATASETS)})/(mlp|lenet)", "'data/network' pairs"),
    "targets": ("in (0, 100)", "test accuracies in percent, one per task"),
    "curvature_samples": ">= 10",
    "num_probes": (">= 3", "Hutch++"),
}

RELATIONS = [
    (lambda targets, tasks: len(targets) == len(tasks),
     "targets must give one accuracy per task: tasks {tasks}, targets {targets}"),
]
