"""Benchmark sampling: VBench prompt lists, the PhysicsIQ dataset reader, and a resumable, sharded loop.

Front to back: a prompt list (VBench's, a custom file, or PhysicsIQ's take-1 rows) -> `WorkItem`s (one per
output video, in a fixed order) -> this process's share (`Shard`: item k belongs to shard k % n) ->
`sample_items` generates each missing video, writes it atomically and appends one manifest line ->
`merge_manifests` folds every process's `manifest.rank{r}.jsonl` into one `manifest.json`.

Decisions (documented here once; the CLI help points at them):
- Seeds: `seed = base_seed + SEED_STRIDE * prompt_index + sample`, `prompt_index` being the prompt's position
  in the deduplicated *full* list (before --dimension, --limit and sharding). A video therefore depends only
  on (prompt, sample, base seed, model, cache settings), never on the rank, the shard count or the filter.
- VBench file names are exactly `{prompt}-{i}.mp4` (what VBench's evaluator looks up). A duplicated prompt is
  sampled once (its dimensions are the union of its entries). Custom prompt files get sanitised names.
- PhysicsIQ: generation uses the take-1 rows, i.e. those whose `scenario` is `{ID}_{perspective}_take-1_{name}.mp4`
  (198 of 396 rows). Outputs are named by `generated_video_name` and hold exactly 5 s at the model's fps.
  Inputs are resized to the model's size over the whole frame (no crop, aspect not kept), so that scaling an
  output back to the dataset's size lines up with PhysicsIQ's ground truth. v2v conditioning videos come from
  the `{F}FPS` folder equal to the model's fps, else the smallest F that is a multiple of it (exact
  decimation), else the nearest F (ties: the higher); they are resampled in time to the model's fps.
- Resuming: a video exists under its final name only when complete (`write_video` writes a temp file and
  renames it), so a finished video is one whose file exists. Stale temp files of this process's items
  (left by a killed run) are removed before sampling.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from flowcache_core.errors import FlowcacheError
from flowcache_core.fileio import (
    atomic_write_text, claim, make_output_dir, read_prompt_lines, read_user_text, remove_stale_temps,
)
from flowcache_core.models.registry import FAMILIES
from flowcache_core.schema import shown

SEED_STRIDE = 1000  # seeds of prompt p: base + 1000*p + (0 .. samples_per_prompt-1)
VBENCH_SAMPLES_PER_PROMPT = 5  # VBench's protocol
VBENCH_MAX_STEM_BYTES = 240  # VBench names are kept verbatim (longest prompt: 210 bytes); only a guard
CUSTOM_MAX_STEM_BYTES = 180  # custom prompt names: stem <= 180 bytes, so `{stem}-{i}.mp4` <= 188 < 200 bytes
PHYSICSIQ_SECONDS = 5  # PhysicsIQ scores exactly 5.000 s after the switch frame
PHYSICSIQ_MODES = ("i2v", "v2v")
PHYSICSIQ_COLUMNS = ("scenario", "description", "generated_video_name")
MANIFEST = "manifest.json"
_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\]")  # path separators and control characters


# ----------------------------------------------------------------------------------------------- prompt lists


@dataclass(frozen=True)
class Prompt:
    """One unique prompt. index: position in the deduplicated full list (seeds derive from it)."""

    index: int
    text: str
    stem: str  # file-name stem; videos are f"{stem}-{i}.mp4"
    dimensions: tuple[str, ...] = ()


def safe_stem(text: str, max_bytes: int, taken: set[str] | None = None, casefold: bool = True) -> str:
    """A file-name stem for `text`: path separators / control characters -> '_', no leading '.', at most
    `max_bytes` UTF-8 bytes. Any change (or a clash with `taken`, compared case-insensitively unless
    `casefold=False`) appends `~` and 8 hex digits of the prompt's SHA-1, so a name without `~hash` is
    always the prompt verbatim. `taken` collects the names given so far."""
    key = str.casefold if casefold else str
    stem = _UNSAFE.sub("_", text)
    if stem.startswith("."):
        stem = "_" + stem[1:]
    digest = hashlib.sha1(text.encode("utf-8")).hexdigest()
    taken = taken if taken is not None else set()
    if stem == text and len(stem.encode("utf-8")) <= max_bytes and key(stem) not in taken:
        taken.add(key(stem))
        return stem
    for n in range(8, 41):  # a longer hash on the (astronomically unlikely) clash of two hashed names
        suffix = f"~{digest[:n]}"
        head = stem.encode("utf-8")[: max_bytes - len(suffix)].decode("utf-8", "ignore").rstrip()
        cand = head + suffix
        if key(cand) not in taken:
            taken.add(key(cand))
            return cand
    raise FlowcacheError(f"cannot build a unique file name for prompt {text[:60]!r}")  # pragma: no cover


def vbench_entries() -> list[dict]:
    """The shipped VBench_full_info.json as is: 946 entries of {prompt_en, dimension: [...]}."""
    data = resources.files("flowcache_core").joinpath("data/VBench_full_info.json").read_text(encoding="utf-8")
    return json.loads(data)


def vbench_prompts() -> list[Prompt]:
    """VBench's 944 unique prompts in file order; a duplicated prompt keeps its first position and the
    union of its entries' dimensions. Names are the prompts verbatim, compared case-sensitively: the list has
    both "A fantasy landscape" and "a fantasy landscape" (they clash on case-insensitive file systems)."""
    dims: dict[str, list[str]] = {}
    for e in vbench_entries():
        seen = dims.setdefault(e["prompt_en"], [])
        seen.extend(d for d in e["dimension"] if d not in seen)
    taken: set[str] = set()
    return [Prompt(i, p, safe_stem(p, VBENCH_MAX_STEM_BYTES, taken, casefold=False), tuple(d)) for i, (p, d) in enumerate(dims.items())]


def vbench_dimensions() -> tuple[str, ...]:
    """The 16 VBench dimensions, sorted."""
    return tuple(sorted({d for e in vbench_entries() for d in e["dimension"]}))


def filter_dimensions(prompts: Sequence[Prompt], dimensions: Sequence[str]) -> list[Prompt]:
    """Prompts tagged with any of `dimensions` (all prompts when empty); unknown names are an error."""
    if not dimensions:
        return list(prompts)
    allowed = vbench_dimensions()
    for d in dimensions:
        if d not in allowed:
            raise FlowcacheError(f"dimension {d!r} unknown (allowed: {', '.join(allowed)})")
    want = set(dimensions)
    return [p for p in prompts if want.intersection(p.dimensions)]


def read_prompt_file(path: str | os.PathLike) -> list[Prompt]:
    """One prompt a line (surrounding whitespace stripped, blank lines skipped, duplicates sampled once)."""

    unique = list(dict.fromkeys(read_prompt_lines(path)))
    taken: set[str] = set()
    return [Prompt(i, p, safe_stem(p, CUSTOM_MAX_STEM_BYTES, taken)) for i, p in enumerate(unique)]


# ----------------------------------------------------------------------------------------------- PhysicsIQ


@dataclass(frozen=True)
class PhysicsIQRow:
    """One take-1 row of descriptions.csv. index: position among the take-1 rows (seeds derive from it)."""

    index: int
    scenario: str  # "0001_perspective-left_take-1_trimmed-ball-and-block-fall.mp4"
    description: str
    category: str
    generated_video_name: str  # "0001_perspective-left_trimmed-ball-and-block-fall.mp4"
    id: str  # "0001"
    perspective: str  # "perspective-left"
    name: str  # "trimmed-ball-and-block-fall"

    def switch_frame(self, root: Path) -> Path:
        return root / "switch-frames" / f"{self.id}_switch-frames_anyFPS_{self.perspective}_{self.name}.jpg"

    def conditioning_video(self, root: Path, fps: int) -> Path:
        folder = root / "split-videos" / "conditioning-videos" / f"{fps}FPS"
        return folder / f"{self.id}_conditioning-videos_{fps}FPS_{self.perspective}_take-1_{self.name}.mp4"


_SCENARIO = re.compile(r"^(\d+)_(perspective-[^_]+)_take-(\d+)_(.+)\.mp4$")


def read_physicsiq(dataset_dir: str | os.PathLike) -> list[PhysicsIQRow]:
    """The take-1 rows of `dataset_dir/descriptions.csv`, in file order."""
    root = Path(dataset_dir)
    if not root.is_dir():
        raise FlowcacheError(f"PhysicsIQ dataset dir {root} does not exist" if not root.exists()
                             else f"PhysicsIQ dataset dir {root} is not a folder")
    csv_path = root / "descriptions.csv"
    if not csv_path.is_file():
        raise FlowcacheError(f"PhysicsIQ dataset dir {root} has no descriptions.csv "
                             "(expected the PhysicsIQ layout: descriptions.csv, switch-frames/, split-videos/)")
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:  # -sig: a spreadsheet's byte order mark is no column name
            reader = csv.DictReader(f)
            missing = [c for c in PHYSICSIQ_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise FlowcacheError(f"{csv_path} lacks column(s) {', '.join(missing)} (has: {', '.join(reader.fieldnames or [])})")
            raw = list(reader)
    except (UnicodeDecodeError, csv.Error) as e:
        raise FlowcacheError(f"{csv_path} is not a readable CSV: {e}") from None
    rows: list[PhysicsIQRow] = []
    line_of_output: dict[str, int] = {}  # two rows writing one video: the second would be skipped as "already there"
    for line, r in enumerate(raw, start=2):
        m = _SCENARIO.match(r["scenario"] or "")
        if not m:
            raise FlowcacheError(f"{csv_path} line {line}: scenario {r['scenario']!r} is not "
                                 "'{ID}_perspective-{view}_take-{n}_{name}.mp4'")
        if m.group(3) != "1":
            continue
        out = r["generated_video_name"] or ""
        if _UNSAFE.search(out) or out.startswith(".") or not out.endswith(".mp4"):
            raise FlowcacheError(f"{csv_path} line {line}: generated_video_name {out!r} must be a plain '*.mp4' file name")
        if out in line_of_output:
            raise FlowcacheError(f"{csv_path} line {line}: generated_video_name {out!r} is already the output of line "
                                 f"{line_of_output[out]} (each take-1 row needs its own)")
        line_of_output[out] = line
        rows.append(PhysicsIQRow(len(rows), r["scenario"], r["description"] or "", r.get("category") or "", out,
                                 m.group(1), m.group(2), m.group(4)))
    if not rows:
        raise FlowcacheError(f"{csv_path} has no take-1 rows (scenario '..._take-1_...mp4')")
    return rows


def conditioning_fps_folders(root: Path) -> list[int]:
    base = root / "split-videos" / "conditioning-videos"
    found = [re.fullmatch(r"(\d+)FPS", p.name) for p in base.iterdir() if p.is_dir()] if base.is_dir() else []
    return sorted(int(m.group(1)) for m in found if m and int(m.group(1)) > 0)


def choose_conditioning_fps(available: Sequence[int], model_fps: int) -> int:
    """The model's fps if present; else the smallest multiple of it (exact decimation); else the nearest
    (ties: the higher, which keeps more motion)."""
    if not available:
        raise FlowcacheError("no split-videos/conditioning-videos/{F}FPS folder found (v2v needs them; or use --mode i2v)")
    if model_fps in available:
        return model_fps
    multiples = [f for f in available if f % model_fps == 0]
    if multiples:
        return min(multiples)
    return min(available, key=lambda f: (abs(f - model_fps), -f))


def resample_fps(frames: np.ndarray, src_fps: float, dst_fps: float) -> np.ndarray:
    """Nearest-in-time frames at `dst_fps` covering the same duration: output j shows time j/dst_fps."""
    if src_fps == dst_fps:
        return frames
    n = max(1, math.floor(len(frames) * dst_fps / src_fps + 1e-6))
    idx = np.minimum(np.floor(np.arange(n) * src_fps / dst_fps + 0.5 + 1e-9).astype(int), len(frames) - 1)
    return frames[idx]


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """(T, H, W, 3) or (H, W, 3) uint8 -> the model's size, whole frame (no crop), Lanczos."""
    from PIL import Image

    if frames.shape[-3:-1] == (height, width):
        return frames
    one = frames.ndim == 3
    stack = frames[None] if one else frames
    out = np.stack([np.asarray(Image.fromarray(f).resize((width, height), Image.Resampling.LANCZOS)) for f in stack])
    return out[0] if one else out


