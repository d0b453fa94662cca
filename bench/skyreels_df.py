"""SkyReels-V2 DF on one GPU: diffusers' pipeline vs ours (uncached, finished-block KV reuse, FlowCache), one call.

The SkyReels-V2-DF-1.3B-540P transformer shape (30 layers, 1536 wide, 12 heads) with random bf16 weights (float32
where diffusers keeps float32), 544x960, the same weights in both; a small random VAE and UMT5 (they run once per
video, the same in both). Every row runs the same settings with the same seed; rows: diffusers'
`SkyReelsV2DiffusionForcingPipeline`; ours with `--clean-kv recompute` (diffusers' work, token for token); ours
with finished-block KV reuse (the default, exact); ours with FlowCache per block at the published SkyReels
thresholds (0.1 and 0.15, on our per-block feature). Reported per row: wall time (CUDA synchronised), forwarded
tokens, speedup over diffusers, ideal speedup (diffusers' tokens / ours), realized / ideal, peak GPU memory, and
the latents' relative error against diffusers' (bf16: kernels differ). Prints a table, writes JSON after each row.

    python bench/skyreels_df.py --out bench/results/skyreels_df_h100.json
    python bench/skyreels_df.py --tiny --device cpu --out /tmp/skyreels_tiny.json     # smoke test
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from flowcache_core.api import generate  # noqa: E402
from flowcache_core.cache.settings import CacheConfig  # noqa: E402
from flowcache_core.engine.family import Bundle  # noqa: E402
from flowcache_core.models.skyreels_df.config import read_checkpoint  # noqa: E402
from flowcache_core.models.skyreels_df.synthetic import SHAPE_1_3B, TINY, build_components  # noqa: E402
from flowcache_core.models.wan.dit import WanDiT  # noqa: E402
from flowcache_core.models.wan.config import config_from_dict  # noqa: E402
from flowcache_core.models.wan.umt5 import UMT5TextEncoder  # noqa: E402
from flowcache_core.models.wan.vae import WanVAECodec  # noqa: E402

PROMPT = "a red circle moves left over a green field under a blue sky"
FP32_PARTS = ("time_embedder", "scale_shift_table", "norm1", "norm2", "norm3")

CONFIGS = {  # name -> pipeline kwargs (num_inference_steps set from --steps)
    "97f-async": dict(num_frames=97, base_num_frames=97, ar_step=5, causal_block_size=5),
    "97f-sync": dict(num_frames=97, base_num_frames=97),
    "177f-sync": dict(num_frames=177, base_num_frames=97, overlap_history=17),
    "177f-async": dict(num_frames=177, base_num_frames=97, overlap_history=17, ar_step=5, causal_block_size=5),
}
TINY_CONFIGS = {
    "33f-sync": dict(num_frames=33, base_num_frames=33),
    "33f-async": dict(num_frames=33, base_num_frames=33, ar_step=1, causal_block_size=3),
}


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def build(shape: dict, dev: torch.device, dtype: torch.dtype, folder: Path):
    """diffusers' pipeline and our bundle over the same random weights; `folder` gets the configs (no weights)."""
    from diffusers import SkyReelsV2DiffusionForcingPipeline

    comps = build_components(shape, text_layers=1, vae_base_dim=8)
    pipe = SkyReelsV2DiffusionForcingPipeline(**comps)
    pipe.save_config(folder)  # model_index.json
    for name in ("transformer", "vae", "scheduler"):
        getattr(pipe, name).save_config(folder / name)
    (folder / "text_encoder").mkdir(exist_ok=True)
    (folder / "tokenizer").mkdir(exist_ok=True)
    tr = pipe.transformer
    ours = WanDiT(config_from_dict(dict(tr.config), "transformer"))
    ours.load_state_dict(tr.state_dict(), strict=True)
    ours = ours.set_dtype(dtype).to(dev).eval()
    tr.to(dtype)
    for name, p in tr.named_parameters():  # diffusers' from_pretrained(torch_dtype=...) keeps these float32
        if any(part in FP32_PARTS for part in name.split(".")):
            p.data = p.data.float()
    pipe.to(dev)
    pipe.text_encoder.to(dtype)
    pipe.vae.to(dtype)
    pipe.set_progress_bar_config(disable=True)
    config = read_checkpoint(folder)
    bundle = Bundle("skyreels_df", config, ours, WanVAECodec(pipe.vae), UMT5TextEncoder(pipe.tokenizer, pipe.text_encoder),
                    folder)
    return pipe, bundle


