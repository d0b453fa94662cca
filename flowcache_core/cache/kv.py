"""The KV store: per layer, one slot of K/V per chunk, for the clean chunks and the chunks in the window.

K/V are stored after q/k-norm and RoPE (absolute latent-frame positions), layout (L, Hkv, hd), so a
stored key stays valid whatever forward reads it. Slots live in named contexts: "cond" holds what the
cache-writing pass wrote (with cfg_number 1 the only pass); with cfg_number 3 the text pass keeps its
own window slots in "text" and falls back to "cond" for clean chunks. A chunk skipped by a cache policy
is attended at the K/V of its last computed step, because its slot is only rewritten when it is computed.

`KVAccess` is what one forward of the model is handed: the store, which contexts to read (in order) and
which to write, and an optional chunk whose queries to capture for the KV compressor.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class KVSlot:
    k: torch.Tensor  # (L, Hkv, hd)
    v: torch.Tensor  # (L, Hkv, hd)


class KVStore:
    """Per-layer slots keyed by (context, chunk id)."""

    def __init__(self, num_layers: int):
        self.num_layers = num_layers
        self._slots: list[dict[tuple[str, int], KVSlot]] = [dict() for _ in range(num_layers)]

    def write(self, layer: int, ctx: str, chunk_id: int, k: torch.Tensor, v: torch.Tensor) -> None:
        self._slots[layer][(ctx, chunk_id)] = KVSlot(k, v)

    def has(self, ctx: str, chunk_id: int) -> bool:
        return (ctx, chunk_id) in self._slots[0]

    def read(self, layer: int, ctxs: tuple[str, ...], chunk_ids: list[int]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """K and V pieces of the given chunks, each from the first context that holds it."""
        ks, vs = [], []
        slots = self._slots[layer]
        for c in chunk_ids:
            for ctx in ctxs:
                s = slots.get((ctx, c))
                if s is not None:
                    ks.append(s.k)
                    vs.append(s.v)
                    break
            else:
                raise KeyError(f"no K/V stored for chunk {c} in contexts {ctxs} (layer {layer})")
        return ks, vs

    def drop(self, ctx: str, chunk_id: int) -> None:
        for slots in self._slots:
            slots.pop((ctx, chunk_id), None)

    def chunks(self, ctx: str) -> list[int]:
        return sorted(c for (x, c) in self._slots[0] if x == ctx)

    def tokens(self, ctx: str | None = None) -> int:
        """Tokens held per layer (all contexts unless one is named)."""
        return sum(s.k.shape[0] for (x, _), s in self._slots[0].items() if ctx is None or x == ctx)

    def nbytes(self) -> int:
        return sum(s.k.numel() * s.k.element_size() * 2 for slots in self._slots for s in slots.values())


@dataclass
class KVAccess:
    """How one forward uses the store."""

    store: KVStore
    read_ctxs: tuple[str, ...] = ("cond",)
    write_ctx: str = "cond"
    capture_queries_of: int | None = None  # chunk id whose post-norm/RoPE queries are kept per layer
    captured_queries: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (L, Hq, hd)
