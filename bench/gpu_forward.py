"""Full-scale forward on a GPU: the MAGI-1 4.5B config, random bf16 weights, 720x720.

One forward of a window of 4 chunks (6 latent frames of 45x45 patches = 12150 tokens each) that attend
to 2 cached clean chunks and to each other block-causally (chunk j sees the cached chunks and window chunks
<= j). Reports time (median of CUDA-event timings), FLOPs counted analytically over the attended ranges
only, achieved TFLOP/s and MFU against a bf16 matmul measured on the same card. The forward runs SDPA
(`--attn-backend sdpa`); `--also-flash` times the same forward with flash-attn where it imports. Also checks each
attention backend against a float64 reference on random inputs. Prints a table, writes JSON.

    python bench/gpu_forward.py --out bench/results/gpu_forward.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from flowcache_core.cache.kv import KVAccess, KVStore  # noqa: E402
from flowcache_core.models.magi1.config import magi_4_5b  # noqa: E402
from flowcache_core.models.attention import attend, available_backends  # noqa: E402
from flowcache_core.models.magi1.dit import ChunkBatch, build_model  # noqa: E402
from magi_shape import Shape, linear_flops, matmul_rate, time_it  # noqa: E402


def time_cuda(fn, warmup=2, iters=5) -> list[float]:
    return time_it(fn, "cuda", warmup, iters)  # CUDA events, the same timer as the other MAGI-1 benchmarks


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
def skip_and_overhead(model, batch, store, mc, L: int, tpf: int, window: int = 4) -> dict:
    """Issue 7 goal 4: what a skipped chunk costs (forwards of the same window with 1..4 chunks computed; a
    skipped chunk still pays its feature = patch embedding, and the policy's decision), and the policy +
    compressor overhead against the full forward."""
    import dataclasses as dc

    from flowcache_core.cache.kv_compressor import KVCompressor, compress_clean
    from flowcache_core.cache.policy import ChunkStep
    from flowcache_core.cache.settings import CacheConfig, make_policy

    n = len(batch.chunk_ids)
    # A skipped window chunk is still attended by the later ones through the K/V of its last computed forward
    # (the store's window slots); give every window chunk such a slot, as the pipeline would have.
    L_tok = batch.x.shape[2] * (batch.x.shape[3] // mc.patch_size) * (batch.x.shape[4] // mc.patch_size)
    for layer in range(mc.num_layers):
        for c in batch.chunk_ids:
            store.write(layer, "cond", c, torch.randn(L_tok, mc.num_query_groups, mc.kv_channels, device="cuda", dtype=torch.bfloat16),
                        torch.randn(L_tok, mc.num_query_groups, mc.kv_channels, device="cuda", dtype=torch.bfloat16))
    by_k = {}
    for k in range(1, n + 1):  # the newest k chunks computed, the others skipped
        sub = dc.replace(batch, x=batch.x[n - k:], t=batch.t[n - k:], chunk_ids=batch.chunk_ids[n - k:],
                         kv_start=batch.kv_start[n - k:], caption=batch.caption[n - k:],
                         caption_mask=batch.caption_mask[n - k:], caption_dropped=batch.caption_dropped[n - k:],
                         write_kv=batch.write_kv[n - k:])
        by_k[k] = statistics.median(time_cuda(lambda: model(sub, KVAccess(store)), 1, 3))
    per_chunk = (by_k[n] - by_k[1]) / (n - 1)
    feat = statistics.median(time_cuda(lambda: model.embed_patches(batch.x[:1]), 2, 10))
    policy = make_policy(CacheConfig("flowcache", rel_l1_thresh=0.05, warmup_steps=0, reuse="velocity"))
    feats = model.embed_patches(batch.x)
    steps = [ChunkStep(c, 10, 64, 0.3, 0.01, False, feats[j]) for j, c in enumerate(batch.chunk_ids)]
    policy.update(steps, [d for d in policy.decide(steps)], {c: batch.x[j] for j, c in enumerate(batch.chunk_ids)},
                  {c: batch.x[j] for j, c in enumerate(batch.chunk_ids)})
    pol = statistics.median(time_cuda(lambda: policy.decide(steps), 2, 10)) + n * feat
    # One compression event per layer: 3 clean chunks' K/V (B_total 6 with a window of 4 after a chunk turned
    # clean) down to 2, scored with the newest chunk's queries at each query granularity.
    keys = torch.randn(2 * L, mc.num_query_groups, mc.kv_channels, device="cuda", dtype=torch.bfloat16)
    q = torch.randn(L, mc.num_attention_heads, mc.kv_channels, device="cuda", dtype=torch.bfloat16)
    pos = torch.arange(2 * L, device="cuda")
    full = by_k[n]
    # The sampler emits a chunk (one compression event) every num_steps / window forwards.
    forwards_per_event = {steps: steps / window for steps in (64, 32)}
    events = {}
    for gran in ("chunk", "frame", "token"):
        comp = KVCompressor("token", gran, 0.07)
        one = statistics.median(time_cuda(lambda: compress_clean(
            keys, keys, pos, pos // L, q, compressor=comp, tokens_per_frame=tpf, tokens_per_chunk=L, budget=L), 1, 3))
        event = one * mc.num_layers
        events[gran] = {"event_s": event, "event_vs_full_forward": event / full,
                        **{f"per_forward_at_{k}_steps": event / f / full for k, f in forwards_per_event.items()}}
    return {"forward_s_by_computed_chunks": by_k, "skipped_chunk_cost_vs_computed": feat / per_chunk,
            "policy_s_per_forward": pol, "compression_s": events["chunk"]["event_s"], "compression_by_query_granularity": events,
            "overhead_vs_full_forward": {"policy": pol / full, "compression_per_event": events["chunk"]["event_vs_full_forward"],
                                         "policy_plus_compression_per_forward_at_64_steps":
                                             (pol + events["chunk"]["event_s"] / forwards_per_event[64]) / full}}


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results/gpu_forward.json")
    ap.add_argument("--layers", type=int, default=None, help="fewer layers for a quick look (FLOPs scale)")
    ap.add_argument("--profile", action="store_true", help="also: one forward under torch.profiler, top kernels")
    ap.add_argument("--skip-cost", action="store_true", help="also: forwards with 1..4 computed chunks, policy and compressor overhead")
    ap.add_argument("--also-flash", action="store_true",
                    help="also: the same forward with --attn-backend flash (flash-attn 4 or 2), where it imports")
    a = ap.parse_args()
    dev = "cuda"
    cfg = magi_4_5b(distill=True)
    if a.layers:
        cfg.model.num_layers = a.layers
    mc = cfg.model
    torch.manual_seed(0)
    model = build_model(mc, device=dev, dtype=torch.bfloat16, seed=0, attn_backend="sdpa").eval()
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
    flops = linear_flops(Shape(cfg, cw=cw, h=h, n=n, n_cached=n_cached, caption_len=lc, caption_valid=120))[1]
    mm = matmul_rate("cuda", 8192, warmup=3, iters=10)
    res = {
        "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "layers": mc.num_layers,
        "tokens": n * L, "forward_s_median": t, "forward_s_all": times, "flops": flops,
        "tflops": flops / t / 1e12, "matmul_tflops": mm / 1e12, "mfu_vs_matmul": flops / t / mm,
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
        "attention_rel_err_vs_fp64": attention_agreement(), "backends": available_backends(),
        "attn_backend": model.attn_backend,
    }
    if a.also_flash and "flash" in available_backends():  # same model, batch and store; only the kernel differs
        from flowcache_core.models.attention import _flash_fn

        model.attn_backend = "flash"
        ft = statistics.median(time_cuda(fwd, warmup=2, iters=5))  # the first warm-up also compiles (flash-attn 4)
        model.attn_backend = "sdpa"
        res["flash"] = {"kernel": _flash_fn()[0], "forward_s_median": ft, "tflops": flops / ft / 1e12,
                        "vs_sdpa": t / ft}
    if a.profile:  # where the time of one forward goes, by kernel
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fwd()
            torch.cuda.synchronize()
        table = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=25, max_name_column_width=70)
        res["profile_top_kernels"] = table
        print(table)
    if a.skip_cost:
        res.update(skip_and_overhead(model, batch, store, mc, L, tpf=(h // 2) ** 2, window=cfg.runtime.window_size))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2))
    print(f"{'gpu':24s} {res['gpu']}")
    for k in ["layers", "tokens", "forward_s_median", "tflops", "matmul_tflops", "mfu_vs_matmul", "peak_mem_gib"]:
        v = res[k]
        print(f"{k:24s} {v:.4g}" if isinstance(v, float) else f"{k:24s} {v}")
    print(f"{'attention rel err':24s} {res['attention_rel_err_vs_fp64']}")
    if "flash" in res:
        print(f"{'flash forward':24s} {res['flash']}")
    for k in ["forward_s_by_computed_chunks", "skipped_chunk_cost_vs_computed", "policy_s_per_forward",
              "compression_s", "compression_by_query_granularity", "overhead_vs_full_forward"]:
        if k in res:
            print(f"{k:24s} {res[k]}")


if __name__ == "__main__":
    main()
