"""Presets of chapters/fisher_ntk.ipynb (see lib.book.presets)."""

KNOBS = {
    "dataset": '"digits" (small) or "tinyimagenet" (paper, the source\'s; about 240 MB, downloaded on request)',
    "architecture": '"small_resnet" (small) or "resnet50" (paper: the source\'s, no normalization layers)',
    "width": "channels of the small residual CNN (no normalization layers)",
    "blocks": "residual blocks of the small CNN",
    "epochs": "SGD epochs (one checkpoint after each)",
    "lr": "SGD learning rate",
    "momentum": "SGD momentum",
    "weight_decay": "SGD weight decay",
    "batch_size": "training mini-batch size",
    "lr_schedule": '"constant", or "step:K": the rate times 0.1 every K epochs (the source: step:30)',
    "during_accuracy": 'test accuracy whose first epoch is the "during training" checkpoint',
    "fisher_points": "held-out examples the Fisher is taken on (the source: 500)",
    "num_samples": "labels drawn per example for a Monte-Carlo Fisher (the source: 5)",
    "draws": "independent Monte-Carlo draws of every Fisher (the source: 5)",
    "num_vectors": "random unit vectors per draw (the source: 4)",
    "ntk_per_class": "held-out examples per class of a two-class NTK sub-task (the source: 50)",
    "ntk_pairs": "class pairs (c1, c2) of the sub-tasks f_c2 - f_c1",
    "ntk_seeds": "training seeds of the NTK measurements over training",
    "big_hidden": "hidden widths of the MLP whose dense Fisher would not fit (section 4)",
    "big_points": "MNIST-1D examples of its Fisher products and solve",
    "trace_points": "examples of its exact one-pass trace",
    "cg_damping": "damping of its conjugate-gradient solve",
    "cg_steps": "most conjugate-gradient steps",
    "max_stored": "most numbers a stored Fisher may hold; larger representations are skipped (section 1) "
                  "or held implicitly (section 2)",
}

PRESETS = {
    "tiny": dict(dataset="digits", architecture="small_resnet", width=4, blocks=1, epochs=4, lr=0.1, momentum=0.9,
                 weight_decay=5e-4, batch_size=64, lr_schedule="constant", during_accuracy=0.15, fisher_points=100,
                 num_samples=2, draws=2, num_vectors=2, ntk_per_class=8, ntk_pairs=[[3, 8]], ntk_seeds=1,
                 big_hidden=[64], big_points=100,
                 trace_points=20, cg_damping=0.01, cg_steps=10, max_stored=10 ** 8),
    "small": dict(dataset="digits", architecture="small_resnet", width=6, blocks=2, epochs=30, lr=0.1,
                  momentum=0.9, weight_decay=5e-4, batch_size=64, lr_schedule="constant", during_accuracy=0.5,
                  fisher_points=450, num_samples=5, draws=5, num_vectors=4, ntk_per_class=40,
                  ntk_pairs=[[3, 8], [0, 1]], ntk_seeds=3, big_hidden=[512, 512],
                  big_points=1000, trace_points=100, cg_damping=0.01, cg_steps=300, max_stored=10 ** 8),
    # the source's setting (George 2021): ResNet-50 without normalization on Tiny ImageNet, SGD lr 0.1,
    # momentum 0.9, weight decay 5e-4, batch 64, 120 epochs, lr x0.1 every 30; "during" is the first
    # epoch past 0.3 test accuracy (the source's thresholds run from 0.1 to 0.5)
    "paper": dict(dataset="tinyimagenet", architecture="resnet50", width=16, blocks=3, epochs=120, lr=0.1,
                  momentum=0.9, weight_decay=5e-4, batch_size=64, lr_schedule="step:30", during_accuracy=0.3,
                  fisher_points=500, num_samples=5, draws=5, num_vectors=4, ntk_per_class=50,
                  ntk_pairs=[[3, 8], [0, 1]], ntk_seeds=3, big_hidden=[2048, 2048], big_points=10000,
                  trace_points=1000, cg_damping=0.001, cg_steps=500, max_stored=10 ** 9),
}

RULES = {
    "dataset": "one of digits, mnist, fashionmnist, cifar10, cifar100, tinyimagenet",
    "lr_schedule": "matches constant|cosine|step:[1-9][0-9]*",
    "max_stored": ">= 1",
    "momentum": "in [0, 1)",
    "weight_decay": ">= 0",
    "during_accuracy": "in (0, 1]",
    "draws": ">= 2",
    "ntk_seeds": ">= 1",
    "cg_damping": "> 0",
}

RELATIONS = [
    (lambda trace_points, big_points: trace_points <= big_points,
     "trace_points ({trace_points}) must not exceed big_points ({big_points})"),
]
