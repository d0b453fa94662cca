"""The FlowCache paper's MAGI-1 setting timed end to end on one GPU (issue 20, goal 4).

MAGI-1 4.5B-distill shape, random weights (bf16 DiT, the ViT VAE of the published size, a small random T5 of the
same interface), 720x720, 240 frames (10 chunks of 24), 64 steps, one guidance pass (distill), text to video:
1. `uncached`: every chunk computed at every forward;
2. `replay`: FlowCache's skip pattern replayed. The pattern is a trained model's, not random weights': it is
   recorded (`record`, on the CPU) on the shipped default model at 64 steps with its README-recommended 64-step
   setting (flowcache @0.02, warmup 8, extrapolate), 10 chunks, and applied by (chunk index, step): both runs have
   the same window (4 chunks in flight, 16 steps per stage), so each chunk of the big run takes the decisions of the
   default model's chunk at the same position. A reused chunk gets FlowCache's own reused update (extrapolate).
Per run: wall time (model built and warmed up before; the VAE decode of every chunk and the text encoder inside),
forwards, chunk-forwards computed, realized speedup (wall) vs ideal (chunk-forwards), peak GPU memory, per-forward
times. JSON is rewritten after every run. The uncached run takes about as long as one device call may (600 s): run
it detached (`setsid`) and collect the JSON in the next call (docs/PERFORMANCE.md says how it was run).

    python bench/paper_setting.py record --out bench/results/paper_setting_pattern.json      # CPU, default model
    python bench/paper_setting.py run --pattern bench/results/paper_setting_pattern.json --out /tmp/paper.json
    python bench/paper_setting.py run --tiny --pattern bench/results/paper_setting_pattern.json --out /tmp/t.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the random T5 of the release fixture
sys.path.insert(0, str(Path(__file__).resolve().parent))
from flowcache_core.api import generate  # noqa: E402
from flowcache_core.cache.flowcache import FlowCacheConfig  # noqa: E402
from flowcache_core.cache.policy import CachePolicy, ChunkDecision, ChunkStep  # noqa: E402
from flowcache_core.cache.settings import CacheConfig  # noqa: E402
from flowcache_core.engine.events import ForwardEvent  # noqa: E402
from flowcache_core.engine.family import Bundle  # noqa: E402

CHUNKS, STEPS, PROMPT = 10, 64, "a red ball rolls across the green grass under a blue sky"
RECOMMENDED_64 = dict(rel_l1_thresh=0.02, warmup_steps=8, reuse="extrapolate")  # README, "64 steps"


class ReplayPolicy(CachePolicy):
    """Computes or reuses each (chunk, step) as a recorded run did; reused updates by FlowCache's rule."""

    name = "replay"
    Config = FlowCacheConfig
    feature = None  # decisions come from the table, not from features

    def __init__(self, compute: dict[tuple[int, int], bool], config: FlowCacheConfig) -> None:
        super().__init__(config)
        self.compute = compute

    def decide(self, steps: list[ChunkStep]) -> list[ChunkDecision]:
        out = []
        for s in steps:
            must = s.step == 0 or s.is_last_step  # never reused, as FlowCache
            c = must or self.compute.get((s.chunk_id, s.step), True)
            out.append(ChunkDecision(s.chunk_id, c, "entered" if s.step == 0 else "threshold" if c else "below_threshold"))
        return out


def record(out: Path) -> None:
    """FlowCache's decisions on the shipped default model, 64 steps, 10 chunks, the recommended 64-step setting."""
    from flowcache_core.models.magi1.bundle import load_bundle

    bundle = load_bundle()
    rt = bundle.config.runtime
    frames = CHUNKS * rt.chunk_width * bundle.codec.temporal_downsample
    decisions: dict[str, bool] = {}

    def on_event(e):
        if isinstance(e, ForwardEvent):
            for c in e.chunks:
                decisions[f"{c.id}:{c.step}"] = c.decision == "compute"

    res = generate(PROMPT, bundle=bundle, seed=0, num_frames=frames, num_steps=STEPS,
                   cache=CacheConfig("flowcache", **RECOMMENDED_64), on_event=on_event)
    r = res.record
    computed, reused = sum(r.computed.values()), sum(r.reused.values())
    d = dict(source="shipped default model (flowcache_core/default_model)", prompt=PROMPT, seed=0, chunks=CHUNKS,
             num_steps=STEPS, window_size=rt.window_size, frames=frames, setting=RECOMMENDED_64,
             forwards=r.forwards, chunk_forwards_computed=computed, chunk_forwards_reused=reused,
             ideal_speedup=(computed + reused) / computed, compute=decisions)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(d, indent=1))
    print(f"recorded {len(decisions)} decisions: {computed} computed, {reused} reused "
          f"({d['ideal_speedup']:.2f}x ideal) over {r.forwards} forwards -> {out}")


