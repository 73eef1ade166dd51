"""The ``GL(dh)`` pairs inside ``nn.MultiheadAttention``: finding them, reading and writing them.

In multi-head attention every head has two pairs of blocks that enter the network only
through their product ``G H^T``: query/key and value/output (da Silva et al. 2025,
``dasilva2025hideseek``, Appendix C.1; the bias rows are included). :func:`attention_pairs`
lists them, :class:`AttentionPair` reads and writes one, :class:`PackedAttention` converts
a module's packed parameters to per-head blocks and back (all heads at once), and
:func:`attention_group_action` moves a model along its orbit. The geometry of one pair is
in :mod:`lib.geometry.gl_pairs`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .._checks import check_module, check_shape_like
from .gl_pairs import gl_action

__all__ = ["parameter_prefix", "PackedAttention", "AttentionPair", "attention_modules",
           "attention_pairs", "attention_group_action"]


def parameter_prefix(module_name: str) -> str:
    """``"name."`` (``""`` for the root module): the prefix of a submodule's parameter names."""
    return f"{module_name}." if module_name else ""


class PackedAttention:
    """Packed parameters of one ``nn.MultiheadAttention`` <-> per-head (G, H) blocks.

    All heads are handled at once: ``get`` returns ``{"qk": (G, H), "vo": (G, H)}`` with
    ``G, H`` shaped ``(heads, n, dh)``; ``put`` writes such blocks back (differentiably).
    """

    def __init__(self, module_name: str, module: nn.MultiheadAttention):
        if not module._qkv_same_embed_dim or module.in_proj_weight is None:
            raise ValueError(f"attention module {module_name!r} uses separate q, k, v "
                             "projections (kdim/vdim != embed_dim); only the packed "
                             "in_proj_weight is supported")
        if module.bias_k is not None or module.bias_v is not None:
            raise ValueError(f"attention module {module_name!r} has add_bias_kv=True, which is "
                             "not supported (the extra key/value rows break the GL(h) pairing)")
        self.module_name = module_name
        self.E, self.heads = module.embed_dim, module.num_heads
        self.dh = module.head_dim
        p = parameter_prefix(module_name)
        self.w_in, self.w_out = p + "in_proj_weight", p + "out_proj.weight"
        self.b_in = p + "in_proj_bias" if module.in_proj_bias is not None else None
        self.names = tuple(n for n in (self.w_in, self.b_in, self.w_out) if n is not None)

    def _side(self, params, part: int) -> Tensor:
        """Rows of q (0), k (1) or v (2) as ``(heads, E [+1], dh)``."""
        E, nh, dh = self.E, self.heads, self.dh
        W = params[self.w_in][part * E:(part + 1) * E]          # (E_out, E_in)
        G = W.reshape(nh, dh, E).mT                              # (nh, E_in, dh)
        if self.b_in is not None:
            b = params[self.b_in][part * E:(part + 1) * E].reshape(nh, 1, dh)
            G = torch.cat([G, b], dim=1)
        return G

    def get(self, params: Mapping[str, Tensor]) -> dict[str, tuple[Tensor, Tensor]]:
        Wo = params[self.w_out]                                  # (E, nh * dh)
        H_o = Wo.reshape(self.E, self.heads, self.dh).permute(1, 0, 2)
        return {"qk": (self._side(params, 0), self._side(params, 1)),
                "vo": (self._side(params, 2), H_o)}

    def own(self, blocks: Mapping[str, tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
        """The module's packed parameters ``{name: tensor}`` built from per-head blocks."""
        (G_q, G_k), (G_v, H_o) = blocks["qk"], blocks["vo"]
        E = self.E
        sides = (G_q, G_k, G_v)
        out = {self.w_in: torch.cat([S[:, :E, :].mT.reshape(E, E) for S in sides], dim=0)}
        if self.b_in is not None:
            out[self.b_in] = torch.cat([S[:, E, :].reshape(E) for S in sides], dim=0)
        out[self.w_out] = H_o.permute(1, 0, 2).reshape(E, E)
        return out

    def put(self, params: Mapping[str, Tensor], blocks: Mapping[str, tuple[Tensor, Tensor]]
            ) -> dict[str, Tensor]:
        out = dict(params)
        out.update(self.own(blocks))
        return out


@dataclass(frozen=True)
class AttentionPair:
    """One ``GL(dh)`` pair of one head of an ``nn.MultiheadAttention`` module.

    ``pair_type == "qk"``: ``G = [Wq_i^T ; bq_i^T]``, ``H = [Wk_i^T ; bk_i^T]``, both
    ``(E + 1, dh)``; ``pair_type == "vo"``: ``G = [Wv_i^T ; bv_i^T]`` ``(E + 1, dh)``,
    ``H = Wo[:, i dh:(i+1) dh]`` ``(E, dh)``. Without ``in_proj_bias`` the bias rows are
    absent. ``G H^T`` is all the network sees of the pair (the attention rows sum to one,
    which carries ``bv`` through the value/output product). The key bias ``bk`` has a
    further symmetry (the softmax ignores it entirely) that is not quotiented out here.
    """

    module_name: str
    head: int
    pair_type: str
    _mha: PackedAttention

    def get(self, params: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """``(G, H)`` from a ``{parameter name: tensor}`` dict (or a tangent vector dict)."""
        G, H = self._mha.get(params)[self.pair_type]
        return G[self.head], H[self.head]

    def put(self, params: Mapping[str, Tensor], G: Tensor, H: Tensor) -> dict[str, Tensor]:
        """New dict with this pair replaced by ``(G, H)``; the input dict is not modified."""
        blocks = self._mha.get(params)
        G_all, H_all = blocks[self.pair_type]
        check_shape_like(G_all[self.head], G, "G")
        check_shape_like(H_all[self.head], H, "H")
        mask = torch.arange(self._mha.heads, device=G_all.device) == self.head
        mask = mask.view(-1, 1, 1)
        blocks[self.pair_type] = (torch.where(mask, G.unsqueeze(0), G_all),
                             torch.where(mask, H.unsqueeze(0), H_all))
        return self._mha.put(params, blocks)


def attention_modules(model: nn.Module) -> list[PackedAttention]:
    """A :class:`PackedAttention` for every ``nn.MultiheadAttention`` in ``model`` (in
    ``named_modules`` order); TypeError if ``model`` is not a module."""
    check_module(model)
    return [PackedAttention(name, m) for name, m in model.named_modules()
            if isinstance(m, nn.MultiheadAttention)]


def attention_pairs(model: nn.Module) -> list[AttentionPair]:
    """Every ``GL(dh)`` pair of every ``nn.MultiheadAttention`` in ``model``.

    Order: modules as in ``model.named_modules()``, then heads, then ``"qk"`` before ``"vo"``.
    Raises ValueError for unsupported modules (separate q/k/v projections, add_bias_kv).

    Returns:
        list of :class:`AttentionPair`; ``pair.get(dict(model.named_parameters()))`` gives
        its ``(G, H)``.
    """
    return [AttentionPair(mha.module_name, i, pair_type, mha) for mha in attention_modules(model)
            for i in range(mha.heads) for pair_type in ("qk", "vo")]


def attention_group_action(model: nn.Module, A: Mapping[tuple[str, int, str], Tensor]) -> None:
    """Apply ``(G, H) -> (G A^-1, H A^T)`` in place to the listed pairs of ``model``.

    The network function is unchanged (up to rounding). Meant for tests and demos.

    Args:
        model: module containing ``nn.MultiheadAttention`` layers.
        A: ``{(module_name, head, pair_type): (dh, dh) invertible matrix}``; pairs not listed
            are left alone.
    """
    if not isinstance(A, Mapping):
        raise TypeError("A must be a dict {(module, head, pair_type): matrix}, got "
                        f"{type(A).__name__}")
    pairs = {(p.module_name, p.head, p.pair_type): p for p in attention_pairs(model)}
    unknown = [key for key in A if key not in pairs]
    if unknown:
        raise ValueError(f"unknown attention pairs {unknown}; available: {list(pairs)}")
    params = dict(model.named_parameters())
    with torch.no_grad():
        new = {k: v.detach().clone() for k, v in params.items()}
        for key, matrix in A.items():
            G, H = pairs[key].get(new)
            new = pairs[key].put(new, *gl_action(G, H, matrix.to(G)))
        for name, p in params.items():
            p.copy_(new[name])
