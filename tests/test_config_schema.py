"""The JSON schema of configs: types from the dataclass annotations, ranges, the key path in the message, and every
reader of such JSON using the one check (bundle and release config.json, VAE ddconfig, text encoder, index)."""
from __future__ import annotations

import json

import pytest
import torch

from flowcache_core.checks import SEED_RANGE
from flowcache_core.models.magi1.config import MagiConfig, check_config_section, magi_4_5b, magi_24b
from flowcache_core.errors import FlowcacheError

# SandAI-org/MAGI-1 example/4.5B/4.5B_config.json: the exact types MAGI-1 writes (an int for x_rescale_factor)
MAGI_4_5B_JSON = {
    "model_config": {
        "model_name": "videodit_ardf", "num_layers": 34, "hidden_size": 3072, "ffn_hidden_size": 12288,
        "num_attention_heads": 24, "num_query_groups": 8, "kv_channels": 128, "layernorm_epsilon": 1e-06,
        "apply_layernorm_1p": True, "x_rescale_factor": 1, "half_channel_vae": False, "params_dtype": "torch.bfloat16",
        "patch_size": 2, "t_patch_size": 1, "in_channels": 16, "out_channels": 16, "cond_hidden_ratio": 0.25,
        "caption_channels": 4096, "caption_max_length": 800, "xattn_cond_hidden_ratio": 1.0, "cond_gating_ratio": 1.0,
        "gated_linear_unit": False,
    },
    "runtime_config": {
        "cfg_number": 3, "cfg_t_range": [0.0, 0.0217, 0.1, 0.3, 0.999], "prev_chunk_scales": [1.5, 1.5, 1.5, 1.0, 1.0],
        "text_scales": [7.5, 7.5, 7.5, 0.0, 0.0], "noise2clean_kvrange": [5, 4, 3, 2], "clean_chunk_kvrange": 1,
        "clean_t": 0.9999, "seed": 1234, "num_frames": 96, "video_size_h": 720, "video_size_w": 720, "num_steps": 32,
        "window_size": 4, "fps": 24, "chunk_width": 6, "load": "./downloads/4.5B_base",
        "t5_pretrained": "./downloads/t5_pretrained", "t5_device": "cpu", "vae_pretrained": "./downloads/vae",
        "scale_factor": 0.18215, "temporal_downsample_factor": 4,
    },
    "engine_config": {
        "distributed_backend": "nccl", "distributed_timeout_minutes": 15, "pp_size": 1, "cp_size": 1,
        "cp_strategy": "cp_ulysses", "ulysses_overlap_degree": 1, "fp8_quant": False,
        "distill_nearly_clean_chunk_threshold": 0.3, "shortcut_mode": "8,16,16", "distill": False, "kv_offload": True,
        "enable_cuda_graph": False,
    },
}  # fmt: skip


def test_magi1_json_files_still_load(tmp_path):
    path = tmp_path / "4.5B_config.json"
    path.write_text(json.dumps(MAGI_4_5B_JSON, indent=4))
    cfg = MagiConfig.from_json(path).validate()
    assert cfg.model.x_rescale_factor == 1 and cfg.runtime.load == "./downloads/4.5B_base"
    for named in (magi_4_5b, magi_24b):
        for distill in (True, False):
            MagiConfig.from_dict(json.loads(json.dumps(named(distill).to_dict()))).validate()


def test_seed_range_is_torchs():
    torch.Generator().manual_seed(SEED_RANGE.high)
    with pytest.raises((RuntimeError, ValueError)):
        torch.Generator().manual_seed(SEED_RANGE.high + 1)
    assert SEED_RANGE.low == 0


@pytest.mark.parametrize("section, key, value, message", [
    ("runtime_config", "seed", "abc", 'runtime_config.seed: expected an integer in [0, 18446744073709551615], got "abc"'),
    ("runtime_config", "seed", True, "runtime_config.seed: expected an integer in [0, 18446744073709551615], got true"),
    ("runtime_config", "clean_t", None, "runtime_config.clean_t: expected a number in (0, 1], got null"),
    ("runtime_config", "text_scales", [7.5, None], "runtime_config.text_scales[1]: expected a number, got null"),
    ("runtime_config", "noise2clean_kvrange", [5, "4"], 'runtime_config.noise2clean_kvrange[1]: expected an integer >= 1, got "4"'),
    ("runtime_config", "cfg_t_range", [0.0, 1.5], "runtime_config.cfg_t_range[1]: expected a number in [0, 1], got 1.5"),
    ("runtime_config", "load", 3, "runtime_config.load: expected a string or null, got 3"),
    ("runtime_config", "scale_factor", float("nan"), "runtime_config.scale_factor: expected a finite number > 0, got NaN"),
    ("runtime_config", "num_steps", 64000, "runtime_config.num_steps: expected an integer in [1, 1000], got 64000"),
    ("model_config", "patch_size", 2.0, "model_config.patch_size: expected an integer >= 1, got 2.0"),
    ("model_config", "x_rescale_factor", 0, "model_config.x_rescale_factor: expected a number > 0, got 0"),
    ("model_config", "params_dtype", ["torch.float32"], 'model_config.params_dtype: expected a string, got ["torch.float32"]'),
    ("engine_config", "distill", "false", 'engine_config.distill: expected true or false, got "false"'),
    ("engine_config", "cp_size", 0, "engine_config.cp_size: expected an integer >= 1, got 0"),
])  # fmt: skip
def test_bad_value_names_file_key_and_allowed(tmp_path, section, key, value, message):
    data = json.loads(json.dumps(MAGI_4_5B_JSON))
    data[section][key] = value
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    with pytest.raises(FlowcacheError) as e:
        MagiConfig.from_json(path)
    assert str(e.value) == f"config file {str(path)!r}: {message}"


