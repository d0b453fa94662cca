"""KV compression: agreement with the published KVCompressor scores/selections and our own invariants."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from flowcache_core.cache import kv_compressor
from flowcache_core.cache.kv_compressor import (
    KVCompressor, compress_clean, redundancy, redundancy_dense, select_queries,
)
from flowcache_core.errors import FlowcacheError

GOLDEN = Path(__file__).parent / "golden" / "flowcache"
META = json.loads((GOLDEN / "kv_unit.json").read_text())
RUNS = META["runs"]


@pytest.fixture(scope="module")
def kv_unit():
    return dict(np.load(GOLDEN / "kv_unit.npz"))


@pytest.mark.parametrize("run", RUNS, ids=[r["key"] for r in RUNS])
def test_golden_scores_and_selection(kv_unit, run):
    size = META["sizes"][run["size"]]
    keys = torch.from_numpy(kv_unit[f"{run['size']}/keys"])
    queries = torch.from_numpy(kv_unit[f"{run['size']}/queries"])
    comp = KVCompressor(run["compress_strategy"], run["query_granularity"], run["mix_lambda"])
    sel = comp.select(keys, queries, size["tokens_per_frame"], size["tokens_per_chunk"], run["budget"])
    for name in ("importance_pre_pool", "importance", "redundancy", "combined"):
        want = torch.from_numpy(kv_unit[f"{run['key']}/{name}"])
        torch.testing.assert_close(getattr(sel.scores, name), want, rtol=0, atol=1e-6)
    assert (sel.indices.diff(dim=-1) > 0).all()  # position order, not score order
    unit = comp.unit_size(size["tokens_per_frame"], size["tokens_per_chunk"])
    for h, ties in enumerate(run["boundary_ties"]):
        ours, gold = set(sel.indices[h].tolist()), set(run[f"selected_sorted_head{h}"])
        tie = {u * unit + j for u in ties["tie_group"] for j in range(unit)}  # tie groups name units
        assert ours - tie == gold - tie
        assert len(ours & tie) == ties["n_selected_from_tie_group"] * unit


def test_golden_compressed_values_as_sets(kv_unit):
    run = next(r for r in RUNS if r["key"] == "S1/b96/lam0.07/token/chunk")
    size = META["sizes"]["S1"]
    keys = torch.from_numpy(kv_unit["S1/keys"])
    values = torch.from_numpy(kv_unit["S1/values"])
    queries = torch.from_numpy(kv_unit["S1/queries"])
    out = compress_clean(
        keys, values, torch.arange(128), torch.arange(128) // 32, queries,
        compressor=KVCompressor("token", "chunk", 0.07), tokens_per_frame=16, tokens_per_chunk=32, budget=96,
    )
    gold_idx = torch.from_numpy(kv_unit[f"{run['key']}/selected_sorted"])
    tie = set(run["boundary_ties"][0]["tie_group"])
    for h in range(2):
        for i, p in enumerate(out.positions[:, h].tolist()):
            assert torch.equal(out.keys[i, h], keys[p, h]) and torch.equal(out.values[i, h], values[p, h])
            assert out.origin_chunk[i, h] == p // size["tokens_per_chunk"]
        assert set(out.positions[:, h].tolist()) - tie == set(gold_idx[h].tolist()) - tie


def test_token_granularity_uses_last_50_queries():
    q = torch.randn(120, 6, 16)
    assert torch.equal(select_queries(q, "token", 16), q[-50:])
    assert torch.equal(select_queries(q, "frame", 16), q[-16:])
    assert torch.equal(select_queries(q, "chunk", 16), q)


def make_kv(L=96, hkv=2, hd=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(L, hkv, hd, generator=g), torch.randn(L, hkv, hd, generator=g)


def test_redundancy_linear_equals_dense():
    keys, _ = make_kv(L=200, seed=1)
    keys[50] = keys[10]
    keys[51] = keys[10] * 3.0
    torch.testing.assert_close(redundancy(keys), redundancy_dense(keys), rtol=1e-5, atol=1e-7)


def test_lambda0_drops_duplicates_first():
    keys, _ = make_kv(L=64, seed=2)
    dup = [5, 20, 33, 47]
    for i in dup:
        keys[i] = keys[4] * (1.0 + 0.1 * i)  # same direction: cosine 1 to each other
    q = torch.randn(16, 6, 16)
    sel = KVCompressor("token", "chunk", 0.0).select(keys, q, 8, 16, 64 - 5)
    for h in range(2):
        assert not set(sel.indices[h].tolist()) & {4, *dup}


def test_lambda1_keeps_most_attended():
    keys, _ = make_kv(L=64, seed=3)
    q = torch.randn(16, 6, 16)
    target = 40
    keys[target] = q[:, :3].mean(dim=(0, 1)) * 20.0  # every query of kv head 0 attends here
    sel = KVCompressor("token", "chunk", 1.0, kernel_size=1).select(keys, q, 8, 16, 1)
    assert sel.indices[0].tolist() == [target]


@pytest.mark.parametrize("strategy,unit", [("token", 1), ("frame", 8), ("chunk", 16)])
def test_units_kept_whole_and_in_order(strategy, unit):
    keys, values = make_kv(L=64, seed=4)
    q = torch.randn(32, 6, 16)
    out = compress_clean(
        keys, values, torch.arange(100, 164), torch.arange(64) // 16, q,
        compressor=KVCompressor(strategy, "frame", 0.07), tokens_per_frame=8, tokens_per_chunk=16, budget=32,
    )
    assert out.keys.shape == (32, 2, 16) and out.positions.shape == (32, 2)
    for h in range(2):
        pos = out.positions[:, h]
        assert (pos.diff() > 0).all()
        rel = (pos - 100).tolist()
        for i in range(0, 32, unit):
            start = rel[i]
            assert start % unit == 0 and rel[i:i + unit] == list(range(start, start + unit))


def test_second_compression_keeps_provenance():
    keys, values = make_kv(L=64, seed=5)
    q = torch.randn(16, 6, 16)
    comp = KVCompressor("token", "chunk", 0.07)
    first = compress_clean(keys, values, torch.arange(64), torch.arange(64) // 16, q,
                           compressor=comp, tokens_per_frame=8, tokens_per_chunk=16, budget=32)
    k2, v2 = make_kv(L=16, seed=6)  # a new clean chunk (id 4, positions 64..79) appended
    keys2 = torch.cat([first.keys, k2])
    pos2 = torch.cat([first.positions, torch.arange(64, 80).unsqueeze(1).expand(-1, 2)])
    org2 = torch.cat([first.origin_chunk, torch.full((16, 2), 4)])
    second = compress_clean(keys2, torch.cat([first.values, v2]), pos2, org2, q,
                            compressor=comp, tokens_per_frame=8, tokens_per_chunk=16, budget=32)
    for h in range(2):
        assert (second.positions[:, h].diff() > 0).all()
        assert torch.equal(second.origin_chunk[:, h], second.positions[:, h] // 16)
        for i, p in enumerate(second.positions[:, h].tolist()):
            src = keys[p, h] if p < 64 else k2[p - 64, h]
            assert torch.equal(second.keys[i, h], src)


def test_bad_units_raise_one_line():
    keys, _ = make_kv(L=60, seed=7)
    with pytest.raises(FlowcacheError, match="compress_strategy=frame") as e:
        KVCompressor("frame", "chunk", 0.07).select(keys, torch.randn(8, 6, 16), 8, 16, 32)
    assert "\n" not in str(e.value)
    with pytest.raises(FlowcacheError, match="'sentence'"):
        KVCompressor("sentence")


def test_importance_in_query_blocks_equals_direct(monkeypatch):
    monkeypatch.setattr(kv_compressor, "_BLOCK_ELEMENTS", 6 * 40 * 100)  # 100 queries per block
    keys, _ = make_kv(L=40, seed=8)
    q = torch.randn(2550, 6, 16)
    direct = torch.stack([
        (torch.einsum("qcd,ld->cql", q[:, 3 * h:3 * h + 3], keys[:, h]) / 4.0).amax(0).softmax(-1).mean(0)
        for h in range(2)
    ])
    torch.testing.assert_close(kv_compressor.importance_pre_pool(keys, q), direct, rtol=1e-5, atol=1e-7)


def test_half_precision_keys_score_close_to_float32():
    # A bf16 model's K/V are scored with bf16 logits and a float32 softmax (the cheap path on a GPU): the
    # importance must stay within bf16 rounding of the float32 one and keep nearly the same tokens.
    g = torch.Generator().manual_seed(11)
    keys = torch.randn(512, 2, 32, generator=g) * 2.0
    q = torch.randn(256, 6, 32, generator=g) * 2.0
    ref = kv_compressor.importance_pre_pool(keys, q)
    half = kv_compressor.importance_pre_pool(keys.bfloat16(), q.bfloat16())
    assert half.dtype == torch.float32
    assert ((half - ref).abs().max() / ref.max()).item() < 0.03
    comp = KVCompressor("token", "chunk", 0.07)
    a = comp.select(keys, q, 16, 64, 256).indices
    b = comp.select(keys.bfloat16(), q.bfloat16(), 16, 64, 256).indices
    overlap = np.mean([len(set(a[h].tolist()) & set(b[h].tolist())) / 256 for h in range(2)])
    assert overlap >= 0.9, overlap
