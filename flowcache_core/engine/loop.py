"""The chunk loop: walk a family's plan with a cache policy and a KV store, yielding chunks as they become clean.

Per forward of the plan, front to back:
1. the policy decides, per denoising chunk, compute or reuse (from the feature it asks for);
2. when a chunk enters the window: K/V no later row attends to is evicted, and with a KV budget the chunk that
   has just become clean is written first (so the compression event can include it), then room is made;
3. the family's forward function runs the computed rows (and clean rows, whose K/V later chunks read);
4. every denoising chunk moves one step: computed ones from their velocity, reused ones from the policy's cache
   (Euler in t: v*dt and the cached update; a family with its own solver, `advance`: the model output and the
   reused model output);
5. an event is emitted; chunks that reached t = 1 are yielded.
The loop knows chunks, steps, t, dt, features, a KV store and events; what a forward is belongs to the family.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

import torch
from torch import Tensor

from flowcache_core.cache.kv import KVStore
from flowcache_core.cache.policy import CachePolicy, ChunkDecision, ChunkStep
from flowcache_core.engine.events import ChunkEmitted, ChunkRecord, ForwardEvent, RunRecord
from flowcache_core.engine.plan import Forward, Row, kv_horizons, kv_sinks
from flowcache_core.errors import FlowcacheError


@dataclass
class ForwardResult:
    velocities: dict[int, Tensor]  # chunk id -> (C, frames, h, w) velocity of each denoising row forwarded
    tokens: int  # tokens through the DiT, every guidance pass counted
    queries: dict[int, Tensor] | None = None  # layer -> (L, Hq, hd) queries of the chunk asked for (KV compressor)


class Generation(Protocol):
    """One generation as a family sets it up: latent state, plan, and how to forward rows of it."""

    plan: list[Forward]
    num_steps: int  # denoise steps of every chunk
    kv_layers: int  # layers that keep K/V in the store
    tokens_per_chunk: int  # K/V tokens one chunk holds per layer
    tokens_per_frame: int  # of them, one latent frame's (the compressor's frame unit)
    fps: int  # of the output video
    # optional `output_frames: int`: the output is cut to this many frames (whole chunks are generated; the
    # frames past the request are dropped at the end). Without it, every emitted frame is output.
    # For a KV budget in bytes (api.make_store): `kv_heads`, `kv_head_dim`, `kv_dtype`, the layout of the K/V the
    # forward writes; optional `kv_copy_tokens: int`, per layer the most tokens the per-pass window copies (contexts
    # other than KVStore.MAIN) hold at once (0 without).

    def chunk(self, chunk_id: int) -> Tensor:
        """View (C, frames, h, w) of the chunk's latent state; the loop adds Euler updates to it in place."""

    def feature(self, name: str, chunk_id: int) -> Tensor:
        """The named feature of the chunk's current input, for the cache policy."""

    def before_forward(self) -> None:
        """Restore what is given rather than generated (e.g. pasted prefix frames) before each forward."""

    def forward(self, f: Forward, rows: list[Row], store: KVStore, queries_of: int | None) -> ForwardResult:
        """Velocities of the denoising rows; clean rows only write their K/V; with queries_of, that chunk's queries."""

    def write_clean(self, f: Forward, rows: list[Row], store: KVStore) -> int:
        """Forward clean rows only, to write their final K/V; returns the tokens forwarded."""

    def emit(self, chunk_id: int) -> tuple[int, int, Tensor]:
        """(output index, chunks this run outputs, clean latent (C, frames, h, w)) of a chunk that is clean."""

    # optional `clean_kv_contexts: tuple[str, ...]`: KV contexts other than the store's MAIN that later chunks read
    # for a clean chunk (a guidance pass with its own K/V), kept when the chunk is emitted; default none.
    # optional `output_skip: int`: frames at the start of the decoded video that repeat a given one, not output.
    # optional `advance(step: ChunkStep, output: Tensor) -> None`: the family's own solver (e.g. multistep UniPC)
    # moves the chunk's state from this step's model output in place; the policy then caches and reuses model
    # outputs (`reused_velocity`). Without it the loop adds the Euler update v*dt (the policy reuses updates).


