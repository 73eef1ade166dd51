"""Presets of chapters/curvature.ipynb (see lib.book.presets)."""

KNOBS = {
    'dataset': '"digits" (small) or "mnist" (paper; downloaded on first use)',
    "hidden": "hidden widths of the MLP, e.g. [16]",
    "cnn_width": "channels of the CNN's first convolution",
    "cnn_hidden": "width of the CNN's hidden linear layer",
    "epochs": "SGD epochs of the MLP and the CNN",
    "lr": "SGD learning rate",
    "momentum": "SGD momentum",
    "batch_size": "training mini-batch size",
    "curvature_batch": "batch size for the curvature products (they sum over all batches)",
    "num_probes": "matrix-vector products per trace estimate",
    "top_k": "number of top eigenvalues compared with the dense ones",
    "num_samples": "label samples of the Monte-Carlo Fisher, one table row each",
    "trace_seeds": "repetitions of the stochastic trace estimators",
    "slq_probes": "random probes of stochastic Lanczos quadrature",
    "slq_steps": "Lanczos steps per probe",
    "dense_max_dim": "build dense matrices only up to this many parameters",
    "m1d_hidden": "hidden widths of the MNIST-1D MLP",
    "m1d_lr": "SGD learning rate of the MNIST-1D MLP",
    "m1d_epochs": "epochs of the MNIST-1D MLP",
}

PRESETS = {
    "tiny": dict(dataset="digits", hidden=[8], cnn_width=2, cnn_hidden=8, epochs=2, lr=0.01,
                 momentum=0.9, batch_size=64, curvature_batch=2048, num_probes=9, top_k=3,
                 num_samples=[1, 8], trace_seeds=3, slq_probes=2, slq_steps=20, dense_max_dim=1000,
                 m1d_hidden=[16], m1d_lr=0.05, m1d_epochs=2),
    "small": dict(dataset="digits", hidden=[16], cnn_width=4, cnn_hidden=32, epochs=15, lr=0.01,
                  momentum=0.9, batch_size=64, curvature_batch=2048, num_probes=30, top_k=5,
                  num_samples=[1, 4, 16, 64], trace_seeds=10, slq_probes=10, slq_steps=80,
                  dense_max_dim=3000, m1d_hidden=[100, 100], m1d_lr=0.05, m1d_epochs=40),
    "paper": dict(dataset="mnist", hidden=[512, 256], cnn_width=6, cnn_hidden=120, epochs=10,
                  lr=0.01, momentum=0.9, batch_size=128, curvature_batch=10000, num_probes=99,
                  top_k=10, num_samples=[1, 4, 16, 64, 256], trace_seeds=10, slq_probes=10,
                  slq_steps=100, dense_max_dim=5000, m1d_hidden=[512, 512], m1d_lr=0.05,
                  m1d_epochs=100),
}

RULES = {
    "trace_seeds": ">= 2",
    "dense_max_dim": ">= 0",
    "momentum": "in [0, 1)",
    "num_probes": (">= 3", "Hutch++ needs three groups"),
}
