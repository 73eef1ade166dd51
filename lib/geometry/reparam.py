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

from .._checks import check_square_matrix, check_vector

__all__ = ["Reparametrization", "Scaling", "LinearMap", "Elementwise", "WeightNorm",
           "ELEMENTWISE_FUNCTIONS"]

ELEMENTWISE_FUNCTIONS = ("softplus", "exp", "log")


def _check_point(x: Tensor, name: str, dim: int | None = None) -> Tensor:
    """A finite flat ``(d,)`` floating-point point (``d == dim`` when given)."""
    return check_vector(x, name, dim, owner="this reparametrization acts on")


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
        check_square_matrix(A, "A")
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

    Functions (``function``):
        ``"softplus"``: ``psi = log(1 + exp(theta))`` on ``R -> (0, inf)``, Jacobian
        ``sigmoid(theta)``, inverse ``log(expm1(psi))`` (needs ``psi > 0``).
        ``"exp"``: ``psi = exp(theta)``, inverse ``log(psi)`` (needs ``psi > 0``).
        ``"log"``: ``psi = log(theta)`` (needs ``theta > 0``), inverse ``exp(psi)``.

    All formulas are written in their numerically stable forms (no threshold
    switching), so the Jacobian is the exact derivative of ``forward``.
    """

    def __init__(self, function: str):
        if function not in ELEMENTWISE_FUNCTIONS:
            raise ValueError(f"unknown elementwise function '{function}'; choose one of "
                             f"{ELEMENTWISE_FUNCTIONS}")
        self.function = function

    def _check_domain(self, theta):
        theta = _check_point(theta, "theta")
        if self.function == "log" and bool((theta <= 0).any()):
            raise ValueError(f"log reparametrization needs theta > 0, got min(theta) = "
                             f"{float(theta.min()):.3g}")
        return theta

    def forward(self, theta):
        theta = self._check_domain(theta)
        if self.function == "softplus":
            return theta.clamp_min(0) + torch.log1p(torch.exp(-theta.abs()))
        if self.function == "exp":
            psi = torch.exp(theta)
            if not bool(torch.isfinite(psi).all()):
                raise ValueError("exp reparametrization overflows at this point")
            return psi
        return torch.log(theta)

    def inverse(self, psi):
        psi = _check_point(psi, "psi")
        if self.function in ("softplus", "exp") and bool((psi <= 0).any()):
            raise ValueError(f"the inverse of the {self.function} reparametrization needs psi > 0, "
                             f"got min(psi) = {float(psi.min()):.3g}")
        if self.function == "softplus":
            return psi + torch.log(-torch.expm1(-psi))  # = log(expm1(psi)), stable
        if self.function == "exp":
            return torch.log(psi)
        return torch.exp(psi)

    def _jac_diag(self, theta):
        theta = self._check_domain(theta)
        if self.function == "softplus":
            return torch.sigmoid(theta)
        if self.function == "exp":
            return torch.exp(theta)
        return 1.0 / theta

    def __repr__(self):
        return f"Elementwise('{self.function}')"


# --------------------------------------------------------------------------------------
# WeightNorm
# --------------------------------------------------------------------------------------
def _stereo_forward_rows(W: Tensor, e0: Tensor, B: Tensor) -> Tensor:
    """Rows ``w`` (m, n) -> ``(r, u)`` (m, n): radius and stereographic chart of ``w/r``."""
    r = torch.linalg.vector_norm(W, dim=1)
    eta = W / r[:, None]
    c = (eta * e0).sum(1)
    u = torch.einsum("mnk,mn->mk", B, eta) / (1 + c)[:, None]
    return torch.cat([r[:, None], u], dim=1)


def _stereo_inverse_rows(P: Tensor, e0: Tensor, B: Tensor) -> Tensor:
    """Inverse of :func:`_stereo_forward_rows`: ``(r, u)`` (m, n) -> rows ``w`` (m, n)."""
    r, u = P[:, 0], P[:, 1:]
    s = (u * u).sum(1)
    eta = ((1 - s)[:, None] * e0 + 2 * torch.einsum("mnk,mk->mn", B, u)) / (1 + s)[:, None]
    return r[:, None] * eta


class WeightNorm(Reparametrization):
    """Polar (weight-norm) coordinates for the rows of weight matrices, a true bijection.

    The flat parameter vector is the concatenation of parameters of the given shapes
    (e.g. a model's ``[p.shape for p in model.parameters()]``). Each *normalized*
    parameter is a matrix ``W`` of shape ``(out, n)`` (a linear layer's weight); each row
    ``w in R^n \\ {0}`` is written in polar form ``w = r eta`` with the length
    ``r = ||w|| > 0`` (one scale per output unit) and the direction ``eta = w / r`` on
    the sphere ``S^{n-1}``. All other parameters (biases) are left unchanged.

    **The extra degree of freedom.** Salimans & Kingma's practical WeightNorm uses
    ``w = g v / ||v||`` with ``v in R^n`` and ``g in R``: ``n + 1`` numbers per unit for
    ``n`` degrees of freedom. The loss does not depend on ``||v||``, so its Hessian in
    ``(v, g)`` is singular along ``v`` (only a prior on ``v`` makes it invertible) and
    ``(v, g)`` is not a reparametrization of ``R^d``. This class keeps both views apart:

    * :meth:`to_vg` / :meth:`from_vg` give the over-parametrized ``(v, g)`` coordinates
      (``d + units`` numbers, with the convention of ``torch.nn.utils.weight_norm`` on an
      existing layer: ``v = w``, ``g = ||w||``). They are what a naive practitioner
      differentiates; they are *not* used by the ``Reparametrization`` methods.
    * The ``Reparametrization`` itself removes the extra degree of freedom by fixing
      ``||v|| = 1`` (so ``v = eta``) and describing the direction by ``n - 1``
      stereographic coordinates: with a fixed reference direction ``e0`` per row and an
      orthonormal basis ``B`` (``n x (n-1)``) of its orthogonal complement,
      ``u = B^T eta / (1 + e0^T eta)``, inverse
      ``eta = ((1 - |u|^2) e0 + 2 B u) / (1 + |u|^2)``. Each row maps to ``(r, u)`` in
      ``(0, inf) x R^{n-1}``, stored in the row's ``n`` slots (``r`` first), so ``psi``
      has exactly ``d`` coordinates and the Jacobian is block-diagonal with one
      ``n x n`` block per row. The chart covers every direction except ``-e0``; choose
      ``reference`` (e.g. the point you work at, where then ``u = 0``) so the points of
      interest are far from it. For ``n = 1`` the sphere is ``{+1, -1}``, the direction
      is the fixed sign of ``e0`` and the map is ``w -> |w|`` on that half-line.

    ``log |det J| = sum_rows [(n-1) log((1 + |u|^2) / 2) - (n-1) log r]`` (polar volume
    ``r^{n-1} dr dS`` and the stereographic area factor); the implementation obtains the
    blocks by automatic differentiation of the row map (exact, ``O(out n^3)`` per
    solve, meant for small layers) and tests check them against the closed form.

    Args:
        param_shapes: shapes of the parameters making up the flat vector, in order.
        normalize: indices of the parameters to normalize (each must be 2-D); default:
            every 2-D parameter.
        reference: optional flat point ``(d,)`` whose row directions become the charts'
            reference directions ``e0``; default ``e0 = `` the first standard basis vector.
            A zero row in ``reference`` raises ``ValueError``.
        pole_tol: points whose direction has ``1 + e0^T eta <= pole_tol`` are outside the
            chart (``ValueError``).
    """

    def __init__(self, param_shapes, normalize=None, reference: Tensor | None = None, *,
                 pole_tol: float = 1e-8):
        shapes = [tuple(int(s) for s in shape) for shape in param_shapes]
        if not shapes:
            raise ValueError("param_shapes is empty")
        if normalize is None:
            normalize = [i for i, s in enumerate(shapes) if len(s) == 2]
        normalize = sorted(set(int(i) for i in normalize))
        if not normalize:
            raise ValueError("WeightNorm needs at least one 2-D parameter to normalize")
        for i in normalize:
            if not 0 <= i < len(shapes) or len(shapes[i]) != 2 or min(shapes[i]) < 1:
                raise ValueError(f"parameter {i} cannot be weight-normalized: it must be a "
                                 f"non-empty matrix (out, in), got shape "
                                 f"{shapes[i] if 0 <= i < len(shapes) else 'out of range'}")
        self.param_shapes, self.normalize = shapes, normalize
        numels = [math.prod(s) for s in shapes]
        offsets = [sum(numels[:i]) for i in range(len(shapes))]
        self.dim = sum(numels)
        self.blocks = [(offsets[i], shapes[i][0], shapes[i][1]) for i in normalize]
        self.num_units = sum(out for _, out, _ in self.blocks)
        self.pole_tol = float(pole_tol)
        if reference is not None:
            reference = _check_point(reference, "reference", self.dim).detach().to(torch.float64)
        self._charts = []
        for start, out, n in self.blocks:
            if reference is None:
                e0 = torch.zeros(out, n, dtype=torch.float64)
                e0[:, 0] = 1.0
            else:
                W = reference[start:start + out * n].reshape(out, n)
                norms = torch.linalg.vector_norm(W, dim=1)
                if bool((norms == 0).any()):
                    raise ValueError("reference has a zero row in a weight-normalized matrix; its "
                                     "direction (the chart's reference) is undefined")
                e0 = W / norms[:, None]
            Q, _ = torch.linalg.qr(e0[:, :, None], mode="complete")  # Q[:, :, 0] = +-e0
            self._charts.append((e0, Q[:, :, 1:].contiguous()))

    # ---- helpers -----------------------------------------------------------------
    def _chart(self, b: int, x: Tensor):
        e0, B = self._charts[b]
        return e0.to(dtype=x.dtype, device=x.device), B.to(dtype=x.dtype, device=x.device)

    def _rows(self, x: Tensor, b: int) -> Tensor:
        start, out, n = self.blocks[b]
        return x[start:start + out * n].reshape(out, n)

    def _map_blocks(self, x: Tensor, fn) -> Tensor:
        pieces, pos = [], 0
        for b, (start, out, n) in enumerate(self.blocks):
            pieces.append(x[pos:start])
            pieces.append(fn(b, self._rows(x, b)).reshape(-1))
            pos = start + out * n
        pieces.append(x[pos:])
        return torch.cat(pieces)

    def _check_rows(self, theta: Tensor):
        for b in range(len(self.blocks)):
            W = self._rows(theta, b)
            norms = torch.linalg.vector_norm(W, dim=1)
            if bool((norms == 0).any()):
                raise ValueError("WeightNorm is undefined at a zero row of a weight matrix "
                                 "(its direction does not exist)")
            e0, _ = self._chart(b, theta)
            c = (W * e0).sum(1) / norms
            if bool((1 + c <= self.pole_tol).any()):
                raise ValueError("a row direction lies at the antipode -e0 of the stereographic "
                                 "chart's reference direction; pass a `reference` point nearer "
                                 "to it")

    def _jac_blocks(self, theta: Tensor) -> list[Tensor]:
        theta = _check_point(theta, "theta", self.dim)
        self._check_rows(theta)
        blocks = []
        for b in range(len(self.blocks)):
            e0, B = self._chart(b, theta)

            def row_map(w, e, Bm):
                return _stereo_forward_rows(w[None], e[None], Bm[None])[0]

            W = self._rows(theta, b).detach()
            blocks.append(torch.func.vmap(torch.func.jacrev(row_map))(W, e0, B))
        return blocks

    def _apply_blocks(self, theta: Tensor, v: Tensor, op) -> Tensor:
        v = _check_vectors(v, self.dim, "v")
        J = self._jac_blocks(theta)
        out = v.clone()
        for b, (start, rows, n) in enumerate(self.blocks):
            Jb = J[b].to(dtype=v.dtype, device=v.device)
            seg = v[start:start + rows * n]
            V = seg.reshape(rows, n, -1)
            res = op(Jb, V)
            out[start:start + rows * n] = res.reshape(seg.shape)
        return out

    # ---- Reparametrization API ----------------------------------------------------
    def forward(self, theta):
        theta = _check_point(theta, "theta", self.dim)
        self._check_rows(theta)
        return self._map_blocks(theta, lambda b, W: _stereo_forward_rows(W, *self._chart(b, W)))

    def inverse(self, psi):
        psi = _check_point(psi, "psi", self.dim)
        for b in range(len(self.blocks)):
            if bool((self._rows(psi, b)[:, 0] <= 0).any()):
                raise ValueError("the inverse of WeightNorm needs every row length r > 0")
        return self._map_blocks(psi, lambda b, P: _stereo_inverse_rows(P, *self._chart(b, P)))

    def jacobian(self, theta):
        J = torch.eye(self.dim, dtype=theta.dtype, device=theta.device)
        for Jb, (start, rows, n) in zip(self._jac_blocks(theta), self.blocks):
            J[start:start + rows * n, start:start + rows * n] = torch.block_diag(*Jb)
        return J

    def jvp(self, theta, v):
        return self._apply_blocks(theta, v, lambda J, V: J @ V)

    def vjp(self, theta, u):
        return self._apply_blocks(theta, u, lambda J, V: J.transpose(1, 2) @ V)

    def inverse_jvp(self, theta, w):
        return self._apply_blocks(theta, w, lambda J, V: torch.linalg.solve(J, V))

    def inverse_vjp(self, theta, w):
        return self._apply_blocks(theta, w, lambda J, V: torch.linalg.solve(J.transpose(1, 2), V))

    def log_abs_det_jacobian(self, theta):
        blocks = self._jac_blocks(theta)
        return sum(torch.linalg.slogdet(Jb).logabsdet.sum() for Jb in blocks)

    # ---- over-parametrized (v, g) coordinates ------------------------------------
    @property
    def vg_dim(self) -> int:
        """Number of ``(v, g)`` coordinates: ``d + units``."""
        return self.dim + self.num_units

    def to_vg(self, theta: Tensor) -> Tensor:
        """Flat ``(v, g)`` coordinates (``d + units``) of ``theta``: ``v = w``, ``g = ||w||``.

        Layout: the parameters in order, each normalized matrix replaced by its ``v``
        (same shape, flattened) followed by ``g`` (one per row). Zero rows raise
        ``ValueError``.
        """
        theta = _check_point(theta, "theta", self.dim)
        pieces, pos = [], 0
        for b, (start, rows, n) in enumerate(self.blocks):
            W = self._rows(theta, b)
            g = torch.linalg.vector_norm(W, dim=1)
            if bool((g == 0).any()):
                raise ValueError("to_vg is undefined at a zero row of a weight matrix")
            pieces += [theta[pos:start], W.reshape(-1), g]
            pos = start + rows * n
        pieces.append(theta[pos:])
        return torch.cat(pieces)

    def from_vg(self, vg: Tensor) -> Tensor:
        """``theta`` from flat ``(v, g)`` coordinates: each row ``w = g v / ||v||``.

        Differentiable (use it inside a loss for the naive ``(v, g)`` Hessian); a zero
        ``v`` row raises ``ValueError``.
        """
        vg = _check_point(vg, "vg", self.vg_dim)
        pieces, pos, shift = [], 0, 0
        for start, rows, n in self.blocks:
            pieces.append(vg[pos + shift:start + shift])
            V = vg[start + shift:start + shift + rows * n].reshape(rows, n)
            g = vg[start + shift + rows * n:start + shift + rows * n + rows]
            norms = torch.linalg.vector_norm(V, dim=1)
            if bool((norms == 0).any()):
                raise ValueError("from_vg is undefined at a zero row of v")
            pieces.append((g[:, None] * V / norms[:, None]).reshape(-1))
            pos = start + rows * n
            shift += rows
        pieces.append(vg[pos + shift:])
        return torch.cat(pieces)

    def __repr__(self):
        return f"WeightNorm(d={self.dim}, units={self.num_units}, blocks={self.blocks})"
