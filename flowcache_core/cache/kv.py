"""The KV store: per layer, one slot of K/V per chunk, for the clean chunks and the chunks in the window.

K/V are stored after q/k-norm and RoPE (absolute latent-frame positions), layout (L, Hkv, hd), so a
stored key stays valid whatever forward reads it. Slots live in named contexts: "cond" holds what the
cache-writing pass wrote (with cfg_number 1 the only pass); with cfg_number 3 the text pass keeps its
own window slots in "text" and falls back to "cond" for clean chunks. A chunk skipped by a cache policy
is attended at the K/V of its last computed step, because its slot is only rewritten when it is computed.

`KVAccess` is what one forward of the model is handed: the store, which contexts to read (in order) and
which to write.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from flowcache_core.cache.kv_compressor import CompressedKV, KVCompressor, compress_clean


@dataclass
class KVSlot:
    k: torch.Tensor  # (L, Hkv, hd)
    v: torch.Tensor  # (L, Hkv, hd)


class BudgetExceeded(RuntimeError):
    """The store was asked to hold more tokens than its budget (a bug: compression must run first)."""


class KVStore:
    """Per-layer slots keyed by (context, chunk id), optionally inside a token budget with compression.

    With a budget (B_total chunk-equivalents per layer, counting every slot of the "cond" context), clean
    chunks are merged into one compressed block per layer when a new chunk needs room; the block keeps, per
    KV head, the tokens the compressor selects, in position order, with each token's chunk and position.
    A chunk then attends to the whole compressed block (the kv range limits the uncompressed chunks only).
    """

    MAIN = "cond"  # the context the store-writing pass writes and the budget counts; others are per-pass copies

    def __init__(self, num_layers: int, budget_tokens: int | None = None, compressor: KVCompressor | None = None,
                 tokens_per_chunk: int = 0, tokens_per_frame: int = 0):
        self.num_layers = num_layers
        self._slots: list[dict[tuple[str, int], KVSlot]] = [dict() for _ in range(num_layers)]
        self.budget_tokens = budget_tokens
        self.compressor = compressor
        self.tokens_per_chunk, self.tokens_per_frame = tokens_per_chunk, tokens_per_frame
        self._compressed: list[CompressedKV | None] = [None] * num_layers
        self.compressed_chunks: set[int] = set()
        self.compressions = 0
        self.compression_log: list[tuple[int, int]] = []  # per event, layer 0: (clean tokens in, tokens kept)

    def write(self, layer: int, ctx: str, chunk_id: int, k: torch.Tensor, v: torch.Tensor) -> None:
        slots = self._slots[layer]
        old = slots.get((ctx, chunk_id))
        slots[(ctx, chunk_id)] = KVSlot(k, v)
        if self.budget_tokens is not None and ctx == "cond":
            used = self.tokens("cond", layer)
            if used > self.budget_tokens:
                if old is None:
                    del slots[(ctx, chunk_id)]
                else:
                    slots[(ctx, chunk_id)] = old
                raise BudgetExceeded(f"layer {layer}: {used} tokens > budget {self.budget_tokens}")

    def has(self, ctx: str, chunk_id: int) -> bool:
        return (ctx, chunk_id) in self._slots[0]

    def read(self, layer: int, ctxs: tuple[str, ...], chunk_ids: list[int]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """K and V pieces of the given chunks, each from the first context that holds it."""
        ks, vs = [], []
        slots = self._slots[layer]
        block = self._compressed[layer]
        if block is not None and any(c in self.compressed_chunks for c in chunk_ids):
            ks.append(block.keys)
            vs.append(block.values)
        for c in chunk_ids:
            if c in self.compressed_chunks:
                continue
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

    def release_window_copies(self, chunk_id: int, keep: tuple[str, ...] = ()) -> None:
        """The chunk is clean: the per-pass copies of its window K/V (contexts other than MAIN and `keep`) can go."""
        for slots in self._slots:
            for key in [k for k in slots if k[1] == chunk_id and k[0] != self.MAIN and k[0] not in keep]:
                del slots[key]

    def evict_before(self, chunk_id: int) -> None:
        """Forget the uncompressed K/V of chunks < chunk_id: no later chunk's kv range reaches them."""
        for slots in self._slots:
            for key in [k for k in slots if k[1] < chunk_id]:
                del slots[key]

    def chunks(self, ctx: str) -> list[int]:
        return sorted(c for (x, c) in self._slots[0] if x == ctx)

    def tokens(self, ctx: str | None = None, layer: int = 0) -> int:
        """Tokens held in `layer` (all contexts unless one is named; the compressed block counts as "cond")."""
        n = sum(s.k.shape[0] for (x, _), s in self._slots[layer].items() if ctx is None or x == ctx)
        block = self._compressed[layer]
        if block is not None and ctx in (None, "cond"):
            n += block.keys.shape[0]
        return n

    def nbytes(self) -> int:
        n = sum(s.k.numel() * s.k.element_size() * 2 for slots in self._slots for s in slots.values())
        return n + sum(b.keys.numel() * b.keys.element_size() * 2 for b in self._compressed if b is not None)

    # ---- budget ----
    def needs_room(self, incoming_tokens: int) -> bool:
        """True if adding `incoming_tokens` to the main context would exceed the budget (never without one)."""
        return self.budget_tokens is not None and self.tokens(self.MAIN) + incoming_tokens > self.budget_tokens

    def make_room(self, incoming_tokens: int, final_clean: list[int], queries: dict[int, torch.Tensor]) -> bool:
        """Before a forward that adds `incoming_tokens` to "cond": compress the final clean chunks if needed.

        final_clean: clean chunks whose clean K/V is written and will not change. queries: per layer, the
        newest computed chunk's queries (L, Hq, hd). Returns True if a compression ran.
        """
        if self.budget_tokens is None:
            return False
        used = self.tokens("cond")
        if used + incoming_tokens <= self.budget_tokens:
            return False
        movable = [c for c in final_clean if c not in self.compressed_chunks and self.has("cond", c)]
        block_tokens = self._compressed[0].keys.shape[0] if self._compressed[0] is not None else 0
        clean_tokens = block_tokens + sum(self._slots[0][("cond", c)].k.shape[0] for c in movable)
        keep = self.budget_tokens - (used - clean_tokens) - incoming_tokens
        if keep < 0 or clean_tokens == 0:
            raise BudgetExceeded(
                f"{used + incoming_tokens} tokens needed, budget {self.budget_tokens}, only {clean_tokens} compressible")
        for layer in range(self.num_layers):
            self._compress_layer(layer, movable, keep, queries.get(layer))
        self.compressed_chunks.update(movable)
        for c in movable:
            self.drop("cond", c)
        self.compressions += 1
        kept = self._compressed[0].keys.shape[0] if self._compressed[0] is not None else 0
        self.compression_log.append((clean_tokens, kept))
        return True

    def _compress_layer(self, layer: int, movable: list[int], keep: int, queries: torch.Tensor | None) -> None:
        parts_k, parts_v, pos, origin = [], [], [], []
        block = self._compressed[layer]
        hkv = None
        if block is not None:
            parts_k.append(block.keys); parts_v.append(block.values)
            pos.append(block.positions); origin.append(block.origin_chunk)
        for c in movable:
            s = self._slots[layer][("cond", c)]
            L, hkv = s.k.shape[0], s.k.shape[1]
            parts_k.append(s.k); parts_v.append(s.v)
            p = torch.arange(c * L, (c + 1) * L, device=s.k.device)  # token index in the video, per head
            pos.append(p[:, None].expand(L, hkv)); origin.append(torch.full((L, hkv), c, device=s.k.device))
        keys, values = torch.cat(parts_k), torch.cat(parts_v)
        positions, origins = torch.cat(pos), torch.cat(origin)
        if keep <= 0:
            self._compressed[layer] = None
            return
        if keys.shape[0] <= keep:
            self._compressed[layer] = CompressedKV(keys, values, positions, origins, None)
            return
        if queries is None:
            raise RuntimeError(f"layer {layer}: compression needs the newest chunk's queries")
        self._compressed[layer] = compress_clean(
            keys, values, positions, origins, queries, compressor=self.compressor,
            tokens_per_frame=self.tokens_per_frame, tokens_per_chunk=self.tokens_per_chunk, budget=keep)


@dataclass
class KVAccess:
    """How one forward uses the store."""

    store: KVStore
    read_ctxs: tuple[str, ...] = (KVStore.MAIN,)
    write_ctx: str = KVStore.MAIN
