"""SkyReels-V2 DF on CUDA (skipped without it): a tiny checkpoint in bf16 runs every mode and option that touches the
device (async blocks, long video with addnoise, guidance, FlowCache) and stays close to the float32 CPU latents."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

from flowcache_core.api import generate  # noqa: E402
from flowcache_core.cache.settings import CacheConfig  # noqa: E402
from flowcache_core.models.skyreels_df.synthetic import write_checkpoint  # noqa: E402

KW = dict(height=32, width=32, num_frames=57, base_num_frames=33, overlap_history=9, num_steps=4, guidance_scale=2.0,
          ar_step=2, causal_block_size=3, addnoise_condition=20, seed=0)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("skyreels_gpu") / "df")


@pytest.mark.parametrize("cache", ["none", "flowcache"])
def test_cuda_run_is_close_to_the_cpu_run(ckpt, cache):
    cpu = generate("a red circle moves left", checkpoint_dir=ckpt, cache=CacheConfig(cache), device="cpu", **KW)
    gpu = generate("a red circle moves left", checkpoint_dir=ckpt, cache=CacheConfig(cache), device="cuda", **KW)
    assert gpu.frames.shape == cpu.frames.shape
    err = float((gpu.latents.float().cpu() - cpu.latents).abs().max() / cpu.latents.abs().max())
    assert err < 0.1, err  # bf16 against float32; the addnoise noise is drawn on the CPU in both
