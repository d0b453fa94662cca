"""Our DiT against the official MAGI-1 code's outputs on the same random weights (float32).

Each case: a fresh KV store, a prefill forward of the clean chunk(s) (self-only ranges, t = clean_t, null
caption), then one sampler step over the window. We compare the K/V written, the raw model output and the
dispatcher output (incl. the distill nearly-clean blend in S4) within 1e-4.
"""
import json

import pytest
import torch
from safetensors.torch import load_file

from flowcache_core.cache.kv import KVAccess, KVStore
from flowcache_core.models.magi1.config import MagiConfig
from flowcache_core.models.magi1.dit import ChunkBatch, VideoDiT
from flowcache_core.models.magi1.schedule import distill_step_size

TOL = 1e-4


@pytest.fixture(scope="module")
def tiny(request):
    from conftest import GOLDEN

    d = GOLDEN / "magi1"
    cfg = MagiConfig.from_json(d / "tiny_distill.json").validate()
    model = VideoDiT(cfg.model).set_dtype(torch.float32).eval()
    model.load_state_dict(load_file(str(d / "tiny.safetensors")), strict=True)
    return cfg, model, d


def _chunks(x: torch.Tensor, cw: int) -> torch.Tensor:  # (C, n*cw, h, w) -> (n, C, cw, h, w)
    C, T, h, w = x.shape
    return x.view(C, T // cw, cw, h, w).permute(1, 0, 2, 3, 4)


def _store(layers, store, n):
    return torch.cat([torch.cat([store._slots[layers][("cond", c)].k, store._slots[layers][("cond", c)].v], -1) for c in range(n)])


@pytest.mark.parametrize("scenario", ["S1_plain", "S4_two_cached"])
def test_forward_matches_official(tiny, scenario):
    cfg, model, d = tiny
    g = load_file(str(d / f"forward_{scenario}.safetensors"))
    meta = json.loads((d / f"forward_{scenario}.json").read_text())
    cw, tpc = meta["chunk_width"], meta["tokens_per_chunk"]
    store = KVStore(cfg.model.num_layers)

    # Prefill: the clean chunks, each attending to itself, caption not dropped, distill step term num_steps/2.
    xs = _chunks(g["prefill.x"], cw)
    ncl = xs.shape[0]
    pre = ChunkBatch(x=xs, t=g["prefill.t"], chunk_ids=list(range(ncl)), kv_start=list(range(ncl)),
                     caption=g["prefill.y"][:ncl], caption_mask=g["prefill.mask"][:ncl],
                     caption_dropped=torch.zeros(ncl, dtype=torch.bool), write_kv=[True] * ncl,
                     distill_dt=distill_step_size(meta["prefill"]["kwargs"]["num_steps"], meta["prefill"]["kwargs"]["distill_interval"]))
    with torch.no_grad():
        out = model(pre, KVAccess(store))
    torch.testing.assert_close(out, _chunks(g["prefill.out"], cw), atol=TOL, rtol=TOL)
    for L in range(cfg.model.num_layers):
        torch.testing.assert_close(_store(L, store, ncl), g[f"kv_cache_after_prefill.L{L}"], atol=TOL, rtol=TOL)

    # Step over the window; kv ranges come in tokens over [cache ; current] = absolute chunk positions.
    st = meta["step"]
    kw = st["kwargs"]
    xs = _chunks(g["step.x"], cw)
    n = xs.shape[0]
    ids = st["chunks_in_x"]
    kv_start = [int(a) // tpc for a, _ in g["step.kv_range"].tolist()]
    assert [int(b) // tpc - 1 for _, b in g["step.kv_range"].tolist()] == ids
    t, y, m = g["step.t"], g["step.y"][:n], g["step.mask"][:n]
    rows = dict(x=xs, t=t, ids=list(ids), ks=kv_start, y=y, m=m, w=[True] * n, off=[c * cw for c in ids], sh=[True] * n)
    near = kw.get("distill_nearly_clean_chunk", False)
    if near:  # the oldest chunk again, attending only to itself, placed after the window, not written, not shared
        rows = dict(x=torch.cat([xs, xs[:1]]), t=torch.cat([t, t[:1]]), ids=ids + [ids[0]], ks=kv_start + [ids[0]],
                    y=torch.cat([y, y[:1]]), m=torch.cat([m, m[:1]]), w=[True] * n + [False],
                    off=rows["off"] + [(ids[-1] + 1) * cw], sh=[True] * n + [False])
    nr = len(rows["ids"])
    step = ChunkBatch(x=rows["x"], t=rows["t"], chunk_ids=rows["ids"], kv_start=rows["ks"], caption=rows["y"],
                      caption_mask=rows["m"], caption_dropped=torch.zeros(nr, dtype=torch.bool), write_kv=rows["w"],
                      time_offset=rows["off"], shared=rows["sh"], distill_dt=distill_step_size(kw["num_steps"], kw["distill_interval"]))
    with torch.no_grad():
        v = model(step, KVAccess(store))
    torch.testing.assert_close(v, _chunks(g["step.call0.out"], cw), atol=TOL, rtol=TOL)
    if near:
        v = torch.cat([0.7 * v[:1] + 0.3 * v[n : n + 1], v[1:n]])
    torch.testing.assert_close(v, _chunks(g["step.out"], cw), atol=TOL, rtol=TOL)
    for L in range(cfg.model.num_layers):
        ref = g[f"kv_cache_after_step.L{L}"]
        ok = ~torch.isnan(ref).any(-1).any(-1)
        torch.testing.assert_close(_store(L, store, 4)[ok], ref[ok], atol=TOL, rtol=TOL)


def test_rope_and_condition_intermediates(tiny):
    cfg, model, d = tiny
    g = load_file(str(d / "forward_S1_plain.safetensors"))
    # S1 step: chunks 1..3 of 2 latent frames on a 4x6 patch grid; official RoPE rows are [sin | cos].
    sin, cos = model.rope.sin_cos(torch.arange(2, 8), 4, 6)
    torch.testing.assert_close(torch.cat([sin, cos], -1), g["step.call0.pre.rope"], atol=1e-6, rtol=1e-6)
    cond = model.condition(g["step.t"], torch.zeros(3, dtype=torch.bool), distill_dt=8 / 2)
    torch.testing.assert_close(cond, g["step.call0.pre.condition"], atol=1e-5, rtol=1e-5)
