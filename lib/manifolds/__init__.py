"""Layer 3, manifolds: training trajectories as objects of study.

InPCA of a population's predictions (:mod:`.inpca`) and the linear models whose
trajectories have closed forms (:mod:`.linear`). Built on :mod:`lib.operators`.
"""
