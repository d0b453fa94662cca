"""Issue 7, benchmark 1: speed vs quality of every cache policy on the default model, on the CPU.

At 64 steps (the published setting), over held-out single-object world captions (seed 424242) and sampling
seed 0, `flowcache_core.eval.sweep.run_sweep` runs none / teacache / flowcache-displacement (the published rule) /
flowcache-velocity / flowcache-extrapolate at every threshold, interleaved per prompt (all settings back to back, so machine load
touches all alike). Quoted per setting: wall time and wall speedup vs none (plus process-CPU-time speedup,
less sensitive to other load), chunk-forwards computed / total, ideal speedup and realized / ideal,
PSNR / SSIM / LPIPS vs none, and the judge's colour / direction accuracy on the videos of that setting
(none's row is the reference accuracy). For scale, the PSNR between two seeds of none. The machine (CPU
model, threads, load average before and after) goes in the JSON. Prints a table last.

    python bench/speed_quality.py                    # 20 prompts, about an hour on an idle 2-core CPU
    python bench/speed_quality.py --prompts 3 --thresholds 0.05,0.1
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench.judge import judge_against_caption  # noqa: E402
from flowcache_core.models.magi1.bundle import load_bundle  # noqa: E402
from flowcache_core.errors import FlowcacheError  # noqa: E402
from flowcache_core.eval.sweep import (  # noqa: E402
    DEFAULT_PROMPT_SEED, DEFAULT_THRESHOLDS, SweepConfig, SettingSummary, default_prompts, pareto_plot,
    parse_float_list, parse_int_list, recommend, run_sweep, write_json,
)  # fmt: skip

RESULTS = Path(__file__).resolve().parent / "results"
GROUPS = ("teacache", "flowcache-displacement", "flowcache-velocity", "flowcache-extrapolate")
OURS = ("flowcache-velocity", "flowcache-extrapolate")  # the reuse rules this project adds to the published one


def machine_info() -> dict:
    """CPU model (from /proc/cpuinfo), logical CPUs, torch threads, versions, load average now."""
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    return dict(cpu_model=model, logical_cpus=os.cpu_count(), torch_threads=torch.get_num_threads(),
                torch=torch.__version__, python=platform.python_version(), loadavg_1_5_15=load)


def judge_summary(judged: list[dict]) -> dict[str, dict]:
    """{setting: {n, colour, direction}} from rows {setting, colour_ok, direction_ok}."""
    out: dict[str, dict] = {}
    for setting in dict.fromkeys(r["setting"] for r in judged):
        rs = [r for r in judged if r["setting"] == setting]
        out[setting] = dict(n=len(rs), colour=float(np.mean([r["colour_ok"] for r in rs])),
                            direction=float(np.mean([r["direction_ok"] for r in rs])))
    return out


def best_per_group(summaries: list[SettingSummary], min_psnr: float, min_ssim: float) -> dict[str, dict | None]:
    """Per group (teacache, each flowcache reuse mode): the fastest setting above the floor."""
    out = {}
    for g in GROUPS:
        ss = [s for s in summaries if s.setting.split("@")[0] == g]
        if not ss:
            continue
        r = recommend(ss, min_psnr, min_ssim)
        out[g] = None if r is None else dict(setting=r.setting, speedup=r.speedup, cpu_speedup=r.cpu_speedup, speedup_median=r.speedup_median,
                                             ideal_speedup=r.ideal_speedup, realized_over_ideal=r.realized_over_ideal,
                                             psnr=r.psnr_mean, ssim=r.ssim_mean, lpips=r.lpips_mean)
    return out


def goals(best: dict[str, dict | None]) -> dict:
    """Issue 7 goals 1 and 2 from the best setting per group (None where nothing clears the floor)."""
    d, t = best.get("flowcache-displacement"), best.get("teacache")
    ours = [best[g] for g in OURS if best.get(g) is not None]
    v = max(ours, key=lambda x: x["speedup"]) if ours else None
    fc = ours + ([d] if d is not None else [])
    top = max(fc, key=lambda x: x["speedup"]) if fc else None
    others = [x for x in (d, t) if x is not None]
    return {
        "goal1_flowcache_2.5x_above_floor": None if top is None else top["speedup"] >= 2.5,
        "goal1_best_flowcache": top,
        "goal1_ours_faster_than_displacement_and_teacache_at_floor":
            None if v is None else all(v["speedup"] > x["speedup"] for x in others),
        "goal2_realized_over_ideal_ge_0.95": None if top is None else top["realized_over_ideal"] >= 0.95,
    }  # fmt: skip


def _fmt(v, digits: int) -> str:
    if v is None:
        return "-"
    return "inf" if isinstance(v, float) and math.isinf(v) else f"{v:.{digits}f}"


def render(summaries: list[SettingSummary], acc: dict[str, dict], title: str) -> Table:
    table = Table(title=title)
    for c in ("setting", "mean s", "speedup", "median", "cpu speedup", "computed/total", "ideal", "real/ideal", "PSNR", "SSIM",
              "LPIPS", "colour acc", "dir acc"):  # fmt: skip
        table.add_column(c, justify="left" if c == "setting" else "right", no_wrap=c == "setting")
    for s in summaries:
        a = acc.get(s.setting, {})
        table.add_row(s.setting, f"{s.mean_seconds:.2f}", f"{s.speedup:.2f}x", f"{s.speedup_median:.2f}x", f"{s.cpu_speedup:.2f}x",
                      f"{s.computed_chunk_forwards}/{s.chunk_forwards}", f"{s.ideal_speedup:.2f}x",
                      f"{s.realized_over_ideal:.2f}", _fmt(s.psnr_mean, 2), _fmt(s.ssim_mean, 3), _fmt(s.lpips_mean, 3),
                      _fmt(a.get("colour"), 2), _fmt(a.get("direction"), 2))  # fmt: skip
    return table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=20, help="held-out captions (seed %d)" % DEFAULT_PROMPT_SEED)
    ap.add_argument("--num-steps", type=int, default=64, help="64 = the published setting")
    ap.add_argument("--thresholds", default=",".join(f"{t:g}" for t in DEFAULT_THRESHOLDS))
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--warmup-steps", type=int, default=None, help="default: the model's cache_defaults")
    ap.add_argument("--checkpoint-dir", default=None)
    ap.add_argument("--min-psnr", type=float, default=25.0)
    ap.add_argument("--min-ssim", type=float, default=0.75)
    ap.add_argument("--no-lpips", action="store_true")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: torch's); 1 is steadier on a machine others load")
    ap.add_argument("--out", default=str(RESULTS / "speed_quality_cpu.json"))
    a = ap.parse_args(argv)
    err = Console(stderr=True)
    if a.threads is not None:
        torch.set_num_threads(max(1, a.threads))
    try:
        out = Path(a.out)
        if not out.parent.is_dir():
            raise FlowcacheError(f"output folder {str(out.parent)!r} does not exist")
        cfg = SweepConfig(default_prompts(a.prompts), parse_int_list(a.seeds), parse_float_list(a.thresholds),
                          warmup_steps=a.warmup_steps, num_steps=a.num_steps, checkpoint_dir=a.checkpoint_dir,
                          lpips=not a.no_lpips, min_psnr=a.min_psnr, min_ssim=a.min_ssim)
        cfg.validate()
        bundle = load_bundle(a.checkpoint_dir)
    except FlowcacheError as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        return 2

    machine = machine_info()
    judged: list[dict] = []

    def on_video(setting: str, prompt: str, seed: int, frames) -> None:
        r = judge_against_caption(prompt, frames)
        judged.append(dict(setting=setting, prompt=prompt, seed=seed, colour_ok=bool(r["colour_ok"]),
                           direction_ok=bool(r["direction_ok"]), colour=r["judgement"].colour,
                           direction=r["judgement"].direction))

    def on_progress(p) -> None:
        err.print(f"[{p.done}/{p.total}] {p.setting} seed {p.seed} {p.prompt!r}: {p.seconds:.1f}s", highlight=False, markup=False)

    t0 = time.time()
    result = run_sweep(cfg, bundle=bundle, on_progress=on_progress, on_video=on_video)
    machine["loadavg_1_5_15_end"] = list(os.getloadavg())
    machine["total_wall_s"] = time.time() - t0
    acc = judge_summary(judged)
    best = best_per_group(result.summaries, a.min_psnr, a.min_ssim)
    report = result.to_dict()
    report.update(benchmark="speed_quality (issue 7, benchmark 1)", machine=machine, judge_accuracy=acc,
                  judge_runs=judged, best_per_group=best, goals=goals(best),
                  note="wall-time speedups were measured on a shared machine; see machine.loadavg_*; cpu_speedup "
                       "uses process CPU time")  # fmt: skip
    write_json(report, out)
    plot = pareto_plot(result.summaries, out.with_suffix(".png"),
                       title=f"default model, {result.model['num_steps']} steps, {len(cfg.prompts)} prompts, "
                             f"{machine['cpu_model']} x{machine['torch_threads']} threads")  # fmt: skip
    con = Console(width=max(Console().width, 170))
    sc = result.seed_scale or {}
    con.print(f"machine: {machine['cpu_model']}, {machine['logical_cpus']} CPUs, {machine['torch_threads']} torch "
              f"threads, load avg {machine['loadavg_1_5_15']} -> {machine['loadavg_1_5_15_end']}", highlight=False, markup=False)
    con.print(f"scale: two seeds of none: PSNR {_fmt(sc.get('psnr_mean'), 2)} dB, SSIM {_fmt(sc.get('ssim_mean'), 3)},"
              f" LPIPS {_fmt(sc.get('lpips_mean'), 3)}; LPIPS {result.lpips_status}", highlight=False, soft_wrap=True)
    con.print(f"recommended (PSNR >= {a.min_psnr:g}, SSIM >= {a.min_ssim:g}): {result.recommendation}; "
              f"best per group: " + ", ".join(f"{g}: {b['setting'] if b else '-'}" for g, b in best.items()),
              highlight=False, soft_wrap=True)
    con.print(f"wrote {out}; {plot}", highlight=False, soft_wrap=True)
    con.print(render(result.summaries, acc, f"speed vs quality, default model, {result.model['num_steps']} steps, "
                                            f"{len(cfg.prompts)} prompts x {len(cfg.seeds)} seeds"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
