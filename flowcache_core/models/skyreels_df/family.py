"""SkyReels-V2 diffusion forcing as a family plugin: a diffusers DF checkpoint folder, its settings, loading, setup.

Recognised by model_index.json (a DF pipeline class). Options are the DF pipelines' call arguments, named as
diffusers names them (`--ar-step`, `--causal-block-size`, ...); `--num-steps` is `num_inference_steps`.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flowcache_core.cache.options import check_options, option
from flowcache_core.engine.family import Bundle
from flowcache_core.errors import FlowcacheError
from flowcache_core.models.skyreels_df.config import (
    DFConfig, DFSettings, LIMITS, check_settings, is_df_folder, read_checkpoint,
)  # fmt: skip
from flowcache_core.models.wan.requests import check_prefix_video, overlay_config_file, refuse_variant
from flowcache_core.schema import check_value

SETTING_TYPES = typing.get_type_hints(DFSettings)
WHAT = "a SkyReels-V2 DF checkpoint"


@dataclass
class SkyReelsDFOptions:
    """Request options only SkyReels-V2 DF has (None: the default, diffusers')."""

    num_inference_steps: int | None = option(None, "SkyReels-V2 DF: denoising steps (diffusers' name for --num-steps). Default 50.", kind=int, low=1, high=1000, optional=True, example=50)
    guidance_scale: float | None = option(None, "SkyReels-V2 DF: classifier-free guidance scale; > 1 adds the negative-prompt pass. Default 6.0.", low=0, optional=True, example=6.0)
    negative_prompt: str | None = option(None, "SkyReels-V2 DF: the negative prompt (used when guidance_scale > 1). Default empty.", kind=str, optional=True, example="blurry")
    base_num_frames: int | None = option(None, "SkyReels-V2 DF: frames denoised at once (97 for 540P, 121 for 720P). Default 97.", kind=int, low=1, optional=True, example=97)
    overlap_history: int | None = option(None, "SkyReels-V2 DF: long videos (num_frames > base_num_frames): frames each segment takes from the previous (17 or 37).", kind=int, low=1, optional=True, example=17)
    addnoise_condition: float | None = option(None, "SkyReels-V2 DF: noise level added to the clean history of a long video or v2v (20 recommended; 0 off).", low=0, optional=True, example=20)
    ar_step: int | None = option(None, "SkyReels-V2 DF: 0 synchronous; > 0 asynchronous, each block this many steps behind the previous. Default 0.", kind=int, low=0, optional=True, example=5)
    causal_block_size: int | None = option(None, "SkyReels-V2 DF: latent frames per causal block (5 with ar_step 5). Default: the transformer's.", kind=int, low=1, optional=True, example=5)
    shift: float | None = option(None, "SkyReels-V2 DF: flow-matching shift of the noise schedule. Default: the scheduler's flow_shift.", low=0, optional=True, example=8.0)
    clean_kv: str | None = option(None, "SkyReels-V2 DF: 'reuse' (default) reads finished blocks' K/V from the cache (exact); 'recompute' forwards every block every step, as diffusers does.", kind=str, choices=("reuse", "recompute"), optional=True, example="recompute")
    max_sequence_length: int | None = option(None, "SkyReels-V2 DF: prompt tokens given to UMT5 (padded / cut). Default 512.", kind=int, low=1, high=4096, optional=True, example=512)
    fps: int | None = option(None, "SkyReels-V2 DF: frame rate of the output (the model is conditioned on 16 vs other). Default 24.", kind=int, low=1, optional=True, example=24)

    def __post_init__(self) -> None:
        check_options(self)


class SkyReelsDFFamily:
    name = "skyreels_df"
    Options = SkyReelsDFOptions

    def recognises(self, path: Path) -> bool:
        return is_df_folder(path)

    def read_config(self, path: Path, variant: str | None) -> DFConfig:
        refuse_variant(variant, path, WHAT)
        return read_checkpoint(path)

    def apply(self, config: DFConfig, config_file: dict | None, source: str, *, spelled: dict[str, str],
              num_steps=None, num_frames=None, height=None, width=None, seed=None, **opts) -> DFConfig:
        """A config file's `pipeline_kwargs` (the DF pipeline's call arguments), then the request's options."""
        config = overlay_config_file(config, config_file, source, "pipeline_kwargs", WHAT, check_settings)
        clean_kv = opts.pop("clean_kv", None)
        if clean_kv is not None:
            check_value(clean_kv, str, spelled.get("clean_kv", "clean_kv"))
            if clean_kv not in ("reuse", "recompute"):
                raise FlowcacheError(f"{spelled.get('clean_kv', 'clean_kv')}={clean_kv!r} must be one of reuse, recompute")
            config = dataclasses.replace(config, clean_kv=clean_kv)
        steps = opts.pop("num_inference_steps", None)
        if steps is not None and num_steps is not None and steps != num_steps:
            raise FlowcacheError(f"{spelled.get('num_steps', 'num_steps')}={num_steps} and "
                                 f"{spelled.get('num_inference_steps', 'num_inference_steps')}={steps} disagree "
                                 f"(they are the same setting: give one)")
        given = dict(num_frames=num_frames, height=height, width=width, seed=seed,
                     num_inference_steps=steps if steps is not None else num_steps, **opts)
        given = {k: v for k, v in given.items() if v is not None}
        for k, v in given.items():  # the request's values, named as the caller spelled them
            name = spelled.get("num_steps" if k == "num_inference_steps" and steps is None else k, k)
            check_value(v, SETTING_TYPES[k], name, LIMITS.get(k))
        config = config.replace_settings(**given)
        check_request(config, spelled)
        return config

    def cache_defaults(self, config: DFConfig) -> dict | None:
        return config.cache_defaults

    def window_size(self, config: DFConfig) -> int:
        """The most blocks any forward denoises together (a KV budget must hold more)."""
        from flowcache_core.models.skyreels_df.generation import check_plan

        return max(len(f.denoising) for f in check_plan(config).forwards)

    def video(self, config: DFConfig) -> dict:
        s = config.settings
        return dict(num_steps=s.num_inference_steps, num_frames=s.num_frames, height=s.height, width=s.width,
                    fps=s.fps, block_frames=config.block_frames, ar_step=s.ar_step)

    def check_cache(self, config: DFConfig, cache) -> None:
        """A KV budget compresses the K/V of finished blocks; it applies where those are kept: block-causal runs
        (causal_block_size > 1) with one pass (guidance_scale <= 1) and clean history (addnoise_condition 0)."""
        if not cache.budget_on:
            return
        s = config.settings
        why = ("causal_block_size > 1 (with full attention nothing is finished early)" if config.block_frames == 1
               else "guidance_scale <= 1 (the negative-prompt pass keeps K/V of its own)" if s.guidance_scale > 1
               else "addnoise_condition 0 (noised history is recomputed every forward)" if s.addnoise_condition > 0
               else None)
        if why:
            raise FlowcacheError(f"a KV budget (total_cache_chunk_nums / kv_budget) on SkyReels-V2 DF needs {why}")

    def check_inputs(self, config: DFConfig, mode: str, image: np.ndarray | None,
                     prefix_video: np.ndarray | None) -> None:
        s = config.settings
        if mode == "i2v":
            if image is None:
                raise FlowcacheError("i2v needs --image")
            if image.shape[:2] != (s.height, s.width):
                raise FlowcacheError(f"image is {image.shape[1]}x{image.shape[0]}, the video is {s.width}x{s.height} "
                                     f"(resize it or pass --width/--height)")
        elif mode == "v2v":
            check_prefix_video(s, prefix_video)
            if prefix_video.shape[0] < 1:
                raise FlowcacheError("prefix video has no frames")

    def load(self, path: Path, config: DFConfig, *, device: str, attn_backend: str, variant: str | None) -> Bundle:
        from flowcache_core.models.skyreels_df.loading import load_checkpoint

        return load_checkpoint(path, config, device=device, attn_backend=attn_backend)

    def prepare(self, bundle: Bundle, config: DFConfig, prompt: str, mode: str, image: np.ndarray | None,
                prefix_video: np.ndarray | None):
        from flowcache_core.models.skyreels_df.generation import prepare_generation

        return prepare_generation(bundle, config, prompt, mode, image, prefix_video)


def check_request(config: DFConfig, spelled: dict[str, str]) -> None:
    """Rules between settings (diffusers' check_inputs and the schedule's), each naming the option."""
    s, n = config.settings, (lambda k: spelled.get(k, k))
    mult = config.spatial_downsample * 2  # VAE 8x, patch 2x: diffusers' "divisible by 16"
    for k in ("height", "width"):
        if getattr(s, k) % mult:
            raise FlowcacheError(f"{n(k)}={getattr(s, k)} must be a multiple of {mult}")
    td = config.temporal_downsample
    for k in ("num_frames", "base_num_frames"):
        v = getattr(s, k)
        if (v - 1) % td:
            lo = (v - 1) // td * td + 1
            raise FlowcacheError(f"{n(k)}={v} must be {td}k+1 (the VAE's frame groups), e.g. {lo} or {lo + td}")
    if s.num_frames > s.base_num_frames and s.overlap_history is None:
        raise FlowcacheError(f"{n('num_frames')}={s.num_frames} exceeds {n('base_num_frames')}={s.base_num_frames}: "
                             f"a long video needs {n('overlap_history')} (17 or 37 recommended)")
    if s.overlap_history is not None and s.num_frames > s.base_num_frames and s.overlap_history >= s.base_num_frames:
        raise FlowcacheError(f"{n('overlap_history')}={s.overlap_history} must be below "
                             f"{n('base_num_frames')}={s.base_num_frames}")
    from flowcache_core.models.skyreels_df.generation import check_plan

    check_plan(config)
