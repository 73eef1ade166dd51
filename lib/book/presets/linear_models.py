"""Presets of chapters/linear_models.ipynb (see lib.book.presets)."""

KNOBS = {
    "num_points": "number of training points n (the kernel is n by n)",
    "n_features": "input dimension d, larger than n",
    "fig1_times": "Fig 5.1: training times T",
    "fig5_times": "Fig 5.5: training times T of the simulations",
    "mc_runs": "Fig 5.5 and the checks: number N of simulated runs",
    "grid_T": "Fig 5.3: number of log-spaced training times",
    "grid_c": "Fig 5.3: number of slopes c",
    "ratios": "Fig 5.3: values of sigma_star over sigma_w, one heat map each",
    "lemma_slopes": "Fig 5.4: slopes c",
    "variant_times": "variants: training times T",
    "deep_width": "variants: hidden width of the two-layer linear nets",
}

PRESETS = {
    "tiny": dict(num_points=20, n_features=40, fig1_times=[1, 10, 100], fig5_times=[2, 10, 50],
                 mc_runs=40, grid_T=6, grid_c=5, ratios=[10.0, 1.0, 0.1], lemma_slopes=[0.2, 0.5],
                 variant_times=[2, 10, 50], deep_width=4),
    "small": dict(num_points=50, n_features=100, fig1_times=[1, 10, 100, 1000, 10000],
                  fig5_times=[5, 20, 100, 500], mc_runs=200, grid_T=30, grid_c=25,
                  ratios=[10.0, 1.0, 0.1], lemma_slopes=[0.1, 0.3, 0.6],
                  variant_times=[2, 5, 10, 20, 50, 100, 200, 500], deep_width=10),
    "paper": dict(num_points=50, n_features=100, fig1_times=[1, 10, 100, 1000, 10000],
                  fig5_times=[5, 20, 100, 500, 2000], mc_runs=1000, grid_T=60, grid_c=50,
                  ratios=[10.0, 1.0, 0.1], lemma_slopes=[0.1, 0.3, 0.6],
                  variant_times=[2, 5, 10, 20, 50, 100, 200, 500, 1000], deep_width=20),
}

RULES = {"num_points": ">= 4", "mc_runs": ">= 2", "grid_T": ">= 2", "grid_c": ">= 2"}

RELATIONS = [
    (lambda n_features, num_points: n_features > num_points,
     "the analysis needs n_features > num_points, got d = {n_features}, n = {num_points}"),
]
