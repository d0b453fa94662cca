"""`flowcache generate` end to end: real mp4 files from the tiny random bundle (16 frames, 8 steps, 64x64)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from flowcache_cli.main import app
from flowcache_core.video import read_video, write_image, write_video

runner = CliRunner()
PROMPT = "a red circle moves right"
SCHEMA_KEYS = {"forward", "chunks", "tokens_forwarded", "kv"}
CHUNK_KEYS = {"id", "step", "t", "decision", "reason", "rel_l1", "acc"}
REASONS = {"warmup", "entered", "last_step", "threshold", "below_threshold", "none"}


def gen(bundle: Path, out: Path, *args) -> object:
    return runner.invoke(app, ["generate", "--checkpoint-dir", str(bundle), "--output-path", str(out),
                               *[str(a) for a in args]])


def ok(result) -> None:
    assert result.exit_code == 0, (result.output, result.exception)


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def smooth_frames(t: int, seed: int = 0, h: int = 64, w: int = 64) -> np.ndarray:
    """Soft gradients with a moving blob: content H.264 4:2:0 keeps well."""
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    rng = np.random.default_rng(seed)
    base = rng.uniform(40, 200, 3)
    f = np.empty((t, h, w, 3), np.uint8)
    for i in range(t):
        blob = 60 * np.exp(-((xx - 10 - 3 * i) ** 2 + (yy - 32) ** 2) / 80)
        for c in range(3):
            f[i, ..., c] = np.clip(base[c] + 0.5 * xx - 0.3 * yy + blob, 0, 255)
    return f


# ------------------------------------------------------------------------------------------ runs that work
@pytest.fixture(scope="module")
def t2v(tiny_bundle_dir, tmp_path_factory):
    """One t2v run (flowcache, lossless, JSON log, not quiet) shared by several tests."""
    d = tmp_path_factory.mktemp("t2v")
    out, log = d / "out.mp4", d / "log.jsonl"
    result = gen(tiny_bundle_dir, out, "--prompt", PROMPT, "--seed", 3, "--cache", "flowcache", "--lossless",
                 "--rel-l1-thresh", 0.1, "--json-log", log)
    ok(result)
    return out, log, result


def test_t2v_writes_playable_mp4_of_configured_size(t2v):
    out, _, _ = t2v
    frames, fps = read_video(out)
    assert frames.shape == (16, 64, 64, 3)  # the tiny bundle: 16 frames at 64x64
    assert fps == pytest.approx(12)
    assert frames.std() > 1  # a random model still moves the latents
    assert sorted(p.name for p in out.parent.iterdir()) == ["log.jsonl", "out.mp4"]  # no temp files left


def test_t2v_prints_live_lines_and_summary(t2v):
    _, _, result = t2v
    # Not a terminal: one plain progress line per forward (on stderr), then the summary (stdout).
    assert "fwd 1/" in result.stderr and "c0 ■" in result.stderr and "KV " in result.stderr
    assert "□" in result.stderr  # flowcache at rel-L1 0.1 reuses something (the default 0.01 may not, in 14 forwards)
    for word in ("computed", "skipped", "speedup", "peak memory", "process peak RSS", "sampling", "wrote"):
        assert word in result.stdout, word
    assert "Traceback" not in result.output


def test_json_log_one_object_per_forward_with_spec_schema(t2v):
    _, log, result = t2v
    rows = read_log(log)
    assert [r["forward"] for r in rows] == sorted(r["forward"] for r in rows)
    assert len(rows) == result.stderr.count("fwd ")  # one object per (denoising) forward
    for r in rows:
        assert set(r) == SCHEMA_KEYS
        assert set(r["kv"]) == {"used", "budget", "bytes", "budget_bytes"}
        assert r["kv"]["bytes"] > 0 and r["kv"]["budget_bytes"] is None  # no byte budget
        assert r["chunks"]
        for c in r["chunks"]:
            assert set(c) == CHUNK_KEYS
            assert c["decision"] in ("compute", "reuse") and c["reason"] in REASONS
    assert any(c["decision"] == "reuse" for r in rows for c in r["chunks"])


def test_same_seed_same_frames_other_seed_other_frames(t2v, tiny_bundle_dir, tmp_path):
    out, _, _ = t2v
    again, other = tmp_path / "again.mp4", tmp_path / "other.mp4"
    result = gen(tiny_bundle_dir, again, "--prompt", PROMPT, "--seed", 3, "--cache", "flowcache", "--lossless",
                 "--rel-l1-thresh", 0.1, "--quiet")
    ok(result)
    assert result.output.strip() == str(again)  # --quiet: the output path only
    ok(gen(tiny_bundle_dir, other, "--prompt", PROMPT, "--seed", 4, "--cache", "flowcache", "--lossless",
           "--rel-l1-thresh", 0.1, "--quiet"))
    a, b, c = read_video(out)[0], read_video(again)[0], read_video(other)[0]
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_i2v_first_frame_is_the_image(tiny_bundle_dir, tmp_path):
    image = smooth_frames(1, seed=5)[0]
    write_image(tmp_path / "first.png", image)
    out = tmp_path / "i2v.mp4"
    ok(gen(tiny_bundle_dir, out, "--mode", "i2v", "--image", tmp_path / "first.png", "--prompt", PROMPT,
           "--num-frames", 8, "--quiet"))
    frames, _ = read_video(out)
    assert frames.shape == (9, 64, 64, 3)  # the image, then exactly --num-frames (8) generated frames
    err = np.abs(frames[0].astype(int) - image.astype(int))
    assert err.mean() < 2.0 and err.max() < 24  # default H.264 (CRF 12, 4:2:0): codec error only


def test_v2v_outputs_only_the_generated_part(tiny_bundle_dir, tmp_path):
    prefix = tmp_path / "prefix.mp4"
    write_video(prefix, smooth_frames(8, seed=6), 12, lossless=True)  # two chunks of 4 frames
    out = tmp_path / "v2v.mp4"
    ok(gen(tiny_bundle_dir, out, "--mode", "v2v", "--prefix-video", prefix, "--cache", "teacache", "--num-frames", 8,
           "--quiet"))
    frames, _ = read_video(out)
    assert frames.shape == (8, 64, 64, 3)  # --num-frames (8) generated after the prefix, prefix not repeated


@pytest.mark.parametrize("asked", [1, 5])
def test_num_frames_is_exact_not_rounded_up_to_a_chunk(tiny_bundle_dir, tmp_path, asked):
    out = tmp_path / "t2v.mp4"
    ok(gen(tiny_bundle_dir, out, "--prompt", PROMPT, "--num-frames", asked, "--num-steps", 4, "--quiet"))
    assert read_video(out)[0].shape[0] == asked  # chunks of 4 are generated, the extra frames dropped at the end


def test_v2v_num_frames_counts_after_a_partial_prefix(tiny_bundle_dir, tmp_path):
    from flowcache_core.api import generate

    prefix = smooth_frames(5, seed=7)  # one chunk and one frame: the last chunk is partly prefix
    res = generate("", mode="v2v", prefix_video=prefix, checkpoint_dir=tiny_bundle_dir, num_frames=8, num_steps=4)
    assert res.frames.shape == (8, 64, 64, 3)  # not 11 (three whole chunks after the prefix's first)


@pytest.fixture(scope="module")
def none_ref(tiny_bundle_dir, tmp_path_factory) -> Path:
    ref = tmp_path_factory.mktemp("none") / "none.mp4"
    ok(gen(tiny_bundle_dir, ref, "--prompt", PROMPT, "--seed", 1, "--cache", "none", "--lossless", "--quiet"))
    return ref


@pytest.mark.parametrize("policy", ["flowcache", "teacache"])
def test_threshold_zero_is_bit_identical_to_none(policy, none_ref, tiny_bundle_dir, tmp_path):
    out, log = tmp_path / f"{policy}.mp4", tmp_path / f"{policy}.jsonl"
    ok(gen(tiny_bundle_dir, out, "--prompt", PROMPT, "--seed", 1, "--cache", policy, "--rel-l1-thresh", 0,
           "--warmup-steps", 0, "--lossless", "--quiet", "--json-log", log))
    assert np.array_equal(read_video(none_ref)[0], read_video(out)[0])
    chunks = [c for r in read_log(log) for c in r["chunks"]]
    assert all(c["decision"] == "compute" for c in chunks)
    free = [c for c in chunks if c["reason"] == "threshold"]  # steps no rule forces: decided by the distance
    assert free and all(isinstance(c["rel_l1"], float) for c in free)


def test_config_file_runtime_config_overrides_the_bundle(tiny_bundle_dir, tmp_path):
    cfg = tmp_path / "magi.json"
    cfg.write_text(json.dumps({"model_config": {"num_layers": 99}, "runtime_config": {"num_frames": 8},
                               "engine_config": {}}))
    out = tmp_path / "short.mp4"
    ok(gen(tiny_bundle_dir, out, "--prompt", PROMPT, "--config-file", cfg, "--quiet"))
    assert read_video(out)[0].shape[0] == 8  # runtime_config applied; model_config ignored (weights fix it)


# ------------------------------------------------------------------------------------------ bad input
@pytest.fixture(scope="module")
def bad_bundles(tiny_bundle_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("bad_bundles")
    corrupt = Path(shutil.copytree(tiny_bundle_dir, d / "corrupt"))
    (corrupt / "model.safetensors").write_bytes(b"\x00junk" * 100)
    mismatch = Path(shutil.copytree(tiny_bundle_dir, d / "mismatch"))
    cfg = json.loads((mismatch / "config.json").read_text())
    cfg["model_config"]["hidden_size"] *= 2  # config and weights disagree (heads * kv_channels kept consistent)
    cfg["model_config"]["kv_channels"] *= 2
    (mismatch / "config.json").write_text(json.dumps(cfg))
    bundles = {"corrupt": corrupt, "mismatch": mismatch}

    def edited(name: str, file: str, edit) -> None:  # a copy of the tiny bundle with one JSON file edited
        copy = Path(shutil.copytree(tiny_bundle_dir, d / name))
        data = json.loads((copy / file).read_text())
        edit(data)
        (copy / file).write_text(json.dumps(data))
        bundles[name] = copy

    edited("seed_string", "config.json", lambda c: c["runtime_config"].update(seed="abc"))
    edited("cache_defaults_string", "config.json", lambda c: c["flowcache"].update(cache_defaults="fast"))
    edited("codec_scale_string", "config.json", lambda c: c["flowcache"]["codec"].update(scale="x"))
    edited("text_dim_string", "text_encoder.json", lambda m: m["config"].update(dim="64"))
    return bundles


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    (d / "junk.mp4").write_bytes(b"not a video at all" * 10)
    write_video(d / "short.mp4", smooth_frames(2), 12, lossless=True)
    write_image(d / "small.png", smooth_frames(1, h=32, w=32)[0])
    (d / "unknown_key.json").write_text(json.dumps({"model_config": {}, "runtime_config": {"num_stepz": 4}}))
    for name, runtime in CONFIG_FILES.items():
        (d / f"{name}.json").write_text(json.dumps({"model_config": {}, "runtime_config": runtime, "engine_config": {}}))
    from PIL import Image

    # A decompression bomb: its header declares 20000x20000 pixels (1.2 GB as RGB); 1-bit, it is ~50 kB on disk.
    Image.new("1", (20000, 20000)).save(d / "bomb.png", optimize=True)
    return d


# --config-file runtime_config objects with a wrong type or range (each one gave a traceback)
CONFIG_FILES = {
    "seed_string": {"seed": "abc"},
    "seed_2_70": {"seed": 2**70},
    "clean_t_string": {"clean_t": "0.5"},
    "clean_t_range": {"clean_t": 1.5},
    "text_scales_null": {"text_scales": None},
    "text_scales_nulls": {"text_scales": [None] * 5},
    "kvrange_strings": {"noise2clean_kvrange": ["a"]},
    "kvrange_zero": {"noise2clean_kvrange": [5, 0, 3, 2]},
    "cfg_t_range_strings": {"cfg_t_range": ["0", "0.1", "0.2", "0.3", "0.9"]},
    "num_frames_bool": {"num_frames": True},
}


BAD = {
    # case: (extra args, words the one error line must contain)
    "unknown mode": (["--mode", "x2v", "--prompt", PROMPT], ["--mode", "x2v", "t2v, i2v, v2v"]),
    "unknown attention backend": (["--attn-backend", "fa3", "--prompt", PROMPT],
                                  ["--attn-backend", "'fa3'", "auto, sdpa, flash"]),
    "missing checkpoint dir": (["--checkpoint-dir", "{tmp}/nowhere", "--prompt", PROMPT], ["does not exist"]),
    "corrupt safetensors": (["--checkpoint-dir", "{corrupt}", "--prompt", PROMPT], ["not a readable safetensors"]),
    "shape mismatch": (["--checkpoint-dir", "{mismatch}", "--prompt", PROMPT], ["weight", "has shape"]),
    "empty prompt t2v": (["--prompt", "  "], ["--prompt", "empty"]),
    "output folder missing": (["--prompt", PROMPT, "--output-path", "{tmp}/missing/out.mp4"], ["does not exist"]),
    "output not mp4": (["--prompt", PROMPT, "--output-path", "{tmp}/out.avi"], [".mp4"]),
    "prefix unreadable": (["--mode", "v2v", "--prefix-video", "{inputs}/junk.mp4"], ["junk.mp4", "not readable"]),
    "prefix too short": (["--mode", "v2v", "--prefix-video", "{inputs}/short.mp4"], ["2 frames", "at least one chunk"]),
    "v2v without prefix": (["--mode", "v2v"], ["--prefix-video"]),
    "image wrong size": (["--mode", "i2v", "--image", "{inputs}/small.png"], ["32x32", "64x64"]),
    "threshold < 0": (["--prompt", PROMPT, "--cache", "flowcache", "--rel-l1-thresh", "-0.1"], ["--rel-l1-thresh", ">= 0"]),
    "warmup < 0": (["--prompt", PROMPT, "--cache", "flowcache", "--warmup-steps", "-1"], ["--warmup-steps", ">= 0"]),
    "B_total <= window": (["--prompt", PROMPT, "--total-cache-chunk-nums", "4"], ["total_cache_chunk_nums=4", "window"]),
    "lambda > 1": (["--prompt", PROMPT, "--mix-lambda", "1.5"], ["--mix-lambda", "[0, 1]"]),
    "lambda < 0": (["--prompt", PROMPT, "--mix-lambda", "-0.5"], ["--mix-lambda", "[0, 1]"]),
    "unknown strategy": (["--prompt", PROMPT, "--compress-strategy", "pixel"], ["--compress-strategy", "token, frame, chunk"]),
    "unknown granularity": (["--prompt", PROMPT, "--query-granularity", "all"], ["--query-granularity", "token, frame, chunk"]),
    "unknown cache policy": (["--prompt", PROMPT, "--cache", "deepcache"], ["--cache", "none, teacache, flowcache"]),
    "unknown reuse": (["--prompt", PROMPT, "--reuse", "both"], ["--reuse", "displacement, velocity"]),
    "not a number": (["--prompt", PROMPT, "--num-steps", "many"], ["--num-steps"]),
    "steps not a window multiple": (["--prompt", PROMPT, "--num-steps", "6"], ["--num-steps 6 must be a multiple", "window_size"]),
    "cfg number not 1 or 3": (["--prompt", PROMPT, "--cfg-number", "2"], ["--cfg-number 2 not supported"]),
    "config file unknown key": (["--prompt", PROMPT, "--config-file", "{inputs}/unknown_key.json"], ["num_stepz"]),
    # issue 16 item 5: each of these gave a traceback (exit 1)
    "config seed string": (["--prompt", PROMPT, "--config-file", "{inputs}/seed_string.json"],
                           ["seed_string.json", "runtime_config.seed: expected an integer", '"abc"']),
    "config seed 2^70": (["--prompt", PROMPT, "--config-file", "{inputs}/seed_2_70.json"],
                         ["runtime_config.seed", "[0, 18446744073709551615]", "1180591620717411303424"]),
    "config clean_t string": (["--prompt", PROMPT, "--config-file", "{inputs}/clean_t_string.json"],
                              ["runtime_config.clean_t: expected a number in (0, 1]", '"0.5"']),
    "config clean_t range": (["--prompt", PROMPT, "--config-file", "{inputs}/clean_t_range.json"],
                             ["runtime_config.clean_t", "(0, 1]", "1.5"]),
    "config text_scales null": (["--prompt", PROMPT, "--config-file", "{inputs}/text_scales_null.json"],
                                ["runtime_config.text_scales: expected a list of numbers, got null"]),
    "config text_scales [null]": (["--prompt", PROMPT, "--config-file", "{inputs}/text_scales_nulls.json"],
                                  ["runtime_config.text_scales[0]: expected a number, got null"]),
    "config kv range strings": (["--prompt", PROMPT, "--config-file", "{inputs}/kvrange_strings.json"],
                                ["runtime_config.noise2clean_kvrange[0]: expected an integer >= 1", '"a"']),
    "config kv range zero": (["--prompt", PROMPT, "--config-file", "{inputs}/kvrange_zero.json"],
                             ["runtime_config.noise2clean_kvrange[1]", ">= 1", "got 0"]),
    "config cfg_t_range strings": (["--prompt", PROMPT, "--config-file", "{inputs}/cfg_t_range_strings.json"],
                                   ["runtime_config.cfg_t_range[0]", "number"]),
    "config num_frames bool": (["--prompt", PROMPT, "--config-file", "{inputs}/num_frames_bool.json"],
                               ["runtime_config.num_frames: expected an integer", "true"]),
    "bundle config seed string": (["--checkpoint-dir", "{seed_string}", "--prompt", PROMPT],
                                  ["config.json", "runtime_config.seed", '"abc"']),
    "bundle cache_defaults string": (["--checkpoint-dir", "{cache_defaults_string}", "--prompt", PROMPT],
                                     ["config.json", "flowcache.cache_defaults: expected an object", '"fast"']),
    "bundle codec scale string": (["--checkpoint-dir", "{codec_scale_string}", "--prompt", PROMPT],
                                  ["config.json", "flowcache.codec.scale", '"x"']),
    "bundle text encoder dim string": (["--checkpoint-dir", "{text_dim_string}", "--prompt", PROMPT],
                                       ["text_encoder.json", "config.dim: expected an integer", '"64"']),
    "image decompression bomb": (["--mode", "i2v", "--image", "{inputs}/bomb.png"],
                                 ["bomb.png", "20000x20000", "400,000,000 pixels", "67,108,864"]),
    "height not a patch multiple": (["--prompt", PROMPT, "--height", "68"], ["--height 68", "multiple of 8"]),
    "width not a patch multiple": (["--prompt", PROMPT, "--width", "36"], ["--width 36", "multiple of 8"]),
    "seed 2^70": (["--prompt", PROMPT, "--seed", str(2**70)], ["--seed", "1180591620717411303424", "18446744073709551615"]),
    "num steps above the cap": (["--prompt", PROMPT, "--num-steps", "4000"], ["--num-steps", "less than or equal to 1000"]),
}


def check_one_line_error(result, out: Path, words: list[str]) -> None:
    assert result.exit_code == 2, (result.output, result.exception)
    assert "Traceback" not in result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert result.stdout == ""
    assert not out.exists()
    assert not [p for p in out.parent.glob(f".{out.name}*")] if out.parent.exists() else True


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_exit_2_no_file(case, tiny_bundle_dir, bad_bundles, inputs, tmp_path):
    args, words = BAD[case]
    fmt = {"tmp": tmp_path, "inputs": inputs, **bad_bundles}
    args = [a.format(**fmt) for a in args]
    out = tmp_path / "out.mp4"
    if "--output-path" in args:
        out = Path(args[args.index("--output-path") + 1])
    full = ["generate", "--output-path", str(out), *args]
    if "--checkpoint-dir" not in args:
        full += ["--checkpoint-dir", str(tiny_bundle_dir)]
    check_one_line_error(runner.invoke(app, full), out, words)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder(tiny_bundle_dir, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        out = ro / "out.mp4"
        check_one_line_error(gen(tiny_bundle_dir, out, "--prompt", PROMPT), out, ["not writable"])
    finally:
        ro.chmod(0o755)


def test_json_log_not_left_when_the_run_fails(tiny_bundle_dir, bad_bundles, tmp_path):
    out, log = tmp_path / "out.mp4", tmp_path / "log.jsonl"
    result = gen(bad_bundles["mismatch"], out, "--prompt", PROMPT, "--json-log", log)
    assert result.exit_code == 2
    assert list(tmp_path.iterdir()) == []


def test_kv_budget_shows_in_live_line_and_log(tiny_bundle_dir, tmp_path):
    out, log = tmp_path / "kv.mp4", tmp_path / "kv.jsonl"
    result = gen(tiny_bundle_dir, out, "--prompt", PROMPT, "--cache", "flowcache", "--total-cache-chunk-nums", 5,
                 "--num-frames", 8, "--json-log", log)
    ok(result)
    assert "tokens, " in result.stderr and "%" in result.stderr  # `KV 1.0k/1.3k tokens, 80%`
    assert "KV compressions" in result.stdout
    rows = read_log(log)
    budget = rows[0]["kv"]["budget"]
    assert budget and all(r["kv"]["budget"] == budget and r["kv"]["used"] <= budget for r in rows)


def test_progress_formatting():
    from flowcache_core.engine.events import ChunkRecord, ForwardEvent
    from flowcache_cli.progress import fmt_tokens, forward_line, kv_text

    assert [fmt_tokens(n) for n in (768, 2304, 61440, 2_500_000)] == ["768", "2.3k", "61k", "2.5M"]
    assert kv_text(61_000, 73_000) == "KV 61k/73k tokens, 84%"
    assert kv_text(12_000, None) == "KV 12k tokens"
    e = ForwardEvent(11, [ChunkRecord(3, 9, 0.6, "compute", "threshold", 0.02, 0.0),
                          ChunkRecord(4, 5, 0.3, "reuse", "below_threshold", 0.004, 0.011)], 768, 2304, 2880, 0.1, 56)
    assert forward_line(e).plain == "fwd 12/56  c3 ■ .000 c4 □ .011   KV 2.3k/2.9k tokens, 80%"


# ------------------------------------------------------------------------------------------ one place for defaults
def test_api_and_cli_resolve_the_same_request(tiny_bundle_dir, tmp_path):
    """Built-in defaults < the model's cache_defaults < the config file < explicit options, in one core function
    that both the CLI and the API call: the same request gives byte-identical frames and the same JSON log."""
    from flowcache_core.api import generate
    from flowcache_core.cache.settings import CacheConfig
    from flowcache_core.engine.events import ForwardEvent

    bundle_cfg = json.loads((tiny_bundle_dir / "config.json").read_text())
    assert bundle_cfg["flowcache"]["cache_defaults"]  # the tiny bundle carries cache_defaults, as the shipped one
    cfg_file = tmp_path / "run.json"
    cfg_file.write_text(json.dumps({"runtime_config": {"num_steps": 4},
                                    "flowcache": {"cache_defaults": {"warmup_steps": 1}}}))
    out, log = tmp_path / "cli.mp4", tmp_path / "cli.jsonl"
    ok(gen(tiny_bundle_dir, out, "--prompt", PROMPT, "--seed", 2, "--cache", "flowcache", "--config-file", cfg_file,
           "--rel-l1-thresh", 0.2, "--lossless", "--json-log", log, "--quiet"))
    api = generate(PROMPT, checkpoint_dir=tiny_bundle_dir, seed=2, config_file=cfg_file,
                   cache=CacheConfig("flowcache", rel_l1_thresh=0.2))
    frames, _ = read_video(out)
    assert np.array_equal(frames, api.frames)
    assert read_log(log) == [e.to_json() for e in api.events if isinstance(e, ForwardEvent)]
    # and what ran: 4 steps (file), warmup 1 (file over the model's), threshold 0.2 (given), the model's reuse
    assert (api.cache.config.warmup_steps, api.cache.config.rel_l1_thresh) == (1, 0.2)
    assert api.cache.config.reuse == bundle_cfg["flowcache"]["cache_defaults"]["reuse"]
    assert len({c["step"] for line in read_log(log) for c in line["chunks"]}) == 4


# ------------------------------------------------------------------------------------------ limits (issue 16)
def test_num_frames_beyond_free_memory_is_refused_before_the_model_loads(tiny_bundle_dir, tmp_path, monkeypatch):
    import flowcache_core.checks as checks

    monkeypatch.setattr(checks, "available_memory_bytes", lambda: (8 * 2**30, "test machine"))
    loaded = []
    monkeypatch.setattr("flowcache_cli.generate.load", lambda *a, **k: loaded.append(a))
    out = tmp_path / "out.mp4"
    result = gen(tiny_bundle_dir, out, "--prompt", PROMPT, "--num-frames", 1_000_000)
    # 10^6 frames of 64x64x3 bytes (11.4 GiB) + their latents (45.8 GiB as float32)
    check_one_line_error(result, out, ["--num-frames 1000000", "57.2 GiB", "8.0 GiB free (test machine)", "at most about"])
    assert not loaded


def test_api_refuses_what_the_cli_refuses(tiny_bundle_dir, monkeypatch):
    """The checks live in the core: an API caller gets the same one-line FlowcacheError, not a crash inside."""
    import flowcache_core.checks as checks
    from flowcache_core.api import generate
    from flowcache_core.models.magi1.bundle import load_bundle
    from flowcache_core.errors import FlowcacheError

    monkeypatch.setattr(checks, "available_memory_bytes", lambda: (8 * 2**30, "test machine"))
    bundle = load_bundle(tiny_bundle_dir)
    for kwargs, words in ((dict(height=68), "height 68 must be a multiple of 8"),
                          (dict(seed=2**70), "seed: expected an integer in [0, 18446744073709551615]"),
                          (dict(device="foo"), "device 'foo' is not a torch device"),
                          (dict(num_frames=1_000_000), "num_frames 1000000 at 64x64 needs at least")):
        with pytest.raises(FlowcacheError) as e:
            generate(PROMPT, bundle=bundle, **kwargs)
        assert words in str(e.value) and "\n" not in str(e.value)


def test_available_memory_is_read_from_this_machine():
    from flowcache_core.checks import available_memory_bytes

    free, source = available_memory_bytes()
    assert free > 0 and source


# ------------------------------------------------------------------------------------------ inputs are never overwritten
@pytest.mark.parametrize("how", ["same", "dotted", "symlink", "json-log"])
def test_output_equal_to_the_prefix_video_is_refused(tiny_bundle_dir, tmp_path, monkeypatch, how):
    prefix = tmp_path / "prefix.mp4"
    write_video(prefix, smooth_frames(4, seed=2), 12, lossless=True)
    before = prefix.read_bytes()
    monkeypatch.chdir(tmp_path)
    out, extra = {"same": (prefix, []), "dotted": (Path("sub/../prefix.mp4"), []),
                  "symlink": (tmp_path / "link.mp4", []),
                  "json-log": (tmp_path / "out.mp4", ["--json-log", prefix])}[how]
    (tmp_path / "sub").mkdir()
    if how == "symlink":
        (tmp_path / "link.mp4").symlink_to(prefix)
    r = gen(tiny_bundle_dir, out, "--mode", "v2v", "--prefix-video", prefix, "--quiet", *extra)
    assert r.exit_code == 2 and "Traceback" not in r.output
    line = r.output.strip()
    assert "\n" not in line and "same file as --prefix-video" in line
    assert prefix.read_bytes() == before and not (tmp_path / "out.mp4").exists()


def test_json_log_equal_to_the_image_is_refused(tiny_bundle_dir, tmp_path):
    image = tmp_path / "first.png"
    write_image(image, smooth_frames(1)[0])
    before = image.read_bytes()
    r = gen(tiny_bundle_dir, tmp_path / "out.mp4", "--mode", "i2v", "--image", image, "--json-log", image)
    assert r.exit_code == 2 and "--json-log" in r.output and "same file as --image" in r.output
    assert image.read_bytes() == before


# ------------------------------------------------------------------------------------------ signals, full disks, stale temps
def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP"])
def test_a_signal_mid_run_removes_the_temp_files_and_exits_128_plus_signal(tiny_bundle_dir, tmp_path, sig):
    import signal
    import subprocess
    import sys
    import time

    out, log = tmp_path / "out.mp4", tmp_path / "log.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "flowcache_cli.main", "generate", "--checkpoint-dir", str(tiny_bundle_dir),
           "--output-path", str(out), "--prompt", PROMPT, "--num-frames", "2000", "--json-log", str(log), "--quiet"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not any(p.stat().st_size > 0 for p in tmp_path.glob(".log.jsonl.*.tmp")):  # mid-run: log lines written
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(getattr(signal, sig))
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + getattr(signal, sig), err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(f"stopped by {sig}")
    assert leftovers(tmp_path) == [] and not out.exists() and not log.exists()


def test_a_full_disk_writing_the_json_log_is_one_line_and_leaves_nothing(tiny_bundle_dir, tmp_path, monkeypatch):
    import errno

    real_fdopen = os.fdopen

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.f, name)

    monkeypatch.setattr(os, "fdopen", lambda *a, **k: Full(real_fdopen(*a, **k)))
    r = gen(tiny_bundle_dir, tmp_path / "out.mp4", "--prompt", PROMPT, "--json-log", tmp_path / "log.jsonl",
            "--num-steps", 4, "--quiet")
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert r.output.strip() == f"error: cannot write --json-log {tmp_path / 'log.jsonl'}: No space left on device"
    assert list(tmp_path.iterdir()) == []


def test_an_oserror_writing_the_video_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    import errno

    from flowcache_core import video
    from flowcache_core.errors import FlowcacheError

    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    import subprocess
    import types

    monkeypatch.setattr(video, "ffmpeg_exe", lambda: "ffmpeg")
    monkeypatch.setattr(video, "subprocess", types.SimpleNamespace(Popen=full, PIPE=subprocess.PIPE, DEVNULL=subprocess.DEVNULL))
    with pytest.raises(FlowcacheError, match="cannot write video .*out.mp4: No space left on device"):
        write_video(tmp_path / "out.mp4", smooth_frames(2), 12)
    assert list(tmp_path.iterdir()) == []


def test_the_next_run_removes_temps_a_killed_run_left_for_its_destinations(tiny_bundle_dir, tmp_path):
    stale = [".out.mp4.ab12cd_3.tmp.mp4", ".log.jsonl.zz9yx8w7.tmp"]
    kept = [".other.mp4.ab12cd_3.tmp.mp4", ".out.mp4.notes"]
    for name in stale + kept:
        (tmp_path / name).write_bytes(b"x")
    ok(gen(tiny_bundle_dir, tmp_path / "out.mp4", "--prompt", PROMPT, "--json-log", tmp_path / "log.jsonl",
           "--num-steps", 4, "--num-frames", 4, "--quiet"))
    assert leftovers(tmp_path) == sorted(kept)


# ------------------------------------------------------------------------------------------ what a new user found (issue 21 item 10)
def test_unknown_prompt_words_are_warned_about_in_one_line(tiny_bundle_dir, tmp_path):
    r = gen(tiny_bundle_dir, tmp_path / "out.mp4", "--prompt", "a red circle zooms quickly to the right, zooms",
            "--num-steps", 4, "--num-frames", 4, "--quiet")
    ok(r)
    warnings = [ln for ln in r.output.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "zooms, quickly:" in warnings[0] and "Prompt vocabulary" in warnings[0]
    r = gen(tiny_bundle_dir, tmp_path / "out2.mp4", "--prompt", PROMPT, "--num-steps", 4, "--num-frames", 4, "--quiet")
    ok(r)
    assert "warning" not in r.output


def test_the_api_reports_unknown_words_as_an_event(tiny_bundle_dir):
    from flowcache_core.api import generate
    from flowcache_core.engine.events import UnknownWords

    res = generate("a Red circle glides", checkpoint_dir=tiny_bundle_dir, num_steps=4, num_frames=4)
    assert [e.words for e in res.events if isinstance(e, UnknownWords)] == [["glides"]]


def test_readme_lists_the_default_models_vocabulary():
    from flowcache_core.engine.family import DEFAULT_MODEL_DIR

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Prompt vocabulary", 1)[1].split("\n#", 1)[0]
    vocab = json.loads((DEFAULT_MODEL_DIR / "text_encoder.json").read_text())["config"]["vocab"][2:]
    assert all(f"`{w}`" in section for w in vocab)


@pytest.mark.parametrize("command", [["generate"], ["sweep"], ["evaluate"], ["sample-benchmark", "vbench"]])
def test_boolean_flags_show_no_value_in_help(command):
    r = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "120"})
    assert r.exit_code == 0 and "--help" in r.output and "<bool>" not in r.output


def test_odd_messages_are_gone(tmp_path):
    from flowcache_core.errors import FlowcacheError
    from flowcache_core.models.codec import SpaceToDepthCodec
    from flowcache_core.models.magi1.bundle import load_bundle

    with pytest.raises(FlowcacheError) as e:
        load_bundle(variant="4.5B_distill")  # the shipped model: no path given
    assert "'None'" not in str(e.value) and "default model" in str(e.value)
    with pytest.raises(FlowcacheError) as e:
        SpaceToDepthCodec(4, 1).latent_shape(0, 64, 64)
    assert "multiple of 1" not in str(e.value) and "num_frames=0 must be at least 1" in str(e.value)
