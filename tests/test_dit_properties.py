"""Properties that fail if the architecture or the KV path is wrong (tiny random models)."""
import torch
import pytest

from flowcache_core.cache.kv import KVAccess, KVStore
from flowcache_core.models.magi1.config import ModelConfig, magi_24b, magi_4_5b
from flowcache_core.models.magi1.dit import ChunkBatch, LearnableRoPE, build_model, count_parameters

CW, HW = 2, (4, 4)


def tiny_cfg(**kw) -> ModelConfig:
    base = dict(num_layers=2, hidden_size=128, ffn_hidden_size=256, num_attention_heads=8, num_query_groups=2,
                kv_channels=16, in_channels=8, out_channels=8, caption_channels=16, caption_max_length=12,
                params_dtype="torch.float32")
    base.update(kw)
    return ModelConfig(**base)


def make_batch(cfg, n, ids=None, starts=None, seed=0, write=True):
    g = torch.Generator().manual_seed(seed)
    ids = ids or list(range(n))
    return ChunkBatch(
        x=torch.randn(n, cfg.in_channels, CW, *HW, generator=g), t=torch.rand(n, generator=g),
        chunk_ids=ids, kv_start=starts or [0] * n,
        caption=torch.randn(n, cfg.caption_max_length, cfg.caption_channels, generator=g),
        caption_mask=(torch.arange(cfg.caption_max_length) < 7).long().expand(n, -1).clone(),
        caption_dropped=torch.zeros(n, dtype=torch.bool), write_kv=[write] * n)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_model(tiny_cfg(), dtype=torch.float32, seed=3).eval()
    with torch.no_grad():  # the default init zeroes the output layer; give it something to show
        m.final_linear.linear.weight.normal_(0, 0.1)
    return m


@torch.no_grad()
def test_causality_later_chunk_does_not_change_earlier(model):
    b = make_batch(model.cfg, 3)
    out = model(b)
    b.x = b.x.clone()
    b.x[2] += 5.0
    out2 = model(b)
    assert torch.equal(out[:2], out2[:2])
    assert not torch.allclose(out[2], out2[2])


@torch.no_grad()
def test_cached_kv_equals_recomputed(model):
    """Chunk 2 with chunks 0, 1 read from the store == chunks 0..2 forwarded together."""
    b = make_batch(model.cfg, 3)
    full = model(b)  # dense path, no store
    store = KVStore(model.cfg.num_layers)
    first = make_batch(model.cfg, 3)
    first.x, first.t = b.x[:2], b.t[:2]
    first.chunk_ids, first.kv_start, first.write_kv = [0, 1], [0, 0], [True, True]
    first.caption, first.caption_mask, first.caption_dropped = b.caption[:2], b.caption_mask[:2], b.caption_dropped[:2]
    model(first, KVAccess(store))
    last = make_batch(model.cfg, 1)
    last.x, last.t, last.chunk_ids, last.kv_start = b.x[2:], b.t[2:], [2], [0]
    last.caption, last.caption_mask, last.caption_dropped = b.caption[2:], b.caption_mask[2:], b.caption_dropped[2:]
    out = model(last, KVAccess(store))
    torch.testing.assert_close(out[0], full[2], atol=1e-5, rtol=1e-5)
    assert store.chunks("cond") == [0, 1, 2]


@torch.no_grad()
def test_the_residual_stream_is_token_major_in_memory(model):
    """Every layer reads and returns (B, n, L, D) stored token-major: a channel-major stream (the conv's layout
    seen through a rearranged view) makes each residual add a transposed copy on the GPU."""
    feats = model.embed_patches(make_batch(model.cfg, 2).x)
    assert feats.is_contiguous()
    seen = []
    hooks = [layer.register_forward_hook(lambda m, args, out: seen.append((args[0].is_contiguous(), out.is_contiguous())))
             for layer in model.videodit_blocks.layers]
    try:
        model(make_batch(model.cfg, 2))
    finally:
        for h in hooks:
            h.remove()
    assert seen == [(True, True)] * model.cfg.num_layers


@torch.no_grad()
def test_kv_range_limits_what_a_chunk_sees(model):
    b2 = make_batch(model.cfg, 3, starts=[0, 1, 1])  # now nobody but chunk 0 sees chunk 0
    o1 = model(b2)
    b2.x = b2.x.clone()
    b2.x[0] += 5.0
    o2 = model(b2)
    assert torch.equal(o1[1:], o2[1:])


@torch.no_grad()
def test_batched_videos_match_single(model):
    b = make_batch(model.cfg, 3)
    single = model(b)
    bb = make_batch(model.cfg, 3)
    bb.x = torch.stack([b.x, b.x * 0.5])
    bb.t = torch.stack([b.t, b.t])
    bb.caption = torch.stack([b.caption, b.caption])
    bb.caption_mask = torch.stack([b.caption_mask, b.caption_mask])
    bb.caption_dropped = torch.stack([b.caption_dropped, b.caption_dropped])
    out = model(bb)
    torch.testing.assert_close(out[0], single, atol=1e-5, rtol=1e-5)


def test_magi_parameter_counts():
    m45 = build_model(magi_4_5b().model, device="meta")
    m24 = build_model(magi_24b().model, device="meta")
    assert 4.4e9 <= count_parameters(m45) <= 4.5e9  # 4,459,898,128
    assert 23.85e9 <= count_parameters(m24) <= 24.05e9  # 23,899,281,936: "24B" 


@torch.no_grad()
def test_eight_group_interleave_before_output_projection():
    """Self-attention output of head group g lands in columns [2g*w, (2g+1)*w) of linear_proj's input."""
    from einops import rearrange

    Hq, hd = 16, 8
    selfo = torch.arange(Hq * hd).float()
    cross = -torch.arange(Hq * hd).float() - 1
    a = rearrange(torch.cat([selfo, cross])[None, None, None], "b n l (two g d) -> b n l (g two d)", two=2, g=8)[0, 0, 0]
    w = Hq * hd // 8  # 2 heads per group
    for g in range(8):
        assert torch.equal(a[2 * g * w:(2 * g + 1) * w], selfo[g * w:(g + 1) * w])
        assert torch.equal(a[(2 * g + 1) * w:(2 * g + 2) * w], cross[g * w:(g + 1) * w])


def test_rope_rotates_first_three_quarters_in_halves():
    rope = LearnableRoPE(128)
    sin, cos = rope.sin_cos(torch.arange(3, 5), 2, 2)  # absolute frames 3, 4
    assert sin.shape == (8, 48)
    x = torch.randn(8, 1, 128)
    y = LearnableRoPE.apply(x, sin, cos)
    assert torch.equal(y[..., 96:], x[..., 96:])  # last 32 dims pass through
    # dims i and i+48 form a rotated pair (GPT-NeoX halves, not interleaved)
    torch.testing.assert_close(y[..., :48] ** 2 + y[..., 48:96] ** 2, x[..., :48] ** 2 + x[..., 48:96] ** 2)
    # time band 0 of the first token: angle = frame index (3) * band 1.0
    torch.testing.assert_close(sin[0, 0], torch.sin(torch.tensor(3.0)))
