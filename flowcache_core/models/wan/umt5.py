"""The UMT5 text encoder of Wan-based checkpoints, from a diffusers folder (transformers used as a library).

Facts (diffusers' Wan / SkyReels-V2 pipelines): the prompt is cleaned (ftfy.fix_text, HTML unescaped twice,
whitespace runs collapsed), tokenized to max_sequence_length (512) with padding and truncation, encoded; the
embedding rows past the prompt's tokens are set to zero. An empty negative prompt is encoded like any other.
"""
from __future__ import annotations

import html
import re
from pathlib import Path

import torch
from torch import Tensor

from flowcache_core.errors import FlowcacheError
from flowcache_core.fileio import read_json_object
from flowcache_core.models.wan.quiet import quiet_loading

MAX_SEQUENCE_LENGTH = 512  # the SkyReels-V2 DF pipelines' default


def clean_prompt(text: str) -> str:
    """The pipelines' prompt cleaning: ftfy, HTML entities unescaped twice, whitespace collapsed."""
    try:
        import ftfy
    except ImportError:
        raise FlowcacheError("Wan-based checkpoints need ftfy for prompt cleaning: pip install -e \".[wan]\"") from None
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return re.sub(r"\s+", " ", text).strip()


class UMT5TextEncoder:
    """prompts -> (B, max_len, D) embeddings, zero past each prompt's tokens (float32)."""

    def __init__(self, tokenizer, model: torch.nn.Module, max_length: int = MAX_SEQUENCE_LENGTH):
        self.tokenizer, self.model, self.max_length = tokenizer, model, max_length

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def encode(self, prompts: list[str], max_length: int | None = None) -> Tensor:
        """max_length: tokens per prompt (the pipelines' max_sequence_length); default the encoder's (512)."""
        tok = self.tokenizer([clean_prompt(p) for p in prompts], padding="max_length",
                             max_length=max_length or self.max_length,
                             truncation=True, add_special_tokens=True, return_attention_mask=True,
                             return_tensors="pt")
        ids, mask = tok.input_ids.to(self.device), tok.attention_mask.to(self.device)  # (B, max_len)
        hidden = self.model(ids, mask).last_hidden_state.float()  # (B, max_len, D)
        lengths = mask.gt(0).sum(dim=1)
        keep = torch.arange(hidden.shape[1], device=hidden.device)[None] < lengths[:, None]
        return hidden * keep[..., None]




def load_umt5(text_encoder_dir: Path, tokenizer_dir: Path, *, device: str | torch.device,
              dtype: torch.dtype) -> UMT5TextEncoder:
    """A diffusers `text_encoder/` (UMT5EncoderModel or T5EncoderModel) and `tokenizer/` folder, strictly."""
    try:
        from transformers import AutoTokenizer, T5EncoderModel, UMT5EncoderModel
    except ImportError:
        raise FlowcacheError("Wan-based checkpoints need transformers for UMT5: pip install -e \".[wan]\"") from None
    cfg = read_json_object(text_encoder_dir / "config.json", "text encoder config")
    archs = cfg.get("architectures") or []
    kinds = {"UMT5EncoderModel": UMT5EncoderModel, "T5EncoderModel": T5EncoderModel}
    arch = next((a for a in archs if a in kinds), None)
    if arch is None:
        raise FlowcacheError(f"{str(text_encoder_dir / 'config.json')!r}: architectures {archs!r}, expected "
                             f"UMT5EncoderModel or T5EncoderModel")
    if not any(text_encoder_dir.glob("*.safetensors")):
        raise FlowcacheError(f"text encoder folder {str(text_encoder_dir)!r} has no .safetensors weights")
    if not tokenizer_dir.is_dir() or not ((tokenizer_dir / "tokenizer.json").is_file()
                                          or (tokenizer_dir / "spiece.model").is_file()):
        raise FlowcacheError(f"tokenizer folder {str(tokenizer_dir)!r} has neither tokenizer.json nor spiece.model")
    try:
        with quiet_loading():
            tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
            model, info = kinds[arch].from_pretrained(text_encoder_dir, local_files_only=True, torch_dtype=dtype,
                                                      output_loading_info=True)
    except (OSError, ValueError, RuntimeError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FlowcacheError(f"text encoder {str(text_encoder_dir)!r} does not load: {first}") from None
    missing = [k for k in (info.get("missing_keys") or []) if "embed_tokens" not in k]  # tied to shared.weight
    mismatched = info.get("mismatched_keys") or []
    if missing or mismatched:
        bad = missing[0] if missing else mismatched[0][0]
        raise FlowcacheError(f"text encoder {str(text_encoder_dir)!r}: weight {bad!r} "
                             f"{'missing' if missing else 'has the wrong shape'}")
    return UMT5TextEncoder(tokenizer, model.to(device).eval())
