"""Presets of chapters/geodesic_sharpness.ipynb (see lib.book.presets)."""

from pathlib import Path

from ..data import IMAGE_SHAPES

# the lib.book.models.vit arguments a checkpoint's architecture may set
VIT_ARGS = {"dim", "depth", "heads", "patch_size", "mlp_ratio", "in_channels", "num_classes", "image_size"}

KNOBS = {
    "toy_grid": "D1: grid points per axis of the toy figures",
    "diag_models": "D3: number of diagonal networks",
    "diag_dim": "D3: input dimension d",
    "diag_train": "D3: training points (fewer than d)",
    "diag_test": "D3: test points",
    "diag_max_steps": "D3: cap on full-batch gradient steps",
    "diag_rho": "D3: radius of the sharpness balls",
    "diag_draws": "D3: draws of data and hyper-parameters (each: diag_models networks)",
    "diag_train_sweep": "D3: training-set sizes compared (diag_draws draws each)",
    'dataset': 'D4-D5: "digits" or a torchvision data set ("mnist", ...)',
    "vit_models": "D5: transformers in the population",
    "vit_train": "D4-D5: training points of each transformer",
    "vit_dims": "D5: embedding widths to draw from",
    "vit_depths": "D5: numbers of blocks to draw from",
    "vit_heads": "D5: numbers of heads to draw from",
    "patch_size": "D4-D5: patch side",
    "vit_epochs": "D5: epochs to draw from",
    "sharp_points": "D4-D5: training points the sharpness is measured on",
    "sharp_batch": "D4-D5: batch size of the sharpness computation",
    "num_steps": "Auto-PGD iterations (the paper: 20)",
    "vit_rho": "D4-D5: radius of the sharpness balls",
    "eps_values": "D5: relaxations for the robustness check (Fig. 11)",
    "conditions": "D4: condition numbers of the random GL(h) matrices",
    "checkpoints": "paper: list of state_dict files measured instead of the population",
    "checkpoint_arch": "paper: vit(...) keyword arguments of those files",
    "cache": "keep trained models and results under data/checkpoints",
}

PRESETS = {
    "tiny": dict(toy_grid=41, diag_models=6, diag_dim=30, diag_train=15, diag_test=100,
                 diag_max_steps=2000, diag_rho=0.01, diag_draws=2, diag_train_sweep=[10, 15],
                 dataset="digits", vit_models=3, vit_train=100, vit_dims=[16], vit_depths=[1],
                 vit_heads=[2], patch_size=4, vit_epochs=[2, 4], sharp_points=32, sharp_batch=16,
                 num_steps=4, vit_rho=0.1, eps_values=[1e-06, 0.01], conditions=[1.0, 100.0],
                 checkpoints=None, checkpoint_arch=None, cache=False),
    "small": dict(toy_grid=201, diag_models=50, diag_dim=200, diag_train=100, diag_test=1000,
                  diag_max_steps=60000, diag_rho=0.01, diag_draws=5,
                  diag_train_sweep=[50, 100, 150], dataset="digits", vit_models=30, vit_train=400,
                  vit_dims=[16, 24, 32], vit_depths=[1, 2], vit_heads=[2, 4], patch_size=4,
                  vit_epochs=[5, 10, 20, 40], sharp_points=128, sharp_batch=128, num_steps=20,
                  vit_rho=0.1, eps_values=[1e-08, 1e-06, 0.01],
                  conditions=[1.0, 10.0, 100.0, 1000.0], checkpoints=None, checkpoint_arch=None,
                  cache=True),
    "paper": dict(toy_grid=401, diag_models=50, diag_dim=200, diag_train=100, diag_test=1000,
                  diag_max_steps=200000, diag_rho=0.01, diag_draws=10,
                  diag_train_sweep=[50, 100, 150], dataset="mnist", vit_models=48,
                  vit_train=10000, vit_dims=[32, 48, 64], vit_depths=[1, 2], vit_heads=[2, 4],
                  patch_size=4, vit_epochs=[2, 5, 10, 20], sharp_points=2048, sharp_batch=256,
                  num_steps=20, vit_rho=0.1, eps_values=[1e-08, 1e-06, 0.0001, 0.01],
                  conditions=[1.0, 10.0, 100.0, 1000.0], checkpoints=None, checkpoint_arch=None,
                  cache=True),
}


def _checkpoint_files(value):
    return value is None or (isinstance(value, (list, tuple)) and len(value) >= 3
                             and all(isinstance(p, str) and Path(p).is_file() for p in value))


RULES = {
    "toy_grid": ">= 11", "diag_models": ">= 3", "diag_dim": ">= 2", "diag_train": ">= 2",
    "diag_draws": ">= 2", "diag_train_sweep": ">= 2", "vit_models": ">= 3", "vit_train": ">= 10",
    "vit_dims": ">= 2", "sharp_points": ">= 2", "eps_values": ">= 0", "conditions": ">= 1",
    "dataset": "one of " + ", ".join(IMAGE_SHAPES),
    "checkpoints": (_checkpoint_files, "None or a list of at least 3 existing state_dict files"),
    "checkpoint_arch": (lambda v: v is None or (isinstance(v, dict) and set(v) <= VIT_ARGS),
                        f"None or a dict of lib.book.models.vit arguments ({', '.join(sorted(VIT_ARGS))})"),
}

RELATIONS = [
    (lambda diag_train, diag_train_sweep, diag_dim: max(diag_train, *diag_train_sweep) < diag_dim,
     "diag_train and every diag_train_sweep entry must be smaller than diag_dim (else every "
     "interpolator is the same), got {diag_train}, {diag_train_sweep} and {diag_dim}"),
    (lambda dataset, patch_size: IMAGE_SHAPES[dataset][1] % patch_size == 0,
     "patch_size {patch_size} does not divide the image side of {dataset}"),
    (lambda vit_dims, vit_heads: all(d % h == 0 for d in vit_dims for h in vit_heads),
     "every entry of vit_dims {vit_dims} must be divisible by every entry of vit_heads {vit_heads}"),
    (lambda sharp_batch, sharp_points, vit_train: sharp_batch <= sharp_points <= vit_train,
     "need sharp_batch <= sharp_points <= vit_train, got {sharp_batch}, {sharp_points}, {vit_train}"),
    (lambda checkpoints, checkpoint_arch: (checkpoints is None) == (checkpoint_arch is None),
     "checkpoints and checkpoint_arch must be given together"),
]
