"""Streaming causal Wan (Self-Forcing / LongLive) as a family plugin: a generator checkpoint + the Wan2.1 base folder.

Recognised by config.json {"family": "causal_wan"} or by its layout (config.py). Options are Self-Forcing's
inference settings, named as their configs name them (`--local-attn-size`, `--sink-size`, `--context-noise`,
`--timestep-shift`); the step list comes from the checkpoint's config.json `inference` (or a config file).
Modes: t2v, v2v (continue a given video: its tail's whole blocks are encoded and prefilled as clean context).
"""
from __future__ import annotations

import typing
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flowcache_core.cache.options import check_options, option
from flowcache_core.engine.family import Bundle
from flowcache_core.errors import FlowcacheError
from flowcache_core.models.causal_wan.config import (
    FAMILY, LIMITS, CausalWanConfig, CausalWanSettings, check_settings, is_causal_wan_folder, read_checkpoint,
)  # fmt: skip
from flowcache_core.models.wan.requests import check_prefix_video, overlay_config_file, refuse_variant
from flowcache_core.schema import check_value

SETTING_TYPES = typing.get_type_hints(CausalWanSettings)
MODES = ("t2v", "v2v")
WHAT = "a causal Wan checkpoint"


@dataclass
class CausalWanOptions:
    """Request options only the streaming causal Wan family has (None: the checkpoint's, else Self-Forcing's)."""

    local_attn_size: int | None = option(None, "causal Wan: latent frames a block attends to (its KV cache), sink included; -1 all earlier (Self-Forcing), 12 for LongLive.", kind=int, low=-1, optional=True, example=12)
    sink_size: int | None = option(None, "causal Wan: first latent frames every block keeps attending to with a local window (LongLive: 3).", kind=int, low=0, optional=True, example=3)
    context_noise: int | None = option(None, "causal Wan: timestep of the clean re-run that writes a finished block's K/V. Default 0.", kind=int, low=0, high=1000, optional=True, example=0)
    timestep_shift: float | None = option(None, "causal Wan: flow-matching shift the step list is warped through. Default 5.0.", low=0, optional=True, example=5.0)
    fps: int | None = option(None, "causal Wan: frame rate of the output. Default 16.", kind=int, low=1, optional=True, example=16)

    def __post_init__(self) -> None:
        check_options(self)


class CausalWanFamily:
    name = FAMILY
    Options = CausalWanOptions

    def recognises(self, path: Path) -> bool:
        return is_causal_wan_folder(path)

    def read_config(self, path: Path, variant: str | None) -> CausalWanConfig:
        refuse_variant(variant, path, WHAT)
        return read_checkpoint(path)

    def apply(self, config: CausalWanConfig, config_file: dict | None, source: str, *, spelled: dict[str, str],
              num_steps=None, num_frames=None, height=None, width=None, seed=None, **opts) -> CausalWanConfig:
        """A config file's `inference` (their inference settings), then the request's options."""
        config = overlay_config_file(config, config_file, source, "inference", WHAT, check_settings)
        if num_steps is not None and num_steps != len(config.settings.denoising_step_list):
            raise FlowcacheError(f"{spelled.get('num_steps', 'num_steps')}={num_steps}: this checkpoint denoises in "
                                 f"{len(config.settings.denoising_step_list)} steps (its denoising_step_list "
                                 f"{config.settings.denoising_step_list}); set the list in a config file's inference")
        given = dict(num_frames=num_frames, height=height, width=width, seed=seed, **opts)
        given = {k: v for k, v in given.items() if v is not None}
        for k, v in given.items():
            check_value(v, SETTING_TYPES[k], spelled.get(k, k), LIMITS.get(k))
        config = config.replace_settings(**given)
        check_request(config, spelled)
        return config

    def cache_defaults(self, config: CausalWanConfig) -> dict | None:
        return config.cache_defaults

    def window_size(self, config: CausalWanConfig) -> int:
        return 1  # one block denoises at a time

    def video(self, config: CausalWanConfig) -> dict:
        s = config.settings
        return dict(num_steps=len(s.denoising_step_list), num_frames=s.num_frames, height=s.height, width=s.width,
                    fps=s.fps, block_frames=s.num_frame_per_block)

    def check_inputs(self, config: CausalWanConfig, mode: str, image: np.ndarray | None,
                     prefix_video: np.ndarray | None) -> None:
        s = config.settings
        if mode not in MODES:
            raise FlowcacheError(f"mode {mode!r}: a causal Wan checkpoint runs {', '.join(MODES)}")
        if mode == "v2v":
            check_prefix_video(s, prefix_video)
            from flowcache_core.models.causal_wan.generation import prefix_video_frames

            prefix_video_frames(config, prefix_video.shape[0])

    def load(self, path: Path, config: CausalWanConfig, *, device: str, attn_backend: str,
             variant: str | None) -> Bundle:
        from flowcache_core.models.causal_wan.loading import load_checkpoint

        return load_checkpoint(path, config, device=device, attn_backend=attn_backend)

    def prepare(self, bundle: Bundle, config: CausalWanConfig, prompt: str, mode: str, image: np.ndarray | None,
                prefix_video: np.ndarray | None):
        from flowcache_core.models.causal_wan.generation import prepare_generation

        return prepare_generation(bundle, config, prompt, mode, image, prefix_video)


def check_request(config: CausalWanConfig, spelled: dict[str, str]) -> None:
    """Rules between settings, each naming the option."""
    from flowcache_core.models.causal_wan.schedule import window_for

    s, n = config.settings, (lambda k: spelled.get(k, k))
    mult = config.spatial_downsample * 2  # VAE 8x, patch 2x
    for k in ("height", "width"):
        if getattr(s, k) % mult:
            raise FlowcacheError(f"{n(k)}={getattr(s, k)} must be a multiple of {mult}")
    if not s.denoising_step_list:
        raise FlowcacheError("denoising_step_list must name at least one step")
    window_for(s.local_attn_size, s.sink_size, s.num_frame_per_block)
    if s.sink_size and s.local_attn_size == -1:
        raise FlowcacheError(f"{n('sink_size')}={s.sink_size} needs {n('local_attn_size')} (a window to keep it in)")
