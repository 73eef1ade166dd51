"""Quotient geometry of a whole model: the weights modulo their symmetries.

The points of one orbit of a symmetry group compute the same network, so sharpness should
be measured on the quotient space (da Silva et al. 2025, ``dasilva2025hideseek``; Absil et
al. 2008). :class:`QuotientGeometry` represents it in the total space at the current
weights ``w``, block by block:

* the ``GL(dh)`` pairs of every ``nn.MultiheadAttention`` head (:mod:`lib.geometry.attention`)
  get an invariant metric, its horizontal projection and second-order geodesics
  (:mod:`lib.geometry.gl_pairs`; ``metric_name`` ``"inv"``, eq. 15, or ``"mix"``, eq. 34);
* rescale pairs (a module's ``rescale_pairs`` attribute) get the ``GL(1)`` metric and its
  exact geodesics (:mod:`lib.geometry.rescale`);
* every other trainable weight is treated as in adaptive sharpness (App. C.1): the norm is
  ``||xi / |w| ||_2``, and the perturbation is the straight line ``w + xi``.

The squared norms of all blocks add. :class:`QuotientGeometry` puts this together for a whole model.

It implements the geometry protocol of :func:`lib.geometry.auto_pgd.auto_pgd`
(``norm / project / ascent_direction / perturb / random``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

from .._checks import (check_bool, check_choice, check_module, check_positive, check_real,
                       check_shape_like)
from .attention import attention_modules, parameter_prefix
from .gl_pairs import METRIC_NAMES, GLPoint, check_full_rank
from .rescale import (check_nonzero, rescale_geodesic, rescale_horizontal, rescale_metric,
                      rescale_riemannian_gradient)

__all__ = ["QuotientGeometry", "SYMMETRIES"]

SYMMETRIES = ("attention", "rescale")


def _check_symmetries(symmetries) -> tuple[str, ...]:
    """The symmetry names (None: all of ``SYMMETRIES``) as a tuple; TypeError/ValueError."""
    if symmetries is None:
        return SYMMETRIES
    if isinstance(symmetries, str):
        symmetries = (symmetries,)
    if not isinstance(symmetries, Iterable):
        raise TypeError(f"symmetries must be None or an iterable of names, got "
                        f"{type(symmetries).__name__}")
    symmetries = tuple(symmetries)
    bad = [s for s in symmetries if s not in SYMMETRIES]
    if bad:
        raise ValueError(f"unknown symmetries {bad}; choose from {', '.join(SYMMETRIES)}")
    return symmetries


def _rescale_names(model: nn.Module) -> list[tuple[str, str]]:
    """``(name_u, name_v)`` of every rescale pair that ``model``'s modules declare."""
    params = dict(model.named_parameters())
    pairs = []
    for name, m in model.named_modules():
        for entry in getattr(m, "rescale_pairs", ()):
            if not (isinstance(entry, tuple) and len(entry) == 2):
                raise TypeError(f"{name or 'model'}.rescale_pairs must hold (name_u, name_v) "
                                f"tuples, got {entry!r}")
            nu, nv = (parameter_prefix(name) + e for e in entry)
            if nu not in params or nv not in params:
                raise ValueError(f"rescale pair {entry} of {name or 'model'!r} does not name "
                                 "parameters of that module")
            if params[nu].shape != params[nv].shape:
                raise ValueError(f"rescale pair {nu}, {nv} must have equal shapes")
            pairs.append((nu, nv))
    return pairs


