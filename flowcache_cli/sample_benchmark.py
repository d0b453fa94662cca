"""`flowcache sample-benchmark {vbench,physicsiq}`: sample a benchmark's videos, resumable and sharded.

The work (prompt lists, PhysicsIQ reader, seeds, sharding, the sampling loop, manifests) lives in
`flowcache_core.eval.benchmarks`; this module turns flags into calls and draws the progress bar.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from flowcache_cli._common import (
    OneLineUsageErrors, cache_flag_fields, check_policy_flag, console, err_console, option_flags, user_errors,
)  # fmt: skip
from flowcache_core.api import load, resolve
from flowcache_core.cache.settings import CacheConfig, policy_names
from flowcache_core.checks import MAX_NUM_STEPS, check_device, check_seed
from flowcache_core.errors import FlowcacheError
from flowcache_core.eval import benchmarks as bm

# ----------------------------------------------------------------------------------------------- shared flags
# Typer has no option groups: the flags both commands take are defined once here and reused; the cache option
# flags come from the policy registry (`option_flags`, applied when the app is built).
OUTPUT_DIR = typer.Option(..., "--output-dir", help="Folder for the videos and manifest.json (created if missing).")
CACHE = typer.Option("none", "--cache", help=f"Cache policy: {', '.join(policy_names())} (none = uncached reference).")
CHECKPOINT = typer.Option(None, "--checkpoint-dir", help="Model bundle folder (default: the shipped default model).")
STEPS = typer.Option(None, "--num-steps", min=1, max=MAX_NUM_STEPS, help="Denoising steps per chunk (default: the model's).")
DEVICE = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N (under torchrun, cuda means cuda:LOCAL_RANK).")
SEED = typer.Option(0, "--seed", help=f"Base seed: video i of prompt p uses seed + {bm.SEED_STRIDE}*p + i.")
SHARD = typer.Option(None, "--shard", help="Take work items k with k % n == i ('i/n'). Under torchrun: RANK/WORLD_SIZE.")
LIMIT = typer.Option(None, "--limit", help="Only the first N work items (before sharding): for tests and quick looks.")
LOSSLESS = typer.Option(False, "--lossless", help="Bit-exact H.264 RGB videos (for pairwise evaluation).")
QUIET = typer.Option(False, "--quiet", help="No progress bar (the one-line summary stays).")


def _sample(benchmark: str, shard: bm.Shard, build_items, output_dir: Path, checkpoint_dir, device: str,
            cache: CacheConfig, num_steps, num_frames_for, lossless: bool, quiet: bool) -> None:
    """Shared tail of both commands: bundle once, this process's items, progress, barrier, merged manifest.

    build_items(video) -> (all items, keep_frames or None, note or None); num_frames_for(video) -> int|None,
    with `video` what the resolved model config makes (`Family.video`: fps, size, ...; no weights loaded).
    """
    # Every check that needs no weights, before anything is created on disk: the request resolved as the API
    # resolves it (steps, frames, memory, cache options), the items and their input files.
    check_device(device, "--device")
    spelled = {"num_steps": "--num-steps", "num_frames": "--num-frames"}

    def request_on(dev: str):
        base = resolve(benchmark, cache=cache, checkpoint_dir=checkpoint_dir, device=dev, num_steps=num_steps,
                       spelled=spelled)
        return resolve(benchmark, cache=cache, checkpoint_dir=checkpoint_dir, device=dev, num_steps=num_steps,
                       num_frames=num_frames_for(base.family.video(base.config)), spelled=spelled)

    request = request_on(device)
    items, keep_frames, note = build_items(request.family.video(request.config))
    mine = shard.take(items)
    bm.check_inputs(mine)
    out = bm.prepare_output_dir(output_dir)
    distributed_device = bm.init_distributed(shard, device)
    try:
        if distributed_device != device:  # torchrun: this rank's cuda:LOCAL_RANK
            device, request = distributed_device, request_on(distributed_device)
        bundle = load(request)
        settings = bm.SamplingSettings(cache, num_steps, num_frames_for(request.family.video(bundle.config)), device,
                                       lossless, keep_frames)
        rank_label = f"shard {shard.index}/{shard.count}" if shard.count > 1 else "all"
        show = not quiet and shard.index == 0 if shard.distributed else not quiet
        if note and show:
            console.print(note, markup=False, highlight=False, soft_wrap=True)
        columns = (TextColumn(f"{benchmark} {rank_label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn(), TextColumn("{task.fields[last]}"))  # fmt: skip
        with Progress(*columns, console=err_console, disable=not show, transient=True) as progress:
            task = progress.add_task("videos", total=len(mine), last="")

            def on_progress(e: bm.ItemDone) -> None:
                status = "another run makes it" if e.elsewhere else "already there" if e.skipped else f"{e.seconds:.1f}s"
                progress.update(task, completed=e.done, last=f"{e.item.file[:48]} ({status})")

            summary = bm.sample_items(mine, out, settings, bundle=bundle, rank=shard.index, on_progress=on_progress)
        bm.finish_distributed(shard)  # torchrun: wait for every rank before rank 0 merges
        meta = {"benchmark": benchmark, "shards": shard.count,
                "cache": {"policy": request.cache.policy, **request.cache.options()}}
        merged = None
        if not shard.distributed or shard.index == 0:  # independent --shard runs: each merges what is on disk
            merged = bm.merge_manifests(out, items, meta)
    finally:
        bm.close_distributed(shard)
    # One summary line per process, --quiet included (it only turns the live bar off).
    elsewhere = f", {summary.elsewhere} being made by another run on this folder" if summary.elsewhere else ""
    line = (f"{rank_label}: {summary.generated} generated, {summary.skipped} already there{elsewhere} "
            f"({len(items)} in the set), {summary.seconds:.1f}s")  # fmt: skip
    console.print(line + (f"; manifest {merged}" if merged is not None else ""), markup=False, highlight=False, soft_wrap=True)


# ----------------------------------------------------------------------------------------------- vbench


def vbench_cmd(
    output_dir: Path = OUTPUT_DIR,
    dimension: Optional[List[str]] = typer.Option(
        None, "--dimension", help="Only prompts of this VBench dimension (repeatable); default: all 16."),
    prompt_file: Optional[Path] = typer.Option(
        None, "--prompt-file", help="A custom prompt list (one a line) instead of VBench's; names are sanitised."),
    samples_per_prompt: int = typer.Option(
        bm.VBENCH_SAMPLES_PER_PROMPT, "--samples-per-prompt", help="Videos per prompt, named {prompt}-{i}.mp4."),
    num_frames: Optional[int] = typer.Option(None, "--num-frames", min=1, help="Frames per video (default: the model's)."),
    cache: str = CACHE, checkpoint_dir: Optional[Path] = CHECKPOINT,
    num_steps: Optional[int] = STEPS, device: str = DEVICE, seed: int = SEED, shard: Optional[str] = SHARD,
    limit: Optional[int] = LIMIT, lossless: bool = LOSSLESS, quiet: bool = QUIET, options: dict = None,
) -> None:
    """VBench: every unique prompt (or those of --dimension) x --samples-per-prompt, as {prompt}-{i}.mp4."""
    the_shard = bm.resolve_shard(shard)
    check_seed(seed, "--seed")
    if prompt_file is not None and dimension:
        raise FlowcacheError("--dimension filters VBench's prompt list; a --prompt-file has no dimensions")
    if dimension is not None and any(not d.strip() for d in dimension):
        raise FlowcacheError(f"--dimension needs a value (allowed: {', '.join(bm.vbench_dimensions())})")
    prompts = bm.read_prompt_file(prompt_file) if prompt_file is not None else bm.vbench_prompts()
    prompts = bm.filter_dimensions(prompts, dimension or [])
    items = bm.limit_items(bm.prompt_items(prompts, samples_per_prompt, seed), limit)
    cache_request = CacheConfig(check_policy_flag(cache), **options)  # checked now, before the model loads
    _sample("vbench" if prompt_file is None else f"prompts:{prompt_file.name}", the_shard,
            lambda video: (items, None, None), output_dir, checkpoint_dir, device, cache_request, num_steps,
            lambda video: num_frames, lossless, quiet)


# ----------------------------------------------------------------------------------------------- physicsiq


def physicsiq_cmd(
    dataset_dir: Path = typer.Option(..., "--dataset-dir", help="PhysicsIQ root: descriptions.csv, switch-frames/, split-videos/."),
    output_dir: Path = OUTPUT_DIR,
    mode: str = typer.Option("v2v", "--mode", help="v2v: continue the 3 s conditioning video; i2v: start from the switch frame."),
    num_frames: Optional[int] = typer.Option(
        None, "--num-frames", min=1, help="Frames to generate (default and minimum: 5 s at the model's fps; trimmed to 5 s)."),
    cache: str = CACHE, checkpoint_dir: Optional[Path] = CHECKPOINT,
    num_steps: Optional[int] = STEPS, device: str = DEVICE, seed: int = SEED, shard: Optional[str] = SHARD,
    limit: Optional[int] = LIMIT, lossless: bool = LOSSLESS, quiet: bool = QUIET, options: dict = None,
) -> None:
    """PhysicsIQ: one video per take-1 scenario, named by generated_video_name, exactly 5 s at the model's fps."""
    the_shard = bm.resolve_shard(shard)
    check_seed(seed, "--seed")
    if mode not in bm.PHYSICSIQ_MODES:
        raise FlowcacheError(f"--mode {mode!r} unknown for PhysicsIQ (allowed: {', '.join(bm.PHYSICSIQ_MODES)})")
    rows = bm.read_physicsiq(dataset_dir)
    cache_request = CacheConfig(check_policy_flag(cache), **options)  # checked now, before the model loads

    def need(video) -> int:
        return video["fps"] * bm.PHYSICSIQ_SECONDS

    def build(video):
        fps = video["fps"]
        if num_frames is not None and num_frames < need(video):
            raise FlowcacheError(f"--num-frames {num_frames} is shorter than PhysicsIQ's 5 s at {fps} fps ({need(video)} frames)")
        items = bm.limit_items(bm.physicsiq_items(rows, dataset_dir, mode, fps, seed), limit)
        note = None
        if mode == "v2v":
            src = items[0].prefix_fps
            how = "as is" if src == fps else f"resampled to {fps} fps"
            note = f"v2v conditioning videos: split-videos/conditioning-videos/{src}FPS ({how}); output {need(video)} frames at {fps} fps"
        return items, need(video), note

    _sample(f"physicsiq-{mode}", the_shard, build, output_dir, checkpoint_dir, device, cache_request, num_steps,
            lambda video: max(num_frames or 0, need(video)), lossless, quiet)


def register(app: typer.Typer) -> None:
    bench_app = typer.Typer(
        help="Sample a benchmark's videos (VBench prompts, PhysicsIQ scenarios): resumable, sharded "
             "(--shard i/n or torchrun), one manifest.json per output dir.",
        no_args_is_help=True,
    )  # fmt: skip
    flags = option_flags(cache_flag_fields())
    bench_app.command("vbench", cls=OneLineUsageErrors)(user_errors(flags(vbench_cmd)))
    bench_app.command("physicsiq", cls=OneLineUsageErrors)(user_errors(flags(physicsiq_cmd)))
    app.add_typer(bench_app, name="sample-benchmark")
