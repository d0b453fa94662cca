"""`evaluate`: compare candidate videos (or images) against references, pairwise.

Pairs: two files, or two folders matched by file name (a name on one side only is an error that lists
it). Per pair: PSNR over the whole clip and per frame, SSIM per frame and its mean, LPIPS per frame and
its mean (optional). Means over pairs. Mismatched frame counts or sizes are an error naming both, unless
`max_frames` (compare the first N frames) or `resize` (resize the candidate to the reference size,
bicubic) says otherwise. Results: an `EvaluationResult`; `write_results` writes JSON and a CSV beside it.

JSON cannot hold infinity: an infinite PSNR (identical videos) is written as the string "inf".
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from flowcache_core.checks import check_device
from flowcache_core.eval import metrics
from flowcache_core.errors import FlowcacheError
from flowcache_core.fileio import atomic_write_text, check_output_path
from flowcache_core.video import IMAGE_SUFFIXES, VIDEO_SUFFIXES, read_image, read_video

MEDIA_SUFFIXES = VIDEO_SUFFIXES + IMAGE_SUFFIXES


@dataclass
class PairMetrics:
    name: str
    reference: str
    candidate: str
    frames: int
    width: int
    height: int
    psnr: float  # whole clip, dB
    ssim: float  # mean over frames
    lpips: float | None  # mean over frames; None when LPIPS is off or unavailable
    psnr_per_frame: list[float] = field(default_factory=list)
    ssim_per_frame: list[float] = field(default_factory=list)
    lpips_per_frame: list[float] | None = None


@dataclass
class EvaluationResult:
    pairs: list[PairMetrics]
    lpips_status: str  # "on: <weights>", "off (--no-lpips)" or "unavailable: <reason>"

    @property
    def mean_psnr(self) -> float:
        return float(np.mean([p.psnr for p in self.pairs]))

    @property
    def mean_ssim(self) -> float:
        return float(np.mean([p.ssim for p in self.pairs]))

    @property
    def mean_lpips(self) -> float | None:
        vals = [p.lpips for p in self.pairs]
        return None if any(v is None for v in vals) else float(np.mean(vals))

    def to_dict(self) -> dict:
        return _json_safe(
            {
                "mean": {"psnr": self.mean_psnr, "ssim": self.mean_ssim, "lpips": self.mean_lpips},
                "lpips_status": self.lpips_status,
                "videos": [asdict(p) for p in self.pairs],
            }
        )


def _json_safe(x):
    if isinstance(x, float) and math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_safe(v) for v in x]
    return x


# ---------------------------------------------------------------------------------------------------
# Pairing and reading


def _media_files(folder: Path) -> dict[str, Path]:
    return {
        p.name: p
        for p in sorted(folder.iterdir())
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in MEDIA_SUFFIXES
    }


def _names(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def pair_paths(reference: str | os.PathLike, candidate: str | os.PathLike) -> list[tuple[str, Path, Path]]:
    """[(name, reference file, candidate file)] for two files or two folders matched by file name."""
    ref, cand = Path(reference), Path(candidate)
    for what, p in (("reference", ref), ("candidate", cand)):
        if not p.exists():
            raise FlowcacheError(f"{what} {p} does not exist")
    if ref.is_dir() != cand.is_dir():
        raise FlowcacheError(f"reference {ref} and candidate {cand} must both be files or both be folders")
    if not ref.is_dir():
        return [(ref.name, ref, cand)]
    rf, cf = _media_files(ref), _media_files(cand)
    if not rf:
        raise FlowcacheError(f"reference folder {ref} holds no videos or images ({', '.join(MEDIA_SUFFIXES)})")
    only_ref, only_cand = sorted(set(rf) - set(cf)), sorted(set(cf) - set(rf))
    if only_ref or only_cand:
        parts = []
        if only_ref:
            parts.append(f"only in reference {ref}: {_names(only_ref)}")
        if only_cand:
            parts.append(f"only in candidate {cand}: {_names(only_cand)}")
        raise FlowcacheError("; ".join(parts))
    return [(name, rf[name], cf[name]) for name in sorted(rf)]


def _read_clip(path: Path, max_frames: int | None) -> np.ndarray:
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return read_image(path)[None]
    return read_video(path, max_frames=max_frames)[0]


def _describe(frames: np.ndarray) -> str:
    t, h, w, _ = frames.shape
    return f"{t} frame{'s' if t != 1 else ''} of {w}x{h}"


def _resize(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(f).resize((width, height), Image.BICUBIC)) for f in frames])


def _align(ref: np.ndarray, cand: np.ndarray, ref_path: Path, cand_path: Path, resize: bool, max_frames: int | None):
    if max_frames is not None:
        ref, cand = ref[:max_frames], cand[:max_frames]
    if resize and ref.shape[1:3] != cand.shape[1:3]:
        cand = _resize(cand, ref.shape[1], ref.shape[2])
    if ref.shape != cand.shape:
        hint = []
        if ref.shape[0] != cand.shape[0]:
            hint.append(f"--max-frames {min(ref.shape[0], cand.shape[0])} compares the first frames")
        if ref.shape[1:3] != cand.shape[1:3]:
            hint.append("--resize resizes the candidate")
        raise FlowcacheError(
            f"reference {ref_path.name} has {_describe(ref)}, candidate {cand_path.name} has {_describe(cand)}"
            f" ({'; '.join(hint)})"
        )
    return ref, cand


# ---------------------------------------------------------------------------------------------------
# Evaluation


def evaluate(
    reference: str | os.PathLike,
    candidate: str | os.PathLike,
    *,
    output: str | os.PathLike | None = None,
    lpips: bool = True,
    lpips_weights: str | os.PathLike | None = None,
    resize: bool = False,
    max_frames: int | None = None,
    device: str = "cpu",
    on_pair: Callable[[int, int, PairMetrics], None] | None = None,
) -> EvaluationResult:
    """Compare every pair; write JSON (+ CSV beside it) to `output` when given (checked before any work).
    `on_pair(index, total, metrics)` is called after each pair (the CLI draws progress with it)."""
    if max_frames is not None and max_frames < 1:
        raise FlowcacheError(f"--max-frames must be >= 1, got {max_frames}")
    check_device(device)
    if output is not None:
        _check_outputs(Path(output))
    pairs = pair_paths(reference, candidate)

    model = None
    if not lpips:
        status = "off (--no-lpips)"
    else:
        found = metrics.load_lpips(lpips_weights, device=device)
        if isinstance(found, metrics.LpipsUnavailable):
            status = f"unavailable: {found.reason}"
        else:
            model = found
            status = f"on: trunk {found.source.trunk}, heads {found.source.heads}"

    results = []
    for i, (name, ref_path, cand_path) in enumerate(pairs):
        ref = _read_clip(ref_path, max_frames)
        cand = _read_clip(cand_path, max_frames)
        ref, cand = _align(ref, cand, ref_path, cand_path, resize, max_frames)
        psnr_f = metrics.psnr_per_frame(ref, cand)
        ssim_f = metrics.ssim_per_frame(ref, cand)
        lp_f = None
        if model is not None:
            if min(ref.shape[1:3]) < metrics.LPIPS_MIN_SIZE:
                raise FlowcacheError(
                    f"{name} is {ref.shape[2]}x{ref.shape[1]}; LPIPS needs at least "
                    f"{metrics.LPIPS_MIN_SIZE}x{metrics.LPIPS_MIN_SIZE} (use --no-lpips)"
                )
            lp_f = metrics.lpips_per_frame(model, ref, cand)
        pm = PairMetrics(
            name=name, reference=str(ref_path), candidate=str(cand_path),
            frames=int(ref.shape[0]), width=int(ref.shape[2]), height=int(ref.shape[1]),
            psnr=metrics.psnr(ref, cand), ssim=float(ssim_f.mean()),
            lpips=None if lp_f is None else float(lp_f.mean()),
            psnr_per_frame=[float(v) for v in psnr_f], ssim_per_frame=[float(v) for v in ssim_f],
            lpips_per_frame=None if lp_f is None else [float(v) for v in lp_f],
        )  # fmt: skip
        results.append(pm)
        if on_pair is not None:
            on_pair(i, len(pairs), pm)

    result = EvaluationResult(results, status)
    if output is not None:
        write_results(result, output)
    return result


def _csv_path(output: Path) -> Path:
    return output.with_suffix(".csv")


def _check_outputs(output: Path) -> None:
    if output.suffix.lower() != ".json":
        raise FlowcacheError(f"--output {output} must end in .json (the CSV is written beside it)")
    check_output_path(output)
    check_output_path(_csv_path(output))


def write_results(result: EvaluationResult, output: str | os.PathLike) -> tuple[Path, Path]:
    """Write `output` (JSON: means, LPIPS status, per-video and per-frame values) and the CSV beside it
    (one row per video, then a `mean` row), each atomically."""
    output = Path(output)
    _check_outputs(output)
    atomic_write_text(output, json.dumps(result.to_dict(), indent=2) + "\n")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["name", "reference", "candidate", "frames", "width", "height", "psnr", "ssim", "lpips"])

    def fmt(v):
        return "" if v is None else ("inf" if math.isinf(v) else f"{v:.6f}")

    for p in result.pairs:
        w.writerow([p.name, p.reference, p.candidate, p.frames, p.width, p.height, fmt(p.psnr), fmt(p.ssim), fmt(p.lpips)])
    w.writerow(["mean", "", "", "", "", "", fmt(result.mean_psnr), fmt(result.mean_ssim), fmt(result.mean_lpips)])
    csv_path = atomic_write_text(_csv_path(output), buf.getvalue())
    return output, csv_path
