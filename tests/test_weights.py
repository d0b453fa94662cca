"""Checkpoints in MAGI-1's layout: sharded safetensors + index with official key names, strict loading."""
import json

import pytest
import torch
from safetensors.torch import load_file

from flowcache_core.errors import FlowcacheError
from flowcache_core.models.magi1.dit import build_model
from flowcache_core.models.weights import INDEX_NAME, load_weights, read_state_dict, save_weights
from test_dit_properties import make_batch, tiny_cfg


def _model(seed):
    m = build_model(tiny_cfg(), dtype=torch.float32, seed=seed).eval()
    with torch.no_grad():
        m.final_linear.linear.weight.normal_(0, 0.1)
    return m


@torch.no_grad()
def test_sharded_checkpoint_round_trip_reproduces_output(tmp_path):
    src = _model(1)
    save_weights(src, tmp_path, max_shard_bytes=200_000)
    index = json.loads((tmp_path / INDEX_NAME).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    # official key names, e.g. videodit_blocks.layers.0.self_attention.linear_qkv.q.weight
    assert "videodit_blocks.layers.0.self_attention.linear_qkv.q.weight" in index["weight_map"]
    assert "y_embedder.null_caption_embedding" in index["weight_map"]
    dst = load_weights(_model(2), tmp_path)
    b = make_batch(src.cfg, 3)
    assert torch.equal(src(b), dst(b))


def test_official_key_names_match_the_golden_checkpoint(golden_dir):
    official = load_file(str(golden_dir / "magi1" / "tiny.safetensors"))
    from flowcache_core.models.magi1.config import MagiConfig

    cfg = MagiConfig.from_json(golden_dir / "magi1" / "tiny_distill.json").model
    assert set(official) == set(build_model(cfg, device="meta").state_dict())


def test_wrong_shape_names_the_key(tmp_path):
    save_weights(_model(1), tmp_path)
    bigger = build_model(tiny_cfg(ffn_hidden_size=512), dtype=torch.float32)
    with pytest.raises(FlowcacheError, match=r"weight 'videodit_blocks.layers.0.mlp.linear_fc1.weight' has shape \(256, 128\), the config needs \(512, 128\)"):
        load_weights(bigger, tmp_path)


def test_missing_shard_and_bad_index_and_corrupt_file(tmp_path):
    save_weights(_model(1), tmp_path, max_shard_bytes=200_000)
    index = json.loads((tmp_path / INDEX_NAME).read_text())
    first = sorted(set(index["weight_map"].values()))[0]
    (tmp_path / first).rename(tmp_path / "moved.bin")
    with pytest.raises(FlowcacheError, match="does not exist"):
        read_state_dict(tmp_path)
    (tmp_path / "moved.bin").rename(tmp_path / first)
    key = next(iter(index["weight_map"]))
    index["weight_map"][key] = sorted(set(index["weight_map"].values()))[-1]  # names a shard that lacks the key
    (tmp_path / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(FlowcacheError, match="does not hold it"):
        read_state_dict(tmp_path)
    (tmp_path / INDEX_NAME).unlink()
    for f in tmp_path.glob("*.safetensors"):
        f.unlink()
    (tmp_path / "model.safetensors").write_bytes(b"\x00junk" * 10)
    with pytest.raises(FlowcacheError, match="not a readable safetensors file"):
        read_state_dict(tmp_path)
    with pytest.raises(FlowcacheError, match="does not exist"):
        read_state_dict(tmp_path / "nope")


def test_written_checkpoints_get_the_usual_file_mode(tmp_path):
    """safetensors and mkstemp create files 0600; a checkpoint others on the machine cannot read is a surprise."""
    import os

    from flowcache_core.models.text import WordTextEncoder, save_text_encoder
    from flowcache_core.training.world import world_text_config

    umask = os.umask(0o022)
    try:
        save_weights(build_model(tiny_cfg(), seed=0), tmp_path / "sharded", max_shard_bytes=20_000)
        save_text_encoder(WordTextEncoder(world_text_config()), str(tmp_path / "sharded"))
    finally:
        os.umask(umask)
    files = sorted((tmp_path / "sharded").iterdir())
    assert len(files) > 3 and not [f for f in files if f.name.endswith(".tmp") or f.name.startswith(".")]
    assert {oct(f.stat().st_mode & 0o777) for f in files} == {oct(0o644)}
