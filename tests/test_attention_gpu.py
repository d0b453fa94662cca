"""GPU-only: SDPA and flash-attn agree with a float64 reference in bf16, and a small DiT forward gives the same
output through both (issue 2, acceptance 4). Skips without CUDA; the flash parts skip without flash-attn.
`bench/gpu_forward.py` runs the same reference check at the full 4.5B shape."""
from __future__ import annotations

import pytest
import torch

from flowcache_core.models.attention import attend, available_backends

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
BF16_REL = 1e-2  # bf16 inputs and outputs: ~3.7e-3 measured on an H100 for both backends


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("backend", ["auto", "sdpa", "flash"])
def test_backend_matches_float64_reference_in_bf16(backend):
    if backend == "flash" and "flash" not in available_backends():
        pytest.skip("flash-attn not importable here")
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(1, 1024, 24, 128, device="cuda", generator=g)  # (B, Lq, Hq, hd): GQA 24 query / 8 K/V heads
    k = torch.randn(1, 4096, 8, 128, device="cuda", generator=g)
    v = torch.randn(1, 4096, 8, 128, device="cuda", generator=g)
    ref = attend(q.double().cpu(), k.double().cpu(), v.double().cpu()).cuda()
    out = attend(q.bfloat16(), k.bfloat16(), v.bfloat16(), backend=backend)
    assert out.shape == q.shape
    assert _rel(out, ref) < BF16_REL


def test_auto_takes_flash_attn_4_only_where_it_applies():
    """auto = flash-attn 4 for bf16/fp16 unmasked calls without a gradient when importable, SDPA for the rest."""
    from flowcache_core.models.attention import _flash_fn

    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, 512, 8, 64, device="cuda", generator=g) for _ in range(3))
    fa4 = _flash_fn() is not None and _flash_fn()[0] == "fa4"
    half = [t.bfloat16() for t in (q, k, v)]
    assert torch.equal(attend(*half, backend="auto"), attend(*half, backend="flash" if fa4 else "sdpa"))
    assert torch.equal(attend(q, k, v, backend="auto"), attend(q, k, v, backend="sdpa"))  # float32: SDPA
    mask = torch.ones(1, 1, 512, 512, dtype=torch.bool, device="cuda").tril()
    assert torch.equal(attend(*half, mask=mask, backend="auto"), attend(*half, mask=mask, backend="sdpa"))
    grad = [t.clone().requires_grad_() for t in half]  # training: SDPA
    assert torch.equal(attend(*grad, backend="auto"), attend(*grad, backend="sdpa"))


def test_flash_and_sdpa_model_forwards_agree():
    if "flash" not in available_backends():
        pytest.skip("flash-attn not importable here")
    from flowcache_core.models.magi1.config import magi_4_5b
    from flowcache_core.models.magi1.dit import ChunkBatch, build_model

    cfg = magi_4_5b(distill=True).model
    cfg.num_layers = 2
    outs = []
    for backend in ("sdpa", "flash"):
        model = build_model(cfg, device="cuda", dtype=torch.bfloat16, seed=0, attn_backend=backend).eval()
        with torch.no_grad():
            model.final_linear.linear.weight.normal_(0, 0.02, generator=torch.Generator(device="cuda").manual_seed(1))
        g = torch.Generator(device="cuda").manual_seed(2)
        n, lc = 3, 32
        batch = ChunkBatch(x=torch.randn(n, cfg.in_channels, 2, 16, 16, device="cuda", generator=g),
                           t=torch.tensor([0.7, 0.4, 0.1], device="cuda"), chunk_ids=[0, 1, 2], kv_start=[0, 0, 0],
                           caption=torch.randn(n, lc, cfg.caption_channels, device="cuda", generator=g),
                           caption_mask=torch.ones(n, lc, dtype=torch.long, device="cuda"),
                           caption_dropped=torch.zeros(n, dtype=torch.bool, device="cuda"), write_kv=[False] * n,
                           distill_dt=32.0)
        with torch.no_grad():
            outs.append(model(batch).float())
    assert _rel(outs[1], outs[0]) < BF16_REL


@torch.no_grad()
def test_wan_forward_through_auto_matches_sdpa():
    """The Wan DiT in bf16 on CUDA (block-causal self-attention, unmasked cross-attention to the text): the default
    backend, flash-attn 4 where it imports (else SDPA), gives the SDPA forward's output within bf16's error."""
    from test_wan_dit import inputs, random_model, tiny_cfg

    model = random_model(tiny_cfg(attention_head_dim=64)).cuda().set_dtype(torch.bfloat16)
    x, t, text = (a.cuda() for a in inputs())
    ctx = model.embed_text(text)
    outs = {}
    for backend in ("sdpa", "auto"):
        model.attn_backend = backend
        outs[backend] = model(x, t, ctx, block_frames=2, fps=24).float()
    assert _rel(outs["auto"], outs["sdpa"]) < BF16_REL
