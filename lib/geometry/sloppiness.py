"""Sloppiness: effective dimensionality, strength and sloppy factor of a spectrum, and the
analytical PAC-Bayes bound they control (Mao 2025, chapter 4, section 4.4).

Introduced for the chapter "Sloppiness" (issue 18). Conventions of the source:

* the training loss ``e`` is measured in **bits** (its Hessian is that of the loss in nats
  divided by ``log 2``); ``n`` is the number of training examples, ``eps > 0`` the precision
  of the Gaussian prior ``P = N(w0, eps^-1 I)``;
* the optimal Gaussian posterior of the loose bound ``e(Q) + KL(Q, P) / (2 (n - 1))`` at a
  minimum ``w`` with Hessian eigenvalues ``lambda_i`` has precisions
  ``lambda_bar_i = 2 (n - 1) lambda_i + eps`` (4.3.4, :func:`posterior_precisions`);
* the effective dimensionality ``p(n, eps)`` counts eigenvalues ``|lambda_i| >= eps / (2 (n - 1))``
  (4.4.1); the strength ``s(n, eps) = sum_{i <= p} (1 + log(2 (n - 1) lambda_i / eps + 1))``
  (4.4.2); the sloppy factor ``c(A, r)`` is the largest rate of an exponential envelope of
  the eigenvalues past index ``r`` (4.4.3);
* the bound (4.4.4) is ``(s + 2 / c + eps ||w - w0||^2) / (4 (n - 1))``, an upper bound of the
  exact objective :func:`pac_bayes_objective` (the expression before its inequalities).

Every function takes eigenvalues in any order (a tensor or a sequence; they are sorted in
descending order, as the source indexes them) and works in float64. Indices are 1-based, as
in the source: ``r = 1`` is the largest eigenvalue.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from .._checks import check_int

__all__ = ["SLOPPY_FACTOR_METHODS", "descending", "posterior_precisions", "effective_dimensionality",
           "strength", "sloppy_factor", "BoundTerms", "pac_bayes_bound", "pac_bayes_objective", "Overlaps",
           "eigenvector_overlaps", "SearchResult", "pac_bayes_search"]

SLOPPY_FACTOR_METHODS = ("supremum", "fit")
"""The two readings of (4.4.3) that :func:`sloppy_factor` offers, ``"supremum"`` (the definition, the
largest rate whose envelope bounds *every* later eigenvalue) and ``"fit"`` (the least-squares slope
of ``-log lambda_i`` against ``i`` over the tail, the straight line of the source's Fig. 4.2)."""


def descending(eigenvalues) -> Tensor:
    """``eigenvalues`` as a float64 vector in descending order; ``ValueError`` if empty or not finite."""
    if not isinstance(eigenvalues, Tensor):  # a sequence: straight to float64, not through float32
        eigenvalues = torch.as_tensor(eigenvalues, dtype=torch.float64)
    values = eigenvalues.detach().to("cpu", torch.float64).reshape(-1)
    if values.numel() == 0:
        raise ValueError("eigenvalues is empty")
    if not bool(torch.isfinite(values).all()):
        raise ValueError("eigenvalues must be finite (NaN or infinite entries found)")
    return values.sort(descending=True).values


def _check_n_eps(n: int, eps: float) -> tuple[int, float]:
    n = check_int(n, "n")
    if n < 2:
        raise ValueError(f"n (the number of training examples) must be >= 2, got {n}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"eps (the prior's precision) must be a finite number > 0, got {eps!r}")
    return n, float(eps)


def posterior_precisions(eigenvalues, n: int, eps: float) -> Tensor:
    """``lambda_bar_i = 2 (n - 1) lambda_i + eps`` (4.3.4), descending, ``(p,)``."""
    n, eps = _check_n_eps(n, eps)
    return 2 * (n - 1) * descending(eigenvalues) + eps


def effective_dimensionality(eigenvalues, n: int, eps: float) -> int:
    """``p(n, eps)``: how many eigenvalues have ``|lambda_i| >= eps / (2 (n - 1))`` (4.4.1).

    Example:
        >>> effective_dimensionality([4.0, 1.0, 0.01, -0.5], n=11, eps=10.0)  # threshold 0.5
        3
    """
    n, eps = _check_n_eps(n, eps)
    return int((descending(eigenvalues).abs() >= eps / (2 * (n - 1))).sum())


def strength(eigenvalues, n: int, eps: float) -> float:
    """``s(n, eps) = sum_{i <= p(n, eps)} (1 + log(2 (n - 1) lambda_i / eps + 1))`` (4.4.2), natural
    logarithm; ``ValueError`` if one of those ``p`` largest eigenvalues is negative (the source
    defines it at a minimum, where the Hessian is positive semi-definite)."""
    n, eps = _check_n_eps(n, eps)
    values = descending(eigenvalues)
    top = values[:effective_dimensionality(values, n, eps)]
    if bool((top < 0).any()):
        raise ValueError("the strength needs the eigenvalues above the threshold to be positive (a minimum); "
                         f"found {float(top.min()):.3g}")
    return float((1 + torch.log1p(2 * (n - 1) * top / eps)).sum())


def sloppy_factor(eigenvalues, r: int, method: str = "supremum") -> float:
    """The sloppy factor ``c(A, r)`` of (4.4.3) from the eigenvalues of ``A``, index ``r`` 1-based.

    * ``"supremum"``: ``sup{c >= 0 : lambda_i <= lambda_r exp(-c (i - r)) for all i > r}``, i.e.
      ``max(0, min_{i > r} (log lambda_r - log lambda_i) / (i - r))``; zero eigenvalues bound
      nothing (their logarithm is minus infinity), and ``inf`` is returned if all later ones are 0.
    * ``"fit"``: minus the least-squares slope of ``log lambda_i`` against ``i`` over the positive
      eigenvalues with ``i >= r``, the reading of the number the source quotes (the slope of
      the red line of its Fig. 4.2); not a bound, and 0 if the fitted line rises.

    Raises:
        ValueError: ``r`` outside ``1..p - 1`` (no eigenvalue after it), ``lambda_r <= 0`` (the
            logarithm needs it positive), fewer than two positive tail eigenvalues for ``"fit"``,
            or an unknown ``method``.

    Example:
        >>> import math
        >>> values = [math.exp(-0.5 * i) for i in range(10)]
        >>> round(sloppy_factor(values, 3), 12), round(sloppy_factor(values, 3, "fit"), 12)
        (0.5, 0.5)
    """
    if method not in SLOPPY_FACTOR_METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {SLOPPY_FACTOR_METHODS}")
    values = descending(eigenvalues)
    r = check_int(r, "r")
    if not 1 <= r < len(values):
        raise ValueError(f"r must be in 1..{len(values) - 1} (an eigenvalue must follow it), got {r}")
    if values[r - 1] <= 0:
        raise ValueError(f"lambda_r must be positive for its logarithm, got lambda_{r} = {float(values[r - 1]):.3g}")
    tail = values[r - 1:]
    index = torch.arange(len(tail), dtype=torch.float64)           # i - r
    positive = tail > 0
    if method == "supremum":
        later = positive.clone()
        later[0] = False
        if not bool(later.any()):
            return math.inf
        rates = (tail[0].log() - tail[later].log()) / index[later]
        return max(0.0, float(rates.min()))
    if int(positive.sum()) < 2:
        raise ValueError("the fit needs at least two positive eigenvalues from index r on")
    x, y = index[positive], tail[positive].log()
    slope = float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum())
    return max(0.0, -slope)


class BoundTerms(NamedTuple):
    """The terms of (4.4.4), ``bound = (s + 2 / c + eps ||w - w0||^2) / (4 (n - 1))``."""

    #: ``p(n, eps)``, the effective dimensionality.
    p: int
    #: ``s(n, eps)``, the strength.
    s: float
    #: ``c(n, eps)``, the sloppy factor in the chosen reading (``inf`` when no eigenvalue is below the threshold).
    c: float
    #: ``eps ||w - w0||^2``, the prior's distance term.
    distance: float
    #: the bound itself.
    bound: float


def pac_bayes_bound(eigenvalues, n: int, eps: float, distance_sq: float, sloppiness: str = "tail") -> BoundTerms:
    """The analytical bound (4.4.4) on ``e(Q) + KL(Q, P) / (2 (n - 1))`` at an interpolating minimum.

    Args:
        eigenvalues: of the Hessian of the training loss in bits at ``w`` (all of them, or at
            least every nonzero one), non-negative.
        n, eps: training examples and the prior's precision.
        distance_sq: ``||w - w0||^2``, the squared distance from the prior's mean.
        sloppiness: the reading of ``c = c(H, p(n, eps))``: ``"tail"`` (default), the one the
            derivation in the source's section 4.7.2.3 uses, ``sum_{i > p} lambda_i =
            eps / (2 (n - 1) c)``, under which the bound provably holds
            (``>= pac_bayes_objective``); or ``"supremum"`` / ``"fit"`` of :func:`sloppy_factor`
            at ``r = p``, which make it an estimate, not a bound.

    Raises:
        ValueError: ``n < 2``, ``eps <= 0``, ``distance_sq < 0``, a negative eigenvalue, an
            unknown reading.
    """
    n, eps = _check_n_eps(n, eps)
    if isinstance(distance_sq, bool) or not isinstance(distance_sq, (int, float)) or not distance_sq >= 0:
        raise ValueError(f"distance_sq must be a number >= 0, got {distance_sq!r}")
    values = descending(eigenvalues)
    if bool((values < 0).any()):
        raise ValueError(f"the bound needs a minimum (eigenvalues >= 0); found {float(values.min()):.3g}")
    p, s = effective_dimensionality(values, n, eps), strength(values, n, eps)
    if sloppiness == "tail":
        tail = float(values[p:].sum())
        c = math.inf if tail == 0 else eps / (2 * (n - 1) * tail)
    elif sloppiness in SLOPPY_FACTOR_METHODS:
        c = math.inf if p in (0, len(values)) else sloppy_factor(values, p, sloppiness)
    else:
        raise ValueError(f"unknown sloppiness {sloppiness!r}; choose 'tail' or one of {SLOPPY_FACTOR_METHODS}")
    inverse = 0.0 if c == math.inf else (math.inf if c == 0 else 1.0 / c)
    distance = eps * float(distance_sq)
    return BoundTerms(p, s, c, distance, (s + 2 * inverse + distance) / (4 * (n - 1)))


def pac_bayes_objective(eigenvalues, n: int, eps: float, distance_sq: float, train_loss: float = 0.0) -> float:
    """The exact ``e(Q) + KL(Q, P) / (2 (n - 1))`` for the optimal posterior (4.3.3) under the
    quadratic model of the loss, the expression (4.4.4) bounds:

        train_loss + 1/2 sum_i lambda_i / lambda_bar_i
          + (eps ||w - w0||^2 - p + sum_i (log(lambda_bar_i / eps) + eps / lambda_bar_i)) / (4 (n - 1)).

    A zero eigenvalue adds nothing, so passing only the nonzero ones gives the same value.
    ``ValueError`` if some ``lambda_bar_i <= 0`` (an eigenvalue below ``-eps / (2 (n - 1))``).

    Example:
        >>> pac_bayes_objective([0.0, 0.0], n=11, eps=1.0, distance_sq=0.0)  # Q = P: no cost
        0.0
    """
    n, eps = _check_n_eps(n, eps)
    if isinstance(distance_sq, bool) or not isinstance(distance_sq, (int, float)) or not distance_sq >= 0:
        raise ValueError(f"distance_sq must be a number >= 0, got {distance_sq!r}")
    values = descending(eigenvalues)
    bar = 2 * (n - 1) * values + eps
    if bool((bar <= 0).any()):
        raise ValueError("a posterior precision 2 (n - 1) lambda + eps is <= 0 (a negative eigenvalue below "
                         "-eps / (2 (n - 1))): the logarithm needs it positive")
    gap = 0.5 * float((values / bar).sum())
    kl = eps * float(distance_sq) + float((torch.log(bar / eps) + eps / bar - 1).sum())
    return float(train_loss) + gap + kl / (4 * (n - 1))


class Overlaps(NamedTuple):
    """How much of each of ``A``'s top eigenvectors lies in ``B``'s top subspace."""

    #: ``||V^T u_i||^2`` for each column ``u_i`` of ``U``, in [0, 1], shape ``(k,)``.
    per_vector: Tensor
    #: their mean, ``||U^T V||_F^2 / k``.
    mean: float
    #: ``k' / d``, the expectation of ``||V^T u||^2`` for ``u`` uniform on the sphere.
    random: float


def eigenvector_overlaps(U: Tensor, V: Tensor) -> Overlaps:
    """Overlaps of the columns of ``U`` (``(d, k)``, e.g. the Hessian's top eigenvectors) with the
    span of the orthonormal columns of ``V`` (``(d, k')``, e.g. the Fisher's), against the
    random baseline ``k' / d`` (the source's Fig. 4.3, right: "much larger than a random vector").

    Example:
        >>> import torch
        >>> I = torch.eye(4, dtype=torch.float64)
        >>> eigenvector_overlaps(I[:, :2], I[:, 1:3]).per_vector.tolist(), eigenvector_overlaps(I[:, :2], I[:, 1:3]).random
        ([0.0, 1.0], 0.5)
    """
    if not isinstance(U, Tensor) or not isinstance(V, Tensor):
        raise TypeError("U and V must be tensors of eigenvectors, (d, k) and (d, k')")
    if U.ndim != 2 or V.ndim != 2 or U.shape[0] != V.shape[0]:
        raise ValueError(f"U and V must be (d, k) and (d, k') with the same d, got {tuple(U.shape)} and {tuple(V.shape)}")
    U, V = U.double(), V.to(device=U.device, dtype=torch.float64)
    per_vector = ((V.T @ U) ** 2).sum(dim=0) / (U ** 2).sum(dim=0)
    return Overlaps(per_vector.cpu(), float(per_vector.mean()), V.shape[1] / V.shape[0])


class SearchResult(NamedTuple):
    """The best prior precision of :func:`pac_bayes_search` and the bound it gives."""

    #: the chosen precision ``eps_j = scale exp(-j / steps)``.
    eps: float
    #: its index ``j >= 1`` on the grid.
    index: int
    #: the bound on the expected 0-1 error of ``Q``, penalty for the search included.
    bound: float
    #: ``KL(Q, P)`` of the optimal posterior for that ``eps``, in nats.
    kl: float
    #: ``e(Q)``, the posterior's expected training loss under the quadratic model.
    expected_loss: float


def _kl(values: Tensor, n: int, eps: float, distance_sq: float) -> float:
    bar = 2 * (n - 1) * values + eps
    return 0.5 * (eps * distance_sq + float((torch.log(bar / eps) + eps / bar - 1).sum()))


def pac_bayes_search(eigenvalues, n: int, distance_sq: float, train_loss: float = 0.0, *, scale: float = 1e4,
                     steps: int = 100, num_steps: int = 2000, delta: float = 0.025) -> SearchResult:
    """The prior precision ``eps`` that minimizes the PAC-Bayes bound, searched on a grid and paid
    for by a union bound (the source's section 4.7.2.1, after Dziugaite & Roy 2017).

    For ``eps_j = scale exp(-j / steps)``, ``j = 1 .. num_steps``, the optimal posterior (4.3.3)
    gives, with probability ``1 - delta`` for all ``j`` at once,

        e(Q) <= e_bits(Q) + sqrt((KL(Q, P) + 2 log j + log(pi^2 n / (6 delta))) / (2 (n - 1))),

    McAllester's bound with Pinsker's inequality, ``e_bits(Q) = train_loss + 1/2 sum lambda_i /
    lambda_bar_i`` the quadratic model of the expected loss in bits (which bounds the 0-1
    error), and ``2 log j`` the price of trying the grid (weights ``6 / (pi^2 j^2)``). The source
    writes ``eps = c exp(j / b)``, for which its penalty ``2 log(b log(c / eps))`` takes the
    logarithm of a negative number; the decreasing grid is the one it follows, whose penalty is
    exactly ``2 log j``.

    Args:
        eigenvalues: of the Hessian of the training loss in bits at ``w``, non-negative.
        n: training examples; distance_sq: ``||w - w0||^2``; train_loss: ``e_bits`` at ``w``.
        scale, steps, num_steps: the grid (``scale`` its largest precision, ``steps`` points per
            factor ``e``).
        delta: the bound's failure probability.

    Raises:
        ValueError: ``n < 2``, a negative eigenvalue, ``distance_sq < 0``, ``delta`` outside (0, 1),
            a non-positive ``scale``, ``steps`` or ``num_steps``.
    """
    n, scale = _check_n_eps(n, scale)
    steps, num_steps = check_int(steps, "steps"), check_int(num_steps, "num_steps")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")
    if isinstance(distance_sq, bool) or not isinstance(distance_sq, (int, float)) or not distance_sq >= 0:
        raise ValueError(f"distance_sq must be a number >= 0, got {distance_sq!r}")
    values = descending(eigenvalues)
    if bool((values < 0).any()):
        raise ValueError(f"the search needs a minimum (eigenvalues >= 0); found {float(values.min()):.3g}")
    best = None
    for j in range(1, num_steps + 1):
        eps = scale * math.exp(-j / steps)
        kl = _kl(values, n, eps, float(distance_sq))
        expected = float(train_loss) + 0.5 * float((values / (2 * (n - 1) * values + eps)).sum())
        penalty = 2 * math.log(j) + math.log(math.pi ** 2 * n / (6 * delta))
        bound = expected + math.sqrt((kl + penalty) / (2 * (n - 1)))
        if best is None or bound < best.bound:
            best = SearchResult(eps, j, bound, kl, expected)
    return best
