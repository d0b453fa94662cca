"""`flowcache sweep` and the bench scripts built on it: grid, JSON, recommendation, bad input; all on the tiny bundle."""
import json
import math
import os
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from flowcache_cli.main import app  # noqa: E402
from flowcache_core.errors import FlowcacheError  # noqa: E402
from flowcache_core.eval.sweep import (  # noqa: E402
    SettingSummary, SweepConfig, pareto_front, parse_float_list, recommend, run_sweep, settings_grid,
)  # fmt: skip

runner = CliRunner()


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread here: the many tiny forwards of a sweep slow down badly when two threads contend with
    other work on a 2-core machine (spinning at every barrier)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _summary(name, speedup, psnr, ssim, policy="flowcache", ideal=None):
    """A table row; the chunk-forwards speedup `ideal` is the wall speedup unless given (noisy wall time)."""
    ideal = speedup if ideal is None else ideal
    return SettingSummary(name, policy, "velocity", 0.1, 2, 1.0, speedup, speedup, speedup, round(100 / ideal), 100, ideal,
                          speedup / ideal, psnr, psnr, ssim, None)


@pytest.fixture(scope="module")
def sweep_json(tiny_bundle_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "out"
    r = runner.invoke(app, ["sweep", "--prompts", "2", "--thresholds", "0,0.1", "--num-steps", "8", "--quiet",
                            "--checkpoint-dir", str(tiny_bundle_dir), "--output-dir", str(out)])
    assert r.exit_code == 0, r.output
    assert r.output.strip().endswith("sweep.json")
    return out


@pytest.mark.slow
def test_sweep_writes_every_setting(sweep_json):
    data = json.loads((sweep_json / "sweep.json").read_text())
    names = [s["setting"] for s in data["settings"]]
    assert names == ["none", *(f"{p}-{r}@{t}" for p in ("teacache", "flowcache")  # registry order, per reuse mode
                               for r in ("displacement", "velocity", "extrapolate") for t in ("0", "0.1"))]
    assert len(data["runs"]) == 2 * len(names)  # 2 prompts x 1 seed, interleaved per prompt
    assert [r["setting"] for r in data["runs"][: len(names)]] == names
    assert data["seed_scale"]["pairs"] and math.isfinite(data["seed_scale"]["psnr_mean"])
    for s in data["settings"]:
        assert s["mean_seconds"] > 0 and s["chunk_forwards"] > 0
    if (sweep_json / "sweep_pareto.png").exists():
        assert (sweep_json / "sweep_pareto.png").stat().st_size > 1000


@pytest.mark.slow
def test_threshold_zero_is_the_uncached_video(sweep_json):
    data = json.loads((sweep_json / "sweep.json").read_text())
    by = {s["setting"]: s for s in data["settings"]}
    for name in ("flowcache-displacement@0", "flowcache-velocity@0", "teacache-displacement@0", "teacache-extrapolate@0"):
        assert by[name]["psnr_mean"] == "inf"
        assert by[name]["ssim_mean"] == pytest.approx(1.0)
        assert by[name]["computed_chunk_forwards"] == by["none"]["computed_chunk_forwards"]
        assert by[name]["chunk_forwards"] == by["none"]["chunk_forwards"]
        assert by[name]["ideal_speedup"] == 1.0


def test_recommend_picks_fastest_above_floor():
    table = [
        _summary("none", 1.0, None, None, policy="none"),
        _summary("a", 3.0, 24.9, 0.9),  # fast but under the PSNR floor
        _summary("b", 2.5, 30.0, 0.70),  # under the SSIM floor
        _summary("c", 2.0, 26.0, 0.80),
        _summary("d", 1.5, float("inf"), 1.0),
        _summary("e", 2.0, 28.0, 0.85),  # same speed as c, higher PSNR wins the tie
    ]
    assert recommend(table, 25.0, 0.75).setting == "e"
    assert recommend(table, 35.0, 0.75).setting == "d"
    assert recommend(table[:3], 25.0, 0.75) is None


def test_recommend_follows_chunk_forwards_not_noisy_wall_time():
    # issue 21 item 8: @0.01 looked faster by wall clock (a quiet moment) though @0.03 skips far more forwards
    table = [
        _summary("none", 1.0, None, None, policy="none"),
        _summary("flowcache-extrapolate@0.01", 1.19, 35.0, 0.95, ideal=1.16),
        _summary("flowcache-extrapolate@0.03", 1.05, 30.0, 0.90, ideal=1.60),
        _summary("flowcache-extrapolate@0.1", 2.50, 20.0, 0.60, ideal=3.00),  # under both floors
    ]
    assert recommend(table, 25.0, 0.75).setting == "flowcache-extrapolate@0.03"
    # equal chunk-forwards speedup: the higher PSNR, whatever the wall clock said
    table.append(_summary("flowcache-velocity@0.03", 9.0, 29.0, 0.90, ideal=1.60))
    assert recommend(table, 25.0, 0.75).setting == "flowcache-extrapolate@0.03"


def test_recommend_honours_the_per_run_floor():
    # issue 20 item 5: >= 30 dB mean and >= 25 dB on every prompt
    fast = _summary("flowcache-extrapolate@0.1", 3.0, 32.0, 0.95, ideal=3.0)
    fast.psnr_min = 22.0  # one prompt falls apart
    safe = _summary("flowcache-extrapolate@0.05", 2.0, 31.0, 0.95, ideal=2.0)
    safe.psnr_min = 27.0
    table = [_summary("none", 1.0, None, None, policy="none"), fast, safe]
    assert recommend(table, 30.0, 0.75).setting == "flowcache-extrapolate@0.1"
    assert recommend(table, 30.0, 0.75, 25.0).setting == "flowcache-extrapolate@0.05"
    assert recommend(table, 30.0, 0.75, 28.0) is None


def test_pareto_front():
    pts = [(1.0, 30.0), (2.0, 25.0), (1.5, 20.0), (3.0, 10.0)]
    assert pareto_front(pts) == [0, 1, 3]
    assert pareto_front([(1.0, 0.1), (2.0, 0.05)], higher_better=False) == [1]


def test_grid_and_parsing():
    g = settings_grid(["none", "flowcache"], ["velocity"], [0.05, 0.1])
    assert [s.name for s in g] == ["none", "flowcache-velocity@0.05", "flowcache-velocity@0.1"]
    assert parse_float_list("0.1, 0.05,0.1") == [0.05, 0.1]
    for bad in ("", " , ", "-0.1", "abc", "nan", "inf"):
        with pytest.raises(FlowcacheError):
            parse_float_list(bad)
    with pytest.raises(FlowcacheError):
        SweepConfig(["a red circle moves left"], policies=["none", "magic"]).validate()


def test_run_sweep_sees_every_video(tiny_bundle_dir):
    from flowcache_core.models.magi1.bundle import load_bundle

    seen = []
    cfg = SweepConfig(["a red circle moves left"], [3], [0.2], ["none", "flowcache"], ["velocity"], num_steps=8,
                      lpips=False, seed_scale=False)
    res = run_sweep(cfg, bundle=load_bundle(tiny_bundle_dir), on_video=lambda s, p, seed, f: seen.append((s, seed, f.shape)))
    assert [s for s, _, _ in seen] == ["none", "flowcache-velocity@0.2"]
    assert res.lpips_status == "off" and res.seed_scale is None
    assert res.summaries[1].lpips_mean is None and res.summaries[1].ideal_speedup >= 1.0


@pytest.mark.parametrize("args, needle", [
    (["--thresholds", ""], "--thresholds"),
    (["--thresholds", "0.1,-0.05"], "-0.05"),
    (["--policies", "none,magic"], "magic"),
    (["--reuse-modes", "teleport"], "teleport"),
    (["--seeds", "x"], "--seeds"),
    (["--prompts", "0"], "--prompts"),
    (["--prompt-file", "/nonexistent/prompts.txt"], "prompt file"),
    (["--output-dir", "/nonexistent/deeper/out"], "does not exist"),
    (["--thresholds"], "--thresholds"),
    (["--device", "tpu"], "--device"),
    (["--min-ssim", "2"], "--min-ssim 2.0 must be in [0, 1]"),  # issue 21 item 10: it said min_ssim
    (["--min-psnr", "nan"], "--min-psnr nan must be a finite number"),
    # issue 16 item 5: these gave a traceback (exit 1), or ran
    (["--seeds", str(2**70)], "--seeds value: expected an integer in [0, 18446744073709551615]"),
    (["--seeds", str(2**64 - 1)], "the scale run's seed"),
    (["--device", "cuda:99"], "--device 'cuda:99'"),
    (["--num-steps", "5000"], "--num-steps"),
    (["--prompt-file", "NUL"], "NUL bytes"),
])  # fmt: skip
def test_bad_input_is_one_line_exit_2(args, needle, tmp_path):
    (tmp_path / "nul.txt").write_bytes(b"a red ball\n" + b"\x00" * 64)
    args = [str(tmp_path / "nul.txt") if a == "NUL" else a for a in args]
    r = runner.invoke(app, ["sweep", "--output-dir", str(tmp_path / "o"), *args] if "--output-dir" not in args
                      else ["sweep", *args])
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], r.output


