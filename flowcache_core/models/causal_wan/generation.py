"""Streaming causal Wan's forward function: the blocks' latents, the few-step solver, what a forward runs.

`CausalWanGeneration` is what the chunk loop (engine/loop.py) drives; a chunk is one block of
`num_frame_per_block` latent frames (schedule.py has the plan and the schedule's facts). Streaming: a block's
latents exist from its first step until its clean K/V is written (the next block's first forward), so the state
does not grow with the video; the store drops K/V no later block attends (a local window) and a KV budget bounds
the rest.

Noise, for the same seed as theirs (inference.py seeds torch's global generator, draws the initial noise for every
generated latent frame at once, (1, F, C, h, w); the pipeline then draws `randn_like` per block and step, but the
last): two torch.Generator("cpu") seeded with `seed`; one draws each block's initial noise as its first step opens
(consecutive draws of whole blocks give the numbers of one draw, as torch's CPU normal sampler works in groups of
16 values), the other, advanced past the F*C*h*w initial values, draws the re-noising. On CPU float32 these are
their numbers; on CUDA theirs come from the device generator, ours still from the CPU one.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from flowcache_core.cache.kv import KVAccess, KVStore
from flowcache_core.engine.loop import ForwardResult
from flowcache_core.engine.plan import Forward, Row
from flowcache_core.errors import FlowcacheError
from flowcache_core.models.causal_wan.config import CausalWanConfig
from flowcache_core.models.causal_wan.schedule import (
    denoising_timesteps, plan_forwards, sigma_of, window_for,
)  # fmt: skip
from flowcache_core.models.codec import from_pixels
from flowcache_core.models.wan.dit import WanDiT, WanKV


def skip_normals(gen: torch.Generator, count: int, piece: int) -> None:
    """Advance `gen` past `count` standard normals (drawn in pieces of `piece` values, a multiple of 16)."""
    while count > 0:
        n = min(count, piece)
        torch.randn(n, generator=gen)
        count -= n


class CausalWanGeneration:
    """One streaming generation: plan, per-block latents, noise generators, and the forward function."""

    def __init__(self, model: WanDiT, config: CausalWanConfig, context: Tensor, latent_hw: tuple[int, int],
                 prefix: Tensor | None, device: torch.device):
        s = config.settings
        self.model, self.config, self.settings, self.device = model, config, s, device
        self.block = B = s.num_frame_per_block
        self.channels = model.cfg.in_channels
        self.hw = h, w = latent_hw
        _, ph, pw = model.cfg.patch_size
        self.tokens_per_frame = (h // ph) * (w // pw)
        self.tokens_per_chunk = B * self.tokens_per_frame
        self.kv_layers = model.cfg.num_layers
        self.kv_heads, self.kv_head_dim, self.kv_dtype = (model.cfg.num_attention_heads, model.cfg.attention_head_dim,
                                                          model.dtype)
        self.fps = s.fps
        self.context = context  # (1, Lt, D) model dtype
        self.timesteps = denoising_timesteps(s.denoising_step_list, s.warp_denoising_step, s.timestep_shift)
        self.sigmas = sigma_of(self.timesteps, s.timestep_shift)  # (steps,) float32
        self.num_steps = len(self.timesteps)
        self.prefix_blocks = 0 if prefix is None else prefix.shape[1] // B
        gen_frames = generated_latent_frames(config, prefix is not None)
        self.blocks = self.prefix_blocks + gen_frames // B
        self.window = window_for(s.local_attn_size, s.sink_size, B)
        self.plan: list[Forward] = plan_forwards(self.prefix_blocks, self.blocks, self.timesteps, self.sigmas,
                                                 self.window)
        self.latents: dict[int, Tensor] = {}  # block -> (C, B, h, w) float32, while it is needed
        if prefix is not None:
            for c in range(self.prefix_blocks):
                self.latents[c] = prefix[:, c * B : (c + 1) * B].float()
        self.block_numel = self.channels * B * h * w
        self.initial = torch.Generator("cpu").manual_seed(s.seed)
        self.renoise = torch.Generator("cpu").manual_seed(s.seed)
        skip_normals(self.renoise, gen_frames * self.channels * h * w, self.block_numel)
        self.emitted = 0
        self._next = 0  # the plan entry the next before_forward opens

    # -- the state the loop reads and moves --
    def chunk(self, c: int) -> Tensor:
        return self.latents[c]

    def feature(self, name: str, c: int) -> Tensor:
        if name != "input_embedding":
            raise ValueError(f"causal Wan offers the feature 'input_embedding', not {name!r}")
        return self.model.embed_patches(self.chunk(c)[None])[0].flatten(0, 1).float()  # (B*h*w/4, D)

    def before_forward(self) -> None:
        """Opens the next plan entry: a block entering gets its initial noise; blocks whose clean K/V is written
        and that are emitted are forgotten."""
        f = self.plan[self._next]
        self._next += 1
        low = min(r.chunk_id for r in f.rows)
        for c in [c for c in self.latents if c < low and c < self.emitted]:
            del self.latents[c]
        for r in f.rows:
            if r.step == 0:
                B, (h, w) = self.block, self.hw
                noise = torch.randn(B, self.channels, h, w, generator=self.initial)  # theirs: (F, C, h, w) order
                self.latents[r.chunk_id] = noise.permute(1, 0, 2, 3).contiguous().to(self.device)

    def advance(self, step, output: Tensor) -> None:
        """x0 = x_t - sigma_t * output (float64, theirs), then but at the last step re-noised to the next sigma."""
        x = self.latents[step.chunk_id]  # (C, B, h, w)
        sigma = self.sigmas[step.step].double()
        x0 = (x.double() - sigma * output.double()).float()
        if step.step == self.num_steps - 1:
            x.copy_(x0)
            return
        B, (h, w) = self.block, self.hw
        noise = torch.randn(B, self.channels, h, w, generator=self.renoise).permute(1, 0, 2, 3).to(x.device)
        nxt = self.sigmas[step.step + 1].to(x.device)
        x.copy_((1 - nxt) * x0 + nxt * noise)

    def emit(self, c: int) -> tuple[int, int, Tensor]:
        self.emitted = max(self.emitted, c + 1)
        return c, self.blocks, self.latents[c].clone()

    # -- forwards --
    def write_clean(self, f: Forward, rows: list[Row], store: KVStore) -> int:
        return self._run(rows, store, None)[1]

    def forward(self, f: Forward, rows: list[Row], store: KVStore, queries_of: int | None) -> ForwardResult:
        v, tokens, queries = self._run(rows, store, queries_of)
        return ForwardResult(v, tokens, queries)

    def _run(self, rows: list[Row], store: KVStore, queries_of: int | None):
        """One DiT call over the rows: clean ones at context_noise (a given block at 0, as their prefill), the
        denoising one at its step's timestep; RoPE at the blocks' absolute frames."""
        B = self.block
        rows = sorted(rows, key=lambda r: r.chunk_id)
        ids = [r.chunk_id for r in rows]
        x = torch.cat([self.latents[c] for c in ids], dim=1).to(self.model.dtype)  # (C, n*B, h, w)
        ts = []
        for r in rows:
            if r.clean:
                t = 0.0 if r.chunk_id < self.prefix_blocks else float(self.settings.context_noise)
                ts.append(torch.full((B,), t, dtype=torch.float32))
            else:
                ts.append(self.timesteps[r.step].float().expand(B))
        ts = torch.cat(ts).to(self.device)
        pos = torch.cat([torch.arange(c * B, (c + 1) * B) for c in ids]).to(self.device)
        kv = WanKV(KVAccess(store), ids, [r.kv_start for r in rows], [True] * len(ids), queries_of=queries_of,
                   kv_sink=[r.kv_sink for r in rows], kv_frames=[self.window.of(c)[2] for c in ids])
        out = self.model(x[None], ts[None], self.context, block_frames=B, kv=kv, causal=True, positions=pos)[0]
        velocities = {c: out[:, i * B : (i + 1) * B] for i, (c, r) in enumerate(zip(ids, rows)) if not r.clean}
        return velocities, len(ids) * self.tokens_per_chunk, (kv.queries or None)


# ------------------------------------------------------------------------------------------ setup


def generated_latent_frames(config: CausalWanConfig, continuation: bool) -> int:
    """Latent frames to generate, whole blocks: t2v (num_frames - 1) / 4 + 1 frames, a continuation num_frames / 4
    (each latent frame after the first decodes to 4 video frames), rounded up."""
    s, td = config.settings, config.temporal_downsample
    n = -(-s.num_frames // td) if continuation else -(-(s.num_frames - 1) // td) + 1
    return -(-n // s.num_frame_per_block) * s.num_frame_per_block


def prefix_video_frames(config: CausalWanConfig, frames: int) -> int:
    """Frames of a given video's tail that encode to whole blocks of latent frames (12m - 3 for blocks of 3)."""
    B, td = config.settings.num_frame_per_block, config.temporal_downsample
    m = (frames - 1 + td) // (B * td)
    if m < 1:
        raise FlowcacheError(f"prefix video has {frames} frames: a continuation needs at least {B * td - td + 1} "
                             f"(one block of {B} latent frames)")
    return m * B * td - td + 1


def prepare_generation(bundle, config: CausalWanConfig, prompt: str, mode: str, image: np.ndarray | None,
                       prefix_video: np.ndarray | None) -> CausalWanGeneration:
    s, codec, model, dev = config.settings, bundle.codec, bundle.model, bundle.device
    prefix = None
    if mode == "v2v":
        tail = prefix_video[-prefix_video_frames(config, prefix_video.shape[0]):]
        with torch.no_grad():
            prefix = codec.encode(from_pixels(tail).to(dev)).float()  # (C, P, h, w) normalised as theirs
    with torch.no_grad():
        ctx = model.embed_text(bundle.text_encoder.encode([prompt]))  # (1, Lt, D)
    h, w = s.height // config.spatial_downsample, s.width // config.spatial_downsample
    gen = CausalWanGeneration(model, config, ctx, (h, w), prefix, dev)
    td = config.temporal_downsample
    skip = 0 if prefix is None else 1 + td * (prefix.shape[1] - 1)
    gen.output_skip = skip  # the re-encoded given frames are decoded (the VAE's state), not output
    gen.output_frames = skip + s.num_frames
    return gen
