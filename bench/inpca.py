"""Bhattacharyya distances plus InPCA embedding of m models: lib vs straightforward numpy.

Setting (issue 6): m = 2000 models, N = 2000 samples, C = 10 classes, float64, CPU with 2
threads. The models are softmax outputs of random logits whose scale varies from model to
model (from near-uniform to confident), like checkpoints along training.

* ``lib``: :func:`lib.manifolds.inpca.bhattacharyya` (output tiles that stay in cache; overlaps
  multiplied in groups so that one log serves 16 samples) and :class:`lib.manifolds.inpca.InPCA`
  (double centring without the centring matrix, dense ``eigh``, 50 components kept).
* ``numpy``: the direct transcription: square roots once, then for each model one
  broadcast ``log(sum_c sqrt(p_u) sqrt(p_v))`` against all models, averaged over samples;
  ``W = -J D J / 2`` with the explicit centring matrix ``J`` and ``numpy.linalg.eigh``.

Both run in the same process with the same thread count (numpy's BLAS is limited with
threadpoolctl). The numpy distance loop is slow (minutes at the default size):
``--baseline-rows R`` times only its first R rows and scales the time by m / R (each row
costs the same); the printout says when it did so. The embedding of both is compared, and
the distance rows that both computed must agree to 1e-10.

Measured on the 2-core development machine (2026-11-23), default sizes: lib 9.6 s (distances
8.3 s, embedding 1.4 s) against numpy 476 s for the distances plus 2.0 s for the embedding,
i.e. 50x; distances agree to 1e-15. Before the tiling and the product of overlaps, the
same lib call took about 100 s: a direct ``(n, m, m)`` batch spends its time in ``m^2 N``
logarithms and in writing overlaps that do not fit in cache.

Run: ``.venv/bin/python bench/inpca.py [--m 2000] [--samples 2000] [--classes 10]
[--baseline-rows 2000] [--threads 2] [--rounds 1] [--device auto]``. On a GPU, e.g.
``--m 10000 --baseline-rows 20`` (numpy still runs on the CPU).
This is a benchmark, not a test: it prints numbers and asserts only agreement.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from bench import curvature as shared  # noqa: E402
from lib.manifolds import inpca  # noqa: E402

N_COMPONENTS = 50


def make_models(m, N, C, seed=0):
    """(m, N, C) float64 probabilities: softmax of Gaussian logits times a per-model scale."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.linspace(0.05, 4.0, m, dtype=torch.float64)[:, None, None]
    logits = torch.randn(m, N, C, generator=g, dtype=torch.float64) * scale
    return torch.softmax(logits, dim=-1)


def lib_version(P, device, log):
    """Distances and embedding; appends (distance seconds, total seconds) to ``log``."""
    shared.sync(device)
    start = time.perf_counter()
    D = inpca.bhattacharyya(P)
    shared.sync(device)
    middle = time.perf_counter()
    model = inpca.InPCA(N_COMPONENTS).fit(D)
    shared.sync(device)
    log.append((middle - start, time.perf_counter() - start))
    return D, model.eigenvalues_


def numpy_distances(P, rows):
    S = np.sqrt(P)
    D = np.empty((rows, P.shape[0]))
    for u in range(rows):
        D[u] = -np.log(np.sum(S[u] * S, axis=-1)).mean(axis=-1)
    return D


def numpy_embedding(D):
    m = D.shape[0]
    J = np.eye(m) - np.ones((m, m)) / m
    W = -0.5 * J @ D @ J
    lam, U = np.linalg.eigh(W)
    order = np.argsort(-np.abs(lam), kind="stable")[:N_COMPONENTS]
    return lam[order], U[:, order] * np.sqrt(np.abs(lam[order]))


def main():
    args, device = shared.parse_common_args(
        __doc__, rounds=1, warmup=0,
        extra=(("--m", int, 2000), ("--samples", int, 2000), ("--classes", int, 10),
               ("--baseline-rows", int, None)))
    m, N, C = args.m, args.samples, args.classes
    rows = m if args.baseline_rows is None else min(m, args.baseline_rows)
    P_cpu = make_models(m, N, C)
    P = P_cpu.to(device)
    print(f"m = {m} models, N = {N} samples, C = {C} classes, float64, device {device}, "
          f"{args.threads} threads")

    log = []
    for _ in range(args.warmup):
        lib_version(P, device, [])
    for _ in range(args.rounds):
        D, lam = lib_version(P, device, log)
    t_lib_dist = statistics.median(t for t, _ in log)
    t_lib = statistics.median(t for _, t in log)

    Pn = P_cpu.numpy()
    with threadpool_limits(args.threads):
        start = time.perf_counter()
        D_np = numpy_distances(Pn, rows)
        t_np_dist = (time.perf_counter() - start) * m / rows
        D_full = D.cpu().numpy() if rows < m else D_np
        start = time.perf_counter()
        lam_np, _ = numpy_embedding(D_full)
        t_np_embed = time.perf_counter() - start
    t_np = t_np_dist + t_np_embed

    err_d = np.abs(D.cpu().numpy()[:rows] - np.where(np.eye(m)[:rows] > 0, 0.0, D_np)).max()
    err_lam = np.abs(lam.cpu().numpy() - lam_np).max() / np.abs(lam_np).max()
    assert err_d < 1e-10, f"distances disagree by {err_d:.3g}"
    assert err_lam < 1e-8, f"eigenvalues disagree by {err_lam:.3g}"

    scaled = "" if rows == m else f" (timed on {rows} rows, scaled by m/{rows})"
    print(f"lib distances + InPCA, median of {args.rounds}:   {t_lib:8.2f} s"
          f"   (distances alone {t_lib_dist:.2f} s)")
    print(f"numpy distances{scaled}:   {t_np_dist:8.2f} s")
    print(f"numpy centring matrix + eigh:        {t_np_embed:8.2f} s")
    print(f"speed-up numpy / lib:                {t_np / t_lib:8.1f} x")
    print(f"max |D_lib - D_numpy| = {err_d:.1e}; top-{N_COMPONENTS} eigenvalues agree to "
          f"{err_lam:.1e} (relative)")


if __name__ == "__main__":
    main()
