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

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .._checks import check_int
from ..book.models import small_resnet
from ..curvature.factors import SUPPORTED_MODULES
from ..curvature.products import CurvatureOperator
from ..curvature.representations import REPRESENTATIONS, fisher, parameter_groups
from ..operators.base import LinearOperator

__all__ = ["DAMPINGS", "APPROXIMATIONS", "FLOORS", "ARCHITECTURES", "approximation_quality", "unit_vectors",
           "representation_study", "pick_checkpoints", "projection_accuracy", "stored_numbers", "network",
           "representation_sizes", "resnet50"]

ARCHITECTURES = ("small_resnet", "resnet50")
"""The chapter's networks, the small residual CNN (``small`` preset) and the source's ResNet-50
without normalization layers (``paper`` preset)."""

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
                          dampings: Sequence[float] = DAMPINGS, *, solves: bool = True) -> dict[str, Tensor]:
    """The source's four measures of how well ``approx`` (``F_a``) stands in for ``reference`` (``F``).

    Args:
        reference: the Fisher ``F``, a symmetric ``(d, d)`` operator (products and ``trace`` used).
        approx: the approximation ``F_a``, ``(d, d)``, with ``solve(V, damping)``.
        vectors: ``(d, k)`` test vectors (the source: uniform on the unit sphere, :func:`unit_vectors`).
        dampings: the ``L`` values of ``lambda`` of the solve measures.
        solves: False skips the solve measures (NaN): for an ``approx`` without a closed-form
            solve (the implicit Fisher), ``L k`` conjugate-gradient solves would cost more than
            everything else together.

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
    if not solves:
        nan = torch.full((len(dampings), V.shape[1]), float("nan"), dtype=torch.float64)
        out.update({f"solve_{what}_{order}": nan for what in ("cos", "residual") for order in ("text", "code")})
        return out
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
                         dampings: Sequence[float] = DAMPINGS, max_numbers: int | None = None
                         ) -> dict[str, dict[str, Tensor]]:
    """The source's Section 3.1 protocol at one point of training.

    For each of ``draws`` draws: the reference ``F``, a Monte-Carlo Fisher with ``num_samples``
    labels per example, and ``num_vectors`` unit vectors; every representation built from its own
    Monte-Carlo draw (a different seed); :func:`approximation_quality` of each. The two
    :data:`FLOORS` are measured the same way. The reference and the floors are held as exact
    low-rank factors (the same matrices the implicit representation multiplies by, with cheap
    damped solves) when their ``N K d`` numbers fit in ``max_numbers``; otherwise (the source's
    ResNet-50) as implicit operators, and the floors then have no solve measures (NaN).

    Args:
        model, loss_fn, data: as for :func:`lib.curvature.representations.fisher` (``data`` an ``(X, y)`` pair).
        draws, num_samples, num_vectors: the source's 5, 5 and 4.
        seed: base of every seed (draw ``r`` uses ``1000 seed + 10 r + ...``).
        representations: names of :class:`lib.curvature.representations.Representation` to compare.
        dampings: the solve measures' grid.
        max_numbers: the most numbers a low-rank reference may hold; None: no limit.

    Returns:
        ``{name: {measure: tensor}}`` for every representation and floor, each measure of
        :func:`approximation_quality` stacked over the draws: ``(draws,)``, ``(draws, k)`` or
        ``(draws, L, k)``.
    """
    check_int(draws, "draws")
    results: dict[str, list[dict[str, Tensor]]] = {name: [] for name in (*representations, *FLOORS)}
    X = data[0]
    with torch.no_grad():
        num_classes = model(X[:1]).shape[1]
    sizes = representation_sizes(model, len(X), max(num_classes, num_samples + 1))  # N max(C - 1, S) d
    held = "low_rank" if max_numbers is None or sizes["low_rank"] <= max_numbers else "implicit"
    exact = fisher(model, loss_fn, data, "exact", representation=held)
    d = exact.shape[0]
    for r in range(draws):
        base = 1000 * seed + 10 * r

        def mc(rep: str, offset: int) -> LinearOperator:
            return fisher(model, loss_fn, data, "mc", representation=rep, num_samples=num_samples, seed=base + offset)

        reference = mc(held, 0)
        V = unit_vectors(d, num_vectors, seed=base, dtype=exact.dtype, device=exact.device)
        for i, name in enumerate(representations):
            results[name].append(approximation_quality(reference, mc(name, 1 + i), V, dampings))
        floors = {"solves": held == "low_rank"}
        results[FLOORS[0]].append(approximation_quality(reference, mc(held, 9), V, dampings, **floors))
        results[FLOORS[1]].append(approximation_quality(reference, exact, V, dampings, **floors))
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
        if hasattr(obj, "__dict__") and not isinstance(obj, type):  # e.g. index holders
            return walk(vars(obj))
        return 0

    return walk(op)


def resnet50(in_channels: int = 3, num_classes: int = 200, *, seed: int | None = None) -> nn.Module:
    """The source's network: torchvision's ResNet-50 without normalization layers, about 24M
    parameters for 200 classes (bottleneck blocks 3-4-6-3).

    NNGeometry's experiments use "a 24M parameters Resnet50" on Tiny ImageNet with no
    normalization (BatchNorm in training mode couples the examples of a batch, and per-example
    Fisher computations need them independent). Every BatchNorm is replaced by the identity (its
    weights and biases disappear); torchvision's initialization is otherwise unchanged, since the
    source does not say how it trained the network without them.

    Args:
        in_channels: input channels (torchvision's stem takes 3; another count gets a stem
            convolution of the same shape otherwise).
        num_classes: outputs of the final Linear layer.
        seed: seed for the initial weights (None: the global generator; with a seed, the global
            generator is left untouched).

    Returns:
        A module mapping ``(N, in_channels, H, W)`` to logits ``(N, num_classes)``.
    """
    from torchvision.models import resnet50 as torchvision_resnet50

    check_int(in_channels, "in_channels")
    check_int(num_classes, "num_classes")
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        net = torchvision_resnet50(weights=None, num_classes=num_classes, norm_layer=nn.Identity)
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return net


def network(architecture: str, in_channels: int, num_classes: int, *, width: int, blocks: int,
            seed: int) -> nn.Module:
    """The chapter's classifier, without normalization layers: :func:`lib.book.models.small_resnet`
    (``width`` channels, ``blocks`` residual blocks) or :func:`resnet50` (the source's, which
    ignores ``width`` and ``blocks``)."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; choose one of {ARCHITECTURES}")
    if architecture == "resnet50":
        return resnet50(in_channels, num_classes, seed=seed)
    return small_resnet(in_channels, num_classes, width=width, num_blocks=blocks, seed=seed)