def test_plot_without_matplotlib_says_so(monkeypatch, tmp_path):
    import builtins

    from flowcache_core.eval.sweep import pareto_plot

    real = builtins.__import__

    def fake(name, *a, **k):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    msg = pareto_plot([_summary("a", 2.0, 30.0, 0.9)], tmp_path / "p.png")
    assert "matplotlib" in msg and "\n" not in msg and not (tmp_path / "p.png").exists()
    assert 'pip install -e ".[plot]"' in msg  # the spelling that works in every shell


# ----------------------------------------------------------------------------- partial results (issue 21 item 7)
def _sweep_args(tiny_bundle_dir, out):
    return ["sweep", "--prompts", "1", "--thresholds", "0.1", "--policies", "flowcache", "--reuse-modes", "velocity",
            "--num-steps", "4", "--no-lpips", "--quiet", "--checkpoint-dir", str(tiny_bundle_dir), "--output-dir", str(out)]


def test_a_failure_late_keeps_the_runs_done(tiny_bundle_dir, tmp_path, monkeypatch):
    from flowcache_core.eval import sweep

    calls = []

    def generate_then_full(*a, **k):
        calls.append(1)
        if len(calls) == 4:  # warm-up, none, flowcache, then the scale run fails
            raise FlowcacheError("cannot write: No space left on device")
        return real(*a, **k)

    real = sweep.generate
    monkeypatch.setattr(sweep, "generate", generate_then_full)
    out = tmp_path / "out"
    r = runner.invoke(app, _sweep_args(tiny_bundle_dir, out))
    assert r.exit_code == 2 and "No space left" in r.output
    data = json.loads((out / "sweep.json").read_text())
    assert data["complete"] is False and [row["setting"] for row in data["runs"]] == ["none", "flowcache-velocity@0.1"]


