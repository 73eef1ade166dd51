"""Phase diagram of the linear training manifold: one batched eigvalsh vs a loop of numpy eigh.

Setting (row G4, Fig. 5.3): ribbon dimension (95 % of the variance) of the closed-form PCA
matrix P(T) over a 40 x 40 x 3 grid of training times T (log-spaced, 1 .. 10^4), slopes c
(0.02 .. 1) and ratios sigma_*/sigma_w (0.5, 2, 8), with n = 50 samples, d = 100, sigma_w = 1,
alpha = 1/lambda_1 and one seeded draw of the targets. Both methods compute the same closed
form in K's eigenbasis; the vectorized one (``lib.manifolds.linear.phase_diagram``) builds all 4800
matrices at once and calls ``torch.linalg.eigvalsh`` on the batch, the loop builds each
matrix with numpy and calls ``numpy.linalg.eigh`` point by point. Both run in the same
process with the same thread count (numpy's BLAS is limited with threadpoolctl); the loop
is timed a second time with one BLAS thread, which is faster for 50 x 50 matrices.

Target: vectorized >= 10x faster than the loop and < 10 s on 2 CPU cores.

What limits the ratio (measured on the 2-core development machine, 2026-11-23): the loop
spends most of its time inside LAPACK (numpy's eigh, about 0.25 ms per 50 x 50 matrix with
eigenvectors), and the vectorized version must still run one LAPACK eigenvalue routine per
matrix (torch's CPU batch goes through them one by one, about 0.12 ms each; ``lib.manifolds.linear``
splits the batch over the cores with threads). With the matrices built at no cost the ratio
could not exceed roughly loop / (4800 x 0.12 ms / 2 cores), i.e. 8-10x on two cores: a
10x gain would need a different algorithm (the matrices are diagonal plus a numerically
low-rank part, but exploiting that would make the dimension counts approximate). On a GPU,
torch's batched ``eigvalsh`` for n > 32 also runs the matrices one after another (cuSOLVER
syevd), so the same computation is slower there than on two CPU cores.

Run: ``.venv/bin/python bench/linear.py [--threads 2] [--rounds 3] [--device auto]``.
This is a benchmark, not a test: it prints numbers and asserts only that both methods give
the same diagram.
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

from bench import curvature as shared  # noqa: E402
from lib.manifolds import linear  # noqa: E402

N_SAMPLES, D_INPUT, SIGMA_W, SEED = 50, 100, 1.0, 0


def grid():
    T = np.logspace(0, 4, 40).tolist()
    c = np.linspace(0.02, 1.0, 40).tolist()
    return T, c, [0.5, 2.0, 8.0]


def loop_phase_diagram(T, c, ratio, n=N_SAMPLES, sigma_w=SIGMA_W, seed=SEED, fraction=0.95):
    """The straightforward version: one grid point at a time, numpy closed form + eigh."""
    z = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).numpy()
    out = np.empty((len(T), len(c), len(ratio)), dtype=np.int64)
    idx = np.arange(n)
    for a, Tv in enumerate(T):
        for b, cv in enumerate(c):
            for k, rv in enumerate(ratio):
                lam = np.exp(-cv * idx)
                dK = 1 - lam  # alpha = 1 / lambda_1 = 1
                q = np.outer(dK, dK)
                with np.errstate(divide="ignore", invalid="ignore"):
                    G = np.where(np.abs(1 - q) < 1e-9, 1 - (Tv - 1) * (1 - q) / 2,
                                 (1 - q ** Tv) / (Tv * (1 - q)))
                kt = (1 - dK ** Tv) / (Tv * lam)
                y = rv * sigma_w * np.sqrt(lam) * z
                P = np.diag(sigma_w ** 2 * lam * np.diag(G)) + np.outer(y, y) * G - np.outer(kt * y, kt * y)
                ev = np.linalg.eigh(P)[0][::-1].clip(min=0)
                cum = np.cumsum(ev)
                if cum[-1] <= 0:
                    out[a, b, k] = 0
                else:
                    need = fraction * cum[-1] * (1 - 64 * np.finfo(float).eps)
                    out[a, b, k] = int(np.sum(cum < need)) + 1
    return out


def main():
    args, device = shared.parse_common_args(__doc__, rounds=3, warmup=1)
    from threadpoolctl import threadpool_limits
    threadpool_limits(args.threads)
    T, c, ratio = grid()

    def vectorized():
        return linear.phase_diagram(T, c, ratio, n=N_SAMPLES, d=D_INPUT, sigma_w=SIGMA_W, seed=SEED,
                                    device=device)

    times = shared.time_round_robin({"vectorized": vectorized}, args.rounds, args.warmup, device)
    start = time.perf_counter()
    ref = loop_phase_diagram(T, c, ratio)
    loop_s = time.perf_counter() - start
    # numpy's BLAS threads only add overhead on 50 x 50 matrices (and thrash on a busy
    # machine); the single-threaded loop is the fairer, harder baseline, so time it too
    with threadpool_limits(1):
        start = time.perf_counter()
        ref1 = loop_phase_diagram(T, c, ratio)
        loop1_s = time.perf_counter() - start
    assert np.array_equal(ref, ref1)
    diagram = vectorized().cpu().numpy()
    mismatch = int((diagram != ref).sum())
    assert mismatch == 0, f"{mismatch} grid points differ between the loop and the batch"

    vec_s = statistics.median(times["vectorized"])
    points = len(T) * len(c) * len(ratio)
    print(f"phase diagram {len(T)} x {len(c)} x {len(ratio)} = {points} points, n = {N_SAMPLES}, "
          f"d = {D_INPUT}, device {device}, {args.threads} threads")
    print(f"vectorized (batched eigvalsh), median of {args.rounds}: {vec_s:8.3f} s")
    print(f"loop of numpy.linalg.eigh, once:             {loop_s:8.3f} s")
    print(f"speed-up loop / vectorized:                  {loop_s / vec_s:8.1f} x")
    print(f"loop with 1 BLAS thread, once:               {loop1_s:8.3f} s")
    print(f"speed-up 1-thread loop / vectorized:         {loop1_s / vec_s:8.1f} x")
    print(f"diagrams identical: yes; dimension range {diagram.min()} .. {diagram.max()}")
    for k, r in enumerate(ratio):
        print(f"sigma_*/sigma_w = {r}: dimension at (T, c) corners "
              f"[T=1,c={c[0]:.2f}] {diagram[0, 0, k]}, [T=1,c={c[-1]:.2f}] {diagram[0, -1, k]}, "
              f"[T=1e4,c={c[0]:.2f}] {diagram[-1, 0, k]}, [T=1e4,c={c[-1]:.2f}] {diagram[-1, -1, k]}")


if __name__ == "__main__":
    main()
