"""fp8 (e4m3) linear layers: the official MAGI-1 `*_quant` layouts, and quantize-on-load for a bf16 checkpoint.

`Fp8Linear` holds its weight in float8_e4m3fn with float32 scales and computes y = x·Wᵀ (no bias) in one of three
layouts (`kind`); the first two are MAGI-1's own modules (inference/model/dit/dit_module.py), tensor for tensor:

    "per_tensor"   PerTensorQuantizedFp8Linear   weight (1, out, in) fp8, weight_scale (1,), input_scale (in,)
                   y = (q(x / input_scale) · weightᵀ) · input_scale[0] · weight_scale
    "per_channel"  PerChannelQuantizedFp8Linear  weight (1, out, in) fp8, weight_scale (1,), input_scale (1,),
                   smooth_scale (1, in)
                   y = (q(x / smooth_scale) · weightᵀ) · input_scale · weight_scale
    "dynamic"      ours, for `--precision fp8`   weight (out, in) fp8, weight_scale (out,) = row amax / 448
                   y = (q(x / a) · weightᵀ) · a · weight_scaleᵀ, a = each activation row's amax / 448 (per call)

q(v) = fp8(clamp(v, ±448)). In the official code the product is flashinfer's `bmm_fp8`, whose scale arguments are
cuBLASLt's per-tensor scale pointers: only the first element of `input_scale` is read, after the whole vector
divided the input. The official layouts use static (calibrated) activation scales, so this module applies the
release's scales as they are; "dynamic" scales each activation row.

Two ways to compute, chosen per call:
  * fp8: on a GPU with fp8 tensor cores (compute capability >= 8.9), bf16 activations (MAGI-1's) and in/out features
    divisible by 16: the activations are quantized (static layouts: exactly MAGI-1's `div_clamp_to`, float32
    division, bf16, e4m3; "dynamic": per-row amax, one rounding) and `torch._scaled_mm` (cuBLASLt) multiplies with
    per-tensor scales ("per_tensor", "per_channel") or row-wise scales ("dynamic"), float32 accumulation.
  * dequantized: anywhere else (the CPU, a float32 or fp16 model): the weight is dequantized to the activations' dtype,
    W_eff = weight · (a_scale · w_scale) / divisor, and the activations keep their precision (static layouts: still
    clamped to the range the fp8 cast allows, ±448 · divisor). This equals a plain linear layer holding W_eff.

fp8 rounding level (the fp8 path against the dequantized one, which holds the same fp8 weights): e4m3 keeps 3
mantissa bits, so rounding a value spread over a binade has an RMS relative error of √(2⁻¹¹ / ln 2) = 2.65 %; a
layer's output, a sum of many such products with independent errors, is off by about that much of its RMS. MAGI-1's
double rounding (float32 -> bf16 -> e4m3) adds to it: simulated on the CPU (`simulate`, bf16 inputs), a layer is off
by 3.4 % (per_tensor), 3.2 % (per_channel), 2.6 % ("dynamic"; 3.8 % ≈ √2 · 2.65 % against the unquantized weights,
which it rounds too); the tiny test model's forward, one quantized layer of three, by 2.2 % (`tests/test_fp8.py`).
"""
from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
KINDS = ("per_tensor", "per_channel", "dynamic")
# Hopper's fp8 tensor cores accumulate in reduced precision unless cuBLASLt promotes partial sums to float32 every few
# k-steps; fast accumulation skips the promotion (as fp8 inference stacks do): measured faster on the H100, its error
# far below fp8's own rounding (bench/fp8_forward.py, tests/test_fp8.py -m gpu).
FAST_ACCUM = True