# ----------------------------------------------------------------------------------------------- work items


@dataclass(frozen=True)
class WorkItem:
    """One output video. key: position in the full work list (sharding and --limit act on it)."""

    key: int
    prompt: str
    file: str
    seed: int
    prompt_index: int
    sample: int = 0
    mode: str = "t2v"
    image: Path | None = None  # i2v input, as found in the dataset
    prefix_video: Path | None = None  # v2v input, as found in the dataset
    prefix_fps: int | None = None  # the fps of `prefix_video` (its folder's)


def _seed(base_seed: int, prompt_index: int, sample: int) -> int:
    return base_seed + SEED_STRIDE * prompt_index + sample


def _check_base_seed(base_seed: int, last_prompt_index: int, last_sample: int) -> None:
    """The base seed, and the largest seed derived from it, must be seeds torch takes."""
    from flowcache_core.checks import check_seed
    from flowcache_core.checks import SEED_RANGE

    check_seed(base_seed, "seed")
    largest = _seed(base_seed, last_prompt_index, last_sample)
    if largest > SEED_RANGE.high:
        raise FlowcacheError(f"seed {base_seed} is too large: video seeds are seed + {SEED_STRIDE}*prompt + sample, up to "
                             f"{largest} here, and torch takes at most {SEED_RANGE.high}")


