"""Layer 3, manifolds: training trajectories as objects of study.

- :mod:`.inpca`: Bhattacharyya distances between product models and their InPCA embedding;
- :mod:`.trajectories`: geodesics, progress, progress-indexed trajectory distances and
  ensemble means of product models;
- :mod:`.linear`: the training manifold of linear least squares (closed-form PCA matrix,
  simulations, ribbon dimension, phase diagram);
- :mod:`.linear_variants`: the same for SGD, weight decay, kernel machines and deep linear
  networks.
- :mod:`.kernels`: Gram matrices of a kernel (e.g. the empirical NTK of
  :func:`lib.curvature.jacobians.ntk`): normalization, kernel PCA, kernel-target alignment.

Built on :mod:`lib.operators` (InPCA's top-k eigenpairs); the spectral bounds of one source
are in :mod:`lib.sources.mao2025`.
"""