def run_diffusers(pipe, kw: dict, seed: int, dev: torch.device, size: dict) -> dict:
    counted: list[int] = []
    hook = pipe.transformer.register_forward_pre_hook(
        lambda m, a, k: counted.append(k["hidden_states"][0, 0].numel() // 4), with_kwargs=True)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    sync(dev)
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    lat = pipe(prompt=PROMPT, generator=torch.Generator("cpu").manual_seed(seed), output_type="latent", **size,
               **kw).frames[0]
    out = pipe.vae.decode((lat[None].to(pipe.vae.dtype) / (1.0 / torch.tensor(pipe.vae.config.latents_std, device=dev)
                                                          .view(1, -1, 1, 1, 1).to(pipe.vae.dtype))
                           + torch.tensor(pipe.vae.config.latents_mean, device=dev).view(1, -1, 1, 1, 1)
                           .to(pipe.vae.dtype))).sample  # the same decode as output_type="np", without the numpy copy
    sync(dev)
    sec = time.perf_counter() - t0
    hook.remove()
    del out
    peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None
    return dict(seconds=sec, tokens=sum(counted), peak_bytes=peak, latents=lat.float().cpu())


def run_ours(bundle, kw: dict, seed: int, dev: torch.device, size: dict, cache: CacheConfig, clean_kv: str) -> dict:
    sync(dev)
    t0 = time.perf_counter()
    res = generate(PROMPT, bundle=bundle, cache=cache, seed=seed, device=str(dev), clean_kv=clean_kv, **size, **kw)
    sync(dev)
    sec = time.perf_counter() - t0
    rec = res.record
    return dict(seconds=sec, tokens=rec.tokens_forwarded, peak_bytes=rec.peak_memory_bytes,
                latents=res.latents.float().cpu(), reused=sum(rec.reused.values()),
                computed=sum(rec.computed.values()))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=10, help="num_inference_steps of every row")
    ap.add_argument("--guidance-scale", type=float, default=1.0)
    ap.add_argument("--configs", default=None, help="comma-separated subset of the configs")
    ap.add_argument("--rows", default="diffusers,ours-uncached,ours-kv-reuse,ours-flowcache@0.1,ours-flowcache@0.15")
    ap.add_argument("--tiny", action="store_true", help="the tiny shape at 64x64, for a smoke test")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    dev = torch.device(args.device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    shape, size = (TINY, dict(height=64, width=64)) if args.tiny else (SHAPE_1_3B, dict(height=544, width=960))
    configs = TINY_CONFIGS if args.tiny else CONFIGS
    if args.configs:
        configs = {k: configs[k] for k in args.configs.split(",")}
    rows = args.rows.split(",")
    card = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    result = dict(card=card, torch=torch.__version__, shape=shape, size=size, steps=args.steps,
                  guidance_scale=args.guidance_scale, seed=args.seed, dtype=str(dtype), runs=[])
    with tempfile.TemporaryDirectory() as tmp:
        pipe, bundle = build(shape, dev, dtype, Path(tmp))
        # warm-up: kernels, allocator (not timed)
        warm = dict(num_frames=5 if not args.tiny else 5, base_num_frames=5, num_inference_steps=2, guidance_scale=1.0)
        run_diffusers(pipe, warm, args.seed, dev, size)
        run_ours(bundle, warm, args.seed, dev, size, CacheConfig("none"), "reuse")
        for name, base in configs.items():
            kw = dict(base, num_inference_steps=args.steps, guidance_scale=args.guidance_scale)
            ref = None
            for row in rows:
                if row == "diffusers":
                    r = run_diffusers(pipe, kw, args.seed, dev, size)
                else:
                    cache = CacheConfig("none")
                    if row.startswith("ours-flowcache@"):
                        cache = CacheConfig("flowcache", rel_l1_thresh=float(row.split("@")[1]))
                    r = run_ours(bundle, kw, args.seed, dev, size, cache,
                                 "recompute" if row == "ours-uncached" else "reuse")
                lat = r.pop("latents")
                if ref is None:
                    ref = dict(r, latents=lat)
                err = float((lat - ref["latents"]).abs().max() / ref["latents"].abs().max())
                rec = dict(config=name, row=row, **r, speedup=ref["seconds"] / r["seconds"],
                           ideal_speedup=ref["tokens"] / r["tokens"] if r["tokens"] else None,
                           rel_err_vs_first_row=err, settings=kw)
                rec["realized_over_ideal"] = rec["speedup"] / rec["ideal_speedup"] if rec["ideal_speedup"] else None
                result["runs"].append(rec)
                print(f"{name:12s} {row:22s} {r['seconds']:8.2f} s  tokens {r['tokens']:>12,d}  "
                      f"speedup {rec['speedup']:5.2f}x  ideal {rec['ideal_speedup'] or 0:5.2f}x  "
                      f"peak {(r['peak_bytes'] or 0) / 2**30:6.1f} GiB  err {err:.2e}", flush=True)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out} ({card})")


if __name__ == "__main__":
    main()
