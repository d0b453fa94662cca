"""fp8 MAGI-1: the official `*_quant` releases' layout, and quantizing a bf16 release on load (`--precision fp8`).

Facts (SandAI-org/MAGI-1, inference/model/dit/dit_module.py and infra/checkpoint/checkpointing.py): with
engine_config.fp8_quant the DiT builds, in every layer but the first and the last,
    self_attention.linear_qkv.{q, qx, k, v}, mlp.linear_fc1    PerTensorQuantizedFp8Linear
    self_attention.linear_proj, mlp.linear_fc2                  PerChannelQuantizedFp8Linear
(linear_proj reads [self | cross] interleaved in 8 head groups); everything else (embedders, linear_kv_xattn,
ada_modulate_layer, norms, the final linear, and all of layers 0 and N-1) stays in the params dtype. The weights
are read from ckpt/magi/<variant>/inference_weight.fp8[.distill]/ by module name, so each quantized linear brings
`weight` (1, out, in) float8_e4m3fn, `weight_scale` (1,) float32 and `input_scale` (in,) float32 (per tensor) or
`input_scale` (1,) + `smooth_scale` (1, in) float32 (per channel): `flowcache_core.models.fp8.Fp8Linear`.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from flowcache_core.errors import FlowcacheError
from flowcache_core.models.fp8 import FP8, Fp8Linear
from flowcache_core.models.magi1.dit import VideoDiT

# the quantized linears of a layer, by module path, and their official layout
LAYOUT = {
    "self_attention.linear_qkv.q": "per_tensor",
    "self_attention.linear_qkv.qx": "per_tensor",
    "self_attention.linear_qkv.k": "per_tensor",
    "self_attention.linear_qkv.v": "per_tensor",
    "mlp.linear_fc1": "per_tensor",
    "self_attention.linear_proj": "per_channel",
    "mlp.linear_fc2": "per_channel",
}
PRECISIONS = ("bf16", "fp8")


def quantized_layers(num_layers: int) -> range:
    """The layers MAGI-1 quantizes: all but the first and the last."""
    return range(1, num_layers - 1)


def _swap(model: VideoDiT, make) -> VideoDiT:
    for i in quantized_layers(len(model.videodit_blocks.layers)):
        layer = model.videodit_blocks.layers[i]
        for path, kind in LAYOUT.items():
            parent_path, _, name = path.rpartition(".")
            parent = layer.get_submodule(parent_path)
            setattr(parent, name, make(getattr(parent, name), kind))
    return model


def use_official_fp8_layout(model: VideoDiT) -> VideoDiT:
    """Replace the linears a `*_quant` release quantizes with empty `Fp8Linear`s of its layout (on their device:
    meta while a release loads)."""
    def make(lin: nn.Linear, kind: str) -> Fp8Linear:
        return Fp8Linear(lin.in_features, lin.out_features, kind, device=lin.weight.device)
    return _swap(model, make)


def quantize_on_load(model: VideoDiT) -> VideoDiT:
    """`--precision fp8` for a bf16 release: the same linears as the official `*_quant` releases, each quantized from
    its loaded weight with a scale per output row, activations scaled per row at run time ("dynamic")."""
    return _swap(model, lambda lin, kind: Fp8Linear.quantize(lin.weight.detach()))


def check_fp8_state_dict(model: nn.Module, sd: dict[str, torch.Tensor], where: str) -> None:
    """Dtypes and values a `*_quant` checkpoint must have where the model holds fp8 (run after the key/shape check):
    fp8 weights stored as float8_e4m3fn (not cast silently), scales floating-point, finite and > 0."""
    for name, m in model.named_modules():
        if not isinstance(m, Fp8Linear):
            continue
        for buf in m._buffers:
            key, t = f"{name}.{buf}", sd[f"{name}.{buf}"]
            if buf == "weight":
                if t.dtype != FP8:
                    raise FlowcacheError(f"{where}: weight {key!r} is {str(t.dtype).removeprefix('torch.')}; "
                                         f"a *_quant release stores float8_e4m3fn there")
                continue
            if not t.is_floating_point() or t.dtype == FP8 or t.element_size() < 2:
                raise FlowcacheError(f"{where}: scale {key!r} is {str(t.dtype).removeprefix('torch.')}; "
                                     f"expected float32")
            bad = ~(torch.isfinite(t.float()) & (t.float() > 0))
            if bool(bad.any()):
                v = t.float().flatten()[bad.flatten()][0].item()
                raise FlowcacheError(f"{where}: scale {key!r} holds {v if math.isfinite(v) else str(v)}; "
                                     f"scales must be finite and > 0")
