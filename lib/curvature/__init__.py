"""Layer 2, curvature: the curvature of a model's loss over data, as operators.

Hessian, generalized Gauss-Newton and Fisher products (:mod:`.products`), and their
Kronecker-factored approximations K-FAC and EKFAC (:mod:`.kronecker`). Everything takes the
same ``(model, loss_fn, data)``; the operators come from :mod:`lib.operators`.
"""

from .products import *  # noqa: F401,F403  the public names, listed in products.__all__
from .products import __all__ as _products_all
from .kronecker import EKFACOperator, KFACOperator, KroneckerFactors, ekfac, kfac

__all__ = [*_products_all, "kfac", "ekfac", "KFACOperator", "EKFACOperator", "KroneckerFactors"]
