"""`flowcache sample-benchmark` end to end with the tiny random bundle: names, shards, kill/resume, torchrun, PhysicsIQ."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from flowcache_cli.main import app
from flowcache_core.eval import benchmarks as bm
from flowcache_core.video import read_video
from test_benchmarks import write_physicsiq

runner = CliRunner()
PROMPTS = ["a red ball bounces", "a blue cube slides left", "a green ball rolls", "two balls collide",
           "a square falls", "a red ball bounces"]  # the duplicate is sampled once  # fmt: skip


def invoke(*args):
    return runner.invoke(app, ["sample-benchmark", *[str(a) for a in args]])


def one_error_line(result) -> str:
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


def videos(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.suffix == ".mp4" and not p.name.startswith(".")}


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.startswith(".")]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread, as torchrun's workers use (same float sums, so the same frames), and far steadier
    than two when other processes share the 2 cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    p.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    return p


def sub_env() -> dict:
    # one thread per process: the same float sums as torchrun's workers, and steadier on 2 busy cores
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


@pytest.fixture(scope="module")
def reference(tiny_bundle_dir, prompt_file, tmp_path_factory) -> Path:
    """The unsharded set (5 prompts x 2 samples), one process, one thread, lossless."""
    out = tmp_path_factory.mktemp("ref")
    r = invoke("vbench", "--prompt-file", prompt_file, "--samples-per-prompt", 2, "--checkpoint-dir",
               tiny_bundle_dir, "--output-dir", out, "--lossless", "--quiet")
    assert r.exit_code == 0, r.output
    return out


def test_names_and_manifest(reference):
    expected = {f"{p}-{i}.mp4" for p in PROMPTS for i in range(2)}
    assert videos(reference) == expected and no_temp_files(reference)
    doc = json.loads((reference / "manifest.json").read_text())
    assert doc["complete"] and doc["expected"] == 10 and len(doc["videos"]) == 10
    assert {v["file"] for v in doc["videos"]} == expected
    first = doc["videos"][0]
    assert first["seed"] == 0 and doc["videos"][1]["seed"] == 1 and doc["videos"][2]["seed"] == bm.SEED_STRIDE
    assert first["cache"]["policy"] == "none" and first["chunk_forwards_computed"] > 0 and first["frames"] == 16


def test_vbench_dimension_names(tiny_bundle_dir, tmp_path):
    r = invoke("vbench", "--dimension", "temporal_flickering", "--samples-per-prompt", 1, "--limit", 2,
               "--checkpoint-dir", tiny_bundle_dir, "--output-dir", tmp_path, "--quiet", "--cache", "flowcache")
    assert r.exit_code == 0, r.output
    want = [p.text for p in bm.vbench_prompts() if "temporal_flickering" in p.dimensions][:2]
    assert videos(tmp_path) == {f"{p}-0.mp4" for p in want}
    doc = json.loads((tmp_path / "manifest.json").read_text())
    assert doc["videos"][0]["cache"]["policy"] == "flowcache"


def test_shards_cover_the_unsharded_set(tiny_bundle_dir, prompt_file, reference, tmp_path):
    for i in (0, 1):
        r = invoke("vbench", "--prompt-file", prompt_file, "--samples-per-prompt", 2, "--checkpoint-dir",
                   tiny_bundle_dir, "--output-dir", tmp_path / str(i), "--lossless", "--quiet", "--shard", f"{i}/2")
        assert r.exit_code == 0, r.output
    a, b = videos(tmp_path / "0"), videos(tmp_path / "1")
    assert not a & b and a | b == videos(reference) and len(a) == 5
    for name in a:  # same seeds whatever the shard: same videos
        assert np.array_equal(read_video(tmp_path / "0" / name)[0], read_video(reference / name)[0])


@pytest.mark.slow
def test_killed_run_resumes(tiny_bundle_dir, prompt_file, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "flowcache_cli.main", "sample-benchmark", "vbench", "--prompt-file", str(prompt_file),
           "--samples-per-prompt", "2", "--checkpoint-dir", str(tiny_bundle_dir), "--output-dir", str(out), "--quiet"]
    proc = subprocess.Popen(cmd, env=sub_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None and not (out.is_dir() and videos(out)):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = videos(out)
    assert 1 <= len(first) < 10, proc.stdout.read().decode()
    r = subprocess.run(cmd, env=sub_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{10 - len(first)} generated, {len(first)} already there" in r.stdout
    assert videos(out) == {f"{p}-{i}.mp4" for p in PROMPTS for i in range(2)}
    assert no_temp_files(out)
    for name in videos(out):
        frames, fps = read_video(out / name)
        assert frames.shape == (16, 64, 64, 3) and fps == 12
    doc = json.loads((out / "manifest.json").read_text())
    assert doc["complete"] and sorted(v["file"] for v in doc["videos"]) == sorted(videos(out))


@pytest.mark.slow
def test_torchrun_two_processes(tiny_bundle_dir, prompt_file, reference, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "flowcache_cli.main", "sample-benchmark",
           "vbench", "--prompt-file", str(prompt_file), "--samples-per-prompt", "2", "--checkpoint-dir",
           str(tiny_bundle_dir), "--output-dir", str(out), "--lossless", "--quiet"]  # fmt: skip
    r = subprocess.run(cmd, env=sub_env(), capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    assert videos(out) == videos(reference) and no_temp_files(out)
    assert sorted(p.name for p in out.glob("manifest*")) == ["manifest.json", "manifest.rank0.jsonl", "manifest.rank1.jsonl"]
    doc = json.loads((out / "manifest.json").read_text())
    assert doc["complete"] and doc["shards"] == 2 and len(doc["videos"]) == 10
    assert {v["rank"] for v in doc["videos"]} == {0, 1}
    for name in videos(out):  # seeds do not depend on the rank: the same frames as the 1-process run
        assert np.array_equal(read_video(out / name)[0], read_video(reference / name)[0]), name


@pytest.fixture(scope="module")
def physicsiq_dir(tmp_path_factory) -> Path:
    """2 take-1 scenarios (+1 take-2 row), 96x54 inputs, conditioning videos at 8 and 24 fps."""
    data = tmp_path_factory.mktemp("PhysicsIQ")
    write_physicsiq(data, [("0001", "perspective-left", "trimmed-ball"), ("0002", "perspective-center", "trimmed-cup")])
    return data


@pytest.mark.parametrize("mode", ["v2v", "i2v"])
def test_physicsiq_synthetic(tiny_bundle_dir, physicsiq_dir, tmp_path, mode):
    out = tmp_path / "out"
    r = invoke("physicsiq", "--dataset-dir", physicsiq_dir, "--mode", mode, "--checkpoint-dir", tiny_bundle_dir,
               "--output-dir", out, "--num-steps", 4)
    assert r.exit_code == 0, r.output
    if mode == "v2v":
        assert "24FPS" in r.output
    assert videos(out) == {"0001_perspective-left_trimmed-ball.mp4", "0002_perspective-center_trimmed-cup.mp4"}
    for name in videos(out):
        frames, fps = read_video(out / name)
        assert frames.shape == (12 * 5, 64, 64, 3) and fps == 12  # exactly 5 s at the model's fps
    doc = json.loads((out / "manifest.json").read_text())
    assert doc["complete"] and all(v["mode"] == mode and v["frames"] == 60 for v in doc["videos"])


@pytest.mark.parametrize("args, needle", [
    (["vbench", "--dimension", "flicker"], "temporal_flickering"),
    (["vbench", "--dimension", ""], "needs a value"),
    (["vbench", "--prompt-file", "EMPTY"], "no prompts"),
    (["vbench", "--shard", "2/2"], "i/n"),
    (["vbench", "--shard", "a/b"], "i/n"),
    (["vbench", "--samples-per-prompt", "0"], "samples per prompt"),
    (["vbench", "--cache", "fast"], "--cache"),
    (["vbench", "--rel-l1-thresh", "-1"], "--rel-l1-thresh"),
    (["physicsiq", "--dataset-dir", "MISSING"], "does not exist"),
    (["physicsiq", "--dataset-dir", "TMP"], "descriptions.csv"),
    (["physicsiq", "--dataset-dir", "TMP", "--mode", "t2v"], "allowed: i2v, v2v"),
    # issue 16 item 5: these gave a traceback (exit 1), or ran
    (["vbench", "--device", "cuda:99"], "--device 'cuda:99'"),  # no CUDA, or fewer than 100 devices
    (["vbench", "--device", "foo"], "--device 'foo' is not a torch device"),
    (["vbench", "--seed", str(2**70)], "--seed: expected an integer in [0, 18446744073709551615]"),
    (["vbench", "--seed", str(2**64 - 1)], "video seeds are seed + 1000*prompt + sample"),
    (["vbench", "--num-frames", "0"], "--num-frames"),
    (["vbench", "--num-steps", "5000"], "--num-steps"),
    (["vbench", "--prompt-file", "NUL"], "NUL bytes"),
    (["physicsiq", "--dataset-dir", "DUPLICATE"], "is already the output of line 2"),
])  # fmt: skip
def test_bad_input_one_line_exit_2(tmp_path, args, needle):
    (tmp_path / "empty.txt").write_text("\n")
    (tmp_path / "nul.txt").write_bytes(b"a red ball\n" + b"\x00" * 64)
    dup = tmp_path / "dup"
    dup.mkdir()
    (dup / "descriptions.csv").write_text(
        "scenario,description,category,generated_video_name\n"
        "0001_perspective-left_take-1_ball.mp4,a ball,Solid,0001_ball.mp4\n"
        "0002_perspective-left_take-1_cup.mp4,a cup,Solid,0001_ball.mp4\n")
    subs = {"EMPTY": tmp_path / "empty.txt", "MISSING": tmp_path / "missing", "TMP": tmp_path,
            "NUL": tmp_path / "nul.txt", "DUPLICATE": dup}
    r = invoke(*[subs.get(a, a) for a in args], "--output-dir", tmp_path / "out")
    assert r.exit_code == 2
    assert needle in one_error_line(r)
    assert not (tmp_path / "out").exists() or not videos(tmp_path / "out")


def test_missing_dimension_value_exits_2(tmp_path):
    r = invoke("vbench", "--output-dir", tmp_path, "--dimension")
    assert r.exit_code == 2 and "--dimension" in r.output


def test_bad_manifest_line_is_one_line_exit_2(tiny_bundle_dir, tmp_path):
    """A manifest.rank0.jsonl line of the wrong shape (edited by hand) was a TypeError at the merge."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.rank0.jsonl").write_text('{"file": ["a.mp4"], "finished_at": 1}\n')
    (tmp_path / "p.txt").write_text("a red ball\n")
    r = invoke("vbench", "--prompt-file", tmp_path / "p.txt", "--samples-per-prompt", 1, "--num-steps", 4,
               "--checkpoint-dir", tiny_bundle_dir, "--output-dir", out, "--quiet")
    assert r.exit_code == 2
    line = one_error_line(r)
    assert "manifest.rank0.jsonl line 1" in line and '"file" a plain file name' in line


