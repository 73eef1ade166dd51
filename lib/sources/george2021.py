"""George et al. (2021), ``george2021nngeometry``: how well structured Fisher representations
approximate the Fisher (Section 3.1, Figs. 3-6) and the tangent kernel of a two-class
sub-task (Section 3.2, Fig. 7).

Section 3.1 compares an approximation ``F_a`` (diagonal, quasi-diagonal, K-FAC, EKFAC) with a
reference ``F`` (the implicit Monte-Carlo Fisher, each with its own label draw) on random
unit vectors ``v``, by four measures (:func:`approximation_quality`):

* the relative error of the trace, ``|tr F_a - tr F| / tr F`` (Fig. 6);
* the relative error of the quadratic form, ``|v^T F_a v - v^T F v| / v^T F v`` (Fig. 5);
* the cosine between ``F v`` and ``F_a v`` (Fig. 4);
* for the damped solve, the cosine between ``v`` and ``v'`` and the residual
  ``||v - v'|| / ||v||`` over the damping grid :data:`DAMPINGS` (Fig. 3). The source's text
  writes ``v' = (F_a + lambda I)^-1 (F + lambda I) v`` ("text" order), its code computes
  ``v' = (F + lambda I) (F_a + lambda I)^-1 v`` ("code" order); both are returned.

Section 3.2 plots the Gram matrix of ``f_c2 - f_c1`` normalized as ``K_ij / sqrt(K_ii K_jj)``
(:func:`lib.manifolds.kernels.normalize_gram`) and its kernel PCA; the chapter adds the
kernel-target alignment and :func:`projection_accuracy`, the accuracy of a linear classifier
on the 2-D projection. :func:`pick_checkpoints` chooses the source's "init", "during" and
"best" points of a training run.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from torch import nn

import dataclasses

from .._checks import check_int
from ..curvature.products import CurvatureOperator
from ..curvature.representations import fisher
from ..operators.base import LinearOperator

__all__ = ["DAMPINGS", "APPROXIMATIONS", "FLOORS", "approximation_quality", "unit_vectors", "representation_study",
           "pick_checkpoints", "projection_accuracy", "stored_numbers"]

DAMPINGS = tuple(10.0 ** (-4 + 0.25 * i) for i in range(14))
"""The source's damping grid ``lambda = 10^-4, 10^-3.75, ..., 10^-0.75`` (14 values)."""


APPROXIMATIONS = ("diagonal", "quasi_diagonal", "kfac", "ekfac")
"""The four representations the source's Figs. 3-6 compare."""
FLOORS = ("MC, another draw", "exact Fisher")
"""The two noise floors :func:`representation_study` adds: the reference against another Monte-Carlo
draw of itself, and against the exact Fisher (what no approximation of a Monte-Carlo Fisher can beat)."""


