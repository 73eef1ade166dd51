"""Reparametrizations ``psi = phi(theta)`` of a flat parameter vector.

A reparametrization is a smooth bijection ``phi`` of (an open subset of) ``R^d`` with an
invertible Jacobian ``J(theta) = d psi / d theta`` of shape ``(d, d)``. Every class here
offers the same methods, all plain torch and so device- and dtype-agnostic:

* ``forward(theta) -> psi`` and ``inverse(psi) -> theta``, both of shape ``(d,)``;
* ``jacobian(theta)``: the dense ``(d, d)`` matrix ``J`` (for tests and small ``d``);
* ``jvp(theta, v) = J v`` and ``vjp(theta, u) = J^T u``;
* ``inverse_jvp(theta, w) = J^-1 w`` and ``inverse_vjp(theta, w) = J^-T w``;
* ``log_abs_det_jacobian(theta) = log |det J(theta)|`` (a 0-d tensor).

The products accept a flat vector ``(d,)`` or a block of columns ``(d, k)`` and return the
same shape; the elementwise maps never form a ``d x d`` matrix. Note that every method is
given the point ``theta`` in the *original* coordinates, also the inverse products:
``J^-1`` here means ``J(theta)^-1``, which equals the Jacobian of ``phi^-1`` at
``psi = phi(theta)``.

Points outside the domain (``log`` at ``theta <= 0``, the inverse of ``softplus`` or
``exp`` at ``psi <= 0``) and maps that are not invertible (a singular or badly
conditioned matrix, a zero scale) raise ``ValueError`` naming the problem.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["Reparametrization", "Scaling", "LinearMap", "Elementwise", "ELEMENTWISE_KINDS"]

ELEMENTWISE_KINDS = ("softplus", "exp", "log")


def _check_point(x: Tensor, name: str, dim: int | None = None) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not torch.is_floating_point(x):
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.ndim != 1:
        raise ValueError(f"{name} must be a flat vector of shape (d,), got shape {tuple(x.shape)}")
    if dim is not None and x.shape[0] != dim:
        raise ValueError(f"{name} has shape {tuple(x.shape)}, but this reparametrization "
                         f"acts on ({dim},)")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite entries")
    return x


def _check_vectors(v: Tensor, d: int, name: str) -> Tensor:
    if not isinstance(v, Tensor) or not torch.is_floating_point(v):
        raise TypeError(f"{name} must be a floating-point tensor")
    if v.ndim not in (1, 2) or v.shape[0] != d:
        raise ValueError(f"{name} has shape {tuple(v.shape)}, expected ({d},) or ({d}, k)")
    return v


class Reparametrization:
    """Base class: a bijection ``psi = phi(theta)`` of flat vectors of shape ``(d,)``."""

    def forward(self, theta: Tensor) -> Tensor:
        """``psi = phi(theta)``; ``(d,) -> (d,)``."""
        raise NotImplementedError

    def inverse(self, psi: Tensor) -> Tensor:
        """``theta = phi^-1(psi)``; ``(d,) -> (d,)``."""
        raise NotImplementedError

    def jacobian(self, theta: Tensor) -> Tensor:
        """Dense Jacobian ``J = d psi / d theta`` at ``theta``; shape ``(d, d)``."""
        raise NotImplementedError

    def jvp(self, theta: Tensor, v: Tensor) -> Tensor:
        """``J(theta) v`` for ``v`` of shape ``(d,)`` or ``(d, k)`` (same shape back)."""
        raise NotImplementedError

    def vjp(self, theta: Tensor, u: Tensor) -> Tensor:
        """``J(theta)^T u`` for ``u`` of shape ``(d,)`` or ``(d, k)``."""
        raise NotImplementedError

    def inverse_jvp(self, theta: Tensor, w: Tensor) -> Tensor:
        """``J(theta)^-1 w`` for ``w`` of shape ``(d,)`` or ``(d, k)``."""
        raise NotImplementedError

    def inverse_vjp(self, theta: Tensor, w: Tensor) -> Tensor:
        """``J(theta)^-T w`` for ``w`` of shape ``(d,)`` or ``(d, k)``."""
        raise NotImplementedError

    def log_abs_det_jacobian(self, theta: Tensor) -> Tensor:
        """``log |det J(theta)|`` as a 0-d tensor."""
        raise NotImplementedError

    def __call__(self, theta: Tensor) -> Tensor:
        return self.forward(theta)


class _DiagonalJacobian(Reparametrization):
    """Reparametrizations whose Jacobian is diagonal, ``J = diag(j(theta))``.

    Subclasses provide ``_jac_diag(theta) -> (d,)``; all products are elementwise.
    """

    def _jac_diag(self, theta: Tensor) -> Tensor:
        raise NotImplementedError

    def _checked_diag(self, theta: Tensor) -> Tensor:
        j = self._jac_diag(theta)
        if bool((j == 0).any()) or not bool(torch.isfinite(j).all()):
            raise ValueError(f"{self!r} is not invertible at this point: its Jacobian has "
                             "zero or non-finite diagonal entries (the point lies where the map "
                             "saturates or overflows)")
        return j

    @staticmethod
    def _scale(j: Tensor, v: Tensor) -> Tensor:
        j = j.to(dtype=v.dtype, device=v.device)
        return j[:, None] * v if v.ndim == 2 else j * v

    def jacobian(self, theta):
        return torch.diag(self._checked_diag(theta))

    def jvp(self, theta, v):
        j = self._checked_diag(theta)
        return self._scale(j, _check_vectors(v, j.shape[0], "v"))

    vjp = jvp  # J is diagonal, so J^T = J

    def inverse_jvp(self, theta, w):
        j = self._checked_diag(theta)
        return self._scale(1.0 / j, _check_vectors(w, j.shape[0], "w"))

    inverse_vjp = inverse_jvp

    def log_abs_det_jacobian(self, theta):
        return self._checked_diag(theta).abs().log().sum()


class Scaling(_DiagonalJacobian):
    """``psi = c * theta`` elementwise, with ``J = diag(c)``.

    Args:
        c: a nonzero finite number, or a tensor of shape ``(d,)`` with nonzero finite
            entries (then the map only accepts points of shape ``(d,)``).
    """

    def __init__(self, c):
        if isinstance(c, bool):
            raise TypeError("c must be a number or a tensor, not a bool")
        if isinstance(c, (int, float)):
            if c == 0 or not math.isfinite(c):
                raise ValueError(f"scale c must be nonzero and finite, got {c}")
            self.c = float(c)
            self.dim = None
        elif isinstance(c, Tensor):
            if c.ndim == 0:
                return self.__init__(float(c))
            if c.ndim != 1 or not torch.is_floating_point(c):
                raise ValueError(f"c must be a float vector of shape (d,), got shape "
                                 f"{tuple(c.shape)} and dtype {c.dtype}")
            if bool((c == 0).any()) or not bool(torch.isfinite(c).all()):
                raise ValueError("every entry of the scale c must be nonzero and finite")
            self.c = c
            self.dim = c.shape[0]
        else:
            raise TypeError(f"c must be a number or a tensor, got {type(c).__name__}")

    def _c(self, x: Tensor):
        return self.c if isinstance(self.c, float) else self.c.to(dtype=x.dtype, device=x.device)

    def forward(self, theta):
        theta = _check_point(theta, "theta", self.dim)
        return self._c(theta) * theta

    def inverse(self, psi):
        psi = _check_point(psi, "psi", self.dim)
        return psi / self._c(psi)

    def _jac_diag(self, theta):
        theta = _check_point(theta, "theta", self.dim)
        return torch.ones_like(theta) * self._c(theta)

    def __repr__(self):
        return f"Scaling(c={'vector of ' + str(self.dim) if self.dim else self.c})"


class LinearMap(Reparametrization):
    """``psi = A theta`` for an invertible ``(d, d)`` matrix ``A``; ``J = A`` everywhere.

    The inverse products use one LU factorization of ``A``, computed once. Points and
    vectors are cast to ``A``'s dtype and device.

    Args:
        A: square matrix ``(d, d)``.
        max_condition: largest accepted 2-norm condition number (default ``1e12``);
            beyond it the inverse map would lose most digits, so ``ValueError``.
    """

    def __init__(self, A: Tensor, max_condition: float = 1e12):
        if not isinstance(A, Tensor) or not torch.is_floating_point(A):
            raise TypeError("A must be a floating-point tensor")
        if A.ndim != 2 or A.shape[0] != A.shape[1]:
            raise ValueError(f"A must be a square matrix, got shape {tuple(A.shape)}")
        if not bool(torch.isfinite(A).all()):
            raise ValueError("A contains NaN or infinite entries")
        cond = float(torch.linalg.cond(A))
        if not math.isfinite(cond) or cond > max_condition:
            raise ValueError(f"A is singular or too ill-conditioned to invert (condition number "
                             f"{cond:.3g} > {max_condition:.0e})")
        self.A = A
        self.dim = A.shape[0]
        self._LU, self._pivots = torch.linalg.lu_factor(A)

    def _vec(self, v, name):
        return _check_vectors(v, self.dim, name).to(dtype=self.A.dtype, device=self.A.device)

    def _solve(self, w: Tensor, adjoint: bool) -> Tensor:
        B = w if w.ndim == 2 else w[:, None]
        X = torch.linalg.lu_solve(self._LU, self._pivots, B, adjoint=adjoint)
        return X if w.ndim == 2 else X[:, 0]

    def forward(self, theta):
        return self.A @ self._vec(_check_point(theta, "theta", self.dim), "theta")

    def inverse(self, psi):
        return self._solve(self._vec(_check_point(psi, "psi", self.dim), "psi"), adjoint=False)

    def jacobian(self, theta):
        _check_point(theta, "theta", self.dim)
        return self.A.clone()

    def jvp(self, theta, v):
        return self.A @ self._vec(v, "v")

    def vjp(self, theta, u):
        return self.A.T @ self._vec(u, "u")

    def inverse_jvp(self, theta, w):
        return self._solve(self._vec(w, "w"), adjoint=False)

    def inverse_vjp(self, theta, w):
        return self._solve(self._vec(w, "w"), adjoint=True)

    def log_abs_det_jacobian(self, theta):
        return torch.linalg.slogdet(self.A).logabsdet

    def __repr__(self):
        return f"LinearMap(d={self.dim})"


class Elementwise(_DiagonalJacobian):
    """An elementwise nonlinear bijection ``psi_i = f(theta_i)``.

    Kinds:
        ``"softplus"``: ``psi = log(1 + exp(theta))`` on ``R -> (0, inf)``, Jacobian
        ``sigmoid(theta)``, inverse ``log(expm1(psi))`` (needs ``psi > 0``).
        ``"exp"``: ``psi = exp(theta)``, inverse ``log(psi)`` (needs ``psi > 0``).
        ``"log"``: ``psi = log(theta)`` (needs ``theta > 0``), inverse ``exp(psi)``.

    All formulas are written in their numerically stable forms (no threshold
    switching), so the Jacobian is the exact derivative of ``forward``.
    """

    def __init__(self, kind: str):
        if kind not in ELEMENTWISE_KINDS:
            raise ValueError(f"unknown elementwise kind '{kind}'; choose one of {ELEMENTWISE_KINDS}")
        self.kind = kind

    def _check_domain(self, theta):
        theta = _check_point(theta, "theta")
        if self.kind == "log" and bool((theta <= 0).any()):
            raise ValueError(f"log reparametrization needs theta > 0, got min(theta) = "
                             f"{float(theta.min()):.3g}")
        return theta

    def forward(self, theta):
        theta = self._check_domain(theta)
        if self.kind == "softplus":
            return theta.clamp_min(0) + torch.log1p(torch.exp(-theta.abs()))
        if self.kind == "exp":
            psi = torch.exp(theta)
            if not bool(torch.isfinite(psi).all()):
                raise ValueError("exp reparametrization overflows at this point")
            return psi
        return torch.log(theta)

    def inverse(self, psi):
        psi = _check_point(psi, "psi")
        if self.kind in ("softplus", "exp") and bool((psi <= 0).any()):
            raise ValueError(f"the inverse of the {self.kind} reparametrization needs psi > 0, "
                             f"got min(psi) = {float(psi.min()):.3g}")
        if self.kind == "softplus":
            return psi + torch.log(-torch.expm1(-psi))  # = log(expm1(psi)), stable
        if self.kind == "exp":
            return torch.log(psi)
        return torch.exp(psi)

    def _jac_diag(self, theta):
        theta = self._check_domain(theta)
        if self.kind == "softplus":
            return torch.sigmoid(theta)
        if self.kind == "exp":
            return torch.exp(theta)
        return 1.0 / theta

    def __repr__(self):
        return f"Elementwise('{self.kind}')"