class QuotientGeometry:
    """Quotient geometry of a whole model at its current weights (the base point ``w``).

    Attention pairs use the ``GL(dh)`` quotient metric, rescale pairs the ``GL(1)``
    metric, and every other trainable weight the adaptive norm ``||xi / |w| ||_2`` with a
    straight-line step (App. C.1); squared norms add. Tangent vectors are dicts
    ``{trainable parameter name: tensor shaped like it}``.

    Args:
        model: the network; its weights are copied (detached) and never modified.
        metric_name: which invariant metric of the ``GL(dh)`` pairs: ``"inv"`` (eq. 15) or
            ``"mix"`` (eq. 34).
        eps: relaxation ``>= 0`` added to the attention Gram matrices; with 0 every pair
            must have full rank.
        symmetries: None (all found), or a subset of ``("attention", "rescale")``.
            Attention: every ``nn.MultiheadAttention`` whose packed weights are trainable.
            Rescale: every module attribute ``rescale_pairs = ((name_u, name_v), ...)``.
        geodesic_norm: False measures attention blocks with the adaptive norm instead
            of the metric (the ablation of Figs. 9-10). Perturbations stay in the
            metric's horizontal space, but the projection onto it is the one orthogonal
            in the adaptive norm (:meth:`~lib.geometry.gl_pairs.GLPoint.horizontal_adaptive`), so that Auto-PGD
            ascends along the steepest feasible direction.
        second_order: False moves attention and rescale blocks on the straight line
            ``w + xi`` instead of the (second-order or exact) geodesic.

    Weights that are exactly zero among the "other" ones (and, with
    ``geodesic_norm=False``, in attention blocks) cannot move, since their adaptive scale
    ``|w|`` is zero: :meth:`horizontal`, :meth:`project`, :meth:`ascent_direction` and
    :meth:`random` set those entries to zero (:meth:`norm` counts a nonzero entry there
    as infinite).
    """

    radial_projection = True  # Euclidean-type norms: Auto-PGD may project by rescaling

    def __init__(self, model: nn.Module, *, metric_name: str = "inv", eps: float = 1e-6,
                 symmetries=None, geodesic_norm: bool = True, second_order: bool = True):
        check_module(model)
        self.metric_name = check_choice(metric_name, "metric_name", METRIC_NAMES)
        self.eps = check_real(eps, "eps", minimum=0.0)
        self.geodesic_norm = check_bool(geodesic_norm, "geodesic_norm")
        self.second_order = check_bool(second_order, "second_order")
        syms = _check_symmetries(symmetries)
        named = dict(model.named_parameters())
        self.params = {n: p.detach().clone() for n, p in named.items() if p.requires_grad}
        self._frozen = {n: p.detach() for n, p in named.items() if not p.requires_grad}
        self._attn = [m for m in (attention_modules(model) if "attention" in syms else [])
                      if all(n in self.params for n in m.names)]
        self._rescale = [pair for pair in (_rescale_names(model) if "rescale" in syms else [])
                         if all(n in self.params for n in pair)]
        if not self._attn and not self._rescale:
            raise ValueError("model has no trainable attention (nn.MultiheadAttention) or "
                             "rescale pairs, so there is no symmetry to quotient out; use "
                             "lib.geometry.sharpness.adaptive_sharpness / AdaptiveGeometry instead")
        covered = {n for m in self._attn for n in m.names}
        covered |= {n for pair in self._rescale for n in pair}
        self._other = [n for n in self.params if n not in covered]
        # Adaptive scales of the other weights, precomputed (Auto-PGD calls norm, horizontal
        # and riemannian_gradient several times per step): 1 / |w| (0 where w == 0) as one
        # flat vector, w^2, and masks of the weights that are exactly zero (cannot move).
        others = [self.params[n] for n in self._other]
        self._other_inv = (torch.cat([torch.where(w == 0, 0.0, 1.0 / w.abs()).reshape(-1)
                                      for w in others]) if others else None)
        self._other_sq = {n: self.params[n] ** 2 for n in self._other}
        self._other_zero = {n: self.params[n] == 0 for n in self._other
                            if bool((self.params[n] == 0).any())}
        self._points = [{pair_type: self._make_point(*GH) for pair_type, GH in m.get(self.params).items()}
                        for m in self._attn]
        for nu, nv in self._rescale:
            check_nonzero(self.params[nu], nu)
            check_nonzero(self.params[nv], nv)

    def _make_point(self, G: Tensor, H: Tensor) -> GLPoint:
        check_full_rank(G, H, self.eps)
        return GLPoint(G, H, self.metric_name, self.eps)

    # -- helpers -------------------------------------------------------------------
    def _check_vector(self, xi, name: str = "xi") -> Mapping[str, Tensor]:
        if not isinstance(xi, Mapping):
            raise TypeError(f"{name} must be a dict {{parameter name: tensor}}, got "
                            f"{type(xi).__name__}")
        missing = [n for n in self.params if n not in xi]
        extra = [n for n in xi if n not in self.params]
        if missing or extra:
            raise ValueError(f"{name} must have exactly the trainable parameters as keys; "
                             f"missing {missing}, unexpected {extra}")
        for n, p in self.params.items():
            check_shape_like(p, xi[n], f"{name}[{n!r}]")
        return xi

    def _map(self, xi, attn_fn, rescale_fn, other_fn) -> dict[str, Tensor]:
        """Apply per-block maps: ``attn_fn(point, x_G, x_H)`` returns new blocks,
        ``rescale_fn(u, v, x_u, x_v)`` a new pair, ``other_fn(name, x)`` a new tensor."""
        out = dict(xi)
        for mha, points in zip(self._attn, self._points):
            blocks = {pair_type: attn_fn(points[pair_type], *xs) for pair_type, xs in mha.get(xi).items()}
            out.update(mha.own(blocks))
        for nu, nv in self._rescale:
            out[nu], out[nv] = rescale_fn(self.params[nu], self.params[nv], xi[nu], xi[nv])
        for n in self._other:
            out[n] = other_fn(n, xi[n])
        return out

    def _mask_other(self, name: str, x: Tensor) -> Tensor:
        zero = self._other_zero.get(name)
        return x if zero is None else torch.where(zero, torch.zeros_like(x), x)

    @staticmethod
    def _scaled(x: Tensor, c: Tensor) -> Tensor:
        # x / c with 0/0 = 0 (an unmovable zero weight with zero component).
        return torch.where(x == 0, torch.zeros_like(x), x / c)

    def _attn_sq(self, point: GLPoint, x_G, x_H) -> Tensor:
        if self.geodesic_norm:
            return point.inner(x_G, x_H, x_G, x_H).sum()
        return ((self._scaled(x_G, point.G.abs()) ** 2).sum()
                + (self._scaled(x_H, point.H.abs()) ** 2).sum())

    # -- protocol ------------------------------------------------------------------
    def norm(self, xi: Mapping[str, Tensor]) -> Tensor:
        """Norm of the tangent vector ``xi`` at ``w`` (scalar tensor, differentiable)."""
        xi = self._check_vector(xi)
        p0 = next(iter(self.params.values()))
        total = torch.zeros((), dtype=p0.dtype, device=p0.device)
        for mha, points in zip(self._attn, self._points):
            for pair_type, xs in mha.get(xi).items():
                total = total + self._attn_sq(points[pair_type], *xs)
        for nu, nv in self._rescale:
            u, v = self.params[nu], self.params[nv]
            total = total + rescale_metric(u, v, xi[nu], xi[nv], xi[nu], xi[nv])
        if self._other:
            scaled = torch.cat([xi[n].reshape(-1) for n in self._other]) * self._other_inv
            total = total + (scaled * scaled).sum()
            for n, zero in self._other_zero.items():   # a zero weight that moves: infinite
                if bool((xi[n][zero] != 0).any()):
                    total = total + float("inf")
        return total.sqrt()

    def horizontal(self, xi: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Horizontal part of ``xi`` (other weights unchanged, except zero weights -> 0)."""
        xi = self._check_vector(xi)

        def attn(pt, x_G, x_H):
            if self.geodesic_norm:
                return pt.horizontal(x_G, x_H)
            # Adaptive norm: project orthogonally *in that norm* (zero weights, e.g. bias
            # rows at initialization, cannot move), so that the projected gradient is the
            # steepest ascent direction among horizontal vectors of the adaptive ball.
            return pt.horizontal_adaptive(x_G, x_H)
        return self._map(xi, attn, rescale_horizontal, self._mask_other)

    def riemannian_gradient(self, grad: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Riemannian gradient of the norm used by :meth:`norm` (not yet horizontal)."""
        grad = self._check_vector(grad, "grad")

        def attn(pt, g_G, g_H):
            if self.geodesic_norm:
                return pt.riemannian_gradient(g_G, g_H)
            return g_G * pt.G**2, g_H * pt.H**2
        return self._map(grad, attn, rescale_riemannian_gradient,
                         lambda n, g: g * self._other_sq[n])

    def project(self, xi: Mapping[str, Tensor], rho: float) -> dict[str, Tensor]:
        """Horizontal part of ``xi``, scaled down (if needed) into the ball of radius ``rho``."""
        rho = check_positive(rho, "rho")
        h = self.horizontal(xi)
        n = self.norm(h)
        scale = torch.clamp(rho / n, max=1.0) if float(n) > 0 else 1.0
        return {k: t * scale for k, t in h.items()}

    def ascent_direction(self, grad: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Horizontal Riemannian gradient of unit norm (zeros if it vanishes)."""
        d = self.horizontal(self.riemannian_gradient(grad))
        n = self.norm(d)
        if not float(n) > 0:
            return {k: torch.zeros_like(t) for k, t in d.items()}
        return {k: t / n for k, t in d.items()}

    def perturb(self, xi: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """All parameters (frozen ones included, unchanged) at the end of the (approximate)
        geodesic from ``w`` with velocity ``xi``; differentiable in ``xi``."""
        xi = self._check_vector(xi)

        def attn(pt, x_G, x_H):
            if not self.second_order:
                return pt.G + x_G, pt.H + x_H
            gam_G, gam_H = pt.christoffel(x_G, x_H)
            return pt.G + x_G - gam_G / 2, pt.H + x_H - gam_H / 2

        def rescale(u, v, x_u, x_v):
            if self.second_order:
                return rescale_geodesic(u, v, x_u, x_v)
            return u + x_u, v + x_v

        out = self._map(xi, attn, rescale, lambda n, x: self.params[n] + x)
        out.update(self._frozen)
        return out

    def random(self, rho: float, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Random horizontal vector of norm ``rho`` (Gaussian in the metric's coordinates,
        then projected and rescaled)."""
        rho = check_positive(rho, "rho")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        dev = generator.device if generator is not None else torch.device("cpu")
        z = {n: torch.randn(p.shape, generator=generator, device=dev, dtype=p.dtype).to(p.device)
             for n, p in self.params.items()}

        def attn(pt, z_G, z_H):
            if self.geodesic_norm:
                return pt.isotropic(z_G, z_H)
            return z_G * pt.G.abs(), z_H * pt.H.abs()
        xi = self._map(z, attn, lambda u, v, a, b: (a * u.abs(), b * v.abs()),
                       lambda n, x: x * self.params[n].abs())
        h = self.horizontal(xi)
        n = self.norm(h)
        return {k: t * (rho / n) for k, t in h.items()}