def test_a_bad_num_steps_fails_before_the_output_folder_is_created(tiny_bundle_dir, tmp_path):
    r = runner.invoke(app, ["sweep", "--num-steps", "6", "--checkpoint-dir", str(tiny_bundle_dir),
                            "--output-dir", str(tmp_path / "out")])
    assert r.exit_code == 2 and r.output.strip() == "error: --num-steps 6 must be a multiple of window_size 4"
    assert not (tmp_path / "out").exists()


def test_an_unwritable_output_fails_before_the_first_video(tiny_bundle_dir, tmp_path, monkeypatch):
    from flowcache_core.eval import sweep

    def full(obj, path):
        raise FlowcacheError(f"cannot write {path}: No space left on device")

    monkeypatch.setattr(sweep, "write_json", full)
    monkeypatch.setattr(sweep, "generate", lambda *a, **k: pytest.fail("a video was generated"))
    r = runner.invoke(app, _sweep_args(tiny_bundle_dir, tmp_path / "out"))
    assert r.exit_code == 2 and "No space left" in r.output


# ----------------------------------------------------------------------------- bench scripts' pure parts
def test_judge_default_seam_stats():
    from bench.judge_default import colour_kept, frame_changes, seam_stats

    T, cf = 8, 4
    v = np.zeros((T, 4, 4, 3), np.uint8)
    for t in range(T):
        v[t] = t * 2 + (10 if t >= cf else 0)  # +2 per frame, +10 more at the chunk boundary (3 -> 4)
    assert frame_changes(v).tolist() == [2, 2, 2, 12, 2, 2, 2]
    s = seam_stats([v], cf)
    assert s["boundary_pairs"] == 1 and s["within_pairs"] == 6
    assert s["boundary_mean"] == 12 and s["within_mean"] == 2 and s["ratio"] == 6
    assert seam_stats([], cf)["ratio"] is None
    from flowcache_core.training.world import render_caption

    clip = render_caption("a red square moves left", 0, 16, 64, 64).frames
    assert colour_kept("a red square moves left", clip)["ok"]
    assert not colour_kept("a blue square moves left", clip)["ok"]


def test_speed_quality_pure_parts():
    from bench.speed_quality import best_per_group, goals, judge_summary, machine_info

    m = machine_info()
    assert m["logical_cpus"] >= 1 and m["cpu_model"]
    acc = judge_summary([dict(setting="none", colour_ok=True, direction_ok=False),
                         dict(setting="none", colour_ok=True, direction_ok=True),
                         dict(setting="x", colour_ok=False, direction_ok=False)])
    assert acc == {"none": dict(n=2, colour=1.0, direction=0.5), "x": dict(n=1, colour=0.0, direction=0.0)}
    table = [_summary("none", 1.0, None, None, policy="none"),
             _summary("teacache-displacement@0.1", 1.4, 26.0, 0.8, policy="teacache"),
             _summary("flowcache-displacement@0.1", 2.0, 25.5, 0.8),
             _summary("flowcache-velocity@0.1", 2.6, 27.0, 0.9),
             _summary("flowcache-velocity@0.2", 3.5, 20.0, 0.6)]
    best = best_per_group(table, 25.0, 0.75)
    assert best["flowcache-velocity"]["setting"] == "flowcache-velocity@0.1"
    g = goals(best)
    assert g["goal1_flowcache_2.5x_above_floor"] is True
    assert g["goal1_ours_faster_than_displacement_and_teacache_at_floor"] is True
    # an extrapolate setting that clears the floor faster becomes the best of ours
    table.append(_summary("flowcache-extrapolate@0.2", 3.1, 28.0, 0.9))
    g2 = goals(best_per_group(table, 25.0, 0.75))
    assert g2["goal1_best_flowcache"]["setting"] == "flowcache-extrapolate@0.2"
    assert g["goal2_realized_over_ideal_ge_0.95"] is True  # 2.6 / 2.0 in the synthetic table
