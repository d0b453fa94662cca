"""How the KV store keeps K and V: as computed ("none"), or int8 with one scale per token and KV head ("int8").

A format has four operations the store calls: `encode` when a slot is written, `decode` just before attention
reads it (back to the dtype it was written in), `cat`/`gather` when clean chunks are compressed (the kept tokens'
codes and scales are gathered as they are: nothing is quantized twice), and `nbytes`. `bytes_per_token` gives
what one token of K (or of V) costs in one layer, which turns a byte budget into tokens before anything is stored.

int8 (symmetric, per token and head; the layout of KIVI's value cache and of vLLM's per-token int8 KV):

    scale = max_d |x[t, h, d]| / 127          (bf16, one per token and KV head)
    code  = round(x / scale) in [-127, 127]   (int8)
    x'    = code * scale                      (dequantized in float32, cast to the written dtype)

One token and head cost head_dim + 2 bytes against 2·head_dim in bf16 (0.52× at head_dim 64) and 4·head_dim in
float32. The rounding error is at most scale/2 = max|x|/254 per element: a uniform 8-bit grid, where bf16 keeps
8 significant bits per element; tests/test_kv_quant.py measures what that does to attention.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from flowcache_core.cache.kv_compressor import gather_per_head

INT8_MAX = 127
SCALE_DTYPE = torch.bfloat16  # float32's range in 2 bytes; codes are rounded against the stored scale
_TINY = 1e-30  # an all-zero row gets this scale (codes 0) instead of a division by zero


class NoQuant:
    """K/V kept as computed (the model's dtype): every operation is the identity, so a run is unchanged."""

    name: ClassVar[str] = "none"

    def encode(self, x: Tensor) -> Tensor:
        return x

    def decode(self, x: Tensor) -> Tensor:
        return x

    def cat(self, parts: list[Tensor]) -> Tensor:
        return torch.cat(parts)

    def gather(self, x: Tensor, indices: Tensor) -> Tensor:
        return gather_per_head(x, indices)

    def nbytes(self, x: Tensor) -> int:
        return x.numel() * x.element_size()

    def bytes_per_token(self, heads: int, head_dim: int, dtype: torch.dtype) -> int:
        return heads * head_dim * torch.empty(0, dtype=dtype).element_size()


@dataclass(frozen=True)
class Int8KV:
    """Stored int8 K or V: codes (L, Hkv, hd) int8, scales (L, Hkv, 1) bf16, and the dtype to decode to."""

    codes: Tensor
    scales: Tensor
    dtype: torch.dtype

    @property
    def shape(self) -> torch.Size:
        return self.codes.shape

    @property
    def device(self) -> torch.device:
        return self.codes.device


class Int8Quant:
    """int8 K/V with one bf16 scale per token and KV head; dequantized when the store is read."""

    name: ClassVar[str] = "int8"

    def encode(self, x: Tensor) -> Int8KV:
        xf = x.float()                                                  # (L, Hkv, hd)
        scales = (xf.abs().amax(dim=-1, keepdim=True) / INT8_MAX).clamp_min(_TINY).to(SCALE_DTYPE)  # (L, Hkv, 1)
        codes = (xf / scales.float()).round_().clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
        return Int8KV(codes, scales, x.dtype)

    def decode(self, x: Int8KV) -> Tensor:
        """(L, Hkv, hd) in the dtype it was written in: code * scale computed in float32, rounded once to that dtype."""
        if x.dtype in (SCALE_DTYPE, torch.float32):
            # one kernel: the codes are promoted inside the multiply (exact, |code| <= 127) and the product is formed
            # in float32 (bf16's compute type) and rounded once, the same numbers as the three-pass form below at a
            # sixth of the memory traffic (the store is decoded before every attention call)
            return torch.mul(x.codes, x.scales if x.dtype == SCALE_DTYPE else x.scales.float())
        return (x.codes.float() * x.scales.float()).to(x.dtype)

    def cat(self, parts: list[Int8KV]) -> Int8KV:
        return Int8KV(torch.cat([p.codes for p in parts]), torch.cat([p.scales for p in parts]), parts[0].dtype)

    def gather(self, x: Int8KV, indices: Tensor) -> Int8KV:
        return Int8KV(gather_per_head(x.codes, indices), gather_per_head(x.scales, indices), x.dtype)

    def nbytes(self, x: Int8KV) -> int:
        return x.codes.numel() * x.codes.element_size() + x.scales.numel() * x.scales.element_size()

    def bytes_per_token(self, heads: int, head_dim: int, dtype: torch.dtype) -> int:
        return heads * (head_dim + torch.empty(0, dtype=SCALE_DTYPE).element_size())


KVQuant = NoQuant | Int8Quant
