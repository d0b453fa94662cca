"""The KV store: per layer, one slot of K/V per chunk, for the clean chunks and the chunks in the window.

K/V are stored after q/k-norm and RoPE (absolute latent-frame positions), layout (L, Hkv, hd), so a
stored key stays valid whatever forward reads it. Slots live in named contexts: "cond" holds what the
cache-writing pass wrote (with cfg_number 1 the only pass); with cfg_number 3 the text pass keeps its
own window slots in "text" and falls back to "cond" for clean chunks. A chunk skipped by a cache policy
is attended at the K/V of its last computed step, because its slot is only rewritten when it is computed.

`KVAccess` is what one forward of the model is handed: the store, which contexts to read (in order) and
which to write.

Memory: the store keeps its own compact copy of what it is handed (not a view that would keep a whole forward's
K/V alive), in the format of its `quant` (cache/kv_quant.py: as computed, or int8 decoded when read), and counts
the bytes it holds (`nbytes`, `peak_bytes`). With a budget, every write checks the main context's tokens against
`budget_tokens` and, with a byte budget, everything held against `budget_bytes`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from flowcache_core.cache.kv_compressor import KVCompressor, gather_per_head
from flowcache_core.cache.kv_flowcache import FlowcacheKV
from flowcache_core.cache.kv_policy import KVPolicy
from flowcache_core.cache.kv_quant import KVQuant, NoQuant


@dataclass
class KVSlot:
    k: Any  # (L, Hkv, hd) as stored: a tensor, or the quant format's object (int8 codes + scales)
    v: Any


@dataclass
class KVBlock:
    """The compressed clean tokens of one layer, per KV head in position order.

    keys/values: (keep, Hkv, hd) as stored. positions/origin_chunk: (keep, Hkv) int64, each kept token's index in
    the video (its RoPE position is unchanged) and the chunk it came from."""

    keys: Any
    values: Any
    positions: torch.Tensor
    origin_chunk: torch.Tensor


def _owned(x: torch.Tensor) -> torch.Tensor:
    """x itself if it owns exactly its storage, else a compact copy (a stored view would pin the whole forward)."""
    if x.is_contiguous() and x.untyped_storage().nbytes() == x.numel() * x.element_size():
        return x
    return x.clone(memory_format=torch.contiguous_format)


class BudgetExceeded(RuntimeError):
    """The store was asked to hold more tokens or bytes than its budget (a bug: compression must run first)."""


class KVStore:
    """Per-layer slots keyed by (context, chunk id), optionally inside a token budget with compression.

    With a budget (B_total chunk-equivalents per layer, counting every slot of the "cond" context), clean
    chunks are merged into one compressed block per layer when a new chunk needs room; the block keeps, per
    KV head, the tokens the compressor selects, in position order, with each token's chunk and position.
    A chunk then attends to the whole compressed block (the kv range limits the uncompressed chunks only). The
    KV policy (cache/kv_policy.py) picks the kept tokens; `compressor` is the older spelling of the `flowcache` one.
    budget_bytes: a byte budget the store also checks on every write (`budget_tokens` is its conversion);
    budget_label: how errors name the budget (e.g. "total_cache_chunk_nums=6").
    """

    MAIN = "cond"  # the context the store-writing pass writes and the budget counts; others are per-pass copies

    def __init__(self, num_layers: int, budget_tokens: int | None = None, compressor: KVCompressor | None = None,
                 tokens_per_chunk: int = 0, tokens_per_frame: int = 0, *, policy: KVPolicy | None = None,
                 quant: KVQuant | None = None, budget_bytes: int | None = None, budget_label: str | None = None):
        self.num_layers = num_layers
        self._slots: list[dict[tuple[str, int], KVSlot]] = [dict() for _ in range(num_layers)]
        self.budget_tokens = budget_tokens
        self.budget_bytes = budget_bytes
        self.budget_label = budget_label or (f"KV budget of {budget_tokens} tokens" if budget_tokens else None)
        if policy is None and compressor is not None:
            policy = FlowcacheKV.from_compressor(compressor)
        self.policy = policy
        self.quant = quant if quant is not None else NoQuant()
        self.tokens_per_chunk, self.tokens_per_frame = tokens_per_chunk, tokens_per_frame
        self._compressed: list[KVBlock | None] = [None] * num_layers
        self.compressed_chunks: set[int] = set()
        self.compressions = 0
        self.compression_log: list[tuple[int, int]] = []  # per event, layer 0: (clean tokens in, tokens kept)
        self._bytes = 0  # K/V bytes held now (every layer and context, the compressed blocks included)
        self.peak_bytes = 0

    @property
    def wants_queries(self) -> bool:
        """Whether a forward should hand back the newest chunk's queries (a budget whose policy scores with them)."""
        return self.budget_tokens is not None and self.policy is not None and self.policy.needs_queries

    def _size(self, kv: KVSlot | KVBlock | None) -> int:
        if kv is None:
            return 0
        if isinstance(kv, KVBlock):
            return self.quant.nbytes(kv.keys) + self.quant.nbytes(kv.values)
        return self.quant.nbytes(kv.k) + self.quant.nbytes(kv.v)

    def write(self, layer: int, ctx: str, chunk_id: int, k: torch.Tensor, v: torch.Tensor) -> None:
        slots = self._slots[layer]
        key = (ctx, chunk_id)
        old = slots.get(key)
        new = KVSlot(self.quant.encode(_owned(k)), self.quant.encode(_owned(v)))
        slots[key] = new
        self._bytes += self._size(new) - self._size(old)
        over = None
        if self.budget_tokens is not None and ctx == self.MAIN:
            used = self.tokens(self.MAIN, layer)
            if used > self.budget_tokens:
                over = f"layer {layer}: {used} tokens > budget {self.budget_tokens}"
        if over is None and self.budget_bytes is not None and self._bytes > self.budget_bytes:
            over = f"layer {layer}, chunk {chunk_id} ({ctx}): {self._bytes} bytes held > budget {self.budget_bytes}"
        if over is not None:
            self._bytes -= self._size(new) - self._size(old)
            if old is None:
                del slots[key]
            else:
                slots[key] = old
            raise BudgetExceeded(over)
        self.peak_bytes = max(self.peak_bytes, self._bytes)

    def has(self, ctx: str, chunk_id: int) -> bool:
        return (ctx, chunk_id) in self._slots[0]

    def read(self, layer: int, ctxs: tuple[str, ...], chunk_ids: list[int]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """K and V pieces of the given chunks, each from the first context that holds it."""
        ks, vs = [], []
        slots = self._slots[layer]
        block = self._compressed[layer]
        decode = self.quant.decode  # just before attention: int8 back to the dtype it was written in
        if block is not None and any(c in self.compressed_chunks for c in chunk_ids):
            ks.append(decode(block.keys))
            vs.append(decode(block.values))
        for c in chunk_ids:
            if c in self.compressed_chunks:
                continue
            for ctx in ctxs:
                s = slots.get((ctx, c))
                if s is not None:
                    ks.append(decode(s.k))
                    vs.append(decode(s.v))
                    break
            else:
                raise KeyError(f"no K/V stored for chunk {c} in contexts {ctxs} (layer {layer})")
        return ks, vs

    def _remove(self, slots: dict, key: tuple[str, int]) -> None:
        self._bytes -= self._size(slots.pop(key, None))

    def drop(self, ctx: str, chunk_id: int) -> None:
        for slots in self._slots:
            self._remove(slots, (ctx, chunk_id))

    def release_window_copies(self, chunk_id: int, keep: tuple[str, ...] = ()) -> None:
        """The chunk is clean: the per-pass copies of its window K/V (contexts other than MAIN and `keep`) can go."""
        for slots in self._slots:
            for key in [k for k in slots if k[1] == chunk_id and k[0] != self.MAIN and k[0] not in keep]:
                self._remove(slots, key)

    def evict_before(self, chunk_id: int, keep_first: int = 0) -> None:
        """Forget the uncompressed K/V of chunks < chunk_id: no later chunk's kv range reaches them (except the sink
        chunks < keep_first, which later chunks still attend to)."""
        for slots in self._slots:
            for key in [k for k in slots if keep_first <= k[1] < chunk_id]:
                self._remove(slots, key)

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
        """K/V bytes held now: every layer and context, the compressed blocks included, in the stored format."""
        return self._bytes

    def count_bytes(self) -> int:
        """`nbytes` recounted from the slots (tests)."""
        return (sum(self._size(s) for slots in self._slots for s in slots.values())
                + sum(self._size(b) for b in self._compressed))

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
            old = self._compressed[layer]
            self._compress_layer(layer, movable, keep, queries.get(layer))
            self._bytes += self._size(self._compressed[layer]) - self._size(old)
            # the merged chunks' slots go layer by layer: the memory in flight is one layer's old and new tokens,
            # not a second copy of the whole store (which the first event, where nearly all of it moves, would be)
            for c in movable:
                self._remove(self._slots[layer], ("cond", c))
        self.compressed_chunks.update(movable)
        self.peak_bytes = max(self.peak_bytes, self._bytes)
        self.compressions += 1
        kept = self._compressed[0].keys.shape[0] if self._compressed[0] is not None else 0
        self.compression_log.append((clean_tokens, kept))
        return True

    def _compress_layer(self, layer: int, movable: list[int], keep: int, queries: torch.Tensor | None) -> None:
        """Merge the movable chunks into the layer's block and keep `keep` tokens per KV head (the KV policy's)."""
        parts_k, parts_v, pos, origin = [], [], [], []
        block = self._compressed[layer]
        if block is not None:
            parts_k.append(block.keys); parts_v.append(block.values)
            pos.append(block.positions); origin.append(block.origin_chunk)
        for c in movable:
            s = self._slots[layer][("cond", c)]
            L, hkv = s.k.shape[0], s.k.shape[1]
            parts_k.append(s.k); parts_v.append(s.v)
            p = torch.arange(c * L, (c + 1) * L, device=s.k.device)  # token index in the video, per head
            pos.append(p[:, None].expand(L, hkv)); origin.append(torch.full((L, hkv), c, device=s.k.device))
        q = self.quant
        keys, values = q.cat(parts_k), q.cat(parts_v)
        positions, origins = torch.cat(pos), torch.cat(origin)              # (L, Hkv) each
        if keep <= 0:
            self._compressed[layer] = None
            return
        if keys.shape[0] <= keep:
            self._compressed[layer] = KVBlock(keys, values, positions, origins)
            return
        if queries is None and self.policy.needs_queries:
            raise RuntimeError(f"layer {layer}: compression needs the newest chunk's queries")
        idx = self.policy.select(q.decode(keys), positions, queries, tokens_per_frame=self.tokens_per_frame,
                                 tokens_per_chunk=self.tokens_per_chunk, keep=keep)  # (Hkv, kept) ascending
        self._compressed[layer] = KVBlock(q.gather(keys, idx), q.gather(values, idx),
                                          gather_per_head(positions, idx), gather_per_head(origins, idx))


@dataclass
class KVAccess:
    """How one forward uses the store."""

    store: KVStore
    read_ctxs: tuple[str, ...] = (KVStore.MAIN,)
    write_ctx: str = KVStore.MAIN