def build_bundle(tiny: bool, device: str, work: Path) -> Bundle:
    """The 4.5B-distill DiT, the published-size ViT VAE and a small T5, random, built in memory (no release on disk)."""
    from fixtures.random_release import write_random_t5
    from flowcache_core.models.magi1.dit import build_model
    from flowcache_core.models.magi1.t5 import T5TextEncoder
    from flowcache_core.models.magi1.vae import MagiVAECodec, ViTVAE
    from magi_shape import end_to_end_parts

    cfg, vae_cfg = end_to_end_parts(tiny)
    cuda = device.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    model = build_model(cfg.model, device=device, dtype=dtype, seed=0)
    with torch.no_grad():  # the init zeroes the output layer; a random model should move the latents
        model.final_linear.linear.weight.normal_(0, 0.01)
    torch.manual_seed(0)
    codec = MagiVAECodec(vae=ViTVAE(vae_cfg), device=device, dtype=dtype, scale_factor=cfg.runtime.scale_factor,
                         tile_frames=max(4, cfg.runtime.fps // 2 // 4 * 4))
    t5_dir = work / "t5"
    if not write_random_t5(t5_dir, cfg.model.caption_channels, layers=2, heads=8, d_kv=64, d_ff=1024):
        raise SystemExit("transformers/tokenizers are needed for the T5 part")
    text = T5TextEncoder(t5_dir, device="cpu", max_length=cfg.model.caption_max_length)
    return Bundle("magi1", cfg, model.eval(), codec, text, work)


def timed_run(bundle: Bundle, size: int, frames: int, policy: CachePolicy | None, cuda: bool) -> dict:
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    fwd: list[float] = []
    last = [0.0]

    def on_event(e):
        if isinstance(e, ForwardEvent):
            sync()
            now = time.perf_counter()
            fwd.append(now - last[0])  # since the previous forward: a chunk's decode lands in the next forward's time
            last[0] = now

    sync()
    t = last[0] = time.perf_counter()
    res = generate(PROMPT, bundle=bundle, seed=0, num_frames=frames, num_steps=STEPS, height=size, width=size,
                   cache=CacheConfig("none"), policy=policy, on_event=on_event, keep_frames=False)
    sync()
    wall = time.perf_counter() - t
    r = res.record
    computed, reused = sum(r.computed.values()), sum(r.reused.values())
    return dict(wall_s=wall, forwards=r.forwards, chunk_forwards_computed=computed, chunk_forwards_reused=reused,
                tokens_forwarded=r.tokens_forwarded, peak_gpu_gib=r.peak_memory_bytes / 2**30,
                forward_s_median=statistics.median(fwd), forward_s_max=max(fwd), forward_s=[round(x, 4) for x in fwd])


def run(pattern_path: Path, out: Path, tiny: bool, device: str, runs: list[str]) -> None:
    pattern = json.loads(pattern_path.read_text())
    if pattern["chunks"] != CHUNKS or pattern["num_steps"] != STEPS:
        raise SystemExit(f"{pattern_path}: recorded for {pattern['chunks']} chunks / {pattern['num_steps']} steps, "
                         f"this setting is {CHUNKS} / {STEPS}")
    compute = {tuple(int(x) for x in k.split(":")): bool(v) for k, v in pattern["compute"].items()}
    cuda = device.startswith("cuda")
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        bundle = build_bundle(tiny, device, Path(tmp))
        rt = bundle.config.runtime
        size = 64 if tiny else 720
        frames = CHUNKS * rt.chunk_width * bundle.codec.temporal_downsample
        if rt.window_size != pattern["window_size"]:
            raise SystemExit(f"window {rt.window_size} differs from the pattern's {pattern['window_size']}")
        build_s = time.perf_counter() - t
        result = dict(gpu=torch.cuda.get_device_name(0) if cuda else "cpu", torch=torch.__version__,
                      shape="tiny" if tiny else "MAGI-1 4.5B-distill", size=size, frames=frames, chunks=CHUNKS,
                      num_steps=STEPS, cfg_number=rt.cfg_number, prompt=PROMPT, build_s=build_s,
                      pattern=dict(path=str(pattern_path), source=pattern["source"], setting=pattern["setting"],
                                   ideal_speedup=pattern["ideal_speedup"]), runs={})
        # warm-up (cuDNN plans, allocator): one chunk at 2 steps, not timed
        generate(PROMPT, bundle=bundle, seed=0, num_frames=rt.chunk_width * bundle.codec.temporal_downsample,
                 num_steps=4, height=size, width=size, keep_frames=False)
        for name in runs:
            policy = None if name == "uncached" else ReplayPolicy(compute, FlowCacheConfig(**pattern["setting"]))
            r = timed_run(bundle, size, frames, policy, cuda)
            result["runs"][name] = r
            if "uncached" in result["runs"] and name != "uncached":
                u = result["runs"]["uncached"]
                r["realized_speedup"] = u["wall_s"] / r["wall_s"]
                r["ideal_speedup"] = (u["chunk_forwards_computed"]) / r["chunk_forwards_computed"]
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp_out = out.with_suffix(".tmp")
            tmp_out.write_text(json.dumps(result, indent=1))
            tmp_out.replace(out)
            print(f"{name:9s} {r['wall_s']:8.1f} s  forwards {r['forwards']}  chunk-forwards {r['chunk_forwards_computed']}"
                  f" computed / {r['chunk_forwards_reused']} reused  peak {r['peak_gpu_gib']:.1f} GiB"
                  + (f"  speedup {r['realized_speedup']:.2f}x (ideal {r['ideal_speedup']:.2f}x)" if "realized_speedup" in r else ""),
                  flush=True)
    print(f"wrote {out} ({result['gpu']})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["record", "run"])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--pattern", type=Path, default=Path("bench/results/paper_setting_pattern.json"))
    ap.add_argument("--runs", default="uncached,replay", help="comma-separated, in order: uncached, replay")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="a tiny model on the CPU (smoke test of this script)")
    a = ap.parse_args()
    if a.what == "record":
        record(a.out)
    else:
        run(a.pattern, a.out, a.tiny, "cpu" if a.tiny else a.device, a.runs.split(","))


if __name__ == "__main__":
    main()
