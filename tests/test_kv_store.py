"""The KV store with a budget: compression when a new chunk needs room, never over budget, flat memory."""
import pytest
import torch

from flowcache_core.api import generate
from flowcache_core.models.magi1.bundle import load_bundle
from flowcache_core.cache.kv import BudgetExceeded, KVStore
from flowcache_core.cache.kv_compressor import KVCompressor
from flowcache_core.cache.settings import CacheConfig


@pytest.fixture(scope="module")
def unlimited_range_bundle(tiny_bundle_dir):
    b = load_bundle(tiny_bundle_dir)
    b.config = b.config.replace(noise2clean_kvrange=[])  # every chunk may attend to all earlier ones (as published)
    return b


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["token", "frame", "chunk"])
def test_forty_chunks_stay_inside_budget_and_flat(unlimited_range_bundle, strategy):
    b = unlimited_range_bundle
    tpc = b.config.runtime.chunk_width * 8 * 8
    r = generate("a red square moves left", bundle=b, num_frames=160,  # 40 chunks of 4 frames
                 cache=CacheConfig("none", total_cache_chunk_nums=6, compress_strategy=strategy))
    kv = r.record.kv_tokens
    assert r.record.compressions >= 30
    assert max(kv) <= 6 * tpc  # the store raises BudgetExceeded before this could fail
    full = kv.index(6 * tpc)
    assert set(kv[full:]) == {6 * tpc}  # flat once the budget is reached


@pytest.mark.slow
def test_without_budget_every_chunk_stays(unlimited_range_bundle):
    b = unlimited_range_bundle
    tpc = b.config.runtime.chunk_width * 8 * 8
    free = generate("a red square moves left", bundle=b, num_frames=160, cache=CacheConfig("none"))
    assert max(free.record.kv_tokens) == 40 * tpc and free.record.compressions == 0


def test_store_refuses_to_exceed_budget():
    s = KVStore(1, budget_tokens=8, compressor=KVCompressor(), tokens_per_chunk=4, tokens_per_frame=2)
    s.write(0, "cond", 0, torch.randn(4, 2, 8), torch.randn(4, 2, 8))
    s.write(0, "cond", 1, torch.randn(4, 2, 8), torch.randn(4, 2, 8))
    with pytest.raises(BudgetExceeded):
        s.write(0, "cond", 2, torch.randn(4, 2, 8), torch.randn(4, 2, 8))
    assert s.tokens("cond") == 8


