"""The attention entry point on the CPU: the default backend ("auto") computes what SDPA computes wherever
flash-attn 4 does not apply (here: no CUDA), masked or not, GQA or not. The GPU side is tests/test_attention_gpu.py."""
from __future__ import annotations

import pytest
import torch

from flowcache_core.errors import FlowcacheError
from flowcache_core.models.attention import ATTN_BACKENDS, attend, check_backend


@pytest.mark.parametrize("heads", [(4, 4), (6, 2)])
@pytest.mark.parametrize("masked", [False, True])
def test_auto_is_sdpa_where_flash_attn_4_does_not_apply(heads, masked):
    hq, hkv = heads
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 24, hq, 16, generator=g)  # (B, Lq, Hq, hd)
    k = torch.randn(1, 40, hkv, 16, generator=g)
    v = torch.randn(1, 40, hkv, 16, generator=g)
    mask = (torch.rand(1, 1, 24, 40, generator=g) > 0.3) if masked else None
    auto = attend(q, k, v, mask=mask)  # the default
    assert torch.equal(auto, attend(q, k, v, mask=mask, backend="sdpa"))
    assert auto.shape == q.shape


def test_backend_names_are_checked():
    assert ATTN_BACKENDS[0] == "auto"
    assert check_backend("auto") == "auto" and check_backend("sdpa") == "sdpa"
    with pytest.raises(FlowcacheError, match=r"'fa3' unknown \(allowed: auto, sdpa, flash\)"):
        check_backend("fa3")