@functools.lru_cache(maxsize=None)
def fp8_matmul_available(device: torch.device) -> bool:
    """Whether `torch._scaled_mm` can run e4m3 products on this device (CUDA, compute capability >= 8.9)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


@functools.lru_cache(maxsize=None)
def _cast_saturates(device: torch.device) -> bool:
    """Whether a float -> e4m3fn cast clamps to ±448 on this device (recent PyTorch) rather than giving NaN."""
    return torch.tensor([1e4, -1e4], device=device).to(FP8).float().abs().max().item() == FP8_MAX


def _cast(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """fp8(clamp(x, ±448)); with `out`, into it."""
    if not _cast_saturates(x.device):
        x = x.clamp(-FP8_MAX, FP8_MAX)
    return x.to(FP8) if out is None else out.copy_(x)


def quantize_static(x: torch.Tensor, divisor: torch.Tensor) -> torch.Tensor:
    """MAGI-1's `div_clamp_to`: fp8(bf16(clamp(x / divisor, ±448))), the division in float32 (x (M, in), divisor
    (in,)). The bf16 step is the official double rounding: leaving it out changes about one value in 30 by one e4m3
    step (≈ 2 % of a layer's output), as much as the fp8 rounding itself."""
    t = torch.empty(x.shape, dtype=torch.bfloat16, device=x.device)
    return _cast(torch.div(x, divisor, out=t))


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp8(x / a) with a = each row's amax / 448 (float32, (M, 1)), the division in float32, one rounding."""
    a = torch.linalg.vector_norm(x, float("inf"), dim=-1, keepdim=True, dtype=torch.float32)
    a = a.div_(FP8_MAX).clamp_(min=torch.finfo(torch.float32).tiny)
    out = torch.empty(x.shape, dtype=FP8, device=x.device)
    if _cast_saturates(x.device):  # |x / a| <= 448 up to rounding: one kernel, divided straight into fp8
        return torch.div(x, a, out=out), a
    return _cast(torch.div(x, a), out), a


class Fp8Linear(nn.Module):
    """A bias-free linear layer with an fp8 weight and float32 scales (see the module docstring for the layouts).

    Its tensors are buffers in the official shapes, so a state dict in the official layout loads as is. Model-wide
    dtype casts (`model.to(torch.bfloat16)`, `.float()`) leave them alone; device moves apply.
    """

    def __init__(self, in_features: int, out_features: int, kind: str, device: torch.device | str | None = None):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
        self.in_features, self.out_features, self.kind = in_features, out_features, kind
        lead = () if kind == "dynamic" else (1,)
        self.register_buffer("weight", torch.empty(*lead, out_features, in_features, dtype=FP8, device=device))
        f32 = dict(dtype=torch.float32, device=device)
        self.register_buffer("weight_scale", torch.ones(out_features if kind == "dynamic" else 1, **f32))
        if kind == "per_tensor":
            self.register_buffer("input_scale", torch.ones(in_features, **f32))
        elif kind == "per_channel":
            self.register_buffer("input_scale", torch.ones(1, **f32))
            self.register_buffer("smooth_scale", torch.ones(1, in_features, **f32))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, kind={self.kind}"

    def _apply(self, fn, recurse=True):
        # nn.Module.to(dtype) / .float() would cast the fp8 weight and the float32 scales like any floating tensor:
        # keep each buffer's dtype, take only where fn moves it (to_empty, .to(device), .cuda()).
        for name, t in self._buffers.items():
            if t is not None:
                out = fn(t)
                self._buffers[name] = out if out.dtype == t.dtype else t.to(out.device)
        return self

    # ---- construction from a float weight (quantize on load) ----
    @classmethod
    @torch.no_grad()
    def quantize(cls, weight: torch.Tensor) -> "Fp8Linear":
        """A "dynamic" layer from a float weight (out, in): per output row, scale = amax / 448."""
        out_f, in_f = weight.shape
        w = weight.float()
        scale = (w.abs().amax(dim=1) / FP8_MAX).clamp_(min=torch.finfo(torch.float32).tiny)  # (out,)
        layer = cls(in_f, out_f, "dynamic", device=weight.device)
        layer.weight.copy_((w / scale[:, None]).clamp_(-FP8_MAX, FP8_MAX).to(FP8))
        layer.weight_scale.copy_(scale)
        return layer

    @classmethod
    @torch.no_grad()
    def from_weight(cls, weight: torch.Tensor, kind: str, input_scale: torch.Tensor,
                    smooth_scale: torch.Tensor | None = None) -> "Fp8Linear":
        """A layer of an official layout whose W_eff approximates `weight` (out, in), given its activation scales
        (a calibration's result: "per_tensor" input_scale (in,); "per_channel" input_scale (1,) and smooth_scale
        (1, in)): weight = fp8(W · divisor / a_scale / weight_scale), weight_scale = amax(W · divisor / a_scale) / 448.
        For random releases in the official layout (tests, benchmarks)."""
        out_f, in_f = weight.shape
        layer = cls(in_f, out_f, kind, device=weight.device)
        layer.input_scale.copy_(input_scale)
        if kind == "per_channel":
            layer.smooth_scale.copy_(smooth_scale)
        w = weight.float() * layer._divisor() / layer._a_scale()
        scale = (w.abs().amax() / FP8_MAX).clamp_(min=torch.finfo(torch.float32).tiny)
        layer.weight[0].copy_((w / scale).clamp_(-FP8_MAX, FP8_MAX).to(FP8))
        layer.weight_scale.fill_(scale.item())
        return layer

    # ---- the layout's arithmetic ----
    def _w(self) -> torch.Tensor:
        return self.weight if self.kind == "dynamic" else self.weight[0]                  # (out, in) fp8

    def _divisor(self) -> torch.Tensor:
        return self.input_scale if self.kind == "per_tensor" else self.smooth_scale[0]    # (in,)

    def _a_scale(self) -> torch.Tensor:
        return self.input_scale[:1] if self.kind == "per_tensor" else self.input_scale    # (1,): cuBLASLt reads one

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """W_eff (out, in): the weight a plain linear layer needs to compute what this one does without fp8 rounding
        of the activations (float32 arithmetic, then cast to `dtype`)."""
        w = self._w().float()
        if self.kind == "dynamic":
            return (w * self.weight_scale[:, None]).to(dtype)
        return (w * (self._a_scale() * self.weight_scale) / self._divisor()).to(dtype)

    @torch.no_grad()
    def simulate(self, x: torch.Tensor) -> torch.Tensor:
        """What the fp8 path computes, in float32 on any device: the activations rounded to e4m3 as there (the
        static layouts through bf16, as MAGI-1), the product of the e4m3 values accumulated in float32, then
        scaled. The CPU reference for the fp8 path's rounding."""
        x2 = x.reshape(-1, self.in_features).float()
        w = self._w().float()
        if self.kind == "dynamic":
            a = (x2.abs().amax(dim=-1, keepdim=True) / FP8_MAX).clamp_(min=torch.finfo(torch.float32).tiny)
            y = (x2 / a).clamp_(-FP8_MAX, FP8_MAX).to(FP8).float() @ w.t() * a * self.weight_scale
        else:
            xq = (x2 / self._divisor()).clamp_(-FP8_MAX, FP8_MAX).bfloat16().to(FP8).float()
            y = xq @ w.t() * (self._a_scale() * self.weight_scale)
        return y.view(*x.shape[:-1], self.out_features)

    def uses_fp8(self, x: torch.Tensor) -> bool:
        return (x.dtype == torch.bfloat16 and fp8_matmul_available(x.device)
                and self.in_features % 16 == 0 and self.out_features % 16 == 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.uses_fp8(x):  # dequantized: a plain linear layer with W_eff
            if self.kind != "dynamic":
                bound = (self._divisor() * FP8_MAX).to(x.dtype)
                x = torch.clamp(x, -bound, bound)
            return F.linear(x, self.dequantized_weight(x.dtype))
        x2 = x.reshape(-1, self.in_features)                                                  # (M, in)
        if self.kind == "dynamic":
            xq, a = quantize_rows(x2)
            y = torch._scaled_mm(xq, self._w().t(), scale_a=a, scale_b=self.weight_scale.view(1, -1),
                                 out_dtype=x.dtype, use_fast_accum=FAST_ACCUM)
        else:
            y = torch._scaled_mm(quantize_static(x2, self._divisor()), self._w().t(), scale_a=self._a_scale(),
                                 scale_b=self.weight_scale, out_dtype=x.dtype, use_fast_accum=FAST_ACCUM)
        return y.view(*x.shape[:-1], self.out_features)
