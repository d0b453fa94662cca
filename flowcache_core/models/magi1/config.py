"""Model, runtime and engine configuration in MAGI-1's JSON schema.

A MAGI-1 config file has exactly three objects: `model_config`, `runtime_config`, `engine_config`.
`MagiConfig.from_json` reads such a file (unknown keys are kept aside, missing keys take MAGI-1's
dataclass defaults) and `to_json` writes one back. Every reader of such JSON checks each object with
`check_config_section` (types from the dataclass annotations, ranges from the tables below) before using it;
`validate()` checks the same and the rules that relate several values. Both raise `FlowcacheError` with one
line naming the key and what is allowed.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowcache_core.checks import MAX_NUM_STEPS, SEED_RANGE
from flowcache_core.errors import FlowcacheError
from flowcache_core.schema import AT_LEAST_1, POSITIVE, Range, at, check_fields, check_value, shown


@dataclass
class ModelConfig:
    model_name: str = "videodit_ardf"
    num_layers: int = 34
    hidden_size: int = 3072
    ffn_hidden_size: int = 12288
    num_attention_heads: int = 24
    num_query_groups: int = 8  # GQA: number of K/V heads
    kv_channels: int = 128  # head dim
    layernorm_epsilon: float = 1e-6
    apply_layernorm_1p: bool = True
    x_rescale_factor: float = 1.0
    half_channel_vae: bool = False
    params_dtype: str = "torch.bfloat16"
    patch_size: int = 2
    t_patch_size: int = 1
    in_channels: int = 16
    out_channels: int = 16
    cond_hidden_ratio: float = 0.25
    caption_channels: int = 4096
    caption_max_length: int = 800
    xattn_cond_hidden_ratio: float = 1.0
    cond_gating_ratio: float = 1.0
    gated_linear_unit: bool = False

    @property
    def cond_dim(self) -> int:
        return int(self.hidden_size * self.cond_hidden_ratio)

    @property
    def head_dim(self) -> int:
        return self.kv_channels


@dataclass
class RuntimeConfig:
    cfg_number: int = 1
    cfg_t_range: list[float] = field(default_factory=lambda: [0.0, 0.0217, 0.1, 0.3, 0.999])
    prev_chunk_scales: list[float] = field(default_factory=lambda: [1.5] * 5)
    text_scales: list[float] = field(default_factory=lambda: [7.5] * 5)
    noise2clean_kvrange: list[int] = field(default_factory=list)
    clean_chunk_kvrange: int = -1
    clean_t: float = 1.0
    seed: int = 1234
    num_frames: int = 128
    video_size_h: int = 720
    video_size_w: int = 720
    num_steps: int = 64
    window_size: int = 4
    fps: int = 24
    chunk_width: int = 6
    load: str | None = None
    t5_pretrained: str | None = None
    t5_device: str = "cpu"
    vae_pretrained: str | None = None
    scale_factor: float = 0.18215
    temporal_downsample_factor: int = 4


@dataclass
class EngineConfig:
    distributed_backend: str = "nccl"
    distributed_timeout_minutes: int = 15
    pp_size: int = 1
    cp_size: int = 1
    cp_strategy: str = "cp_ulysses"
    ulysses_overlap_degree: int = 1
    fp8_quant: bool = False
    distill_nearly_clean_chunk_threshold: float = 0.3
    shortcut_mode: str = "8,16,16"
    distill: bool = False
    kv_offload: bool = True
    enable_cuda_graph: bool = False


# ----- ranges a value must keep on its own (validate() checks the rules that relate several values) -----
_UNIT = Range(0.0, 1.0)

MODEL_LIMITS = {
    **{n: AT_LEAST_1 for n in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
                               "kv_channels", "patch_size", "t_patch_size", "in_channels", "out_channels",
                               "caption_channels", "caption_max_length")},
    # x_rescale_factor divides the output; the ratios size the conditioning layers
    **{n: POSITIVE for n in ("layernorm_epsilon", "x_rescale_factor", "cond_hidden_ratio", "xattn_cond_hidden_ratio",
                             "cond_gating_ratio")},
}
RUNTIME_LIMITS = {
    **{n: AT_LEAST_1 for n in ("num_frames", "video_size_h", "video_size_w", "window_size", "fps", "chunk_width",
                               "temporal_downsample_factor", "noise2clean_kvrange")},  # kv range: each entry
    "num_steps": Range(1, MAX_NUM_STEPS),
    "cfg_t_range": _UNIT,  # each entry: a time t in [0, 1]
    "clean_t": Range(0.0, 1.0, low_open=True),
    "seed": SEED_RANGE,
    "scale_factor": POSITIVE,  # latents are divided by it
}
ENGINE_LIMITS = {
    **{n: AT_LEAST_1 for n in ("distributed_timeout_minutes", "pp_size", "cp_size", "ulysses_overlap_degree")},
    "distill_nearly_clean_chunk_threshold": _UNIT,
}
SECTIONS = {"model_config": (ModelConfig, MODEL_LIMITS), "runtime_config": (RuntimeConfig, RUNTIME_LIMITS),
            "engine_config": (EngineConfig, ENGINE_LIMITS)}


def check_config_section(section: str, obj: Any, where: str = "") -> None:
    """One object of a MAGI-1 config (`model_config`, `runtime_config` or `engine_config`) as read from JSON:
    each known key must have its dataclass field's type (int, float, bool, str, `str | None`, `list[float]`,
    `list[int]`) and keep its range. Unknown keys pass (readers keep or refuse them). Every reader of this JSON
    calls it: bundle and release config.json (`from_dict`), the CLI's --config-file overlay, `validate()`."""
    cls, limits = SECTIONS[section]
    check_fields(cls, obj, section, where, limits)