def test_compressed_block_keeps_positions_and_origins():
    torch.manual_seed(0)
    s = KVStore(1, budget_tokens=12, compressor=KVCompressor("token", "chunk", 0.07), tokens_per_chunk=4, tokens_per_frame=2)
    for c in range(3):
        s.write(0, "cond", c, torch.randn(4, 2, 8), torch.randn(4, 2, 8))
    q = torch.randn(4, 4, 8)
    assert s.make_room(4, final_clean=[0, 1], queries={0: q})  # chunk 2 stays: it is not final
    block = s._compressed[0]
    assert block.keys.shape == (4, 2, 8)  # 12 - 4 (chunk 2) - 4 (incoming) = 4 kept of 8
    assert (block.positions.diff(dim=0) > 0).all()  # position order per head
    assert set(block.origin_chunk.unique().tolist()) <= {0, 1}
    assert (block.positions // 4 == block.origin_chunk).all()
    assert s.tokens("cond") == 8 and sorted(s.compressed_chunks) == [0, 1]
    k, _ = s.read(0, ("cond",), [1, 2])
    assert sum(x.shape[0] for x in k) == 8  # the compressed block once, then chunk 2


@pytest.mark.parametrize("b_total", [5, 6])
def test_b_total_compresses_the_just_clean_chunk_as_published(unlimited_range_bundle, b_total, monkeypatch):
    """The published budget (FlowCache KVCacheCompressor): when a new chunk is about to enter a full cache, every
    clean chunk, the one that has just become clean included, is compressed to max(clean - one chunk, one chunk)
    tokens. B_total 5 with a window of 4 therefore keeps one chunk of compressed history, B_total 6 two."""
    import flowcache_core.api as api

    b = unlimited_range_bundle
    tpc = b.config.runtime.chunk_width * 8 * 8
    window = b.config.runtime.window_size
    stores = []
    make_store = api.make_store
    monkeypatch.setattr(api, "make_store", lambda *a, **k: stores.append(make_store(*a, **k)) or stores[-1])
    r = generate("a red square moves left", bundle=b, num_frames=40,  # 10 chunks of 4 frames
                 cache=CacheConfig("none", total_cache_chunk_nums=b_total))
    log = stores[0].compression_log
    assert r.record.compressions == len(log) == 10 - b_total  # one event for each chunk entering a full cache
    for clean, kept in log:
        assert kept == max(clean - tpc, tpc)  # the published arithmetic, every event
    assert log[0] == ((b_total - window + 1) * tpc, (b_total - window) * tpc)
    assert max(r.record.kv_tokens) == b_total * tpc


def test_prefix_longer_than_the_budget_is_refused(unlimited_range_bundle):
    import numpy as np

    from flowcache_core.errors import FlowcacheError

    prefix = np.random.default_rng(0).integers(0, 256, (20, 64, 64, 3), dtype=np.uint8)  # 5 prefix chunks
    with pytest.raises(FlowcacheError, match="total_cache_chunk_nums=5 cannot hold the 5 prefix chunks"):
        generate("a red square", mode="v2v", prefix_video=prefix, bundle=unlimited_range_bundle, num_frames=8,
                 cache=CacheConfig("none", total_cache_chunk_nums=5))
    r = generate("a red square", mode="v2v", prefix_video=prefix, bundle=unlimited_range_bundle, num_frames=8,
                 cache=CacheConfig("none", total_cache_chunk_nums=6))
    assert r.frames.shape[0] == 8


def test_a_budget_that_never_needs_room_leaves_the_run_unchanged(tiny_bundle_dir):
    """With MAGI-1's kv range [5,4,3,2] and a window of 4, B_total 5 never has to compress (older chunks are evicted
    first): the video and every forward equal the run without a budget, bit for bit."""
    b = load_bundle(tiny_bundle_dir)
    assert b.config.runtime.noise2clean_kvrange == [5, 4, 3, 2]
    free = generate("a red square moves left", bundle=b, num_frames=40, cache=CacheConfig("flowcache"))
    capped = generate("a red square moves left", bundle=b, num_frames=40,
                      cache=CacheConfig("flowcache", total_cache_chunk_nums=5))
    assert capped.record.compressions == 0
    assert torch.equal(free.latents, capped.latents)
    assert free.record.computed == capped.record.computed


def test_compression_frees_each_layers_merged_chunks_before_the_next_layer():
    """The first compression moves nearly the whole store into the blocks: done layer by layer, what is held in
    flight is the store plus one layer's new block, never a second copy of every layer (the GPU peak of a budget)."""
    from flowcache_core.cache.kv_sink_window import SinkWindowKV

    layers, tpc, held = 6, 8, []

    class Watching(SinkWindowKV):
        def select(self, keys, positions, queries, **kw):
            held.append(s.count_bytes())  # what the slots and blocks hold while this layer is being merged
            return super().select(keys, positions, queries, **kw)

    s = KVStore(layers, budget_tokens=5 * tpc, policy=Watching(), tokens_per_chunk=tpc, tokens_per_frame=4)
    g = torch.Generator().manual_seed(0)
    for c in range(5):
        for layer in range(layers):
            s.write(layer, "cond", c, torch.randn(tpc, 2, 4, generator=g), torch.randn(tpc, 2, 4, generator=g))
    before = s.nbytes()
    assert s.make_room(tpc, [0, 1, 2, 3], {})
    per_layer = before // layers
    assert len(held) == layers
    # layer i is merged while layers < i already hold their (smaller) blocks and no longer their slots
    assert all(h <= before for h in held) and held[-1] < before - (layers - 2) * per_layer // 8
    assert s.count_bytes() == s.nbytes() < before
