"""A model family is a plugin: the toy family in tests/toy_family/ (its own config, DiT, plan shape and forward
function) is added with one registry line and runs t2v through the CLI with every cache policy and a KV budget."""
import json

import pytest
from typer.testing import CliRunner

from flowcache_core.cache.registry import POLICIES
from flowcache_core.models.registry import FAMILIES
from flowcache_core.video import read_video
from toy_family import ToyFamily, write_toy_bundle


@pytest.fixture
def toy_dir(tmp_path, monkeypatch):
    monkeypatch.setitem(FAMILIES, "toy", ToyFamily())  # the one registry line
    return write_toy_bundle(tmp_path / "toy_model")


@pytest.mark.parametrize("policy", list(POLICIES))
def test_toy_family_generates_through_the_cli(toy_dir, tmp_path, policy):
    from flowcache_cli.main import make_app

    out, log = tmp_path / f"{policy}.mp4", tmp_path / f"{policy}.jsonl"
    args = ["generate", "--checkpoint-dir", str(toy_dir), "--prompt", "anything", "--cache", policy,
            "--output-path", str(out), "--json-log", str(log), "--lossless", "--quiet"]
    if policy != "none":
        args += ["--rel-l1-thresh", "5", "--warmup-steps", "1"]
    r = CliRunner().invoke(make_app(), args)
    assert r.exit_code == 0, r.output
    frames, fps = read_video(out)
    assert frames.shape == (8, 8, 8, 3) and fps == 8
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert len(lines) == 4 * 4  # 4 blocks x 4 steps, one block at a time
    assert all(len(line["chunks"]) == 1 for line in lines)  # not MAGI-1's window of 4
    reused = sum(c["decision"] == "reuse" for line in lines for c in line["chunks"])
    assert (reused > 0) == (policy != "none")


def test_toy_family_with_a_kv_budget(toy_dir, tmp_path):
    from flowcache_core.api import generate
    from flowcache_core.cache.settings import CacheConfig

    free = generate("x", checkpoint_dir=toy_dir, num_frames=16)
    capped = generate("x", checkpoint_dir=toy_dir, num_frames=16, cache=CacheConfig(total_cache_chunk_nums=3))
    tpc = 2 * 8 * 8
    assert max(free.record.kv_tokens) == 8 * tpc
    assert max(capped.record.kv_tokens) <= 3 * tpc and capped.record.compressions > 0
    assert capped.frames.shape == free.frames.shape


@pytest.mark.parametrize("kv_policy", ["flowcache", "sink_window"])
@pytest.mark.parametrize("kv_quant", ["none", "int8"])
def test_toy_family_with_a_byte_budget(toy_dir, monkeypatch, kv_policy, kv_quant):
    """The KV memory manager is family-agnostic: a byte budget, either KV policy, int8, on the toy family's store."""
    import flowcache_core.api as api
    from flowcache_core.cache.settings import CacheConfig
    from toy_family.config import ToyConfig

    stores = []
    make_store = api.make_store
    monkeypatch.setattr(api, "make_store", lambda *a, **k: stores.append(make_store(*a, **k)) or stores[-1])
    tpc, dim = 2 * 8 * 8, ToyConfig().dim
    per_token = 2 * (dim * 4 if kv_quant == "none" else dim + 2)  # K and V of one head, one layer
    budget = int(3.5 * tpc * per_token)
    r = api.generate("x", checkpoint_dir=toy_dir, num_frames=16,
                     cache=CacheConfig(kv_budget=budget, kv_policy=kv_policy, kv_quant=kv_quant))
    s = stores[0]
    assert s.budget_tokens == 3 * tpc + 64 and r.record.compressions > 0  # 3.5 chunks: token or whole-frame units
    assert max(r.record.kv_tokens) <= s.budget_tokens and s.peak_bytes <= budget and s.nbytes() == s.count_bytes()


def test_a_folder_naming_an_unknown_family_is_one_line(tmp_path):
    from flowcache_cli.main import make_app

    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"family": "skyreels9", "config": {}}))
    r = CliRunner().invoke(make_app(), ["generate", "--checkpoint-dir", str(d), "--prompt", "x",
                                        "--output-path", str(tmp_path / "o.mp4")])
    assert r.exit_code == 2 and "names family 'skyreels9', which is unknown (known: magi1, skyreels_df, causal_wan)" in r.output
