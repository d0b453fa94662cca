"""GPU-only: the shipped default model generates on CUDA through the engine, with a cache policy and a KV budget
(the compressor's queries come back from the DiT on the device), close to the CPU video. Skips without CUDA."""
import numpy as np
import pytest
import torch

from flowcache_core.api import generate
from flowcache_core.cache.settings import CacheConfig
from flowcache_core.eval.metrics import psnr

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_default_model_on_cuda_with_flowcache_and_a_budget(tmp_path):
    cfg = tmp_path / "all_range.json"
    cfg.write_text('{"runtime_config": {"noise2clean_kvrange": []}}')  # the published setting: the budget bites
    kw = dict(num_frames=40, seed=0, config_file=cfg, cache=CacheConfig("flowcache", total_cache_chunk_nums=5))
    gpu = generate("a blue triangle moves up", device="cuda", **kw)
    cpu = generate("a blue triangle moves up", device="cpu", **kw)
    tokens_per_chunk = 4 * 8 * 8  # 4 latent frames of 8x8 patches (64x64 px, codec 4x, patch 2)
    assert gpu.record.compressions == cpu.record.compressions > 0
    assert max(gpu.record.kv_tokens) <= 5 * tokens_per_chunk
    # cuDNN may run the patch-embedding conv in TF32, so a decision near the threshold can flip: close, not equal
    assert abs(gpu.record.computed_chunk_forwards - cpu.record.computed_chunk_forwards) <= 0.1 * cpu.record.chunk_forwards
    assert gpu.frames.shape == cpu.frames.shape == (40, 64, 64, 3)
    assert psnr(cpu.frames, gpu.frames) > 30
    assert gpu.record.peak_memory_bytes > 0 and np.isfinite(gpu.latents.cpu().numpy()).all()
