"""Loading a causal Wan checkpoint folder (config.py): the generator into our Wan DiT through the strict key map,
the Wan2.1 base folder's VAE (diffusers AutoencoderKLWan) and UMT5 (transformers).

Precision: float32 on the CPU; bf16 on CUDA with float32 where diffusers keeps float32 (norms, modulation tables,
timestep MLP), as the SkyReels-V2 family loads the same DiT.
"""
from __future__ import annotations

from pathlib import Path

import torch

from flowcache_core.engine.family import Bundle
from flowcache_core.models.causal_wan.config import FAMILY, CausalWanConfig
from flowcache_core.models.causal_wan.keymap import convert, merge_lora, read_generator
from flowcache_core.models.wan.dit import WanDiT
from flowcache_core.models.wan.umt5 import load_umt5
from flowcache_core.models.wan.vae import load_wan_vae


def model_dtype(device: str | torch.device) -> torch.dtype:
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def load_generator(config: CausalWanConfig, *, device: str | torch.device, dtype: torch.dtype,
                   attn_backend: str = "auto") -> WanDiT:
    """Our DiT with the generator's weights (original Wan names, checked strictly before anything is built)."""
    with torch.device("meta"):
        model = WanDiT(config.dit, attn_backend=attn_backend)
    own = model.state_dict()
    sd = read_generator(config.generator, config.generator_key)
    if config.lora is not None:
        sd = merge_lora(sd, config.lora, config.lora_alpha)
    sd = convert(sd, own, f"generator weights {str(config.generator)!r}")
    model = model.set_dtype(dtype).to_empty(device=device)
    dtypes = {k: v.dtype for k, v in model.state_dict().items()}
    model.load_state_dict({k: v.to(dtypes[k]) for k, v in sd.items()}, strict=True)
    return model.eval()


def load_checkpoint(path: Path, config: CausalWanConfig, *, device: str, attn_backend: str) -> Bundle:
    dtype = model_dtype(device)
    dit = load_generator(config, device=device, dtype=dtype, attn_backend=attn_backend)
    codec = load_wan_vae(config.base / "vae", device=device, dtype=dtype)
    text = load_umt5(config.base / "text_encoder", config.base / "tokenizer", device=device, dtype=dtype)
    return Bundle(FAMILY, config, dit, codec, text, path)
