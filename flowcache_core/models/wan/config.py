"""The Wan2.1 / SkyReels-V2 DiT's configuration, read from a diffusers `transformer/config.json`.

`WanDiTConfig` has exactly the fields diffusers' `SkyReelsV2Transformer3DModel` takes (`WanTransformer3DModel`
takes the same minus `inject_sample_info` and `num_frame_per_block`). `read_transformer_config` checks the file
before anything is built: the class name, every key's type and range, and the values this implementation
supports (text-to-video: no image branch, RMS q/k norm across heads, one latent frame per temporal patch).
A missing key takes the class's default, as diffusers does; keys starting with "_" are diffusers' bookkeeping.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowcache_core.errors import FlowcacheError
from flowcache_core.fileio import read_json_object
from flowcache_core.schema import AT_LEAST_1, POSITIVE, at, check_fields, shown

SKYREELS_V2 = "SkyReelsV2Transformer3DModel"
WAN = "WanTransformer3DModel"
CLASS_NAMES = (SKYREELS_V2, WAN)
QK_NORMS = ("rms_norm_across_heads",)


@dataclass
class WanDiTConfig:
    patch_size: tuple[int, ...] = (1, 2, 2)  # (t, h, w); t must be 1
    num_attention_heads: int = 16
    attention_head_dim: int = 128
    in_channels: int = 16
    out_channels: int | None = 16  # None: in_channels (diffusers' rule)
    text_dim: int = 4096  # umT5-XXL width
    freq_dim: int = 256  # sinusoidal timestep embedding width
    ffn_dim: int = 8192
    num_layers: int = 32
    cross_attn_norm: bool = True
    qk_norm: str | None = "rms_norm_across_heads"
    eps: float = 1e-6
    image_dim: int | None = None  # image-to-video branch: not supported
    added_kv_proj_dim: int | None = None  # image-to-video branch: not supported
    rope_max_seq_len: int = 1024  # diffusers' RoPE table length; positions are computed here, not looked up
    pos_embed_seq_len: int | None = None  # image branch only; unused
    inject_sample_info: bool = False  # SkyReels-V2: fps embedding added to the modulation
    num_frame_per_block: int = 1  # SkyReels-V2: causal block of the checkpoint's default (1 = full attention)
    class_name: str = SKYREELS_V2  # `_class_name`: which diffusers class wrote it (the timestep sinusoid differs)

    @property
    def dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def latent_channels_out(self) -> int:
        return self.out_channels or self.in_channels


# Wan's class has other defaults for the sizes, and lacks the two SkyReels-V2 fields.
_CLASS_DEFAULTS = {SKYREELS_V2: {}, WAN: {"num_attention_heads": 40, "ffn_dim": 13824, "num_layers": 40}}
_SKYREELS_ONLY = ("inject_sample_info", "num_frame_per_block")
LIMITS = {
    **{n: AT_LEAST_1 for n in ("patch_size", "num_attention_heads", "attention_head_dim", "in_channels", "out_channels",
                               "text_dim", "freq_dim", "ffn_dim", "num_layers", "rope_max_seq_len",
                               "pos_embed_seq_len", "num_frame_per_block")},
    "eps": POSITIVE,
}


def config_from_dict(d: Any, where: str = "") -> WanDiTConfig:
    """A config from the JSON object of a diffusers transformer config.json; FlowcacheError on any bad key."""
    if not isinstance(d, dict):
        raise FlowcacheError(f"{where}: expected a JSON object, got {shown(d)}")
    name = d.get("_class_name")
    if name not in CLASS_NAMES:
        raise FlowcacheError(f"{at(where, '_class_name')}: expected one of {', '.join(CLASS_NAMES)}, got {shown(name)}")
    keys = {k: v for k, v in d.items() if not k.startswith("_")}
    allowed = [f.name for f in dataclasses.fields(WanDiTConfig) if f.name != "class_name"]
    if name == WAN:
        allowed = [n for n in allowed if n not in _SKYREELS_ONLY]
    unknown = sorted(set(keys) - set(allowed))
    if unknown:
        raise FlowcacheError(f"{at(where, unknown[0])}: key unknown to {name} (allowed: {', '.join(allowed)})")
    check_fields(WanDiTConfig, keys, "", where, LIMITS)

    def refuse(key: str, allowed_values: str) -> FlowcacheError:
        return FlowcacheError(f"{at(where, key)}: expected {allowed_values}, got {shown(keys[key])}")

    if "patch_size" in keys and (len(keys["patch_size"]) != 3 or keys["patch_size"][0] != 1):
        raise refuse("patch_size", "[1, h, w] (one latent frame per temporal patch, as every Wan2.1 release)")
    if "qk_norm" in keys and keys["qk_norm"] not in QK_NORMS:
        raise refuse("qk_norm", f"one of {', '.join(map(repr, QK_NORMS))}")
    for key in ("image_dim", "added_kv_proj_dim"):
        if keys.get(key) is not None:
            raise refuse(key, "null (the image-to-video branch is not supported)")
    hd = keys.get("attention_head_dim", WanDiTConfig.attention_head_dim)
    if hd % 2 or hd < 6:
        raise refuse("attention_head_dim", "an even integer >= 6 (RoPE splits it into t, h, w pairs)")
    values = {**_CLASS_DEFAULTS[name], **keys, "class_name": name}
    values["patch_size"] = tuple(values.get("patch_size", WanDiTConfig.patch_size))
    return WanDiTConfig(**values)


def read_transformer_config(path: str | os.PathLike) -> WanDiTConfig:
    """Read and check a diffusers transformer `config.json` (SkyReels-V2 or Wan2.1 text-to-video)."""
    p = Path(path)
    where = f"transformer config {str(p)!r}"
    return config_from_dict(read_json_object(p, "transformer config"), where)


def config_to_dict(cfg: WanDiTConfig) -> dict[str, Any]:
    """The config.json object diffusers would write for `cfg` (what `config_from_dict` reads back)."""
    d = {"_class_name": cfg.class_name, **dataclasses.asdict(cfg)}
    del d["class_name"]
    d["patch_size"] = list(cfg.patch_size)
    if cfg.class_name == WAN:
        for key in _SKYREELS_ONLY:
            del d[key]
    return d
