"""The shared operator test harness: tiny problems and one dense checker.

* :func:`make_problem` / the ``tiny_problem`` fixture: a float64 model (``linear``,
  ``tanh`` or ``relu`` MLP, ``conv``), a loss (``ce``, ``mse``) with a reduction (``mean``,
  ``sum``) and a dataset cut into three uneven batches, so ``mean`` must average over all
  of them.
* :func:`compare_with_dense`: checks every method of the operator interface (``@`` on a
  vector, a block and a parameter list, ``to_dense``, ``diagonal``, ``trace``, ``logdet``
  when positive definite, ``eigvalsh``, ``solve``, ``inverse``, and that
  :func:`lib.operators.spectral.trace` uses a closed form) against a dense float64 matrix,
  e.g. one of :mod:`lib.curvature.dense`.
* :class:`SharedLayer`: one ``Linear`` applied twice per forward pass (shared weights), the
  case per-layer hooks cannot attribute (NNGeometry's issue #94).

A new operator's test is then a few lines::

    def test_my_operator(tiny_problem):
        model, loss_fn, data, X, y = tiny_problem
        compare_with_dense(my_operator(model, loss_fn, data), dense_ggn(model, loss_fn, data))

Import the fixture into a test module with ``from operator_problems import tiny_problem``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from lib.operators import spectral

ARCHS = ("tanh", "relu", "conv")
CASES = [(a, l, r) for a in ARCHS for l in ("ce", "mse") for r in ("mean", "sum")]


@dataclass
class Problem:
    """A tiny model, loss and data; unpacks as ``model, loss_fn, data, X, y``."""
    model: nn.Module
    loss_fn: nn.Module
    data: list
    X: torch.Tensor
    y: torch.Tensor

    def __iter__(self):
        return iter((self.model, self.loss_fn, self.data, self.X, self.y))


class SharedLayer(nn.Module):
    """``3 -> out``: one ``Linear(3, 3)`` applied twice (``tanh`` before each call), then ``inner``
    and a ``Linear(3, out)``; the second call shares the first one's weights."""

    def __init__(self, out: int = 2, inner=torch.tanh):
        super().__init__()
        self.fc, self.out, self.inner = nn.Linear(3, 3), nn.Linear(3, out), inner

    def forward(self, x):
        return self.out(self.inner(self.fc(torch.tanh(self.fc(x)))))


def _mlp(act):
    return nn.Sequential(nn.Linear(3, 4), act(), nn.Linear(4, 3))


def make_problem(arch: str, loss_name: str, reduction: str, seed: int = 0, n: int = 10) -> Problem:
    """A tiny float64 model, loss and a dataset split into three uneven batches.

    ``arch``: ``"linear"`` (one ``Linear(3, 3)``), ``"tanh"`` / ``"relu"`` (``3 -> 4 -> 3``),
    ``"conv"`` (``Conv2d(1, 2, 3)``, tanh, ``Linear(18, 3)`` on ``5 x 5`` images).
    """
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = {"tanh": lambda: _mlp(nn.Tanh), "relu": lambda: _mlp(nn.ReLU),
             "conv": lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(),
                                           nn.Linear(2 * 3 * 3, 3)),
             "linear": lambda: nn.Sequential(nn.Linear(3, 3))}[arch]().double()
    X = torch.randn(n, 1, 5, 5, generator=g, dtype=torch.float64) if arch == "conv" else \
        torch.randn(n, 3, generator=g, dtype=torch.float64)
    if loss_name == "ce":
        y = torch.randint(0, 3, (n,), generator=g)
        loss_fn = nn.CrossEntropyLoss(reduction=reduction)
    else:
        y = torch.randn(n, 3, generator=g, dtype=torch.float64)
        loss_fn = nn.MSELoss(reduction=reduction)
    cuts = [0, min(4, n), min(7, n), n]
    data = [(X[a:b], y[a:b]) for a, b in zip(cuts[:-1], cuts[1:])]
    return Problem(model, loss_fn, data, X, y)


@pytest.fixture(params=CASES, ids=["-".join(case) for case in CASES])
def tiny_problem(request) -> Problem:
    """Every architecture, loss and reduction of :data:`CASES`, one test each."""
    return make_problem(*request.param)


