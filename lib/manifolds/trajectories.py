"""Trajectories of probabilistic models: geodesics, progress, re-indexing and averages.

The product models of :mod:`lib.manifolds.inpca` (``(N, C)`` probabilities per model) along
training, as in chapter 2 of Mao (2025, ``mao2025hidden``), eqs. 2.2.3-2.2.5 and Table 2.3:

* :func:`ignorance`, :func:`truth`: the uniform model ``P_0`` and the one-hot ``P_*``.
* :func:`geodesic`: the great circle (2.2.3) between product models on the product of
  spheres ``sqrt p^n``; :func:`geodesic_distance`: ``d_G`` (the paper's outer ``sum_c`` is a
  typo for ``sum_n``).
* :func:`progress`: ``s_w`` (2.2.4), the closest point on the ignorance-truth geodesic. The
  paper uses Brent's method; here a grid plus golden-section refinement (global on the
  grid's resolution). Remark 2.2.1 (a confident model with error fraction
  ``eps < 1 - 1/sqrt(C)`` has progress 1) is a sufficient condition; the exact threshold
  is ``sqrt(C-1)/(sqrt(C-1)+1)``, which is larger. Progress is not monotone along a
  geodesic from a model to the truth in general.
* :func:`reindex_by_progress`, :func:`trajectory_distance`, :func:`trajectory_distances`:
  trajectories re-parametrised by progress and compared at equal progress (2.2.5). Deviation:
  the paper integrates over ``[0, 1]``; a trajectory covers only its checkpoints' progress
  range, so the *mean* of ``d_B`` over the common range is returned (NaN or ValueError when
  there is none).
* :func:`ensemble_mean`: arithmetic, geometric, harmonic, square-root (Hellinger) means and
  the Bhattacharyya centroid (Nielsen and Boltz, 2011), by a monotone fixed-point iteration.

Everything is torch, float64, and runs on whatever device the inputs live on.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .._checks import check_float_tensor, check_int
from .inpca import CHUNK_BYTES, DTYPE, bhattacharyya, sqrt_probabilities

__all__ = ["ignorance", "truth", "geodesic", "geodesic_distance", "progress", "reindex_by_progress",
           "Reindexed", "trajectory_distance", "trajectory_distances", "ensemble_mean",
           "ENSEMBLE_MEANS"]


def _check_labels(labels, N: int | None = None, C: int | None = None, name: str = "labels") -> torch.Tensor:
    """An integer ``(N,)`` tensor of class indices in ``[0, C)``."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be an integer tensor, got {type(labels).__name__}")
    if labels.dtype == torch.bool or torch.is_floating_point(labels) or torch.is_complex(labels):
        raise TypeError(f"{name} must be an integer tensor, got dtype {labels.dtype}")
    if labels.ndim != 1 or labels.shape[0] == 0:
        raise ValueError(f"{name} must have shape (N,) with N >= 1, got shape {tuple(labels.shape)}")
    if N is not None and labels.shape[0] != N:
        raise ValueError(f"{name} has {labels.shape[0]} entries but the models have N = {N} samples")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or (C is not None and hi >= C):
        raise ValueError(f"{name} must lie in [0, {C}), got values in [{lo}, {hi}]"
                         if C is not None else f"{name} must be non-negative, got minimum {lo}")
    return labels.long()


def _roots(P, name: str, log: bool, ndims=(2, 3)) -> torch.Tensor:
    """Check ``P`` (probabilities, or log-probabilities if ``log``) and return ``sqrt(P)`` in float64.

    The rows of the result are renormalised to unit Euclidean norm (``P`` is only required to
    sum to 1 within ``SUM_TOL``), so that geodesic formulas on the sphere are exact.
    """
    check_float_tensor(P, name)
    if P.ndim not in ndims:
        shapes = " or ".join({2: "(N, C)", 3: "(models, N, C)", 4: "(K, T, N, C)"}[d] for d in ndims)
        raise ValueError(f"{name} must have shape {shapes}, got shape {tuple(P.shape)}")
    if min(P.shape) == 0:
        raise ValueError(f"{name} must be non-empty, got shape {tuple(P.shape)}")
    root = sqrt_probabilities(P, name, log)   # value checks shared with bhattacharyya
    total = (root * root).sum(-1)
    return root / total.sqrt()[..., None]


