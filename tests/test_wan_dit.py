"""The Wan2.1 / SkyReels-V2 DiT: parity with diffusers, the KV-store forward, config checks and strict loading.

Tiny random models (2 layers, 2 heads x 16, patch 1x2x2) on 16 x 10 x 8 x 8 latents, float32 on CPU.
The diffusers tests skip when diffusers is not importable.
"""
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from flowcache_core.cache.kv import KVAccess, KVStore
from flowcache_core.errors import FlowcacheError
from flowcache_core.models.wan.config import (SKYREELS_V2, WAN, WanDiTConfig, config_from_dict, config_to_dict,
                                               read_transformer_config)
from flowcache_core.models.wan.dit import FP32_PARTS, WanDiT, WanKV, fps_index
from flowcache_core.models.wan.loader import load_wan_transformer

TINY = dict(num_attention_heads=2, attention_head_dim=16, in_channels=16, out_channels=16, text_dim=32, freq_dim=16,
            ffn_dim=64, num_layers=2)
FRAMES, SIDE, TEXT_LEN = 10, 8, 7


def tiny_cfg(class_name: str = SKYREELS_V2, **kw) -> WanDiTConfig:
    extra = {"inject_sample_info": True} if class_name == SKYREELS_V2 else {}
    return WanDiTConfig(**{**TINY, **extra, **kw}, class_name=class_name)


def random_model(cfg: WanDiTConfig, seed: int = 0) -> WanDiT:
    torch.manual_seed(seed)
    model = WanDiT(cfg).eval()
    with torch.no_grad():  # perturb every weight (norm gains included) so a swapped key would show
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def inputs(batch: int = 1, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 16, FRAMES, SIDE, SIDE, generator=g)
    t = torch.rand(batch, FRAMES, generator=g) * 1000  # per-frame timesteps (diffusion forcing)
    text = torch.randn(batch, TEXT_LEN, 32, generator=g)
    return x, t, text


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


# --------------------------------------------------------------------------------------------------------
# Parity with diffusers
# --------------------------------------------------------------------------------------------------------
def _diffusers_twin(cls_name: str, cfg: WanDiTConfig, **extra):
    diffusers = pytest.importorskip("diffusers")
    kw = {k: v for k, v in config_to_dict(cfg).items() if not k.startswith("_")}
    ref = getattr(diffusers, cls_name)(**{**kw, **extra}).eval()
    ours = random_model(cfg)
    ref.load_state_dict(ours.state_dict(), strict=True)
    return ref, ours


@pytest.mark.parametrize("block_frames", [1, 2, 5])
@pytest.mark.parametrize("fps", [16, 24])
@torch.no_grad()
def test_matches_skyreels_v2_diffusion_forcing(block_frames, fps):
    cfg = tiny_cfg()
    ref, ours = _diffusers_twin("SkyReelsV2Transformer3DModel", cfg, num_frame_per_block=block_frames)
    ours.load_state_dict(ref.state_dict(), strict=True)  # diffusers' keys load into ours strictly, and back
    x, t, text = inputs()
    expected = ref(x, t, text, enable_diffusion_forcing=True, fps=[fps_index(fps)], return_dict=False)[0]
    got = ours(x, t, ours.embed_text(text), block_frames=block_frames, fps=fps)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    assert rel_err(got, expected) <= 1e-5


