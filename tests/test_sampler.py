"""What the sampler hands the model: captions per row, clean rows, kv ranges, and the caching seam."""
import torch

from flowcache_core.api import generate
from flowcache_core.bundle import load_bundle
from flowcache_core.cache.policy import CacheConfig


def _record_batches(model):
    seen = []
    model.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    return seen


def test_clean_rows_get_the_null_caption_and_denoising_rows_the_prompt(tiny_bundle_dir):
    b = load_bundle(tiny_bundle_dir)
    seen = _record_batches(b.model)
    generate("a red square moves left", bundle=b, seed=0)
    clean_t = b.config.runtime.clean_t
    null_rows = min(50, b.config.model.caption_max_length)
    prompt_tokens = len("a red square moves left".split())
    n_clean = n_den = 0
    for batch in seen:
        for j, t in enumerate(batch.t.tolist()):
            valid = int(batch.caption_mask[j].sum())
            if abs(t - clean_t) < 1e-6:
                n_clean += 1
                assert valid == null_rows
                assert torch.equal(batch.caption[j, :null_rows], b.model.y_embedder.null_caption_embedding[:null_rows].float())
            else:
                n_den += 1
                assert valid == prompt_tokens
    assert n_clean >= 2 and n_den > n_clean


def test_skipped_chunks_are_not_forwarded(tiny_bundle_dir):
    b = load_bundle(tiny_bundle_dir)
    seen = _record_batches(b.model)
    r = generate("a red square moves left", bundle=b, seed=0,
                 cache=CacheConfig("flowcache", rel_l1_thresh=10.0, warmup_steps=0, reuse="velocity"))
    rows_forwarded = sum(len(batch.chunk_ids) for batch in seen)
    clean_rows = sum(int((batch.t > 0.99).sum()) for batch in seen)
    assert r.record.reused and sum(r.record.reused.values()) > 0
    assert rows_forwarded - clean_rows == r.record.computed_chunk_forwards  # only computed chunks go through the DiT
    assert r.record.computed_chunk_forwards < r.record.chunk_forwards