def prompt_items(prompts: Sequence[Prompt], samples_per_prompt: int = VBENCH_SAMPLES_PER_PROMPT,
                 base_seed: int = 0) -> list[WorkItem]:
    """`samples_per_prompt` t2v videos per prompt, named f"{stem}-{i}.mp4", prompt-major."""
    if isinstance(samples_per_prompt, bool) or not isinstance(samples_per_prompt, int) or not 1 <= samples_per_prompt <= SEED_STRIDE:
        raise FlowcacheError(f"samples per prompt {samples_per_prompt!r} must be in 1..{SEED_STRIDE}")
    _check_base_seed(base_seed, max((p.index for p in prompts), default=0), samples_per_prompt - 1)
    pairs = [(p, i) for p in prompts for i in range(samples_per_prompt)]
    return [WorkItem(k, p.text, f"{p.stem}-{i}.mp4", _seed(base_seed, p.index, i), p.index, i)
            for k, (p, i) in enumerate(pairs)]


def physicsiq_items(rows: Sequence[PhysicsIQRow], dataset_dir: str | os.PathLike, mode: str,
                    model_fps: int, base_seed: int = 0) -> list[WorkItem]:
    """One video per take-1 row, named by its generated_video_name; i2v from the switch frame, v2v from the
    conditioning video of the folder `choose_conditioning_fps` picks."""
    if mode not in PHYSICSIQ_MODES:
        raise FlowcacheError(f"PhysicsIQ mode {mode!r} unknown (allowed: {', '.join(PHYSICSIQ_MODES)})")
    _check_base_seed(base_seed, max((r.index for r in rows), default=0), 0)
    root = Path(dataset_dir)
    fps = choose_conditioning_fps(conditioning_fps_folders(root), model_fps) if mode == "v2v" else None
    return [WorkItem(k, r.description, r.generated_video_name, _seed(base_seed, r.index, 0), r.index, 0, mode,
                     image=r.switch_frame(root) if mode == "i2v" else None,
                     prefix_video=r.conditioning_video(root, fps) if fps else None, prefix_fps=fps)
            for k, r in enumerate(rows)]