def unit_vectors(d: int, k: int, *, seed: int, dtype=torch.float64, device="cpu") -> Tensor:
    """``k`` vectors drawn uniformly on the unit sphere of ``R^d`` (normalized Gaussians), ``(d, k)``."""
    check_int(d, "d")
    check_int(k, "k")
    V = torch.randn(d, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (V / torch.linalg.vector_norm(V, dim=0)).to(dtype=dtype, device=device)


def _cosine(a: Tensor, b: Tensor) -> Tensor:
    """Cosine between matching columns of ``a`` and ``b`` (``(d, ...)``), shape ``(...)``."""
    return (a * b).sum(0) / (torch.linalg.vector_norm(a, dim=0) * torch.linalg.vector_norm(b, dim=0))


def approximation_quality(reference: LinearOperator, approx: LinearOperator, vectors: Tensor,
                          dampings: Sequence[float] = DAMPINGS) -> dict[str, Tensor]:
    """The source's four measures of how well ``approx`` (``F_a``) stands in for ``reference`` (``F``).

    Args:
        reference: the Fisher ``F``, a symmetric ``(d, d)`` operator (products and ``trace`` used).
        approx: the approximation ``F_a``, ``(d, d)``, with ``solve(V, damping)``.
        vectors: ``(d, k)`` test vectors (the source: uniform on the unit sphere, :func:`unit_vectors`).
        dampings: the ``L`` values of ``lambda`` of the solve measures.

    Returns:
        Float64 tensors, ``"trace"`` (0-d), ``"vTMv"`` and ``"cos_Mv"`` ``(k,)``, and
        ``"solve_cos_text"``, ``"solve_residual_text"``, ``"solve_cos_code"``,
        ``"solve_residual_code"`` ``(L, k)``; see the module docstring.
    """
    if reference.shape != approx.shape:
        raise ValueError(f"reference {tuple(reference.shape)} and approx {tuple(approx.shape)} differ in shape")
    if vectors.ndim != 2 or vectors.shape[0] != reference.shape[0]:
        raise ValueError(f"vectors must be (d, k) with d = {reference.shape[0]}, got {tuple(vectors.shape)}")
    dampings = [float(lam) for lam in dampings]
    if not dampings or min(dampings) <= 0:
        raise ValueError(f"dampings must be a non-empty list of positive numbers, got {dampings}")
    V = vectors
    FV, FaV = reference @ V, approx @ V
    tr = reference.trace()
    out = {"trace": torch.tensor(abs(approx.trace() - tr) / abs(tr), dtype=torch.float64)}
    quad, quad_a = (V * FV).sum(0), (V * FaV).sum(0)
    out["vTMv"] = ((quad_a - quad).abs() / quad.abs()).double()
    out["cos_Mv"] = _cosine(FV, FaV).double()
    # text order: v' = (F_a + lam I)^-1 (F + lam I) v; code order: v' = (F + lam I)(F_a + lam I)^-1 v
    text = torch.stack([approx.solve(FV + lam * V, damping=lam) for lam in dampings])      # (L, d, k)
    U = torch.stack([approx.solve(V, damping=lam) for lam in dampings])                    # (L, d, k)
    lam = torch.tensor(dampings, dtype=V.dtype, device=V.device)[:, None, None]
    d, k = V.shape
    FU = (reference @ U.permute(1, 0, 2).reshape(d, -1)).reshape(d, len(dampings), k).permute(1, 0, 2)
    code = FU + lam * U
    norm = torch.linalg.vector_norm(V, dim=0)
    for name, Vp in (("text", text), ("code", code)):
        out[f"solve_cos_{name}"] = _cosine(V[:, None, :], Vp.transpose(0, 1)).double()
        out[f"solve_residual_{name}"] = (torch.linalg.vector_norm(V - Vp, dim=1) / norm).double()
    return out


def pick_checkpoints(accuracies: Sequence[float], during: float) -> dict[str, int]:
    """The source's three points of a run from its test accuracy after each epoch.

    Args:
        accuracies: test accuracy at epoch ``0, 1, ..., E`` (epoch 0: the initialization), in [0, 1].
        during: the accuracy that marks "during training": the first epoch reaching it.

    Returns:
        ``{"init": 0, "during": e1, "best": e2}``: ``e1`` the first epoch ``>= 1`` with accuracy
        ``>= during``, ``e2`` the epoch of the highest accuracy (the first if tied).

    Raises:
        ValueError: fewer than two accuracies, ``during`` outside ``(0, 1]``, or no epoch reaches it.
    """
    acc = [float(a) for a in accuracies]
    if len(acc) < 2:
        raise ValueError("accuracies needs epoch 0 and at least one trained epoch")
    if not 0 < during <= 1:
        raise ValueError(f"during must be in (0, 1], got {during}")
    reached = [e for e in range(1, len(acc)) if acc[e] >= during]
    if not reached:
        raise ValueError(f"no epoch reaches test accuracy {during} (best {max(acc[1:]):.3f}); "
                         "train longer or lower the threshold")
    return {"init": 0, "during": reached[0], "best": int(np.argmax(acc[1:])) + 1}


def projection_accuracy(points: Tensor, labels: Tensor) -> float:
    """Training accuracy of a linear classifier (logistic regression, scikit-learn) on ``points``
    ``(n, 2)`` with binary ``labels`` ``(n,)``: how linearly separable the projection is."""
    from sklearn.linear_model import LogisticRegression  # a book dependency; imported only here

    X = np.asarray(points.detach().cpu(), dtype=np.float64)
    y = np.asarray(labels.detach().cpu())
    if X.ndim != 2 or len(X) != len(y) or len(np.unique(y)) != 2:
        raise ValueError(f"points must be (n, k) and labels (n,) with two classes, got {X.shape}, {y.shape}")
    scale = X.std(axis=0, keepdims=True)
    X = X / np.where(scale > 0, scale, 1.0)  # the projection's scale changes over training
    return float(LogisticRegression(C=1e4, max_iter=1000).fit(X, y).score(X, y))


def representation_study(model: nn.Module, loss_fn: nn.Module, data, *, draws: int, num_samples: int,
                         num_vectors: int, seed: int = 0, representations=APPROXIMATIONS,
                         dampings: Sequence[float] = DAMPINGS) -> dict[str, dict[str, Tensor]]:
    """The source's Section 3.1 protocol at one point of training.

    For each of ``draws`` draws: the reference ``F``, a Monte-Carlo Fisher with ``num_samples``
    labels per example, and ``num_vectors`` unit vectors; every representation built from its own
    Monte-Carlo draw (a different seed); :func:`approximation_quality` of each. The two
    :data:`FLOORS` are measured the same way. The reference and the floors are held as exact
    low-rank factors (the same matrices the implicit representation multiplies by, with cheap
    damped solves), so ``data`` must be small enough for ``N K d`` numbers.

    Args:
        model, loss_fn, data: as for :func:`lib.curvature.representations.fisher` (``data`` an ``(X, y)`` pair).
        draws, num_samples, num_vectors: the source's 5, 5 and 4.
        seed: base of every seed (draw ``r`` uses ``1000 seed + 10 r + ...``).
        representations: names of :class:`lib.curvature.representations.Representation` to compare.
        dampings: the solve measures' grid.

    Returns:
        ``{name: {measure: tensor}}`` for every representation and floor, each measure of
        :func:`approximation_quality` stacked over the draws: ``(draws,)``, ``(draws, k)`` or
        ``(draws, L, k)``.
    """
    check_int(draws, "draws")
    results: dict[str, list[dict[str, Tensor]]] = {name: [] for name in (*representations, *FLOORS)}
    exact = fisher(model, loss_fn, data, "exact", representation="low_rank")
    d = exact.shape[0]
    for r in range(draws):
        base = 1000 * seed + 10 * r

        def mc(rep: str, offset: int) -> LinearOperator:
            return fisher(model, loss_fn, data, "mc", representation=rep, num_samples=num_samples, seed=base + offset)

        reference = mc("low_rank", 0)
        V = unit_vectors(d, num_vectors, seed=base, dtype=exact.dtype, device=exact.device)
        for i, name in enumerate(representations):
            results[name].append(approximation_quality(reference, mc(name, 1 + i), V, dampings))
        results[FLOORS[0]].append(approximation_quality(reference, mc("low_rank", 9), V, dampings))
        results[FLOORS[1]].append(approximation_quality(reference, exact, V, dampings))
    return {name: {key: torch.stack([run[key] for run in runs]) for key in runs[0]}
            for name, runs in results.items()}


def stored_numbers(op) -> int:
    """How many numbers a representation holds: the elements of every tensor it keeps (each
    tensor counted once), found by walking its attributes, lists, dicts and dataclasses. A
    matrix-free curvature operator (the implicit representation) keeps none: it recomputes
    its products from the model and the data, which it only refers to."""
    seen: set[int] = set()

    def walk(obj) -> int:
        if isinstance(obj, Tensor):
            key = obj.data_ptr()
            if key in seen:
                return 0
            seen.add(key)
            return obj.numel()
        if isinstance(obj, (CurvatureOperator, nn.Module)):
            return 0
        if isinstance(obj, LinearOperator):
            return walk(vars(obj))
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            return sum(walk(getattr(obj, f.name)) for f in dataclasses.fields(obj))
        if isinstance(obj, dict):
            return sum(walk(value) for value in obj.values())
        if isinstance(obj, (list, tuple)):
            return sum(walk(item) for item in obj)
        return 0

    return walk(op)