def ignorance(N: int, C: int, *, device=None) -> torch.Tensor:
    """The model of ignorance ``P_0``: ``(N, C)`` float64, every entry ``1/C``."""
    N, C = check_int(N, "N", minimum=1), check_int(C, "C", minimum=1)
    return torch.full((N, C), 1.0 / C, dtype=DTYPE, device=device)


def truth(labels, C: int | None = None) -> torch.Tensor:
    """The truth ``P_*``: ``(N, C)`` float64 one-hot rows ``e_{y_n}`` from integer labels ``(N,)``.

    ``C`` defaults to ``labels.max() + 1``; labels must lie in ``[0, C)``. Same device as labels.
    """
    if C is not None:
        C = check_int(C, "C", minimum=1)
    y = _check_labels(labels, C=C)
    C = int(y.max()) + 1 if C is None else C
    return torch.nn.functional.one_hot(y, C).to(DTYPE)


def _check_alpha(alpha, device) -> tuple[torch.Tensor, bool]:
    """``alpha`` as a float64 tensor (0-d or 1-d) in [0, 1]; returns (tensor, is_scalar)."""
    if isinstance(alpha, bool):
        raise TypeError("alpha must be a number or a 1-D floating tensor, got bool")
    if isinstance(alpha, (int, float)):
        a = torch.tensor(float(alpha), dtype=DTYPE, device=device)
    elif isinstance(alpha, torch.Tensor):
        if alpha.dtype == torch.bool or alpha.is_complex():
            raise TypeError(f"alpha must be a number or a 1-D real tensor, got dtype {alpha.dtype}")
        if alpha.ndim > 1:
            raise ValueError(f"alpha must be a scalar or a 1-D tensor, got shape {tuple(alpha.shape)}")
        a = alpha.to(device=device, dtype=DTYPE)
    else:
        raise TypeError(f"alpha must be a number or a 1-D tensor, got {type(alpha).__name__}")
    if not bool(torch.isfinite(a).all()) or bool(((a < 0) | (a > 1)).any()):
        raise ValueError("alpha must lie in [0, 1]")
    return a, a.ndim == 0


