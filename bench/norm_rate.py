"""How close MAGI-1's LayerNorms and gates run to the card's memory bandwidth (they are 5-10 % of a 4.5B forward).

At the 4.5B/720x720 forward's shapes (48,600 tokens; bf16): the width-3,072 LayerNorms (input norm, sandwich norms),
the per-head LayerNorm over 128 dims (q of 24 heads, k of 8), the tanh-gate multiply and a residual add, each
against a plain copy of the same bytes (`clone`), the yardstick for what one read and one write can cost. Median of
CUDA-event timings. Prints a table, writes JSON.

    python bench/norm_rate.py --out bench/results/norm_rate.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from magi_shape import time_it  # noqa: E402

TOKENS, D, HQ, HKV, HD, N_CHUNKS = 48_600, 3072, 24, 8, 128, 4


@torch.no_grad()
def measure(device: str = "cuda", tokens: int = TOKENS, iters: int = 20) -> dict:
    dt = torch.bfloat16
    x = torch.randn(tokens, D, device=device, dtype=dt)
    y = torch.randn(tokens, D, device=device, dtype=dt)
    q = torch.randn(tokens, HQ, HD, device=device, dtype=dt)
    k = torch.randn(tokens, HKV, HD, device=device, dtype=dt)
    w, b = torch.ones(D, device=device, dtype=dt), torch.zeros(D, device=device, dtype=dt)
    wh, bh = torch.ones(HD, device=device, dtype=dt), torch.zeros(HD, device=device, dtype=dt)
    gate = torch.rand(N_CHUNKS, 1, D, device=device, dtype=dt)  # one gate per chunk, broadcast over its tokens
    xc = x.view(N_CHUNKS, -1, D)
    ops = {  # name -> (call, bytes read + written)
        "copy, width 3072": (lambda: x.clone(), 2 * x.nbytes),
        "LayerNorm, width 3072": (lambda: F.layer_norm(x, (D,), w, b, 1e-6), 2 * x.nbytes),
        "LayerNorm per head, q (24 x 128)": (lambda: F.layer_norm(q, (HD,), wh, bh, 1e-6), 2 * q.nbytes),
        "LayerNorm per head, k (8 x 128)": (lambda: F.layer_norm(k, (HD,), wh, bh, 1e-6), 2 * k.nbytes),
        "gate multiply (per-chunk broadcast)": (lambda: xc * gate, 2 * x.nbytes),
        "residual add": (lambda: x + y, 3 * x.nbytes),
    }
    out = {}
    for name, (fn, nbytes) in ops.items():
        t = statistics.median(time_it(fn, device, 3, iters))
        out[name] = {"ms": t * 1e3, "tb_per_s": nbytes / t / 1e12}
    copy = out["copy, width 3072"]["tb_per_s"]
    for r in out.values():
        r["vs_copy"] = r["tb_per_s"] / copy
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results/norm_rate.json")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("norm_rate: needs a CUDA GPU")
    rows = measure()
    res = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "tokens": TOKENS, "ops": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2))
    print(f"{res['gpu']}, torch {res['torch']}, {TOKENS} tokens, bf16")
    print(f"{'op':40s} {'ms':>8s} {'TB/s':>7s} {'vs copy':>8s}")
    for name, r in rows.items():
        print(f"{name:40s} {r['ms']:8.3f} {r['tb_per_s']:7.2f} {r['vs_copy']:8.2f}")


if __name__ == "__main__":
    main()
