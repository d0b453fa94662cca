"""The original Wan2.1 parameter names (Wan's own code, which Self-Forcing and LongLive train) -> ours (diffusers').

The renames are facts of the two layouts (diffusers' scripts/convert_wan_to_diffusers.py lists them): per block
self_attn -> attn1, cross_attn -> attn2, q/k/v/o -> to_q/to_k/to_v/to_out.0, norm3 (the cross-attention LayerNorm)
-> norm2, ffn.0/ffn.2 -> ffn.net.0.proj/ffn.net.2, modulation -> scale_shift_table; outside the blocks the text and
time MLPs move under condition_embedder, head.head -> proj_out, head.modulation -> scale_shift_table. Wan's norm1 and
norm2 have no weights. The map is strict: a name it does not know, a missing or mis-shaped tensor is one line.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from flowcache_core.errors import FlowcacheError
from flowcache_core.models.weights import _read_safetensors

_TOP = {
    "patch_embedding": "patch_embedding",
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
    "head.head": "proj_out",
}
_BLOCK = {
    "self_attn.q": "attn1.to_q", "self_attn.k": "attn1.to_k", "self_attn.v": "attn1.to_v",
    "self_attn.o": "attn1.to_out.0", "self_attn.norm_q": "attn1.norm_q", "self_attn.norm_k": "attn1.norm_k",
    "cross_attn.q": "attn2.to_q", "cross_attn.k": "attn2.to_k", "cross_attn.v": "attn2.to_v",
    "cross_attn.o": "attn2.to_out.0", "cross_attn.norm_q": "attn2.norm_q", "cross_attn.norm_k": "attn2.norm_k",
    "norm3": "norm2", "ffn.0": "ffn.net.0.proj", "ffn.2": "ffn.net.2",
}
_BLOCK_KEY = re.compile(r"blocks\.(\d+)\.(.+)\.(weight|bias)")
_TOP_KEY = re.compile(r"(.+)\.(weight|bias)")
WRAPPERS = ("generator_ema", "generator", "model")  # Self-Forcing / LongLive checkpoints: {"generator": sd, ...}
WRAPPER_PARTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")  # FSDP/compile name parts
PREFIXES = ("model.",)  # their WanDiffusionWrapper holds the DiT as `model`


_TOP_BACK, _BLOCK_BACK = {v: k for k, v in _TOP.items()}, {v: k for k, v in _BLOCK.items()}


def _rename(name: str, top: dict, block: dict, head_modulation: tuple[str, str],
            block_modulation: tuple[str, str]) -> str | None:
    """`name` through one direction of the map (tables and the modulation names, from -> to); None if unknown."""
    if name == head_modulation[0]:
        return head_modulation[1]
    m = re.fullmatch(rf"blocks\.(\d+)\.{re.escape(block_modulation[0])}", name)
    if m:
        return f"blocks.{m.group(1)}.{block_modulation[1]}"
    m = _BLOCK_KEY.fullmatch(name)
    if m and m.group(2) in block:
        return f"blocks.{m.group(1)}.{block[m.group(2)]}.{m.group(3)}"
    m = _TOP_KEY.fullmatch(name)
    if m and m.group(1) in top:
        return f"{top[m.group(1)]}.{m.group(2)}"
    return None


def to_ours(name: str) -> str | None:
    """Our (diffusers) name of an original Wan parameter; None if it is not one."""
    return _rename(name, _TOP, _BLOCK, ("head.modulation", "scale_shift_table"), ("modulation", "scale_shift_table"))


def to_original(name: str) -> str:
    """The inverse of `to_ours` (tests and the synthetic checkpoint writer)."""
    out = _rename(name, _TOP_BACK, _BLOCK_BACK, ("scale_shift_table", "head.modulation"),
                  ("scale_shift_table", "modulation"))
    if out is None:
        raise KeyError(name)
    return out


def read_generator(path: Path, key: str | None) -> dict[str, torch.Tensor]:
    """The generator's state dict from a .pt/.pth (torch.load weights_only) or .safetensors, unwrapped: the entry
    `key` (default generator_ema, else generator, else model, else the file itself), FSDP's name parts and a
    common `model.` prefix removed."""
    where = f"generator weights {str(path)!r}"
    if path.suffix == ".safetensors":
        data = _read_safetensors(path)
    else:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - torch.load raises many types for a bad file; report it in one line
            first = (str(e).splitlines() or [type(e).__name__])[0]
            raise FlowcacheError(f"{where}: not a torch checkpoint loadable with weights_only=True ({first})") from None
    if not isinstance(data, dict):
        raise FlowcacheError(f"{where}: expected a dict of tensors, got {type(data).__name__}")
    if key is not None:
        if key not in data:
            raise FlowcacheError(f"{where}: no entry {key!r} (entries: {', '.join(map(str, list(data)[:8]))})")
        data = data[key]
    else:
        for k in WRAPPERS:
            if isinstance(data.get(k), dict):
                data = data[k]
                break
    if not isinstance(data, dict) or not data:
        raise FlowcacheError(f"{where}: the state dict is empty or not a dict")
    bad = next((k for k, v in data.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise FlowcacheError(f"{where}: entry {bad!r} is not a tensor (name the state dict with generator_key)")
    for part in WRAPPER_PARTS:  # their EMA copies keep FSDP's names (LongLive's inference.py removes them too)
        data = {k.replace(part, ""): v for k, v in data.items()}
    for prefix in PREFIXES:
        if all(k.startswith(prefix) for k in data):
            data = {k[len(prefix):]: v for k, v in data.items()}
    return data


def convert(sd: dict[str, torch.Tensor], own: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """Original names -> ours, checked against our model's state dict `own`: every name known, none missing, shapes."""
    out: dict[str, torch.Tensor] = {}
    for k in sorted(sd):
        ours = to_ours(k)
        if ours is None:
            raise FlowcacheError(f"{where}: unexpected weight {k!r} (not an original Wan2.1 text-to-video name)")
        if ours not in own:
            raise FlowcacheError(f"{where}: unexpected weight {k!r} (not part of this model config: "
                                 f"{len([n for n in own if n.endswith('attn1.to_q.weight')])} layers)")
        if tuple(sd[k].shape) != tuple(own[ours].shape):
            raise FlowcacheError(f"{where}: weight {k!r} has shape {tuple(sd[k].shape)}, the config needs "
                                 f"{tuple(own[ours].shape)}")
        out[ours] = sd[k]
    missing = [n for n in own if n not in out]
    if missing:
        raise FlowcacheError(f"{where}: missing weight {to_original(missing[0])!r} (expected shape "
                             f"{tuple(own[missing[0]].shape)})")
    return out