def check_flowcache_extra(fc: Any, where: str = "") -> None:
    """The `flowcache` object flowcache adds to a bundle's config.json: codec spec, text encoder, cache_defaults."""
    from flowcache_core.cache.settings import check_cache_defaults  # the cache package is not needed to read a config

    if fc is None:
        return
    if not isinstance(fc, dict):
        raise FlowcacheError(f"{at(where, 'flowcache')}: expected an object, got {shown(fc)}")
    codec = fc.get("codec")
    if codec is not None:
        if not isinstance(codec, dict) or "name" not in codec:
            raise FlowcacheError(f"{at(where, 'flowcache.codec')}: expected an object with a \"name\", got {shown(codec)}")
        check_value(codec["name"], str, "flowcache.codec.name", where=where)
        options = {k: v for k, v in codec.items() if k != "name"}
        if codec["name"] == "space_to_depth":
            from flowcache_core.models.codec import SpaceToDepthConfig

            limits = {"spatial": AT_LEAST_1, "temporal": AT_LEAST_1, "scale": POSITIVE}
            check_fields(SpaceToDepthConfig, options, "flowcache.codec", where, limits, unknown_keys=False)
        else:  # another codec checks its options when it loads; its factors are read before (frame sizes, memory)
            for k in ("spatial", "temporal"):
                if k in options:
                    check_value(options[k], int, f"flowcache.codec.{k}", AT_LEAST_1, where)
    if "text_encoder" in fc:
        check_value(fc["text_encoder"], str, "flowcache.text_encoder", where=where)
    check_cache_defaults(fc.get("cache_defaults"), where)