def limit_items(items: Sequence[WorkItem], limit: int | None) -> list[WorkItem]:
    if limit is None:
        return list(items)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise FlowcacheError(f"limit {limit!r} must be an integer >= 1")
    return list(items[:limit])


def check_inputs(items: Iterable[WorkItem]) -> None:
    """Fail before any sampling when an input file of these items is missing."""
    missing = [p for it in items for p in (it.image, it.prefix_video) if p is not None and not p.is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise FlowcacheError(f"PhysicsIQ input {missing[0]} does not exist{more}")


# ----------------------------------------------------------------------------------------------- sharding


@dataclass(frozen=True)
class Shard:
    """This process's share: work item k is ours iff k % count == index. torchrun: the process group's ranks."""

    index: int = 0
    count: int = 1
    distributed: bool = False  # launched by torchrun with WORLD_SIZE > 1 (a barrier is available)
    local_rank: int = 0

    def take(self, items: Sequence[WorkItem]) -> list[WorkItem]:
        return [it for it in items if it.key % self.count == self.index]


def parse_shard(text: str) -> Shard:
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise FlowcacheError(f"shard {text!r} must be 'i/n' with 0 <= i < n (e.g. 0/2)")
    return Shard(int(m.group(1)), int(m.group(2)))


def resolve_shard(text: str | None, env: Mapping[str, str] = os.environ) -> Shard:
    """--shard i/n, else torchrun's RANK/WORLD_SIZE, else the whole set. Both at once is an error."""
    world = env.get("WORLD_SIZE")
    if world is not None:
        try:
            count, index, local = int(world), int(env.get("RANK", "0")), int(env.get("LOCAL_RANK", "0"))
        except ValueError:
            raise FlowcacheError(f"WORLD_SIZE={world!r} / RANK={env.get('RANK')!r} are not integers") from None
        if count > 1:
            if text is not None:
                raise FlowcacheError(f"--shard {text} given under torchrun (WORLD_SIZE={count}); use one or the other")
            if not 0 <= index < count:
                raise FlowcacheError(f"RANK={index} is outside 0..{count - 1} (WORLD_SIZE={count})")
            return Shard(index, count, distributed=True, local_rank=local)
    return parse_shard(text) if text is not None else Shard()


# ----------------------------------------------------------------------------------------------- sampling


@dataclass
class SamplingSettings:
    """What every video of a run shares. `keep_frames`: trim each video to exactly this many frames
    (PhysicsIQ: fps*5); a video shorter than that is an error."""

    cache: object  # a CacheConfig request; each video records what it resolved to
    num_steps: int | None = None
    num_frames: int | None = None
    device: str = "cpu"
    lossless: bool = False
    keep_frames: int | None = None


@dataclass(frozen=True)
class ItemDone:
    """Progress event: item `done` of `total` of this process finished (skipped: it was already there, or
    another run is making it)."""

    item: WorkItem
    done: int
    total: int
    skipped: bool
    seconds: float
    elsewhere: bool = False  # skipped because another live run on the same folder is making it


@dataclass
class SamplingSummary:
    generated: int = 0
    skipped: int = 0
    seconds: float = 0.0
    removed_temp_files: int = 0
    elsewhere: int = 0  # being made by another live run on the same folder (not waited for)
    files: list[str] = field(default_factory=list)


def load_inputs(item: WorkItem, height: int, width: int, fps: int) -> dict:
    """The generate() keyword arguments for an item's image / prefix video, at the model's size and fps."""
    from flowcache_core.video import read_image, read_video

    if item.image is not None:
        return {"image": resize_frames(read_image(item.image), height, width)}
    if item.prefix_video is not None:
        frames, file_fps = read_video(item.prefix_video)
        src = item.prefix_fps or file_fps
        return {"prefix_video": resize_frames(resample_fps(frames, src, fps), height, width)}
    return {}


def manifest_path(output_dir: Path, rank: int) -> Path:
    return output_dir / f"manifest.rank{rank}.jsonl"


def sample_items(items: Sequence[WorkItem], output_dir: str | os.PathLike, settings: SamplingSettings, *,
                 bundle, rank: int = 0, generate_fn: Callable | None = None,
                 on_progress: Callable[[ItemDone], None] | None = None) -> SamplingSummary:
    """Generate every item whose video is missing from `output_dir`; one manifest line per new video.

    `generate_fn` has `flowcache_core.api.generate`'s signature (the default); `bundle` is loaded once by the
    caller. i2v: api.generate returns the given image as frame 0; it is dropped (the conditioning part).
    """
    from flowcache_core.api import generate
    from flowcache_core.video import write_video

    generate_fn = generate_fn or generate
    out = Path(output_dir)
    v = FAMILIES[bundle.family].video(bundle.config)
    height, width, fps = v["height"], v["width"], v["fps"]
    summary = SamplingSummary()
    t_start = time.perf_counter()
    try:
        manifest = open(manifest_path(out, rank), "a", encoding="utf-8")
    except OSError as e:  # e.g. a folder of that name
        raise FlowcacheError(f"cannot append to manifest {manifest_path(out, rank)}: {e.strerror}") from None
    with manifest:
        for n, item in enumerate(items, start=1):
            path = out / item.file
            summary.files.append(item.file)
            if path.exists():
                if path.with_name(f".{path.name}.lock").exists():  # a run killed after the rename left it
                    with claim(path):
                        pass  # removed if no live run holds it
                summary.skipped += 1
                if on_progress:
                    on_progress(ItemDone(item, n, len(items), True, 0.0))
                continue
            # Runs sharing the folder split the work: an item is made by the run that claims it.
            with claim(path) as mine:
                if not mine:
                    summary.elsewhere += 1
                    if on_progress:
                        on_progress(ItemDone(item, n, len(items), True, 0.0, elsewhere=True))
                    continue
                if path.exists():  # finished by another run between the check and the claim
                    summary.skipped += 1
                    if on_progress:
                        on_progress(ItemDone(item, n, len(items), True, 0.0))
                    continue
                summary.removed_temp_files += remove_stale_temps(path)  # a killed run's; no live run writes it
                _sample_one(item, path, n, len(items), settings, bundle, rank, generate_fn, write_video, manifest,
                            height, width, fps, summary, on_progress)
    summary.seconds = time.perf_counter() - t_start
    return summary


def _sample_one(item, path, n, count, settings, bundle, rank, generate_fn, write_video, manifest, height, width, fps,
                summary, on_progress) -> None:
    """Generate, write and record one claimed item."""
    v = FAMILIES[bundle.family].video(bundle.config)
    t0 = time.perf_counter()
    res = generate_fn(item.prompt, mode=item.mode, cache=settings.cache, bundle=bundle, seed=item.seed,
                      num_steps=settings.num_steps, num_frames=settings.num_frames, device=settings.device,
                      **load_inputs(item, height, width, fps))
    frames = res.frames[1:] if item.mode == "i2v" else res.frames
    if settings.keep_frames is not None:
        if len(frames) < settings.keep_frames:
            raise FlowcacheError(f"{item.file}: the model made {len(frames)} frames, {settings.keep_frames} needed")
        frames = frames[: settings.keep_frames]
    write_video(path, frames, res.fps, lossless=settings.lossless)
    seconds = time.perf_counter() - t0
    rec = res.record
    line = {
        "file": item.file, "prompt": item.prompt, "seed": item.seed, "prompt_index": item.prompt_index,
        "sample": item.sample, "mode": item.mode, "key": item.key, "rank": rank,
        "inputs": {k: str(v) for k, v in (("image", item.image), ("prefix_video", item.prefix_video)) if v},
        "prefix_fps": item.prefix_fps, "cache": {"policy": res.cache.policy, **res.cache.options()},
        "num_steps": settings.num_steps or v["num_steps"], "frames": int(len(frames)), "fps": res.fps,
        "seconds": round(seconds, 4), "sampler_seconds": round(rec.seconds, 4), "forwards": rec.forwards,
        "chunk_forwards_computed": rec.computed_chunk_forwards,
        "chunk_forwards_skipped": rec.chunk_forwards - rec.computed_chunk_forwards,
        "computed": {str(k): v for k, v in rec.computed.items()},
        "reused": {str(k): v for k, v in rec.reused.items()},
        "finished_at": time.time(),
    }  # fmt: skip
    manifest.write(json.dumps(line, ensure_ascii=False) + "\n")
    manifest.flush()
    os.fsync(manifest.fileno())
    summary.generated += 1
    if on_progress:
        on_progress(ItemDone(item, n, count, False, seconds))


def _manifest_records(part: Path) -> list[dict]:
    """The records of a `manifest.rank{r}.jsonl`, each checked: an object whose "file" is a plain file
    name and whose "finished_at", if present, a number. A line that is not JSON was cut by a killed process and
    is skipped; a JSON line of another shape was written by something else, and is refused."""
    text = read_user_text(part, "manifest", expected=" (expected one JSON object a line)")
    found = []
    for number, ln in enumerate(text.splitlines(), start=1):
        try:
            rec = json.loads(ln)
        except json.JSONDecodeError:  # a line cut by a killed process
            continue
        file = rec.get("file") if isinstance(rec, dict) else None
        if not isinstance(file, str) or not file or _UNSAFE.search(file):
            raise FlowcacheError(f"manifest {part} line {number}: expected an object with \"file\" a plain file name, "
                                 f"got {shown(rec)} (remove the line, or the file, to rebuild it)")
        finished = rec.get("finished_at", 0)
        if isinstance(finished, bool) or not isinstance(finished, (int, float)):
            raise FlowcacheError(f"manifest {part} line {number}: \"finished_at\" expected a number (a time), got "
                                 f"{shown(finished)} (remove the line to rebuild it)")
        found.append(rec)
    return found


def merge_manifests(output_dir: str | os.PathLike, items: Sequence[WorkItem], meta: Mapping | None = None) -> Path:
    """Fold every `manifest.rank*.jsonl` of `output_dir` into `manifest.json` (atomic write).

    Records are keyed by file (the newest wins) and kept only while the video exists. A video of `items`
    that exists without a record (its process died between the rename and the manifest line) is listed
    with `"record": null`. `complete` says whether every video of `items` exists.
    """

    out = Path(output_dir)
    records: dict[str, dict] = {}
    for part in sorted(out.glob("manifest.rank*.jsonl")):
        for rec in _manifest_records(part):
            old = records.get(rec["file"])
            if old is None or rec.get("finished_at", 0) >= old.get("finished_at", 0):
                records[rec["file"]] = rec
    videos = {f: r for f, r in records.items() if (out / f).is_file()}
    for it in items:
        if it.file not in videos and (out / it.file).is_file():
            videos[it.file] = {"file": it.file, "prompt": it.prompt, "seed": it.seed, "prompt_index": it.prompt_index,
                               "sample": it.sample, "mode": it.mode, "key": it.key, "record": None}
    missing = [it.file for it in items if not (out / it.file).is_file()]
    order = {it.file: it.key for it in items}
    listed = sorted(videos.values(), key=lambda r: (order.get(r["file"], len(order)), r["file"]))
    doc = {**(meta or {}), "expected": len(items), "present": len(items) - len(missing),
           "complete": not missing, "missing": missing, "videos": listed}
    return atomic_write_text(out / MANIFEST, json.dumps(doc, indent=1, ensure_ascii=False) + "\n")


def prepare_output_dir(output_dir: str | os.PathLike) -> Path:
    """A benchmark's output folder: created with its parents (a sample set often goes to a new tree)."""
    return make_output_dir(output_dir, parents=True)


# ----------------------------------------------------------------------------------------------- processes


def init_distributed(shard: Shard, device: str) -> str:
    """Under torchrun (WORLD_SIZE > 1): join the process group (NCCL on CUDA, else gloo) so rank 0 can wait
    for everyone before merging the manifests. Returns the device this rank uses (cuda -> cuda:LOCAL_RANK)."""
    import datetime

    import torch
    import torch.distributed as dist

    from flowcache_core.checks import check_device

    if not shard.distributed:
        return device
    if device == "cuda":
        device = check_device(f"cuda:{shard.local_rank}", "--device cuda on local rank")
    backend, bound = "gloo", {}
    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.set_device(torch.device(device))
        # NCCL told which GPU is this rank's: it need not guess from the rank (and warn) at the barrier
        backend, bound = "nccl", {"device_id": torch.device(device)}
    if not dist.is_initialized():  # runs differ in length across ranks by up to a video: a generous timeout
        dist.init_process_group(backend, timeout=datetime.timedelta(hours=12), **bound)
    return device


def finish_distributed(shard: Shard) -> None:
    import torch.distributed as dist

    if shard.distributed and dist.is_initialized():
        dist.barrier()


def close_distributed(shard: Shard) -> None:
    import torch.distributed as dist

    if shard.distributed and dist.is_initialized():
        dist.destroy_process_group()


__all__ = [
    "SEED_STRIDE", "Prompt", "safe_stem", "vbench_entries", "vbench_prompts", "vbench_dimensions",
    "filter_dimensions", "read_prompt_file", "PhysicsIQRow", "read_physicsiq", "choose_conditioning_fps",
    "resample_fps", "resize_frames", "WorkItem", "prompt_items", "physicsiq_items", "limit_items",
    "check_inputs", "Shard", "parse_shard", "resolve_shard", "SamplingSettings", "ItemDone",
    "SamplingSummary", "sample_items", "merge_manifests", "prepare_output_dir", "init_distributed",
    "finish_distributed", "close_distributed",
]
