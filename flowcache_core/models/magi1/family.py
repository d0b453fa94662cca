"""MAGI-1 as a family plugin: checkpoint recognition, config and its overlays, loading, and a generation's setup.

Checkpoints: a flowcache bundle whose config.json is in MAGI-1's schema (the shipped default model), or an
official MAGI-1 release root (ckpt/magi/<variant>, ckpt/vae, ckpt/t5; see release.py).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from flowcache_core.cache.options import check_options, check_value, option, option_fields
from flowcache_core.engine.family import Bundle
from flowcache_core.errors import FlowcacheError
from flowcache_core.models.codec import from_pixels
from flowcache_core.models.magi1.bundle import load_bundle
from flowcache_core.models.magi1.checks import check_frame_size, check_output_fits
from flowcache_core.models.magi1.config import MagiConfig, RuntimeConfig, check_config_section
from flowcache_core.models.magi1.quant import PRECISIONS
from flowcache_core.models.magi1.release import choose_variant, is_magi_release, release_ckpt_dir, variant_config
from flowcache_core.models.magi1.sampling import Magi1Generation, TextCondition
from flowcache_core.models.magi1.schedule import chunk_layout


@dataclass
class Magi1Options:
    """Request options only MAGI-1 has."""

    cfg_number: int | None = option(None, "1 (one pass) or 3 (MAGI-1 CFG: 3 passes, 2 when every prev-chunk scale is 1). Default: the model's.", kind=int, low=1, optional=True, example=3)
    precision: str | None = option(None, "DiT linears: bf16 (as released; float32 on the CPU) or fp8 (quantized on load, as the official *_quant releases; fp8 matmuls on GPUs with fp8 tensor cores). Default: the checkpoint's.", kind=str, choices=PRECISIONS, optional=True, example="fp8")

    def __post_init__(self) -> None:
        check_options(self)


class Magi1Family:
    name = "magi1"
    Options = Magi1Options

    def recognises(self, path: Path) -> bool:
        if is_magi_release(path):
            return True
        return (path / "config.json").is_file() and _has_model_config(path / "config.json")

    def read_config(self, path: Path, variant: str | None) -> MagiConfig:
        if is_magi_release(path):
            ckpt = release_ckpt_dir(path)
            return variant_config(ckpt, choose_variant(ckpt, variant))
        if variant is not None:
            raise FlowcacheError(f"--variant {variant!r} applies to MAGI-1 release directories only; "
                                 f"{str(path)!r} is a flowcache bundle")
        if not (path / "config.json").is_file():
            raise FlowcacheError(f"checkpoint directory {str(path)!r} has no config.json (MAGI-1 schema)")
        return MagiConfig.from_json(path / "config.json")

    def apply(self, config: MagiConfig, config_file: dict | None, source: str, *, spelled: dict[str, str],
              num_steps=None, num_frames=None, height=None, width=None, seed=None, cfg_number=None,
              precision=None) -> MagiConfig:
        """A config file (MAGI-1 schema) lays its runtime_config over the checkpoint's, key by key; its
        model_config and engine_config are not used (the weights fix the model). Then the request's options
        (precision fp8 sets engine_config.fp8_quant, which `load` reads: a bf16 release is quantized on load)."""
        overlay = (config_file or {}).get("runtime_config")
        if config_file is not None and overlay is None and "flowcache" not in config_file:
            raise FlowcacheError(f"{source} has neither a runtime_config object (MAGI-1 schema) nor flowcache.cache_defaults")
        if overlay is not None:
            if not isinstance(overlay, dict):
                raise FlowcacheError(f"{source}: runtime_config must be an object, not {type(overlay).__name__}")
            known = {f.name for f in dataclasses.fields(RuntimeConfig)}
            unknown = sorted(set(overlay) - known)
            if unknown:
                raise FlowcacheError(f"{source}: runtime_config key {unknown[0]!r} unknown "
                                     f"(allowed: {', '.join(sorted(known))})")
            check_config_section("runtime_config", overlay, where=source)
            config = dataclasses.replace(config, runtime=dataclasses.replace(config.runtime, **overlay))
        try:
            config = config.replace(num_steps=num_steps, num_frames=num_frames, video_size_h=height, video_size_w=width,
                                    cfg_number=cfg_number, seed=seed).validate()
        except FlowcacheError as e:  # a rule on a value the request gave: name it as the caller spelled it
            msg = str(e)
            for opt, key, given in (("num_steps", "num_steps", num_steps), ("cfg_number", "cfg_number", cfg_number)):
                if given is not None and msg.startswith(f"runtime_config: {key} "):
                    msg = spelled.get(opt, opt) + msg[len(f"runtime_config: {key}"):]
            raise FlowcacheError(msg) from None
        # a value the request did not set comes from the config (the checkpoint's, or the config file's)
        def name(option, given, key):
            return spelled.get(option, option) if given is not None else f"runtime_config.{key}"

        check_value(spelled.get("precision", "precision"), precision, option_fields(Magi1Options)["precision"].metadata)
        if precision == "bf16" and config.engine.fp8_quant:
            raise FlowcacheError(f"{spelled.get('precision', 'precision')} bf16: this checkpoint holds fp8 weights "
                                 f"(a *_quant variant); use its bf16 variant")
        if precision == "fp8":
            config = dataclasses.replace(config, engine=dataclasses.replace(config.engine, fp8_quant=True))
        check_frame_size(config, names=(name("height", height, "video_size_h"), name("width", width, "video_size_w")))
        check_output_fits(config, name=name("num_frames", num_frames, "num_frames"))
        return config

    def cache_defaults(self, config: MagiConfig) -> dict | None:
        return (config.extra.get("flowcache") or {}).get("cache_defaults")

    def window_size(self, config: MagiConfig) -> int:
        return config.runtime.window_size

    def video(self, config: MagiConfig) -> dict:
        rt = config.runtime
        return dict(num_steps=rt.num_steps, num_frames=rt.num_frames, height=rt.video_size_h, width=rt.video_size_w,
                    fps=rt.fps, chunk_width=rt.chunk_width, window_size=rt.window_size)

    def check_inputs(self, config: MagiConfig, mode: str, image: np.ndarray | None,
                     prefix_video: np.ndarray | None) -> None:
        rt = config.runtime
        H, W = rt.video_size_h, rt.video_size_w
        if mode == "i2v":
            if image is None:
                raise FlowcacheError("i2v needs --image")
            if image.shape[:2] != (H, W):
                raise FlowcacheError(f"image is {image.shape[1]}x{image.shape[0]}, the model generates {W}x{H} "
                                     f"(resize it or pass --width/--height)")
        elif mode == "v2v":
            if prefix_video is None:
                raise FlowcacheError("v2v needs --prefix-video")
            if prefix_video.shape[1:3] != (H, W):
                raise FlowcacheError(f"prefix video is {prefix_video.shape[2]}x{prefix_video.shape[1]}, "
                                     f"the model generates {W}x{H}")
            min_frames = rt.chunk_width * rt.temporal_downsample_factor
            if prefix_video.shape[0] < min_frames:
                raise FlowcacheError(f"prefix video has {prefix_video.shape[0]} frames, v2v needs at least one "
                                     f"chunk ({min_frames} frames)")

    def load(self, path: Path, config: MagiConfig, *, device: str, attn_backend: str, variant: str | None) -> Bundle:
        return load_bundle(path, device=device, attn_backend=attn_backend, variant=variant,
                           precision="fp8" if config.engine.fp8_quant else None)

    def prepare(self, bundle: Bundle, config: MagiConfig, prompt: str, mode: str, image: np.ndarray | None,
                prefix_video: np.ndarray | None) -> Magi1Generation:
        """Prefix latents (i2v: one image; v2v: a video), per-chunk captions and seeded noise -> a generation.
        The inputs were checked (`check_inputs`) by `api.generate` before the model loaded."""
        rt, codec, dev = config.runtime, bundle.codec, bundle.device
        prefix = None
        if mode == "i2v":
            prefix = codec.encode(from_pixels(image[None]).to(dev))
        elif mode == "v2v":
            usable = prefix_video.shape[0] - prefix_video.shape[0] % codec.temporal_downsample
            prefix = codec.encode(from_pixels(prefix_video[:usable]).to(dev))
        C, Tl, h, w = codec.latent_shape(rt.num_frames, rt.video_size_h, rt.video_size_w)
        P = 0 if prefix is None else prefix.shape[1]
        chunk_num, _ = chunk_layout(Tl, P, rt.chunk_width)
        # Text: one caption row per generated chunk (MAGI-1's T5 path prepends per-chunk duration tokens).
        with torch.no_grad():
            emb, mask = bundle.text_encoder.encode([prompt])
            caps, masks = bundle.text_encoder.chunk_captions(emb[0], mask[0], chunk_num - P // rt.chunk_width)
        text = TextCondition(caps.to(dev), masks.to(dev))
        # Seeded noise for every frame after the prefix, drawn on the CPU so every device gets the same video.
        gen = torch.Generator().manual_seed(rt.seed)
        noise = torch.randn(C, chunk_num * rt.chunk_width - P, h, w, generator=gen).to(dev)
        gen = Magi1Generation(bundle.model, config, text, noise, prefix=prefix)
        # Whole chunks are generated; the output is cut to what was asked: num_frames after the conditioning
        # (i2v: the image's latent frame opens the output; v2v: the prefix is not output).
        gen.output_frames = rt.num_frames + (P * codec.temporal_downsample if mode == "i2v" else 0)
        return gen


def _has_model_config(path: Path) -> bool:
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return True  # ours to read: MagiConfig.from_json reports the broken file in one line
    return isinstance(data, dict) and "model_config" in data


