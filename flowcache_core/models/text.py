"""Text encoders: prompts -> (B, L, dim) float32 embeddings and a (B, L) int64 mask.

`WordTextEncoder` is the default model's own encoder: one id per word of the world's vocabulary, a learned
positional embedding and a few pre-norm transformer layers; it is trained jointly with the DiT.
An empty prompt gives an all-zero mask (and zero embeddings): the caller uses the null caption then.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from dataclasses import asdict, dataclass
from typing import Protocol, runtime_checkable

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from flowcache_core.errors import FlowcacheError
from flowcache_core.schema import AT_LEAST_1, Range, check_fields
from flowcache_core.fileio import atomic_write

PAD, UNK = "<pad>", "<unk>"
WEIGHTS_FILE, CONFIG_FILE = "text_encoder.safetensors", "text_encoder.json"


@runtime_checkable
class TextEncoder(Protocol):
    dim: int
    max_length: int

    def encode(self, prompts: list[str]) -> tuple[Tensor, Tensor]:  # (B, L, dim) float32, mask (B, L) int64
        ...


@dataclass
class WordTextEncoderConfig:
    vocab: tuple[str, ...]  # PAD, UNK, then the words (the default model's: the training world's, saved in its bundle)
    dim: int = 64
    layers: int = 2
    heads: int = 4
    max_length: int = 24
    mlp_ratio: int = 4
    dropout: float = 0.0
    seed: int = 0  # parameter init

    def __post_init__(self):
        self.vocab = tuple(self.vocab)
        if self.vocab[:2] != (PAD, UNK) or len(set(self.vocab)) != len(self.vocab):
            raise FlowcacheError(f"text vocab must start with {PAD!r}, {UNK!r} and have no duplicates")
        for name in ("dim", "layers", "heads", "max_length", "mlp_ratio"):
            if int(getattr(self, name)) < 1:
                raise FlowcacheError(f"text encoder {name}={getattr(self, name)} must be >= 1")
        if self.dim % self.heads:
            raise FlowcacheError(f"text encoder dim={self.dim} must be a multiple of heads={self.heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise FlowcacheError(f"text encoder dropout={self.dropout} must be in [0, 1)")


def split_words(prompt: str) -> list[str]:
    """Lower-case words: runs of letters; everything else separates."""
    return re.findall(r"[a-z]+", prompt.lower())


class WordTextEncoder(nn.Module):
    def __init__(self, config: WordTextEncoderConfig):
        super().__init__()
        self.config = config
        self.dim, self.max_length = config.dim, config.max_length
        self.word_ids = {w: i for i, w in enumerate(config.vocab)}
        with torch.random.fork_rng(devices=[]):  # deterministic init, global RNG untouched
            torch.manual_seed(config.seed)
            self.tok_embed = nn.Embedding(len(config.vocab), config.dim)
            self.pos_embed = nn.Parameter(torch.randn(config.max_length, config.dim) * 0.02)
            layer = nn.TransformerEncoderLayer(
                config.dim, config.heads, config.dim * config.mlp_ratio, config.dropout,
                activation="gelu", batch_first=True, norm_first=True)
            self.blocks = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(config.dim)
            nn.init.normal_(self.tok_embed.weight, std=0.02)

    # ---- tokens
    def tokenize(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        """ids (B, L) int64 (pad 0, unknown words 1), mask (B, L) int64; longer prompts are truncated."""
        if isinstance(prompts, str):
            raise FlowcacheError("tokenize takes a list of prompts, not one string")
        B, L = len(prompts), self.max_length
        ids = torch.zeros(B, L, dtype=torch.int64)
        mask = torch.zeros(B, L, dtype=torch.int64)
        unk = self.word_ids[UNK]
        for b, prompt in enumerate(prompts):
            words = split_words(prompt)[:L]
            ids[b, : len(words)] = torch.tensor([self.word_ids.get(w, unk) for w in words], dtype=torch.int64)
            mask[b, : len(words)] = 1
        return ids, mask

    def unknown_words(self, prompt: str) -> list[str]:
        """The prompt's words not in the vocabulary (each once, in order): the encoder reads them as one
        unknown token, so they do not steer the video."""
        return list(dict.fromkeys(w for w in split_words(prompt) if w not in self.word_ids))

    # ---- model
    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        """ids, mask (B, L) -> embeddings (B, L, dim); zero where mask is 0."""
        L = ids.shape[1]
        x = self.tok_embed(ids) + self.pos_embed[:L]  # (B, L, dim)
        ignore = mask == 0  # (B, L) True = padding
        ignore[:, 0] &= mask.sum(dim=1) > 0  # an empty prompt attends to its first slot (no NaN); zeroed below
        x = self.blocks(x, src_key_padding_mask=ignore)  # (B, L, dim)
        x = self.norm(x) * mask[..., None].to(x.dtype)  # (B, L, dim)
        return x.float()

    def chunk_captions(self, caption: Tensor, mask: Tensor, num_chunks: int) -> tuple[Tensor, Tensor]:
        """One caption row per generated chunk: (L, dim), (L,) -> (n, L, dim), (n, L); the same row for all."""
        return caption[None].expand(num_chunks, -1, -1), mask[None].expand(num_chunks, -1)

    def encode(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        device = self.pos_embed.device
        ids, mask = self.tokenize(prompts)
        ids, mask = ids.to(device), mask.to(device)
        return self(ids, mask), mask


# ------------------------------------------------------------------------------------------- save / load


def save_text_encoder(encoder: WordTextEncoder, directory: str) -> None:
    """Write text_encoder.safetensors and text_encoder.json (config incl. vocab) into `directory`."""
    if not os.path.isdir(directory):
        raise FlowcacheError(f"text encoder folder {directory} does not exist")
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    meta = {"type": "word", "config": {**asdict(encoder.config), "vocab": list(encoder.config.vocab)}}
    for name, write in ((WEIGHTS_FILE, lambda p: save_file(state, p)),
                        (CONFIG_FILE, lambda p: Path(p).write_text(json.dumps(meta, indent=1)))):
        with atomic_write(os.path.join(directory, name)) as tmp:
            write(str(tmp))


def load_text_encoder(directory: str, device: str | torch.device = "cpu") -> WordTextEncoder:
    """The encoder saved by `save_text_encoder`; FlowcacheError when files are missing or do not fit."""
    cfg_path, w_path = os.path.join(directory, CONFIG_FILE), os.path.join(directory, WEIGHTS_FILE)
    for p in (cfg_path, w_path):
        if not os.path.isfile(p):
            raise FlowcacheError(f"text encoder file {p} is missing")
    try:
        meta = json.loads(Path(cfg_path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FlowcacheError(f"text encoder config {cfg_path} is unreadable: not valid JSON ({getattr(e, 'msg', e)})") from None
    if not isinstance(meta, dict) or "config" not in meta:
        raise FlowcacheError(f"text encoder config {cfg_path}: expected an object with a \"config\" object")
    sizes = {n: AT_LEAST_1 for n in ("dim", "layers", "heads", "max_length", "mlp_ratio")}
    check_fields(WordTextEncoderConfig, meta["config"], "config", f"text encoder config {cfg_path}",
                 {**sizes, "dropout": Range(0.0, 1.0)}, unknown_keys=False)
    config = WordTextEncoderConfig(**meta["config"])
    try:
        state = load_file(w_path)
    except Exception as e:  # safetensors raises its own error types on corrupt files
        raise FlowcacheError(f"text encoder weights {w_path} are unreadable: {e}") from None
    encoder = WordTextEncoder(config)
    expected = {k: tuple(v.shape) for k, v in encoder.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if expected != got:
        bad = sorted(set(expected.items()) ^ set(got.items()))[:3]
        raise FlowcacheError(f"text encoder weights {w_path} do not fit its config (e.g. {bad})")
    encoder.load_state_dict(state)
    return encoder.to(device)
