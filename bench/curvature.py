"""Cost of one curvature-vector product relative to one gradient, lib vs curvlinops.

Setting (issue 2): an MLP 784-512-256-10 with ReLU, cross-entropy (mean), one batch of
512 inputs, on the CPU with 2 threads by default. Every product includes its forward
pass, as the gradient does. The methods are timed round-robin (one call of each per
round) so that drift of the machine's speed hits all of them alike; the table reports
medians and the ratio to the gradient's median measured in the same run.

Run: ``.venv/bin/python bench/curvature.py [--threads 2] [--rounds 40] [--device auto]``.
This is a benchmark, not a test: it prints numbers and asserts only that lib and
curvlinops compute the same products.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from lib import curvature
from lib.book.config import resolve_device


def build(device, batch_size=512, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(),
                          nn.Linear(256, 10)).to(device)
    X = torch.randn(batch_size, 784, device=device)
    y = torch.randint(0, 10, (batch_size,), device=device)
    return model, nn.CrossEntropyLoss(), [(X, y)]


def lib_methods(model, loss_fn, data):
    ops = {
        "lib Hessian (reverse-over-reverse)": curvature.hessian(model, loss_fn, data),
        "lib Hessian (forward-over-reverse)": curvature.hessian(
            model, loss_fn, data, mode="forward-over-reverse"),
        "lib GGN": curvature.ggn(model, loss_fn, data),
        "lib Fisher exact": curvature.fisher(model, loss_fn, data, "exact"),
        "lib Fisher MC (1 sample)": curvature.fisher(model, loss_fn, data, "mc"),
        "lib empirical Fisher": curvature.fisher(model, loss_fn, data, "empirical"),
    }
    return ops


def curvlinops_methods(model, loss_fn, data):
    import curvlinops
    params = [p for p in model.parameters() if p.requires_grad]
    kw = dict(check_deterministic=False)
    return {
        "curvlinops Hessian": curvlinops.HessianLinearOperator(model, loss_fn, params, data, **kw),
        "curvlinops GGN": curvlinops.GGNLinearOperator(model, loss_fn, params, data, **kw),
        "curvlinops Fisher MC (1 sample)": curvlinops.FisherMCLinearOperator(
            model, loss_fn, params, data, **kw),
        "curvlinops empirical Fisher": curvlinops.EFLinearOperator(
            model, loss_fn, params, data, **kw),
    }


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def parse_common_args(doc: str, *, rounds: int, warmup: int, extra=()):
    """Parse --threads/--rounds/--warmup/--device (plus ``extra``: (flag, type, default)
    triples), set the thread count and resolve the device; returns (args, device)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--warmup", type=int, default=warmup)
    for flag, kind, default in extra:
        parser.add_argument(flag, type=kind, default=default)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    return args, resolve_device(args.device)


def time_round_robin(methods: dict, rounds: int, warmup: int, device) -> dict:
    """Call every method once per round, in turn, so drift of the machine's speed hits
    all alike; returns {name: [seconds per call]} (warm-up calls are not timed)."""
    times = {name: [] for name in methods}
    for _ in range(warmup):
        for fn in methods.values():
            fn()
    for _ in range(rounds):
        for name, fn in methods.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def main():
    args, device = parse_common_args(__doc__, rounds=40, warmup=5)
    model, loss_fn, data = build(device)
    params = [p for p in model.parameters() if p.requires_grad]
    X, y = data[0]
    v = torch.randn(sum(p.numel() for p in params), device=device)
    v_list = [t.reshape(p.shape) for t, p in zip(v.split([p.numel() for p in params]), params)]

    def gradient():
        return torch.autograd.grad(loss_fn(model(X), y), params)

    def raw_reverse_over_reverse():
        grads = torch.autograd.grad(loss_fn(model(X), y), params, create_graph=True)
        return torch.autograd.grad(grads, params, grad_outputs=v_list)

    names = [n for n, p in model.named_parameters() if p.requires_grad]
    primals = {n: p.detach() for n, p in zip(names, params)}
    tangents = dict(zip(names, v_list))

    def raw_forward_over_reverse():
        def loss_of(p):
            return loss_fn(torch.func.functional_call(model, p, (X,)), y)
        return torch.func.jvp(torch.func.grad(loss_of), (primals,), (tangents,))[1]

    # The bare autograd / torch.func HVPs (no data loop, no flat vectors): lib's floor.
    methods = {"gradient (autograd)": gradient,
               "bare autograd HVP (reverse-over-reverse)": raw_reverse_over_reverse,
               "bare torch.func HVP (forward-over-reverse)": raw_forward_over_reverse}
    methods.update({name: (lambda op=op: op @ v) for name, op in lib_methods(model, loss_fn, data).items()})
    try:
        cl = curvlinops_methods(model, loss_fn, data)
        methods.update({name: (lambda op=op: op @ v_list) for name, op in cl.items()})
        check_agreement(lib_methods(model, loss_fn, data), cl, v, v_list)
    except ImportError:
        print("curvlinops is not installed: skipping its column")

    times = time_round_robin(methods, args.rounds, args.warmup, device)

    grad_time = statistics.median(times["gradient (autograd)"])
    print(f"MLP 784-512-256-10, batch 512, cross-entropy; device {device}, "
          f"{torch.get_num_threads()} threads, {args.rounds} rounds, torch {torch.__version__}")
    print(f"{'product':44s} {'median ms':>10s} {'x gradient':>11s}")
    for name, ts in times.items():
        median = statistics.median(ts)
        print(f"{name:44s} {1e3 * median:10.2f} {median / grad_time:11.2f}")


def check_agreement(lib_ops, cl_ops, v, v_list):
    """The compared products must be the same numbers (up to float32 round-off)."""
    pairs = [("lib Hessian (reverse-over-reverse)", "curvlinops Hessian"), ("lib GGN", "curvlinops GGN"),
             ("lib empirical Fisher", "curvlinops empirical Fisher")]
    for ours, theirs in pairs:
        a = lib_ops[ours] @ v
        b = torch.cat([t.reshape(-1) for t in cl_ops[theirs] @ v_list])
        rel = float((a - b).norm() / b.norm())
        if rel > 1e-4:
            raise AssertionError(f"{ours} and {theirs} differ: relative error {rel:.2e}")


if __name__ == "__main__":
    main()
