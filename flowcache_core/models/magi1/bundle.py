"""A MAGI-1-family model bundle: everything `generate` needs, in one directory.

Layout (the shipped default model uses it; a user's own trained model too):
    config.json                     MAGI-1 schema (model_config, runtime_config, engine_config), "family": "magi1",
                                    and a "flowcache" object: {"codec": {"name": ..., ...}, "text_encoder": "word",
                                    "cache_defaults": {...}}
    model.safetensors               DiT weights, official MAGI-1 key names (or shards + model.safetensors.index.json)
    text_encoder.safetensors/.json  the built-in word encoder (text_encoder "word")
Official MAGI-1 release directories (ckpt/magi/<variant>, ckpt/vae, ckpt/t5) go through `release.py`.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from flowcache_core.engine.family import DEFAULT_MODEL_DIR, Bundle
from flowcache_core.errors import FlowcacheError
from flowcache_core.models.codec import make_codec
from flowcache_core.models.magi1.config import MagiConfig
from flowcache_core.models.magi1.dit import DTYPES, build_model
from flowcache_core.models.magi1.quant import quantize_on_load
from flowcache_core.models.text import load_text_encoder
from flowcache_core.models.weights import load_weights

def default_model_dir() -> Path:
    return DEFAULT_MODEL_DIR


def load_bundle(path: str | os.PathLike | None = None, device: str = "cpu", dtype: torch.dtype | None = None,
                attn_backend: str = "auto", variant: str | None = None, precision: str | None = None) -> Bundle:
    """A flowcache bundle directory, or an official MAGI-1 release root (ckpt/magi, ckpt/vae, ckpt/t5).
    precision "fp8": the DiT's linears quantized on load (`quant.quantize_on_load`)."""
    from flowcache_core.models.magi1.release import is_magi_release, load_magi_release

    if path is not None and is_magi_release(path):
        return load_magi_release(path, variant=variant, device=device, dtype=dtype, attn_backend=attn_backend,
                                 precision=precision)
    d = Path(path) if path is not None else DEFAULT_MODEL_DIR
    if variant is not None:
        what = f"{str(d)!r} is a flowcache bundle" if path is not None else f"the shipped default model ({str(d)!r}) is a flowcache bundle"
        raise FlowcacheError(f"--variant {variant!r} applies to MAGI-1 release directories only; {what}")
    if not d.is_dir():
        raise FlowcacheError(f"checkpoint directory {str(d)!r} does not exist")
    cfg_path = d / "config.json"
    if not cfg_path.is_file():
        raise FlowcacheError(f"checkpoint directory {str(d)!r} has no config.json (MAGI-1 schema)")
    config = MagiConfig.from_json(cfg_path).validate()
    fc = config.extra.get("flowcache") or {}
    codec_spec = dict(fc.get("codec") or {})
    if not codec_spec:
        raise FlowcacheError(f"{str(cfg_path)!r} names no latent codec (flowcache.codec); MAGI-1 release directories need the VAE loader")
    codec = make_codec(codec_spec.pop("name"), **codec_spec)
    if fc.get("text_encoder", "word") != "word":
        raise FlowcacheError(f"{str(cfg_path)!r}: text encoder {fc.get('text_encoder')!r} unknown (allowed: word)")
    text_encoder = load_text_encoder(str(d), device=device).eval()
    model = build_model(config.model, device="meta", attn_backend=attn_backend)
    model = model.to_empty(device=device)
    model.set_dtype(torch.float32)
    load_weights(model, d)
    model.set_dtype(dtype or (torch.float32 if str(device) == "cpu" else DTYPES[config.model.params_dtype]))
    if precision == "fp8":
        quantize_on_load(model)
    return Bundle("magi1", config, model.eval(), codec, text_encoder, d)
