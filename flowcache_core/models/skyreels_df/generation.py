"""SkyReels-V2 DF's forward function: one generation's segments, latents and solver states, and what a forward runs.

`DFGeneration` is what the chunk loop (engine/loop.py) drives; a chunk is one causal block (schedule.py). What is
SkyReels-V2's and lives here:
- the latents of the current segment (C, F, h, w) float32; a new segment starts from fresh seeded noise with the
  given prefix pasted (the image, the video's tail, or the end of the output so far);
- the DiT call of a forward: the chunks it runs (clean ones to write their K/V, the policy's computed ones, and,
  with full attention, the not-started ones every frame sees), per-frame timesteps, RoPE positions in the segment,
  addnoise on the prefix frames, guidance as a second pass with the negative prompt and its own K/V context;
- the solver: multistep UniPC, one state per chunk (`advance`); a policy reuses model outputs.
Exactness: with caching off the numbers are diffusers' (tests/test_skyreels_df.py). Clean blocks of a causal run are
forwarded once and read from the KV store after (their K/V cannot change); blocks that have not started are not
forwarded in causal runs (no block sees a later one). Both are exact.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from flowcache_core.cache.kv import KVAccess, KVStore
from flowcache_core.engine.loop import ForwardResult
from flowcache_core.engine.plan import Row
from flowcache_core.errors import FlowcacheError
from flowcache_core.models.codec import from_pixels
from flowcache_core.models.skyreels_df.config import DFConfig
from flowcache_core.models.skyreels_df.latents import (
    addnoise, addnoise_generator, image_prefix, overlap_prefix, segment_noise, start_latents, video_prefix,
)  # fmt: skip
from flowcache_core.models.skyreels_df.schedule import DFForward, DFPlan, layout, plan_forwards
from flowcache_core.models.skyreels_df.solver import UniPC, flow_t, read_scheduler_config, with_shift
from flowcache_core.models.wan.dit import WanDiT, WanKV

UNCOND = "uncond"  # the negative-prompt pass keeps its own K/V (its hidden states differ from the prompt pass's)


class DFGeneration:
    """One SkyReels-V2 DF generation: plan, current segment's latents, solver states, and the forward function."""

    clean_kv_contexts = (UNCOND,)  # a clean chunk's negative-prompt K/V is read by later chunks: keep it

    def __init__(self, model: WanDiT, config: DFConfig, plan: DFPlan, solver: UniPC, cond: Tensor,
                 uncond: Tensor | None, first_prefix: Tensor | None, latent_hw: tuple[int, int],
                 channels: int, device: torch.device):
        s = config.settings
        self.model, self.config, self.settings, self.df = model, config, s, plan
        self.plan: list[DFForward] = plan.forwards
        self.num_steps = plan.num_steps
        self.block = plan.block_size
        self.kv_layers = model.cfg.num_layers
        h, w = latent_hw
        _, ph, pw = model.cfg.patch_size
        self.tokens_per_frame = (h // ph) * (w // pw)
        self.tokens_per_chunk = self.block * self.tokens_per_frame
        self.fps = s.fps
        self.kv_heads, self.kv_head_dim, self.kv_dtype = (model.cfg.num_attention_heads, model.cfg.attention_head_dim,
                                                          model.dtype)
        self.solver, self.device, self.channels, self.hw = solver, device, channels, latent_hw
        self.cond, self.uncond = cond, uncond  # (1, Lt, D) text contexts in the model's dtype
        self.guidance = s.guidance_scale
        self.first_prefix = first_prefix
        self.noise = torch.Generator("cpu").manual_seed(s.seed)  # diffusers: generator=Generator("cpu").manual_seed
        self.addnoise_gen = addnoise_generator(s.seed, "cpu") if s.addnoise_condition > 0 else None
        self.states: dict = {}
        self.segment, self.x = -1, None  # current segment and its latents (C, F, h, w) float32
        self.tail: Tensor | None = None  # the output's last frames: the next segment's overlap prefix
        self.total = sum(c.output[1] > c.output[0] for c in plan.chunks)
        self.emitted = 0
        self._next = 0  # the plan entry the next before_forward opens
        self._noised: Tensor | None = None  # this forward's prefix frames with addnoise (model dtype)

    # -- the state the loop reads and moves --
    def chunk(self, c: int) -> Tensor:
        lo, hi = self.df.chunks[c].frames
        return self.x[:, lo:hi]  # (C, B, h, w) view of the current segment

    def feature(self, name: str, c: int) -> Tensor:
        if name != "input_embedding":
            raise ValueError(f"SkyReels-V2 DF offers the feature 'input_embedding', not {name!r}")
        return self.model.embed_patches(self.chunk(c)[None])[0].flatten(0, 1).float()  # (B*h*w/4, D)

    def before_forward(self) -> None:
        """Opens the next plan entry: a new segment's latents; this forward's addnoise draw (diffusers draws one
        per iteration, whatever the iteration computes)."""
        f = self.plan[self._next]
        self._next += 1
        if f.segment != self.segment:
            self._start_segment(f.segment)
        self._noised = None
        lo, hi = f.noised
        if hi > lo:
            self._noised = addnoise(self.x[:, lo:hi].to(self.model.dtype)[None], f.addnoise, self.addnoise_gen)[0]

    def _start_segment(self, k: int) -> None:
        seg = self.df.layout.segments[k]
        h, w = self.hw
        noise = segment_noise(self.noise, seg.num_frames, self.channels, h, w, self.device)
        prefix = self.first_prefix if k == 0 else overlap_prefix(self.tail, self.df.layout.overlap_latent_frames,
                                                                 self.block)
        self.x = start_latents(noise, prefix, self.model.dtype)
        self.segment = k
        self.states = {}

    def advance(self, step, output: Tensor) -> None:
        """The chunk's UniPC step from the model output (diffusers' flow prediction, noise - clean)."""
        st = self.states.get(step.chunk_id)
        if st is None:
            st = self.states[step.chunk_id] = self.solver.new_state()
        x = self.chunk(step.chunk_id)
        x.copy_(self.solver.step(st, output, x))

    def emit(self, c: int) -> tuple[int, int, Tensor]:
        info = self.df.chunks[c]
        lo = info.frames[0]
        lat = self.x[:, lo + info.kept[0] : lo + info.kept[1]].clone()  # (C, kept frames, h, w)
        o = self.df.layout.overlap_latent_frames or 0
        if o:
            self.tail = lat if self.tail is None else torch.cat([self.tail, lat], dim=1)[:, -o:]
        self.emitted += 1
        return self.emitted - 1, self.total, lat

    # -- forwards --
    def write_clean(self, f: DFForward, rows: list[Row], store: KVStore) -> int:
        return self._run(f, rows, store, None)[1]

    def forward(self, f: DFForward, rows: list[Row], store: KVStore, queries_of: int | None) -> ForwardResult:
        v, tokens, queries = self._run(f, rows, store, queries_of)
        return ForwardResult(v, tokens, queries)

    def _run(self, f: DFForward, rows: list[Row], store: KVStore, queries_of: int | None):
        """One DiT call over `rows` (+ the not-started chunks full attention sees), both guidance passes."""
        B = self.block
        ids = sorted({r.chunk_id for r in rows} | set(f.context))
        starts = {r.chunk_id: r.kv_start for r in rows}
        base = self.df.chunk_base[f.segment]
        frames = [fr for c in ids for fr in range(*self.df.chunks[c].frames)]  # segment-local latent frames
        x = self.x[:, frames].to(self.model.dtype)  # (C, n*B, h, w): diffusers feeds latents.to(transformer dtype)
        lo, hi = f.noised
        if self._noised is not None:
            for i, fr in enumerate(frames):
                if lo <= fr < hi:
                    x[:, i] = self._noised[:, fr - lo]
        t0 = f.frames[0]
        ts = torch.tensor([f.model_timesteps[fr - t0] for fr in frames], dtype=torch.int64, device=self.device)
        pos = torch.tensor(frames, device=self.device)
        kv_end = None if f.causal else [f.interval[1]] * len(ids)

        def call(context: Tensor, access: KVAccess, q_of: int | None) -> tuple[Tensor, dict]:
            kv = WanKV(access, ids, [starts.get(c, base) for c in ids], [True] * len(ids), queries_of=q_of,
                       kv_end=kv_end)
            out = self.model(x[None], ts[None], context, block_frames=B, fps=self.fps, kv=kv, causal=f.causal,
                             positions=pos)
            return out[0], kv.queries  # (C, n*B, h, w) float32

        v, queries = call(self.cond, KVAccess(store), queries_of)
        passes = 1
        if self.uncond is not None:  # classifier-free guidance, diffusers' order: prompt pass, then negative
            v_unc, _ = call(self.uncond, KVAccess(store, (UNCOND,), UNCOND), None)
            v = v_unc + self.guidance * (v - v_unc)
            passes = 2
        denoising = {r.chunk_id for r in rows if not r.clean}
        velocities = {c: v[:, i * B : (i + 1) * B] for i, c in enumerate(ids) if c in denoising}
        return velocities, len(ids) * self.tokens_per_chunk * passes, (queries or None)


# ------------------------------------------------------------------------------------------ setup


def solver_for(config: DFConfig) -> UniPC:
    cfg = with_shift(read_scheduler_config(config.path / "scheduler" / "scheduler_config.json"), config.settings.shift)
    return UniPC(cfg, config.settings.num_inference_steps)


def make_plan(config: DFConfig, mode: str, video_frames: int | None = None) -> DFPlan:
    """The whole generation's forwards (cheap: no tensors); FlowcacheError naming the setting that cannot run."""
    s = config.settings
    B = config.block_frames
    lay = layout(mode, s.num_frames, s.base_num_frames, s.overlap_history, B,
                 video_frames=video_frames if mode == "v2v" else None,
                 temporal_stride=config.temporal_downsample)
    solver = solver_for(config)
    return plan_forwards(lay, solver.timesteps, flow_t(solver.sigmas), ar_step=s.ar_step, causal_block_size=B,
                         addnoise_condition=s.addnoise_condition, reuse_clean_kv=config.clean_kv == "reuse")


def prepare_generation(bundle, config: DFConfig, prompt: str, mode: str, image: np.ndarray | None,
                       prefix_video: np.ndarray | None) -> DFGeneration:
    """Text contexts, the first segment's given prefix (image / video tail), the plan -> a generation."""
    s, codec, model, dev = config.settings, bundle.codec, bundle.model, bundle.device
    plan = make_plan(config, mode, None if prefix_video is None else prefix_video.shape[0])
    first = None
    if mode == "i2v":
        enc = codec.encode_raw(from_pixels(image[None]).to(dev))  # (C, 1, h, w) the VAE's mean, unnormalised
        first = image_prefix(enc, codec.vae.config.latents_mean, codec.vae.config.latents_std)
    elif mode == "v2v":
        tail = prefix_video[-min(prefix_video.shape[0], s.overlap_history):]
        enc = codec.encode_raw(from_pixels(tail).to(dev))
        first = video_prefix(enc, codec.vae.config.latents_mean, codec.vae.config.latents_std, config.block_frames,
                             codec.dtype)
    with torch.no_grad():
        texts = bundle.text_encoder.encode([prompt] + ([s.negative_prompt] if s.guidance_scale > 1.0 else []),
                                           max_length=s.max_sequence_length)
        ctx = model.embed_text(texts)  # (1 or 2, Lt, D)
    uncond = ctx[1:2] if s.guidance_scale > 1.0 else None
    h, w = s.height // config.spatial_downsample, s.width // config.spatial_downsample
    gen = DFGeneration(model, config, plan, solver_for(config), ctx[0:1], uncond, first, (h, w),
                       model.cfg.in_channels, dev)
    td = config.temporal_downsample
    out_latents = plan.layout.output_latent_frames
    gen.output_frames = 1 + td * (out_latents - 1)
    if mode == "v2v":  # the mp4 holds the continuation: the re-encoded tail of the given video is not repeated
        given = plan.layout.segments[0].prefix_frames
        gen.output_skip = 1 + td * (given - 1) if given else 0
    return gen


def check_plan(config: DFConfig, mode: str = "t2v") -> DFPlan:
    plan = make_plan(config, mode, config.settings.overlap_history if mode == "v2v" else None)
    for seg in plan.layout.segments:
        if seg.tail(plan.block_size):
            raise FlowcacheError(
                f"segment {seg.index} has {seg.num_frames} latent frames, not whole causal blocks of "
                f"{plan.block_size}: its last {seg.tail(plan.block_size)} would stay noise (as in diffusers); "
                f"change num_frames or causal_block_size")
    return plan
