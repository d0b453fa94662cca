import functools
from pathlib import Path

import pytest
import torch

# One torch thread for every test. Most tests run tiny models (many small forwards); with two threads on a 2-core
# machine that other processes also use, every op waits on a descheduled thread (measured under load: the fast set
# 8 min with two threads, 1.5 min with one; test_sampler, test_generate_cli and test_kv_store alone 268 s against
# 18 s). Results are compared within a process or to goldens with tolerances, so the thread count changes no check.
torch.set_num_threads(1)
GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture
def golden_dir() -> Path:
    return GOLDEN


def make_tiny_bundle(path: Path, seed: int = 0) -> Path:
    """A small random model in the bundle layout of the default model (same codec, text encoder, world size),
    with 2 layers of width 64 and 8 steps, so end-to-end tests run in about a second."""
    import dataclasses

    from flowcache_core.models.magi1.dit import build_model
    from flowcache_core.models.text import WordTextEncoder
    from flowcache_core.training.world import world_text_config
    from flowcache_core.training.train import default_model_config, export_default_model

    cfg = default_model_config()
    cfg.model = dataclasses.replace(cfg.model, num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=8,
                                    num_query_groups=2, kv_channels=8)
    cfg.runtime = dataclasses.replace(cfg.runtime, num_steps=8, num_frames=16)
    cfg.extra["flowcache"]["cache_defaults"]["warmup_steps"] = 4  # the shipped 8 would leave no step of 8 to reuse
    model = build_model(cfg.model, dtype=torch.float32, seed=seed)
    with torch.no_grad():  # the training init zeroes the output layer; a random model should move the latents
        model.final_linear.linear.weight.normal_(0, 0.05)
    export_default_model(model, WordTextEncoder(world_text_config(seed=seed)), cfg, path, dtype=torch.float32)
    return path


@pytest.fixture(scope="session")
def tiny_bundle_dir(tmp_path_factory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("tiny_bundle"))


@functools.lru_cache(maxsize=1)
def real_lpips():
    """The real LPIPS (AlexNet v0.1) from local files, fetching them into the cache folder once if needed;
    LpipsUnavailable (with the reason) when that is impossible, so the tests that need it skip."""
    import subprocess

    from flowcache_core.eval.metrics import LpipsUnavailable, load_lpips

    found = load_lpips()
    if isinstance(found, LpipsUnavailable):
        fetch = Path(__file__).resolve().parents[1] / "scripts" / "fetch_lpips_weights.sh"
        try:
            subprocess.run(["sh", str(fetch)], check=True, capture_output=True, timeout=600)
        except (subprocess.SubprocessError, OSError) as e:
            return LpipsUnavailable(f"{found.reason}; fetching failed: {type(e).__name__}")
        found = load_lpips()
    return found
