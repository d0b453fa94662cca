"""The Python API the CLI calls: resolve a request, load the model, generate.

Data path, front to back: checkpoint folder -> its family (models/registry.py) -> config, with a config file and
the request laid over it, and the cache settings resolved (`resolve`); weights, codec and text encoder
(`load`); the family turns prompt / image / prefix video into a generation (text conditioning, seeded noise,
prefix latents); `engine.loop.run_chunks` walks it with the cache policy and the KV store; each clean chunk is
decoded by the codec as it is emitted; frames (T, H, W, 3) uint8 come back with the run's record.

    from flowcache_core import generate, CacheConfig
    result = generate("a green circle moves right", cache=CacheConfig("flowcache"))
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from flowcache_core.cache.kv import KVStore
from flowcache_core.cache.policy import CachePolicy
from flowcache_core.cache.kv_memory import tokens_for_bytes
from flowcache_core.checks import check_device, check_seed
from flowcache_core.cache.settings import CacheConfig, ResolvedCache, resolve_cache
from flowcache_core.engine.events import RunRecord, UnknownWords
from flowcache_core.engine.family import Bundle, Family, find_family
from flowcache_core.engine.loop import Generation, run_chunks
from flowcache_core.errors import FlowcacheError
from flowcache_core.fileio import read_json_object
from flowcache_core.models.codec import to_pixels
from flowcache_core.models.registry import FAMILIES

MODES = ("t2v", "i2v", "v2v")


@dataclass
class Request:
    """A generation request with every default resolved: what will run, checked before anything heavy loads."""

    family: Family
    path: Path
    variant: str | None
    config: Any  # the family's config, request and config file laid over the checkpoint's
    cache: ResolvedCache
    prompt: str
    mode: str
    device: str
    attn_backend: str


@dataclass
class GenerationResult:
    frames: np.ndarray  # (T, H, W, 3) uint8: exactly num_frames generated frames (whole chunks are generated, the
    #                     rest dropped at the end); a v2v prefix is not repeated; i2v: the image first (frame 0), then num_frames

    fps: int
    record: RunRecord
    latents: torch.Tensor  # (C, T', h, w) the emitted clean latents (whole chunks, not cut to num_frames)
    cache: ResolvedCache
    events: list = field(default_factory=list)


def read_config_file(path: str | os.PathLike) -> dict:
    """A config file: a JSON object (MAGI-1 schema for MAGI-1 models; `flowcache.cache_defaults` for cache options)."""
    return read_json_object(path, "config file")


def _cache_defaults(data: dict | None) -> Any:
    fc = data.get("flowcache") if data else None
    return fc.get("cache_defaults") if isinstance(fc, dict) else None


def resolve(prompt: str = "", *, mode: str = "t2v", cache: CacheConfig | None = None,
            checkpoint_dir: str | os.PathLike | None = None, variant: str | None = None,
            config_file: str | os.PathLike | None = None, bundle: Bundle | None = None, device: str = "cpu",
            attn_backend: str = "auto", spelled: dict[str, str] | None = None, **options: Any) -> Request:
    """Every default resolved in one place, in this order (later wins): built-in defaults < the checkpoint's
    config and `cache_defaults` < the config file < the arguments given here. `options`: num_steps, num_frames,
    height, width, seed and the family's own (e.g. cfg_number for MAGI-1); None = not given. `spelled`: how error
    lines name an option the caller gave (the CLI: {"height": "--height", ...}); default the option's own name."""
    from flowcache_core.models.attention import check_backend

    if mode not in MODES:
        raise FlowcacheError(f"mode {mode!r} unknown (allowed: {', '.join(MODES)})")
    if mode == "t2v" and not prompt.strip():
        raise FlowcacheError("prompt is empty; t2v needs a prompt (i2v/v2v may run without one)")
    check_device(device, "device")
    check_backend(attn_backend)
    if options.get("seed") is not None:
        check_seed(options["seed"], "seed")
    if bundle is not None:
        family, path, base = FAMILIES[bundle.family], bundle.path, bundle.config
    else:
        family, path = find_family(Path(checkpoint_dir) if checkpoint_dir is not None else None, FAMILIES)
        base = family.read_config(path, variant)
    options = _family_options(family, options, spelled or {})
    file_data = read_config_file(config_file) if config_file is not None else None
    source = f"config file {str(config_file)!r}"
    config = family.apply(base, file_data, source, spelled=spelled or {}, **options)
    resolved = resolve_cache(cache, [("the model's config.json", family.cache_defaults(config)),
                                     (source, _cache_defaults(file_data))])
    resolved.kv.validate_for(family.window_size(config))
    check_cache = getattr(family, "check_cache", None)  # a family may allow a cache setting in some runs only
    if check_cache is not None:
        check_cache(config, resolved)
    return Request(family, path, variant, config, resolved, prompt, mode, device, attn_backend)


GENERIC_OPTIONS = ("num_steps", "num_frames", "height", "width", "seed")


def _family_options(family: Family, options: dict, spelled: dict[str, str]) -> dict:
    """The request's options this family takes; a given option that belongs to another family is refused."""
    from flowcache_core.cache.options import option_fields

    own = set(GENERIC_OPTIONS) | set(option_fields(family.Options))
    for name, value in options.items():
        if name not in own and value is not None:
            owners = [f.name for f in FAMILIES.values() if name in option_fields(f.Options)]
            if not owners:
                raise FlowcacheError(f"option {name!r} unknown (allowed: {', '.join(sorted(own))})")
            raise FlowcacheError(f"{spelled.get(name, name)} applies to {'/'.join(owners)} checkpoints; this "
                                 f"checkpoint is {family.name}")
    return {k: v for k, v in options.items() if k in own}


