"""Model, runtime and engine configuration in MAGI-1's JSON schema.

A MAGI-1 config file has exactly three objects: `model_config`, `runtime_config`, `engine_config`.
`MagiConfig.from_json` reads such a file (unknown keys are kept aside, missing keys take MAGI-1's
dataclass defaults) and `to_json` writes one back. `validate()` checks the values the sampler and the
model depend on and raises `FlowcacheError` with one line naming the bad value.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowcache_core.errors import FlowcacheError


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


def _from_dict(cls, d: dict[str, Any], where: str):
    names = {f.name for f in dataclasses.fields(cls)}
    known = {k: v for k, v in d.items() if k in names}
    try:
        return cls(**known)
    except TypeError as e:  # pragma: no cover - dataclass with all defaults
        raise FlowcacheError(f"{where}: {e}") from None


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
        return cls(
            model=_from_dict(ModelConfig, d.get("model_config") or {}, where),
            runtime=_from_dict(RuntimeConfig, d.get("runtime_config") or {}, where),
            engine=_from_dict(EngineConfig, d.get("engine_config") or {}, where),
            extra={k: v for k, v in d.items() if k not in ("model_config", "runtime_config", "engine_config")},
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
        m, r = self.model, self.runtime
        _positive(m, ["num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
                      "kv_channels", "patch_size", "t_patch_size", "in_channels", "out_channels",
                      "caption_channels", "caption_max_length"], "model_config")
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
        _positive(r, ["num_frames", "video_size_h", "video_size_w", "num_steps", "window_size", "fps", "chunk_width"], "runtime_config")
        if r.cfg_number not in (1, 3):
            raise FlowcacheError(f"runtime_config: cfg_number {r.cfg_number} not supported (allowed: 1 (distill) or 3 (base))")
        if r.num_steps % r.window_size:
            raise FlowcacheError(f"runtime_config: num_steps {r.num_steps} must be a multiple of window_size {r.window_size}")
        if r.noise2clean_kvrange and r.num_steps % len(r.noise2clean_kvrange):
            raise FlowcacheError(
                f"runtime_config: num_steps {r.num_steps} must be a multiple of len(noise2clean_kvrange) {len(r.noise2clean_kvrange)}")
        if any(int(v) < 1 for v in r.noise2clean_kvrange):
            raise FlowcacheError(f"runtime_config: noise2clean_kvrange {r.noise2clean_kvrange} must hold positive chunk counts")
        if not (len(r.cfg_t_range) == len(r.prev_chunk_scales) == len(r.text_scales)):
            raise FlowcacheError("runtime_config: cfg_t_range, prev_chunk_scales and text_scales must have the same length")
        if not (0.0 < r.clean_t <= 1.0):
            raise FlowcacheError(f"runtime_config: clean_t {r.clean_t} must be in (0, 1]")
        return self


def _positive(obj, names: list[str], where: str) -> None:
    for n in names:
        v = getattr(obj, n)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0 or (isinstance(v, float) and not math.isfinite(v)):
            raise FlowcacheError(f"{where}: {n} {v!r} must be a positive number")


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
