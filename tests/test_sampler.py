"""What the sampler hands the model: captions per row, clean rows, kv ranges, and the caching seam."""
import pytest
import torch

from flowcache_core.api import generate
from flowcache_core.models.magi1.bundle import load_bundle
from flowcache_core.cache.settings import CacheConfig


def _record_batches(model):
    seen = []
    model.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    return seen


def test_clean_rows_get_the_null_caption_and_denoising_rows_the_prompt(tiny_bundle_dir):
    b = load_bundle(tiny_bundle_dir)
    seen = _record_batches(b.model)
    generate("a red square moves left", bundle=b, seed=0, cfg_number=1)  # one pass: every denoising row has the prompt
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


@pytest.mark.parametrize("cfg_number, passes", [(1, 1), (3, 2)])  # the tiny bundle's CFG: text-only, two passes
def test_skipped_chunks_are_not_forwarded(tiny_bundle_dir, cfg_number, passes):
    b = load_bundle(tiny_bundle_dir)
    seen = _record_batches(b.model)
    r = generate("a red square moves left", bundle=b, seed=0, cfg_number=cfg_number,
                 cache=CacheConfig("flowcache", rel_l1_thresh=10.0, warmup_steps=0, reuse="velocity"))
    # the nearly-clean duplicate (cfg_number 1, not shared with other rows) is a second look at a computed chunk
    rows_forwarded = sum(sum(batch.shared) if batch.shared else len(batch.chunk_ids) for batch in seen)
    clean_rows = sum(int((batch.t > 0.99).sum()) for batch in seen)
    assert r.record.reused and sum(r.record.reused.values()) > 0
    # only computed chunks go through the DiT, once per CFG pass
    assert rows_forwarded - clean_rows == passes * r.record.computed_chunk_forwards
    assert r.record.computed_chunk_forwards < r.record.chunk_forwards


def test_text_only_cfg_runs_two_passes_and_matches_three(tiny_bundle_dir):
    """cfg_number 3 with every prev_chunk_scale 1: the unconditional pass has weight 0, so it is skipped; the
    result equals the three-pass run (prev scales a hair above 1) and is not the one-pass result."""
    import dataclasses

    b = load_bundle(tiny_bundle_dir)
    rt = b.config.runtime
    seen = _record_batches(b.model)

    def run(prev: float):
        b.config.runtime = dataclasses.replace(rt, cfg_number=3, text_scales=[2.0] * 5, prev_chunk_scales=[prev] * 5)
        seen.clear()
        out = generate("a red square moves left", bundle=b, seed=0)
        return out, len(seen)

    two, n_two = run(1.0)
    three, n_three = run(1.0 + 1e-9)
    b.config.runtime = rt
    one = generate("a red square moves left", bundle=b, seed=0)
    assert n_two < n_three  # DiT calls: the unconditional pass is gone
    assert two.record.tokens_forwarded * 3 == three.record.tokens_forwarded * 2
    torch.testing.assert_close(two.latents, three.latents, atol=1e-4, rtol=0)
    assert (two.latents - one.latents).abs().max() > 1e-2  # guidance changes the video


@pytest.mark.parametrize("num_steps", [12, 24])
def test_distill_model_gets_the_official_step_size_on_every_forward(tiny_bundle_dir, num_steps):
    """A distill model's step-size embedding (official get_embedding_and_meta): 8 / interval at 12 steps with the
    forward's interval (the prefill's is the first one, 2), num_steps / 2 otherwise, at every forward."""
    import dataclasses

    import numpy as np

    b = load_bundle(tiny_bundle_dir)
    b.config.engine = dataclasses.replace(b.config.engine, distill=True)
    seen = _record_batches(b.model)
    prefix = np.random.default_rng(0).integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)  # two chunks of 4 frames
    generate("a red square moves left", mode="v2v", prefix_video=prefix, bundle=b, seed=0, cfg_number=1,
             num_steps=num_steps, num_frames=8)
    expected = {12: [4.0, 8.0, 8.0], 24: [12.0, 12.0, 12.0]}[num_steps]
    prefill, *steps = seen
    assert all(abs(t - b.config.runtime.clean_t) < 1e-6 for t in prefill.t.tolist())
    assert prefill.distill_dt == expected[0]
    d = num_steps // b.config.runtime.window_size
    # one batch per forward (cfg_number 1; nearly-clean duplicates ride in the same batch)
    assert [batch.distill_dt for batch in steps] == [expected[i % d % 3] for i in range(len(steps))]


def test_one_pass_runs_blend_the_nearly_clean_chunk_for_any_model(tiny_bundle_dir):
    """The official cfg-1 dispatcher forwards the oldest denoising chunk a second time, seeing only itself, when its
    t is above distill_nearly_clean_chunk_threshold, whether or not the model is distilled (the tiny bundle is not)."""
    b = load_bundle(tiny_bundle_dir)
    assert not b.config.engine.distill
    seen = _record_batches(b.model)
    generate("a red square moves left", bundle=b, seed=0, cfg_number=1)
    thr = b.config.engine.distill_nearly_clean_chunk_threshold
    for batch in seen:
        den = [j for j, s in enumerate(batch.shared or [True] * len(batch.chunk_ids)) if batch.t[j] < 0.99]
        oldest_t = float(batch.t[den[0]])
        duplicated = len(batch.chunk_ids) != len(set(batch.chunk_ids))
        assert duplicated == (oldest_t > thr)
    assert any(len(b_.chunk_ids) != len(set(b_.chunk_ids)) for b_ in seen)
