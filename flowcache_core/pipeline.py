"""The MAGI-1 sampler: chunk-pipelined flow matching with a KV store of clean chunks, and the cache seam.

Reading order: `sample` walks the plan of `schedule.plan_forwards`. For every forward it
1. asks the cache policy which window chunks to compute (features = patch embedding of each chunk's input),
2. forwards only those chunks (plus the just-clean chunk whose K/V later chunks read) through the DiT,
   once per CFG pass, and combines the passes,
3. moves each chunk one Euler step: computed chunks by v*dt, reused ones by the policy's cached update,
4. emits chunks that reached t = 1 (their latents; the caller decodes them).
The core reports progress as small typed events through `on_event`; it never prints.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from flowcache_core.cache.kv import KVAccess, KVStore
from flowcache_core.cache.policy import CachePolicy, ChunkDecision, ChunkStep, NoCache
from flowcache_core.config import MagiConfig
from flowcache_core.errors import FlowcacheError
from flowcache_core.model.dit import ChunkBatch, VideoDiT
from flowcache_core.schedule import Forward, Row, chunk_layout, distill_step_size, init_t, plan_forwards

NEARLY_CLEAN_BLEND = 0.7  # MAGI-1 with cfg_number 1: 0.7 * (with context) + 0.3 * (self only), env prev_chunks_scale
NULL_CAPTION_TOKENS = 50  # MAGI-1's unconditional caption: the first 50 rows of null_caption_embedding


# ------------------------------------------------------------------------------------------ events
@dataclass
class ChunkRecord:
    id: int
    step: int
    t: float
    decision: str  # "compute" | "reuse"
    reason: str
    rel_l1: float | None
    acc: float | None


@dataclass
class ForwardEvent:
    forward: int
    chunks: list[ChunkRecord]
    tokens_forwarded: int
    kv_used: int
    kv_budget: int | None
    seconds: float
    total_forwards: int

    def to_json(self) -> dict:
        return {
            "forward": self.forward,
            "chunks": [vars(c) for c in self.chunks],
            "tokens_forwarded": self.tokens_forwarded,
            "kv": {"used": self.kv_used, "budget": self.kv_budget},
        }


@dataclass
class ChunkEmitted:
    index: int  # output chunk index (0 = first chunk after the prefix)
    chunk_id: int
    total: int  # chunks this run emits


@dataclass
class RunRecord:
    """What a run did: per chunk computed/skipped forwards, totals, time."""

    computed: dict[int, int] = field(default_factory=dict)
    reused: dict[int, int] = field(default_factory=dict)
    forwards: int = 0
    tokens_forwarded: int = 0
    seconds: float = 0.0
    peak_memory_bytes: int = 0
    compressions: int = 0
    kv_tokens: list[int] = field(default_factory=list)  # "cond" tokens per layer after each forward

    @property
    def chunk_forwards(self) -> int:
        return sum(self.computed.values()) + sum(self.reused.values())

    @property
    def computed_chunk_forwards(self) -> int:
        return sum(self.computed.values())

    @property
    def ideal_speedup(self) -> float:
        c = self.computed_chunk_forwards
        return self.chunk_forwards / c if c else 1.0


# ------------------------------------------------------------------------------------------ conditioning
@dataclass
class TextCondition:
    """The prompt's embedding, one row per generated chunk (MAGI-1 prepends per-chunk special tokens)."""

    caption: torch.Tensor  # (n_generated_chunks, Lc, Dcap), or (Lc, Dcap) for the same caption everywhere
    mask: torch.Tensor  # same leading shape, (…, Lc): 1 = valid token; all zero = empty prompt (null caption)


def _null_caption(model: VideoDiT) -> tuple[torch.Tensor, torch.Tensor]:
    null = model.y_embedder.null_caption_embedding.detach().float()  # (Lmax, Dcap)
    mask = torch.zeros(null.shape[0], dtype=torch.long, device=null.device)
    mask[: min(NULL_CAPTION_TOKENS, null.shape[0])] = 1
    return null, mask


