"""A causal Wan checkpoint folder with random weights (tests, benchmarks): our layout (config.py) with the generator
in the original Wan key names under "generator_ema" (as Self-Forcing's releases) and a Wan2.1 diffusers base folder
(WanPipeline.save_pretrained: model_index.json, transformer/, vae/, text_encoder/, tokenizer/, scheduler/).
Needs the `wan` extra (diffusers, transformers, tokenizers).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from flowcache_core.models.causal_wan.keymap import to_original
from flowcache_core.models.skyreels_df.synthetic import tiny_tokenizer

# Wan2.1-T2V-1.3B's transformer (Wan-AI/Wan2.1-T2V-1.3B-Diffusers transformer/config.json), the shape Self-Forcing and
# LongLive fine-tune.
SHAPE_1_3B = dict(num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16, text_dim=4096,
                  freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                  eps=1e-6)
TINY = dict(num_attention_heads=2, attention_head_dim=16, in_channels=16, out_channels=16, text_dim=32,
            freq_dim=32, ffn_dim=64, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6)
BASE = "Wan2.1-T2V-1.3B-Diffusers"


def random_generator(shape: dict, seed: int = 0, std: float = 0.1) -> dict[str, torch.Tensor]:
    """A random Wan2.1 transformer's state dict in the original key names (diffusers' class, renamed)."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    tr = WanTransformer3DModel(patch_size=(1, 2, 2), **shape)
    with torch.no_grad():  # diffusers zero-inits some projections; random everywhere makes parity meaningful
        for p in tr.parameters():
            if p.dim() > 1:
                p.normal_(0.0, std)
    return {to_original(k): v.contiguous() for k, v in tr.state_dict().items()}


def write_base(folder: Path, shape: dict, *, text_layers: int = 2, vae_base_dim: int = 8, seed: int = 0) -> Path:
    """A tiny Wan2.1 diffusers folder (its transformer random too; only its config.json is read)."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    te = UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), d_model=shape["text_dim"], d_kv=8, d_ff=64,
                                     num_layers=text_layers, num_heads=2, relative_attention_num_buckets=8,
                                     relative_attention_max_distance=16, pad_token_id=0, eos_token_id=1,
                                     decoder_start_token_id=0))
    vae = AutoencoderKLWan(base_dim=vae_base_dim, z_dim=shape["in_channels"], dim_mult=[1, 1, 1, 1],
                           num_res_blocks=1, temperal_downsample=[False, True, True])
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=te.eval(), vae=vae.eval(),
                       transformer=WanTransformer3DModel(patch_size=(1, 2, 2), **shape).eval(),
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0))
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def write_checkpoint(folder: str | Path, shape: dict | None = None, *, inference: dict | None = None,
                     fmt: str = "pt", seed: int = 0, cache_defaults: dict | None = None) -> Path:
    """Write a random causal Wan checkpoint folder; returns its path. fmt: "pt" (torch.save of {"generator_ema":
    sd}, keys prefixed "model." as their wrapper saves them) or "safetensors" (the bare state dict)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shape = dict(TINY if shape is None else shape)
    write_base(folder / BASE, shape, seed=seed)
    sd = random_generator(shape, seed=seed)
    if fmt == "pt":
        name = "generator.pt"
        torch.save({"generator_ema": {f"model.{k}": v for k, v in sd.items()}}, folder / name)
    else:
        from safetensors.torch import save_file

        name = "generator.safetensors"
        save_file(sd, str(folder / name))
    cfg = {"family": "causal_wan", "generator": name, "base": BASE}
    if inference:
        cfg["inference"] = inference
    if cache_defaults:
        cfg["cache_defaults"] = cache_defaults
    (folder / "config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    return folder
