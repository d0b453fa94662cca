"""Streaming causal Wan (Self-Forcing / LongLive): parity with their inference code, loading, the CLI, KV memory.

Parity: tests/data/causal_wan holds a tiny random generator and the latents Self-Forcing's own pipeline produced from
it (its README says exactly how); ours must equal them (float32, CPU). The rest runs on a tiny random checkpoint
folder in our layout (`synthetic.write_checkpoint`).
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("diffusers")
pytest.importorskip("transformers")
pytest.importorskip("ftfy")

from flowcache_cli.main import make_app  # noqa: E402
from fixtures.cli import cli_error  # noqa: E402
from flowcache_core.api import generate, make_store, resolve  # noqa: E402
from flowcache_core.cache.kv import KVStore  # noqa: E402
from flowcache_core.cache.registry import POLICIES  # noqa: E402
from flowcache_core.cache.settings import CacheConfig  # noqa: E402
from flowcache_core.engine.events import RunRecord  # noqa: E402
from flowcache_core.engine.loop import run_chunks  # noqa: E402
from flowcache_core.errors import FlowcacheError  # noqa: E402
from flowcache_core.models.causal_wan.config import CausalWanConfig, CausalWanSettings  # noqa: E402
from flowcache_core.models.causal_wan.generation import CausalWanGeneration  # noqa: E402
from flowcache_core.models.causal_wan.keymap import convert, read_generator, to_original, to_ours  # noqa: E402
from flowcache_core.models.causal_wan.schedule import Window, plan_forwards  # noqa: E402
from flowcache_core.models.causal_wan.synthetic import TINY, write_checkpoint  # noqa: E402
from flowcache_core.models.wan.config import WanDiTConfig  # noqa: E402
from flowcache_core.models.wan.dit import WanDiT  # noqa: E402
from flowcache_core.video import write_video  # noqa: E402

DATA = Path(__file__).parent / "data" / "causal_wan"
PROMPT = "a red circle moves left"
SIZE = dict(height=32, width=32)
runner = CliRunner()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("causal_wan") / "self_forcing_tiny")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


def rng_frames(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------------------ parity with theirs


@pytest.fixture(scope="module")
def tiny_dit():
    cfg = WanDiTConfig(**TINY, class_name="SkyReelsV2Transformer3DModel")  # the float64 timestep sinusoid (theirs)
    model = WanDiT(cfg)
    model.load_state_dict(convert(read_generator(DATA / "generator.safetensors", None), model.state_dict(), "ref"))
    return model.eval()


def run_reference_case(model: WanDiT, ref: dict, **override) -> torch.Tensor:
    prefix = None if ref["prefix"] is None else ref["prefix"][0].permute(1, 0, 2, 3)  # (C, P, h, w)
    generated = ref["latents"].shape[1] - (0 if prefix is None else prefix.shape[1])
    s = CausalWanSettings(num_frames=4 * generated - (3 if prefix is None else 0), **SIZE, seed=ref["seed"],
                          local_attn_size=ref["local_attn_size"], sink_size=ref["sink_size"],
                          context_noise=ref["context_noise"], num_frame_per_block=ref["num_frame_per_block"])
    for k, v in override.items():
        setattr(s, k, v)
    config = CausalWanConfig(DATA, DATA / "generator.safetensors", None, DATA, model.cfg, {}, s)
    with torch.no_grad():
        ctx = model.embed_text(ref["prompt_embeds"])
    gen = CausalWanGeneration(model, config, ctx, (4, 4), prefix, torch.device("cpu"))
    out = [lat for _, lat in run_chunks(gen, POLICIES["none"](), KVStore(model.cfg.num_layers), RunRecord())]
    return torch.cat(out, dim=1)  # (C, F, h, w), given frames first as theirs


CASES = ["t2v_all", "t2v_window_sink", "t2v_window", "v2v_window_sink", "t2v_longlive", "v2v_frame_window"]


@pytest.mark.parametrize("case", CASES)
def test_parity_with_self_forcing(tiny_dit, case):
    ref = torch.load(DATA / f"{case}.pt", weights_only=True)
    got = run_reference_case(tiny_dit, ref)
    assert got.shape == ref["latents"].shape
    assert rel_err(got, ref["latents"]) <= 1e-4


def test_the_window_and_sink_matter(tiny_dit):
    """The references differ where the settings do: the parity above checks the window, not only the blocks."""
    ref = torch.load(DATA / "t2v_window_sink.pt", weights_only=True)
    assert rel_err(run_reference_case(tiny_dit, ref, local_attn_size=-1, sink_size=0), ref["latents"]) > 1e-3
    assert rel_err(run_reference_case(tiny_dit, ref, sink_size=0), ref["latents"]) > 1e-3
    ref = torch.load(DATA / "t2v_longlive.pt", weights_only=True)  # the window cuts blocks: frames matter
    assert rel_err(run_reference_case(tiny_dit, ref, local_attn_size=18, sink_size=6), ref["latents"]) > 1e-3


# ------------------------------------------------------------------------------------------ loading


def test_key_map_covers_every_parameter_both_ways():
    names = WanDiT(WanDiTConfig(**TINY)).state_dict()
    assert all(to_ours(to_original(k)) == k for k in names)
    assert to_ours("blocks.3.self_attn.q.weight") == "blocks.3.attn1.to_q.weight"
    assert to_ours("head.head.bias") == "proj_out.bias" and to_ours("blocks.0.norm3.weight") == "blocks.0.norm2.weight"


def test_generator_files_are_checked_strictly(tmp_path):
    ref = read_generator(DATA / "generator.safetensors", None)
    own = WanDiT(WanDiTConfig(**TINY)).state_dict()
    missing = dict(ref)
    del missing["blocks.1.ffn.2.weight"]
    with pytest.raises(FlowcacheError, match=r"missing weight 'blocks.1.ffn.2.weight'"):
        convert(missing, own, "w")
    shaped = dict(ref, **{"head.head.weight": torch.zeros(3, 32)})
    with pytest.raises(FlowcacheError, match=r"weight 'head.head.weight' has shape \(3, 32\), the config needs"):
        convert(shaped, own, "w")
    with pytest.raises(FlowcacheError, match=r"unexpected weight 'img_emb.proj.0.weight'"):
        convert(dict(ref, **{"img_emb.proj.0.weight": torch.zeros(1)}), own, "w")
    with pytest.raises(FlowcacheError, match=r"unexpected weight 'blocks.2.self_attn.q.weight'"):
        convert(dict(ref, **{"blocks.2.self_attn.q.weight": torch.zeros(32, 32)}), own, "w")
    # wrappers: {"generator_ema": {"model.<name>": ...}} as their training saves it, or a named entry
    torch.save({"generator": {f"model.{k}": v for k, v in ref.items()}, "step": torch.tensor(3)}, tmp_path / "g.pt")
    assert read_generator(tmp_path / "g.pt", None).keys() == ref.keys()
    fsdp = {f"model.{k}".replace("blocks.1.", "blocks.1._fsdp_wrapped_module."): v for k, v in ref.items()}
    torch.save({"generator_ema": fsdp, "generator": {}}, tmp_path / "ema.pt")  # their EMA keeps FSDP's names
    assert read_generator(tmp_path / "ema.pt", None).keys() == ref.keys()
    with pytest.raises(FlowcacheError, match=r"no entry 'generator_ema'"):
        read_generator(tmp_path / "g.pt", "generator_ema")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(FlowcacheError, match=r"not a torch checkpoint loadable with weights_only=True"):
        read_generator(tmp_path / "bad.pt", None)


def test_bad_folders_and_options_are_one_line(ckpt, tmp_path):
    out = ["--prompt", PROMPT, "--output-path", str(tmp_path / "o.mp4"), "--height", "32", "--width", "32"]
    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    sd = torch.load(bad / "generator.pt", weights_only=True)
    sd["generator_ema"]["model.blocks.0.self_attn.k.weight"] = torch.zeros(5, 32)
    torch.save(sd, bad / "generator.pt")
    assert "'blocks.0.self_attn.k.weight' has shape (5, 32)" in cli_error(["generate", "--checkpoint-dir", str(bad),
                                                                           *out])
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps(dict(cfg, inference={"sink_size": "3"})))
    assert "sink_size" in cli_error(["generate", "--checkpoint-dir", str(bad), *out])
    (bad / "config.json").write_text(json.dumps(dict(cfg, generator="nope.pt")))
    assert "nope.pt" in cli_error(["generate", "--checkpoint-dir", str(bad), *out])
    shutil.rmtree(bad / "Wan2.1-T2V-1.3B-Diffusers" / "vae")
    (bad / "config.json").write_text(json.dumps(cfg))
    assert "vae/" in cli_error(["generate", "--checkpoint-dir", str(bad), *out])
    good = ["generate", "--checkpoint-dir", str(ckpt), *out]
    assert "must hold the sink_size=3 frames" in cli_error([*good, "--local-attn-size", "5", "--sink-size", "3"])
    assert "needs --local-attn-size" in cli_error([*good, "--sink-size", "3"])
    assert "multiple of 16" in cli_error(["generate", "--checkpoint-dir", str(ckpt), "--prompt", PROMPT,
                                          "--height", "40", "--output-path", str(tmp_path / "o.mp4")])
    assert "denoises in 4 steps" in cli_error([*good, "--num-steps", "8"])
    from PIL import Image

    Image.fromarray(rng_frames(1)[0]).save(tmp_path / "x.png")
    assert "runs t2v, v2v" in cli_error([*good, "--mode", "i2v", "--image", str(tmp_path / "x.png")])


def test_a_folder_without_config_json_is_recognised(ckpt, tmp_path):
    plain = tmp_path / "plain"
    shutil.copytree(ckpt, plain)
    (plain / "config.json").unlink()
    res = generate(PROMPT, checkpoint_dir=plain, cache=CacheConfig("none"), num_frames=9, **SIZE)
    ref = generate(PROMPT, checkpoint_dir=ckpt, cache=CacheConfig("none"), num_frames=9, **SIZE)
    assert torch.equal(res.latents, ref.latents)


def test_longlive_lora_is_merged(ckpt, tmp_path):
    """A LoRA (PEFT names, under generator_lora as LongLive saves it) equals a generator with W + alpha/r B A."""
    torch.manual_seed(0)
    base = torch.load(ckpt / "generator.pt", weights_only=True)["generator_ema"]
    lora, merged = {}, {k[len("model."):]: v.clone() for k, v in base.items()}
    for layer in ("blocks.0.self_attn.q", "blocks.1.ffn.0", "blocks.1.cross_attn.o"):
        w = merged[f"{layer}.weight"]
        a, b = torch.randn(4, w.shape[1]) * 0.1, torch.randn(w.shape[0], 4) * 0.1
        lora[f"base_model.model.{layer}.lora_A.weight"], lora[f"base_model.model.{layer}.lora_B.weight"] = a, b
        merged[f"{layer}.weight"] = w + 2.0 * (b @ a)  # alpha 8, rank 4
    with_lora, premerged = tmp_path / "with_lora", tmp_path / "premerged"
    shutil.copytree(ckpt, with_lora)
    shutil.copytree(ckpt, premerged)
    torch.save({"generator_lora": lora}, with_lora / "lora.pt")
    cfg = json.loads((ckpt / "config.json").read_text())
    (with_lora / "config.json").write_text(json.dumps(dict(cfg, lora="lora.pt", lora_alpha=8)))
    torch.save({"generator": merged}, premerged / "generator.pt")
    got = generate(PROMPT, checkpoint_dir=with_lora, cache=CacheConfig("none"), num_frames=9, **SIZE).latents
    want = generate(PROMPT, checkpoint_dir=premerged, cache=CacheConfig("none"), num_frames=9, **SIZE).latents
    plain = generate(PROMPT, checkpoint_dir=ckpt, cache=CacheConfig("none"), num_frames=9, **SIZE).latents
    assert rel_err(got, want) <= 1e-6 and rel_err(plain, want) > 1e-3
    lora["base_model.model.blocks.7.ffn.0.lora_A.weight"] = torch.zeros(4, 32)
    lora["base_model.model.blocks.7.ffn.0.lora_B.weight"] = torch.zeros(64, 4)
    torch.save(lora, with_lora / "lora.pt")
    assert "'blocks.7.ffn.0' is not a Linear of the generator" in cli_error(
        ["generate", "--checkpoint-dir", str(with_lora), "--prompt", PROMPT, "--height", "32", "--width", "32",
         "--output-path", str(tmp_path / "o.mp4")])


# ------------------------------------------------------------------------------------------ the CLI


@pytest.mark.parametrize("mode", ["t2v", "v2v"])
@pytest.mark.parametrize("policy", ["none", "flowcache", "teacache"])
def test_cli_generates_each_mode_with_each_policy(ckpt, tmp_path, mode, policy):
    args = ["generate", "--checkpoint-dir", str(ckpt), "--mode", mode, "--prompt", PROMPT, "--height", "32",
            "--width", "32", "--num-frames", "21", "--cache", policy, "--quiet",
            "--output-path", str(tmp_path / "out.mp4"), "--json-log", str(tmp_path / "log.jsonl")]
    if mode == "v2v":
        write_video(tmp_path / "in.mp4", rng_frames(13), 16, lossless=True)
        args += ["--prefix-video", str(tmp_path / "in.mp4")]
    r = runner.invoke(make_app(), args)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "out.mp4").stat().st_size > 0
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    forwards = [e for e in log if "tokens_forwarded" in e]
    assert forwards and sum(e["tokens_forwarded"] for e in forwards) > 0


def test_the_cli_streams_the_mp4_and_it_equals_the_api_video(ckpt, tmp_path):
    from flowcache_core.video import read_video

    args = ["generate", "--checkpoint-dir", str(ckpt), "--mode", "v2v", "--prompt", PROMPT, "--height", "32",
            "--width", "32", "--num-frames", "30", "--lossless", "--quiet", "--output-path", str(tmp_path / "o.mp4")]
    write_video(tmp_path / "in.mp4", rng_frames(13), 16, lossless=True)
    r = runner.invoke(make_app(), [*args, "--prefix-video", str(tmp_path / "in.mp4")])
    assert r.exit_code == 0, r.output
    got = read_video(tmp_path / "o.mp4")[0]
    given = read_video(tmp_path / "in.mp4")[0]
    chunks: list[np.ndarray] = []
    res = generate(PROMPT, mode="v2v", prefix_video=given, checkpoint_dir=ckpt, cache=CacheConfig("none"),
                   num_frames=30, on_frames=lambda f, fps: chunks.append(f), keep_frames=False, **SIZE)
    assert res.frames.shape[0] == 0 and res.latents.numel() == 0  # nothing of the video kept
    assert len(chunks) > 1 and np.array_equal(np.concatenate(chunks), got) and got.shape[0] == 30
    kept = generate(PROMPT, mode="v2v", prefix_video=given, checkpoint_dir=ckpt, cache=CacheConfig("none"),
                    num_frames=30, **SIZE)
    assert np.array_equal(kept.frames, got)


def test_video_stream_equals_one_write(tmp_path):
    from flowcache_core.video import VideoStream, read_video

    frames = np.random.default_rng(0).integers(0, 256, size=(11, 17, 23, 3), dtype=np.uint8)  # odd sizes
    for lossless in (True, False):
        write_video(tmp_path / "whole.mp4", frames, 16, lossless=lossless)
        with VideoStream(tmp_path / "parts.mp4", lossless=lossless) as out:
            for i in range(0, 11, 4):
                out.write(frames[i : i + 4], 16)
        assert out.frames == 11 and out.size == (17, 23)
        a, b = read_video(tmp_path / "whole.mp4")[0], read_video(tmp_path / "parts.mp4")[0]
        assert a.shape == frames.shape and np.array_equal(a, b)
    with pytest.raises(RuntimeError), VideoStream(tmp_path / "failed.mp4") as out:  # an error: no file is left
        out.write(frames[:2], 16)
        raise RuntimeError("interrupted")
    assert not (tmp_path / "failed.mp4").exists() and not list(tmp_path.glob(".failed.mp4.*"))


@pytest.mark.parametrize("kv_policy", ["sink_window", "flowcache", "sink_window+int8"])
def test_cli_with_a_kv_budget_in_bytes(ckpt, tmp_path, kv_policy):
    budget = 4 * 12 * 512  # 4 blocks: 12 tokens each, 512 bytes per token over both layers (K and V, float32)
    args = ["generate", "--checkpoint-dir", str(ckpt), "--prompt", PROMPT, "--height", "32", "--width", "32",
            "--num-frames", "45", "--kv-budget", str(budget), "--kv-policy", kv_policy.split("+")[0], "--quiet",
            "--output-path", str(tmp_path / "out.mp4"), "--json-log", str(tmp_path / "log.jsonl")]
    if kv_policy.startswith("sink_window"):
        args += ["--sink-frames", "3"]
    if kv_policy.endswith("+int8"):
        args += ["--kv-quant", "int8"]
    r = runner.invoke(make_app(), args)
    assert r.exit_code == 0, r.output
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    kv = [e["kv"] for e in log if "kv" in e]
    assert kv and all(k["bytes"] <= k["budget_bytes"] == budget for k in kv)


# ------------------------------------------------------------------------------------------ streaming memory


def kv_bytes_of(ckpt, num_frames: int, cache: CacheConfig, **kw) -> tuple[list[int], int]:
    res = generate(PROMPT, checkpoint_dir=ckpt, cache=cache, num_frames=num_frames, **SIZE, **kw)
    return res.record.kv_bytes, res.record.kv_peak_bytes


@pytest.mark.parametrize("setup", ["local_window", "budget_sink_window", "budget_flowcache"])
def test_memory_is_flat_over_a_long_stream(ckpt, setup):
    if setup == "local_window":  # LongLive's: the store drops what the window no longer sees
        cache, kw = CacheConfig("none"), dict(local_attn_size=9, sink_size=3)
    else:  # every earlier block attended, a budget of 3 blocks (chunks) of K/V
        cache = CacheConfig("none", total_cache_chunk_nums=3,
                            kv_policy="sink_window" if setup == "budget_sink_window" else "flowcache")
        kw = {}
    short, short_peak = kv_bytes_of(ckpt, 4 * 18 - 3, cache, **kw)  # 6 blocks
    long, long_peak = kv_bytes_of(ckpt, 4 * 54 - 3, cache, **kw)  # 18 blocks
    assert long_peak == short_peak
    assert max(long) == max(short)
    unbounded, unbounded_peak = kv_bytes_of(ckpt, 4 * 54 - 3, CacheConfig("none"))
    assert unbounded_peak > 2 * long_peak  # without a window or budget, it grows with the video


def test_budget_never_exceeded_on_the_store(ckpt):
    for policy in ("sink_window", "flowcache"):
        request = resolve(PROMPT, checkpoint_dir=ckpt, cache=CacheConfig("none", total_cache_chunk_nums=3,
                                                                         kv_policy=policy), num_frames=69, **SIZE)
        from flowcache_core.api import load
        from flowcache_core.models.causal_wan.generation import prepare_generation

        bundle = load(request)
        gen = prepare_generation(bundle, request.config, PROMPT, "t2v", None, None)
        store = make_store(request.cache, gen, 1)
        held = []
        for _ in run_chunks(gen, request.cache.make_policy(), store, RunRecord()):
            held.append(store.tokens(store.MAIN))
            assert len(gen.latents) <= 2  # the state of a block lives until its clean K/V is written
        assert max(held) <= store.budget_tokens == 3 * 12
        assert store.compressions > 0


def test_plan_is_cheap_for_thousands_of_blocks():
    t0 = time.perf_counter()
    steps = torch.tensor([1000.0, 937.5, 833.3, 625.0])
    plan = plan_forwards(0, 5000, steps, steps / 1000, Window(9, 3, 3))
    assert len(plan) == 5000 * 4 and time.perf_counter() - t0 < 2.0
    last = plan[-1].rows[-1]
    assert (last.chunk_id, last.kv_start, last.kv_sink) == (4999, 4998, 1)


def test_stream_benchmark_smoke(tmp_path):
    """bench/causal_wan_stream.py --tiny: every row streams to the end; window and budgets stay flat."""
    import subprocess
    import sys

    out = tmp_path / "bench.json"
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, str(root / "bench" / "causal_wan_stream.py"), "--tiny", "--seconds", "12",
                        "--out", str(out)], capture_output=True, text=True, cwd=root, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = {row["row"]: row for row in json.loads(out.read_text())["rows"]}
    assert all(row["blocks"] == row["planned_blocks"] for row in rows.values())
    for name, row in rows.items():
        if name != "unbounded":
            assert row["peak_growth_bytes"] == 0, name
            assert row["budget_bytes"] is None or row["store_peak_bytes"] <= row["budget_bytes"]
    assert rows["unbounded"]["peak_growth_bytes"] > 0