def load(request: Request) -> Bundle:
    """The request's model on its device (a missing, corrupt or mis-shaped checkpoint fails here, in one line)."""
    return request.family.load(request.path, request.config, device=request.device,
                               attn_backend=request.attn_backend, variant=request.variant)


def make_store(cache: ResolvedCache, gen: Generation, window_size: int | None = None) -> KVStore:
    """The KV store a run uses, in the format `kv_quant` names: unbounded, or within a budget with the KV policy.

    A budget in chunks is B_total chunk-equivalents of tokens per layer. A budget in bytes becomes tokens per layer
    from what one token's K and V cost in every layer (the generation's `kv_heads`, `kv_head_dim`, `kv_dtype` and
    the format), after room for the per-pass window copies (`kv_copy_tokens`, 0 if the family keeps none); it must
    hold `window_size` + 1 chunks. The store checks the bytes too."""
    layers, quant = gen.kv_layers, cache.make_kv_quant()
    if not cache.budget_on:
        return KVStore(layers, quant=quant)
    tpc, tpf, policy = gen.tokens_per_chunk, gen.tokens_per_frame, cache.make_kv_policy()
    budget_bytes = cache.memory.budget_bytes
    if budget_bytes is None:
        b = cache.kv.total_cache_chunk_nums
        tokens, label = b * tpc, f"total_cache_chunk_nums={b}"
    else:
        label = f"kv_budget={cache.memory.kv_budget!r}"
        try:
            layout = (gen.kv_heads, gen.kv_head_dim, gen.kv_dtype)
        except AttributeError:
            raise FlowcacheError(f"{label}: this model family does not report its K/V layout (kv_heads, kv_head_dim, "
                                 "kv_dtype); give the budget in chunks (total_cache_chunk_nums)") from None
        tokens = tokens_for_bytes(
            budget_bytes, repr(cache.memory.kv_budget), layers=layers, token_bytes=2 * quant.bytes_per_token(*layout),
            copy_tokens=getattr(gen, "kv_copy_tokens", 0), unit=policy.unit(tpf, tpc), tokens_per_chunk=tpc,
            window_size=window_size)
    return KVStore(layers, budget_tokens=tokens, policy=policy, quant=quant, tokens_per_chunk=tpc,
                   tokens_per_frame=tpf, budget_bytes=budget_bytes, budget_label=label)


def generate(prompt: str = "", *, image: np.ndarray | None = None, prefix_video: np.ndarray | None = None,
             request: Request | None = None, bundle: Bundle | None = None,
             on_event: Callable[[object], None] | None = None,
             on_frames: Callable[[np.ndarray, int], None] | None = None, keep_frames: bool = True,
             policy: CachePolicy | None = None, **kwargs: Any) -> GenerationResult:
    """Generate a video. `image` is (H, W, 3) uint8 for i2v; `prefix_video` (T, H, W, 3) uint8 for v2v.

    Either a `request` from `resolve`, or `resolve`'s arguments (mode, cache, checkpoint_dir, config_file, seed,
    num_steps, num_frames, height, width, device, ...). `bundle`: an already loaded model to use.
    Streaming: `on_frames(frames, fps)` gets the output frames (uint8 (T, H, W, 3), already cut as `frames` is) as
    each chunk is decoded; with keep_frames False the result holds no frames and no latents (memory does not grow
    with the video: e.g. a `video.VideoStream`'s write)."""
    if request is None:
        request = resolve(prompt, bundle=bundle, **kwargs)
    elif kwargs:
        raise TypeError(f"generate: pass either request or resolve's arguments, not both ({', '.join(kwargs)})")
    request.family.check_inputs(request.config, request.mode, image, prefix_video)
    b = bundle if bundle is not None else load(request)
    gen = request.family.prepare(b, request.config, request.prompt, request.mode, image, prefix_video)
    store = make_store(request.cache, gen, request.family.window_size(request.config))
    events: list = []

    def emit(e: object) -> None:
        events.append(e)
        if on_event is not None:
            on_event(e)

    unknown = getattr(b.text_encoder, "unknown_words", None)  # a closed vocabulary: words outside it are noise
    if unknown is not None and request.prompt.strip():
        words = unknown(request.prompt)
        if words:
            emit(UnknownWords(words))

    dev = b.device
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    record = RunRecord()
    latents, frames = [], []
    # a causal video codec (Wan's VAE) decodes chunk after chunk with its own carried state: the frames equal one
    # decode of the whole latent; a frame-local codec decodes each chunk on its own
    stream = getattr(b.codec, "stream_decoder", None)
    decode = stream() if stream is not None else b.codec.decode
    keep = getattr(gen, "output_frames", None)  # whole chunks were generated: drop the frames past the request
    skip = getattr(gen, "output_skip", 0)  # frames that repeat a given video (decoded for the codec's state only)
    decoded = 0  # frames decoded so far: the output is decoded[skip:keep]
    for _, lat in run_chunks(gen, policy if policy is not None else request.cache.make_policy(), store, record, emit):
        px = to_pixels(decode(lat.float()))
        lo, hi = max(skip - decoded, 0), len(px) if keep is None else min(len(px), keep - decoded)
        decoded += len(px)
        part = px[lo:max(lo, hi)]
        if keep_frames:
            latents.append(lat)
            frames.append(part)
        if on_frames is not None and len(part):
            on_frames(part, gen.fps)
    if dev.type == "cuda":
        record.peak_memory_bytes = torch.cuda.max_memory_allocated(dev)
    video = np.concatenate(frames) if frames else np.zeros((0, 0, 0, 3), np.uint8)
    return GenerationResult(video, gen.fps, record, torch.cat(latents, 1) if latents else torch.empty(0),
                            request.cache, events)