def test_prompt_file_byte_order_mark_is_not_part_of_the_prompt(tmp_path):
    f = tmp_path / "p.txt"
    f.write_bytes("a red ball\nb\n".encode("utf-8-sig"))  # as Notepad saves UTF-8
    assert [p.text for p in bm.read_prompt_file(f)] == ["a red ball", "b"]
    assert [it.file for it in bm.prompt_items(bm.read_prompt_file(f), 1)] == ["a red ball-0.mp4", "b-0.mp4"]


@pytest.mark.parametrize("args, needle", [
    (["vbench", "--num-steps", "5"], "multiple of window_size"),  # checked only after the model loaded
    (["vbench", "--num-frames", str(10**12)], "--num-frames"),  # more frames than memory
    (["physicsiq", "--dataset-dir", "PIQ", "--num-frames", "3"], "shorter than PhysicsIQ's 5 s"),
    (["vbench", "--rel-l1-thresh", "0.1", "--cache", "flowcache", "--total-cache-chunk-nums", "2"], "window_size"),
])  # fmt: skip
def test_checks_run_before_anything_is_created_on_disk(tiny_bundle_dir, physicsiq_dir, tmp_path, args, needle):
    """Issue 21 item 7: these failed after the model loaded, leaving an empty output tree and manifest.rank0.jsonl."""
    out = tmp_path / "new" / "out"
    r = invoke(*[str(physicsiq_dir) if a == "PIQ" else a for a in args], "--checkpoint-dir", tiny_bundle_dir,
               "--output-dir", out)
    assert r.exit_code == 2
    assert needle in one_error_line(r)
    assert not (tmp_path / "new").exists()


@pytest.mark.slow
def test_two_runs_on_one_folder_split_the_work(tiny_bundle_dir, prompt_file, reference, tmp_path):
    """Issue 21 item 9: two concurrent runs on one output folder used to both make every video."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "flowcache_cli.main", "sample-benchmark", "vbench", "--prompt-file", str(prompt_file),
           "--samples-per-prompt", "2", "--checkpoint-dir", str(tiny_bundle_dir), "--output-dir", str(out), "--lossless",
           "--quiet"]
    procs = [subprocess.Popen(cmd, env=sub_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    made = [int(re.search(r"(\d+) generated", o).group(1)) for o in outputs]
    assert sum(made) == 10, outputs  # each video made once
    assert videos(out) == videos(reference) and no_temp_files(out)
    for name in videos(out):  # same seeds: the same videos as one run makes
        assert np.array_equal(read_video(out / name)[0], read_video(reference / name)[0])
    records = [json.loads(ln) for ln in (out / "manifest.rank0.jsonl").read_text().splitlines()]
    assert sorted(r["file"] for r in records) == sorted(videos(out))  # one line per video, none twice
    doc = json.loads((out / "manifest.json").read_text())
    assert doc["complete"] and len(doc["videos"]) == 10
