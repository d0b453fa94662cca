"""The forward the benchmarks compare against: MAGI-1 4.5B-distill at 720x720 (or a tiny stand-in on the CPU).

One forward of a window of 4 chunks (6 latent frames of 45x45 patches = 12,150 tokens each) attending block-causally
to 2 cached clean chunks and to each other, 120 valid caption tokens per chunk: the forward `bench/gpu_forward.py`
times. `--tiny` shapes: 4 layers of width 64, chunks of 2 frames of 4x4 patches (32 tokens), for a CPU smoke run.
`linear_flops`: the forward's matmul FLOPs in the linear layers (what fp8 can speed up) and in all.
"""
from __future__ import annotations

import dataclasses
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from flowcache_core.cache.kv import KVAccess, KVStore  # noqa: E402
from flowcache_core.models.magi1.config import MagiConfig, ModelConfig, magi_4_5b  # noqa: E402
from flowcache_core.models.magi1.dit import ChunkBatch, VideoDiT  # noqa: E402


def end_to_end_parts(tiny: bool) -> tuple[MagiConfig, object]:
    """The 4.5B-distill config and the published ViT VAE config of the end-to-end benchmarks, or (tiny) a 2-layer DiT
    of width 64 and a 1-layer VAE that smoke-test those scripts on the CPU. (config, ViTVAEConfig)"""
    from flowcache_core.models.magi1.vae import ViTVAEConfig

    cfg = magi_4_5b(distill=True)
    if not tiny:
        return cfg, ViTVAEConfig()
    cfg.model = dataclasses.replace(cfg.model, num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=8,
                                    num_query_groups=2, kv_channels=8, caption_channels=32)
    return cfg, ViTVAEConfig(embed_dim=256, depth=1, num_heads=4, video_size=64, video_length=8)


@dataclasses.dataclass
class Shape:
    """A forward's shape: the window (n chunks of cw frames of h/2 x h/2 patches) and the cached chunks."""

    config: MagiConfig
    cw: int = 6
    h: int = 90              # latent height = width (720 px / 8)
    n: int = 4               # window chunks
    n_cached: int = 2
    caption_len: int = 800
    caption_valid: int = 120

    @property
    def tokens_per_chunk(self) -> int:
        return self.cw * (self.h // self.config.model.patch_size) ** 2

    @property
    def tokens_per_frame(self) -> int:
        return (self.h // self.config.model.patch_size) ** 2


def magi_4_5b_shape(layers: int | None = None) -> Shape:
    cfg = magi_4_5b(distill=True)
    if layers:
        cfg.model.num_layers = layers
    return Shape(cfg)


def tiny_shape(layers: int = 4) -> Shape:
    cfg = magi_4_5b(distill=True)
    cfg.model = ModelConfig(num_layers=layers, hidden_size=64, ffn_hidden_size=128, num_attention_heads=8,
                            num_query_groups=2, kv_channels=8, in_channels=16, out_channels=16, caption_channels=32)
    cfg.validate()
    return Shape(cfg, cw=2, h=8, caption_len=16, caption_valid=6)


def forward_call(model: VideoDiT, shape: Shape, device: str, seed: int = 0) -> Callable[[], torch.Tensor]:
    """A closure running one forward of `shape` with random inputs and random cached K/V (model's dtype)."""
    mc, L, n = shape.config.model, shape.tokens_per_chunk, shape.n
    g = torch.Generator(device=device).manual_seed(seed)
    dt = model.dtype
    store = KVStore(mc.num_layers)
    for layer in range(mc.num_layers):  # the cached clean chunks' K/V, after norm + RoPE (random here)
        for c in range(shape.n_cached):
            kv = torch.randn(2, L, mc.num_query_groups, mc.kv_channels, device=device, generator=g, dtype=dt)
            store.write(layer, "cond", c, kv[0], kv[1])
    mask = torch.zeros(n, shape.caption_len, dtype=torch.long, device=device)
    mask[:, :shape.caption_valid] = 1
    batch = ChunkBatch(
        x=torch.randn(n, mc.in_channels, shape.cw, shape.h, shape.h, device=device, generator=g),
        t=torch.linspace(0.6, 0.01, n, device=device), chunk_ids=list(range(shape.n_cached, shape.n_cached + n)),
        kv_start=[0] * n, caption=torch.randn(n, shape.caption_len, mc.caption_channels, device=device, generator=g),
        caption_mask=mask, caption_dropped=torch.zeros(n, dtype=torch.bool, device=device),
        write_kv=[False] * n, distill_dt=32.0)
    return lambda: model(batch, KVAccess(store))


def linear_flops(shape: Shape, layers: range | None = None) -> tuple[float, float]:
    """(FLOPs of the transformer layers' linears [in `layers`], FLOPs of the whole forward), counted as
    `bench/gpu_forward.py` counts them (attention over the attended ranges only)."""
    mc, L, n = shape.config.model, shape.tokens_per_chunk, shape.n
    D, F, Hq, Hkv, hd = mc.hidden_size, mc.ffn_hidden_size, mc.num_attention_heads, mc.num_query_groups, mc.kv_channels
    S, lc = n * L, shape.caption_valid
    lin = 2 * S * (D * Hq * hd * 2 + D * Hkv * hd * 2 + 2 * Hq * hd * D + D * F * (2 if mc.gated_linear_unit else 1) + F * D)
    attn = sum(4 * L * (shape.n_cached + j + 1) * L * Hq * hd for j in range(n)) + 4 * S * lc * Hq * hd
    other = 2 * n * lc * D * 2 * Hkv * hd  # caption K/V projection (never quantized)
    head = 2 * S * (mc.in_channels * mc.patch_size**2 * D + D * mc.patch_size**2 * mc.out_channels)
    n_lin = mc.num_layers if layers is None else len(layers)
    return n_lin * lin, mc.num_layers * (lin + attn + other) + head


def time_it(fn: Callable[[], object], device: str, warmup: int = 2, iters: int = 5) -> list[float]:
    """Seconds per call: CUDA events on a GPU, wall clock on the CPU."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(iters):
        if device.startswith("cuda"):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            a.record(); fn(); b.record()
            torch.cuda.synchronize()
            out.append(a.elapsed_time(b) / 1e3)
        else:
            t0 = time.perf_counter(); fn(); out.append(time.perf_counter() - t0)
    return out


def matmul_rate(device: str, n: int = 8192, warmup: int = 2, iters: int = 5) -> float:
    """FLOP/s of an n³ matmul in the benchmark's dtype (bf16 on a GPU, float32 on the CPU)."""
    dt = torch.bfloat16 if device.startswith("cuda") else torch.float32
    a = torch.randn(n, n, device=device, dtype=dt)
    b = torch.randn(n, n, device=device, dtype=dt)
    return 2 * n**3 / statistics.median(time_it(lambda: a @ b, device, warmup, iters))


def card(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    import platform
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
