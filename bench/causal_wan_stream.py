"""Streaming causal Wan (Self-Forcing / LongLive) on one GPU: a long stream per KV setting, memory over time.

The Wan2.1-T2V-1.3B shape (30 layers, 1536 wide, 12 heads of 128) with random bf16 weights (float32 where
diffusers keeps float32), 480x832 (1560 tokens per latent frame), 3 latent frames per block, 4 steps per block
(Self-Forcing's warped 1000/750/500/250) and the clean re-run of each finished block, as our causal_wan family runs
it; a random prompt embedding (the text encoder runs once per video) and no VAE (its stream decoder holds a few
frames: not what grows). Each row streams the same seed for `--seconds` of video at 16 fps and records per block:
wall time (CUDA synchronised), K/V bytes the store holds, CUDA memory allocated and the block's peak. Rows:
- `unbounded`: every block attends to all earlier blocks (Self-Forcing's local_attn_size -1, past its 21-frame
  cache): memory grows with the video until the card runs out (the row then stops and says at which block);
- `window`: LongLive's local attention window, local_attn_size 12 latent frames with sink_size 3 (the store drops
  what the window no longer sees);
- `<kv_policy>[+int8]@<budget>`: every earlier block attended, within a byte budget (the KV memory manager:
  `sink_window` first frames + newest, `flowcache` importance - redundancy; int8 storage).
Reported: tokens/s (DiT tokens forwarded, clean re-runs included), video frames/s, the store's peak bytes, the
CUDA peak over the run, per quarter of the blocks, and its growth (last quarter's peak minus the second's: a budget
or window fills within the first half, so ~0 is flat; on the CPU the store's bytes stand in for the CUDA peak). JSON after every row, a table at the end.

    python bench/causal_wan_stream.py --out bench/results/causal_wan_stream_h100.json            # 60 s of video
    python bench/causal_wan_stream.py --seconds 20 --rows window,sink_window@8GiB --out /tmp/cw.json
    python bench/causal_wan_stream.py --tiny --out /tmp/causal_wan_tiny.json                      # CPU smoke test
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from flowcache_core.api import make_store  # noqa: E402
from flowcache_core.cache.kv_memory import fmt_bytes  # noqa: E402
from flowcache_core.cache.settings import CacheConfig, resolve_cache  # noqa: E402
from flowcache_core.engine.events import ForwardEvent, RunRecord  # noqa: E402
from flowcache_core.engine.loop import run_chunks  # noqa: E402
from flowcache_core.models.causal_wan.config import CausalWanConfig, CausalWanSettings  # noqa: E402
from flowcache_core.models.causal_wan.generation import CausalWanGeneration  # noqa: E402
from flowcache_core.models.causal_wan.synthetic import SHAPE_1_3B, TINY  # noqa: E402
from flowcache_core.models.wan.config import WanDiTConfig  # noqa: E402
from flowcache_core.models.wan.dit import WanDiT  # noqa: E402

ROWS = "window,sink_window@8GiB,flowcache@8GiB,sink_window+int8@4GiB,unbounded"
TINY_ROWS = "window,sink_window@24KiB,flowcache@24KiB,sink_window+int8@12KiB,unbounded"
FPS = 16


def build_model(shape: dict, dev: torch.device, dtype: torch.dtype, seed: int) -> WanDiT:
    torch.manual_seed(seed)
    cfg = WanDiTConfig(**shape, class_name="SkyReelsV2Transformer3DModel")  # float64 timestep sinusoid, as theirs
    with torch.device(dev):
        model = WanDiT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.02)
    return model.set_dtype(dtype).eval()


def parse_row(row: str) -> tuple[CacheConfig, dict]:
    """A row name -> (cache request, settings overrides)."""
    if row == "unbounded":
        return CacheConfig("none"), {}
    if row == "window":
        return CacheConfig("none"), dict(local_attn_size=12, sink_size=3)
    spec, budget = row.split("@")
    policy, _, quant = spec.partition("+")
    opts = dict(kv_budget=budget, kv_policy=policy)
    if quant:
        opts["kv_quant"] = quant
    if policy == "sink_window":
        opts["sink_frames"] = 3  # LongLive's sink: the first block
    return CacheConfig("none", **opts), {}


def run_row(model: WanDiT, row: str, args, hw: tuple[int, int], dev: torch.device) -> dict:
    cache, overrides = parse_row(row)
    s = CausalWanSettings(num_frames=args.seconds * FPS, height=hw[0] * 8, width=hw[1] * 8, seed=args.seed,
                          **overrides)
    config = CausalWanConfig(Path("."), Path("."), None, Path("."), model.cfg, {}, s)
    torch.manual_seed(args.seed + 1)
    context = torch.randn(1, 512, model.cfg.dim, device=dev, dtype=model.dtype)  # an embedded prompt
    gen = CausalWanGeneration(model, config, context, hw, None, dev)
    store = make_store(resolve_cache(cache), gen, 1)
    record = RunRecord()
    blocks: list[dict] = []
    tokens = [0]

    def on_event(e: object) -> None:
        if isinstance(e, ForwardEvent):
            tokens[0] += e.tokens_forwarded

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = last = time.perf_counter()
    oom = None
    stream = run_chunks(gen, cache_policy(cache), store, record, on_event)
    while True:
        try:
            idx, _ = next(stream)
        except StopIteration:
            break
        except torch.cuda.OutOfMemoryError:  # the unbounded cache: where it stops is the result
            oom = len(blocks)
            break
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        now = time.perf_counter()
        blocks.append(dict(block=idx, seconds=now - last, store_bytes=store.nbytes(),
                           allocated=torch.cuda.memory_allocated(dev) if dev.type == "cuda" else None,
                           peak=torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None))
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        last = now
    sec = time.perf_counter() - t0
    n = len(blocks)
    peaks = [b["peak"] for b in blocks] if dev.type == "cuda" else [b["store_bytes"] for b in blocks]
    quarters = [max(peaks[i * n // 4 : (i + 1) * n // 4] or [0]) for i in range(4)] if n >= 4 else None
    growth = quarters[3] - quarters[1] if quarters else None  # a budget fills in the first half: ~0 is flat
    frames = n * s.num_frame_per_block * 4
    out = dict(row=row, blocks=n, planned_blocks=gen.blocks, oom_at_block=oom, seconds=sec,
               tokens=tokens[0], tokens_per_s=tokens[0] / sec, video_frames_per_s=frames / sec,
               store_peak_bytes=store.peak_bytes, peak_bytes=max(peaks) if peaks else None,
               peak_by_quarter=quarters, peak_growth_bytes=growth, budget_bytes=store.budget_bytes, compressions=store.compressions,
               settings=dict(local_attn_size=s.local_attn_size, sink_size=s.sink_size), per_block=blocks)
    del gen, store, stream
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return out


def cache_policy(cache: CacheConfig):
    return resolve_cache(cache).make_policy()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--seconds", type=int, default=60, help="video length at 16 fps")
    ap.add_argument("--rows", default=None, help=f"comma-separated (default {ROWS})")
    ap.add_argument("--tiny", action="store_true", help="the tiny shape at 32x32 on the CPU, a smoke test")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.tiny:
        args.device, args.seconds = "cpu", min(args.seconds, 12)
    dev = torch.device(args.device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    shape, hw = (TINY, (4, 4)) if args.tiny else (SHAPE_1_3B, (60, 104))
    rows = (args.rows or (TINY_ROWS if args.tiny else ROWS)).split(",")
    card = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    result = dict(card=card, torch=torch.__version__, shape=shape, latent_hw=hw, seconds_of_video=args.seconds,
                  fps=FPS, dtype=str(dtype), seed=args.seed, rows=[])
    model = build_model(shape, dev, dtype, args.seed)
    with torch.no_grad():  # warm-up (kernels, allocator), not timed
        warm = argparse.Namespace(**{**vars(args), "seconds": 1})
        run_row(model, "unbounded", warm, hw, dev)
    for row in rows:
        with torch.no_grad():
            r = run_row(model, row, args, hw, dev)
        result["rows"].append(r)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
        print(f"{row:26s} blocks {r['blocks']:4d}/{r['planned_blocks']:<4d} {r['seconds']:8.1f} s  "
              f"{r['tokens_per_s']:>10,.0f} tok/s  {r['video_frames_per_s']:6.2f} frames/s  "
              f"store {fmt_bytes(r['store_peak_bytes'])}  peak {fmt_bytes(r['peak_bytes'] or 0)}  "
              f"growth {fmt_bytes(max(0, r['peak_growth_bytes'] or 0))}"
              + (f"  OOM at block {r['oom_at_block']}" if r["oom_at_block"] is not None else ""), flush=True)
    print(f"wrote {args.out} ({card})")


if __name__ == "__main__":
    main()