_LORA_KEY = re.compile(r"(?:base_model\.model\.)?(?:model\.)?(.+)\.lora_([AB])(?:\.default)?\.weight")


def merge_lora(sd: dict[str, torch.Tensor], path: Path, alpha: float | None) -> dict[str, torch.Tensor]:
    """LongLive's LoRA (a PEFT state dict, under "generator_lora" or bare: `<layer>.lora_A.weight` (r, in) and
    `.lora_B.weight` (out, r) per Linear of the blocks) merged into the original-name state dict:
    W += alpha / r * B @ A, in float32 (alpha None: r, as LongLive's configs set alpha = rank)."""
    where = f"LoRA weights {str(path)!r}"
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch.load raises many types for a bad file; report it in one line
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise FlowcacheError(f"{where}: not a torch checkpoint loadable with weights_only=True ({first})") from None
    if isinstance(data, dict) and isinstance(data.get("generator_lora"), dict):
        data = data["generator_lora"]
    if not isinstance(data, dict) or not data:
        raise FlowcacheError(f"{where}: expected a dict of LoRA tensors")
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in data.items():
        m = _LORA_KEY.fullmatch(k) if isinstance(k, str) else None
        if m is None or not isinstance(v, torch.Tensor) or v.dim() != 2:
            raise FlowcacheError(f"{where}: entry {k!r} is not a LoRA A/B matrix (<layer>.lora_A.weight)")
        pairs.setdefault(m.group(1), {})[m.group(2)] = v
    out = dict(sd)
    for layer, ab in sorted(pairs.items()):
        name = f"{layer}.weight"
        if set(ab) != {"A", "B"}:
            raise FlowcacheError(f"{where}: {layer!r} has lora_{'A' if 'A' in ab else 'B'} only")
        if name not in sd:
            raise FlowcacheError(f"{where}: {layer!r} is not a Linear of the generator")
        a, b, w = ab["A"].float(), ab["B"].float(), sd[name]
        if a.shape[0] != b.shape[1] or (b.shape[0], a.shape[1]) != tuple(w.shape):
            raise FlowcacheError(f"{where}: {layer!r} A {tuple(a.shape)} and B {tuple(b.shape)} do not fit its "
                                 f"weight {tuple(w.shape)}")
        scale = (alpha if alpha is not None else a.shape[0]) / a.shape[0]
        out[name] = (w.float() + scale * (b @ a)).to(w.dtype)
    return out