def assert_close(actual, expected, rtol: float = 1e-6, what: str = ""):
    """``max |actual - expected| <= rtol * max |expected|`` (relative to the largest entry)."""
    actual, expected = (torch.as_tensor(t, dtype=torch.float64) for t in (actual, expected))
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    scale = expected.abs().max().clamp_min(1e-12)
    err = float((actual - expected).abs().max() / scale)
    assert err < rtol, f"{what}: relative error {err:.2e} >= {rtol:.0e}"


def compare_with_dense(op, dense: torch.Tensor, *, rtol: float = 1e-6, solve_rtol: float = 1e-5,
                       eig_rtol: float | None = None, k: int = 3, damping: float = 1e-2,
                       seed: int = 0):
    """Check every method of the operator interface of ``op`` against ``dense`` ``(d, d)``.

    Args:
        op: a :class:`lib.operators.LinearOperator` (symmetric).
        dense: its dense reference (float64).
        rtol: tolerance of products, ``to_dense``, ``diagonal``, ``trace`` and all eigenvalues
            (relative to the largest entry, :func:`assert_close`).
        solve_rtol: tolerance of ``solve`` and ``inverse`` (conjugate gradients in the base
            class).
        eig_rtol: elementwise relative tolerance of the ``k`` largest eigenvalues (default
            ``rtol``).
        k: how many of the largest eigenvalues ``eigvalsh(k)`` returns.
        damping: the ``damping`` of ``solve`` and ``inverse``, relative to the largest
            ``|lambda|`` (at least 1) and added to ``-lambda_min`` for an indefinite matrix,
            so that ``dense + damping I`` is positive definite with condition number
            ``<= ~1 / damping``.
        seed: seed of the test vectors.

    ``logdet`` is checked when ``dense`` is positive definite (smallest eigenvalue above
    ``1e-8`` times the largest), against ``slogdet``; an operator listing ``"trace"`` in
    ``op.exact`` must give :func:`lib.operators.spectral.trace` the same value as ``op.trace()``.
    """
    dense = dense.double()
    d = dense.shape[0]
    assert op.shape == (d, d)
    g = torch.Generator().manual_seed(seed)
    V = torch.randn(d, 3, generator=g, dtype=torch.float64)
    _check_products(op, dense, V, rtol)
    assert_close(op.to_dense(), dense, rtol, "to_dense")
    assert_close(op.diagonal(), torch.diagonal(dense), rtol, "diagonal")
    assert_close(op.trace(), torch.trace(dense), rtol, "trace")
    if "trace" in op.exact:
        assert spectral.trace(op) == op.trace(), "spectral.trace does not use the closed form"
    evals = torch.linalg.eigvalsh(dense)
    assert_close(op.eigvalsh(), evals, rtol, "eigvalsh()")
    top = op.eigvalsh(k).double()
    assert top.shape == (k,) and bool((top[1:] >= top[:-1]).all()), "eigvalsh(k): k ascending"
    torch.testing.assert_close(top, evals[-k:], rtol=rtol if eig_rtol is None else eig_rtol,
                               atol=0.0, msg="eigvalsh(k)")
    if float(evals[0]) > 1e-8 * float(evals[-1].abs()):
        want = float(torch.linalg.slogdet(dense)[1])
        assert abs(op.logdet() - want) <= rtol * max(1.0, abs(want)), "logdet"
    shift = damping * max(1.0, float(evals.abs().max())) + max(0.0, -float(evals[0]))
    solved = torch.linalg.solve(dense + shift * torch.eye(d, dtype=torch.float64), V)
    assert_close(op.solve(V[:, 0], shift), solved[:, 0], solve_rtol, "solve(vector)")
    assert_close(op.inverse(shift) @ V, solved, solve_rtol, "inverse @ block")


def _check_products(op, dense, V, rtol):
    """``op @`` a block ``(d, k)``, a vector ``(d,)`` and, if the operator knows parameter
    shapes, a list of parameter-shaped tensors (returned in the same shapes)."""
    assert_close(op @ V, dense @ V, rtol, "op @ block")
    assert_close(op @ V[:, 0], dense @ V[:, 0], rtol, "op @ vector")
    if op.param_shapes is None:
        return
    sizes = [math.prod(s) for s in op.param_shapes]
    params = [t.reshape(s) for t, s in zip(V[:, 0].split(sizes), op.param_shapes)]
    out = op @ params
    assert [tuple(t.shape) for t in out] == [tuple(s) for s in op.param_shapes], "param shapes"
    assert_close(torch.cat([t.reshape(-1) for t in out]), dense @ V[:, 0], rtol, "op @ params")
