"""`generate`: prompt (and image / prefix video) in, frames out. The Python API the CLI calls.

Data path, front to back: prompt -> text encoder -> caption; seeded noise (C, T, h, w); image / prefix video
-> codec -> prefix latents; `Sampler` walks the chunk pipeline with the cache policy; each clean chunk is
decoded by the codec as it is emitted; frames (T, H, W, 3) uint8 come back with the run's record.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from flowcache_core.bundle import Bundle, load_bundle
from flowcache_core.cache.kv import KVStore
from flowcache_core.cache.kv_compressor import KVCompressor
from flowcache_core.cache.policy import CacheConfig, make_policy
from flowcache_core.checks import check_device, check_fits_in_memory, check_frame_size, check_seed
from flowcache_core.errors import FlowcacheError
from flowcache_core.model.codec import from_pixels, to_pixels
from flowcache_core.pipeline import RunRecord, Sampler, TextCondition
from flowcache_core.schedule import chunk_layout

MODES = ("t2v", "i2v", "v2v")


@dataclass
class GenerationResult:
    frames: np.ndarray  # (T, H, W, 3) uint8, generated frames only (a v2v prefix is not repeated)
    fps: int
    record: RunRecord
    latents: torch.Tensor  # (C, T', h, w) the emitted clean latents
    events: list = field(default_factory=list)


def make_store(model_cfg, cache: CacheConfig, tokens_per_chunk: int, tokens_per_frame: int) -> KVStore:
    """The KV store a run uses: unbounded, or B_total chunk-equivalents per layer with the KV compressor."""
    if not cache.compress:
        return KVStore(model_cfg.num_layers)
    comp = KVCompressor(cache.compress_strategy, cache.query_granularity, cache.mix_lambda)
    return KVStore(model_cfg.num_layers, budget_tokens=cache.total_cache_chunk_nums * tokens_per_chunk, compressor=comp,
                   tokens_per_chunk=tokens_per_chunk, tokens_per_frame=tokens_per_frame)


def _check_int(name: str, v, lo: int = 1) -> None:
    if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < lo):
        raise FlowcacheError(f"{name} {v!r} must be an integer >= {lo}")


def generate(prompt: str, *, mode: str = "t2v", image: np.ndarray | None = None,
             prefix_video: np.ndarray | None = None, cache: CacheConfig | None = None,
             checkpoint_dir: str | os.PathLike | None = None, bundle: Bundle | None = None,
             seed: int | None = None, num_steps: int | None = None, num_frames: int | None = None,
             height: int | None = None, width: int | None = None, cfg_number: int | None = None,
             device: str = "cpu", attn_backend: str = "sdpa", variant: str | None = None,
             on_event: Callable[[object], None] | None = None) -> GenerationResult:
    """Generate a video. `image` is (H, W, 3) uint8 for i2v; `prefix_video` (T, H, W, 3) uint8 for v2v."""
    if mode not in MODES:
        raise FlowcacheError(f"mode {mode!r} unknown (allowed: {', '.join(MODES)})")
    if mode == "t2v" and not prompt.strip():
        raise FlowcacheError("prompt is empty; t2v needs a prompt (i2v/v2v may run without one)")
    for name, v in (("num_steps", num_steps), ("num_frames", num_frames), ("height", height), ("width", width)):
        _check_int(name, v)
    if seed is not None:
        check_seed(seed, "seed")
    check_device(device, "device")
    b = bundle or load_bundle(checkpoint_dir, device=device, attn_backend=attn_backend, variant=variant)
    cfg = b.config.replace(num_steps=num_steps, num_frames=num_frames, video_size_h=height, video_size_w=width,
                           cfg_number=cfg_number, seed=seed)
    cfg.validate()
    check_frame_size(cfg, b.codec)
    check_fits_in_memory(cfg, b.codec)
    rt = cfg.runtime
    cache = cache or CacheConfig(policy="none")
    cache.validate_for(rt.window_size)
    dev = b.device

    # Prefix latents (i2v: one image; v2v: a video) in the codec's latent space.
    prefix = None
    H, W = rt.video_size_h, rt.video_size_w
    if mode == "i2v":
        if image is None:
            raise FlowcacheError("i2v needs --image")
        if image.shape[:2] != (H, W):
            raise FlowcacheError(f"image is {image.shape[1]}x{image.shape[0]}, the model generates {W}x{H} (resize it or pass --width/--height)")
        prefix = b.codec.encode(from_pixels(image[None]).to(dev))
    elif mode == "v2v":
        if prefix_video is None:
            raise FlowcacheError("v2v needs --prefix-video")
        if prefix_video.shape[1:3] != (H, W):
            raise FlowcacheError(f"prefix video is {prefix_video.shape[2]}x{prefix_video.shape[1]}, the model generates {W}x{H}")
        min_frames = rt.chunk_width * b.codec.temporal_downsample
        if prefix_video.shape[0] < min_frames:
            raise FlowcacheError(f"prefix video has {prefix_video.shape[0]} frames, v2v needs at least one chunk ({min_frames} frames)")
        usable = prefix_video.shape[0] - prefix_video.shape[0] % b.codec.temporal_downsample
        prefix = b.codec.encode(from_pixels(prefix_video[:usable]).to(dev))

    # Seeded noise for the generated part, drawn on the CPU so every device gets the same video.
    C, Tl, h, w = b.codec.latent_shape(rt.num_frames, H, W)
    p = b.config.model.patch_size
    P = 0 if prefix is None else prefix.shape[1]
    chunk_num, _ = chunk_layout(Tl, P, rt.chunk_width)
    # Text: one caption row per generated chunk (MAGI-1's T5 path prepends per-chunk duration tokens).
    with torch.no_grad():
        emb, mask = b.text_encoder.encode([prompt])
        caps, masks = b.text_encoder.chunk_captions(emb[0], mask[0], chunk_num - P // rt.chunk_width)
    text = TextCondition(caps.to(dev), masks.to(dev))

    gen = torch.Generator().manual_seed(rt.seed)
    noise = torch.randn(C, chunk_num * rt.chunk_width - P, h, w, generator=gen).to(dev)  # every frame after the prefix

    events: list = []

    def emit(e):
        events.append(e)
        if on_event is not None:
            on_event(e)

    sampler = Sampler(b.model, cfg, text, noise, prefix=prefix, policy=make_policy(cache), on_event=emit,
                      store=make_store(b.model.cfg, cache, tokens_per_chunk=rt.chunk_width * (h // p) * (w // p),
                                       tokens_per_frame=(h // p) * (w // p)))
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    latents, frames = [], []
    for _, lat in sampler.run():
        latents.append(lat)
        frames.append(to_pixels(b.codec.decode(lat.float())))
    record = sampler.record
    if dev.type == "cuda":
        record.peak_memory_bytes = torch.cuda.max_memory_allocated(dev)
    return GenerationResult(np.concatenate(frames), rt.fps, record, torch.cat(latents, 1), events)
