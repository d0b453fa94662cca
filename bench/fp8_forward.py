"""bf16 against fp8 forward at the MAGI-1 4.5B/720² shape, same call (issue 20 item 2; goal: fp8 >= 1.25x faster).

Random bf16 weights (magi_shape.py: window of 4 chunks of 12,150 tokens + 2 cached, 34 layers). Three forwards:
  bf16          the model as built;
  fp8 official  the linears a `*_quant` release quantizes (q, qx, k, v, fc1 per tensor; proj, fc2 per channel; layers
                1..32) in the official layout, made from the bf16 weights with made-up calibration scales
                (tests/fixtures/random_release.py: `to_official_fp8`), activations quantized with those static
                scales as MAGI-1 does;
  fp8 dynamic   `--precision fp8`: the same linears quantized on load, per-row weight and activation scales.
Each fp8 forward's relative error: "official" against the model holding its dequantized weights in bf16 (the fp8
rounding of the activations), "dynamic" against the bf16 model (weights and activations rounded). Also each linear
shape alone (bf16 matmul, fp8 with its activation quantization, the quantization alone) and the linears' share of
the forward's FLOPs, which bounds what fp8 linears can gain. Prints a table, writes JSON (the card named).

    python bench/fp8_forward.py --out bench/results/fp8_forward_h100.json      # one H100, ~3 min
    python bench/fp8_forward.py --tiny                                         # CPU smoke run (dequantized path)
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the random-release fixture
from magi_shape import card, forward_call, linear_flops, magi_4_5b_shape, matmul_rate, time_it, tiny_shape  # noqa: E402

from fixtures.random_release import to_official_fp8  # noqa: E402
from flowcache_core.models.fp8 import Fp8Linear, fp8_matmul_available, quantize_rows, quantize_static  # noqa: E402
from flowcache_core.models.magi1.dit import build_model  # noqa: E402
from flowcache_core.models.magi1.quant import quantize_on_load, quantized_layers  # noqa: E402


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def dequantize_into(plain: nn.Module, quant: nn.Module) -> None:
    """Give `plain`'s linears the dequantized weights of `quant`'s fp8 linears (same module names)."""
    for name, m in quant.named_modules():
        if isinstance(m, Fp8Linear):
            lin = plain.get_submodule(name)
            lin.weight.data.copy_(m.dequantized_weight(lin.weight.dtype))


def linear_shapes(shape, device: str, iters) -> list[dict]:
    """Each quantized linear shape alone at the forward's token count: bf16, fp8 (quantization included), and the
    activation quantization alone."""
    mc = shape.config.model
    M = shape.n * shape.tokens_per_chunk
    D, F_, qo, kvo = mc.hidden_size, mc.ffn_hidden_size, mc.num_attention_heads * mc.kv_channels, mc.num_query_groups * mc.kv_channels
    rows = []
    for name, k, n, kind in (("q / qx", D, qo, "per_tensor"), ("k / v", D, kvo, "per_tensor"), ("fc1", D, F_, "per_tensor"),
                             ("proj", 2 * qo, D, "per_channel"), ("fc2", F_, D, "per_channel")):
        w = torch.randn(n, k, device=device, dtype=torch.bfloat16) / k**0.5
        x = torch.randn(M, k, device=device, dtype=torch.bfloat16)
        s = torch.full((k,), 8.0 / 448, device=device)
        layer = (Fp8Linear.from_weight(w, kind, s) if kind == "per_tensor"
                 else Fp8Linear.from_weight(w, kind, torch.tensor([0.02], device=device), s[None]))
        dyn = Fp8Linear.quantize(w)
        bf = statistics.median(time_it(lambda: F.linear(x, w), device, *iters))
        f8 = statistics.median(time_it(lambda: layer(x), device, *iters))
        fd = statistics.median(time_it(lambda: dyn(x), device, *iters))
        qs = statistics.median(time_it(lambda: quantize_static(x, s), device, *iters))
        qr = statistics.median(time_it(lambda: quantize_rows(x), device, *iters))
        rows.append({"linear": name, "M": M, "K": k, "N": n, "bf16_s": bf, "fp8_static_s": f8, "fp8_dynamic_s": fd,
                     "quantize_static_s": qs, "quantize_rows_s": qr, "speedup_static": bf / f8, "speedup_dynamic": bf / fd,
                     "bf16_tflops": 2 * M * k * n / bf / 1e12, "fp8_static_tflops": 2 * M * k * n / f8 / 1e12})
    return rows


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/fp8_forward_<device>.json)")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU: a smoke run of the script")
    ap.add_argument("--device", default=None, help="default: cuda if available (cpu with --tiny)")
    ap.add_argument("--layers", type=int, default=None, help="fewer layers for a quick look")
    ap.add_argument("--no-linears", action="store_true", help="skip the per-linear timings")
    a = ap.parse_args()
    device = a.device or ("cpu" if a.tiny or not torch.cuda.is_available() else "cuda")
    on_gpu = device.startswith("cuda")
    dtype = torch.bfloat16 if on_gpu else torch.float32
    shape = tiny_shape(a.layers or 4) if a.tiny else magi_4_5b_shape(a.layers)
    mc = shape.config.model
    iters = (2, 5) if on_gpu else (1, 2)
    fp8_mm = on_gpu and fp8_matmul_available(torch.device(device))

    model = build_model(mc, device=device, dtype=dtype, seed=0).eval()
    with torch.no_grad():  # the init zeroes the output layer; a random model should move the latents
        model.final_linear.linear.weight.normal_(0, 0.01)
    runs = {}
    fwd = forward_call(model, shape, device)
    runs["bf16"] = {"times": time_it(fwd, device, *iters)}
    ref = fwd().float()

    dyn = quantize_on_load(copy.deepcopy(model))
    f = forward_call(dyn, shape, device)
    runs["fp8 dynamic"] = {"times": time_it(f, device, *iters), "rel_err": rel(f().float(), ref),
                           "against": "the bf16 model (weights and activations rounded)"}
    del dyn, f

    off = to_official_fp8(copy.deepcopy(model), seed=0)
    f = forward_call(off, shape, device)
    runs["fp8 official"] = {"times": time_it(f, device, *iters), "against": "its dequantized weights in bf16"}
    out = f().float()
    dequantize_into(model, off)  # the bf16 model now holds the official layout's dequantized weights
    runs["fp8 official"]["rel_err"] = rel(out, forward_call(model, shape, device)().float())
    del off, f, model
    if on_gpu:
        torch.cuda.empty_cache()

    for r in runs.values():
        r["forward_s"] = statistics.median(r["times"])
        r["speedup_vs_bf16"] = runs["bf16"]["forward_s"] / r["forward_s"]
    lin, total = linear_flops(shape, quantized_layers(mc.num_layers))
    share = lin / total
    res = {"card": card(device), "torch": torch.__version__, "fp8_matmuls": fp8_mm, "layers": mc.num_layers,
           "tokens": shape.n * shape.tokens_per_chunk, "matmul_tflops_bf16": matmul_rate(device, 8192 if on_gpu else 512) / 1e12,
           "quantized_linear_flop_share": share,
           "speedup_bound_if_fp8_linears_2x": 1 / (1 - share / 2), "goal": "fp8 forward >= 1.25x bf16", "forwards": runs}
    if not a.no_linears:
        res["linears"] = linear_shapes(shape, device, iters)
    out_path = Path(a.out or f"bench/results/fp8_forward_{'tiny_' if a.tiny else ''}{'gpu' if on_gpu else 'cpu'}.json")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(res, indent=2))
    print(f"{res['card']}, torch {res['torch']}, {mc.num_layers} layers, {res['tokens']} tokens, "
          f"fp8 matmuls: {'yes' if fp8_mm else 'no (dequantized path)'}; bf16 matmul {res['matmul_tflops_bf16']:.4g} TFLOP/s")
    print(f"quantized linears: {share:.1%} of the forward's FLOPs -> at most {res['speedup_bound_if_fp8_linears_2x']:.3f}x "
          f"if they ran 2x faster")
    print(f"{'forward':>14} {'seconds':>9} {'speedup':>8} {'rel err':>8}  against")
    for name, r in runs.items():
        err = f"{r['rel_err']:.2e}" if "rel_err" in r else "-"
        print(f"{name:>14} {r['forward_s']:>9.4g} {r['speedup_vs_bf16']:>7.3f}x {err:>8}  {r.get('against', '')}")
    if "linears" in res:
        print(f"{'linear':>8} {'M x K x N':>20} {'bf16 ms':>8} {'fp8 ms':>8} {'dyn ms':>8} {'quant ms':>8} {'x static':>8} {'x dyn':>6}")
        for r in res["linears"]:
            print(f"{r['linear']:>8} {str((r['M'], r['K'], r['N'])):>20} {r['bf16_s'] * 1e3:>8.3f} {r['fp8_static_s'] * 1e3:>8.3f} "
                  f"{r['fp8_dynamic_s'] * 1e3:>8.3f} {r['quantize_static_s'] * 1e3:>8.3f} {r['speedup_static']:>7.2f}x "
                  f"{r['speedup_dynamic']:>5.2f}x")
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
