"""Load the official MAGI-1 release directory as a flowcache `Bundle`.

Layout (HF repo sand-ai/MAGI-1; ROOT may be the folder holding `ckpt/` or the `ckpt/` folder itself):
    ckpt/magi/<variant>/inference_weight[.distill]/   model.safetensors.index.json + shards (or model.safetensors),
                                                      official DiT key names
    ckpt/magi/<variant>/config.json                   optional: the variant's MAGI-1 JSON config
    ckpt/t5/t5-v1_1-xxl/                              transformers T5EncoderModel + tokenizer
    ckpt/vae/                                         config.json (_class_name "ViTVAE", ddconfig) +
                                                      diffusion_pytorch_model.safetensors
    special_tokens.npz                                optional, first found of: ckpt/magi/<variant>/, ckpt/, ROOT,
                                                      ROOT/example/assets/ (where the MAGI-1 code repo keeps it)
Variants: 4.5B_base, 4.5B_distill, 4.5B_distill_quant, 24B_base, 24B_distill, 24B_distill_quant; default = the only
one present. The *_quant variants hold fp8 weights in the linears of layers 1..N-2 (layout: quant.py); they load into
`Fp8Linear`s, which run fp8 matmuls on a GPU with fp8 tensor cores and dequantize elsewhere. `precision="fp8"`
quantizes a bf16 variant's same linears on load (per-row scales).

Config: `ckpt/magi/<variant>/config.json` when present (MAGI-1 schema: model_config/runtime_config/engine_config;
its paths `load`, `t5_pretrained`, `vae_pretrained` are ignored, the layout above is used), else flowcache's built-in
`magi_4_5b(distill)` / `magi_24b(distill)` (the example/4.5B and example/24B configs). The variant name decides the
weight folder; a config whose engine_config.distill / fp8_quant contradicts the variant name is refused.

Memory plan for one GPU: the DiT on `device` in its params dtype (bf16 on CUDA), T5 on `t5_device` (default CPU,
float32; its output is moved to the DiT's device), the VAE on `device` (bf16 on CUDA) and applied per emitted chunk
by the pipeline, with MAGI-1's 256 px tiles.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from flowcache_core.engine.family import Bundle
from flowcache_core.models.magi1.config import MagiConfig, magi_4_5b, magi_24b
from flowcache_core.errors import FlowcacheError
from flowcache_core.models.magi1.dit import DTYPES, VideoDiT, build_model
from flowcache_core.models.magi1.quant import PRECISIONS, check_fp8_state_dict, quantize_on_load, use_official_fp8_layout
from flowcache_core.models.magi1.t5 import SpecialTokens, T5TextEncoder, find_special_tokens
from flowcache_core.models.magi1.vae import VAE_CONFIG_NAME, MagiVAECodec, load_vit_vae, read_vae_config
from flowcache_core.models.weights import load_weights

VARIANTS = ("4.5B_base", "4.5B_distill", "4.5B_distill_quant", "24B_base", "24B_distill", "24B_distill_quant")
T5_SUBDIR = Path("t5") / "t5-v1_1-xxl"


def release_ckpt_dir(root: str | os.PathLike) -> Path | None:
    """The `ckpt` folder of a release rooted at `root` (ROOT/ckpt or ROOT itself), or None if it is not one."""
    r = Path(root)
    for c in (r / "ckpt", r):
        if (c / "magi").is_dir():
            return c
    return None


def is_magi_release(root: str | os.PathLike) -> bool:
    return release_ckpt_dir(root) is not None


def present_variants(ckpt: Path) -> list[str]:
    return [v for v in VARIANTS if (ckpt / "magi" / v).is_dir()]


def choose_variant(ckpt: Path, variant: str | None) -> str:
    present = present_variants(ckpt)
    if not present:
        raise FlowcacheError(f"{str(ckpt / 'magi')!r} holds no MAGI-1 variant (expected one of: {', '.join(VARIANTS)})")
    if variant is None:
        if len(present) > 1:
            raise FlowcacheError(f"{str(ckpt / 'magi')!r} holds several variants ({', '.join(present)}); pick one with --variant")
        variant = present[0]
    if variant not in present:
        what = "is not a MAGI-1 variant" if variant not in VARIANTS else "is not present"
        raise FlowcacheError(f"variant {variant!r} {what}; present in {str(ckpt / 'magi')!r}: {', '.join(present)}")
    return variant


def weight_dir(ckpt: Path, variant: str) -> Path:
    """ckpt/magi/<variant>/inference_weight + ".fp8" if quant + ".distill" if distill (MAGI-1's checkpointing.py)."""
    name = "inference_weight" + (".fp8" if variant.endswith("_quant") else "") + (".distill" if "distill" in variant else "")
    return ckpt / "magi" / variant / name


def variant_config(ckpt: Path, variant: str) -> MagiConfig:
    """The variant's own config.json if present, else the built-in MAGI-1 config of its size and kind."""
    distill, quant = "distill" in variant, variant.endswith("_quant")
    path = ckpt / "magi" / variant / "config.json"
    if path.is_file():
        cfg = MagiConfig.from_json(path)
        if cfg.engine.distill != distill:
            raise FlowcacheError(f"{str(path)!r}: engine_config.distill is {cfg.engine.distill}, "
                                 f"but variant {variant!r} is a {'distill' if distill else 'base'} variant")
        if cfg.engine.fp8_quant != quant:
            raise FlowcacheError(f"{str(path)!r}: engine_config.fp8_quant is {str(cfg.engine.fp8_quant).lower()}, "
                                 f"but variant {variant!r} {'holds' if quant else 'does not hold'} fp8 weights")
    else:
        cfg = (magi_4_5b if variant.startswith("4.5B") else magi_24b)(distill)
        cfg.engine.fp8_quant = quant
    return cfg.validate()


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise FlowcacheError(f"MAGI-1 release: {what} {str(path)!r} does not exist")
    return path


def load_dit(config: MagiConfig, wdir: Path, *, device: str, dtype: torch.dtype, attn_backend: str = "auto",
             quant: bool = False, quantize: bool = False) -> VideoDiT:
    """The DiT of a release: built on meta, materialized in `dtype` (norms/embedders float32), loaded strictly (cast
    per tensor). quant: the official fp8 layout (its fp8 weights and float32 scales keep their dtypes, checked);
    quantize: a bf16 release's same linears quantized after loading."""
    model = build_model(config.model, device="meta", attn_backend=attn_backend)
    if quant:
        use_official_fp8_layout(model)
    model = model.to_empty(device=device)
    model.set_dtype(dtype)
    load_weights(model, wdir, check=check_fp8_state_dict if quant else None)
    if quantize:
        quantize_on_load(model)
    return model.eval()


def load_magi_release(root: str | os.PathLike, variant: str | None = None, device: str = "cpu",
                      dtype: torch.dtype | None = None, t5_device: str = "cpu", vae_dtype: torch.dtype | None = None,
                      attn_backend: str = "auto", precision: str | None = None) -> Bundle:
    """A Bundle (config, DiT, ViT VAE codec, T5 encoder) from an official MAGI-1 release directory.
    `precision`: None (the variant's own: fp8 for *_quant, else the params dtype), "bf16" (the same, said aloud;
    refused for *_quant) or "fp8" (a bf16 variant's linears quantized on load)."""
    r = Path(root)
    if not r.is_dir():
        raise FlowcacheError(f"checkpoint directory {str(r)!r} does not exist")
    ckpt = release_ckpt_dir(r)
    if ckpt is None:
        raise FlowcacheError(f"{str(r)!r} is not a MAGI-1 release: expected {str(r / 'ckpt' / 'magi')!r}")
    variant = choose_variant(ckpt, variant)
    quant = variant.endswith("_quant")
    if precision not in (None, *PRECISIONS):
        raise FlowcacheError(f"precision {precision!r} unknown (allowed: {', '.join(PRECISIONS)})")
    if quant and precision == "bf16":
        raise FlowcacheError(f"variant {variant!r} holds fp8 weights; precision bf16 needs a bf16 variant "
                             f"({variant[: -len('_quant')]!r})")
    # Check every part's path before loading anything heavy.
    wdir = _require(weight_dir(ckpt, variant), f"{variant} DiT weights")
    vae_dir = _require(ckpt / "vae", "VAE directory")
    _require(vae_dir / VAE_CONFIG_NAME, "VAE config")
    read_vae_config(vae_dir)  # class name and ddconfig, before the big loads
    t5_dir = _require(ckpt / T5_SUBDIR, "T5 directory")
    config = variant_config(ckpt, variant)
    on_cuda = str(device).startswith("cuda")

    model = load_dit(config, wdir, device=device, dtype=dtype or (DTYPES[config.model.params_dtype] if on_cuda else torch.float32),
                     attn_backend=attn_backend, quant=quant, quantize=precision == "fp8" and not quant)

    codec = MagiVAECodec(vae=load_vit_vae(vae_dir), device=device,
                         dtype=vae_dtype or (torch.bfloat16 if on_cuda else torch.float32),
                         scale_factor=config.runtime.scale_factor, tile_frames=max(4, config.runtime.fps // 2 // 4 * 4))  # MAGI-1: fps // 2
    codec.path = str(vae_dir)
    if codec.latent_channels * (2 if config.model.half_channel_vae else 1) != config.model.in_channels:
        raise FlowcacheError(f"VAE latent channels {codec.latent_channels} do not fit the DiT's in_channels "
                             f"{config.model.in_channels} (half_channel_vae {config.model.half_channel_vae})")

    tokens_path = find_special_tokens(ckpt / "magi" / variant, ckpt, r, r / "example" / "assets")
    tokens = SpecialTokens.load(tokens_path) if tokens_path is not None else None
    text = T5TextEncoder(t5_dir, device=t5_device, max_length=config.model.caption_max_length, special_tokens=tokens)
    if text.dim != config.model.caption_channels:
        raise FlowcacheError(f"T5 {str(t5_dir)!r} has d_model {text.dim}, the DiT's caption_channels is {config.model.caption_channels}")
    config.extra.setdefault("flowcache", {})
    config.extra["flowcache"].update({"release": {"variant": variant, "special_tokens": None if tokens_path is None else str(tokens_path),
                                                  "precision": "fp8" if quant or precision == "fp8" else "bf16"}})
    return Bundle("magi1", config, model, codec, text, r)
