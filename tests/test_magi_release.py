"""The official MAGI-1 release layout, end to end on tiny random checkpoints (issue 6).

The release is rebuilt in tmp dirs with the exact directory and file names, a sharded DiT with an index and the
official key names, a diffusers-style ViTVAE config + safetensors, a transformers T5 dir (tiny, random, with a tokenizer
built offline) and special_tokens.npz. The T5 parts skip when `transformers` is not installed.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from flowcache_core.api import generate
from flowcache_core.models.magi1.config import ModelConfig, magi_4_5b
from flowcache_core.errors import FlowcacheError
from flowcache_core.models.magi1.release import choose_variant, load_magi_release, variant_config
from flowcache_core.models.codec import make_codec
from flowcache_core.models.magi1.t5 import SpecialTokens, chunk_captions, clean_caption
from flowcache_core.models.magi1.vae import MagiVAECodec, ViTVAE, ViTVAEConfig, save_vit_vae
from fixtures.random_release import write_random_release, write_random_t5

T5_DIM = 32
H = W = 64
VAE_CFG = ViTVAEConfig(embed_dim=256, depth=1, num_heads=4, video_size=64, video_length=8)


def tiny_config(distill: bool):
    cfg = magi_4_5b(distill)
    cfg.model = ModelConfig(num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=8, num_query_groups=2,
                            kv_channels=8, in_channels=16, out_channels=16, caption_channels=T5_DIM,
                            gated_linear_unit=not distill)
    cfg.runtime = dataclasses.replace(cfg.runtime, num_frames=16, video_size_h=H, video_size_w=W, num_steps=4,
                                      window_size=2, chunk_width=2, noise2clean_kvrange=[3, 2], fps=24)
    return cfg


def make_release(root: Path, variants=("4.5B_distill",), seed: int = 0) -> tuple[Path, bool]:
    """ROOT/ckpt/{magi/<variant>/inference_weight[.distill], magi/<variant>/config.json, t5/t5-v1_1-xxl, vae},
    ROOT/special_tokens.npz, all tiny and random."""
    configs = {v: tiny_config("distill" in v) for v in variants}
    has_t5 = write_random_release(root, configs, VAE_CFG, seed=seed,
                                  t5=lambda d, dim: write_random_t5(d, dim, layers=2, heads=4, d_kv=8, d_ff=64))
    return root, has_t5


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return make_release(tmp_path_factory.mktemp("magi_release"), variants=("4.5B_distill", "4.5B_base"))


def _needs_t5(has_t5: bool):
    if not has_t5:
        pytest.skip("transformers is not installed (pip install transformers sentencepiece): T5 parts skipped")


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


# ------------------------------------------------------------------------------------------- end to end
def test_release_generates_t2v_i2v_v2v(release):
    root, has_t5 = release
    _needs_t5(has_t5)
    b = load_magi_release(root, variant="4.5B_distill")
    assert b.config.engine.distill and b.config.runtime.cfg_number == 1
    assert isinstance(b.codec, MagiVAECodec) and b.text_encoder.dim == T5_DIM
    assert b.text_encoder.special_tokens is not None
    t2v = generate("a red ball on the grass", bundle=b, seed=1)
    assert t2v.frames.shape == (16, H, W, 3) and t2v.frames.dtype == np.uint8
    assert t2v.latents.shape == (16, 4, H // 8, W // 8)
    again = generate("a red ball on the grass", bundle=b, seed=1)
    assert np.array_equal(t2v.frames, again.frames)
    image = (np.random.default_rng(0).random((H, W, 3)) * 255).astype(np.uint8)
    i2v = generate("a cat runs", mode="i2v", image=image, bundle=b, seed=2)
    assert i2v.frames.shape[1:] == (H, W, 3) and i2v.frames.shape[0] % 4 == 0 and i2v.frames.shape[0] >= 16
    prefix = (np.random.default_rng(1).random((12, H, W, 3)) * 255).astype(np.uint8)  # 3 latent frames: 1 chunk + 1
    v2v = generate("a dog", mode="v2v", prefix_video=prefix, bundle=b, seed=3)
    assert v2v.frames.shape[1:] == (H, W, 3) and v2v.frames.shape[0] > 0


def test_release_base_variant_runs_three_pass_cfg(release):
    root, has_t5 = release
    _needs_t5(has_t5)
    b = load_magi_release(root, variant="4.5B_base")
    assert b.config.runtime.cfg_number == 3 and not b.config.engine.distill
    out = generate("blue sky", bundle=b, seed=0)
    assert out.frames.shape == (16, H, W, 3)


def test_t5_encoder_pads_to_800_and_chunk_captions_add_duration_and_hq(release):
    root, has_t5 = release
    _needs_t5(has_t5)
    b = load_magi_release(root, variant="4.5B_distill")
    emb, mask = b.text_encoder.encode(["A <b>Cat</b> runs https://x.com/y", ""])
    assert emb.shape == (2, 800, T5_DIM) and emb.dtype == torch.float32 and mask.dtype == torch.int64
    assert int(mask[0].sum()) == 4 and int(mask[1].sum()) == 0  # "a cat runs" + </s>; empty prompt -> null caption
    tokens = b.text_encoder.special_tokens
    caps, masks = b.text_encoder.chunk_captions(emb[0], mask[0], num_chunks=10)
    assert caps.shape == (10, 800, T5_DIM) and masks.shape == (10, 800)
    for i in range(10):
        assert torch.equal(caps[i, 0], tokens.other[7 + min(10 - i - 1, 7)])  # DURATION_i
        assert torch.equal(caps[i, 1], tokens.other[1])  # HQ
        assert torch.equal(caps[i, 2:], emb[0, :798])
        assert int(masks[i].sum()) == 6 and masks[i, :6].tolist() == [1] * 6


# ------------------------------------------------------------------------------------------- pieces without T5
def test_special_tokens_are_rounded_through_float16(tmp_path):
    other = np.linspace(-3, 3, 100 * 8, dtype=np.float32).reshape(100, 8) + 1e-4
    np.savez(tmp_path / "special_tokens.npz", caption_token=other[:1], logo_token=other[1:2], other_tokens=other)
    t = SpecialTokens.load(tmp_path / "special_tokens.npz")
    assert torch.equal(t.other, torch.from_numpy(other.astype(np.float16).astype(np.float32)))
    assert torch.equal(t.duration(0), t.other[7]) and torch.equal(t.duration(99), t.other[14])
    cap, m = torch.randn(5, 8), torch.tensor([1, 1, 0, 0, 0])
    caps, masks = chunk_captions(cap, m, 3, t)
    assert masks[0].tolist() == [1, 1, 1, 1, 0] and torch.equal(caps[2, 0], t.other[7])
    assert torch.equal(chunk_captions(cap, m, 2, None)[0][1], cap)


def test_clean_caption_subset():
    assert clean_caption(clean_caption("A Cat <b>runs</b> on https://x.com/a the GRASS  ")) == "a cat runs on the grass"
    assert clean_caption("“Hello”   World... #123 img.png") == '"hello" world'


def test_builtin_config_when_the_variant_has_none(tmp_path):
    for v in ("4.5B_base", "24B_distill"):
        (tmp_path / "magi" / v).mkdir(parents=True)
    base, big = variant_config(tmp_path, "4.5B_base"), variant_config(tmp_path, "24B_distill")
    assert base.model.num_layers == 34 and base.runtime.cfg_number == 3 and not base.engine.distill
    assert big.model.num_layers == 48 and big.runtime.num_steps == 16 and big.engine.distill


def test_vae_keys_are_the_official_names():
    keys = set(ViTVAE(VAE_CFG).state_dict())
    expected = {"encoder.patch_embed.proj.weight", "encoder.patch_embed.proj.bias", "encoder.cls_token", "encoder.pos_embed",
                "encoder.norm.weight", "encoder.norm.bias", "encoder.last_layer.weight", "encoder.last_layer.bias",
                "decoder.proj_in.weight", "decoder.proj_in.bias", "decoder.cls_token", "decoder.pos_embed",
                "decoder.norm.weight", "decoder.norm.bias", "decoder.last_layer.weight", "decoder.last_layer.bias"}
    for part in ("encoder", "decoder"):  # ln_in_attn: no norm1 parameters
        for k in ("attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias",
                  "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"):
            expected.add(f"{part}.blocks.0.{k}")
    assert keys == expected
    sd = ViTVAE(VAE_CFG).state_dict()
    assert sd["decoder.last_layer.weight"].shape == (3, 1, 3, 3, 3)  # E/256 = 1 sub-pixel channel
    assert sd["encoder.pos_embed"].shape == (1, 1 + 2 * 8 * 8, 256) and sd["encoder.last_layer.weight"].shape == (32, 256)


def test_vae_codec_equivalences(tmp_path):
    torch.manual_seed(0)
    vae = ViTVAE(VAE_CFG).eval()
    save_vit_vae(vae, tmp_path / "vae")
    codec = make_codec("magi_vae", path=str(tmp_path / "vae"))  # registry + loader round trip
    assert (codec.latent_channels, codec.spatial_downsample, codec.temporal_downsample) == (16, 8, 4)
    x = torch.rand(3, 8, 64, 64) * 2 - 1
    with torch.no_grad():
        # one tile (<= 256 px, <= 12 frames): tiled == untiled, scaled by 0.18215; the pos_embed grid matches the base
        z = codec.encode(x)
        assert torch.allclose(z, vae.encode_mode(x[None])[0] * 0.18215, atol=1e-6)
        assert torch.allclose(codec.decode(z), vae.decode(z[None] / 0.18215)[0], atol=1e-5)
        # an image is encoded as 4 copies of itself, first latent frame (MAGI-1's i2v)
        img = x[:, :1]
        assert torch.allclose(codec.encode(img), codec.encode(img.expand(3, 4, 64, 64))[:, :1], atol=1e-6)
        # temporal tiles of 12 frames, no overlap: = encoding each 12-frame piece on its own
        x24 = torch.rand(3, 24, 64, 64) * 2 - 1
        assert torch.allclose(codec.encode(x24), torch.cat([codec.encode(x24[:, :12]), codec.encode(x24[:, 12:])], 1), atol=1e-6)
        # spatial tiles (32 px here): shapes, and the first tile's unblended region equals the lone tile's output
        small = MagiVAECodec(vae=vae, tile_px=32)
        lat = torch.randn(16, 3, 10, 14)
        out = small.decode(lat)
        assert out.shape == (3, 12, 80, 112)
        assert torch.allclose(out[:, :, :24, :24], codec.decode(lat[:, :, :4, :4])[:, :, :24, :24], atol=1e-5)
        assert small.encode(torch.rand(3, 12, 80, 112) * 2 - 1).shape == (16, 3, 10, 14)
    with pytest.raises(FlowcacheError):
        codec.latent_shape(6, 64, 64)


# ------------------------------------------------------------------------------------------- bad input
@pytest.fixture
def fresh(tmp_path, release):
    root = tmp_path / "rel"
    shutil.copytree(release[0], root)
    return root


def test_two_variants_need_a_choice_and_a_wrong_name_lists_the_present(fresh):
    with pytest.raises(FlowcacheError) as e:
        load_magi_release(fresh)
    assert "several variants" in _one_line(e)
    with pytest.raises(FlowcacheError) as e:
        load_magi_release(fresh, variant="4.5B_distlil")
    msg = _one_line(e)
    assert "4.5B_distlil" in msg and "4.5B_base" in msg and "4.5B_distill" in msg
    with pytest.raises(FlowcacheError) as e:
        load_magi_release(fresh, variant="24B_distill")
    assert "not present" in _one_line(e)


def test_missing_shard(fresh):
    wdir = fresh / "ckpt" / "magi" / "4.5B_distill" / "inference_weight.distill"
    shards = sorted(wdir.glob("model-*.safetensors"))
    assert len(shards) >= 2
    shards[-1].unlink()
    with pytest.raises(FlowcacheError) as e:
        load_magi_release(fresh, variant="4.5B_distill")
    assert shards[-1].name in _one_line(e)


def test_index_naming_a_missing_file(fresh):
    wdir = fresh / "ckpt" / "magi" / "4.5B_distill" / "inference_weight.distill"
    index = json.loads((wdir / "model.safetensors.index.json").read_text())
    index["weight_map"][next(iter(index["weight_map"]))] = "model-00009-of-00009.safetensors"
    (wdir / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(FlowcacheError) as e:
        load_magi_release(fresh, variant="4.5B_distill")
    assert "model-00009-of-00009.safetensors" in _one_line(e)


def test_vae_config_of_another_class(fresh):
    p = fresh / "ckpt" / "vae" / "config.json"
    cfg = json.loads(p.read_text())
    cfg["_class_name"] = "AutoencoderKL"
    p.write_text(json.dumps(cfg))
    with pytest.raises(FlowcacheError) as e:
        load_magi_release(fresh, variant="4.5B_base")
    msg = _one_line(e)
    assert "AutoencoderKL" in msg and "ViTVAE" in msg


def test_missing_parts_name_the_expected_path(fresh):
    shutil.rmtree(fresh / "ckpt" / "t5")
    with pytest.raises(FlowcacheError) as e:
        load_magi_release(fresh, variant="4.5B_base")
    assert str(fresh / "ckpt" / "t5" / "t5-v1_1-xxl") in _one_line(e)
    shutil.rmtree(fresh / "ckpt" / "magi" / "4.5B_base" / "inference_weight")
    with pytest.raises(FlowcacheError) as e:
        load_magi_release(fresh, variant="4.5B_base")
    assert str(fresh / "ckpt" / "magi" / "4.5B_base" / "inference_weight") in _one_line(e)
    with pytest.raises(FlowcacheError) as e:
        load_magi_release(fresh / "nowhere")
    _one_line(e)


def test_fp8_variant_is_chosen_with_its_config(tmp_path):
    # fp8 variants load (tests/test_fp8.py); the built-in config of a quant variant says fp8_quant
    (tmp_path / "ckpt" / "magi" / "4.5B_distill_quant" / "inference_weight.fp8.distill").mkdir(parents=True)
    assert choose_variant(tmp_path / "ckpt", None) == "4.5B_distill_quant"
    cfg = variant_config(tmp_path / "ckpt", "4.5B_distill_quant")
    assert cfg.engine.fp8_quant and cfg.engine.distill and cfg.model.num_layers == 34


def test_cli_generate_on_a_release(release, tmp_path):
    from typer.testing import CliRunner

    from flowcache_cli.main import app
    from flowcache_core.video import read_video

    root, has_t5 = release
    _needs_t5(has_t5)
    out = tmp_path / "r.mp4"
    r = CliRunner().invoke(app, ["generate", "--mode", "t2v", "--prompt", "a red ball", "--checkpoint-dir", str(root),
                                 "--variant", "4.5B_distill", "--cache", "flowcache", "--output-path", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    assert read_video(out)[0].shape == (16, H, W, 3)
    bad = CliRunner().invoke(app, ["generate", "--mode", "t2v", "--prompt", "x", "--checkpoint-dir", str(root),
                                   "--variant", "7B_turbo", "--output-path", str(tmp_path / "b.mp4")])
    assert bad.exit_code == 2 and "7B_turbo" in bad.output and not (tmp_path / "b.mp4").exists()


def test_a_vae_config_the_loader_would_refuse_cannot_be_built(tmp_path):
    with pytest.raises(FlowcacheError) as e:
        ViTVAE(ViTVAEConfig(embed_dim=64, depth=1, num_heads=4, video_size=64, video_length=8))
    assert "embed_dim 64" in _one_line(e)
