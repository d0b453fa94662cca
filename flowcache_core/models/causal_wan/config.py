"""Streaming causal Wan (Self-Forcing, LongLive on Wan2.1-T2V-1.3B): the checkpoint folder and a request's settings.

A checkpoint folder (our layout; `synthetic.write_checkpoint` writes a tiny one):
```
<dir>/
  config.json            {"family": "causal_wan", "generator": "self_forcing_dmd.pt",
                          "base": "Wan2.1-T2V-1.3B-Diffusers",
                          "generator_key": "generator_ema", "lora": "lora.pt", "lora_alpha": 256,
                          "inference": {...}, "cache_defaults": {...}}  (all optional but "family"; without
                          config.json the folder is recognised by its layout, defaults below)
  <generator>.pt | .safetensors   the released generator: original Wan key names (`blocks.0.self_attn.q.weight`),
                          at the top level or under "generator_ema" / "generator", with or without a `model.` prefix
  <base>/                 the Wan2.1-T2V-1.3B diffusers folder (model_index.json WanPipeline): transformer/config.json
                          (the DiT's shape; its weights are not read), vae/, text_encoder/, tokenizer/
```
LongLive releases a base generator and a LoRA (rank 256, alpha 256): name both; the LoRA is merged when loading.
Defaults: generator = the one *.pt / *.safetensors file at the top level; base = the one sub-folder with a
model_index.json; generator_key = "generator_ema" if the file has it, else "generator", else the file is the state dict
(Self-Forcing's README runs `--use_ema`).

The settings are Self-Forcing's inference config (configs/self_forcing_dmd.yaml and default_config.yaml: names and
defaults are theirs): denoising_step_list 1000/750/500/250 warped through the flow-matching schedule of shift
`timestep_shift` 5.0, 3 latent frames per block, the clean block re-run at `context_noise` 0, `local_attn_size` -1
(every earlier frame) and `sink_size` 0; LongLive runs local_attn_size 12 with sink_size 3 (frames).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from flowcache_core.errors import FlowcacheError
from flowcache_core.fileio import read_json_object
from flowcache_core.models.wan.vae import WanFamilyConfig
from flowcache_core.models.wan.config import WanDiTConfig, read_transformer_config
from flowcache_core.schema import Range, check_fields

FAMILY = "causal_wan"
BASE_COMPONENTS = ("vae", "text_encoder", "tokenizer")
GENERATOR_SUFFIXES = (".pt", ".pth", ".safetensors")
MAX_FRAMES = 1_000_000  # video frames: the plan is a list of small records (4 per block), the state per block


@dataclass
class CausalWanSettings:
    """Self-Forcing's inference settings (their names and defaults) and the request's size, length and seed.

    num_frames: video frames (the latent frames, (num_frames - 1) / 4 + 1, are rounded up to whole blocks; the extra
    frames are cut). seed: the initial noise and every re-noising draw come from one torch.Generator("cpu") seeded
    with it, in their order (generation.py)."""

    num_frames: int = 81
    height: int = 480
    width: int = 832
    seed: int = 0
    denoising_step_list: list[int] = field(default_factory=lambda: [1000, 750, 500, 250])
    warp_denoising_step: bool = True
    timestep_shift: float = 5.0
    num_frame_per_block: int = 3
    context_noise: int = 0
    local_attn_size: int = -1  # latent frames a block attends to, itself and the sink included; -1: all earlier
    sink_size: int = 0  # first latent frames every block keeps attending to (with local_attn_size)
    fps: int = 16


LIMITS = {
    "num_frames": Range(1, MAX_FRAMES), "height": Range(16, 8192), "width": Range(16, 8192),
    "seed": Range(0, 2**64 - 1), "denoising_step_list": Range(1, 1000), "timestep_shift": Range(0, 100, low_open=True),
    "num_frame_per_block": Range(1, 64), "context_noise": Range(0, 1000), "local_attn_size": Range(-1, MAX_FRAMES),
    "sink_size": Range(0, MAX_FRAMES), "fps": Range(1, 240),
}


@dataclass
class CausalWanConfig(WanFamilyConfig):
    """A checkpoint folder (its files and the DiT's shape) and the settings a request runs with."""

    path: Path
    generator: Path  # the generator weights file
    generator_key: str | None  # the entry of a .pt holding the state dict (None: pick as documented)
    base: Path  # the Wan2.1 diffusers folder (vae/, text_encoder/, tokenizer/, transformer/config.json)
    dit: WanDiTConfig
    vae: dict
    settings: CausalWanSettings = field(default_factory=CausalWanSettings)
    cache_defaults: dict | None = None
    lora: Path | None = None  # LongLive's LoRA (PEFT state dict), merged into the generator when loading
    lora_alpha: float | None = None  # its alpha (None: its rank, scale 1, as LongLive's configs)


def _generators(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_file() and p.suffix in GENERATOR_SUFFIXES)


def _bases(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and (p / "model_index.json").is_file())


def is_causal_wan_folder(path: Path) -> bool:
    """Without a config.json: one generator file at the top level and a Wan diffusers folder beside it."""
    if (path / "config.json").is_file():
        return False  # a bundle names its family (engine/family.py declared_family)
    try:
        bases = _bases(path)
        index = json.loads((bases[0] / "model_index.json").read_text(encoding="utf-8")) if len(bases) == 1 else {}
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return False
    return len(_generators(path)) == 1 and isinstance(index, dict) and index.get("_class_name") == "WanPipeline"


def _one(found: list[Path], what: str, path: Path, key: str) -> Path:
    if len(found) != 1:
        names = ", ".join(p.name for p in found) or "none"
        raise FlowcacheError(f"checkpoint {str(path)!r}: expected one {what} ({names} found); name it in "
                             f"config.json {key!r}")
    return found[0]


def read_checkpoint(path: Path) -> CausalWanConfig:
    """The folder's files and configs, checked (no weights read)."""
    cfg_file = path / "config.json"
    data = read_json_object(cfg_file, "causal Wan config") if cfg_file.is_file() else {}
    where = str(cfg_file)
    allowed = ("family", "generator", "generator_key", "base", "lora", "lora_alpha", "inference", "cache_defaults")
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise FlowcacheError(f"{where!r}: key {unknown[0]!r} unknown (allowed: {', '.join(allowed)})")
    for key in ("generator", "generator_key", "base", "lora"):
        if key in data and not isinstance(data[key], str):
            raise FlowcacheError(f"{where!r}: {key!r} must be a string, got {data[key]!r}")
    gen = path / data["generator"] if "generator" in data else _one(_generators(path), "generator file (.pt, .pth, "
                                                                    ".safetensors)", path, "generator")
    if not gen.is_file():
        raise FlowcacheError(f"generator weights {str(gen)!r} do not exist")
    if gen.suffix not in GENERATOR_SUFFIXES:
        raise FlowcacheError(f"generator weights {str(gen)!r}: expected a .pt, .pth or .safetensors file")
    lora = path / data["lora"] if "lora" in data else None
    if lora is not None and not lora.is_file():
        raise FlowcacheError(f"LoRA weights {str(lora)!r} do not exist")
    alpha = data.get("lora_alpha")
    if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0):
        raise FlowcacheError(f"{where!r}: 'lora_alpha' must be a positive number, got {alpha!r}")
    base = path / data["base"] if "base" in data else _one(_bases(path), "Wan2.1 diffusers folder (model_index.json)",
                                                           path, "base")
    if not base.is_dir():
        raise FlowcacheError(f"Wan2.1 base folder {str(base)!r} does not exist")
    for comp in BASE_COMPONENTS:
        if not (base / comp).is_dir():
            raise FlowcacheError(f"Wan2.1 base folder {str(base)!r} has no {comp}/ folder (diffusers layout)")
    dit = read_transformer_config(base / "transformer" / "config.json")
    if dit.inject_sample_info:
        raise FlowcacheError(f"{str(base / 'transformer' / 'config.json')!r}: inject_sample_info must be false "
                             f"(a Wan2.1 text-to-video transformer)")
    # The original Wan code (theirs) embeds the timestep through a float64 sinusoid: our SkyReels-V2 path computes it
    # so, diffusers' Wan class in float32. The class name only selects that rule here.
    dit = dataclasses.replace(dit, class_name="SkyReelsV2Transformer3DModel", num_frame_per_block=1)
    vae = read_json_object(base / "vae" / "config.json", "VAE config")
    settings = CausalWanSettings()
    if "inference" in data:
        check_settings(data["inference"], where)
        settings = dataclasses.replace(settings, **data["inference"])
    cache_defaults = data.get("cache_defaults")
    if cache_defaults is not None and not isinstance(cache_defaults, dict):
        raise FlowcacheError(f"{where!r}: 'cache_defaults' must be an object")
    return CausalWanConfig(path, gen, data.get("generator_key"), base, dit, vae, settings, cache_defaults, lora, alpha)


def check_settings(values: object, where: str) -> None:
    """An `inference` object: known keys, right types and ranges."""
    if not isinstance(values, dict):
        raise FlowcacheError(f"{where}: 'inference' must be an object")
    check_fields(CausalWanSettings, values, "inference", where, LIMITS, unknown_keys=False)
