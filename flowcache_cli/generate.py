"""`flowcache generate`: one video from a prompt (t2v), an image (i2v) or a prefix video (v2v).

Order of work: every cheap check first (paths, then the request resolved by `flowcache_core.api.resolve`, the
same function the API uses, then the input files), so that a typo fails in milliseconds with one line; then the
model is loaded, the video sampled with live progress, written atomically (temp file + rename), and a summary
printed. The cache option flags come from the policy registry's config dataclasses, the family flags from the
family registry. The logic lives in `flowcache_core`.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Optional

import typer

from flowcache_cli._common import (
    OneLineUsageErrors, cache_flag_fields, check_policy_flag, console, err_console, family_flag_fields, option_flags,
    split_options, user_errors,
)  # fmt: skip
from flowcache_cli.progress import ProgressView, summary_table
from flowcache_core.api import MODES, generate, load, resolve
from flowcache_core.checks import MAX_NUM_STEPS, check_device, check_seed
from flowcache_core.cache.settings import CacheConfig, policy_names
from flowcache_core.engine.events import ForwardEvent, UnknownWords
from flowcache_core.errors import FlowcacheError
from flowcache_core.fileio import remove_stale_temps, same_file, usual_mode
from flowcache_core.models.attention import ATTN_BACKENDS
from flowcache_core.video import VideoStream, check_output_path, read_image, read_video


# ------------------------------------------------------------------------------------------ JSON log
class JsonLog:
    """`--json-log`: one JSON object per forward, written as the run goes into a hidden temp file beside
    the destination (flushed per line), renamed over it only when the video is written. A failed or
    interrupted run leaves no log (and no half-written one)."""

    def __init__(self, path: Path | None) -> None:
        self.path, self._tmp, self._f = path, None, None

    def _failed(self, e: OSError) -> FlowcacheError:
        return FlowcacheError(f"cannot write --json-log {self.path}: {e.strerror or e}")

    def __enter__(self) -> "JsonLog":
        if self.path is not None:
            try:
                fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
            except OSError as e:
                raise self._failed(e) from None
            self._tmp, self._f = Path(tmp), os.fdopen(fd, "w", encoding="utf-8")
        return self

    def __call__(self, event: object) -> None:
        if self._f is not None and isinstance(event, ForwardEvent):
            try:
                self._f.write(json.dumps(event.to_json()) + "\n")
                self._f.flush()
            except OSError as e:  # e.g. ENOSPC: a full disk
                raise self._failed(e) from None

    def commit(self) -> None:
        if self._f is not None:
            try:
                f, self._f = self._f, None
                f.close()
                usual_mode(self._tmp)
                os.replace(self._tmp, self.path)
            except OSError as e:
                raise self._failed(e) from None
            self._tmp = None

    def __exit__(self, *exc) -> None:
        if self._f is not None:
            try:
                self._f.close()
            except OSError:  # its buffered tail could not be written: the file is removed anyway
                pass
            self._f = None
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None


# ------------------------------------------------------------------------------------------ the command
FLAG_NAMES = {name: "--" + name.replace("_", "-") for name in ("seed", "num_steps", "num_frames", "height", "width", *family_flag_fields())}

def generate_cmd(
    output_path: Path = typer.Option(..., "--output-path", help="The mp4 to write (its folder must exist)."),
    mode: str = typer.Option("t2v", "--mode", help=f"One of {', '.join(MODES)}: text-, image-, video-to-video."),
    prompt: str = typer.Option("", "--prompt", help="What to generate (required for t2v)."),
    image: Optional[Path] = typer.Option(None, "--image", help="i2v: the first frame (png/jpg, the model's size)."),
    prefix_video: Optional[Path] = typer.Option(None, "--prefix-video", help="v2v: the video to continue (>= one chunk)."),
    config_file: Optional[Path] = typer.Option(
        None, "--config-file",
        help="A JSON config: a MAGI-1 runtime_config laid over the checkpoint's (the weights fix the model), "
             "and/or flowcache.cache_defaults laid over the model's.",
    ),  # fmt: skip
    checkpoint_dir: Optional[Path] = typer.Option(None, "--checkpoint-dir", help="A model bundle or an official MAGI-1 release root; default: the shipped model."),
    variant: Optional[str] = typer.Option(None, "--variant", help="MAGI-1 release variant (4.5B_distill, 24B_base, ...); default: the only one present."),
    seed: Optional[int] = typer.Option(None, "--seed", min=0, help="Noise seed (default: the config's)."),
    num_steps: Optional[int] = typer.Option(None, "--num-steps", min=1, max=MAX_NUM_STEPS, help="Denoising steps per chunk."),
    num_frames: Optional[int] = typer.Option(None, "--num-frames", min=1, help="Frames to generate (v2v: after the prefix)."),
    height: Optional[int] = typer.Option(None, "--height", min=1, help="Pixels."),
    width: Optional[int] = typer.Option(None, "--width", min=1, help="Pixels."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N."),
    attn_backend: str = typer.Option("auto", "--attn-backend", help=f"One of {', '.join(ATTN_BACKENDS)}."),
    cache: str = typer.Option("none", "--cache", help=f"Cache policy, one of {', '.join(policy_names())}. Options not given come from the model's cache_defaults."),
    json_log: Optional[Path] = typer.Option(None, "--json-log", help="Write one JSON object per forward to this file."),
    lossless: bool = typer.Option(False, "--lossless", help="Lossless H.264 (RGB, qp 0): for exact comparisons."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or summary; print only the output path."),
    options: dict = None,
) -> None:
    """Generate a video (t2v, i2v or v2v) with an optional cache policy, and print what the cache did."""
    t0 = time.perf_counter()
    # 1. Cheap checks, before the model is loaded: the paths, then the request resolved as the API resolves it.
    if output_path.suffix.lower() != ".mp4":
        raise FlowcacheError(f"--output-path {str(output_path)!r} must end in .mp4")
    check_output_path(output_path)
    if json_log is not None:
        check_output_path(json_log)
        if same_file(json_log, output_path):
            raise FlowcacheError(f"--json-log {str(json_log)!r} is the same file as --output-path")
    for flag, given in (("--prefix-video", prefix_video), ("--image", image)):  # an input is never overwritten
        if given is None:
            continue
        for out_flag, out in (("--output-path", output_path), ("--json-log", json_log)):
            if out is not None and same_file(out, given):
                raise FlowcacheError(f"{out_flag} {str(out)!r} is the same file as {flag} {str(given)!r}; "
                                     "it would overwrite the input: write to another file")
    if mode not in MODES:
        raise FlowcacheError(f"--mode {mode!r} is not one of {', '.join(MODES)}")
    if mode == "t2v" and not prompt.strip():
        raise FlowcacheError("--prompt is empty; t2v needs a prompt (i2v/v2v may run without one)")
    if mode != "i2v" and image is not None:
        raise FlowcacheError(f"--image is only used with --mode i2v (mode is {mode})")
    if mode != "v2v" and prefix_video is not None:
        raise FlowcacheError(f"--prefix-video is only used with --mode v2v (mode is {mode})")
    if mode == "i2v" and image is None:
        raise FlowcacheError("--mode i2v needs --image")
    if mode == "v2v" and prefix_video is None:
        raise FlowcacheError("--mode v2v needs --prefix-video")
    check_device(device, "--device")
    if seed is not None:
        check_seed(seed, "--seed")
    cache_options, family_options = split_options(options)
    request = resolve(prompt, mode=mode, cache=CacheConfig(check_policy_flag(cache), **cache_options),
                      checkpoint_dir=checkpoint_dir, variant=variant, config_file=config_file, device=device,
                      attn_backend=attn_backend, seed=seed, num_steps=num_steps, num_frames=num_frames,
                      height=height, width=width, spelled=FLAG_NAMES, **family_options)
    image_px = read_image(image) if image is not None else None
    prefix_px = read_video(prefix_video)[0] if prefix_video is not None else None
    request.family.check_inputs(request.config, mode, image_px, prefix_px)

    # Temp files a killed (SIGKILL) earlier run left for these destinations go now.
    for dest in (output_path, json_log):
        if dest is not None:
            remove_stale_temps(dest)

    # 2. Load the model (a missing, corrupt or mismatched checkpoint fails here, in one line).
    bundle = load(request)

    # 3. Sample with live progress, write the video (atomic), then the JSON log (atomic).
    with ProgressView(err_console, enabled=not quiet) as view, JsonLog(json_log) as log:
        def on_event(event: object) -> None:
            if isinstance(event, UnknownWords):
                err_console.print(f"warning: the model does not know the prompt word{'s' if len(event.words) > 1 else ''} "
                                  f"{', '.join(event.words)}: ignored (its vocabulary: README, \"Prompt vocabulary\")",
                                  markup=False, highlight=False, soft_wrap=True)
                return
            view(event)
            log(event)

        # the mp4 grows as chunks finish (a long stream is never held in memory); it appears when the run ends
        with VideoStream(output_path, lossless=lossless) as out:
            result = generate(image=image_px, prefix_video=prefix_px, request=request, bundle=bundle,
                              on_event=on_event, on_frames=out.write, keep_frames=False)
        log.commit()

    if quiet:
        console.print(str(output_path), markup=False, highlight=False, soft_wrap=True)
        return
    console.print(summary_table(result.record, result.cache, wall_seconds=time.perf_counter() - t0))
    T, (H, W) = out.frames, out.size
    extra = f"; JSON log {json_log}" if json_log is not None else ""
    console.print(f"wrote {output_path} ({T} frames, {W}x{H}, {result.fps} fps{', lossless' if lossless else ''}){extra}",
                  markup=False, highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """The flags of the registered families and cache policies are read now, when the app is built."""
    command = user_errors(option_flags({**family_flag_fields(), **cache_flag_fields()})(generate_cmd))
    app.command("generate", cls=OneLineUsageErrors)(command)
