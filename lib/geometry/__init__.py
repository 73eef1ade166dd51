"""Layer 3, geometry: what a metric on parameter space changes.

Reparametrizations and the invariant Hessian operator ``G^-1 H`` (:mod:`.reparam`,
:mod:`.invariance`), Laplace evidence (:mod:`.laplace`), natural gradient and gradient
flow under a metric (:mod:`.natural_gradient`, :mod:`.gradient_flow`), the quotient
geometry of symmetries (:mod:`.quotient`) and sharpness (:mod:`.sharpness`). Built on
:mod:`lib.curvature` and :mod:`lib.operators`.
"""
