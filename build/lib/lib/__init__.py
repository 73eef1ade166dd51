"""The book's library: curvature operators, estimators, data, models and training.

Chapters import from here and never re-implement it; the same code runs on CPU and GPU.
"""

from . import (checkpoint, config, curvature, data, estimators, gradient_flow, inpca, invariance, kfac,
               laplace, linear, linear_operator, models, natural_gradient, plotting, progress, quotient,
               reparam, report, sharpness, train)
from .config import setup

__all__ = ["checkpoint", "config", "curvature", "data", "estimators", "gradient_flow", "inpca", "invariance",
           "kfac", "laplace", "linear", "linear_operator", "models", "natural_gradient", "plotting", "progress",
           "quotient", "reparam", "report", "sharpness", "train", "setup"]