@pytest.mark.parametrize("per_frame", [False, True])
@torch.no_grad()
def test_matches_wan_t2v(per_frame):
    cfg = tiny_cfg(WAN)
    ref, ours = _diffusers_twin("WanTransformer3DModel", cfg)
    x, t, text = inputs(batch=2)
    if per_frame:  # Wan2.2's per-token timesteps: every token of a frame gets its frame's timestep
        t_ref = t.repeat_interleave((SIDE // 2) ** 2, dim=1)
    else:  # Wan2.1: one timestep per video
        t = t[:, :1].expand(-1, FRAMES)
        t_ref = t[:, 0]
    expected = ref(x, t_ref, text, return_dict=False)[0]
    got = ours(x, t, ours.embed_text(text), block_frames=1)
    assert rel_err(got, expected) <= 1e-5


# --------------------------------------------------------------------------------------------------------
# The KV-store forward
# --------------------------------------------------------------------------------------------------------
@torch.no_grad()
def test_cached_forward_equals_full_forward():
    bf = 2  # 10 frames = chunks 0..4
    model = random_model(tiny_cfg())
    x, t, text = inputs()
    ctx = model.embed_text(text)
    full = model(x, t, ctx, block_frames=bf, fps=24)
    store = KVStore(num_layers=2)

    def run(first: int, last: int, kv_start: list[int], write: list[bool], queries_of=None, into=store):
        kv = WanKV(KVAccess(into), list(range(first, last)), kv_start, write, queries_of=queries_of)
        s = slice(first * bf, last * bf)
        return model(x[:, :, s], t[:, s], ctx, frame_offset=first * bf, block_frames=bf, fps=24, kv=kv), kv

    out, _ = run(0, 3, [0, 0, 0], [True, True, True])  # chunks 0-2, writing their K/V
    assert rel_err(out, full[:, :, :6]) <= 1e-5
    assert store.chunks(KVStore.MAIN) == [0, 1, 2]
    tokens = bf * (SIDE // 2) ** 2
    assert store.read(0, (KVStore.MAIN,), [2])[0][0].shape == (tokens, 2, 16)  # (L, H, hd)

    out, kv = run(3, 5, [0, 0], [True, False], queries_of=4)  # chunks 3-4 read 0-2 from the store
    assert rel_err(out, full[:, :, 6:]) <= 1e-5
    assert store.chunks(KVStore.MAIN) == [0, 1, 2, 3]
    assert sorted(kv.queries) == [0, 1] and kv.queries[1].shape == (tokens, 2, 16)

    # A window that starts at chunk 1 (kv_start 1): the same as a full forward of frames 2.. at frame offset 2.
    window = model(x[:, :, 2:], t[:, 2:], ctx, frame_offset=2, block_frames=bf, fps=24)
    assert rel_err(window[:, :, -bf:], full[:, :, -bf:]) > 1e-3  # chunk 0 out of range changes the output
    other = KVStore(num_layers=2)
    out, _ = run(1, 4, [1, 1, 1], [True, True, True], into=other)
    assert rel_err(out, window[:, :, :6]) <= 1e-5
    out, _ = run(4, 5, [1], [False], into=other)  # reads chunks 1-3 only
    assert rel_err(out, window[:, :, -bf:]) <= 1e-5
    # Within one forward too, a block sees only the blocks in its range: chunk 0 alone, chunks 1-4 from 1 on.
    out, _ = run(0, 5, [0, 1, 1, 1, 1], [False] * 5, into=KVStore(num_layers=2))
    assert rel_err(out[:, :, :bf], full[:, :, :bf]) <= 1e-5 and rel_err(out[:, :, bf:], window) <= 1e-5


@torch.no_grad()
def test_the_residual_stream_is_token_major_in_memory():
    """Each block reads and returns (B, F, P, D) stored token-major (see the MAGI-1 test of the same name)."""
    model = random_model(tiny_cfg())
    x, t, text = inputs()
    assert model.embed_patches(x).is_contiguous()
    seen = []
    hooks = [b.register_forward_hook(lambda m, args, out: seen.append((args[0].is_contiguous(), out.is_contiguous())))
             for b in model.blocks]
    try:
        model(x, t, model.embed_text(text), block_frames=2, fps=24)
    finally:
        for h in hooks:
            h.remove()
    assert seen == [(True, True)] * len(model.blocks)


def test_forward_refuses_a_broken_contract():
    model = random_model(tiny_cfg())
    x, t, text = inputs()
    ctx = model.embed_text(text)
    with pytest.raises(ValueError, match="whole blocks"):
        model(x, t, ctx, block_frames=3, fps=24)
    with pytest.raises(ValueError, match="one per frame"):
        model(x, t[:, :5], ctx, block_frames=2, fps=24)
    with pytest.raises(ValueError, match="pass fps"):
        model(x, t, ctx, block_frames=2)
    kv = WanKV(KVAccess(KVStore(2)), [0, 2, 2, 4, 5], [0] * 5, [False] * 5)
    with pytest.raises(ValueError, match="must increase"):
        model(x, t, ctx, block_frames=2, fps=24, kv=kv)


@torch.no_grad()
@pytest.mark.parametrize("causal", [True, False])
def test_a_skipped_chunk_is_attended_through_its_stored_kv(causal):
    # A cache policy skips chunk 2: the others are forwarded (not adjacent), chunk 2 is read from the store where
    # its last forward wrote it. With its stored K/V current, the output equals the full forward's.
    bf, model = 2, random_model(tiny_cfg())
    x, t, text = inputs()
    ctx = model.embed_text(text)
    full = model(x, t, ctx, block_frames=bf, fps=24, causal=causal)
    store = KVStore(num_layers=2)
    model(x, t, ctx, block_frames=bf, fps=24, causal=causal,
          kv=WanKV(KVAccess(store), [0, 1, 2, 3, 4], [0] * 5, [True] * 5,
                   kv_end=None if causal else [5] * 5))
    keep = [0, 1, 3, 4]
    frames = torch.tensor([f for c in keep for f in range(c * bf, (c + 1) * bf)])
    kv = WanKV(KVAccess(store), keep, [0] * 4, [True] * 4, kv_end=None if causal else [5] * 4)
    out = model(x[:, :, frames], t[:, frames], ctx, block_frames=bf, fps=24, causal=causal, kv=kv,
                positions=frames)
    assert rel_err(out, full[:, :, frames]) <= 1e-5
    # and the positions matter: the same blocks at adjacent positions give another output
    moved = model(x[:, :, frames], t[:, frames], ctx, block_frames=bf, fps=24, causal=causal,
                  kv=WanKV(KVAccess(store), keep, [0] * 4, [False] * 4, kv_end=None if causal else [5] * 4))
    assert rel_err(moved, full[:, :, frames]) > 1e-3


# --------------------------------------------------------------------------------------------------------
# Config checks
# --------------------------------------------------------------------------------------------------------
def _write_config(folder: Path, d) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(d if isinstance(d, str) else json.dumps(d))
    return folder / "config.json"


def test_config_round_trips_and_takes_class_defaults(tmp_path):
    for cfg in (tiny_cfg(), tiny_cfg(WAN), tiny_cfg(num_frame_per_block=5, out_channels=None)):
        assert read_transformer_config(_write_config(tmp_path, config_to_dict(cfg))) == cfg
    wan = config_from_dict({"_class_name": WAN, "_diffusers_version": "0.33.0"}, "x")
    assert (wan.num_layers, wan.num_attention_heads, wan.ffn_dim) == (40, 40, 13824)  # Wan2.1 14B's


@pytest.mark.parametrize("change, message", [
    ({"_class_name": "FluxTransformer2DModel"},
     r"_class_name: expected one of SkyReelsV2Transformer3DModel, WanTransformer3DModel, got \"FluxTransformer2DModel\""),
    ({"num_layers": "2"}, r"num_layers: expected an integer >= 1, got \"2\""),
    ({"eps": 0}, r"eps: expected a number > 0, got 0"),
    ({"cross_attn_norm": 1}, r"cross_attn_norm: expected true or false, got 1"),
    ({"patch_size": [2, 2, 2]}, r"patch_size: expected \[1, h, w\]"),
    ({"qk_norm": "rms_norm"}, r"qk_norm: expected one of 'rms_norm_across_heads', got \"rms_norm\""),
    ({"image_dim": 1280}, r"image_dim: expected null \(the image-to-video branch is not supported\), got 1280"),
    ({"window_size": [-1, -1]}, r"window_size: key unknown to SkyReelsV2Transformer3DModel \(allowed: patch_size, "),
    ({"attention_head_dim": 15}, r"attention_head_dim: expected an even integer >= 6"),
])
def test_bad_config_values_name_file_key_and_allowed(tmp_path, change, message):
    path = _write_config(tmp_path, {**config_to_dict(tiny_cfg()), **change})
    with pytest.raises(FlowcacheError, match=message) as e:
        read_transformer_config(path)
    assert str(e.value).startswith(f"transformer config {str(path)!r}: ") and "\n" not in str(e.value)


def test_wan_config_refuses_skyreels_keys_and_bad_files(tmp_path):
    with pytest.raises(FlowcacheError, match="inject_sample_info: key unknown to WanTransformer3DModel"):
        config_from_dict({"_class_name": WAN, "inject_sample_info": True}, "x")
    with pytest.raises(FlowcacheError, match="is not valid JSON"):
        read_transformer_config(_write_config(tmp_path, "{oops"))
    with pytest.raises(FlowcacheError, match="does not exist"):
        read_transformer_config(tmp_path / "nope.json")


# --------------------------------------------------------------------------------------------------------
# Loading diffusers transformer folders
# --------------------------------------------------------------------------------------------------------
def _write_folder(folder: Path, model: WanDiT, drop: str | None = None) -> Path:
    _write_config(folder, config_to_dict(model.cfg))
    sd = {k: v.contiguous() for k, v in model.state_dict().items() if k != drop}
    save_file(sd, str(folder / "diffusion_pytorch_model.safetensors"))
    return folder


@torch.no_grad()
def test_loads_a_sharded_diffusers_folder(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    cfg = tiny_cfg()
    ref, _ = _diffusers_twin("SkyReelsV2Transformer3DModel", cfg, num_frame_per_block=2)
    ref.save_pretrained(tmp_path, max_shard_size="60KB")
    index = json.loads((tmp_path / "diffusion_pytorch_model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    model = load_wan_transformer(tmp_path, "cpu", torch.float32)
    assert model.cfg == dataclasses.replace(cfg, num_frame_per_block=2) and not model.training
    x, t, text = inputs()
    expected = ref(x, t, text, enable_diffusion_forcing=True, fps=[1], return_dict=False)[0]
    assert rel_err(model(x, t, model.embed_text(text), block_frames=2, fps=24), expected) <= 1e-5

    # bfloat16: float32 where diffusers keeps float32; close to diffusers' own bfloat16 model.
    half = load_wan_transformer(tmp_path, "cpu", torch.bfloat16)
    for name, p in half.named_parameters():
        keep = any(part in FP32_PARTS for part in name.split("."))
        assert p.dtype == (torch.float32 if keep else torch.bfloat16), name
    ref16 = diffusers.SkyReelsV2Transformer3DModel.from_pretrained(tmp_path, torch_dtype=torch.bfloat16).eval()
    assert {n: p.dtype for n, p in ref16.named_parameters()} == {n: p.dtype for n, p in half.named_parameters()}
    expected16 = ref16(x.bfloat16(), t, text.bfloat16(), enable_diffusion_forcing=True, fps=[1], return_dict=False)[0]
    got16 = half(x, t, half.embed_text(text.bfloat16()), block_frames=2, fps=24)
    assert rel_err(got16, expected16.float()) <= 1e-3  # exact on CPU (torch 2.13); bf16 vs float32 drifts ~1e-2


def test_strict_loading_names_the_problem_in_one_line(tmp_path):
    model = random_model(tiny_cfg())
    key = "blocks.1.attn2.norm_k.weight"
    cases = []
    folder = _write_folder(tmp_path / "missing", model, drop=key)
    cases.append((folder, rf"transformer folder '.*missing': missing weight '{key}' \(expected shape \(32,\)\)"))
    folder = _write_folder(tmp_path / "shape", model)
    _write_config(folder, config_to_dict(dataclasses.replace(model.cfg, ffn_dim=128)))
    cases.append((folder, r"weight 'blocks.0.ffn.net.0.proj.weight' has shape \(64, 32\), the config needs \(128, 32\)"))
    folder = _write_folder(tmp_path / "extra", random_model(tiny_cfg(WAN)))
    _write_config(folder, config_to_dict(model.cfg))  # Wan weights, SkyReels-V2 config: no fps embedding
    cases.append((folder, r"missing weight 'fps_embedding.weight'"))
    folder = _write_folder(tmp_path / "no_config", model)
    (folder / "config.json").unlink()
    cases.append((folder, r"transformer config '.*config.json' does not exist"))
    folder = _write_folder(tmp_path / "no_weights", model)
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    cases.append((folder, r"has neither diffusion_pytorch_model.safetensors.index.json nor diffusion_pytorch_model"))
    cases.append((tmp_path / "nowhere", r"transformer folder '.*nowhere' does not exist"))
    for folder, message in cases:
        with pytest.raises(FlowcacheError, match=message) as e:
            load_wan_transformer(folder)
        assert "\n" not in str(e.value)


def test_missing_shard_is_named(tmp_path):
    model = random_model(tiny_cfg())
    _write_config(tmp_path, config_to_dict(model.cfg))
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    keys = sorted(sd)
    shards = {"diffusion_pytorch_model-00001-of-00002.safetensors": keys[:20],
              "diffusion_pytorch_model-00002-of-00002.safetensors": keys[20:]}
    for name, part in shards.items():
        save_file({k: sd[k] for k in part}, str(tmp_path / name))
    index = {"metadata": {}, "weight_map": {k: name for name, part in shards.items() for k in part}}
    (tmp_path / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    assert torch.equal(load_wan_transformer(tmp_path).proj_out.weight, model.proj_out.weight)
    (tmp_path / "diffusion_pytorch_model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FlowcacheError, match=r"checkpoint file '.*00002-of-00002.safetensors' does not exist"):
        load_wan_transformer(tmp_path)
