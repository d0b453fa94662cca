"""Attention kernels behind one function, `attend`.

Layouts are token-major, as the model keeps them: q (Lq, Hq, hd), k/v (Lk, Hkv, hd), GQA with
q head i reading kv head i // (Hq // Hkv). Backends:
- "auto" (default): flash-attn 4 where it applies (CUDA, bf16/fp16, no mask, no gradient, `flash_attn.cute`
  importable), SDPA for every other call (training included). On an H100 flash-attn 4 beat SDPA's best kernel at
  every self-attention shape of our families and lost only where the keys are few (120 caption tokens);
  `bench/attn_backends.py`, docs/PERFORMANCE.md.
  flash-attn 2 is not chosen by "auto": its kernel (the one PyTorch's SDPA vendors) ran at 0.6x cuDNN's there.
- "sdpa": torch.nn.functional.scaled_dot_product_attention; on CUDA the cuDNN backend is preferred (fastest of
  PyTorch's kernels for our shapes on an H100), then flash, efficient, math.
- "flash": flash-attn 4 (`flash_attn.cute`) or 2 (`flash_attn_func`) when importable, for every unmasked call.
`available_backends()` says which kernels are usable here ("sdpa", and "flash" where it imports); "auto" chooses
among them per call, so it is always usable and not listed.
"""
from __future__ import annotations

import contextlib
import functools

import torch
import torch.nn.functional as F

from flowcache_core.errors import FlowcacheError

ATTN_BACKENDS = ("auto", "sdpa", "flash")
FLASH_DTYPES = (torch.bfloat16, torch.float16)


@functools.lru_cache(maxsize=None)
def _flash_fn():
    """The flash-attn function if one is importable, else None."""
    try:  # flash-attn 4 (pure-Python CuTe DSL wheel)
        from flash_attn.cute import flash_attn_func  # type: ignore

        return ("fa4", flash_attn_func)
    except Exception:
        pass
    try:  # flash-attn 2
        from flash_attn import flash_attn_func  # type: ignore

        return ("fa2", flash_attn_func)
    except Exception:
        return None


def available_backends() -> list[str]:
    out = ["sdpa"]
    if torch.cuda.is_available() and _flash_fn() is not None:
        out.append("flash")
    return out


def check_backend(name: str) -> str:
    if name not in ATTN_BACKENDS:
        raise FlowcacheError(f"--attn-backend {name!r} unknown (allowed: {', '.join(ATTN_BACKENDS)})")
    if name == "flash" and "flash" not in available_backends():
        raise FlowcacheError("--attn-backend 'flash' needs CUDA and an importable flash-attn (2 or 4); use 'sdpa'")
    return name


def _sdpa_context(device: torch.device):
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    try:
        return sdpa_kernel(order, set_priority=True)
    except TypeError:  # older torch without set_priority
        return sdpa_kernel(order)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
           backend: str = "sdpa") -> torch.Tensor:
    """Full (non-causal) attention of q over k/v.

    q: (B, Lq, Hq, hd); k, v: (B, Lk, Hkv, hd); mask: optional bool (B, Hq or 1, Lq or 1, Lk), True = attend.
    Returns (B, Lq, Hq, hd). Softmax scale 1/sqrt(hd).
    """
    hq, hkv = q.shape[2], k.shape[2]
    if backend == "auto":
        fa = _flash_fn()
        use_fa4 = (fa is not None and fa[0] == "fa4" and mask is None and q.is_cuda and q.dtype in FLASH_DTYPES
                   and not (torch.is_grad_enabled() and q.requires_grad))  # training keeps SDPA, the tested path
        backend = "flash" if use_fa4 else "sdpa"
    if backend == "flash" and mask is None:
        kind, fn = _flash_fn()  # type: ignore[misc]
        out = fn(q, k, v)
        return out[0] if isinstance(out, tuple) else out
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, L, hd)
    if hq != hkv:
        # enable_gqa keeps K/V unexpanded where the backend supports it; expand otherwise (CPU, or a mask,
        # which only the memory-efficient kernel takes, and it refuses GQA).
        if q.device.type == "cuda" and mask is None:
            with _sdpa_context(q.device):
                out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, enable_gqa=True)
            return out.transpose(1, 2)
        rep = hq // hkv
        kt, vt = kt.repeat_interleave(rep, dim=1), vt.repeat_interleave(rep, dim=1)
    with _sdpa_context(q.device):
        out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask)
    return out.transpose(1, 2)
