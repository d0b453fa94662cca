"""MAGI-1 4.5B-distill end to end on a GPU from a release directory of random weights (issue 6, acceptance 2).

Step 1 (`--build`, its own process so its memory does not count): write ROOT in the exact release layout with
the 4.5B-distill config and random bf16 DiT weights (5 GB shards + index), the ViT VAE of the published size
(random, float32) and a small random T5 of the same interface (output width 4096).
Step 2: load ROOT through `load_bundle` (the `--checkpoint-dir` path) and generate a 720x720 t2v video of
`--chunks` chunks; report load time, generation time (VAE decode included), per-forward wall time
(CUDA-synchronised at every forward event), peak GPU memory and peak host memory (ru_maxrss of this process).
Prints a table, writes JSON.

    python bench/gpu_magi_e2e.py --root /tmp/magi_release --build
    python bench/gpu_magi_e2e.py --root /tmp/magi_release --out bench/results/gpu_magi_e2e.json
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the random-release fixture
sys.path.insert(0, str(Path(__file__).resolve().parent))
from magi_shape import end_to_end_parts  # noqa: E402
from fixtures.random_release import write_random_release, write_random_t5  # noqa: E402

VARIANT = "4.5B_distill"


def build(root: Path, tiny: bool) -> None:
    """tiny: a 2-layer DiT and a 1-layer VAE on the CPU, to smoke-test this script."""
    t = time.perf_counter()
    cfg, vae = end_to_end_parts(tiny)
    ok = write_random_release(root, {VARIANT: cfg}, vae, dtype=torch.float32 if tiny else torch.bfloat16,
                              device="cpu" if tiny else "cuda", max_shard_bytes=5 * 2**30, output_std=0.01,
                              t5=lambda d, dim: write_random_t5(d, dim, layers=2, heads=8, d_kv=64, d_ff=1024))
    if not ok:
        raise SystemExit("transformers/tokenizers are needed for the T5 part")
    size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    print(f"built {root} ({size / 2**30:.1f} GiB) in {time.perf_counter() - t:.0f} s")


def run(root: Path, chunks: int, size: int, out: str, device: str) -> None:
    from flowcache_core.api import generate
    from flowcache_core.models.magi1.bundle import load_bundle
    from flowcache_core.engine.events import ForwardEvent

    t = time.perf_counter()
    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    bundle = load_bundle(root, device=device, variant=VARIANT)
    sync()
    load_s = time.perf_counter() - t
    rt = bundle.config.runtime
    frames = chunks * rt.chunk_width * bundle.codec.temporal_downsample
    marks: list[tuple[bool, float]] = []  # (is a forward, when): chunk emissions (+ decode) end the others

    def on_event(e):
        sync()
        marks.append((isinstance(e, ForwardEvent), time.perf_counter()))

    t = time.perf_counter()
    res = generate("a red ball on the grass", bundle=bundle, seed=0, num_frames=frames, height=size, width=size,
                   on_event=on_event)
    sync()
    total_s = time.perf_counter() - t
    # A forward's time = from the previous mark (forward or chunk emitted + decoded) to its own event.
    fwd, prev = [], t
    for is_forward, when in marks:
        if is_forward:
            fwd.append(when - prev)
        prev = when
    r = res.record
    out_d = {
        "gpu": torch.cuda.get_device_name(0) if cuda else "cpu", "torch": torch.__version__, "variant": VARIANT,
        "size": size, "chunks": chunks, "frames": int(res.frames.shape[0]), "frame_shape": list(res.frames.shape[1:]),
        "num_steps": rt.num_steps, "forwards": r.forwards, "load_s": load_s, "generate_s": total_s,
        "forward_s_median": statistics.median(fwd[1:] if len(fwd) > 1 else fwd), "forward_s_max": max(fwd),
        "forward_s_first": fwd[0], "peak_gpu_gib": r.peak_memory_bytes / 2**30,
        "peak_gpu_reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if cuda else 0.0,
        "peak_host_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "tokens_forwarded": r.tokens_forwarded,
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(out_d, indent=2))
    for k, v in out_d.items():
        print(f"{k:24s} {v:.4g}" if isinstance(v, float) else f"{k:24s} {v}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="/tmp/magi_release")
    ap.add_argument("--build", action="store_true", help="write the random release and exit")
    ap.add_argument("--chunks", type=int, default=2)
    ap.add_argument("--size", type=int, default=720)
    ap.add_argument("--out", default="bench/results/gpu_magi_e2e.json")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="build a tiny release (CPU smoke test of this script)")
    a = ap.parse_args()
    if a.build:
        build(Path(a.root), a.tiny)
    else:
        run(Path(a.root), a.chunks, a.size, a.out, a.device)


if __name__ == "__main__":
    main()
