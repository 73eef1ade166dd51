"""Presets of chapters/reparametrization.ipynb (see lib.book.presets)."""

from ..data import DATASETS

KNOBS = {
    "max_dim": "A1: the worked example up to this dimension",
    "gd_lr": "A2: step size of the gradient-descent trajectories",
    "gd_time": "A2: integration time (steps times lr)",
    "prior_samples": "A5: functions drawn from each prior",
    "laplace_seeds": "A6: seeds (initializations) of the sine-regression experiment",
    "laplace_samples": "A6: number of training points (drawn once, as laplace-torch's example)",
    "laplace_hidden": "A6, laplace-torch protocol: hidden units of the tanh network",
    "laplace_epochs": "A6, laplace-torch protocol: full-batch Adam steps on the MSE",
    "map_hidden": "A6, exact-MAP protocol: hidden units",
    "map_adam_steps": "A6, exact-MAP protocol: Adam steps before L-BFGS and Newton",
    'sharp_tasks': 'A7: "data/network" pairs, e.g. ["digits/mlp", "mnist1d/lenet"]',
    "sharp_seeds": "A7: seeds per task and optimizer",
    "sharp_epochs": "A7: epochs, with a cosine learning-rate schedule",
    "mlp_hidden": "A7: hidden widths of the MLPs",
    "sgd_lr": "A7: SGD with Nesterov momentum 0.9",
    "adam_lr": "A7: Adam learning rate",
    "batch_size": "A7: mini-batch size",
    "hessian_samples": "A7: training examples in the Hessian",
    "num_probes": "Hutch++ products per trace",
    "cache": "A7: keep finished runs under data/checkpoints",
}

PRESETS = {
    "tiny": dict(max_dim=3, gd_lr=0.05, gd_time=3.0, prior_samples=2000, laplace_seeds=2,
                 laplace_samples=30, laplace_hidden=4, laplace_epochs=50, map_hidden=4,
                 map_adam_steps=200, sharp_tasks=["digits/mlp", "digits/lenet"], sharp_seeds=2,
                 sharp_epochs=2, mlp_hidden=[8], sgd_lr=0.1, adam_lr=0.003, batch_size=64,
                 hessian_samples=300, num_probes=9, cache=False),
    "small": dict(max_dim=5, gd_lr=0.05, gd_time=6.0, prior_samples=20000, laplace_seeds=5,
                  laplace_samples=150, laplace_hidden=50, laplace_epochs=1000, map_hidden=20,
                  map_adam_steps=3000,
                  sharp_tasks=["digits/mlp", "digits/lenet", "mnist1d/mlp", "mnist1d/lenet"],
                  sharp_seeds=5, sharp_epochs=40, mlp_hidden=[64, 64], sgd_lr=0.1, adam_lr=0.003,
                  batch_size=64, hessian_samples=1000, num_probes=30, cache=False),
    "paper": dict(max_dim=5, gd_lr=0.01, gd_time=6.0, prior_samples=100000, laplace_seeds=5,
                  laplace_samples=150, laplace_hidden=50, laplace_epochs=1000, map_hidden=20,
                  map_adam_steps=3000,
                  sharp_tasks=["mnist/lenet", "fashionmnist/lenet", "cifar10/wrn-16-4", "cifar100/wrn-16-4"],
                  sharp_seeds=5, sharp_epochs=100, mlp_hidden=[256, 256], sgd_lr=0.1,
                  adam_lr=0.001, batch_size=128, hessian_samples=5000, num_probes=30, cache=True),
}

RULES = {
    "prior_samples": ">= 100",
    "gd_lr": ("in (0, 0.05]", "4 x gd_lr must stay stable"),
    "laplace_seeds": (">= 2", "the tables show a spread"),
    "laplace_samples": ">= 10",
    "sharp_tasks": (f"matches ({'|'.join(DATASETS)})/(mlp|lenet|wrn-\\d+-\\d+)",
                    "'data/network' pairs, network 'mlp', 'lenet' or 'wrn-D-K'"),
    "sharp_seeds": ">= 2",
    "num_probes": (">= 3", "Hutch++"),
}
