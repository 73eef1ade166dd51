"""Presets of chapters/inpca.ipynb (see lib.book.presets)."""

KNOBS = {
    "archs": "E3: architectures on digits (mlp, lenet, resnet, vit)",
    "optimizers": "E3: sgd, nesterov, adam",
    "seeds": "E3: weight initialisations per configuration",
    "weight_decays": "E3: weight-decay coefficients",
    "epochs": "E3: epochs on digits (batch 64)",
    "checkpoints": "checkpoints recorded per run",
    "mnist1d_epochs": "E3: epochs on MNIST-1D (0 skips it)",
    "ensemble_seeds": "E3: members of the ensemble whose means are compared",
    "synthetic_train": "E2: training points of the synthetic data (a quarter as many test points)",
    "synthetic_epochs": "E2: epochs",
    "synthetic_seeds": "E2: seeds per configuration",
    "synthetic_batches": "E2: batch sizes",
    "synthetic_weight_decays": "E2: weight-decay coefficients",
    "corner_counts": "E2: numbers of corners the runs start from",
    "corner_runs": "E2: runs per corner setting (split evenly over the corners)",
}

PRESETS = {
    "tiny": dict(archs=["mlp", "lenet"], optimizers=["sgd", "adam"], seeds=1, weight_decays=[0.0],
                 epochs=2, checkpoints=6, mnist1d_epochs=1, ensemble_seeds=2, synthetic_train=200,
                 synthetic_epochs=2, synthetic_seeds=1, synthetic_batches=[100],
                 synthetic_weight_decays=[0.0], corner_counts=[1, 2], corner_runs=2),
    "small": dict(archs=["mlp", "lenet", "resnet", "vit"], optimizers=["sgd", "nesterov", "adam"],
                  seeds=1, weight_decays=[0.0], epochs=40, checkpoints=30, mnist1d_epochs=5,
                  ensemble_seeds=8, synthetic_train=2000, synthetic_epochs=20, synthetic_seeds=2,
                  synthetic_batches=[200], synthetic_weight_decays=[0.0], corner_counts=[1, 2, 4],
                  corner_runs=8),
    "paper": dict(archs=["mlp", "lenet", "resnet", "vit"], optimizers=["sgd", "nesterov", "adam"],
                  seeds=5, weight_decays=[0.0, 0.0005], epochs=60, checkpoints=70,
                  mnist1d_epochs=60, ensemble_seeds=30, synthetic_train=5000,
                  synthetic_epochs=100, synthetic_seeds=10, synthetic_batches=[200, 500],
                  synthetic_weight_decays=[0.0, 1e-05], corner_counts=[1, 2, 5, 10],
                  corner_runs=200),
}

RULES = {"checkpoints": ">= 4", "mnist1d_epochs": ">= 0", "ensemble_seeds": ">= 2",
         "synthetic_train": ">= 40"}

RELATIONS = [
    (lambda corner_runs, corner_counts: all(corner_runs % k == 0 for k in corner_counts),
     "corner_runs = {corner_runs} must be divisible by every entry of corner_counts {corner_counts}"),
]
