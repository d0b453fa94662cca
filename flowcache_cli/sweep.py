"""`flowcache sweep`: none / teacache / flowcache over a threshold grid on the same prompts and seeds, scored
against `none`; writes sweep.json and sweep_pareto.png and recommends the fastest setting above a floor.

Every cheap check runs first (lists, choices, prompt file, output folder) so a typo fails with one line before
the model loads. The work lives in `flowcache_core.eval.sweep`.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from flowcache_cli._common import fmt_number, OneLineUsageErrors, console, err_console, user_errors
from flowcache_core.api import load, resolve
from flowcache_core.cache.policy import REUSE_MODES
from flowcache_core.cache.registry import POLICIES
from flowcache_core.checks import MAX_NUM_STEPS, check_device, check_seed
from flowcache_core.errors import FlowcacheError
from flowcache_core.eval.sweep import (
    DEFAULT_THRESHOLDS, SweepConfig, SweepResult, check_output_dir, default_prompts, pareto_plot, parse_choices,
    parse_float_list, parse_int_list, read_prompt_file, recommend, run_sweep, write_json,
)  # fmt: skip


def render(result: SweepResult, min_psnr: float, min_ssim: float, min_psnr_each: float | None = None) -> Table:
    each = f", every run's PSNR >= {min_psnr_each:g} dB" if min_psnr_each is not None else ""
    table = Table(title=f"sweep vs none (floor: PSNR >= {min_psnr:g} dB, SSIM >= {min_ssim:g}{each})")
    cols = ["setting", "runs", "mean s", "speedup", "median", "cpu speedup", "computed/total", "ideal", "real/ideal", "PSNR dB",
            "min PSNR", "SSIM", "LPIPS"]  # fmt: skip
    for c in cols:
        table.add_column(c, justify="left" if c == "setting" else "right", no_wrap=c == "setting")
    rec = recommend(result.summaries, min_psnr, min_ssim, min_psnr_each)
    for s in result.summaries:
        style = "bold green" if rec is not None and s.setting == rec.setting else None
        table.add_row(s.setting, str(s.runs), f"{s.mean_seconds:.2f}", f"{s.speedup:.2f}x", f"{s.speedup_median:.2f}x", f"{s.cpu_speedup:.2f}x",
                      f"{s.computed_chunk_forwards}/{s.chunk_forwards}", f"{s.ideal_speedup:.2f}x",
                      f"{s.realized_over_ideal:.2f}", fmt_number(s.psnr_mean, 2), fmt_number(s.psnr_min, 2), fmt_number(s.ssim_mean, 3),
                      fmt_number(s.lpips_mean, 3), style=style)  # fmt: skip
    return table


@user_errors
def sweep_cmd(
    prompts: int = typer.Option(4, "--prompts", help="Number of held-out single-object world captions (ignored with --prompt-file)."),
    prompt_file: Optional[Path] = typer.Option(None, "--prompt-file", help="Prompts, one per line ('#' lines skipped)."),
    thresholds: str = typer.Option(",".join(f"{t:g}" for t in DEFAULT_THRESHOLDS), "--thresholds",
                                   help="Comma-separated rel_l1_thresh values >= 0, used for teacache and flowcache."),
    warmup_steps: Optional[int] = typer.Option(None, "--warmup-steps", help="Always-computed steps (default: the model's)."),
    num_steps: Optional[int] = typer.Option(None, "--num-steps", min=1, max=MAX_NUM_STEPS,
                                            help="Denoising steps per chunk (default: the model's)."),
    seeds: str = typer.Option("0", "--seeds", help="Comma-separated sampling seeds; every setting runs every seed."),
    policies: str = typer.Option(",".join(POLICIES), "--policies", help=f"Subset of {','.join(POLICIES)} (none always runs)."),
    reuse_modes: str = typer.Option(",".join(REUSE_MODES), "--reuse-modes",
                                    help="Reuse modes of the policies that have one: displacement (published rule), velocity, extrapolate."),
    min_psnr: float = typer.Option(25.0, "--min-psnr", help="Recommendation floor: mean PSNR vs none (dB)."),
    min_ssim: float = typer.Option(0.75, "--min-ssim", help="Recommendation floor: mean SSIM vs none."),
    min_psnr_each: Optional[float] = typer.Option(None, "--min-psnr-each", help="Recommendation floor on every single run's PSNR vs none (dB); default: none."),
    checkpoint_dir: Optional[Path] = typer.Option(None, "--checkpoint-dir", help="A model bundle; default: the shipped model."),
    output_dir: Path = typer.Option(Path("sweep_results"), "--output-dir", help="Where sweep.json and sweep_pareto.png go (created)."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N."),
    no_lpips: bool = typer.Option(False, "--no-lpips", help="Skip LPIPS."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress; print only the JSON path."),
) -> None:
    """Run every cache setting on the same prompts and seeds, compare with none, recommend the fastest above a floor."""
    if not math.isfinite(min_psnr):
        raise FlowcacheError(f"--min-psnr {min_psnr!r} must be a finite number (dB)")
    if not 0.0 <= min_ssim <= 1.0:
        raise FlowcacheError(f"--min-ssim {min_ssim!r} must be in [0, 1]")
    if min_psnr_each is not None and not math.isfinite(min_psnr_each):
        raise FlowcacheError(f"--min-psnr-each {min_psnr_each!r} must be a finite number (dB)")
    if warmup_steps is not None and warmup_steps < 0:
        raise FlowcacheError(f"--warmup-steps {warmup_steps} must be >= 0")
    thr = parse_float_list(thresholds, "--thresholds")
    pol = parse_choices(policies, tuple(POLICIES), "--policies")
    modes = parse_choices(reuse_modes, REUSE_MODES, "--reuse-modes")
    sds = parse_int_list(seeds, "--seeds")
    for s in sds:
        check_seed(s, "--seeds value")
    texts = read_prompt_file(prompt_file) if prompt_file is not None else default_prompts(prompts)
    cfg = SweepConfig(texts, sds, thr, pol, modes, warmup_steps=warmup_steps, num_steps=num_steps,
                      checkpoint_dir=str(checkpoint_dir) if checkpoint_dir else None, device=device,
                      lpips=not no_lpips, min_psnr=min_psnr, min_ssim=min_ssim, min_psnr_each=min_psnr_each)
    cfg.validate()
    check_device(device, "--device")
    request = resolve("sweep", checkpoint_dir=checkpoint_dir, device=device, num_steps=num_steps,
                      spelled={"num_steps": "--num-steps"})  # every cheap check before the folder is created
    out = check_output_dir(output_dir)
    bundle = load(request)

    show = not quiet and err_console.is_terminal
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[last]}"), console=err_console, disable=not show) as progress:
        task = progress.add_task("sweep", total=None, last="")

        def on_progress(p) -> None:
            progress.update(task, completed=p.done, total=p.total, last=f"{p.setting} seed {p.seed}: {p.seconds:.1f}s")

        # sweep.json holds the runs done so far ("complete": false) from before the first video: a failure late
        # (a full disk) keeps them, and an unwritable folder fails before any work.
        result = run_sweep(cfg, bundle=bundle, on_progress=on_progress, partial_json=out / "sweep.json")
    json_path = write_json(result.to_dict(), out / "sweep.json")
    plot_msg = pareto_plot(result.summaries, out / "sweep_pareto.png",
                           title=f"{len(texts)} prompts x {len(sds)} seeds, {result.model['num_steps']} steps")
    if quiet:
        console.print(str(json_path), markup=False, highlight=False, soft_wrap=True)
        return
    wide = console if console.is_terminal else Console(width=max(console.width, 170))  # pipes: don't squeeze columns
    wide.print(render(result, min_psnr, min_ssim, min_psnr_each))
    if result.seed_scale:
        sc = result.seed_scale
        console.print(f"scale: two seeds of none differ by PSNR {fmt_number(sc['psnr_mean'], 2)} dB, SSIM "
                      f"{fmt_number(sc['ssim_mean'], 3)}", markup=False, highlight=False, soft_wrap=True)
    if not result.lpips_status.startswith("on"):
        console.print(f"LPIPS {result.lpips_status}", markup=False, highlight=False, soft_wrap=True)
    rec = result.recommendation
    console.print(f"recommended: {rec}" if rec else
                  f"recommended: none of the cached settings reaches PSNR >= {min_psnr:g} dB and SSIM >= {min_ssim:g}"
                  + (f" with every run >= {min_psnr_each:g} dB" if min_psnr_each is not None else ""),
                  markup=False, highlight=False, soft_wrap=True)
    console.print(f"wrote {json_path}; {plot_msg}", markup=False, highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("sweep", cls=OneLineUsageErrors)(sweep_cmd)
