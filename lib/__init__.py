"""The book's library: curvature operators, estimators, data, models and training.

Chapters import from here and never re-implement it; the same code runs on CPU and GPU.
"""

from . import (checkpoint, config, curvature, data, estimators, gradient_flow, inpca, invariance, kfac,
               laplace, linear, linear_operator, models, natural_gradient, paths, plotting, progress,
               quotient, reparam, report, sharpness, train)
from .config import setup

__distribution__ = "parameter-space-geometry"  # the pip name; the chapters' install cell checks it


def _version() -> str:
    """The version in pyproject.toml (a clone) or in the installed package's metadata."""
    if paths.in_clone():
        import tomllib

        with open(paths.REPO_ROOT / "pyproject.toml", "rb") as f:
            return tomllib.load(f)["project"]["version"]
    from importlib.metadata import version

    return version(__distribution__)


__version__ = _version()

__all__ = ["checkpoint", "config", "curvature", "data", "estimators", "gradient_flow", "inpca", "invariance",
           "kfac", "laplace", "linear", "linear_operator", "models", "natural_gradient", "paths", "plotting",
           "progress", "quotient", "reparam", "report", "sharpness", "train", "setup", "__version__"]
