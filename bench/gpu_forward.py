"""Full-scale forward on a GPU: the MAGI-1 4.5B config, random bf16 weights, 720x720.

One forward of a window of 4 chunks (6 latent frames of 45x45 patches = 12150 tokens each) that attend
to 2 cached clean chunks and to each other block-causally (chunk j sees the cached chunks and window chunks
<= j). Reports time (median of CUDA-event timings), FLOPs counted analytically over the attended ranges
only, achieved TFLOP/s and MFU against a bf16 matmul measured on the same card. Also checks the SDPA
attention path against a float32 reference on random inputs. Prints a table, writes JSON.

    python bench/gpu_forward.py --out bench/results/gpu_forward.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from flowcache_core.cache.kv import KVAccess, KVStore  # noqa: E402
from flowcache_core.config import magi_4_5b  # noqa: E402
from flowcache_core.model.attention import attend, available_backends  # noqa: E402
from flowcache_core.model.dit import ChunkBatch, build_model  # noqa: E402


def time_cuda(fn, warmup=2, iters=5) -> list[float]:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record()
        torch.cuda.synchronize()
        out.append(a.elapsed_time(b) / 1e3)
    return out


def matmul_rate(n=8192) -> float:
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    t = statistics.median(time_cuda(lambda: a @ b, 3, 10))
    return 2 * n**3 / t


def forward_flops(cfg, L: int, n: int, n_cached: int, lc: int) -> float:
    """Matmul FLOPs of one forward: projections, MLP, self-attention over the attended ranges, cross-attention."""
    D, F, Hq, Hkv, hd = cfg.hidden_size, cfg.ffn_hidden_size, cfg.num_attention_heads, cfg.num_query_groups, cfg.kv_channels
    S = n * L
    lin = 2 * S * (D * Hq * hd * 2 + D * Hkv * hd * 2 + 2 * Hq * hd * D + D * F * (2 if cfg.gated_linear_unit else 1) + F * D)
    lin += 2 * n * lc * D * 2 * Hkv * hd  # caption K/V projection
    attn = sum(4 * L * (n_cached + j + 1) * L * Hq * hd for j in range(n))
    xattn = 4 * S * lc * Hq * hd
    per_layer = lin + attn + xattn
    head = 2 * S * (cfg.in_channels * cfg.patch_size**2 * D + D * cfg.patch_size**2 * cfg.out_channels)
    return cfg.num_layers * per_layer + head


@torch.no_grad()
def attention_agreement() -> dict:
    out = {}
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(1, 1024, 24, 128, device="cuda", generator=g)
    k = torch.randn(1, 4096, 8, 128, device="cuda", generator=g)
    v = torch.randn(1, 4096, 8, 128, device="cuda", generator=g)
    ref = attend(q.double().cpu(), k.double().cpu(), v.double().cpu()).cuda()
    for backend in available_backends():
        o = attend(q.bfloat16(), k.bfloat16(), v.bfloat16(), backend=backend).double()
        out[backend] = ((o - ref).norm() / ref.norm()).item()
    return out


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results/gpu_forward.json")
    ap.add_argument("--layers", type=int, default=None, help="fewer layers for a quick look (FLOPs scale)")
    a = ap.parse_args()
    dev = "cuda"
    cfg = magi_4_5b(distill=True)
    if a.layers:
        cfg.model.num_layers = a.layers
    mc = cfg.model
    torch.manual_seed(0)
    model = build_model(mc, device=dev, dtype=torch.bfloat16, seed=0).eval()
    with torch.no_grad():
        model.final_linear.linear.weight.normal_(0, 0.01)
    cw, h = 6, 90  # 720 px / 8 (VAE) = 90 latent, 45 patches
    L = cw * (h // 2) ** 2
    n, n_cached, lc = 4, 2, 800
    store = KVStore(mc.num_layers)
    for layer in range(mc.num_layers):  # two cached clean chunks, K/V after norm+RoPE (random here)
        for c in range(n_cached):
            store.write(layer, "cond", c, torch.randn(L, mc.num_query_groups, mc.kv_channels, device=dev, dtype=torch.bfloat16),
                        torch.randn(L, mc.num_query_groups, mc.kv_channels, device=dev, dtype=torch.bfloat16))
    ids = list(range(n_cached, n_cached + n))
    mask = torch.zeros(n, lc, dtype=torch.long, device=dev)
    mask[:, :120] = 1
    batch = ChunkBatch(x=torch.randn(n, mc.in_channels, cw, h, h, device=dev), t=torch.tensor([0.6, 0.3, 0.1, 0.01], device=dev),
                       chunk_ids=ids, kv_start=[0] * n, caption=torch.randn(n, lc, mc.caption_channels, device=dev),
                       caption_mask=mask, caption_dropped=torch.zeros(n, dtype=torch.bool, device=dev),
                       write_kv=[False] * n, distill_dt=32.0)
    fwd = lambda: model(batch, KVAccess(store))  # noqa: E731
    torch.cuda.reset_peak_memory_stats()
    times = time_cuda(fwd, warmup=2, iters=5)
    t = statistics.median(times)
    flops = forward_flops(mc, L, n, n_cached, 120)
    mm = matmul_rate()
    res = {
        "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "layers": mc.num_layers,
        "tokens": n * L, "forward_s_median": t, "forward_s_all": times, "flops": flops,
        "tflops": flops / t / 1e12, "matmul_tflops": mm / 1e12, "mfu_vs_matmul": flops / t / mm,
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
        "attention_rel_err_vs_fp64": attention_agreement(), "backends": available_backends(),
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2))
    print(f"{'gpu':24s} {res['gpu']}")
    for k in ["layers", "tokens", "forward_s_median", "tflops", "matmul_tflops", "mfu_vs_matmul", "peak_mem_gib"]:
        v = res[k]
        print(f"{k:24s} {v:.4g}" if isinstance(v, float) else f"{k:24s} {v}")
    print(f"{'attention rel err':24s} {res['attention_rel_err_vs_fp64']}")


if __name__ == "__main__":
    main()
