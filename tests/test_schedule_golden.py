"""Our chunk-pipeline plan against the official MAGI-1 sampler's bookkeeping (48 settings, shared/golden)."""
import gzip
import json

import pytest
import torch

from flowcache_core.models.magi1.schedule import chunk_layout, distill_step_size, init_t, plan_forwards
from conftest import GOLDEN

RUNS = json.load(gzip.open(GOLDEN / "magi1" / "sampler_schedule.json.gz", "rt"))["runs"]
INIT_T = json.loads((GOLDEN / "magi1" / "init_t.json").read_text())


@pytest.mark.parametrize("key", sorted(INIT_T))
def test_init_t_matches_official(key):
    n = int(key.split(",")[0].split("=")[1])
    mode = key.split("shortcut_mode=")[1]
    t, interval = init_t(n, mode)
    assert t.dtype == torch.float32
    assert t.tolist() == INIT_T[key]["t"]  # exact, float32
    assert [float(i) for i in interval] == [float(i) for i in INIT_T[key]["interval"]]


def _name(r):
    s = r["setting"]
    return f"c{s['chunk_num']}_n{s['num_steps']}_w{s['window_size']}_p{s['prefix_latent_frames']}"


@pytest.mark.parametrize("run", RUNS, ids=_name)
def test_schedule_matches_official(run):
    s = run["setting"]
    cw = s["chunk_width"]
    chunk_num, offset = chunk_layout(s["num_frames"] // 4, s["prefix_latent_frames"], cw)
    assert (chunk_num, offset) == (run["infer_chunk_num"], run["clean_chunk_num"])
    plan = plan_forwards(chunk_num, s["num_steps"], s["window_size"], offset,
                         noise2clean_kvrange=s["noise2clean_kvrange"], clean_chunk_kvrange=s["clean_chunk_kvrange"],
                         nearly_clean_blend=True, nearly_clean_threshold=s["distill_nearly_clean_chunk_threshold"],
                         shortcut_mode=s["shortcut_mode"])
    ts, _ = init_t(s["num_steps"], s["shortcut_mode"])
    assert sum(not f.prefill for f in plan) == run["total_forward_step"]
    calls = [c for st in run["steps"] for c in st["dispatcher_calls"]]
    assert len(calls) == len(plan)
    steps = iter(run["steps"])
    yields = []
    for f, call in zip(plan, calls):
        ts_row = [s["clean_t"] if r.clean else float(ts[r.step]) for r in f.rows]
        assert call["timestep"] == pytest.approx(ts_row, abs=0, rel=1e-7)
        assert [[float(r.kv_start), float(r.chunk_id + 1)] for r in f.rows] == call["kv_range_chunks"]
        assert float(call["kwargs"]["distill_interval"]) == float(f.distill_interval)  # prefill calls too
        if f.prefill:
            assert call["kwargs"]["extract_prefix_video_feature"]
            continue
        st = next(steps)
        assert st["cur_denoise_step"] == f.index
        assert [r.chunk_id for r in f.rows] == st["window_chunks"]
        assert [s["num_steps"] if r.clean else r.step for r in f.rows] == st["denoise_step_of_each_chunk"]
        clean = [r.chunk_id for r in f.rows if r.clean]
        assert (clean[0] if clean else None) == st["kv_cache_clean_chunk_appended"]
        assert list(range(f.rows[0].chunk_id)) == st["kv_cache_chunks_read"]
        assert call["kwargs"]["distill_nearly_clean_chunk"] == f.nearly_clean
        assert bool(f.emits) == (st["yield_after_integrate"] is not None)
        yields += f.emits
    # Emitted chunks, relative to the prefix chunks; a v2v prefix's pasted frames are not output again.
    partial = s["prefix_latent_frames"] % cw if offset > 0 else 0
    ours = [{"chunk_idx": c - offset, "latent_frames": cw - (partial if c == offset else 0)} for c in yields]
    assert ours == run["yields"]


# The official distill step embedding (VideoDiTModel.get_embedding_and_meta): t_embedder(factor) is added to t's
# embedding, factor = 4 / distill_interval * 2 at 12 steps and num_steps / 4 * 2 at every other count; the
# interval is SampleTransport.time_interval[denoise_idx] (init_intervel: (2, 1, 1) repeated when num_steps % 3 == 0).
OFFICIAL_DISTILL_FACTORS = {  # num_steps -> factor of each denoise_idx 0, 1, 2 (intervals 2, 1, 1 where they apply)
    4: (2.0, 2.0, 2.0), 8: (4.0, 4.0, 4.0), 12: (4.0, 8.0, 8.0), 16: (8.0, 8.0, 8.0),
    24: (12.0, 12.0, 12.0), 32: (16.0, 16.0, 16.0), 48: (24.0, 24.0, 24.0), 64: (32.0, 32.0, 32.0),
}


@pytest.mark.parametrize("num_steps", sorted(OFFICIAL_DISTILL_FACTORS))
def test_distill_step_size_is_the_official_one_at_every_step_count(num_steps):
    _, intervals = init_t(num_steps, "8,16,16")
    assert [distill_step_size(num_steps, i) for i in intervals[:3]] == list(OFFICIAL_DISTILL_FACTORS[num_steps])


@pytest.mark.parametrize("num_steps", [12, 24, 48])
@pytest.mark.parametrize("window_size", [4, 3, 2])
def test_forward_interval_is_the_one_of_its_index_in_the_stage(num_steps, window_size):
    """SampleTransport passes time_interval[denoise_idx] to every forward, and time_interval[0] to the prefill."""
    if num_steps % window_size:
        pytest.skip("num_steps must be a multiple of window_size")
    _, intervals = init_t(num_steps)
    plan = plan_forwards(5, num_steps, window_size, 1, noise2clean_kvrange=[5, 4, 3, 2], clean_chunk_kvrange=1,
                         nearly_clean_blend=True)
    assert plan[0].prefill and plan[0].distill_interval == intervals[0] == 2
    assert all(f.distill_interval == intervals[f.denoise_idx] for f in plan[1:])