def _from_dict(cls, d: dict[str, Any]):
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class MagiConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    # Keys of the JSON file we do not model, written back unchanged.
    extra: dict[str, Any] = field(default_factory=dict)

    # ----- JSON (MAGI-1 schema) -----
    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "config") -> "MagiConfig":
        if not isinstance(d, dict) or "model_config" not in d:
            raise FlowcacheError(f"{where}: not a MAGI-1 config (expected a JSON object with model_config, runtime_config, engine_config)")
        sections = {name: d.get(name) or {} for name in SECTIONS}  # a missing or null object: MAGI-1's defaults
        for name, obj in sections.items():
            check_config_section(name, obj, where)
        check_flowcache_extra(d.get("flowcache"), where)
        return cls(
            model=_from_dict(ModelConfig, sections["model_config"]),
            runtime=_from_dict(RuntimeConfig, sections["runtime_config"]),
            engine=_from_dict(EngineConfig, sections["engine_config"]),
            extra={k: v for k, v in d.items() if k not in SECTIONS},
        )

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "MagiConfig":
        p = Path(path)
        if not p.is_file():
            raise FlowcacheError(f"config file {str(p)!r} does not exist")
        try:
            d = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise FlowcacheError(f"config file {str(p)!r} is not valid JSON ({e.msg if hasattr(e, 'msg') else e})") from None
        return cls.from_dict(d, where=f"config file {str(p)!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_config": dataclasses.asdict(self.model),
            "runtime_config": dataclasses.asdict(self.runtime),
            "engine_config": dataclasses.asdict(self.engine),
            **self.extra,
        }

    def to_json(self, path: str | os.PathLike) -> None:
        p = Path(path)
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        os.replace(tmp, p)

    def replace(self, **runtime_overrides) -> "MagiConfig":
        """A copy with some runtime fields changed (CLI flags such as --num-steps)."""
        rt = dataclasses.replace(self.runtime, **{k: v for k, v in runtime_overrides.items() if v is not None})
        return dataclasses.replace(self, runtime=rt)

    # ----- validation -----
    def validate(self) -> "MagiConfig":
        """Each value's type and range (as `check_config_section` checks JSON: a config built in Python or changed
        by `replace` gets the same checks), then the rules that relate several values."""
        for name, obj in (("model_config", self.model), ("runtime_config", self.runtime), ("engine_config", self.engine)):
            check_config_section(name, dataclasses.asdict(obj), "")
        m, r = self.model, self.runtime
        if m.hidden_size != m.num_attention_heads * m.kv_channels:
            raise FlowcacheError(
                f"model_config: hidden_size {m.hidden_size} must equal num_attention_heads*kv_channels "
                f"({m.num_attention_heads}*{m.kv_channels}); MAGI-1's RoPE uses hidden_size/heads as the head dim")
        if m.num_attention_heads % m.num_query_groups:
            raise FlowcacheError(f"model_config: num_attention_heads {m.num_attention_heads} must be a multiple of num_query_groups {m.num_query_groups}")
        if m.num_attention_heads % 8:
            raise FlowcacheError(f"model_config: num_attention_heads {m.num_attention_heads} must be a multiple of 8 (MAGI-1 interleaves 8 head groups before the output projection)")
        if m.kv_channels % 8 or 6 * (m.kv_channels // 8) > m.kv_channels:
            raise FlowcacheError(f"model_config: kv_channels {m.kv_channels} must be a multiple of 8")
        if m.t_patch_size != 1:
            raise FlowcacheError(f"model_config: t_patch_size {m.t_patch_size} is not supported (allowed: 1, as in every MAGI-1 release)")
        if m.params_dtype not in ("torch.float32", "torch.bfloat16", "torch.float16"):
            raise FlowcacheError(f"model_config: params_dtype {m.params_dtype!r} unknown (allowed: torch.float32, torch.bfloat16, torch.float16)")
        if m.cond_dim < 1:
            raise FlowcacheError(f"model_config: hidden_size*cond_hidden_ratio ({m.hidden_size}*{m.cond_hidden_ratio}) "
                                 "must be at least 1 (the conditioning width)")
        if r.cfg_number not in (1, 3):
            raise FlowcacheError(f"runtime_config: cfg_number {r.cfg_number} not supported (allowed: 1 (distill) or 3 (base))")
        if r.num_steps % r.window_size:
            raise FlowcacheError(f"runtime_config: num_steps {r.num_steps} must be a multiple of window_size {r.window_size}")
        if r.noise2clean_kvrange and r.num_steps % len(r.noise2clean_kvrange):
            raise FlowcacheError(
                f"runtime_config: num_steps {r.num_steps} must be a multiple of len(noise2clean_kvrange) {len(r.noise2clean_kvrange)}")
        if not (len(r.cfg_t_range) == len(r.prev_chunk_scales) == len(r.text_scales) >= 1):
            raise FlowcacheError("runtime_config: cfg_t_range, prev_chunk_scales and text_scales must have the same "
                                 f"length, at least 1 (got {len(r.cfg_t_range)}, {len(r.prev_chunk_scales)}, {len(r.text_scales)})")
        if list(r.cfg_t_range) != sorted(r.cfg_t_range):  # the guidance scale of a chunk is looked up by its t
            raise FlowcacheError(f"runtime_config: cfg_t_range {r.cfg_t_range} must be in ascending order")
        return self


# Named sizes of the MAGI-1 release (example/4.5B and example/24B configs of SandAI-org/MAGI-1).
def magi_4_5b(distill: bool = True) -> MagiConfig:
    return MagiConfig(
        model=ModelConfig(),
        runtime=RuntimeConfig(cfg_number=1 if distill else 3, noise2clean_kvrange=[5, 4, 3, 2], clean_chunk_kvrange=1,
                              clean_t=0.9999, num_frames=96, video_size_h=720, video_size_w=720, num_steps=64,
                              window_size=4, fps=24, chunk_width=6, cfg_t_range=[0.0, 0.0217, 0.1, 0.3, 0.999],
                              prev_chunk_scales=[1.5, 1.5, 1.5, 1.0, 1.0], text_scales=[7.5, 7.5, 7.5, 0.0, 0.0]),
        engine=EngineConfig(distill=distill),
    )


def magi_24b(distill: bool = True) -> MagiConfig:
    c = magi_4_5b(distill)
    c.model = ModelConfig(num_layers=48, hidden_size=6144, ffn_hidden_size=16384, num_attention_heads=48,
                          num_query_groups=8, kv_channels=128, x_rescale_factor=0.1, half_channel_vae=True,
                          in_channels=32, out_channels=32, gated_linear_unit=True)
    c.runtime = dataclasses.replace(c.runtime, video_size_w=1280, num_steps=16 if distill else 32, t5_device="cuda")
    c.engine = dataclasses.replace(c.engine, cp_size=8)
    return c


NAMED_CONFIGS = {"magi-4.5b": magi_4_5b, "magi-24b": magi_24b}
