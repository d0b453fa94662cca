"""Which attention kernel wins at which shape: the self-attention calls our families make, timed per backend.

Each shape is one attention call as the engine makes it (token-major q (1, Lq, Hq, hd), k/v (1, Lk, Hkv, hd), bf16,
no mask): a MAGI-1 window chunk at 720x720 reading 2..5 chunks of keys (4.5B: 24 query / 8 KV heads; 24B: 48 / 8),
its cross-attention to 120 caption tokens, a Wan2.1 / Self-Forcing block of 3 frames at 480x832 reading a 12- or
21-frame window (1.3B: 12 heads; 14B: 40), and a SkyReels-V2 diffusion-forcing block of 5 frames at 544x960 reading
up to 25 frames. Backends: what `--attn-backend sdpa` runs (PyTorch SDPA, cuDNN first), PyTorch's own flash and
memory-efficient SDPA kernels, and `--attn-backend flash` (flash-attn 4 `flash_attn.cute`, or 2) where it imports.
Time: median of CUDA-event timings after warm-up (flash-attn 4 compiles on its first call). FLOPs: 4·Lq·Lk·Hq·hd.

    python bench/attn_backends.py --out bench/results/attn_backends.json
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
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from flowcache_core.models.attention import _flash_fn, attend, available_backends  # noqa: E402
from magi_shape import time_it  # noqa: E402

MAGI_CHUNK = 6 * 45 * 45  # 12,150 tokens: 6 latent frames of 45x45 patches (720x720)
WAN_FRAME = 30 * 52  # 1,560 tokens: one latent frame at 480x832
DF_FRAME = 34 * 60  # 2,040 tokens: one latent frame at 544x960

# name -> (Lq, Lk, Hq, Hkv, hd)
SHAPES = {
    "magi 4.5B chunk, 2 chunks of keys": (MAGI_CHUNK, 2 * MAGI_CHUNK, 24, 8, 128),
    "magi 4.5B chunk, 5 chunks of keys": (MAGI_CHUNK, 5 * MAGI_CHUNK, 24, 8, 128),
    "magi 24B chunk, 5 chunks of keys": (MAGI_CHUNK, 5 * MAGI_CHUNK, 48, 8, 128),
    "magi 4.5B cross-attn, 120 caption tokens": (4 * MAGI_CHUNK, 120, 24, 8, 128),
    "wan 1.3B block of 3, 12-frame window": (3 * WAN_FRAME, 12 * WAN_FRAME, 12, 12, 128),
    "wan 1.3B block of 3, 21-frame window": (3 * WAN_FRAME, 21 * WAN_FRAME, 12, 12, 128),
    "wan 14B block of 3, 21-frame window": (3 * WAN_FRAME, 21 * WAN_FRAME, 40, 40, 128),
    "skyreels-df 1.3B block of 5, 25 frames": (5 * DF_FRAME, 25 * DF_FRAME, 12, 12, 128),
}


def _sdpa_only(kernel):
    """Raw PyTorch SDPA restricted to one kernel (GQA kept unexpanded)."""
    from torch.nn.attention import sdpa_kernel

    def run(q, k, v):
        with sdpa_kernel([kernel]):
            return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                  enable_gqa=q.shape[2] != k.shape[2]).transpose(1, 2)
    return run


def backends() -> dict[str, callable]:
    from torch.nn.attention import SDPBackend

    out = {"sdpa (ours: cuDNN first)": lambda q, k, v: attend(q, k, v, backend="sdpa"),
           "sdpa flash kernel": _sdpa_only(SDPBackend.FLASH_ATTENTION),
           "sdpa efficient kernel": _sdpa_only(SDPBackend.EFFICIENT_ATTENTION)}
    if "flash" in available_backends():
        out[f"flash ({_flash_fn()[0]})"] = lambda q, k, v: attend(q, k, v, backend="flash")
    return out


@torch.no_grad()
def measure(shapes: dict, device: str = "cuda", iters: int = 10) -> dict:
    rows = {}
    g = torch.Generator(device=device).manual_seed(0)
    for name, (lq, lk, hq, hkv, hd) in shapes.items():
        q = torch.randn(1, lq, hq, hd, device=device, dtype=torch.bfloat16, generator=g)
        k = torch.randn(1, lk, hkv, hd, device=device, dtype=torch.bfloat16, generator=g)
        v = torch.randn(1, lk, hkv, hd, device=device, dtype=torch.bfloat16, generator=g)
        flops = 4 * lq * lk * hq * hd
        ref = None
        row = {"shape": {"Lq": lq, "Lk": lk, "Hq": hq, "Hkv": hkv, "hd": hd}, "flops": flops, "by_backend": {}}
        for bname, fn in backends().items():
            try:
                out = fn(q, k, v)
                ref = out.float() if ref is None else ref
                err = ((out.float() - ref).norm() / ref.norm()).item()  # against the first backend's output
                t = statistics.median(time_it(lambda: fn(q, k, v), device, 3, iters))
                row["by_backend"][bname] = {"ms": t * 1e3, "tflops": flops / t / 1e12, "rel_diff_vs_first": err}
            except Exception as e:  # a kernel that refuses the shape is reported, not fatal
                row["by_backend"][bname] = {"error": str(e).splitlines()[0][:160]}
        timed = {b: r["ms"] for b, r in row["by_backend"].items() if "ms" in r}
        row["winner"] = min(timed, key=timed.get) if timed else None
        rows[name] = row
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results/attn_backends.json")
    ap.add_argument("--iters", type=int, default=10)
    a = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("attn_backends: needs a CUDA GPU (the backends compared are GPU kernels)")
    rows = measure(SHAPES, iters=a.iters)
    res = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "backends": list(backends()),
           "shapes": rows}
    try:
        from importlib.metadata import version

        res["flash_attn_4"] = version("flash-attn-4")
    except Exception:
        res["flash_attn_4"] = None
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2))
    names = res["backends"]
    print(f"{res['gpu']}, torch {res['torch']}, flash-attn-4 {res['flash_attn_4']}; TFLOP/s per backend")
    print(f"{'shape':44s} " + " ".join(f"{b[:22]:>22s}" for b in names) + "  winner")
    for name, row in rows.items():
        cells = []
        for b in names:
            r = row["by_backend"].get(b, {})
            cells.append(f"{r['tflops']:22.0f}" if "tflops" in r else f"{'refused':>22s}")
        print(f"{name:44s} " + " ".join(cells) + f"  {row['winner']}")


if __name__ == "__main__":
    main()
