"""Issue 21 item 1: calibrate the shipped model's `cache_defaults` on prompts it was not tuned on.

Per prompt (seed 0, the model's 32 steps and 32 frames): `none` once (the reference), then each flowcache setting;
PSNR of the whole clip against `none` and the chunk-forwards speedup (total / computed: deterministic, unlike
wall time on a shared CPU). A setting qualifies when EVERY prompt stays above the floor (25 dB); the shipped
default is the qualifying setting with the highest chunk-forwards speedup.

    python bench/cache_defaults_heldout.py --out bench/results/cache_defaults_heldout_cpu.json
    python bench/cache_defaults_heldout.py --settings '[{"warmup_steps": 8, "rel_l1_thresh": 0.01}]'
    python bench/cache_defaults_heldout.py --num-steps 64 --settings '[{"rel_l1_thresh": 0.02, "reuse": "extrapolate"}]'
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from flowcache_core import CacheConfig, generate  # noqa: E402
from flowcache_core.api import load, resolve  # noqa: E402
from flowcache_core.eval.benchmarks import vbench_prompts  # noqa: E402
from flowcache_core.eval.metrics import psnr  # noqa: E402

VBENCH_INDICES = (0, 236, 472, 708)  # stop sign (temporal flickering), archery (human action), pink chair (colour), artist
README_PROMPTS = ("a green circle moves right", "a red square bounces")
FLOOR_DB = 25.0


def prompts() -> list[str]:
    vb = vbench_prompts()
    return [vb[i].text for i in VBENCH_INDICES] + list(README_PROMPTS)


def measure(prompt_list: list[str], settings: list[dict], seed: int = 0, num_steps: int | None = None) -> list[dict]:
    """One row per (prompt, setting): psnr vs none, computed / total chunk-forwards, seconds (reported only)."""
    bundle = load(resolve(prompt_list[0], seed=seed, num_steps=num_steps))
    rows = []
    for p in prompt_list:
        t = time.time()
        ref = generate(p, seed=seed, bundle=bundle, cache=CacheConfig("none"), num_steps=num_steps).frames
        none_s = time.time() - t
        for s in settings:
            t = time.time()
            r = generate(p, seed=seed, bundle=bundle, cache=CacheConfig("flowcache", **s), num_steps=num_steps)
            rows.append(dict(prompt=p, setting=s, psnr=float(psnr(r.frames, ref)), computed=r.record.computed_chunk_forwards,
                             total=r.record.chunk_forwards, seconds=time.time() - t, none_seconds=none_s))
            print(json.dumps(rows[-1]), flush=True)
    return rows


def summarise(rows: list[dict], floor: float = FLOOR_DB) -> list[dict]:
    """Per setting: min / mean PSNR over prompts, chunk-forwards speedup, whether every prompt clears the floor."""
    out = []
    for key in dict.fromkeys(json.dumps(r["setting"], sort_keys=True) for r in rows):
        rs = [r for r in rows if json.dumps(r["setting"], sort_keys=True) == key]
        ps = [r["psnr"] for r in rs]
        out.append(dict(setting=json.loads(key), prompts=len(rs), psnr_min=min(ps), psnr_mean=sum(ps) / len(ps),
                        computed=sum(r["computed"] for r in rs), total=sum(r["total"] for r in rs),
                        chunk_forwards_speedup=sum(r["total"] for r in rs) / sum(r["computed"] for r in rs),
                        all_above_floor=min(ps) > floor))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--settings", default='[{"warmup_steps": 8, "rel_l1_thresh": 0.01, "reuse": "extrapolate"}]')
    ap.add_argument("--out", default=None)
    ap.add_argument("--num-steps", type=int, default=None, help="default: the model's (32)")
    a = ap.parse_args()
    rows = measure(prompts(), json.loads(a.settings), num_steps=a.num_steps)
    result = dict(prompts=prompts(), seed=0, num_steps=a.num_steps, floor_db=FLOOR_DB, summary=summarise(rows),
                  rows=rows)
    print(json.dumps(result["summary"], indent=1))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