@torch.no_grad()
def run_chunks(gen: Generation, policy: CachePolicy, store: KVStore, record: RunRecord,
               on_event: Callable[[object], None] = lambda e: None) -> Iterator[tuple[int, Tensor]]:
    """Yields (output index, clean latent) as chunks finish; fills `record` as it goes."""
    t0 = time.perf_counter()
    horizons, sinks = kv_horizons(gen.plan), kv_sinks(gen.plan)
    total_forwards = sum(not f.prefill for f in gen.plan)
    final_clean: set[int] = set()  # chunks whose clean K/V is written and final
    queries: dict[int, Tensor] = {}  # per layer, the newest computed chunk's queries (KV compressor)
    budget = store.budget_tokens
    prefill = sum(len(f.rows) for f in gen.plan if f.prefill)
    if budget is not None and (prefill + 1) * gen.tokens_per_chunk > budget:
        raise FlowcacheError(
            f"{store.budget_label} ({budget / gen.tokens_per_chunk:g} chunks) cannot hold the {prefill} prefix chunks "
            f"and the first generated chunk: use a budget of at least {prefill + 1} chunks or a shorter prefix video"
            if store.budget_bytes is not None else
            f"{store.budget_label} cannot hold the {prefill} prefix chunks and the first generated chunk: use at "
            f"least {prefill + 1} or a shorter prefix video")
    for i, f in enumerate(gen.plan):
        started = time.perf_counter()
        gen.before_forward()
        if f.prefill:
            gen.write_clean(f, f.rows, store)
            final_clean.update(r.chunk_id for r in f.rows)
            continue
        den = f.denoising
        steps = [ChunkStep(r.chunk_id, r.step, gen.num_steps, r.t, r.dt, r.step == 0,
                           gen.feature(policy.feature, r.chunk_id) if policy.feature else torch.empty(0))
                 for r in den]
        decisions: list[ChunkDecision] = policy.decide(steps)
        compute = {d.chunk_id for d in decisions if d.compute}
        rows = [r for r in f.rows if r.clean or r.chunk_id in compute]
        tokens = 0
        if any(r.step == 0 for r in den):  # a chunk enters the window
            store.evict_before(horizons[i], keep_first=sinks[i])
            incoming = sum(r.step == 0 for r in den) * gen.tokens_per_chunk
            if store.needs_room(incoming):
                # B_total as published: the chunk that has just become clean is compressible at this event too,
                # so its clean K/V is written first and it is not forwarded again in this forward. (Its slot
                # already holds its last denoising K/V, so writing it does not change what the store holds; a
                # budget that never needs room leaves the run exactly as without one.)
                just_clean = [r for r in rows if r.clean]
                if just_clean:
                    tokens += gen.write_clean(f, just_clean, store)
                    final_clean.update(r.chunk_id for r in just_clean)
                    rows = [r for r in rows if not r.clean]
                store.make_room(incoming, sorted(final_clean), queries)
                record.compressions += 1
        velocities: dict[int, Tensor] = {}
        if rows:
            newest = max((r.chunk_id for r in rows if not r.clean), default=None) if store.wants_queries else None
            out = gen.forward(f, rows, store, newest)
            velocities, tokens = out.velocities, tokens + out.tokens
            if out.queries:
                queries = out.queries
        final_clean.update(r.chunk_id for r in rows if r.clean)
        deltas = {}
        advance = getattr(gen, "advance", None)
        for s, d in zip(steps, decisions):
            if advance is None:  # Euler in t
                delta = velocities[s.chunk_id] * s.dt if d.compute else policy.reused_delta(s)
                gen.chunk(s.chunk_id).add_(delta)
            else:  # the family's solver steps from a model output, computed or reused
                delta = velocities[s.chunk_id] if d.compute else policy.reused_velocity(s)
                advance(s, delta)
            deltas[s.chunk_id] = delta
            bucket = record.computed if d.compute else record.reused
            bucket[s.chunk_id] = bucket.get(s.chunk_id, 0) + 1
        policy.update(steps, decisions, velocities, deltas)
        record.forwards += 1
        record.tokens_forwarded += tokens
        kv_used, kv_bytes = store.tokens(store.MAIN), store.nbytes()
        record.kv_tokens.append(kv_used)
        record.kv_bytes.append(kv_bytes)
        on_event(ForwardEvent(
            forward=f.index,
            chunks=[ChunkRecord(s.chunk_id, s.step, s.t, "compute" if d.compute else "reuse", d.reason, d.rel_l1, d.acc)
                    for s, d in zip(steps, decisions)],
            tokens_forwarded=tokens, kv_used=kv_used, kv_budget=budget,
            seconds=time.perf_counter() - started, total_forwards=total_forwards,
            kv_bytes=kv_bytes, kv_budget_bytes=store.budget_bytes))
        for c in f.emits:
            policy.drop(c)
            store.release_window_copies(c, keep=getattr(gen, "clean_kv_contexts", ()))
            idx, total, latent = gen.emit(c)
            on_event(ChunkEmitted(idx, c, total))
            yield idx, latent
    record.seconds = time.perf_counter() - t0
    record.kv_peak_bytes = store.peak_bytes
