"""Cost of the metric-aware trace tr(G^-1 H) by Hutchinson, relative to 100 gradients.

Setting (issue 3, on the foundation benchmark's problem from ``bench/curvature.py``): an
MLP 784-512-256-10 with ReLU, cross-entropy (mean), one batch of 512 inputs, on the CPU
with 2 threads by default. Measured in one run, round-robin (one call of each per round,
so drift of the machine's speed hits all alike), medians over the rounds:

* 100 gradients (100 separate forward + backward passes);
* ``lib.geometry.invariance.hessian_operator(lib.curvature.hessian(...), G).trace(method="hutchinson",
  num_probes=100)`` for ``G`` the identity and ``G`` a positive diagonal (Adam-like:
  ``sqrt(mean of squared gradients) + 1e-8`` from a few sub-batch gradients, computed once
  before timing), with lib's default reverse-over-reverse Hessian and, for comparison,
  its forward-over-reverse mode. The 100 probes go through the operator as one ``(d, 100)`` block: one
  forward and one differentiable backward, then a vmapped second backward.
* ``G`` = K-FAC (``lib.curvature.kronecker.kfac(..., "mc")``, one label sample) with Tikhonov damping of
  its factors (``damped_factors(1e-3)``), whose inverse is the Kronecker product of the
  damped factors' inverses: one extra product ``G^-1 (H V)`` per block of probes. The
  factors are built once before timing (the build is timed in ``bench/kfac.py``).

Target in the issue: at most 3x the time of 100 gradients. The peak resident memory of
the process is printed too (the ``(d, 100)`` block and the batched second backward are
the largest allocations).

Run: ``.venv/bin/python bench/invariance.py [--threads 2] [--rounds 3] [--device auto]``.
This is a benchmark, not a test: it prints numbers.
"""

from __future__ import annotations

import resource
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from lib import curvature  # noqa: E402
from lib.geometry.invariance import hessian_operator  # noqa: E402
from lib.curvature.kronecker import kfac  # noqa: E402


def adam_like_diagonal(model, loss_fn, X, y, num_chunks: int = 4, eps: float = 1e-8):
    """``sqrt(mean_k g_k^2) + eps`` over the gradients of ``num_chunks`` sub-batches; ``(d,)``."""
    params = [p for p in model.parameters() if p.requires_grad]
    sq = None
    for Xc, yc in zip(X.chunk(num_chunks), y.chunk(num_chunks)):
        g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss_fn(model(Xc), yc), params)])
        sq = g.square() if sq is None else sq + g.square()
    return (sq / num_chunks).sqrt() + eps


def main():
    from bench import curvature as shared  # bench/ is a namespace package on ROOT
    args, device = shared.parse_common_args(
        __doc__, rounds=3, warmup=1, extra=[("--probes", int, 100), ("--gradients", int, 100)])
    model, loss_fn, data = shared.build(device)
    X, y = data[0]
    params = [p for p in model.parameters() if p.requires_grad]
    d = sum(p.numel() for p in params)

    H = curvature.hessian(model, loss_fn, data)
    diag = adam_like_diagonal(model, loss_fn, X, y)
    E_identity = hessian_operator(H)
    E_diagonal = hessian_operator(H, diag)
    E_diagonal_fr = hessian_operator(curvature.hessian(model, loss_fn, data,
                                                       mode="forward-over-reverse"), diag)
    E_kfac = hessian_operator(H, kfac(model, loss_fn, data, "mc").damped_factors(1e-3))

    def gradients():
        for _ in range(args.gradients):
            torch.autograd.grad(loss_fn(model(X), y), params)

    results = {}

    def trace_of(E, key):
        def run():
            results[key] = E.trace(method="hutchinson", num_probes=args.probes)
        return run

    methods = {
        f"{args.gradients} gradients": gradients,
        f"tr(H), G = identity, Hutchinson {args.probes}": trace_of(E_identity, "identity"),
        f"tr(G^-1 H), G = Adam-like diagonal, Hutchinson {args.probes}": trace_of(E_diagonal, "diagonal"),
        "  same, Hessian mode forward-over-reverse": trace_of(E_diagonal_fr, "diagonal_fr"),
        f"tr(G^-1 H), G = K-FAC (damped factors), Hutchinson {args.probes}": trace_of(E_kfac, "kfac"),
    }
    times = shared.time_round_robin(methods, args.rounds, args.warmup, device)

    base = statistics.median(times[f"{args.gradients} gradients"])
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(f"MLP 784-512-256-10 (d = {d}), batch 512, cross-entropy; device {device}, "
          f"{torch.get_num_threads()} threads, {args.rounds} rounds (+{args.warmup} warm-up), "
          f"torch {torch.__version__}")
    print(f"{'quantity':58s} {'median s':>9s} {f'x {args.gradients} grads':>12s} {'target':>7s}")
    for name, ts in times.items():
        median = statistics.median(ts)
        ratio = median / base
        verdict = "" if name.endswith("gradients") else ("ok" if ratio <= 3.0 else "over")
        print(f"{name:58s} {median:9.3f} {ratio:12.2f} {verdict:>7s}")
    print(f"estimates: tr(H) ~ {results['identity']:.4g}, tr(G^-1 H) with the diagonal ~ "
          f"{results['diagonal']:.4g}, with K-FAC ~ {results['kfac']:.4g} (seed 0)")
    print(f"peak resident memory of the process: {peak_mib:.0f} MiB")


if __name__ == "__main__":
    main()
