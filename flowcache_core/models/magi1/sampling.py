"""MAGI-1's forward function: one generation's latent state, its plan, and what a forward of it runs.

`Magi1Generation` is what the chunk loop (engine/loop.py) drives. What is MAGI-1's and lives here:
- the latent state of the whole video, prefix frames pasted back before every forward (i2v, partial v2v chunks);
- per-chunk captions, the null caption for clean rows and for the unconditional passes;
- guidance: one pass (cfg_number 1), or MAGI-1's three passes (text, null caption writing the store,
  unconditional without context), two when every prev_chunk_scale is 1 (the unconditional weight is then 0);
- the nearly-clean blend of one-pass runs: the oldest denoising chunk again, seeing only itself, 0.7 / 0.3;
- the distill step-size embedding (schedule.distill_step_size).
Facts: SandAI-org/MAGI-1 inference/pipeline/video_generate.py and inference/model/dit/dit_model.py.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from flowcache_core.cache.kv import KVAccess, KVStore
from flowcache_core.engine.loop import ForwardResult
from flowcache_core.engine.plan import Row
from flowcache_core.models.magi1.config import MagiConfig
from flowcache_core.models.magi1.dit import ChunkBatch, VideoDiT
from flowcache_core.models.magi1.schedule import MagiForward, chunk_layout, distill_step_size, plan_forwards

NEARLY_CLEAN_BLEND = 0.7  # 0.7 * (with context) + 0.3 * (self only): the official env prev_chunks_scale
NULL_CAPTION_TOKENS = 50  # MAGI-1's unconditional caption: the first 50 rows of null_caption_embedding
TEXT = "text"  # the text pass keeps its own window K/V; clean chunks it reads from the store's main context


@dataclass
class TextCondition:
    """The prompt's embedding, one row per generated chunk (MAGI-1 prepends per-chunk special tokens)."""

    caption: torch.Tensor  # (n_generated_chunks, Lc, Dcap), or (Lc, Dcap) for the same caption everywhere
    mask: torch.Tensor  # same leading shape, (…, Lc): 1 = valid token; all zero = empty prompt (null caption)


def null_caption(model: VideoDiT) -> tuple[torch.Tensor, torch.Tensor]:
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


def cfg_passes(config: MagiConfig) -> int:
    """DiT passes per forward: 1 (cfg_number 1), 3 (MAGI-1's CFG), or 2 when every prev_chunk_scale is 1:
    then the unconditional pass has weight 0 and only the text and null-caption passes run."""
    rt = config.runtime
    if rt.cfg_number == 1:
        return 1
    return 2 if all(sp == 1.0 for sp in rt.prev_chunk_scales) else 3


