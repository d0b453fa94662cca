"""A SkyReels-V2 DF checkpoint with random weights, written in the diffusers folder layout (tests, benchmarks).

The folder is what `SkyReelsV2DiffusionForcingPipeline.save_pretrained` writes (model_index.json, transformer/,
vae/, text_encoder/, tokenizer/, scheduler/), so diffusers' own pipelines load it too: the parity tests run
both on the same files. Needs the `wan` extra (diffusers, transformers, tokenizers).
"""
from __future__ import annotations

from pathlib import Path

import torch

# The real 1.3B-540P DF transformer's shape (Skywork/SkyReels-V2-DF-1.3B-540P-Diffusers transformer/config.json).
SHAPE_1_3B = dict(num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16, text_dim=4096,
                  freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                  eps=1e-6, inject_sample_info=True, num_frame_per_block=1)
TINY = dict(num_attention_heads=2, attention_head_dim=16, in_channels=16, out_channels=16, text_dim=32,
            freq_dim=32, ffn_dim=64, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
            eps=1e-6, inject_sample_info=True, num_frame_per_block=1)
# The DF pipelines' scheduler (scheduler/scheduler_config.json of the DF Diffusers releases).
SCHEDULER = dict(num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=8.0,
                 solver_order=2, solver_type="bh2", predict_x0=True, lower_order_final=True,
                 final_sigmas_type="zero", sample_max_value=1.0)
WORDS = ("a the of and in on with red green blue circle square moves left right up down slowly fast cat dog "
         "walks runs street city sky sunset river forest light dark small large over under").split()


def tiny_tokenizer():
    """A word-level tokenizer in T5's conventions (<pad> 0, </s> 1, <unk> 2, </s> appended), built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def build_components(transformer: dict | None = None, *, text_layers: int = 2, vae_base_dim: int = 8,
                     seed: int = 0, dtype: torch.dtype = torch.float32) -> dict:
    """Random-weight components of a DF pipeline: transformer (shape dict, default TINY), tiny VAE, tiny UMT5."""
    from diffusers import AutoencoderKLWan, SkyReelsV2Transformer3DModel, UniPCMultistepScheduler
    from transformers import UMT5Config, UMT5EncoderModel

    shape = dict(TINY if transformer is None else transformer)
    torch.manual_seed(seed)
    tr = SkyReelsV2Transformer3DModel(patch_size=(1, 2, 2), **shape)
    with torch.no_grad():  # diffusers zero-inits some projections; random everywhere makes parity meaningful
        for p in tr.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.02 if shape["num_layers"] > 4 else 0.1)
    vae = AutoencoderKLWan(base_dim=vae_base_dim, z_dim=shape["in_channels"], dim_mult=[1, 1, 1, 1],
                           num_res_blocks=1, temperal_downsample=[False, True, True])
    tokenizer = tiny_tokenizer()
    te = UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), d_model=shape["text_dim"], d_kv=8, d_ff=64,
                                     num_layers=text_layers, num_heads=2, relative_attention_num_buckets=8,
                                     relative_attention_max_distance=16, pad_token_id=0, eos_token_id=1,
                                     decoder_start_token_id=0))
    return dict(transformer=tr.to(dtype).eval(), vae=vae.eval(), text_encoder=te.eval(), tokenizer=tokenizer,
                scheduler=UniPCMultistepScheduler(**SCHEDULER))


def write_checkpoint(folder: str | Path, transformer: dict | None = None, *, max_shard_size: str | None = None,
                     **kwargs) -> Path:
    """Write a random DF checkpoint folder (diffusers layout); returns its path."""
    from diffusers import SkyReelsV2DiffusionForcingPipeline

    folder = Path(folder)
    pipe = SkyReelsV2DiffusionForcingPipeline(**build_components(transformer, **kwargs))
    extra = {"max_shard_size": max_shard_size} if max_shard_size else {}
    pipe.save_pretrained(folder, safe_serialization=True, **extra)
    return folder
