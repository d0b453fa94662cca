"""SkyReels-V2 diffusion forcing: the checkpoint's facts (diffusers folder layout) and a request's settings.

A checkpoint is the folder diffusers' DF pipelines save and load (model_index.json may add a `flowcache` object:
`cache_defaults`, and `pipeline_kwargs` defaults for the folder): model_index.json naming one of the DF pipeline
classes, transformer/ (SkyReelsV2Transformer3DModel), vae/ (AutoencoderKLWan), text_encoder/ (UMT5), tokenizer/,
scheduler/ (UniPCMultistepScheduler). The settings are the pipeline's call arguments that change the video, named
and defaulted as diffusers names and defaults them (diffusers 0.42 `SkyReelsV2DiffusionForcingPipeline.__call__`).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from flowcache_core.errors import FlowcacheError
from flowcache_core.fileio import read_json_object
from flowcache_core.models.wan.vae import WanFamilyConfig
from flowcache_core.schema import Range, check_fields

PIPELINES = ("SkyReelsV2DiffusionForcingPipeline", "SkyReelsV2DiffusionForcingImageToVideoPipeline",
             "SkyReelsV2DiffusionForcingVideoToVideoPipeline")
COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
MAX_FRAMES = 100_000  # video frames; the run streams, but the plan lists every forward


@dataclass
class DFSettings:
    """The DF pipelines' call arguments that change the video (diffusers' names and defaults), plus the seed.

    seed: diffusers draws the noise from `generator=torch.Generator("cpu").manual_seed(seed)`; so do we.
    causal_block_size None: the transformer config's num_frame_per_block. shift None: the scheduler's flow_shift.
    """

    num_frames: int = 97
    height: int = 544
    width: int = 960
    num_inference_steps: int = 50
    guidance_scale: float = 6.0
    negative_prompt: str = ""
    base_num_frames: int = 97
    overlap_history: int | None = None
    addnoise_condition: float = 0.0
    ar_step: int = 0
    causal_block_size: int | None = None
    shift: float | None = None
    fps: int = 24
    seed: int = 0
    max_sequence_length: int = 512


LIMITS = {
    "num_frames": Range(1, MAX_FRAMES), "height": Range(16, 8192), "width": Range(16, 8192),
    "num_inference_steps": Range(1, 1000), "guidance_scale": Range(0, 100), "base_num_frames": Range(1, MAX_FRAMES),
    "overlap_history": Range(1, MAX_FRAMES), "addnoise_condition": Range(0, 1000), "ar_step": Range(0, 1000),
    "causal_block_size": Range(1, 1000), "shift": Range(0, 1000, low_open=True), "fps": Range(1, 240),
    "seed": Range(0, 2**64 - 1), "max_sequence_length": Range(1, 4096),
}


@dataclass
class DFConfig(WanFamilyConfig):
    """A checkpoint (its folder and component configs) and the settings a request runs with."""

    path: Path
    pipeline: str  # model_index.json's _class_name
    transformer: dict  # transformer/config.json
    scheduler: dict  # scheduler/scheduler_config.json
    vae: dict  # vae/config.json
    settings: DFSettings = field(default_factory=DFSettings)
    cache_defaults: dict | None = None
    clean_kv: str = "reuse"  # "recompute": forward finished and not-started blocks every step, as diffusers does

    @property
    def block_frames(self) -> int:
        """Latent frames per causal block: causal_block_size, else the transformer's num_frame_per_block."""
        s = self.settings.causal_block_size
        return int(s if s is not None else self.transformer.get("num_frame_per_block", 1))


def is_df_folder(path: Path) -> bool:
    """A diffusers folder whose model_index.json names a DF pipeline (or any SkyReels-V2 pipeline: we then say
    in read_checkpoint which ones we run)."""
    index = path / "model_index.json"
    if not index.is_file():
        return False
    try:
        name = json.loads(index.read_text(encoding="utf-8")).get("_class_name", "")
    except (json.JSONDecodeError, UnicodeDecodeError, OSError, AttributeError):
        return True  # ours to report in one line
    return isinstance(name, str) and name.startswith("SkyReelsV2")


def read_checkpoint(path: Path) -> DFConfig:
    """The folder's layout and component configs, checked (no weights read)."""
    index = read_json_object(path / "model_index.json", "SkyReels-V2 checkpoint file")
    name = index.get("_class_name")
    if name not in PIPELINES:
        raise FlowcacheError(f"{str(path / 'model_index.json')!r}: _class_name {name!r} is not a diffusion-forcing "
                             f"pipeline (allowed: {', '.join(PIPELINES)})")
    for comp in COMPONENTS:
        if comp not in index:
            raise FlowcacheError(f"{str(path / 'model_index.json')!r} lists no {comp!r} component")
        if not (path / comp).is_dir():
            raise FlowcacheError(f"checkpoint {str(path)!r} has no {comp}/ folder (diffusers layout)")
    transformer = read_json_object(path / "transformer" / "config.json", "transformer config")
    if transformer.get("_class_name") != "SkyReelsV2Transformer3DModel":
        raise FlowcacheError(f"{str(path / 'transformer' / 'config.json')!r}: _class_name "
                             f"{transformer.get('_class_name')!r}, expected 'SkyReelsV2Transformer3DModel'")
    scheduler = read_json_object(path / "scheduler" / "scheduler_config.json", "scheduler config")
    vae = read_json_object(path / "vae" / "config.json", "VAE config")
    fc = index.get("flowcache") if isinstance(index.get("flowcache"), dict) else {}
    settings = DFSettings()
    if "pipeline_kwargs" in fc:  # a folder's own defaults (e.g. a small test checkpoint's size), same rules
        check_settings(fc["pipeline_kwargs"], f"{str(path / 'model_index.json')!r}: flowcache")
        settings = dataclasses.replace(settings, **fc["pipeline_kwargs"])
    return DFConfig(path, name, transformer, scheduler, vae, settings, fc.get("cache_defaults"))


def check_settings(values: dict, where: str) -> None:
    """A settings object (config file `pipeline_kwargs`): known keys, right types and ranges."""
    check_fields(DFSettings, values, "pipeline_kwargs", where, LIMITS, unknown_keys=False)
