"""One KV compression event against one forward, same call (issue 20 item 3; goal: an event <= 10 % of a forward).

An event compresses every layer: for each of the model's layers, `compress_clean` scores the clean chunks' K/V
(2 chunks = 24,300 keys per KV head at the 4.5B/720² shape) with the newest chunk's queries (12,150 at `chunk`
query granularity, 2,025 at `frame`, 50 at `token`; 24 query heads over 8 KV heads, head dim 128) and keeps one
chunk's worth per KV head. The forward is the full 4.5B forward of `bench/gpu_forward.py` (magi_shape.py), bf16
random weights. Also reported: the event's matmul floor (its Q·K FLOPs, one pass, at the bf16 matmul rate measured
in the same call) and its peak extra memory.

    python bench/compress_cost.py --out bench/results/compress_cost_h100.json                  # one GPU, ~2 min
    python bench/compress_cost.py --block-elements 16777216,67108864,268435456 --out ...       # tile sizes
    python bench/compress_cost.py --tiny                                                        # CPU smoke run
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
from magi_shape import card, forward_call, magi_4_5b_shape, matmul_rate, time_it, tiny_shape  # noqa: E402

from flowcache_core.cache import kv_compressor  # noqa: E402
from flowcache_core.cache.kv_compressor import KVCompressor, compress_clean  # noqa: E402
from flowcache_core.models.magi1.dit import build_model  # noqa: E402

GRANULARITIES = ("chunk", "frame", "token")


def event_call(shape, device: str, dtype: torch.dtype, granularity: str, clean_chunks: int):
    """A closure running one compression event over all layers (the same random K/V and queries in each)."""
    mc, L = shape.config.model, shape.tokens_per_chunk
    g = torch.Generator(device=device).manual_seed(1)
    keys = torch.randn(clean_chunks * L, mc.num_query_groups, mc.kv_channels, device=device, generator=g, dtype=dtype)
    values = torch.randn_like(keys)
    queries = torch.randn(L, mc.num_attention_heads, mc.kv_channels, device=device, generator=g, dtype=dtype)
    pos = torch.arange(clean_chunks * L, device=device)
    comp = KVCompressor("token", granularity, 0.07)

    def event():
        for _ in range(mc.num_layers):
            compress_clean(keys, values, pos, pos // L, queries, compressor=comp, tokens_per_frame=shape.tokens_per_frame,
                           tokens_per_chunk=L, budget=(clean_chunks - 1) * L)
    n_queries = len(kv_compressor.select_queries(queries, granularity, shape.tokens_per_frame))
    flops = 2 * n_queries * clean_chunks * L * mc.kv_channels * mc.num_attention_heads * mc.num_layers
    return event, flops, n_queries


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/compress_cost_<device>.json)")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU: a smoke run of the script")
    ap.add_argument("--device", default=None, help="default: cuda if available (cpu with --tiny)")
    ap.add_argument("--layers", type=int, default=None, help="fewer layers (event and forward both scale)")
    ap.add_argument("--clean-chunks", type=int, default=2, help="clean chunks scored per event (one is dropped)")
    ap.add_argument("--granularities", default=",".join(GRANULARITIES))
    ap.add_argument("--block-elements", default=None,
                    help=f"comma list of importance tile sizes to time (default {kv_compressor._BLOCK_ELEMENTS})")
    a = ap.parse_args()
    device = a.device or ("cpu" if a.tiny or not torch.cuda.is_available() else "cuda")
    on_gpu = device.startswith("cuda")
    dtype = torch.bfloat16 if on_gpu else torch.float32
    shape = tiny_shape(a.layers or 4) if a.tiny else magi_4_5b_shape(a.layers)
    mc = shape.config.model
    iters = (2, 5) if on_gpu else (1, 2)

    model = build_model(mc, device=device, dtype=dtype, seed=0).eval()
    fwd = forward_call(model, shape, device)
    forward_s = statistics.median(time_it(fwd, device, *iters))
    del model, fwd
    if on_gpu:
        torch.cuda.empty_cache()
    rate = matmul_rate(device, 8192 if on_gpu else 512)

    blocks = [int(b) for b in a.block_elements.split(",")] if a.block_elements else [kv_compressor._BLOCK_ELEMENTS]
    rows = []
    for gran in a.granularities.split(","):
        event, flops, n_q = event_call(shape, device, dtype, gran, a.clean_chunks)
        for block in blocks:
            kv_compressor._BLOCK_ELEMENTS = block
            if on_gpu:
                torch.cuda.synchronize()
                base = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
            times = time_it(event, device, *iters)
            t = statistics.median(times)
            rows.append({
                "granularity": gran, "queries": n_q, "keys": a.clean_chunks * shape.tokens_per_chunk,
                "block_elements": block, "tile": kv_compressor.block_shape(
                    n_q, a.clean_chunks * shape.tokens_per_chunk, mc.num_attention_heads, block),
                "event_s": t, "event_s_all": times, "event_vs_forward": t / forward_s,
                "matmul_floor_s": flops / rate, "matmul_floor_vs_forward": flops / rate / forward_s,
                "per_forward_at_64_steps": t / (64 / shape.config.runtime.window_size) / forward_s,
                "peak_extra_gib": (torch.cuda.max_memory_allocated() - base) / 2**30 if on_gpu else None,
            })
    res = {"card": card(device), "torch": torch.__version__, "dtype": str(dtype), "layers": mc.num_layers,
           "tokens_per_chunk": shape.tokens_per_chunk, "heads_q": mc.num_attention_heads,
           "heads_kv": mc.num_query_groups, "head_dim": mc.kv_channels, "forward_s": forward_s,
           "matmul_tflops": rate / 1e12, "goal": "event_vs_forward <= 0.10 at chunk granularity", "events": rows}
    out = Path(a.out or f"bench/results/compress_cost_{'tiny_' if a.tiny else ''}{'gpu' if on_gpu else 'cpu'}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(f"{res['card']}, torch {res['torch']}, {mc.num_layers} layers, {dtype}; forward {forward_s:.4g} s; "
          f"matmul {rate / 1e12:.4g} TFLOP/s")
    print(f"{'granularity':>11} {'queries':>7} {'keys':>6} {'tile (q x k)':>14} {'event s':>9} {'/forward':>9} "
          f"{'floor/fwd':>9} {'@64 steps':>9} {'peak GiB':>8}")
    for r in rows:
        peak = f"{r['peak_extra_gib']:.3g}" if r["peak_extra_gib"] is not None else "-"
        print(f"{r['granularity']:>11} {r['queries']:>7} {r['keys']:>6} {str(tuple(r['tile'])):>14} {r['event_s']:>9.4g} "
              f"{r['event_vs_forward']:>9.2%} {r['matmul_floor_vs_forward']:>9.2%} {r['per_forward_at_64_steps']:>9.2%} "
              f"{peak:>8}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
