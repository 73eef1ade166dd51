"""Top-k Hessian and Fisher eigenvalues: Lanczos against a dense ``eigh``, and where Lanczos wins.

Setting (issue 18): MLPs 64-w-w-2 (tanh) on scikit-learn's digits as a binary task (digits 0-4
against 5-9, 1000 examples, float64), cross-entropy (mean), for growing widths ``w``. For each:

* one gradient (forward + backward on all examples), the unit of the ratios;
* Lanczos for the ``k`` largest eigenvalues (``lib.operators.spectral.eigvalsh(method="lanczos")``,
  full re-orthogonalization, tolerance 1e-6), of the Hessian and of the exact Fisher, through
  the matrix-free operators of ``lib.curvature``: time / gradient, and the Hessian-vector
  products it needed;
* the dense route where ``d`` allows it (``--dense-max``): ``op.to_dense()`` (``d`` products)
  plus ``torch.linalg.eigvalsh``, time / gradient, and the largest relative difference of the
  top ``k`` eigenvalues between the two routes.

The crossover is the smallest ``d`` where Lanczos is faster than the dense route. Measured
in one run (each timing a median of ``--rounds`` calls, the methods in turn).

Run: ``.venv/bin/python bench/sloppiness.py [--threads 2] [--rounds 3] [--k 20] [--dense-max 6000]``
(a few minutes on 2 cores). A benchmark, not a test: it prints a table.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from lib import curvature  # noqa: E402
from lib.book.models import mlp  # noqa: E402
from lib.operators import spectral  # noqa: E402

WIDTHS = (2, 4, 8, 16, 32, 64, 96, 160)


def binary_digits(n=1000):
    from sklearn.datasets import load_digits
    data = load_digits()
    X = torch.as_tensor(data.data[:n], dtype=torch.float64) / 16.0
    y = torch.as_tensor(data.target[:n] >= 5, dtype=torch.long)
    return X, y


class CountingOperator:
    """Counts the products of an operator (wrapping its ``_matmat``)."""

    def __init__(self, op):
        self.op, self.count, inner = op, 0, op._matmat

        def counted(V):
            self.count += V.shape[1]
            return inner(V)
        op._matmat = counted


def timed(fn, rounds):
    times, out = [], None
    for _ in range(rounds):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main():
    from bench import curvature as shared  # bench/ is a namespace package on ROOT
    args, device = shared.parse_common_args(__doc__, rounds=3, warmup=1,
                                            extra=(("--k", int, 20), ("--dense-max", int, 6000)))
    X, y = binary_digits()
    loss_fn = nn.CrossEntropyLoss()
    print(f"MLP 64-w-w-2 (tanh), binary digits, {len(X)} examples, float64, top k = {args.k}; "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    head = (f"{'w':>4s} {'d':>7s} {'grad ms':>8s} | {'H lanczos/grad':>14s} {'products':>8s} | "
            f"{'F lanczos/grad':>14s} {'products':>8s} | {'H dense/grad':>12s} {'dense/lanczos':>13s} {'max rel diff':>12s}")
    print(head)
    print("-" * len(head))
    crossover = None
    for width in WIDTHS:
        model = mlp(64, [width, width], 2, activation="tanh", seed=0).double()
        params = list(model.parameters())
        d = sum(p.numel() for p in params)
        grad, _ = timed(lambda: torch.autograd.grad(loss_fn(model(X), y), params), args.rounds)
        cells = []
        for build in (curvature.hessian, curvature.fisher):
            op = build(model, loss_fn, (X, y))
            counter = CountingOperator(op)
            seconds, top = timed(lambda: spectral.eigvalsh(op, args.k, method="lanczos"), args.rounds)
            cells.append((seconds, counter.count // args.rounds, top))
        dense = "-"
        if d <= args.dense_max:
            op = curvature.hessian(model, loss_fn, (X, y))
            seconds, values = timed(lambda: torch.linalg.eigvalsh(op.to_dense()), 1)
            want = values.flip(0)[:args.k]
            diff = float(((cells[0][2] - want).abs() / want.abs().max()).max())
            ratio = seconds / cells[0][0]
            dense = f"{seconds / grad:12.1f} {ratio:13.2f} {diff:12.1e}"
            if ratio > 1 and crossover is None:
                crossover = d
        (h_s, h_n, _), (f_s, f_n, _) = cells
        print(f"{width:4d} {d:7d} {1e3 * grad:8.2f} | {h_s / grad:14.1f} {h_n:8d} | {f_s / grad:14.1f} {f_n:8d} | {dense}")
    print(f"crossover: Lanczos beats the dense route from d = {crossover} on" if crossover
          else "crossover: not reached up to --dense-max")


if __name__ == "__main__":
    main()
