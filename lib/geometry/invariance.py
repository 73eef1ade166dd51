"""The parameter space's metric and the reparametrization-invariant Hessian operator.

Following Kristiadi, Dangel & Hennig (2023), the parameter space ``Theta = R^d`` always
carries a Riemannian metric ``G`` (a symmetric positive-definite ``(d, d)`` matrix per
point), usually the implicit identity. Under a reparametrization ``psi = phi(theta)``
with Jacobian ``J = d psi / d theta`` (see :mod:`lib.geometry.reparam`) the objects of the
calculus transform by different rules:

=====================  ==============================  ==========================
object                 rule (psi-coordinates)          function
=====================  ==============================  ==========================
tangent vector ``v``   ``J v``                         :func:`transform_vector`
gradient (covector)    ``J^-T g``                      :func:`transform_covector`
metric ``G``           ``J^-T G J^-1`` (pull-back)     :func:`pullback_metric`
Hessian at a minimum   ``J^-T H J^-1``                 :func:`transform_hessian_at_critical_point`
Lebesgue density       ``log p - log |det J|``         :func:`transform_density_lebesgue`
Riemannian density     unchanged (a scalar function)   :func:`transform_density_riemannian`
=====================  ==============================  ==========================

The Hessian ``H`` transforms like the metric, so neither its trace, eigenvalues nor
determinant are invariant on their own (``psi = c theta`` divides the trace by ``c^2``).
The operator ``E = G^-1 H`` becomes ``J G^-1 H J^-1``, a similarity transform, so its
trace, eigenvalues and determinant are invariant. :func:`hessian_operator` builds ``E``
and computes them without forming ``G^-1 H``.

Metrics are :class:`~lib.operators.base.LinearOperator` objects: the identity
(:func:`euclidean_metric`), a positive diagonal (:func:`diagonal_metric`, e.g. Adam's
``sqrt(v_hat) + eps``), a dense SPD matrix (:func:`dense_metric`), or any symmetric
positive-definite operator (e.g. ``lib.curvature.ggn(...) + damping * I``, or K-FAC:
``lib.curvature.kronecker.kfac(...).add_damping(damping)``), accepted as is.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

from .._checks import check_damping, check_square_matrix
from ..operators.spectral import TRACE_METHODS, eigvalsh as _lanczos_eigvalsh, logdet as _slq_logdet
from ..operators.spectral import trace as _trace
from ..operators import (DampedInverseOperator, DenseOperator, DiagonalOperator, IdentityOperator,
                         LinearOperator, ProductOperator)
from ..operators.linalg import top_ascending
from .reparam import Reparametrization

__all__ = [
    "euclidean_metric", "diagonal_metric", "adam_metric", "dense_metric", "pullback_metric",
    "transform_hessian_at_critical_point", "transform_vector", "transform_covector",
    "transform_density_lebesgue", "transform_density_riemannian", "hessian_operator",
    "check_critical_point", "InvariantHessianOperator", "CongruenceOperator",
]


# --------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------
def euclidean_metric(d: int, dtype: torch.dtype = torch.float64,
                     device: torch.device | str = "cpu") -> IdentityOperator:
    """The Euclidean metric ``G = I`` of shape ``(d, d)``."""
    return IdentityOperator(d, dtype=dtype, device=device)


def diagonal_metric(values: Tensor) -> DiagonalOperator:
    """The metric ``G = diag(values)`` for a positive finite vector ``values`` of shape ``(d,)``.

    E.g. Adam's preconditioner ``sqrt(v_hat) + eps``. Raises ``ValueError`` if an entry is
    ``<= 0`` or not finite.
    """
    if not isinstance(values, Tensor) or not torch.is_floating_point(values):
        raise TypeError("values must be a floating-point tensor")
    if values.ndim != 1:
        raise ValueError(f"a diagonal metric needs a vector (d,), got shape {tuple(values.shape)}")
    if not bool(torch.isfinite(values).all()):
        raise ValueError("a diagonal metric needs finite entries")
    if bool((values <= 0).any()):
        raise ValueError(f"a metric must be positive definite, but the diagonal has an entry "
                         f"{float(values.min()):.3g} <= 0")
    return DiagonalOperator(values)


def _symmetry_error(M: Tensor) -> float:
    return float((M - M.T).norm() / M.norm().clamp_min(torch.finfo(M.dtype).tiny))


def _symmetry_tol(dtype: torch.dtype) -> float:
    return math.sqrt(torch.finfo(dtype).eps)


def adam_metric(optimizer: torch.optim.Optimizer, params=None) -> DiagonalOperator:
    """The metric Adam preconditions with, ``diag(sqrt(v_hat) + eps)``, read from its state.

    ``v_hat = exp_avg_sq / (1 - beta2^step)`` is Adam's bias-corrected second moment.

    Args:
        optimizer: a ``torch.optim.Adam`` (or ``AdamW``) that has taken at least one step.
        params: parameters in the order of the flat vector (default: the optimizer's, in
            the order of its parameter groups; pass ``model.parameters()`` to match
            ``lib.curvature`` operators of that model).

    Returns:
        A :class:`~lib.operators.explicit.DiagonalOperator` of shape ``(d, d)``.
    """
    if not isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        raise TypeError(f"expected torch.optim.Adam or AdamW, got {type(optimizer).__name__}")
    groups = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    params = [p for g in optimizer.param_groups for p in g["params"]] if params is None \
        else list(params)
    parts = []
    for p in params:
        state = optimizer.state.get(p, {})
        if id(p) not in groups or "exp_avg_sq" not in state:
            raise ValueError("a parameter has no Adam state: is it optimized by this "
                             "optimizer, and has the optimizer taken a step?")
        group = groups[id(p)]
        v_hat = state["exp_avg_sq"] / (1 - group["betas"][1] ** float(state["step"]))
        parts.append((v_hat.sqrt() + group["eps"]).reshape(-1))
    return DiagonalOperator(torch.cat(parts).detach())


def dense_metric(matrix: Tensor) -> DenseOperator:
    """The metric given by a dense symmetric positive-definite ``(d, d)`` matrix.

    Raises ``ValueError`` if the matrix is not square, not symmetric (relative Frobenius
    asymmetry above ``sqrt(eps)``) or not positive definite (its Cholesky factorization fails).
    """
    check_square_matrix(matrix, "the metric")
    asym = _symmetry_error(matrix)
    if asym > _symmetry_tol(matrix.dtype):
        raise ValueError(f"a metric must be symmetric; ||G - G^T|| / ||G|| = {asym:.3g}")
    matrix = 0.5 * (matrix + matrix.T)
    _, info = torch.linalg.cholesky_ex(matrix)
    if int(info) != 0:
        raise ValueError("the metric is not positive definite (Cholesky factorization failed)")
    return DenseOperator(matrix, symmetric=True)


def _as_metric(metric, d: int, dtype, device) -> LinearOperator:
    """None -> identity; (d,) tensor -> diagonal; (d, d) tensor -> dense; operator as is."""
    if metric is None:
        return euclidean_metric(d, dtype, device)
    if isinstance(metric, Tensor):
        return diagonal_metric(metric) if metric.ndim == 1 else dense_metric(metric)
    if not isinstance(metric, LinearOperator):
        raise TypeError(f"a metric must be a LinearOperator or a tensor, got {type(metric).__name__}")
    if not metric.symmetric:
        raise ValueError("a metric must be a symmetric operator")
    return metric


# --------------------------------------------------------------------------------------
# Transformation rules
# --------------------------------------------------------------------------------------
class CongruenceOperator(LinearOperator):
    """``J^-T A J^-1`` for a symmetric operator ``A`` in theta-coordinates, matrix-free.

    Each product ``V -> J^-T (A (J^-1 V))`` costs one product with ``A`` and the two
    inverse Jacobian products of the reparametrization at ``theta``.

    Attributes:
        base: the operator ``A`` in theta-coordinates.
        reparam, theta: the reparametrization and the point (theta-coordinates).
    """

    def __init__(self, base: LinearOperator, reparam: Reparametrization, theta: Tensor):
        super().__init__(base.shape[0], base.dtype, base.device, base.symmetric)
        self.base, self.reparam = base, reparam
        self.theta = theta.to(dtype=base.dtype, device=base.device)

    def _matmat(self, V):
        W = self.reparam.inverse_jvp(self.theta, V).to(V.dtype)
        AW = self.base @ W
        return self.reparam.inverse_vjp(self.theta, AW).to(V.dtype)


def _check_reparam_point(op: LinearOperator, reparam, theta):
    if not isinstance(reparam, Reparametrization):
        raise TypeError(f"reparam must be a Reparametrization, got {type(reparam).__name__}")
    if not isinstance(theta, Tensor) or theta.ndim != 1 or theta.shape[0] != op.shape[0]:
        shape = tuple(theta.shape) if isinstance(theta, Tensor) else type(theta).__name__
        raise ValueError(f"theta has shape {shape}, but the operator has shape {op.shape}")


def pullback_metric(metric, reparam: Reparametrization, theta: Tensor) -> CongruenceOperator:
    """The metric in psi-coordinates, ``G_psi = J^-T G J^-1``, at ``psi = phi(theta)``.

    This is what makes the metric a geometric object: lengths ``v^T G v`` of tangent
    vectors are the same in both coordinates, since ``v`` becomes ``J v``.

    Args:
        metric: ``G`` in theta-coordinates: a symmetric positive-definite operator, a
            ``(d,)`` tensor (diagonal), a ``(d, d)`` tensor (dense), or ``None``
            (Euclidean); tensors are validated.
        reparam: the reparametrization ``phi``.
        theta: the point, shape ``(d,)``, in theta-coordinates.

    Returns:
        A symmetric operator ``(d, d)``, matrix-free; it can be pulled back again.
    """
    if not isinstance(theta, Tensor):
        raise TypeError(f"theta must be a tensor, got {type(theta).__name__}")
    if isinstance(metric, LinearOperator):
        G = _as_metric(metric, metric.shape[0], metric.dtype, metric.device)
    else:
        G = _as_metric(metric, theta.shape[0], theta.dtype, theta.device)
    _check_reparam_point(G, reparam, theta)
    return CongruenceOperator(G, reparam, theta)


def _warn_if_gradient(gradient, tol):
    if gradient is not None:
        check_critical_point(gradient, tol)


def transform_hessian_at_critical_point(H_theta, reparam: Reparametrization, theta: Tensor, *,
                                        gradient=None, tol: float = 1e-6) -> CongruenceOperator:
    """The Hessian in psi-coordinates, ``J^-T H J^-1``, valid at a critical point.

    By the chain rule, the Hessian of ``L o phi^-1`` at ``psi`` is
    ``J^-T H J^-1 + sum_k (dL/dtheta_k) d^2 theta_k / d psi^2``. The second term vanishes
    only where the gradient is zero, so the rule (and the invariance built on it) holds
    at critical points, e.g. the minima the book studies; elsewhere the Euclidean Hessian
    is not a tensor (one would need the Riemannian Hessian with its connection terms).

    Args:
        H_theta: symmetric operator or ``(d, d)`` tensor in theta-coordinates.
        reparam, theta: the reparametrization and the point ``(d,)``.
        gradient: optional gradient at ``theta``; a ``UserWarning`` is issued if its norm
            exceeds ``tol`` (see :func:`check_critical_point`).
    """
    H = _as_symmetric_operator(H_theta, "H")
    _check_reparam_point(H, reparam, theta)
    _warn_if_gradient(gradient, tol)
    return CongruenceOperator(H, reparam, theta)


def transform_vector(v: Tensor, reparam: Reparametrization, theta: Tensor) -> Tensor:
    """A tangent vector (e.g. a step ``theta' - theta``) in psi-coordinates: ``J v``.

    ``v``: ``(d,)`` or ``(d, k)``; same shape back.
    """
    return reparam.jvp(theta, v)


def transform_covector(g: Tensor, reparam: Reparametrization, theta: Tensor) -> Tensor:
    """A covector (e.g. the gradient ``dL/dtheta``) in psi-coordinates: ``J^-T g``.

    ``g``: ``(d,)`` or ``(d, k)``; same shape back.
    """
    return reparam.inverse_vjp(theta, g)


def transform_density_lebesgue(log_p_theta, reparam: Reparametrization, theta: Tensor) -> Tensor:
    """Log-density w.r.t. the Lebesgue measure in psi-coordinates at ``psi = phi(theta)``.

    ``log q(psi) = log p(theta) - log |det J(theta)|`` (change of variables); the result is
    a valid density on ``Psi``, but its modes generally are not ``phi`` of the modes of ``p``.

    Args:
        log_p_theta: ``log p(theta)``, a number or 0-d tensor.
        reparam, theta: the reparametrization and the point ``(d,)``.
    """
    return torch.as_tensor(log_p_theta) - reparam.log_abs_det_jacobian(theta)


def transform_density_riemannian(log_p_theta, reparam: Reparametrization | None = None,
                                 theta: Tensor | None = None) -> Tensor:
    """Log-density w.r.t. the Riemannian volume form in psi-coordinates: unchanged.

    A density w.r.t. the volume form ``sqrt(det G) dtheta`` is a scalar function: in
    psi-coordinates (with the pulled-back metric) its value at ``phi(theta)`` is its value
    at ``theta``, so its modes move with ``phi``. Relation to the Lebesgue density:
    ``log p_Lebesgue = log p_Riemannian + 0.5 log det G``, in either coordinates.
    ``reparam`` and ``theta`` are accepted for a uniform signature and not needed.
    """
    return torch.as_tensor(log_p_theta).clone()


# --------------------------------------------------------------------------------------
# Critical points
# --------------------------------------------------------------------------------------
def check_critical_point(gradient, tol: float = 1e-6) -> float:
    """Warn (``UserWarning``) when ``||gradient|| > tol``; return the norm.

    The invariance of ``E = G^-1 H`` under reparametrization needs a critical point
    (see :func:`transform_hessian_at_critical_point`).

    Args:
        gradient: flat tensor or a sequence of parameter-shaped tensors.
        tol: largest accepted Euclidean norm.
    """
    if isinstance(gradient, Tensor):
        norm = float(gradient.detach().norm())
    elif isinstance(gradient, Sequence):
        norm = float(torch.cat([g.detach().reshape(-1).double().cpu() for g in gradient]).norm())
    else:
        raise TypeError(f"gradient must be a tensor or a list of tensors, got {type(gradient).__name__}")
    if not norm <= tol:
        warnings.warn(f"gradient norm {norm:.3e} exceeds tol={tol:.1e}: the Hessian is not taken "
                      "at a critical point, so quantities of G^-1 H are not invariant under "
                      "reparametrization here", UserWarning, stacklevel=2)
    return norm


# --------------------------------------------------------------------------------------
# The Hessian operator E = G^-1 H
# --------------------------------------------------------------------------------------
def _as_symmetric_operator(H, name: str) -> LinearOperator:
    if isinstance(H, Tensor):
        if H.ndim != 2 or H.shape[0] != H.shape[1]:
            raise ValueError(f"{name} must be a square matrix, got shape {tuple(H.shape)}")
        asym = _symmetry_error(H)
        if asym > _symmetry_tol(H.dtype):
            raise ValueError(f"{name} must be symmetric; ||{name} - {name}^T|| / ||{name}|| = {asym:.3g}")
        return DenseOperator(0.5 * (H + H.T), symmetric=True)
    if not isinstance(H, LinearOperator):
        raise TypeError(f"{name} must be a LinearOperator or a tensor, got {type(H).__name__}")
    if not H.symmetric:
        raise ValueError(f"{name} must be a symmetric operator")
    return H


class _Factor:
    """A factorization ``G = B B^T`` known through ``B^-1 V`` and ``B^-T V``."""

    def __init__(self, inv, inv_t):
        self.inv, self.inv_t = inv, inv_t


def _factor(G: LinearOperator) -> _Factor | None:
    """``G = B B^T`` for identity, diagonal, dense metrics, operators with an
    ``inverse_sqrt()`` method (K-FAC), and pull-backs of these; else None."""
    if isinstance(G, IdentityOperator):
        return _Factor(lambda V: V, lambda V: V)
    if isinstance(G, DiagonalOperator):
        if bool((G.values <= 0).any()):
            raise ValueError("the diagonal metric is not positive definite")
        s = G.values.sqrt()
        return _Factor(lambda V: V / s[:, None].to(V.dtype), lambda V: V / s[:, None].to(V.dtype))
    if isinstance(G, DenseOperator):
        L, info = torch.linalg.cholesky_ex(0.5 * (G.matrix + G.matrix.T))
        if int(info) != 0:
            raise ValueError("the dense metric is not positive definite (Cholesky failed)")
        return _Factor(
            lambda V: torch.linalg.solve_triangular(L, V.to(L.dtype), upper=False),
            lambda V: torch.linalg.solve_triangular(L.T, V.to(L.dtype), upper=True))
    if callable(getattr(G, "inverse_sqrt", None)):
        # Operators that know their symmetric inverse square root (K-FAC, EKFAC): B = G^1/2.
        S = G.inverse_sqrt()
        return _Factor(lambda V: S @ V, lambda V: S @ V)
    if isinstance(G, CongruenceOperator):
        # J^-T G J^-1 = (J^-T B)(J^-T B)^T: B_psi^-1 = B^-1 J^T, B_psi^-T = J B^-T.
        base = _factor(G.base)
        if base is None:
            return None
        r, th = G.reparam, G.theta
        return _Factor(lambda V: base.inv(r.vjp(th, V)), lambda V: r.jvp(th, base.inv_t(V)))
    return None


class _WhitenedOperator(LinearOperator):
    """``B^-1 H B^-T``: symmetric and similar to ``G^-1 H`` when ``G = B B^T``."""

    def __init__(self, H: LinearOperator, factor: _Factor):
        super().__init__(H.shape[0], H.dtype, H.device, True)
        self.H, self.factor = H, factor

    def _matmat(self, V):
        return self.factor.inv(self.H @ self.factor.inv_t(V).to(V.dtype)).to(V.dtype)


class InvariantHessianOperator(LinearOperator):
    """``E = G^-1 H`` for a symmetric Hessian ``H`` and a metric ``G``; see :func:`hessian_operator`.

    A :class:`~lib.operators.base.LinearOperator` (not symmetric in general, but similar to
    a symmetric one, so its eigenvalues are real) with the whole method set. For identity,
    diagonal and dense metrics (and their pull-backs, and K-FAC) the metric is known as
    ``G = B B^T`` and all spectral quantities use the symmetric, similar operator
    ``S = B^-1 H B^-T`` (the attribute ``whitened``), so ``eigvalsh`` can run Lanczos. For other
    operator metrics (e.g. a damped GGN) only products with ``G^-1`` by conjugate
    gradients are available: ``trace`` works (``tr(G^-1 H)``), ``logdet`` whitens the
    materialized ``H`` with a Cholesky factor of the materialized ``G`` (``"exact"``) or
    uses ``log det H - log det G`` by SLQ, and ``eigvalsh`` runs Lanczos on ``G^-1 H`` in
    the ``G``-inner product, where it is self-adjoint (one CG solve per step).

    ``trace``, ``logdet`` and ``eigvalsh`` are its own (listed in ``exact``), so the
    estimators of :mod:`lib.operators.spectral` defer to them; the method is a keyword.

    Attributes:
        H, G: the operators. whitened: ``S`` or ``None`` for operator metrics.
    """

    exact = frozenset({"to_dense", "trace", "logdet", "eigvalsh", "solve", "inverse"})

    def __init__(self, H: LinearOperator, G: LinearOperator, cg_tol: float = 1e-10):
        super().__init__(H.shape[0], H.dtype, H.device, isinstance(G, IdentityOperator), H.param_shapes)
        self.H, self.G = H, G
        self.factor = _factor(G)
        self.whitened = None if self.factor is None else _WhitenedOperator(H, self.factor)
        self.cg_tol = cg_tol

    def _matmat(self, V):
        """``G^-1 (H V)``: with the metric's exact inverse, its factor ``G^-1 = B^-T B^-1``,
        or CG solves."""
        HV = self.H._matmat(V.to(self.H.dtype))
        if self._has_exact_inverse():
            return (self.G.inverse() @ HV).to(V.dtype)
        if self.factor is not None:
            return self.factor.inv_t(self.factor.inv(HV).to(V.dtype)).to(V.dtype)
        return (DampedInverseOperator(self.G, 0.0, tol=self.cg_tol) @ HV).to(V.dtype)

    def _has_exact_inverse(self) -> bool:
        """Whether the metric's own closed-form inverse is cheap (diagonal, K-FAC); identity and
        dense metrics are whitened instead."""
        return "inverse" in self.G.exact and not isinstance(self.G, (IdentityOperator, DenseOperator))

    def _product(self) -> LinearOperator:
        """``G^-1 H`` as an operator, for the trace: with the metric's own exact inverse if
        it has one (one product per vector, e.g. K-FAC, diagonal), else the whitened
        operator, else CG solves."""
        if self._has_exact_inverse():
            return ProductOperator(self.G.inverse(), self.H)
        if self.whitened is not None:
            return self.whitened  # similar to G^-1 H, same trace
        return ProductOperator(DampedInverseOperator(self.G, 0.0, tol=self.cg_tol), self.H)

    def trace(self, *, method: str = "exact", num_probes: int = 30, seed: int = 0) -> float:
        """``tr(G^-1 H)``; ``method`` in ``("exact", "hutchinson", "hutchpp")``.

        ``"exact"`` uses ``d`` products; the stochastic methods ``num_probes`` products
        (see :func:`lib.operators.spectral.trace`). Invariant under reparametrization at a
        critical point.
        """
        if method not in TRACE_METHODS:
            raise ValueError(f"unknown trace method '{method}'; choose one of {TRACE_METHODS}")
        return _trace(self._product(), method, num_probes, seed=seed)

    def eigvalsh(self, k: int | None = None, *, method: str = "lanczos", tol: float = 1e-10,
                 seed: int = 0) -> Tensor:
        """The ``k`` largest generalized eigenvalues of ``H v = lambda G v``, ascending, shape ``(k,)``.

        ``method="lanczos"`` is matrix-free: Lanczos on ``B^-1 H B^-T`` for identity,
        diagonal, dense and pulled-back metrics (``G = B B^T``), and Lanczos on ``G^-1 H`` in
        the ``G``-inner product with CG solves (tolerance ``cg_tol``) for other operators.
        ``method="exact"`` materializes ``H`` and ``G`` (small ``d`` only) and works for
        any metric; ``k=None`` (all ``d`` eigenvalues) always does.
        """
        if method not in ("lanczos", "exact"):
            raise ValueError(f"unknown eigvalsh method '{method}'; choose 'lanczos' or 'exact'")
        k = self._check_k(k)
        if method == "exact" or k is None:
            return top_ascending(self._dense_eigenvalues(), k)
        if self.whitened is None:
            # G^-1 H is self-adjoint in the G-inner product: Lanczos there needs products
            # with H, G and G^-1 (CG), but no factorization of G.
            top = _lanczos_eigvalsh(self.H, k, method="lanczos", tol=tol, seed=seed, metric=self.G,
                                    metric_solve=DampedInverseOperator(self.G, 0.0, tol=self.cg_tol))
        else:
            top = _lanczos_eigvalsh(self.whitened, k, method="lanczos", tol=tol, seed=seed)
        return top.flip(0)

    def _dense_eigenvalues(self) -> Tensor:
        """All eigenvalues of ``G^-1 H``, ascending, from a dense symmetric matrix similar
        to it: ``B^-1 H B^-T`` with the metric's own factor ``G = B B^T`` if it has one,
        else with the Cholesky factor of the materialized ``G`` (small ``d`` only)."""
        if self.whitened is not None:
            S = self.whitened.to_dense()
        else:
            L, info = torch.linalg.cholesky_ex(_sym(self.G.to_dense()))
            if int(info) != 0:
                raise ValueError("the metric is not positive definite (Cholesky factorization "
                                 "failed)")
            Hd = _sym(self.H.to_dense()).to(L.dtype)
            X = torch.linalg.solve_triangular(L, Hd, upper=False)
            S = torch.linalg.solve_triangular(L, X.T, upper=False)
        return torch.linalg.eigvalsh(_sym(S))

    def logdet(self, *, method: str = "exact", num_probes: int = 10, num_steps: int = 30,
               seed: int = 0) -> float:
        """``log det(G^-1 H) = log det H - log det G`` (``H`` positive definite).

        ``method="exact"`` materializes (small ``d``): the eigenvalues of ``G^-1 H`` are
        those of ``B^-1 H B^-T`` (``G = B B^T``, the metric's factor or a Cholesky factor),
        a matrix congruent to ``H``, so all are positive exactly when ``H`` is positive
        definite; a sign test on ``det H`` would pass an even number of negative ones.
        ``method="slq"`` uses stochastic Lanczos quadrature (:func:`lib.operators.spectral.logdet`)
        on ``B^-1 H B^-T``, or on ``H`` and ``G`` separately for operator metrics; it
        raises when a Ritz value is not positive, which catches an indefinite ``H`` only
        as far as the Lanczos steps resolve its lowest eigenvalue.

        Raises ``ValueError`` if ``E`` has a non-positive eigenvalue (the point is not a
        strict minimum) or the metric is not positive definite.
        """
        if method == "exact":
            ev = self._dense_eigenvalues()
            if bool((ev <= 0).any()):
                raise ValueError(f"G^-1 H has a non-positive eigenvalue {float(ev.min()):.3g} "
                                 "(H is not positive definite); its log-determinant is undefined")
            return float(ev.log().sum())
        if method != "slq":
            raise ValueError(f"unknown logdet method '{method}'; choose 'exact' or 'slq'")
        if self.whitened is not None:
            return _slq_logdet(self.whitened, num_probes, num_steps, method="slq", seed=seed)
        return (_slq_logdet(self.H, num_probes, num_steps, method="slq", seed=seed)
                - _slq_logdet(self.G, num_probes, num_steps, method="slq", seed=seed))

    def to_dense(self, chunk_size: int = 256) -> Tensor:
        """The ``(d, d)`` matrix ``G^-1 H`` (not symmetric in general)."""
        Hd = self.H.to_dense()
        return torch.linalg.solve(_sym(self.G.to_dense()).to(Hd.dtype), Hd)

    def inverse(self, damping: float = 0.0) -> LinearOperator:
        """``(G^-1 H + damping I)^-1 = (H + damping G)^-1 G``: a product with ``G`` and a CG solve
        (tolerance ``cg_tol``; ``H + damping G`` must be positive definite)."""
        shifted = self.H if check_damping(damping) == 0 else self.H + damping * self.G
        return ProductOperator(DampedInverseOperator(shifted, 0.0, tol=self.cg_tol), self.G)

    def solve(self, v, damping: float = 0.0):
        """``(G^-1 H + damping I)^-1 v`` for ``v`` ``(d,)``, ``(d, k)`` or parameter-shaped
        tensors; see :meth:`inverse`."""
        return self.inverse(damping) @ v

    def __repr__(self):
        return f"InvariantHessianOperator(shape={self.shape}, metric={type(self.G).__name__})"


def _sym(M: Tensor) -> Tensor:
    return 0.5 * (M + M.T)


def hessian_operator(H, metric=None, *, gradient=None, tol: float = 1e-6,
                     cg_tol: float = 1e-10) -> InvariantHessianOperator:
    """The metric-aware Hessian operator ``E = G^-1 H``.

    Its trace, eigenvalues and log-determinant are invariant under reparametrization when
    ``H`` is taken at a critical point and ``G`` is transformed with :func:`pullback_metric`.

    Args:
        H: symmetric operator or ``(d, d)`` tensor (e.g. ``lib.curvature.hessian(...)``).
        metric: ``None`` (Euclidean), a positive ``(d,)`` tensor (diagonal), an SPD
            ``(d, d)`` tensor (dense), or a symmetric positive-definite operator.
        gradient: optional gradient at the point; warns if ``||gradient|| > tol``.
        cg_tol: relative residual of the CG solves used for general operator metrics.

    Raises:
        ValueError: non-symmetric ``H`` or metric, non-PD tensor metric, or shapes that differ.
    """
    H = _as_symmetric_operator(H, "H")
    G = _as_metric(metric, H.shape[0], H.dtype, H.device)
    if G.shape != H.shape:
        raise ValueError(f"the Hessian has shape {H.shape} but the metric has shape {G.shape}")
    _warn_if_gradient(gradient, tol)
    return InvariantHessianOperator(H, G, cg_tol=cg_tol)
