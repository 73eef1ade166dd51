"""Layer 2, curvature: the curvature of a model's loss over data, as operators.

The loss in output space and the Fisher kinds (:mod:`.losses`), the checks of a model and
its data (:mod:`.inspection`), Hessian, generalized Gauss-Newton and Fisher products
(:mod:`.products`), the K-FAC factor loop (:mod:`.factors`) and the Kronecker-factored
operators K-FAC and EKFAC built on it (:mod:`.kronecker`), the per-example square-root rows of a
Fisher (:mod:`.roots`) and every representation of the Fisher from one entry point,
:func:`~lib.curvature.representations.fisher` (:mod:`.representations`), and dense float64 references of
all of them for tests, benchmarks and chapters (:mod:`.dense`). Everything takes the same
``(model, loss_fn, data)``; the operators come from :mod:`lib.operators`. Function space
(:mod:`.jacobians`) takes ``(model, X)``: the Jacobian of the outputs with its
push-forward ``J v`` and pull-back ``J^T u``, and the empirical neural tangent kernel. The
correlation spectra of inputs, activations, activation gradients and logit Jacobians that a
study of sloppiness plots are in :mod:`.spectra`.
"""

from .products import *  # noqa: F401,F403  the public names, listed in products.__all__
from .products import __all__ as _products_all
from .losses import FisherKind, Loss
from .kronecker import EKFACOperator, KFACOperator, KroneckerFactors, ekfac, kfac
from .representations import REPRESENTATIONS, Representation, fisher  # fisher: the entry point of every representation
from .jacobians import Jacobian, jacobian, ntk

__all__ = [*_products_all, "FisherKind", "Loss", "kfac", "ekfac", "KFACOperator",
           "EKFACOperator", "KroneckerFactors", "Representation", "REPRESENTATIONS",
           "Jacobian", "jacobian", "ntk"]
