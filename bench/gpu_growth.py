"""Per-chunk latency and peak memory as the video grows, with and without KV compression (issue 7, bench 3).

MAGI-1 4.5B-shaped DiT with random bf16 weights (fewer layers with --layers to fit a 10-minute call), every
chunk attending to all earlier chunks (noise2clean_kvrange [] as FlowCache's published config), 8 steps
(timing only), no decode. For each emitted chunk: seconds since the previous one and the peak device memory.
Runs `--chunks` chunks without a budget and with B_total = --budget, prints a table, writes JSON.

    python bench/gpu_growth.py --layers 8 --chunks 40 --out bench/results/gpu_growth.json
    python bench/gpu_growth.py --tiny --chunks 6 --device cpu       # smoke test of the script itself
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from flowcache_core.api import make_store  # noqa: E402
from flowcache_core.cache.policy import NoCache  # noqa: E402
from flowcache_core.cache.settings import CacheConfig, resolve_cache  # noqa: E402
from flowcache_core.engine.events import ChunkEmitted, RunRecord  # noqa: E402
from flowcache_core.engine.loop import run_chunks  # noqa: E402
from flowcache_core.models.magi1.config import magi_4_5b  # noqa: E402
from flowcache_core.models.magi1.dit import build_model  # noqa: E402
from flowcache_core.models.magi1.sampling import Magi1Generation, TextCondition  # noqa: E402


class TimeUp(Exception):
    """The run passed --max-seconds (its rows so far are kept)."""


def run(model, cfg, chunks: int, budget: int | None, device: str, lc: int, rows: list[dict],
        max_seconds: float = float("inf")) -> list[dict]:
    rt = cfg.runtime
    C, h = cfg.model.in_channels, rt.video_size_h // 8
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(C, chunks * rt.chunk_width, h, h, generator=g).to(device)
    cap = torch.randn(lc, cfg.model.caption_channels, generator=g).to(device)
    text = TextCondition(cap, torch.ones(lc, dtype=torch.long, device=device))
    gen = Magi1Generation(model, cfg, text, noise)
    store = make_store(resolve_cache(CacheConfig("none", total_cache_chunk_nums=budget)), gen)
    last = [time.perf_counter()]
    start = last[0]

    def on_event(e):
        if isinstance(e, ChunkEmitted):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            now = time.perf_counter()
            mem = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
            rows.append({"chunk": e.index, "seconds": now - last[0], "peak_mem_gib": mem,
                         "kv_tokens_per_layer": store.tokens("cond"), "kv_gib": store.nbytes() / 2**30})
            last[0] = now
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            if now - start > max_seconds:
                raise TimeUp

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    for _ in run_chunks(gen, NoCache(), store, RunRecord(), on_event):
        pass
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chunks", type=int, default=40)
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--budget", type=int, default=6)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="a small model and 64x64 latents, for a smoke test")
    ap.add_argument("--max-seconds", type=float, default=float("inf"),
                    help="stop a run after this long (the uncompressed one slows down as it grows)")
    ap.add_argument("--out", default="bench/results/gpu_growth.json")
    a = ap.parse_args()
    cfg = magi_4_5b(distill=True)
    cfg.runtime = dataclasses.replace(cfg.runtime, num_steps=a.steps, noise2clean_kvrange=[])
    if a.tiny:
        cfg.model = dataclasses.replace(cfg.model, num_layers=2, hidden_size=256, ffn_hidden_size=512,
                                        num_attention_heads=8, kv_channels=32, num_query_groups=2, caption_channels=64)
        cfg.runtime = dataclasses.replace(cfg.runtime, video_size_h=64, video_size_w=64, chunk_width=2)
    if a.layers:
        cfg.model = dataclasses.replace(cfg.model, num_layers=a.layers)
    dtype = torch.bfloat16 if a.device.startswith("cuda") else torch.float32
    model = build_model(cfg.model, device=a.device, dtype=dtype, seed=0).eval()
    with torch.no_grad():
        model.final_linear.linear.weight.normal_(0, 0.01)
    res = {"device": torch.cuda.get_device_name(0) if a.device.startswith("cuda") else "cpu",
           "layers": cfg.model.num_layers, "steps": a.steps, "chunks": a.chunks, "budget": a.budget, "runs": {}}
    # The compressed run first (the goal); the uncompressed one for comparison, until it runs out of memory.
    for name, budget in ((f"B_total_{a.budget}", a.budget), ("no_compression", None)):
        t = time.perf_counter()
        rows: list[dict] = []
        try:
            run(model, cfg, a.chunks, budget, a.device, lc=120 if not a.tiny else 8, rows=rows, max_seconds=a.max_seconds)
        except torch.cuda.OutOfMemoryError:
            res[name + "_out_of_memory_after_chunks"] = len(rows)
            print(f"{name}: out of GPU memory after {len(rows)} chunks")
        except TimeUp:
            res[name + "_stopped_after_chunks"] = len(rows)
            print(f"{name}: stopped after {len(rows)} chunks (--max-seconds {a.max_seconds:g})")
        res["runs"][name] = rows
        res["runs"][name + "_total_s"] = time.perf_counter() - t
        if a.device.startswith("cuda"):
            torch.cuda.empty_cache()
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(res, indent=2))  # after each run: a later one may not finish
    # Chunks 4 .. n-window: the store is full and every emitted chunk compresses; the last window-1 chunks come
    # out of a draining window (fewer chunks per forward), so they are faster and left out.
    steady = res["runs"][f"B_total_{a.budget}"][4 : a.chunks - (cfg.runtime.window_size - 1)]
    if steady:
        secs = sorted(r["seconds"] for r in steady)
        mems = [r["peak_mem_gib"] for r in steady if r["peak_mem_gib"] is not None]
        res["compressed_steady"] = {
            "chunks": [steady[0]["chunk"], steady[-1]["chunk"]], "seconds_median": secs[len(secs) // 2],
            "seconds_spread": (secs[-1] - secs[0]) / secs[len(secs) // 2],
            "peak_mem_spread": (max(mems) - min(mems)) / max(mems) if mems else None}
        Path(a.out).write_text(json.dumps(res, indent=2))
        print(f"compressed, chunks {steady[0]['chunk']}-{steady[-1]['chunk']}: median {secs[len(secs) // 2]:.3f}s per chunk, "
              f"spread {res['compressed_steady']['seconds_spread']:.1%}, peak-memory spread {res['compressed_steady']['peak_mem_spread']}")
    print(f"{'chunk':>5} " + " ".join(f"{n:>26}" for n in res["runs"] if not n.endswith("_s")))
    names = [n for n in res["runs"] if not n.endswith("_s")]
    for i in range(a.chunks):
        cells = []
        for n in names:
            if i >= len(res["runs"][n]):
                cells.append("-")
                continue
            r = res["runs"][n][i]
            mem = f"{r['peak_mem_gib']:.1f}G" if r["peak_mem_gib"] is not None else "-"
            cells.append(f"{r['seconds']:8.3f}s {mem:>6} {r['kv_tokens_per_layer']:>8}t")
        print(f"{i:>5} " + " ".join(f"{c:>26}" for c in cells))


if __name__ == "__main__":
    main()
