"""A MAGI-1 release directory holding random weights, in the exact official layout.

For tests (tiny sizes) and for the full-size GPU run of `bench/gpu_magi_e2e.py` (the 4.5B DiT, the ViT VAE of
the published size, a small T5 of the same interface), so that the release loader, VAE and T5 paths can be
exercised without the real 30 GB download:

    ROOT/ckpt/magi/<variant>/config.json
    ROOT/ckpt/magi/<variant>/inference_weight[.fp8][.distill]/  (model-0000k-of-0000n.safetensors + index)
    ROOT/ckpt/vae/{config.json, diffusion_pytorch_model.safetensors}
    ROOT/ckpt/t5/t5-v1_1-xxl/   (transformers T5EncoderModel + a tokenizer built offline)
    ROOT/special_tokens.npz
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from flowcache_core.config import MagiConfig
from flowcache_core.model.dit import build_model
from flowcache_core.model.vae import ViTVAE, ViTVAEConfig, save_vit_vae
from flowcache_core.model.weights import save_weights

T5_WORDS = "a cat dog runs on the grass red blue ball sky sun".split()


def write_random_t5(d: Path, dim: int, layers: int = 2, heads: int = 4, d_kv: int = 8, d_ff: int = 64) -> bool:
    """A random T5EncoderModel with output width `dim` + a Unigram tokenizer built offline.
    False (directory left empty) when `transformers`/`tokenizers` are not installed."""
    d.mkdir(parents=True, exist_ok=True)
    try:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers
        from transformers import T5Config, T5EncoderModel, T5TokenizerFast
    except ImportError:
        return False
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("\u2581" + w, -1.0) for w in T5_WORDS] + \
            [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz\u2581"]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>", extra_ids=0).save_pretrained(d)
    cfg = T5Config(vocab_size=len(vocab), d_model=dim, d_kv=d_kv, d_ff=d_ff, num_layers=layers, num_heads=heads,
                   feed_forward_proj="gated-gelu", relative_attention_num_buckets=8)
    T5EncoderModel(cfg).save_pretrained(d)
    return True


def write_random_release(root: Path, configs: dict[str, MagiConfig], vae: ViTVAEConfig, *, seed: int = 0,
                         dtype: torch.dtype = torch.float32, device: str = "cpu", max_shard_bytes: int = 200_000,
                         t5: Callable[[Path, int], bool] | None = None, output_std: float = 0.05) -> bool:
    """Write `configs` (variant name -> config) with random DiT weights; returns whether the T5 dir was written."""
    ckpt = Path(root) / "ckpt"
    dim = None
    for i, (variant, cfg) in enumerate(configs.items()):
        vdir = ckpt / "magi" / variant
        vdir.mkdir(parents=True, exist_ok=True)
        cfg.to_json(vdir / "config.json")
        model = build_model(cfg.model, device=device, dtype=dtype, seed=seed + i)
        with torch.no_grad():  # the init zeroes the output layer; a random model should move the latents
            model.final_linear.linear.weight.normal_(0, output_std)
        name = "inference_weight" + (".fp8" if variant.endswith("_quant") else "") + (".distill" if cfg.engine.distill else "")
        save_weights(model, vdir / name, max_shard_bytes=max_shard_bytes)
        del model
        dim = cfg.model.caption_channels
    torch.manual_seed(seed)
    save_vit_vae(ViTVAE(vae), ckpt / "vae")
    has_t5 = (t5 or write_random_t5)(ckpt / "t5" / "t5-v1_1-xxl", dim)
    rng = np.random.default_rng(seed)
    np.savez(Path(root) / "special_tokens.npz", caption_token=rng.normal(size=(1, dim)).astype(np.float32),
             logo_token=rng.normal(size=(1, dim)).astype(np.float32),
             other_tokens=rng.normal(size=(100, dim)).astype(np.float32))
    return has_t5
