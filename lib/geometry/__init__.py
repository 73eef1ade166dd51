"""Layer 3, geometry: what a metric on parameter space changes.

- :mod:`.reparam`: reparametrizations ``psi = phi(theta)`` (scaling, linear maps,
  elementwise maps, WeightNorm) with their Jacobian products;
- :mod:`.invariance`: the invariant Hessian operator ``G^-1 H`` and pulled-back metrics;
- :mod:`.laplace`: the Laplace log marginal likelihood, naive and invariant, with the Hessian
  or the GGN;
- :mod:`.natural_gradient`, :mod:`.gradient_flow`: natural gradient and gradient flow under
  a metric;
- :mod:`.gl_pairs`: the ``GL(h)`` symmetry of a pair of blocks (invariant metrics,
  horizontal projection, Christoffel terms); :mod:`.rescale`: the ``GL(1)`` rescaling
  symmetry; :mod:`.attention`: the pairs inside ``nn.MultiheadAttention``;
- :mod:`.quotient`: the quotient geometry of a whole model, built from those three;
- :mod:`.auto_pgd`: the Auto-PGD maximiser over a geometry's ball;
- :mod:`.sharpness`: adaptive and geodesic sharpness, rank correlation, and the maximum of
  a quadratic on a ball;
- :mod:`.sloppiness`: effective dimensionality, strength and sloppy factor of a spectrum,
  the analytical PAC-Bayes bound they control, and eigenvector overlaps.

Built on :mod:`lib.curvature` and :mod:`lib.operators`; the closed forms of single sources
that use these tools are in :mod:`lib.sources`.
"""
