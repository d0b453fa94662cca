"""flowcache_core.eval.benchmarks without the model: prompt lists, names, seeds, shards, PhysicsIQ reader, manifests."""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from flowcache_core.eval import benchmarks as bm
from flowcache_core.errors import FlowcacheError
from flowcache_core.video import read_video

SHARED_CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "physics_iq_descriptions.csv"


def test_vbench_list_counts():
    entries = bm.vbench_entries()
    assert len(entries) == 946
    prompts = bm.vbench_prompts()
    assert len(prompts) == 944 == len({e["prompt_en"] for e in entries})
    assert len(bm.vbench_dimensions()) == 16
    assert all(p.stem == p.text for p in prompts)  # VBench's evaluator looks names up verbatim
    dup = next(p for p in prompts if p.text == "The bund Shanghai, oil painting")
    assert set(dup.dimensions) == {"appearance_style", "overall_consistency", "aesthetic_quality", "imaging_quality"}
    assert [p.index for p in prompts] == list(range(944))


def test_names_and_seeds():
    prompts = bm.vbench_prompts()
    items = bm.prompt_items(prompts, 5, base_seed=7)
    assert len(items) == 944 * 5 == len({it.file for it in items})
    assert items[0].file == f"{prompts[0].text}-0.mp4" and items[4].file == f"{prompts[0].text}-4.mp4"
    assert all(it.seed == 7 + bm.SEED_STRIDE * it.prompt_index + it.sample for it in items)
    assert len({it.seed for it in items}) == len(items)
    # a dimension subset keeps the full list's seeds and names
    full = {it.file: it.seed for it in items}
    sub = bm.prompt_items(bm.filter_dimensions(prompts, ["temporal_flickering"]), 5, base_seed=7)
    assert 0 < len(sub) < len(items) and all(full[it.file] == it.seed for it in sub)


def test_seeds_do_not_depend_on_sharding():
    items = bm.prompt_items(bm.vbench_prompts()[:10], 3)
    by_file = {it.file: it.seed for it in items}
    for n in (1, 2, 3, 7):
        for i in range(n):
            assert all(by_file[it.file] == it.seed for it in bm.Shard(i, n).take(items))


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_shards_cover_the_set_without_overlap(n):
    items = bm.prompt_items(bm.vbench_prompts()[:7], 2)
    parts = [[it.key for it in bm.Shard(i, n).take(items)] for i in range(n)]
    flat = [k for p in parts for k in p]
    assert sorted(flat) == list(range(len(items))) and len(flat) == len(set(flat))


@pytest.mark.parametrize("text", ["2/2", "a/b", "1-2", "", "0/0", "-1/2", "1/2/3"])
def test_bad_shard(text):
    with pytest.raises(FlowcacheError, match="i/n"):
        bm.parse_shard(text)


