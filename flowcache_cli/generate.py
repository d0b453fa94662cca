"""`flowcache generate`: one video from a prompt (t2v), an image (i2v) or a prefix video (v2v).

Order of work: every cheap check first (choices, numbers, output folder, input files, config), so that a
typo fails in milliseconds with one line; then the model is loaded, the video sampled with live progress,
written atomically (temp file + rename), and a summary printed. The logic lives in `flowcache_core`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Optional

import typer

from flowcache_cli._common import OneLineUsageErrors, cache_config_from_flags, console, err_console, user_errors
from flowcache_core.api import MODES, generate
from flowcache_core.bundle import default_model_dir, load_bundle
from flowcache_core.magi_release import choose_variant, is_magi_release, release_ckpt_dir, variant_config
from flowcache_core.cache.policy import (
    COMPRESS_STRATEGIES, POLICY_NAMES, QUERY_GRANULARITIES, REUSE_MODES, CacheConfig,
)  # fmt: skip
from flowcache_core.checks import check_device, check_fits_in_memory, check_frame_size, check_seed, codec_factors
from flowcache_core.config import MAX_NUM_STEPS, MagiConfig, RuntimeConfig, check_config_section
from flowcache_core.errors import FlowcacheError
from flowcache_core.fileio import usual_mode
from flowcache_core.model.attention import ATTN_BACKENDS, check_backend
from flowcache_core.pipeline import ForwardEvent
from flowcache_core.progress import ProgressView, summary_table
from flowcache_core.video import check_output_path, read_image, read_video, write_video




# ------------------------------------------------------------------------------------------ checks
def _choice(flag: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise FlowcacheError(f"{flag} {value!r} is not one of {', '.join(allowed)}")
    return value


def load_run_config(checkpoint_dir: Path | None, config_file: Path | None, variant: str | None = None) -> MagiConfig:
    """The bundle's config.json, with `runtime_config` of `config_file` (MAGI-1 schema) laid over it.

    Only the keys present in the file's runtime_config change; its model_config and engine_config are not
    used (the weights fix the model). Unknown runtime keys are an error, not silently dropped.
    """
    d = checkpoint_dir if checkpoint_dir is not None else default_model_dir()
    if not d.is_dir():
        raise FlowcacheError(f"checkpoint directory {str(d)!r} does not exist")
    if is_magi_release(d):  # an official release root: the variant's config
        ckpt = release_ckpt_dir(d)
        cfg = variant_config(ckpt, choose_variant(ckpt, variant))
    elif not (d / "config.json").is_file():
        raise FlowcacheError(f"checkpoint directory {str(d)!r} has no config.json (MAGI-1 schema)")
    else:
        cfg = MagiConfig.from_json(d / "config.json")
    if config_file is None:
        return cfg
    if not config_file.is_file():
        raise FlowcacheError(f"config file {str(config_file)!r} does not exist")
    try:
        data = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FlowcacheError(f"config file {str(config_file)!r} is not valid JSON ({getattr(e, 'msg', e)})") from None
    runtime = data.get("runtime_config") if isinstance(data, dict) else None
    if not isinstance(runtime, dict):
        raise FlowcacheError(f"config file {str(config_file)!r} has no runtime_config object (MAGI-1 schema)")
    known = {f.name for f in dataclasses.fields(RuntimeConfig)}
    unknown = sorted(set(runtime) - known)
    if unknown:
        raise FlowcacheError(f"config file {str(config_file)!r}: runtime_config key {unknown[0]!r} unknown "
                             f"(allowed: {', '.join(sorted(known))})")
    check_config_section("runtime_config", runtime, where=f"config file {str(config_file)!r}")
    return dataclasses.replace(cfg, runtime=dataclasses.replace(cfg.runtime, **runtime))


def cache_config(policy: str, given: dict, config: MagiConfig) -> CacheConfig:
    _choice("--cache", policy, POLICY_NAMES)
    return cache_config_from_flags(policy, given, config)


# ------------------------------------------------------------------------------------------ JSON log
class JsonLog:
    """`--json-log`: one JSON object per forward, written as the run goes into a hidden temp file beside
    the destination (flushed per line), renamed over it only when the video is written. A failed or
    interrupted run leaves no log (and no half-written one)."""

    def __init__(self, path: Path | None) -> None:
        self.path, self._tmp, self._f = path, None, None

    def __enter__(self) -> "JsonLog":
        if self.path is not None:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
            self._tmp, self._f = Path(tmp), os.fdopen(fd, "w", encoding="utf-8")
        return self

    def __call__(self, event: object) -> None:
        if self._f is not None and isinstance(event, ForwardEvent):
            self._f.write(json.dumps(event.to_json()) + "\n")
            self._f.flush()

    def commit(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
            usual_mode(self._tmp)
            os.replace(self._tmp, self.path)
            self._tmp = None

    def __exit__(self, *exc) -> None:
        if self._f is not None:
            self._f.close()
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------ the command
@user_errors
def generate_cmd(
    output_path: Path = typer.Option(..., "--output-path", help="The mp4 to write (its folder must exist)."),
    mode: str = typer.Option("t2v", "--mode", help=f"One of {', '.join(MODES)}: text-, image-, video-to-video."),
    prompt: str = typer.Option("", "--prompt", help="What to generate (required for t2v)."),
    image: Optional[Path] = typer.Option(None, "--image", help="i2v: the first frame (png/jpg, the model's size)."),
    prefix_video: Optional[Path] = typer.Option(None, "--prefix-video", help="v2v: the video to continue (>= one chunk)."),
    config_file: Optional[Path] = typer.Option(
        None, "--config-file",
        help="A MAGI-1 JSON config; only its runtime_config is used, laid over the checkpoint's (the weights fix the model).",
    ),  # fmt: skip
    checkpoint_dir: Optional[Path] = typer.Option(None, "--checkpoint-dir", help="A model bundle or an official MAGI-1 release root; default: the shipped model."),
    variant: Optional[str] = typer.Option(None, "--variant", help="MAGI-1 release variant (4.5B_distill, 24B_base, ...); default: the only one present."),
    seed: Optional[int] = typer.Option(None, "--seed", min=0, help="Noise seed (default: the config's)."),
    num_steps: Optional[int] = typer.Option(None, "--num-steps", min=1, max=MAX_NUM_STEPS, help="Denoising steps per chunk."),
    num_frames: Optional[int] = typer.Option(None, "--num-frames", min=1, help="Frames to generate (v2v: after the prefix)."),
    height: Optional[int] = typer.Option(None, "--height", min=1, help="Pixels."),
    width: Optional[int] = typer.Option(None, "--width", min=1, help="Pixels."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N."),
    attn_backend: str = typer.Option("sdpa", "--attn-backend", help=f"One of {', '.join(ATTN_BACKENDS)}."),
    cfg_number: Optional[int] = typer.Option(None, "--cfg-number", help="1 (distill, one pass) or 3 (MAGI-1 CFG: 3 passes, 2 when every prev-chunk scale is 1). Default: the model's (3 for the shipped one)."),
    cache: str = typer.Option("none", "--cache", help=f"Cache policy, one of {', '.join(POLICY_NAMES)}."),
    rel_l1_thresh: Optional[float] = typer.Option(
        None, "--rel-l1-thresh", help="Reuse while the accumulated relative L1 stays below this (default: the model's).",
    ),  # fmt: skip
    warmup_steps: Optional[int] = typer.Option(None, "--warmup-steps", help="Steps always computed (default: the model's)."),
    reuse: Optional[str] = typer.Option(None, "--reuse", help=f"Reused update, one of {', '.join(REUSE_MODES)}."),
    total_cache_chunk_nums: Optional[int] = typer.Option(
        None, "--total-cache-chunk-nums", help="KV budget B_total in chunks per layer (> window size); off if unset.",
    ),  # fmt: skip
    compress_strategy: Optional[str] = typer.Option(
        None, "--compress-strategy", help=f"KV selection unit, one of {', '.join(COMPRESS_STRATEGIES)}."),
    query_granularity: Optional[str] = typer.Option(
        None, "--query-granularity", help=f"Importance queries, one of {', '.join(QUERY_GRANULARITIES)}."),
    mix_lambda: Optional[float] = typer.Option(None, "--mix-lambda", help="λ: importance vs redundancy, in [0, 1] (0.07)."),
    json_log: Optional[Path] = typer.Option(None, "--json-log", help="Write one JSON object per forward to this file."),
    lossless: bool = typer.Option(False, "--lossless", help="Lossless H.264 (RGB, qp 0): for exact comparisons."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or summary; print only the output path."),
) -> None:
    """Generate a video (t2v, i2v or v2v) with an optional cache policy, and print what the cache did."""
    t0 = time.perf_counter()
    # 1. Cheap checks, before the model is loaded.
    _choice("--mode", mode, MODES)
    for flag, value, allowed in (("--reuse", reuse, REUSE_MODES), ("--compress-strategy", compress_strategy, COMPRESS_STRATEGIES),
                                 ("--query-granularity", query_granularity, QUERY_GRANULARITIES)):  # fmt: skip
        if value is not None:
            _choice(flag, value, allowed)
    _choice("--cache", cache, POLICY_NAMES)
    if output_path.suffix.lower() != ".mp4":
        raise FlowcacheError(f"--output-path {str(output_path)!r} must end in .mp4")
    check_output_path(output_path)
    if json_log is not None:
        check_output_path(json_log)
        if json_log.resolve() == output_path.resolve():
            raise FlowcacheError(f"--json-log {str(json_log)!r} is the same file as --output-path")
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
    check_device(device)
    check_backend(attn_backend)
    if seed is not None:
        check_seed(seed, "--seed")
    config = load_run_config(checkpoint_dir, config_file, variant)
    config = config.replace(num_steps=num_steps, num_frames=num_frames, video_size_h=height, video_size_w=width,
                            cfg_number=cfg_number, seed=seed).validate()
    # a value the flags did not set comes from the config (the checkpoint's, or --config-file's runtime_config)
    check_frame_size(config, names=("--height" if height is not None else "runtime_config.video_size_h",
                                    "--width" if width is not None else "runtime_config.video_size_w"))
    check_fits_in_memory(config, name="--num-frames" if num_frames is not None else "runtime_config.num_frames")
    given = dict(rel_l1_thresh=rel_l1_thresh, warmup_steps=warmup_steps, reuse=reuse,
                 total_cache_chunk_nums=total_cache_chunk_nums, compress_strategy=compress_strategy,
                 query_granularity=query_granularity, mix_lambda=mix_lambda)
    cache_cfg = cache_config(cache, given, config)
    rt = config.runtime
    image_px = read_image(image) if image is not None else None
    if image_px is not None and image_px.shape[:2] != (rt.video_size_h, rt.video_size_w):
        raise FlowcacheError(f"--image {str(image)!r} is {image_px.shape[1]}x{image_px.shape[0]}, "
                             f"the model generates {rt.video_size_w}x{rt.video_size_h} (resize it or pass --width/--height)")
    # read_video's frames view ffmpeg's bytes (read-only); torch warns on those, so take a writable copy.
    prefix_px = read_video(prefix_video)[0] if prefix_video is not None else None
    if prefix_px is not None:
        if prefix_px.shape[1:3] != (rt.video_size_h, rt.video_size_w):
            raise FlowcacheError(f"--prefix-video {str(prefix_video)!r} is {prefix_px.shape[2]}x{prefix_px.shape[1]}, "
                                 f"the model generates {rt.video_size_w}x{rt.video_size_h}")
        temporal = codec_factors(config)[1]
        if prefix_px.shape[0] < rt.chunk_width * temporal:
            raise FlowcacheError(f"--prefix-video {str(prefix_video)!r} has {prefix_px.shape[0]} frames, v2v needs at "
                                 f"least one chunk ({rt.chunk_width * temporal} frames)")

    # 2. Load the model (a missing, corrupt or mismatched checkpoint fails here, in one line).
    bundle = load_bundle(checkpoint_dir, device=device, attn_backend=attn_backend, variant=variant)
    bundle.config = config  # the bundle's own, with --config-file's runtime_config and the flags laid over it

    # 3. Sample with live progress, write the video (atomic), then the JSON log (atomic).
    with ProgressView(err_console, enabled=not quiet) as view, JsonLog(json_log) as log:
        def on_event(event: object) -> None:
            view(event)
            log(event)

        result = generate(prompt, mode=mode, image=image_px, prefix_video=prefix_px, cache=cache_cfg, bundle=bundle,
                          device=device, attn_backend=attn_backend, on_event=on_event)
        write_video(output_path, result.frames, result.fps, lossless=lossless)
        log.commit()

    if quiet:
        console.print(str(output_path), markup=False, highlight=False, soft_wrap=True)
        return
    console.print(summary_table(result.record, cache_cfg, wall_seconds=time.perf_counter() - t0))
    T, H, W, _ = result.frames.shape
    extra = f"; JSON log {json_log}" if json_log is not None else ""
    console.print(f"wrote {output_path} ({T} frames, {W}x{H}, {result.fps} fps{', lossless' if lossless else ''}){extra}",
                  markup=False, highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("generate", cls=OneLineUsageErrors)(generate_cmd)