def representation_sizes(model: nn.Module, num_points: int, num_classes: int) -> dict[str, int]:
    """How many numbers each representation of the exact cross-entropy Fisher of ``model`` on
    ``num_points`` examples would store (what :func:`stored_numbers` counts once it is built),
    computed from the shapes alone, so that a chapter can skip the ones that would not fit.

    ``d`` parameters, per module ``d_l``: dense ``d^2``; diagonal ``d``; block-diagonal
    ``sum d_l^2``; low-rank ``N (C - 1) d``; quasi-diagonal ``d`` plus one cross term per weight
    of a layer with a bias; K-FAC (biases separate) ``in'^2 + out^2`` per layer; EKFAC its two
    eigenbases, ``out in'`` scalings and ``out`` for a bias; implicit none. K-FAC and EKFAC are
    left out (None) when a trainable module is not an ``nn.Linear`` or ``nn.Conv2d``.
    """
    check_int(num_points, "num_points")
    check_int(num_classes, "num_classes")
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = [p for p in model.parameters() if p.requires_grad]
    d = sum(p.numel() for p in params)
    blocks = [sum(params[i].numel() for i in range(a, b)) for _, a, b in parameter_groups(names)]
    modules = [m for m in model.modules() if any(p.requires_grad for p in m.parameters(recurse=False))]
    biased = [m for m in modules if getattr(m, "bias", None) is not None and m.bias.requires_grad]
    sizes = {"dense": d * d, "diagonal": d, "block_diagonal": sum(n * n for n in blocks),
             "low_rank": num_points * (num_classes - 1) * d, "implicit": 0,
             "quasi_diagonal": d + sum(m.weight.numel() for m in biased)}
    if all(isinstance(m, SUPPORTED_MODULES) for m in modules):
        shapes = [(m.weight.shape[0], math.prod(m.weight.shape[1:]), m in biased) for m in modules]
        sizes["kfac"] = sum(i * i + o * o for o, i, _ in shapes)
        sizes["ekfac"] = sum(i * i + o * o + o * i + (o if b else 0) for o, i, b in shapes)
    else:
        sizes["kfac"] = sizes["ekfac"] = None
    return {r: sizes[r] for r in REPRESENTATIONS}
