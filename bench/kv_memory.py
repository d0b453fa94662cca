"""Issue 19, part 2: quality, memory and time of the KV memory manager on long videos from the default model.

The default model was trained on 32-frame videos (8 chunks of 4 latent frames, docs/TRAINING.md). Here it makes
videos three times that long (96 frames, 24 chunks) with every chunk attending to every earlier one
(`noise2clean_kvrange` []: the unbounded cache then grows with the video, as in the published FlowCache setting;
`--kv-range model` keeps the model's own range, which bounds the store by itself). Each setting runs the same
prompt and seed as the reference, the unbounded cache in the model's dtype, and is compared with it: PSNR, SSIM,
LPIPS over the video, PSNR per chunk (the drift curve: how the error grows along the video), the KV store's peak
(CUDA max allocated on a GPU) and the sampling time.

A setting is `[kv_policy][:granularity][+int8][@budget]`: `flowcache@8MiB`, `sink_window+int8@3MiB`, `int8` (int8
storage, no budget), `flowcache@6chunks` (the published B_total spelling), `flowcache:frame@8MiB` (the compressor's
query granularity: chunk, frame or token). Writes JSON and a PNG (matplotlib, the `plot` extra)
to bench/results/ and prints a table.

    python bench/kv_memory.py                 # 6 runs, about 5 minutes on one thread of a 2-core CPU
    python bench/kv_memory.py --num-steps 32  # the model's own step count: about twice as long
    python bench/kv_memory.py --tiny          # smoke run (seconds): 24 frames, 4 steps, chunk budgets
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from flowcache_core.api import generate  # noqa: E402
from flowcache_core.cache.kv_memory import fmt_bytes, parse_bytes  # noqa: E402
from flowcache_core.cache.registry import KV_POLICIES  # noqa: E402
from flowcache_core.cache.settings import CacheConfig  # noqa: E402
from flowcache_core.engine.events import ForwardEvent  # noqa: E402
from flowcache_core.errors import FlowcacheError  # noqa: E402
from flowcache_core.eval.metrics import LpipsUnavailable, load_lpips, lpips_per_frame, psnr, psnr_per_frame, ssim_per_frame  # noqa: E402
from flowcache_core.eval.sweep import write_json  # noqa: E402
from flowcache_core.models.magi1.bundle import load_bundle  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TRAINING_FRAMES = 32  # docs/TRAINING.md: 32 frames, 12 fps
DEFAULT_SETTINGS = ("flowcache@8MiB", "sink_window@8MiB", "flowcache+int8@8MiB", "flowcache+int8@3MiB",
                    "sink_window+int8@3MiB")
TINY_SETTINGS = ("flowcache@5chunks", "sink_window+int8@5chunks")
PROMPT = "a red circle moves right"  # --prompt to change
_SETTING = re.compile(r"(?P<policy>[a-z_]+?)?(?::(?P<gran>chunk|frame|token))?(?P<int8>\+?int8)?(?:@(?P<budget>[^@]+))?")


@dataclass(frozen=True)
class Setting:
    name: str
    kv_policy: str | None  # None: no budget
    int8: bool
    budget: str | None  # "8MiB" (bytes) or "6chunks"
    granularity: str | None = None  # flowcache's query granularity ("flowcache:frame@8MiB"); None: its default

    def cache(self) -> CacheConfig:
        opts: dict = {"kv_quant": "int8"} if self.int8 else {}
        if self.granularity is not None:
            opts["query_granularity"] = self.granularity
        if self.budget is not None:
            opts["kv_policy"] = self.kv_policy
            if self.budget.endswith("chunks"):
                opts["total_cache_chunk_nums"] = int(self.budget[: -len("chunks")])
            else:
                opts["kv_budget"] = self.budget
        return CacheConfig("none", **opts)


def parse_setting(text: str) -> Setting:
    m = _SETTING.fullmatch(text.strip())
    policy, int8, budget = (m.group("policy"), m.group("int8"), m.group("budget")) if m else (None, None, None)
    ok = m is not None and (policy or int8) and (policy is None) == (budget is None)
    ok = ok and (policy is None or policy in KV_POLICIES) and (not int8 or policy is None or int8.startswith("+"))
    if budget is not None and ok:
        if budget.endswith("chunks"):
            ok = budget[: -len("chunks")].isdigit()
        else:
            parse_bytes(f"setting {text!r}: budget", budget)
    if not ok:
        raise FlowcacheError(f"setting {text!r} must be [kv_policy][+int8][@budget] with kv_policy one of "
                             f"{', '.join(KV_POLICIES)} (with a budget: 8MiB, 6chunks), e.g. sink_window+int8@3MiB or int8")
    gran = m.group("gran")
    if gran is not None and policy != "flowcache":
        raise FlowcacheError(f"setting {text!r}: a query granularity (:chunk, :frame, :token) needs kv_policy flowcache")
    return Setting(text.strip(), policy, bool(int8), budget, gran)


def machine_info() -> dict:
    model = platform.processor() or "unknown"
    try:
        model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                      if ln.startswith("model name")), model)
    except OSError:
        pass
    return dict(cpu_model=model, logical_cpus=os.cpu_count(), torch_threads=torch.get_num_threads(),
                torch=torch.__version__, python=platform.python_version(), loadavg_1_5_15=list(os.getloadavg()))


def run(bundle, setting: Setting | None, *, frames: int, steps: int, seed: int, device: str, prompt: str = PROMPT) -> dict:
    """One video: its frames and what the run measured (the budget in tokens and bytes, from its events)."""
    events: list[ForwardEvent] = []
    cache = setting.cache() if setting else CacheConfig("none")
    r = generate(prompt, bundle=bundle, cache=cache, num_frames=frames, num_steps=steps, seed=seed, device=device,
                 on_event=lambda e: events.append(e) if isinstance(e, ForwardEvent) else None)
    peak, what = r.record.peak_memory
    last = events[-1]
    return dict(frames=r.frames, setting=setting.name if setting else "unbounded", options=r.cache.options(),
                budget_tokens=last.kv_budget, budget_bytes=last.kv_budget_bytes, kv_peak_bytes=r.record.kv_peak_bytes,
                max_kv_tokens=max(r.record.kv_tokens), peak_memory_bytes=peak, peak_memory_what=what,
                compressions=r.record.compressions, seconds=r.record.seconds, forwards=r.record.forwards)


def compare(ref: np.ndarray, cand: np.ndarray, frames_per_chunk: int, lpips_model) -> dict:
    per_frame_mse = ((ref.astype(np.float64) - cand.astype(np.float64)) ** 2).mean(axis=(1, 2, 3))
    chunks = len(ref) // frames_per_chunk
    per_chunk = [float(10 * np.log10(255.0**2 / m)) if m > 0 else math.inf
                 for m in per_frame_mse[: chunks * frames_per_chunk].reshape(chunks, -1).mean(axis=1)]
    beyond = len(ref) > TRAINING_FRAMES
    out = dict(psnr=psnr(ref, cand), psnr_per_chunk=per_chunk, ssim=float(np.mean(ssim_per_frame(ref, cand))),
               psnr_first_training_length=psnr(ref[:TRAINING_FRAMES], cand[:TRAINING_FRAMES]),
               psnr_beyond_training_length=psnr(ref[TRAINING_FRAMES:], cand[TRAINING_FRAMES:]) if beyond else None)
    out["psnr_min_frame"] = float(np.min(psnr_per_frame(ref, cand)))
    out["lpips"] = None if lpips_model is None else float(np.mean(lpips_per_frame(lpips_model, ref, cand)))
    return out


def plot(report: dict, path: Path) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return 'plot skipped: matplotlib is not installed (pip install -e ".[plot]")'
    rows = report["settings"]
    finite = [p for r in rows for p in r["psnr_per_chunk"] if math.isfinite(p)]
    cap = (max(finite) if finite else 60.0) + 3.0  # where identical chunks (inf dB) are drawn
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4.8))
    for r in rows:
        ys = [p if math.isfinite(p) else cap for p in r["psnr_per_chunk"]]
        a.plot(range(len(ys)), ys, "o-", ms=3, label=r["setting"])
    if any(not math.isfinite(p) for r in rows for p in r["psnr_per_chunk"]):
        a.axhline(cap, color="grey", ls=":", lw=0.8)
        a.text(0, cap, " identical (inf dB)", fontsize=7, va="bottom")
    train_chunks = TRAINING_FRAMES // report["frames_per_chunk"]
    a.axvline(train_chunks - 0.5, color="grey", ls="--", lw=0.8)
    a.text(train_chunks - 0.4, a.get_ylim()[0], " training length", fontsize=7, va="bottom")
    a.set(xlabel="chunk (4 frames)", ylabel="PSNR vs unbounded cache (dB)", title="drift along the video")
    a.legend(fontsize=7)
    for r in rows:
        b.scatter(r["kv_peak_bytes"] / 2**20, r["psnr"] if math.isfinite(r["psnr"]) else cap)
        b.annotate(r["setting"], (r["kv_peak_bytes"] / 2**20, r["psnr"] if math.isfinite(r["psnr"]) else cap),
                   textcoords="offset points", xytext=(4, 4), fontsize=7)
    ref_mib = report["reference"]["kv_peak_bytes"] / 2**20
    b.axvline(ref_mib, color="grey", ls=":", lw=0.8)
    b.text(ref_mib, b.get_ylim()[0], " unbounded", fontsize=7, va="bottom", ha="right", rotation=90)
    b.set(xlabel="peak KV store (MiB)", ylabel="PSNR over the video (dB)", title="quality vs memory")
    fig.suptitle(report["title"], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"wrote {path}"


def table(report: dict) -> Table:
    t = Table(title=report["title"])
    for c in ("setting", "budget", "peak KV", "compr.", "time s", "PSNR", "PSNR >32f", "min frame", "SSIM", "LPIPS"):
        t.add_column(c, justify="left" if c == "setting" else "right", no_wrap=c == "setting")
    ref = report["reference"]
    t.add_row("unbounded (reference)", "-", fmt_bytes(ref["kv_peak_bytes"]), "0", f"{ref['seconds']:.1f}",
              "inf", "inf", "inf", "1.000", "0.000")
    f = lambda v, d: "-" if v is None else ("inf" if math.isinf(v) else f"{v:.{d}f}")  # noqa: E731
    for r in report["settings"]:
        budget = fmt_bytes(r["budget_bytes"]) if r["budget_bytes"] else (f"{r['budget_tokens']} tok" if r["budget_tokens"] else "-")
        t.add_row(r["setting"], budget, fmt_bytes(r["kv_peak_bytes"]), str(r["compressions"]), f"{r['seconds']:.1f}",
                  f(r["psnr"], 2), f(r["psnr_beyond_training_length"], 2), f(r["psnr_min_frame"], 2),
                  f(r["ssim"], 3), f(r["lpips"], 3))
    return t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--settings", default=None, help="comma-separated, e.g. flowcache@8MiB,sink_window+int8@3MiB,int8")
    ap.add_argument("--num-frames", type=int, default=None, help=f"default 96 (3x the training length {TRAINING_FRAMES})")
    ap.add_argument("--num-steps", type=int, default=None, help="default 16 (the model's config: 32)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prompt", default=PROMPT)
    ap.add_argument("--kv-range", choices=("all", "model"), default="all")
    ap.add_argument("--checkpoint-dir", default=None, help="default: the shipped default model")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier on a shared machine)")
    ap.add_argument("--no-lpips", action="store_true")
    ap.add_argument("--tiny", action="store_true", help="smoke run: 24 frames, 4 steps, budgets in chunks")
    ap.add_argument("--out", default=None, help="JSON path (the PNG goes beside it); default bench/results/kv_memory_cpu.json")
    a = ap.parse_args(argv)
    err = Console(stderr=True)
    torch.set_num_threads(max(1, a.threads))
    frames = a.num_frames or (24 if a.tiny else 3 * TRAINING_FRAMES)
    steps = a.num_steps or (4 if a.tiny else 16)
    out = Path(a.out) if a.out else RESULTS / ("kv_memory_tiny.json" if a.tiny else "kv_memory_cpu.json")
    try:
        if not out.parent.is_dir():
            raise FlowcacheError(f"output folder {str(out.parent)!r} does not exist")
        settings = [parse_setting(s) for s in (a.settings.split(",") if a.settings else
                                                (TINY_SETTINGS if a.tiny else DEFAULT_SETTINGS))]
        bundle = load_bundle(a.checkpoint_dir, device=a.device)
        if a.kv_range == "all":
            bundle.config = bundle.config.replace(noise2clean_kvrange=[])
        lp = None if a.no_lpips else load_lpips(device=a.device)
        if isinstance(lp, LpipsUnavailable):
            err.print(f"LPIPS skipped: {lp.reason}", highlight=False, markup=False)
            lp = None
    except FlowcacheError as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        return 2

    rt = bundle.config.runtime
    fpc = rt.chunk_width * rt.temporal_downsample_factor
    machine = machine_info()
    t0 = time.time()
    kw = dict(frames=frames, steps=steps, seed=a.seed, device=a.device, prompt=a.prompt)
    try:
        ref = run(bundle, None, **kw)
        err.print(f"unbounded: {ref['seconds']:.1f}s, peak KV {fmt_bytes(ref['kv_peak_bytes'])}", highlight=False)
        rows = []
        for s in settings:
            r = run(bundle, s, **kw)
            if r["budget_bytes"] is not None:  # the store checks it on every write; the bench says it too
                assert r["kv_peak_bytes"] <= r["budget_bytes"], (s.name, r["kv_peak_bytes"], r["budget_bytes"])
            assert r["max_kv_tokens"] <= (r["budget_tokens"] or math.inf), s.name
            r.update(compare(ref["frames"], r.pop("frames"), fpc, lp))
            rows.append(r)
            err.print(f"{s.name}: {r['seconds']:.1f}s, peak KV {fmt_bytes(r['kv_peak_bytes'])}, "
                      f"PSNR {r['psnr']:.2f} dB", highlight=False)
    except FlowcacheError as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        return 2
    ref.pop("frames")
    machine.update(loadavg_1_5_15_end=list(os.getloadavg()), total_wall_s=round(time.time() - t0, 1))
    report = dict(
        benchmark="kv_memory (issue 19, part 2)", prompt=a.prompt, seed=a.seed, num_frames=frames, num_steps=steps,
        training_frames=TRAINING_FRAMES, frames_per_chunk=fpc, kv_range=a.kv_range,
        noise2clean_kvrange=list(bundle.config.runtime.noise2clean_kvrange), device=a.device,
        model=str(bundle.path), lpips="AlexNet v0.1" if lp is not None else "skipped", machine=machine,
        title=(f"default model, {frames} frames ({frames / TRAINING_FRAMES:g}x training), {steps} steps, "
               f"kv range {a.kv_range}, {a.device}"),
        reference=ref, settings=rows,
        note="PSNR/SSIM/LPIPS are against the unbounded cache (same prompt, seed, steps). peak KV: the most K/V "
             "bytes the store held at once (every layer, the text pass's window copies included); time: sampling "
             "seconds on a shared machine (see machine.loadavg_*).")
    write_json(report, out)
    msg = plot(report, out.with_suffix(".png"))
    con = Console(width=max(Console().width, 150))
    con.print(table(report))
    con.print(f"wrote {out}; {msg}", highlight=False, soft_wrap=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