def _pad(caption: torch.Tensor, mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    L = caption.shape[0]
    if L >= length:
        return caption[:length], mask[:length]
    pad = caption.new_zeros(length - L, caption.shape[1])
    return torch.cat([caption, pad]), torch.cat([mask, mask.new_zeros(length - L)])


# ------------------------------------------------------------------------------------------ the sampler
class Sampler:
    """One generation: latent state, KV store, cache policy, and the plan being walked."""

    def __init__(self, model: VideoDiT, config: MagiConfig, text: TextCondition, noise: torch.Tensor,
                 prefix: torch.Tensor | None = None, policy: CachePolicy | None = None,
                 on_event: Callable[[object], None] | None = None, store: KVStore | None = None):
        rt, eng = config.runtime, config.engine
        self.model, self.cfg, self.rt, self.eng = model, config, rt, eng
        self.policy = policy or NoCache()
        self.on_event = on_event or (lambda e: None)
        self.device = noise.device
        cw = rt.chunk_width
        P = 0 if prefix is None else prefix.shape[1]
        self.chunk_num, self.offset = chunk_layout(noise.shape[1], P, cw)  # noise: every latent frame after the prefix
        self.partial = P % cw  # prefix frames pasted into chunk `offset` before every forward
        C, _, h, w = noise.shape
        # Latent state of the whole video: prefix frames, then noise. (C, chunk_num*cw, h, w)
        total = self.chunk_num * cw
        x = torch.zeros(C, total, h, w, dtype=torch.float32, device=self.device)
        if P:
            x[:, :P] = prefix.float()
        x[:, P:] = noise[:, : total - P].float()
        self.x, self.prefix, self.P = x, prefix, P
        self.ts, self.intervals = init_t(rt.num_steps, eng.shortcut_mode)
        self.plan = plan_forwards(self.chunk_num, rt.num_steps, rt.window_size, self.offset,
                                  noise2clean_kvrange=rt.noise2clean_kvrange, clean_chunk_kvrange=rt.clean_chunk_kvrange,
                                  nearly_clean_blend=rt.cfg_number == 1,  # the official cfg-1 dispatcher, any model
                                  nearly_clean_threshold=eng.distill_nearly_clean_chunk_threshold,
                                  shortcut_mode=eng.shortcut_mode)
        self.store = store or KVStore(model.cfg.num_layers)
        budget = self.store.budget_tokens
        if budget is not None and (self.offset + 1) * self._tokens_per_chunk() > budget:
            raise FlowcacheError(
                f"total_cache_chunk_nums={budget // self._tokens_per_chunk()} cannot hold the {self.offset} prefix chunks "
                f"and the first generated chunk: use at least {self.offset + 1} or a shorter prefix video")
        Lmax = model.cfg.caption_max_length
        n_gen = self.chunk_num - self.offset
        caps = text.caption if text.caption.dim() == 3 else text.caption[None].expand(n_gen, -1, -1)
        masks = text.mask if text.mask.dim() == 2 else text.mask[None].expand(n_gen, -1)
        if caps.shape[0] != n_gen:
            raise ValueError(f"{caps.shape[0]} chunk captions for {n_gen} generated chunks")
        self.null = _null_caption(model)
        if int(masks.sum()) == 0:  # empty prompt: MAGI-1 uses the null caption for the conditional pass too
            caps, masks = self.null[0][None].expand(n_gen, -1, -1), self.null[1][None].expand(n_gen, -1)
        padded = [_pad(c.to(self.device).float(), m.to(self.device), Lmax) for c, m in zip(caps, masks)]
        self.cond = (torch.stack([c for c, _ in padded]), torch.stack([m for _, m in padded]))  # (n_gen, Lmax, ·)
        self.final_clean: set[int] = set()  # chunks whose clean K/V is written and final
        self.last_queries: dict[int, torch.Tensor] = {}  # per layer, the newest computed chunk's queries
        self._last_access: KVAccess | None = None
        kvr = rt.noise2clean_kvrange
        self.max_kv_range = max(kvr) if kvr else None
        self.record = RunRecord()
        self.n_denoising_forwards = sum(not f.prefill for f in self.plan)
        self.emitted = 0

    # -- state helpers --
    def chunk(self, c: int) -> torch.Tensor:
        cw = self.rt.chunk_width
        return self.x[:, c * cw : (c + 1) * cw]  # (C, cw, h, w) view

    def _paste_prefix(self) -> None:
        if self.partial:
            cw = self.rt.chunk_width
            s = self.offset * cw
            self.x[:, s : s + self.partial] = self.prefix[:, self.offset * cw :].float()

    def _distill_dt(self, f: Forward) -> float | None:
        if not self.eng.distill:
            return None
        return distill_step_size(self.rt.num_steps, f.distill_interval)

    # -- one CFG pass --
    def _pass(self, rows: list[Row], t: list[float], f: Forward, caption: str, dropped: bool,
              kv: KVAccess | None, write: list[bool], near_dup: bool) -> torch.Tensor:
        cw = self.rt.chunk_width
        ids = [r.chunk_id for r in rows]
        # Clean chunks always see the null caption (MAGI-1); denoising chunks their own row of the prompt.
        use_cond = [caption == "cond" and not r.clean for r in rows]
        cap = torch.stack([self.cond[0][r.chunk_id - self.offset] if u else self.null[0] for r, u in zip(rows, use_cond)])
        mask = torch.stack([self.cond[1][r.chunk_id - self.offset] if u else self.null[1] for r, u in zip(rows, use_cond)])
        starts = [r.kv_start for r in rows] if kv is not None else ids
        offsets = [c * cw for c in ids] if kv is not None else [0] * len(ids)
        xs = [self.chunk(c) for c in ids]
        ts = list(t)
        shared = [True] * len(rows)
        write = list(write)
        if near_dup:  # the oldest denoising chunk again, seeing only itself, placed after the window
            j = next(i for i, r in enumerate(rows) if not r.clean)
            xs.append(xs[j]); ts.append(ts[j]); ids.append(ids[j]); starts.append(ids[j])
            cap, mask = torch.cat([cap, cap[j : j + 1]]), torch.cat([mask, mask[j : j + 1]])
            offsets.append((max(ids) + 1) * cw if kv is not None else 0)
            shared.append(False); write.append(False)
        n = len(ids)
        batch = ChunkBatch(
            x=torch.stack(xs), t=torch.tensor(ts, dtype=torch.float32, device=self.device),
            chunk_ids=ids, kv_start=starts,
            caption=cap, caption_mask=mask,
            caption_dropped=torch.full((n,), dropped, dtype=torch.bool, device=self.device),
            write_kv=write, time_offset=offsets, shared=shared, distill_dt=self._distill_dt(f))
        v = self.model(batch, kv)  # (n, C, cw, h, w)
        if near_dup:
            j = next(i for i, r in enumerate(rows) if not r.clean)
            v = v.clone()
            v[j] = NEARLY_CLEAN_BLEND * v[j] + (1 - NEARLY_CLEAN_BLEND) * v[-1]
            v = v[:-1]
        return v

    def _write_clean(self, rows: list[Row], f: Forward) -> None:
        """Forward clean chunks once at clean_t with the null caption to write their final K/V (the store-writing
        pass's caption flags: with cfg_number 3 that is the dropped-caption pass)."""
        t = [self.rt.clean_t] * len(rows)
        dropped = self.rt.cfg_number == 3
        self._pass(rows, t, f, "null", dropped, KVAccess(self.store, ("cond",), "cond"), [True] * len(rows), False)
        self.final_clean.update(r.chunk_id for r in rows)

    def _writer_access(self, rows: list[Row]) -> KVAccess:
        """The pass that writes the store; with a KV budget it also keeps the newest computed chunk's queries."""
        den = [r.chunk_id for r in rows if not r.clean]
        newest = max(den) if (den and self.store.budget_tokens is not None) else None
        acc = KVAccess(self.store, ("cond",), "cond", capture_queries_of=newest)
        self._last_access = acc
        return acc

    def cfg_passes(self) -> int:
        """DiT passes per forward: 1 (cfg_number 1), 3 (MAGI-1's CFG), or 2 when every prev_chunk_scale is 1:
        then the unconditional pass has weight 0 and only the text and null-caption passes run."""
        if self.rt.cfg_number == 1:
            return 1
        return 2 if all(sp == 1.0 for sp in self.rt.prev_chunk_scales) else 3

    def _velocity(self, rows: list[Row], f: Forward, near_dup: bool) -> torch.Tensor:
        """Velocities of `rows` (clean rows included, their outputs unused): one pass or MAGI-1's CFG (`cfg_passes`)."""
        t = [self.rt.clean_t if r.clean else float(self.ts[r.step]) for r in rows]
        passes = self.cfg_passes()
        if passes == 1:
            return self._pass(rows, t, f, "cond", False, self._writer_access(rows), [True] * len(rows), near_dup)
        # cfg_number 3: text pass (own window slots, reads clean chunks from "cond"), null-caption pass (writes
        # the store), unconditional pass (no context, chunk-local RoPE positions).
        v_text = self._pass(rows, t, f, "cond", False, KVAccess(self.store, ("text", "cond"), "text"),
                            [not r.clean for r in rows], False)
        v_pre = self._pass(rows, t, f, "null", True, self._writer_access(rows), [True] * len(rows), False)
        den = [i for i, r in enumerate(rows) if not r.clean]
        if not den:  # only a clean chunk's K/V was needed this forward
            return v_pre
        if passes == 2:
            v_unc = v_pre  # its weight below is 1 - sp = 0: text-only guidance, the third pass is not needed
        else:
            v_unc = torch.zeros_like(v_pre)
            v_unc[den] = self._pass([rows[i] for i in den], [t[i] for i in den], f, "null", True, None,
                                    [False] * len(den), False)
        rng = torch.tensor(self.rt.cfg_t_range, dtype=torch.float32) - 1e-7
        out = v_pre.clone()
        for i in den:
            k = int(torch.searchsorted(rng, torch.tensor(t[i], dtype=torch.float32))) - 1
            k = min(max(k, 0), len(self.rt.prev_chunk_scales) - 1)
            sp, st = self.rt.prev_chunk_scales[k], self.rt.text_scales[k]
            out[i] = v_unc[i] + sp * (v_pre[i] - v_unc[i]) + st * (v_text[i] - v_pre[i])
        return out

    # -- the loop --
    @torch.no_grad()
    def run(self) -> Iterator[tuple[int, torch.Tensor]]:
        """Yields (output chunk index, clean latent (C, frames, h, w)) as chunks finish."""
        t0 = time.perf_counter()
        wants_features = not isinstance(self.policy, NoCache)
        for f in self.plan:
            tf = time.perf_counter()
            self._paste_prefix()
            if f.prefill:
                self._write_clean(f.rows, f)
                continue
            den = f.denoising
            steps = []
            for r in den:
                ti, tn = float(self.ts[r.step]), float(self.ts[r.step + 1])
                feat = self.model.embed_patches(self.chunk(r.chunk_id)[None])[0] if wants_features else torch.empty(0)
                steps.append(ChunkStep(r.chunk_id, r.step, self.rt.num_steps, ti, tn - ti, r.step == 0, feat))
            decisions: list[ChunkDecision] = self.policy.decide(steps)
            compute = {d.chunk_id for d in decisions if d.compute}
            rows = [r for r in f.rows if r.clean or r.chunk_id in compute]
            near_dup = f.nearly_clean and den[0].chunk_id in compute
            entering = [r for r in den if r.step == 0]
            if entering and self.max_kv_range is not None:  # chunks no later kv range reaches are dropped
                self.store.evict_before(min(r.chunk_id for r in entering) - self.max_kv_range + 1)
            pre_tokens = 0
            if entering and self.store.budget_tokens is not None:
                # B_total as published: the chunk that has just become clean is compressible at this event too,
                # so its clean K/V is written first (its own forward; it sees only itself) and not forwarded again.
                just_clean = [r for r in rows if r.clean]
                if just_clean:
                    self._write_clean(just_clean, f)
                    pre_tokens = len(just_clean) * self._tokens_per_chunk()
                    rows = [r for r in rows if not r.clean]
                if self.store.make_room(len(entering) * self._tokens_per_chunk(), sorted(self.final_clean),
                                        self.last_queries):
                    self.record.compressions += 1
            velocities: dict[int, torch.Tensor] = {}
            if rows:
                v = self._velocity(rows, f, near_dup)
                velocities = {r.chunk_id: v[i] for i, r in enumerate(rows) if not r.clean}
                if self._last_access is not None and self._last_access.captured_queries:
                    self.last_queries = dict(self._last_access.captured_queries)
            self.final_clean.update(r.chunk_id for r in rows if r.clean)
            deltas = {}
            for s, d in zip(steps, decisions):
                delta = velocities[s.chunk_id] * s.dt if d.compute else self.policy.reused_delta(s)
                deltas[s.chunk_id] = delta
                self.chunk(s.chunk_id).add_(delta)
                bucket = self.record.computed if d.compute else self.record.reused
                bucket[s.chunk_id] = bucket.get(s.chunk_id, 0) + 1
            self.policy.update(steps, decisions, velocities, deltas)
            tokens = sum(self._tokens_per_chunk() for _ in rows) * self.cfg_passes() + pre_tokens
            self.record.forwards += 1
            self.record.tokens_forwarded += tokens
            self.record.kv_tokens.append(self.store.tokens("cond"))
            self.on_event(ForwardEvent(
                forward=f.index,
                chunks=[ChunkRecord(s.chunk_id, s.step, s.t, "compute" if d.compute else "reuse", d.reason,
                                    d.rel_l1, d.acc) for s, d in zip(steps, decisions)],
                tokens_forwarded=tokens, kv_used=self.store.tokens("cond"), kv_budget=self.store.budget_tokens,
                seconds=time.perf_counter() - tf, total_forwards=self.n_denoising_forwards))
            for c in f.emits:
                self.policy.drop(c)
                self.store.drop("text", c)
                yield self._emit(c)
        self.record.seconds = time.perf_counter() - t0

    def _tokens_per_chunk(self) -> int:
        p = self.model.cfg.patch_size
        _, _, h, w = self.x.shape
        return self.rt.chunk_width * (h // p) * (w // p)

    def _emit(self, c: int) -> tuple[int, torch.Tensor]:
        self._paste_prefix()  # the last Euler step moved the pasted frames too; the output keeps the given ones
        lat = self.chunk(c).clone()
        if c == self.offset and self.offset > 0 and self.partial:
            lat = lat[:, self.partial :]  # a v2v prefix's pasted frames are not output again
        idx = c - self.offset
        self.emitted += 1
        self.on_event(ChunkEmitted(idx, c, self.chunk_num - self.offset))
        return idx, lat