class Magi1Generation:
    """One MAGI-1 generation: latent state (C, chunk_num * cw, h, w), plan, captions, and the forward function."""

    def __init__(self, model: VideoDiT, config: MagiConfig, text: TextCondition, noise: torch.Tensor,
                 prefix: torch.Tensor | None = None):
        rt, eng = config.runtime, config.engine
        self.model, self.config, self.rt, self.eng = model, config, rt, eng
        self.device = noise.device
        cw = rt.chunk_width
        P = 0 if prefix is None else prefix.shape[1]
        self.chunk_num, self.offset = chunk_layout(noise.shape[1], P, cw)  # noise: every latent frame after the prefix
        self.partial = P % cw  # prefix frames pasted into chunk `offset` before every forward
        C, _, h, w = noise.shape
        total = self.chunk_num * cw
        x = torch.zeros(C, total, h, w, dtype=torch.float32, device=self.device)  # (C, chunk_num*cw, h, w)
        if P:
            x[:, :P] = prefix.float()
        x[:, P:] = noise[:, : total - P].float()
        self.x, self.prefix = x, prefix
        self.plan: list[MagiForward] = plan_forwards(
            self.chunk_num, rt.num_steps, rt.window_size, self.offset,
            noise2clean_kvrange=rt.noise2clean_kvrange, clean_chunk_kvrange=rt.clean_chunk_kvrange,
            nearly_clean_blend=rt.cfg_number == 1,  # the official cfg-1 dispatcher, any model
            nearly_clean_threshold=eng.distill_nearly_clean_chunk_threshold, shortcut_mode=eng.shortcut_mode)
        self.num_steps = rt.num_steps
        p = model.cfg.patch_size
        self.kv_layers = model.cfg.num_layers
        self.tokens_per_frame = (h // p) * (w // p)
        self.tokens_per_chunk = cw * self.tokens_per_frame
        self.fps = rt.fps
        self.passes = cfg_passes(config)
        # The K/V layout the store holds (a byte budget is converted with it); with two or three passes the text
        # pass keeps its own copy of every window chunk's K/V (context TEXT), up to window_size chunks at once.
        self.kv_heads, self.kv_head_dim, self.kv_dtype = model.cfg.num_query_groups, model.cfg.kv_channels, model.dtype
        self.kv_copy_tokens = rt.window_size * self.tokens_per_chunk if self.passes > 1 else 0
        Lmax = model.cfg.caption_max_length
        n_gen = self.chunk_num - self.offset
        caps = text.caption if text.caption.dim() == 3 else text.caption[None].expand(n_gen, -1, -1)
        masks = text.mask if text.mask.dim() == 2 else text.mask[None].expand(n_gen, -1)
        if caps.shape[0] != n_gen:
            raise ValueError(f"{caps.shape[0]} chunk captions for {n_gen} generated chunks")
        self.null = null_caption(model)
        if int(masks.sum()) == 0:  # empty prompt: MAGI-1 uses the null caption for the conditional pass too
            caps, masks = self.null[0][None].expand(n_gen, -1, -1), self.null[1][None].expand(n_gen, -1)
        padded = [_pad(c.to(self.device).float(), m.to(self.device), Lmax) for c, m in zip(caps, masks)]
        self.cond = (torch.stack([c for c, _ in padded]), torch.stack([m for _, m in padded]))  # (n_gen, Lmax, ·)

    # -- the state the loop reads and moves --
    def chunk(self, c: int) -> torch.Tensor:
        cw = self.rt.chunk_width
        return self.x[:, c * cw : (c + 1) * cw]  # (C, cw, h, w) view

    def feature(self, name: str, c: int) -> torch.Tensor:
        if name != "input_embedding":
            raise ValueError(f"MAGI-1 offers the feature 'input_embedding', not {name!r}")
        return self.model.embed_patches(self.chunk(c)[None])[0]  # (tokens, D) float32 patch embedding

    def before_forward(self) -> None:
        if self.partial:
            cw = self.rt.chunk_width
            s = self.offset * cw
            self.x[:, s : s + self.partial] = self.prefix[:, self.offset * cw :].float()

    def emit(self, c: int) -> tuple[int, int, torch.Tensor]:
        self.before_forward()  # the last Euler step moved the pasted frames too; the output keeps the given ones
        lat = self.chunk(c).clone()
        if c == self.offset and self.offset > 0 and self.partial:
            lat = lat[:, self.partial :]  # a v2v prefix's pasted frames are not output again
        return c - self.offset, self.chunk_num - self.offset, lat

    # -- forwards --
    def write_clean(self, f: MagiForward, rows: list[Row], store: KVStore) -> int:
        """Clean chunks at clean_t with the null caption, writing their final K/V (the store-writing pass's
        caption flags: with cfg_number 3 that is the dropped-caption pass)."""
        t = [self.rt.clean_t] * len(rows)
        self._pass(rows, t, f, "null", self.rt.cfg_number == 3, KVAccess(store), [True] * len(rows), False)
        return len(rows) * self.tokens_per_chunk

    def forward(self, f: MagiForward, rows: list[Row], store: KVStore, queries_of: int | None) -> ForwardResult:
        """Velocities of `rows` (clean rows only write K/V): one pass or MAGI-1's CFG (`cfg_passes`)."""
        den = [r for r in rows if not r.clean]
        near_dup = f.nearly_clean and bool(den) and den[0].chunk_id == f.denoising[0].chunk_id
        t = [self.rt.clean_t if r.clean else r.t for r in rows]
        if self.passes == 1:
            v, queries = self._pass(rows, t, f, "cond", False, KVAccess(store), [True] * len(rows), near_dup,
                                    queries_of)
        else:
            v, queries = self._guided(rows, t, f, store, queries_of)
        velocities = {r.chunk_id: v[i] for i, r in enumerate(rows) if not r.clean}
        return ForwardResult(velocities, len(rows) * self.tokens_per_chunk * self.passes, queries)

    def _guided(self, rows: list[Row], t: list[float], f: MagiForward, store: KVStore, queries_of: int | None):
        # text pass (own window slots, reads clean chunks from the main context), null-caption pass (writes the
        # store), unconditional pass (no context, chunk-local RoPE positions).
        v_text, _ = self._pass(rows, t, f, "cond", False, KVAccess(store, (TEXT, KVStore.MAIN), TEXT),
                               [not r.clean for r in rows], False)
        v_pre, queries = self._pass(rows, t, f, "null", True, KVAccess(store), [True] * len(rows), False, queries_of)
        den = [i for i, r in enumerate(rows) if not r.clean]
        if not den:  # only a clean chunk's K/V was needed this forward
            return v_pre, queries
        if self.passes == 2:
            v_unc = v_pre  # its weight below is 1 - sp = 0: text-only guidance, the third pass is not needed
        else:
            v_unc = torch.zeros_like(v_pre)
            v_unc[den], _ = self._pass([rows[i] for i in den], [t[i] for i in den], f, "null", True, None,
                                       [False] * len(den), False)
        rng = torch.tensor(self.rt.cfg_t_range, dtype=torch.float32) - 1e-7
        out = v_pre.clone()
        for i in den:
            k = int(torch.searchsorted(rng, torch.tensor(t[i], dtype=torch.float32))) - 1
            k = min(max(k, 0), len(self.rt.prev_chunk_scales) - 1)
            sp, st = self.rt.prev_chunk_scales[k], self.rt.text_scales[k]
            out[i] = v_unc[i] + sp * (v_pre[i] - v_unc[i]) + st * (v_text[i] - v_pre[i])
        return out, queries

    def _pass(self, rows: list[Row], t: list[float], f: MagiForward, caption: str, dropped: bool,
              kv: KVAccess | None, write: list[bool], near_dup: bool,
              queries_of: int | None = None) -> tuple[torch.Tensor, dict[int, torch.Tensor] | None]:
        """One DiT pass over `rows`: (n, C, cw, h, w) velocities, and the queries of `queries_of` if asked."""
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
        distill_dt = distill_step_size(self.rt.num_steps, f.distill_interval) if self.eng.distill else None
        batch = ChunkBatch(
            x=torch.stack(xs), t=torch.tensor(ts, dtype=torch.float32, device=self.device),
            chunk_ids=ids, kv_start=starts,
            caption=cap, caption_mask=mask,
            caption_dropped=torch.full((n,), dropped, dtype=torch.bool, device=self.device),
            write_kv=write, time_offset=offsets, shared=shared, distill_dt=distill_dt)
        queries = None
        if queries_of is not None and kv is not None:
            v, queries = self.model(batch, kv, queries_of=queries_of)  # v: (n, C, cw, h, w)
        else:
            v = self.model(batch, kv)
        if near_dup:
            j = next(i for i, r in enumerate(rows) if not r.clean)
            v = v.clone()
            v[j] = NEARLY_CLEAN_BLEND * v[j] + (1 - NEARLY_CLEAN_BLEND) * v[-1]
            v = v[:-1]
        return v, queries