def test_resolve_shard_from_torchrun_env():
    assert bm.resolve_shard(None, {}) == bm.Shard(0, 1)
    assert bm.resolve_shard("1/3", {}) == bm.Shard(1, 3)
    s = bm.resolve_shard(None, {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"})
    assert (s.index, s.count, s.distributed) == (1, 2, True)
    assert bm.resolve_shard("0/2", {"WORLD_SIZE": "1", "RANK": "0"}) == bm.Shard(0, 2)
    with pytest.raises(FlowcacheError, match="torchrun"):
        bm.resolve_shard("0/2", {"WORLD_SIZE": "2", "RANK": "0"})


def test_safe_stem():
    taken: set[str] = set()
    assert bm.safe_stem("a cat", 180, taken) == "a cat"
    s = bm.safe_stem("a/cat", 180, taken)
    assert "/" not in s and s.startswith("a_cat~")
    assert bm.safe_stem("a_cat", 180, taken) == "a_cat"  # the verbatim name stays free for its own prompt
    assert not bm.safe_stem(".hidden", 180, taken).startswith(".")
    assert bm.safe_stem("A CAT", 180, taken).startswith("A CAT~")  # case-insensitive clash with "a cat"
    long = "é" * 300
    t1, t2 = bm.safe_stem(long, 180, taken), bm.safe_stem(long + "x", 180, taken)
    assert len(t1.encode()) <= 180 and len(t2.encode()) <= 180 and t1 != t2
    assert "\\" not in bm.safe_stem("a\\b\nc", 180, taken)


def test_prompt_file(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("  a red ball  \n\nb/c\na red ball\n" + "x" * 400 + "\n", encoding="utf-8")
    prompts = bm.read_prompt_file(f)
    assert [p.text for p in prompts] == ["a red ball", "b/c", "x" * 400]
    items = bm.prompt_items(prompts, 3)
    assert all(len(it.file.encode()) <= 200 and "/" not in it.file for it in items)
    assert len({it.file for it in items}) == 9
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(FlowcacheError, match="no prompts"):
        bm.read_prompt_file(tmp_path / "empty.txt")
    with pytest.raises(FlowcacheError, match="does not exist"):
        bm.read_prompt_file(tmp_path / "nope.txt")


def test_dimension_filter_errors():
    with pytest.raises(FlowcacheError, match="allowed: .*temporal_flickering"):
        bm.filter_dimensions(bm.vbench_prompts(), ["flicker"])
    with pytest.raises(FlowcacheError):
        bm.prompt_items(bm.vbench_prompts()[:1], 0)


@pytest.mark.skipif(not SHARED_CSV.is_file(), reason="shared PhysicsIQ index not present")
def test_physicsiq_take1_rows_of_the_real_index(tmp_path):
    (tmp_path / "descriptions.csv").write_bytes(SHARED_CSV.read_bytes())
    rows = bm.read_physicsiq(tmp_path)
    assert len(rows) == 198 and all("_take-1_" in r.scenario for r in rows)
    assert len({r.generated_video_name for r in rows}) == 198
    r = rows[0]
    assert r.generated_video_name == "0001_perspective-left_trimmed-ball-and-block-fall.mp4"
    assert r.switch_frame(tmp_path).name == "0001_switch-frames_anyFPS_perspective-left_trimmed-ball-and-block-fall.jpg"
    assert r.conditioning_video(tmp_path, 30).name == \
        "0001_conditioning-videos_30FPS_perspective-left_take-1_trimmed-ball-and-block-fall.mp4"


def test_physicsiq_reader_errors(tmp_path):
    with pytest.raises(FlowcacheError, match="does not exist"):
        bm.read_physicsiq(tmp_path / "nope")
    with pytest.raises(FlowcacheError, match="no descriptions.csv"):
        bm.read_physicsiq(tmp_path)
    (tmp_path / "descriptions.csv").write_text("scenario,description\nx,y\n")
    with pytest.raises(FlowcacheError, match="generated_video_name"):
        bm.read_physicsiq(tmp_path)


def test_conditioning_fps_choice_and_resampling():
    assert bm.choose_conditioning_fps([8, 16, 24, 30], 12) == 24  # exact decimation beats the nearest
    assert bm.choose_conditioning_fps([8, 16, 24, 30], 24) == 24
    assert bm.choose_conditioning_fps([8, 16, 30], 12) == 16  # tie 8/16: the higher
    assert bm.choose_conditioning_fps([30], 12) == 30
    with pytest.raises(FlowcacheError, match="i2v"):
        bm.choose_conditioning_fps([], 12)
    frames = np.arange(72)[:, None, None, None].astype(np.uint8) * np.ones((1, 2, 2, 3), np.uint8)
    assert list(bm.resample_fps(frames, 24, 12)[:, 0, 0, 0]) == list(range(0, 72, 2))
    assert len(bm.resample_fps(np.zeros((90, 2, 2, 3), np.uint8), 30, 12)) == 36  # 3 s at 30 fps -> 3 s at 12
    assert bm.resize_frames(np.zeros((5, 54, 96, 3), np.uint8), 64, 64).shape == (5, 64, 64, 3)


# ------------------------------------------------------------------------------------- loop with a fake model


@dataclass
class _Record:
    computed: dict = field(default_factory=lambda: {0: 2})
    reused: dict = field(default_factory=lambda: {0: 1})
    forwards: int = 3
    seconds: float = 0.01
    computed_chunk_forwards: int = 2
    chunk_forwards: int = 3


@dataclass
class _Result:
    frames: np.ndarray
    fps: int
    record: _Record
    cache: object = None  # what ran: the manifest records it


class _Runtime:
    video_size_h, video_size_w, fps, num_steps, num_frames, chunk_width, window_size = 16, 16, 8, 4, 8, 1, 1


class _Bundle:
    family = "magi1"  # what the samplers read of the config goes through the family (Family.video)

    class config:  # noqa: N801
        runtime = _Runtime


def fake_generate(prompt, *, seed, cache, **_):
    from flowcache_core.cache.settings import resolve_cache

    rng = np.random.default_rng(seed)
    return _Result(rng.integers(0, 255, (4, 16, 16, 3), dtype=np.uint8), 8, _Record(), resolve_cache(cache))


def test_sample_items_resumes_and_merges(tmp_path):
    from flowcache_core.cache.settings import CacheConfig

    items = bm.prompt_items(bm.read_prompt_file(_write(tmp_path / "p.txt", "a\nb\nc\n")), 2)
    out = tmp_path / "out"
    out.mkdir()
    settings = bm.SamplingSettings(CacheConfig(), lossless=True)
    (out / f".{items[1].file}.abcd1234.tmp.mp4").write_bytes(b"half")  # a killed run's temp file
    (out / ".other-0.mp4.abcd1234.tmp.mp4").write_bytes(b"not ours")
    s1 = bm.sample_items(items[:3], out, settings, bundle=_Bundle, generate_fn=fake_generate)
    assert (s1.generated, s1.skipped, s1.removed_temp_files) == (3, 0, 1)
    assert (out / ".other-0.mp4.abcd1234.tmp.mp4").exists()
    with open(out / "manifest.rank0.jsonl", "a") as f:
        f.write('{"file": "cut')  # a line cut by a kill
    (out / items[3].file).write_bytes((out / items[0].file).read_bytes())  # a video without a record
    s2 = bm.sample_items(items, out, settings, bundle=_Bundle, generate_fn=fake_generate)
    assert (s2.generated, s2.skipped) == (2, 4)
    doc = json.loads(bm.merge_manifests(out, items, {"benchmark": "t"}).read_text())
    assert doc["complete"] and doc["expected"] == 6
    assert [v["file"] for v in doc["videos"]] == [it.file for it in items]
    assert doc["videos"][3]["record"] is None and doc["videos"][0]["chunk_forwards_skipped"] == 1
    frames, fps = read_video(out / items[5].file)
    assert fps == 8 and np.array_equal(frames, fake_generate("", seed=items[5].seed, cache=None).frames)
    first = json.loads((out / "manifest.rank0.jsonl").read_text().splitlines()[0])
    assert first["cache"] == {"policy": "none", "total_cache_chunk_nums": None}  # what ran, resolved


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def write_physicsiq(root: Path, rows: list[tuple[str, str, str]], fps_folders=(8, 24), size=(54, 96)) -> None:
    """A synthetic PhysicsIQ dataset: rows (id, perspective, name); take-1 inputs, plus one take-2 csv row."""
    from flowcache_core.video import write_image, write_video

    h, w = size
    with open(root / "descriptions.csv", "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["scenario", "description", "category", "generated_video_name"])
        for i, (id_, view, name) in enumerate(rows):
            wr.writerow([f"{id_}_{view}_take-1_{name}.mp4", f"a ball falls {i}", "Solid Mechanics", f"{id_}_{view}_{name}.mp4"])
        id_, view, name = rows[0]
        wr.writerow([f"9{id_[1:]}_{view}_take-2_{name}.mp4", "take two", "Solid Mechanics", f"9{id_[1:]}_{view}_{name}.mp4"])
    (root / "switch-frames").mkdir()
    rng = np.random.default_rng(0)
    for id_, view, name in rows:
        write_image(root / "switch-frames" / f"{id_}_switch-frames_anyFPS_{view}_{name}.jpg",
                    rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        for fps in fps_folders:
            d = root / "split-videos" / "conditioning-videos" / f"{fps}FPS"
            d.mkdir(parents=True, exist_ok=True)
            video = rng.integers(0, 255, (3 * fps, h, w, 3), dtype=np.uint8)
            write_video(d / f"{id_}_conditioning-videos_{fps}FPS_{view}_take-1_{name}.mp4", video, fps)


def test_physicsiq_items(tmp_path):
    write_physicsiq(tmp_path, [("0001", "perspective-left", "trimmed-ball"), ("0002", "perspective-right", "trimmed-cup")])
    rows = bm.read_physicsiq(tmp_path)
    assert [r.generated_video_name for r in rows] == ["0001_perspective-left_trimmed-ball.mp4",
                                                      "0002_perspective-right_trimmed-cup.mp4"]
    v2v = bm.physicsiq_items(rows, tmp_path, "v2v", model_fps=12)
    assert all(it.prefix_fps == 24 and it.prefix_video.is_file() for it in v2v)
    bm.check_inputs(v2v)
    inputs = bm.load_inputs(v2v[0], 64, 64, 12)
    assert inputs["prefix_video"].shape == (36, 64, 64, 3)
    i2v = bm.physicsiq_items(rows, tmp_path, "i2v", model_fps=12)
    assert bm.load_inputs(i2v[1], 64, 64, 12)["image"].shape == (64, 64, 3)
    (i2v[1].image).unlink()
    with pytest.raises(FlowcacheError, match="does not exist"):
        bm.check_inputs(i2v)


def test_physicsiq_csv_with_byte_order_mark(tmp_path):
    """A spreadsheet saves UTF-8 with a BOM: the first column was then '\\ufeffscenario', 'missing'."""
    write_physicsiq(tmp_path, [("0001", "perspective-left", "trimmed-ball")], fps_folders=(8,))
    csv_path = tmp_path / "descriptions.csv"
    csv_path.write_bytes(csv_path.read_text(encoding="utf-8").encode("utf-8-sig"))
    assert [r.generated_video_name for r in bm.read_physicsiq(tmp_path)] == ["0001_perspective-left_trimmed-ball.mp4"]


@pytest.mark.parametrize("line, needle", [
    ('{"file": ["a.mp4"]}', '"file" a plain file name'),
    ('{"file": "../a.mp4"}', '"file" a plain file name'),
    ('[1, 2]', '"file" a plain file name'),
    ('{"file": "a.mp4", "finished_at": "yesterday"}', '"finished_at" expected a number'),
])  # fmt: skip
def test_manifest_lines_of_the_wrong_shape(tmp_path, line, needle):
    (tmp_path / "manifest.rank0.jsonl").write_text('{"file": "b.mp4", "finished_at": 1}\n' + line + "\n")
    with pytest.raises(FlowcacheError, match="manifest .*manifest.rank0.jsonl line 2") as e:
        bm.merge_manifests(tmp_path, [])
    assert needle in str(e.value)


# ----------------------------------------------------------------------------------------------- claims (issue 21 item 9)
def test_claim_is_exclusive_and_a_dead_holders_lock_is_taken_over(tmp_path):
    from flowcache_core.fileio import claim

    target = tmp_path / "a.mp4"
    lock = tmp_path / ".a.mp4.lock"
    with claim(target) as first:
        assert first and lock.read_text().split()[0] == str(os.getpid())
        with claim(target) as second:  # another open file description: as another process would see it
            assert not second
    assert not lock.exists()
    lock.write_text("999999 somehost\n")  # left by a killed process: no one holds the flock
    with claim(target) as mine:
        assert mine
    assert not lock.exists()


def test_sample_items_skips_an_item_another_run_holds(tmp_path):
    from flowcache_core.cache.settings import CacheConfig
    from flowcache_core.fileio import claim

    items = bm.prompt_items(bm.read_prompt_file(_write(tmp_path / "p.txt", "a\nb\n")), 1)
    out = tmp_path / "out"
    out.mkdir()
    settings = bm.SamplingSettings(CacheConfig(), lossless=True)
    (out / f".{items[1].file}.lock").write_text("1 host\n")  # a dead run's lock on b: taken over
    with claim(out / items[0].file):  # a live run makes a
        s = bm.sample_items(items, out, settings, bundle=_Bundle, generate_fn=fake_generate)
    assert (s.generated, s.skipped, s.elsewhere) == (1, 0, 1)
    assert not (out / items[0].file).exists() and (out / items[1].file).exists()
    assert sorted(p.name for p in out.iterdir()) == sorted([items[1].file, "manifest.rank0.jsonl"])