def _slerp_roots(a: torch.Tensor, b: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Great-circle interpolation (2.2.3) of unit non-negative rows ``a``, ``b`` (broadcastable,
    ``(..., N, C)``) at ``alpha`` (broadcastable to ``(...)``); returns probabilities."""
    diff = torch.linalg.vector_norm(a - b, dim=-1)
    d = 2 * torch.asin((0.5 * diff).clamp(max=1.0))        # accurate also for tiny angles
    al = alpha[..., None]
    small = d < 1e-8            # identical (or nearly) rows: the limit (1-alpha) a + alpha b
    ds = torch.where(small, torch.ones_like(d), d)
    ca = torch.where(small, 1 - al, torch.sin((1 - al) * ds) / torch.sin(ds))
    cb = torch.where(small, al, torch.sin(al * ds) / torch.sin(ds))
    root = ca[..., None] * a + cb[..., None] * b
    p = root * root
    return p / p.sum(-1, keepdim=True)


def geodesic(P, Q, alpha, *, log: bool = False) -> torch.Tensor:
    """Points on the Fisher-Rao geodesic between two product models (2.2.3).

    Each sample's ``sqrt(p^n)`` is a point of the unit sphere; the geodesic is the great circle

        sqrt p^{n,alpha} = sin((1-alpha) d^n)/sin(d^n) sqrt p^n + sin(alpha d^n)/sin(d^n) sqrt q^n,

    ``d^n = arccos sum_c sqrt(p^n(c) q^n(c))`` (computed as ``2 asin(|sqrt p - sqrt q|/2)``,
    accurate for small angles). Identical rows (``d^n = 0``) take the limit
    ``(1-alpha) sqrt p + alpha sqrt q``; no NaN is produced.

    Args:
        P, Q: ``(N, C)`` probabilities (log-probabilities if ``log``) of the two end models; or
            batched ``(m, N, C)`` (either or both; an ``(N, C)`` one is shared by the batch).
        alpha: number or ``(k,)`` tensor in ``[0, 1]``.

    Returns:
        float64 probabilities (rows renormalised to sum to 1 to round-off), on ``P``'s device:

        * ``P, Q`` both ``(N, C)``: ``(N, C)`` for a scalar ``alpha``, ``(k, N, C)`` for a tensor;
        * batched ``(m, N, C)``: ``(m, N, C)``; a tensor ``alpha`` must then have shape ``(m,)``
          and is paired elementwise with the batch (pair ``i`` at ``alpha[i]``).
    """
    a, b = _roots(P, "P", log), _roots(Q, "Q", log)
    if a.shape[-2:] != b.shape[-2:]:
        raise ValueError(f"P and Q must have the same (N, C), got {tuple(a.shape[-2:])} and {tuple(b.shape[-2:])}")
    if a.device != b.device:
        raise ValueError(f"P and Q must be on the same device, got {a.device} and {b.device}")
    if a.ndim == 3 and b.ndim == 3 and a.shape[0] != b.shape[0]:
        raise ValueError(f"batched P and Q must have the same number of models, got {a.shape[0]} and {b.shape[0]}")
    al, scalar = _check_alpha(alpha, a.device)
    if a.ndim == 2 and b.ndim == 2:
        if scalar:
            return _slerp_roots(a, b, al)
        return _slerp_roots(a[None], b[None], al)
    m = a.shape[0] if a.ndim == 3 else b.shape[0]
    if not scalar and al.shape != (m,):
        raise ValueError(f"for batched models (m = {m}) alpha must be a scalar or have shape ({m},), "
                         f"got shape {tuple(al.shape)}")
    al = al.expand(m)
    a = a if a.ndim == 3 else a[None]
    b = b if b.ndim == 3 else b[None]
    return _slerp_roots(a, b, al)


def geodesic_distance(P, Q, *, log: bool = False) -> torch.Tensor:
    """Geodesic (Fisher-Rao half-angle) distance on the product manifold (after 2.2.4).

        d_G(P, Q) = (1/N) sum_n arccos( sum_c sqrt(p^n(c) q^n(c)) ),

    with the overlap clamped to ``[0, 1]`` (the paper's outer ``sum_c`` is a typo for ``sum_n``).

    Args:
        P: ``(m, N, C)`` or ``(N, C)`` probabilities (log-probabilities if ``log``).
        Q: ``(N, C)`` (compared with every model of ``P``) or ``(m, N, C)`` (paired with ``P``).

    Returns:
        float64 ``(m,)``; a 0-d tensor if both are ``(N, C)``.
    """
    a, b = _roots(P, "P", log), _roots(Q, "Q", log)
    if a.shape[-2:] != b.shape[-2:]:
        raise ValueError(f"P and Q must have the same (N, C), got {tuple(a.shape[-2:])} and {tuple(b.shape[-2:])}")
    if a.ndim == 3 and b.ndim == 3 and a.shape[0] != b.shape[0]:
        raise ValueError(f"P and Q must have the same number of models, got {a.shape[0]} and {b.shape[0]}")
    if a.device != b.device:
        raise ValueError(f"P and Q must be on the same device, got {a.device} and {b.device}")
    overlap = (a * b).sum(-1).clamp(0.0, 1.0)
    return torch.arccos(overlap).mean(-1)


_INVPHI = (math.sqrt(5) - 1) / 2


def _progress_from_roots(root: torch.Tensor, y: torch.Tensor, grid: int, tol: float) -> torch.Tensor:
    """Progress of models with unit square roots ``root (m, N, C)`` and labels ``y (N,)``."""
    m, N, C = root.shape
    S = root.sum(-1) / math.sqrt(C)                                     # (m, N)  <sqrt p, 1/sqrt C>
    r = root.gather(-1, y.to(root.device)[None, :, None].expand(m, N, 1))[..., 0]   # (m, N)  sqrt p(y_n)
    del root
    d = math.acos(1 / math.sqrt(C))
    sd = math.sin(d)

    def objective(alpha: torch.Tensor) -> torch.Tensor:        # alpha (m,) -> d_G (m,)
        A = (torch.sin((1 - alpha) * d) / sd)[:, None]
        B = (torch.sin(alpha * d) / sd)[:, None]
        return torch.arccos((A * S + B * r).clamp(0.0, 1.0)).mean(-1)

    dev = S.device
    nodes = torch.linspace(0, 1, grid, dtype=DTYPE, device=dev)
    values = torch.stack([objective(nodes[j].expand(m)) for j in range(grid)], 1)   # (m, grid)
    best = values.argmin(1)                                   # first minimum on the grid
    lo = nodes[(best - 1).clamp(min=0)]
    hi = nodes[(best + 1).clamp(max=grid - 1)]
    x_best, f_best = nodes[best], values.gather(1, best[:, None])[:, 0]
    # golden-section search in the bracket around the best grid node, vectorised over models
    c = hi - _INVPHI * (hi - lo)
    e = lo + _INVPHI * (hi - lo)
    fc, fe = objective(c), objective(e)
    steps = max(0, math.ceil(math.log(tol / (2.0 / (grid - 1))) / math.log(_INVPHI))) if grid > 1 else 0
    for _ in range(steps):
        left = fc <= fe                      # the minimum is in [lo, e]
        hi = torch.where(left, e, hi)
        lo = torch.where(left, lo, c)
        new = torch.where(left, hi - _INVPHI * (hi - lo), lo + _INVPHI * (hi - lo))
        fnew = objective(new)
        e, fe, c, fc = (torch.where(left, c, new), torch.where(left, fc, fnew),
                        torch.where(left, new, e), torch.where(left, fnew, fe))
    x = 0.5 * (lo + hi)
    fx = objective(x)
    better = fx < f_best
    x_best, f_best = torch.where(better, x, x_best), torch.where(better, fx, f_best)
    # exact end points when the minimum sits on the boundary (ties go to the boundary)
    for end in (0.0, 1.0):
        fend = objective(torch.full((m,), end, dtype=DTYPE, device=dev))
        take = fend <= f_best
        x_best = torch.where(take, torch.full_like(x_best, end), x_best)
        f_best = torch.where(take, fend, f_best)
    return x_best


def progress(P, labels, *, log: bool = False, grid: int = 65, tol: float = 1e-8) -> torch.Tensor:
    """Progress ``s_w = argmin_{alpha in [0,1]} d_G(P_w, P_{0,*}^alpha)`` (2.2.4).

    ``P_{0,*}^alpha`` is the geodesic (2.2.3) from ignorance ``P_0`` (uniform) to the truth
    ``P_*`` (one-hot labels). Between these two, ``d^n = arccos(1/sqrt C)`` is the same ``d``
    for every sample, so in square-root space the geodesic point is

        a(alpha)/sqrt(C) * 1 + b(alpha) e_{y_n},  a = sin((1-alpha) d)/sin d,  b = sin(alpha d)/sin d,

    and its overlap with model ``w`` on sample ``n`` is ``a S_n / sqrt(C) + b r_n`` with
    ``S_n = sum_c sqrt p_w^n(c)`` and ``r_n = sqrt p_w^n(y_n)``. The objective therefore needs
    only these two ``(m, N)`` statistics, never the ``(N, C)`` geodesic point.

    Minimisation: the objective is evaluated on ``grid`` equally spaced points of [0, 1], the
    best one is refined by golden-section search inside its neighbouring bracket to width
    ``tol``, and the end points 0 and 1 are taken when they are at least as good (so a minimum
    on the boundary is returned exactly). All of it is vectorised over the models. The paper
    uses Brent's method (a "bisection search", Brent 1971) on [0, 1] directly; the grid guards
    against objectives that are not unimodal, where a local method can stop at a non-global
    minimum. The result is the global minimiser up to ``tol`` whenever the grid resolves the
    basin of the global minimum.

    Args:
        P: ``(m, N, C)`` (or ``(N, C)``) probabilities, log-probabilities if ``log``; C >= 2.
        labels: integer ``(N,)`` true classes.
        grid: number of grid points (>= 2). tol: final bracket width.

    Returns:
        float64 ``(m,)`` progress in [0, 1] (0-d tensor for an ``(N, C)`` input).
    """
    root = _roots(P, "P", log)
    single = root.ndim == 2
    if single:
        root = root[None]
    _, N, C = root.shape
    if C < 2:
        raise ValueError("progress needs C >= 2 classes (for C = 1 ignorance and truth coincide)")
    y = _check_labels(labels, N=N, C=C)
    grid = check_int(grid, "grid", minimum=2)
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 < tol < 1:
        raise ValueError(f"tol must be a number in (0, 1), got {tol!r}")
    s = _progress_from_roots(root, y, grid, float(tol))
    return s[0] if single else s


class Reindexed(NamedTuple):
    """Result of :func:`reindex_by_progress` (``L`` target progress values).

    - ``probs``: ``(L, N, C)`` float64 probabilities at the targets;
    - ``valid``: ``(L,)`` bool, False where the target lies outside ``[min s_k, max s_k]``
      (those rows hold the checkpoint whose progress is nearest to the target);
    - ``segment``: ``(L,)`` int64, index ``k`` of the segment ``(k, k+1)`` used (-1 where
      invalid);
    - ``alpha``: ``(L,)`` float64 interpolation parameter on that segment (0 where invalid).
    """
    probs: torch.Tensor
    valid: torch.Tensor
    segment: torch.Tensor
    alpha: torch.Tensor


def _locate(sk: torch.Tensor, s: torch.Tensor):
    """First segment ``k`` with ``s`` between ``sk[k]`` and ``sk[k+1]`` (either order).

    Returns ``(valid, k, alpha, nearest)`` for targets ``s (L,)``; ``nearest`` is the
    checkpoint with the progress closest to each target (used for invalid targets)."""
    T = sk.shape[0]
    nearest = (sk[None, :] - s[:, None]).abs().argmin(1)
    if T == 1:
        valid = s == sk[0]
        return valid, torch.zeros_like(nearest), torch.zeros_like(s), nearest
    s0, s1 = sk[:-1], sk[1:]
    lo, hi = torch.minimum(s0, s1), torch.maximum(s0, s1)
    inside = (s[:, None] >= lo[None]) & (s[:, None] <= hi[None])           # (L, T-1)
    valid = inside.any(1)
    k = inside.to(torch.int8).argmax(1)                                     # first True
    den = s1[k] - s0[k]
    safe = den != 0
    alpha = torch.where(safe, (s - s0[k]) / torch.where(safe, den, torch.ones_like(den)), torch.zeros_like(s))
    alpha = torch.where(valid, alpha.clamp(0.0, 1.0), torch.zeros_like(alpha))
    return valid, k, alpha, nearest


def _check_targets(s, device) -> torch.Tensor:
    if not isinstance(s, torch.Tensor) or not torch.is_floating_point(s) or s.ndim != 1:
        raise TypeError("s must be a 1-D floating-point tensor of progress values")
    if not bool(torch.isfinite(s).all()):
        raise ValueError("s contains NaN or infinite entries")
    return s.to(device=device, dtype=DTYPE)


def reindex_by_progress(trajectory, labels, s, *, log: bool = False, progress_values=None) -> Reindexed:
    """Re-parametrise a trajectory of checkpoints by progress (the construction before 2.2.5).

    For each target ``s`` the first segment ``k`` (in time order) with ``s`` between ``s_k`` and
    ``s_{k+1}`` (either order: progress need not be monotone in time) is used, and the result
    is the geodesic interpolation ``P^alpha_{u(k), u(k+1)}`` (2.2.3) with
    ``alpha = (s - s_k)/(s_{k+1} - s_k)`` (the checkpoint ``u(k)`` for a zero-length segment).

    Args:
        trajectory: ``(T, N, C)`` checkpoints in time order (log-probabilities if ``log``).
        labels: ``(N,)`` integer labels (defining the truth, hence progress).
        s: ``(L,)`` float target progress values.
        progress_values: optional ``(T,)`` precomputed progress of the checkpoints.

    Returns:
        :class:`Reindexed` ``(probs (L, N, C), valid (L,), segment (L,), alpha (L,))``. Targets
        outside ``[min s_k, max s_k]`` are not reachable: ``valid`` is False and the row holds
        the checkpoint with the nearest progress (an end of the covered range).
    """
    root = _roots(trajectory, "trajectory", log, ndims=(3,))
    T, N, C = root.shape
    y = _check_labels(labels, N=N, C=C)
    s = _check_targets(s, root.device)
    if progress_values is None:
        sk = _progress_from_roots(root, y, 65, 1e-8)
    else:
        if not isinstance(progress_values, torch.Tensor) or progress_values.shape != (T,):
            raise ValueError(f"progress_values must be a tensor of shape ({T},)")
        sk = progress_values.to(device=root.device, dtype=DTYPE)
    valid, k, alpha, nearest = _locate(sk, s)
    k_next = (k + 1).clamp(max=T - 1)
    probs = _slerp_roots(root[k], root[k_next], alpha)
    probs = torch.where(valid[:, None, None], probs, root[nearest] ** 2)
    return Reindexed(probs, valid, torch.where(valid, k, torch.full_like(k, -1)), alpha)


def trajectory_distance(traj_u, traj_v, labels, *, num_points: int = 100, log: bool = False,
                        grid=None) -> float:
    """Distance between two trajectories compared at equal progress (2.2.5).

    Deviation from the paper: (2.2.5) writes ``int_0^1 d_B(P_u(s), P_v(s)) ds``, but a
    trajectory only covers the progress range of its checkpoints, so this returns the *mean*
    of ``d_B`` over the common range ``[max(start_u, start_v), min(end_u, end_v)]`` (start/end:
    the smallest/largest checkpoint progress), i.e. the integral divided by the range's
    length, estimated on ``num_points`` equally spaced progress values (end points included).

    Args:
        traj_u, traj_v: ``(T_u, N, C)`` and ``(T_v, N, C)`` checkpoints in time order.
        labels: ``(N,)`` integer labels.
        num_points: grid size on the common range.
        grid: optional 1-D tensor of progress values to use instead; only those inside the
            common range are averaged (this is what :func:`trajectory_distances` does with a
            global grid on [0, 1]).

    Raises:
        ValueError: the progress ranges do not overlap, or no ``grid`` value lies in the
            overlap.
    """
    ru = _roots(traj_u, "traj_u", log, ndims=(3,))
    rv = _roots(traj_v, "traj_v", log, ndims=(3,))
    if ru.shape[1:] != rv.shape[1:]:
        raise ValueError(f"traj_u and traj_v must have the same (N, C), got {tuple(ru.shape[1:])} and {tuple(rv.shape[1:])}")
    y = _check_labels(labels, N=ru.shape[1], C=ru.shape[2])
    num_points = check_int(num_points, "num_points", minimum=1)
    su, sv = _progress_from_roots(ru, y, 65, 1e-8), _progress_from_roots(rv, y, 65, 1e-8)
    lo, hi = max(float(su.min()), float(sv.min())), min(float(su.max()), float(sv.max()))
    if lo > hi:
        raise ValueError(f"the trajectories' progress ranges do not overlap: [{float(su.min()):.4g}, "
                         f"{float(su.max()):.4g}] and [{float(sv.min()):.4g}, {float(sv.max()):.4g}]")
    if grid is None:
        pts = torch.linspace(lo, hi, num_points, dtype=DTYPE, device=ru.device)
    else:
        pts = _check_targets(grid, ru.device)
        pts = pts[(pts >= lo) & (pts <= hi)]
        if pts.numel() == 0:
            raise ValueError(f"no grid value lies in the common progress range [{lo:.4g}, {hi:.4g}]")
    total = 0.0
    step = max(1, CHUNK_BYTES // (8 * 2 * ru.shape[1] * ru.shape[2]))
    for j in range(0, pts.shape[0], step):
        # paired d_B (2.2.2) of the two re-indexed models at each progress value of the block,
        # with the same clamping of the overlaps as bhattacharyya()
        pu = _interp_at(ru, su, pts[j:j + step])
        pv = _interp_at(rv, sv, pts[j:j + step])
        overlap = torch.sqrt(pu * pv).sum(-1).clamp(1e-300, 1.0)
        total += float(-torch.log(overlap).mean(-1).sum())
    return total / pts.shape[0]


def _interp_at(root: torch.Tensor, sk: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Geodesic interpolation of a trajectory ``root (T, N, C)`` at targets ``s (L,)`` (valid ones)."""
    _, k, alpha, _ = _locate(sk, s)
    k_next = (k + 1).clamp(max=root.shape[0] - 1)
    return _slerp_roots(root[k], root[k_next], alpha)


def trajectory_distances(trajectories, labels, *, num_points: int = 100, log: bool = False) -> torch.Tensor:
    """Pairwise trajectory distances (2.2.5) of ``K`` trajectories, ``(K, K)`` float64.

    Every trajectory is re-indexed once (progress of its checkpoints, then the segment and
    ``alpha`` of each point of a global grid of ``num_points`` equally spaced progress values
    on [0, 1]); then, grid point by grid point, the ``K`` re-indexed models at that progress
    are formed (``(K, N, C)``, never all grid points at once) and :func:`~lib.manifolds.inpca.bhattacharyya` gives
    all their distances. Entry ``(u, v)`` is the mean of ``d_B`` over the grid points inside
    both trajectories' progress ranges, i.e. ``trajectory_distance(u, v,
    grid=torch.linspace(0, 1, num_points))`` (see its docstring for the deviation from the
    paper's ``int_0^1``). Pairs with no common grid point get NaN. The matrix is symmetric
    with an exactly zero diagonal.

    Args:
        trajectories: a sequence of ``(T_i, N, C)`` tensors, or a ``(K, T, N, C)`` tensor.
        labels: ``(N,)`` integer labels.
    """
    if isinstance(trajectories, torch.Tensor):
        if trajectories.ndim != 4:
            raise ValueError(f"a tensor of trajectories must have shape (K, T, N, C), got {tuple(trajectories.shape)}")
        trajectories = list(trajectories)
    if not isinstance(trajectories, (list, tuple)) or len(trajectories) == 0:
        raise TypeError("trajectories must be a non-empty list of (T_i, N, C) tensors or a (K, T, N, C) tensor")
    roots = [_roots(t, f"trajectories[{i}]", log, ndims=(3,)) for i, t in enumerate(trajectories)]
    N, C = roots[0].shape[1:]
    for i, r in enumerate(roots):
        if r.shape[1:] != (N, C):
            raise ValueError(f"trajectories[{i}] has (N, C) = {tuple(r.shape[1:])}, expected {(N, C)}")
        if r.device != roots[0].device:
            raise ValueError("all trajectories must be on the same device")
    y = _check_labels(labels, N=N, C=C)
    num_points = check_int(num_points, "num_points", minimum=1)
    dev, K = roots[0].device, len(roots)
    pts = torch.linspace(0, 1, num_points, dtype=DTYPE, device=dev)
    located = []
    for r in roots:
        sk = _progress_from_roots(r, y, 65, 1e-8)
        valid, k, alpha, _ = _locate(sk, pts)
        located.append((valid, k, (k + 1).clamp(max=r.shape[0] - 1), alpha))
    valid = torch.stack([v for v, _, _, _ in located])                      # (K, G)
    total = torch.zeros(K, K, dtype=DTYPE, device=dev)
    count = torch.zeros(K, K, dtype=DTYPE, device=dev)
    for j in range(num_points):
        idx = valid[:, j].nonzero()[:, 0].tolist()
        if not idx:
            continue
        a = torch.stack([roots[i][located[i][1][j]] for i in idx])
        b = torch.stack([roots[i][located[i][2][j]] for i in idx])
        al = torch.stack([located[i][3][j] for i in idx])
        D = bhattacharyya(_slerp_roots(a, b, al))
        sel = torch.tensor(idx, device=dev)
        total[sel[:, None], sel[None, :]] += D
        count[sel[:, None], sel[None, :]] += 1
    out = total / count                      # 0/0 -> NaN for pairs without a common point
    out = 0.5 * (out + out.T)
    out.fill_diagonal_(0.0)
    return out


ENSEMBLE_MEANS = ("arithmetic", "geometric", "harmonic", "sqrt", "bhattacharyya")


def ensemble_mean(P, mean: str = "arithmetic", *, log: bool = False, max_steps: int = 100,
                  tol: float = 1e-12) -> torch.Tensor:
    """Average ``m`` product models, sample by sample (Table 2.3, Fig. 2.24).

    Args:
        P: ``(m, N, C)`` probabilities (log-probabilities if ``log``).
        mean: ``"arithmetic"`` ``mean_i p_i``; ``"geometric"`` ``prod_i p_i^(1/m)``, normalised;
            ``"harmonic"`` ``(mean_i 1/p_i)^-1``, normalised; ``"sqrt"`` (Hellinger centroid)
            ``(mean_i sqrt p_i)^2``, normalised; ``"bhattacharyya"``: the Bhattacharyya centroid
            ``argmin_q sum_i d_B(P_i, q)`` (Nielsen and Boltz, 2011), see below.
        max_steps, tol: iteration limit and tolerance (max change of ``sqrt q``) of the centroid.

    Returns:
        ``(N, C)`` float64 probabilities (rows sum to 1).

    Bhattacharyya centroid: ``sum_i d_B(P_i, q)`` separates over samples, and per sample it is
    ``-sum_i log <a_i, r>`` with ``a_i = sqrt p_i``, ``r = sqrt q``, ``|r| = 1``. Stationarity
    on the sphere reads ``r ∝ g(r) = sum_i a_i / <a_i, r>`` (the fixed point the paper refers
    to). We iterate the minorise-maximise form of it, ``r <- normalise(sqrt(r * g(r)))``
    (Jensen's inequality on each ``log <a_i, r>``), which has the same fixed points and
    increases the objective monotonically, starting from the normalised ``mean_i a_i``. The
    objective is concave on the ball ``|r| <= 1`` and maximised on its boundary, so the
    fixed point is the global minimiser. Members with zero probabilities are allowed; the
    geometric/harmonic means raise ValueError where they vanish on a whole sample.
    """
    if mean not in ENSEMBLE_MEANS:
        raise ValueError(f"mean must be one of {ENSEMBLE_MEANS}, got {mean!r}")
    root = _roots(P, "P", log, ndims=(3,))
    m = root.shape[0]
    if mean == "arithmetic":
        q = (root * root).mean(0)
        return q / q.sum(-1, keepdim=True)
    if mean in ("geometric", "harmonic"):
        lp = 2 * torch.log(root)                                  # log p, -inf for p = 0
        if mean == "geometric":
            lq = lp.mean(0)
        else:
            lq = -(torch.logsumexp(-lp, 0) - math.log(m))
        if bool((lq == -math.inf).all(-1).any()):
            raise ValueError(f"the {mean} mean vanishes on some sample (the members' supports do not "
                             "intersect there); it cannot be normalised")
        return torch.softmax(lq, -1)
    max_steps = check_int(max_steps, "max_steps", minimum=0)
    r = root.mean(0)
    r = r / torch.linalg.vector_norm(r, dim=-1, keepdim=True)
    if mean == "sqrt":
        return r * r
    return _bhattacharyya_centroid(root, r, max_steps, tol)


def _bhattacharyya_centroid(root: torch.Tensor, r: torch.Tensor, max_steps: int,
                            tol: float) -> torch.Tensor:
    """The minorise-maximise iteration of :func:`ensemble_mean` from ``r (N, C)`` for members
    with square roots ``root (m, N, C)``; returns the centroid's probabilities ``(N, C)``."""
    for _ in range(max_steps):
        overlap = (root * r[None]).sum(-1, keepdim=True)           # (m, N, 1) > 0
        g = (root / overlap).sum(0)
        new = torch.sqrt(r * g)
        new = new / torch.linalg.vector_norm(new, dim=-1, keepdim=True)
        change = float((new - r).abs().max())
        r = new
        if change <= tol:
            break
    q = r * r
    return q / q.sum(-1, keepdim=True)
