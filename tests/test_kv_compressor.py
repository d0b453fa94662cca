"""KV compression: agreement with the published KVCompressor scores/selections and our own invariants."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from flowcache_core.cache import kv_compressor
from flowcache_core.cache.kv_compressor import (
    KVCompressor, compress_clean, importance_pre_pool_dense, redundancy, redundancy_dense, select_queries,
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


# ------------------------------------------------------------------------------------------- tiled importance
# Tile budgets: the default (whole key rows, one softmax per query block), a few query rows per tile, and tiles
# smaller than one key row (keys blocked too: the two-pass log-sum-exp path), down to one key per tile.
BUDGETS = [None, 6 * 128 * 5, 6 * 40, 6 * 7, 1]


@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("size", ["S1", "S2"])
def test_tiled_importance_equals_dense_on_goldens(kv_unit, size, budget):
    keys = torch.from_numpy(kv_unit[f"{size}/keys"])
    queries = torch.from_numpy(kv_unit[f"{size}/queries"])
    tpf = META["sizes"][size]["tokens_per_frame"]
    for gran in ("token", "frame", "chunk"):
        q = select_queries(queries, gran, tpf)
        dense = importance_pre_pool_dense(keys, q)
        tiled = kv_compressor.importance_pre_pool(keys, q, block_elements=budget)
        torch.testing.assert_close(tiled, dense, rtol=0, atol=1e-5 * dense.max().item())
        run = next(r for r in RUNS if r["key"].startswith(f"{size}/") and r["key"].endswith(f"/token/{gran}"))
        want = torch.from_numpy(kv_unit[f"{run['key']}/importance_pre_pool"])  # the published scores
        torch.testing.assert_close(tiled, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("budget", BUDGETS[:4])
@pytest.mark.parametrize("L,lq,hkv,g,hd,scale", [
    (96, 37, 2, 3, 16, 1.0),      # odd query count: a partial last block
    (257, 300, 1, 8, 32, 3.0),    # MQA, peaked logits
    (128, 64, 4, 1, 8, 1.0),      # no GQA
    (500, 129, 8, 3, 64, 2.0),    # the 4.5B's GQA ratio (24 / 8)
    (33, 5, 3, 2, 16, 10.0),      # very peaked: exp over a wide range
])
def test_tiled_importance_equals_dense_on_random(L, lq, hkv, g, hd, scale, budget):
    gen = torch.Generator().manual_seed(L * 1000 + lq)
    keys = torch.randn(L, hkv, hd, generator=gen) * scale
    q = torch.randn(lq, hkv * g, hd, generator=gen)
    dense = importance_pre_pool_dense(keys, q)
    tiled = kv_compressor.importance_pre_pool(keys, q, block_elements=budget)
    assert tiled.dtype == torch.float32 and tiled.shape == (hkv, L)
    torch.testing.assert_close(tiled, dense, rtol=0, atol=1e-5 * dense.max().item())
    torch.testing.assert_close(tiled.sum(dim=-1), torch.ones(hkv), rtol=0, atol=1e-5)  # a mean of distributions


def test_block_shape():
    assert kv_compressor.block_shape(12150, 24300, 24, 1 << 26) == (115, 24300)  # the 4.5B event: whole rows
    assert kv_compressor.block_shape(10, 100, 6, 6000) == (10, 100)               # everything in one tile
    assert kv_compressor.block_shape(10, 100, 6, 599) == (1, 99)                  # a row does not fit: key blocks
    assert kv_compressor.block_shape(10, 100, 6, 1) == (1, 1)


class _Largest(TorchDispatchMode):
    """Records the largest tensor any op produces while active (the scorer's intermediates)."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.numel())
        return out


@pytest.mark.parametrize("L,lq,hkv,hq,hd,budget", [
    (1200, 2000, 2, 6, 16, 30_000),  # many queries: the dense logits would be 14.4 M elements, the inputs <= 192 k
    (3000, 100, 1, 24, 8, 600),      # long rows: one query row's logits (72 k) exceed both the budget and the inputs
])
def test_scorer_memory_does_not_scale_with_queries_times_keys(monkeypatch, L, lq, hkv, hq, hd, budget):
    # Every intermediate of a whole selection (importance tiles, softmax, redundancy, pooling, top-k) stays within
    # the tile budget or the size of the inputs. Fails with dense logits, with whole-row tiles when a row exceeds
    # the budget, or with any other (queries x keys) tensor.
    monkeypatch.setattr(kv_compressor, "_BLOCK_ELEMENTS", budget)
    keys, _ = make_kv(L=L, hkv=hkv, hd=hd, seed=9)
    q = torch.randn(lq, hq, hd)
    with _Largest() as seen:
        sel = KVCompressor("token", "chunk", 0.07).select(keys, q, 16, 400, L // 2)
    assert seen.numel <= max(budget, q.numel(), keys.numel()), seen.numel
    assert seen.numel * 50 < hq * lq * L
    torch.testing.assert_close(sel.scores.importance_pre_pool, importance_pre_pool_dense(keys, q), rtol=0, atol=1e-8)


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
