"""Cost of K-FAC relative to one gradient: lib vs curvlinops vs NNGeometry, and the optimizer.

Setting (issue 4): the foundation MLP 784-512-256-10 (ReLU) and a small CNN (LeNet-style,
two 3x3 conv layers of 16 and 32 channels on 28x28 images, ``lib.book.models.lenet``), cross-
entropy (mean), one batch of 512, on the CPU with 2 threads by default. Measured in one
run, round-robin (one call of each per round, so drift of the machine's speed hits all
alike), medians over the rounds, as ratios to the median of one gradient (forward +
backward) measured in the same run:

* K-FAC factor build, Monte-Carlo Fisher with 1 sample (the issue's setting) and the exact
  (type-2) Fisher, for ``lib.curvature.kronecker.kfac``, curvlinops' ``KFACLinearOperator`` (constructor
  plus ``compute_kronecker_factors()``) and NNGeometry's ``PMatKFAC`` (``FIM`` for the
  exact Fisher, ``FIM_MonteCarlo`` for one sample; NNGeometry has no separate-bias mode);
* one matrix-vector product with the built operator;
* one ``lib.geometry.kfac_optimizer.KFACOptimizer`` step (inverses every 10 steps, so a round is 10 steps;
  factors every step, the default, or every 10 steps) against one ``torch.optim.SGD``
  step with momentum, both including their forward and backward pass.

Targets in the issue: build at most 2x a gradient and at least 1.5x faster than
curvlinops; one optimizer step at most 2.5x an SGD step.

Run: ``.venv/bin/python bench/kfac.py [--threads 2] [--rounds 15] [--device auto]``.
NNGeometry is optional (``pip install nngeometry==0.4``, the ``bench`` extra). This is a
benchmark, not a test: it prints numbers, and asserts only that lib and curvlinops build
the same exact K-FAC.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from lib.curvature.kronecker import kfac  # noqa: E402
from lib.geometry.kfac_optimizer import KFACOptimizer  # noqa: E402
from lib.book.models import lenet  # noqa: E402


def build_cnn(device, batch_size=512, seed=0):
    model = lenet(1, 10, image_size=28, width=16, hidden=64, seed=seed).to(device)
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(batch_size, 1, 28, 28, generator=g).to(device)
    y = torch.randint(0, 10, (batch_size,), generator=g).to(device)
    return model, nn.CrossEntropyLoss(), [(X, y)]


def curvlinops_methods(model, loss_fn, data, v_list):
    from curvlinops import KFACLinearOperator

    params = [p for p in model.parameters() if p.requires_grad]

    def build(fisher_type):
        op = KFACLinearOperator(model, loss_fn, params, data, fisher_type=fisher_type,
                                check_deterministic=False)
        op.compute_kronecker_factors()
        return op

    built = build("type-2")
    return {
        "curvlinops build, MC 1 sample": lambda: build("mc"),
        "curvlinops build, exact (type-2)": lambda: build("type-2"),
        "curvlinops product": lambda: built @ v_list,
    }, built


def nngeometry_methods(model, data, device):
    from nngeometry.metrics import FIM, FIM_MonteCarlo
    from nngeometry.object import PMatKFAC
    from nngeometry.object.vector import random_pvector

    X, y = data[0]
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=len(X))
    built = FIM(model, loader, PMatKFAC, variant="classif_logits", device=device)
    vector = random_pvector(built.generator.layer_collection, device=device, dtype=X.dtype)
    return {
        "NNGeometry build, MC 1 sample": lambda: FIM_MonteCarlo(model, loader, PMatKFAC,
                                                                 trials=1, device=device),
        "NNGeometry build, exact": lambda: FIM(model, loader, PMatKFAC, variant="classif_logits",
                                               device=device),
        "NNGeometry product": lambda: built.mv(vector),
    }


def optimizer_methods(model, loss_fn, data, steps=10):
    X, y = data[0]
    sgd_model = _copy(model)
    sgd = torch.optim.SGD(sgd_model.parameters(), lr=1e-3, momentum=0.9)
    kfac_model, kfac_model_10 = _copy(model), _copy(model)
    kopt = KFACOptimizer(kfac_model, loss_fn, lr=1e-3, inverse_interval=steps)
    kopt_10 = KFACOptimizer(kfac_model_10, loss_fn, lr=1e-3, inverse_interval=steps,
                            curvature_interval=steps)

    def run(net, opt):
        def go():
            for _ in range(steps):  # one round = one inverse refresh + 9 cheap steps
                def closure():
                    opt.zero_grad()
                    loss = loss_fn(net(X), y)
                    loss.backward()
                    return loss
                opt.step(closure)
        return go

    return {f"SGD, {steps} steps": run(sgd_model, sgd),
            f"KFACOptimizer, {steps} steps, factors every step": run(kfac_model, kopt),
            f"KFACOptimizer, {steps} steps, factors every {steps}": run(kfac_model_10, kopt_10)}


def _copy(model):
    import copy
    return copy.deepcopy(model)


def check_agreement(model, loss_fn, data, built_curvlinops, v, v_list):
    ours = kfac(model, loss_fn, data, "ggn") @ v
    theirs = torch.cat([t.reshape(-1) for t in built_curvlinops @ v_list])
    rel = float((ours - theirs).norm() / theirs.norm())
    if rel > 1e-4:
        raise AssertionError(f"lib and curvlinops exact K-FAC differ: relative error {rel:.2e}")
    return rel


def bench_model(name, model, loss_fn, data, args, device, shared):
    X, y = data[0]
    params = [p for p in model.parameters() if p.requires_grad]
    d = sum(p.numel() for p in params)
    v = torch.randn(d, device=device)
    v_list = [t.reshape(p.shape) for t, p in zip(v.split([p.numel() for p in params]), params)]
    built = kfac(model, loss_fn, data, "mc")

    methods = {
        "gradient (autograd)": lambda: torch.autograd.grad(loss_fn(model(X), y), params),
        "lib build, MC 1 sample": lambda: kfac(model, loss_fn, data, "mc"),
        "lib build, exact": lambda: kfac(model, loss_fn, data, "exact"),
        "lib product": lambda: built @ v,
    }
    notes = []
    try:
        extra, built_cl = curvlinops_methods(model, loss_fn, data, v_list)
        methods.update(extra)
        notes.append(f"lib and curvlinops exact K-FAC agree to {check_agreement(model, loss_fn, data, built_cl, v, v_list):.1e}")
    except ImportError:
        notes.append("curvlinops is not installed: skipping its rows")
    try:
        methods.update(nngeometry_methods(model, data, device))
    except ImportError:
        notes.append("NNGeometry is not installed (pip install nngeometry==0.4): skipping its rows")
    methods.update(optimizer_methods(model, loss_fn, data))

    times = shared.time_round_robin(methods, args.rounds, args.warmup, device)
    median = {k: statistics.median(ts) for k, ts in times.items()}
    grad = median["gradient (autograd)"]
    print(f"\n{name} (d = {d}), batch {len(X)}, cross-entropy; device {device}, "
          f"{torch.get_num_threads()} threads, {args.rounds} rounds, torch {torch.__version__}")
    print(f"{'method':52s} {'median ms':>10s} {'x gradient':>11s}")
    for key, value in median.items():
        if "steps" not in key:
            print(f"{key:52s} {1e3 * value:10.2f} {value / grad:11.2f}")
    for prefix in ("MC 1 sample", "exact"):
        ours = median[f"lib build, {prefix}"]
        theirs = median.get(f"curvlinops build, {prefix}" if prefix != "exact"
                            else "curvlinops build, exact (type-2)")
        if theirs:
            print(f"  build {prefix}: lib is {theirs / ours:.2f}x faster than curvlinops "
                  f"(target >= 1.5x); lib build = {ours / grad:.2f}x a gradient (target <= 2x)")
    sgd_key, *kfac_keys = [k for k in median if "steps" in k]
    for key in kfac_keys:
        print(f"  one KFACOptimizer step ({key.split(', ')[-1]}, inverse every 10) = "
              f"{median[key] / median[sgd_key]:.2f}x one SGD step (target <= 2.5x)")
    for note in notes:
        print(f"  {note}")


def main():
    from bench import curvature as shared  # bench/ is a namespace package on ROOT
    args, device = shared.parse_common_args(__doc__, rounds=15, warmup=3)
    model, loss_fn, data = shared.build(device)
    bench_model("MLP 784-512-256-10", model, loss_fn, data, args, device, shared)
    model, loss_fn, data = build_cnn(device)
    bench_model("LeNet-style CNN 1x28x28 (conv 16, conv 32, 64, 10)", model, loss_fn, data,
                args, device, shared)


if __name__ == "__main__":
    main()
