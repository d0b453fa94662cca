"""Loading a SkyReels-V2 DF checkpoint folder (diffusers layout): our DiT, diffusers' Wan VAE, transformers' UMT5.

Precision: float32 on the CPU; bf16 on CUDA with float32 where diffusers keeps float32 (norms, modulation tables,
timestep MLP), the VAE and UMT5 in bf16 too, as the SkyReels-V2 examples load them.
"""
from __future__ import annotations

from pathlib import Path

import torch

from flowcache_core.engine.family import Bundle
from flowcache_core.models.skyreels_df.config import DFConfig
from flowcache_core.models.wan.loader import load_wan_transformer
from flowcache_core.models.wan.umt5 import load_umt5
from flowcache_core.models.wan.vae import load_wan_vae


def model_dtype(device: str | torch.device) -> torch.dtype:
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def load_checkpoint(path: Path, config: DFConfig, *, device: str, attn_backend: str) -> Bundle:
    dtype = model_dtype(device)
    dit = load_wan_transformer(path / "transformer", device=device, dtype=dtype, attn_backend=attn_backend)
    codec = load_wan_vae(path / "vae", device=device, dtype=dtype)
    text = load_umt5(path / "text_encoder", path / "tokenizer", device=device, dtype=dtype)
    return Bundle("skyreels_df", config, dit, codec, text, path)
