"""The book's library, in layers that import only downwards.

- :mod:`lib.operators`: the linear-operator interface and the spectral estimators;
- :mod:`lib.curvature`: Hessian, GGN, Fisher, K-FAC and EKFAC of a model's loss;
- :mod:`lib.geometry`: reparametrization, invariance, Laplace, natural gradient,
  quotient geometry, sharpness;
- :mod:`lib.manifolds`: InPCA and linear models' training trajectories;
- :mod:`lib.sources`: closed forms quoted from one source each;
- :mod:`lib.book`: the book's infrastructure (presets, data, models, training,
  populations, checkpoints, plotting, tables), usable by every layer.

Chapters import from here and never re-implement it; the same code runs on CPU and GPU.
"""

from . import book, curvature, geometry, manifolds, operators, sources
from .book import paths
from .book.config import setup

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

__all__ = ["book", "curvature", "geometry", "manifolds", "operators", "sources", "setup", "__version__"]