def test_overlay_check_is_the_same_function():
    with pytest.raises(FlowcacheError, match=r"^run.json: runtime_config.seed: expected an integer"):
        check_config_section("runtime_config", {"seed": "1"}, "run.json")
    check_config_section("runtime_config", {"seed": 1, "unknown_key": "kept aside"}, "run.json")


def test_validate_checks_configs_built_in_python():
    """An API user's config (replace() takes anything) gets the checks a JSON file gets."""
    with pytest.raises(FlowcacheError, match=r"^runtime_config.seed: expected an integer"):
        magi_4_5b().replace(seed="7").validate()
    with pytest.raises(FlowcacheError, match="must have the same length, at least 1"):
        magi_4_5b().replace(cfg_t_range=[], prev_chunk_scales=[], text_scales=[]).validate()
    with pytest.raises(FlowcacheError, match="ascending order"):
        magi_4_5b().replace(cfg_t_range=[0.3, 0.1, 0.0, 0.5, 0.9]).validate()


def test_sections_and_flowcache_extra_must_be_objects():
    base = json.loads(json.dumps(MAGI_4_5B_JSON))
    for edit, message in ((lambda d: d.update(runtime_config=[1]), "f.json: runtime_config: expected an object, got [1]"),
                          (lambda d: d.update(flowcache="x"), 'f.json: flowcache: expected an object, got "x"'),
                          (lambda d: d.update(flowcache={"codec": {"spatial": 4}}), 'f.json: flowcache.codec: expected an object with a "name"'),
                          (lambda d: d.update(flowcache={"cache_defaults": {"rel_l1_tresh": 0.1}}),
                           "f.json: flowcache.cache_defaults: key 'rel_l1_tresh' is unknown"),
                          (lambda d: d.update(flowcache={"cache_defaults": {"warmup_steps": -1}}),
                           "f.json: flowcache.cache_defaults.warmup_steps=-1 must be an integer >= 0")):
        data = json.loads(json.dumps(base))
        edit(data)
        with pytest.raises(FlowcacheError) as e:
            MagiConfig.from_dict(data, where="f.json")
        assert str(e.value).startswith(message), str(e.value)


def test_release_variant_config_is_checked(tmp_path):
    from flowcache_core.models.magi1.release import variant_config

    data = json.loads(json.dumps(MAGI_4_5B_JSON))
    data["runtime_config"]["text_scales"] = None
    (tmp_path / "magi" / "4.5B_base").mkdir(parents=True)
    (tmp_path / "magi" / "4.5B_base" / "config.json").write_text(json.dumps(data))
    with pytest.raises(FlowcacheError, match=r"4.5B_base/config.json': runtime_config.text_scales: expected a list of numbers, got null"):
        variant_config(tmp_path, "4.5B_base")


def test_vae_ddconfig_types():
    from flowcache_core.models.magi1.vae import ViTVAEConfig

    with pytest.raises(FlowcacheError, match=r'^VAE config: ddconfig.mlp_ratio: expected a number, got "4"$'):
        ViTVAEConfig.from_ddconfig({"mlp_ratio": "4"})
    with pytest.raises(FlowcacheError, match=r"^VAE config: ddconfig.qkv_bias: expected true or false, got 1$"):
        ViTVAEConfig.from_ddconfig({"qkv_bias": 1})
    assert ViTVAEConfig.from_ddconfig({"mlp_ratio": 4, "qk_scale": None}).mlp_ratio == 4


def test_safetensors_index_of_the_wrong_shape(tmp_path):
    from flowcache_core.models.weights import read_state_dict

    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": 5}}))
    with pytest.raises(FlowcacheError, match="weight_map must map each weight name to a shard file name"):
        read_state_dict(tmp_path)
