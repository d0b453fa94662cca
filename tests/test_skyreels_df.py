"""SkyReels-V2 diffusion forcing: our family against diffusers' own DF pipelines on the same checkpoint folder.

A tiny random checkpoint is written in the diffusers layout (`synthetic.write_checkpoint`, what
`save_pretrained` writes: model_index.json, sharded safetensors); diffusers' pipelines and ours load the same
files. float32, CPU. Same seed: diffusers gets generator=torch.Generator("cpu").manual_seed(seed) and, for
addnoise_condition (which diffusers draws from torch's global generator), torch.manual_seed(seed) just before.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("diffusers")
pytest.importorskip("transformers")
pytest.importorskip("ftfy")

from PIL import Image  # noqa: E402

from flowcache_cli.main import make_app  # noqa: E402
from fixtures.cli import cli_error  # noqa: E402
from flowcache_core.api import generate  # noqa: E402
from flowcache_core.cache.settings import CacheConfig  # noqa: E402
from flowcache_core.models.skyreels_df.synthetic import write_checkpoint  # noqa: E402
from flowcache_core.video import write_video  # noqa: E402

PROMPT = "a red circle moves left"
SIZE = dict(height=32, width=32)
runner = CliRunner()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("skyreels") / "SkyReels-V2-DF-tiny-Diffusers", max_shard_size="150KB")


def rng_frames(n: int, seed: int = 1) -> np.ndarray:
    g = np.random.default_rng(seed)
    return g.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)


def diffusers_run(ckpt, mode: str, seed: int = 0, image=None, video=None, output_type="latent", counter=None, **kw):
    import diffusers

    cls = {"t2v": diffusers.SkyReelsV2DiffusionForcingPipeline,
           "i2v": diffusers.SkyReelsV2DiffusionForcingImageToVideoPipeline,
           "v2v": diffusers.SkyReelsV2DiffusionForcingVideoToVideoPipeline}[mode]
    pipe = cls.from_pretrained(ckpt, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    if counter is not None:  # tokens through the transformer, every call counted
        pipe.transformer.register_forward_pre_hook(
            lambda m, args, kwargs: counter.append(kwargs["hidden_states"][0, 0].numel()), with_kwargs=True)
    extra = {}
    if image is not None:
        extra["image"] = Image.fromarray(image)
    if video is not None:
        extra["video"] = [Image.fromarray(f) for f in video]
    kw = dict(kw)
    if "num_steps" in kw:
        kw["num_inference_steps"] = kw.pop("num_steps")
    torch.manual_seed(seed)  # addnoise_condition: diffusers draws from torch's global generator
    out = pipe(prompt=PROMPT, generator=torch.Generator("cpu").manual_seed(seed), output_type=output_type,
               **SIZE, **extra, **kw).frames
    return out[0]


def ours(ckpt, mode: str, cache: str = "none", image=None, video=None, **kw):
    return generate(PROMPT, mode=mode, checkpoint_dir=ckpt, cache=CacheConfig(cache), image=image,
                    prefix_video=video, **SIZE, **kw)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


CASES = {
    "t2v-sync-cfg-off": ("t2v", dict(num_frames=9, num_steps=3, guidance_scale=1.0)),
    "t2v-sync-cfg-on": ("t2v", dict(num_frames=9, num_steps=4, guidance_scale=5.0, negative_prompt="dark blurry")),
    "t2v-short-text": ("t2v", dict(num_frames=9, num_steps=3, guidance_scale=2.0, max_sequence_length=16)),
    "t2v-async-cfg-on": ("t2v", dict(num_frames=33, num_steps=4, guidance_scale=2.0, ar_step=2, causal_block_size=3)),
    "t2v-async-cfg-off": ("t2v", dict(num_frames=33, num_steps=5, guidance_scale=1.0, ar_step=1, causal_block_size=3)),
    "t2v-long-sync-addnoise": ("t2v", dict(num_frames=57, base_num_frames=33, overlap_history=9, num_steps=3,
                                           guidance_scale=3.0, addnoise_condition=20)),
    "t2v-long-async-addnoise": ("t2v", dict(num_frames=57, base_num_frames=33, overlap_history=9, num_steps=4,
                                            guidance_scale=1.0, ar_step=2, causal_block_size=3,
                                            addnoise_condition=20)),
    "t2v-long-async": ("t2v", dict(num_frames=57, base_num_frames=33, overlap_history=9, num_steps=4,
                                   guidance_scale=2.0, ar_step=2, causal_block_size=3)),
    "i2v-sync": ("i2v", dict(num_frames=9, num_steps=3, guidance_scale=2.0)),
    "i2v-async": ("i2v", dict(num_frames=33, num_steps=4, guidance_scale=1.0, ar_step=2, causal_block_size=3)),
    "v2v-sync": ("v2v", dict(num_frames=33, overlap_history=9, num_steps=3, guidance_scale=2.0)),
    "v2v-async-addnoise": ("v2v", dict(num_frames=33, overlap_history=9, num_steps=4, guidance_scale=1.0, ar_step=1,
                                       causal_block_size=3, addnoise_condition=20)),
}


def inputs(mode: str):
    return dict(image=rng_frames(1)[0] if mode == "i2v" else None, video=rng_frames(13) if mode == "v2v" else None)


@pytest.mark.parametrize("name", list(CASES))
def test_latents_equal_diffusers(ckpt, name):
    mode, kw = CASES[name]
    got = ours(ckpt, mode, **inputs(mode), **kw).latents
    want = diffusers_run(ckpt, mode, **inputs(mode), **kw)
    assert got.shape == want.shape
    assert rel_err(got, want) <= 1e-4, name


@pytest.mark.parametrize("name", ["t2v-async-cfg-on", "v2v-sync", "i2v-async"])
def test_frames_equal_diffusers(ckpt, name):
    mode, kw = CASES[name]
    ins = inputs(mode)
    got = ours(ckpt, mode, **ins, **kw).frames  # (T, H, W, 3) uint8
    want = diffusers_run(ckpt, mode, output_type="np", **ins, **kw)  # (T', H, W, 3) float in [0, 1]
    if mode == "v2v":  # diffusers returns the input video, then the decoded output (the overlap again): ours is
        # the continuation only
        want = want[len(ins["video"]) + kw["overlap_history"]:]
    assert got.shape == want.shape
    assert np.abs(got.astype(np.int16) - np.round(want * 255).astype(np.int16)).max() <= 1


@pytest.mark.parametrize("name", ["t2v-async-cfg-on", "t2v-async-cfg-off", "t2v-long-async", "i2v-async"])
def test_finished_block_kv_reuse_is_exact_and_forwards_fewer_tokens(ckpt, name):
    mode, kw = CASES[name]
    reuse = ours(ckpt, mode, **inputs(mode), **kw)
    recompute = ours(ckpt, mode, clean_kv="recompute", **inputs(mode), **kw)
    assert rel_err(reuse.latents, recompute.latents) <= 1e-5
    assert reuse.record.tokens_forwarded < recompute.record.tokens_forwarded
    # "recompute" is diffusers' work, token for token
    counted: list[int] = []
    diffusers_run(ckpt, mode, counter=counted, **inputs(mode), **kw)
    assert recompute.record.tokens_forwarded == sum(counted) // 4  # a 2x2 patch per token


def test_policies_reuse_blocks_and_stay_close(ckpt):
    kw = CASES["t2v-async-cfg-off"][1] | dict(num_steps=8)
    ref = ours(ckpt, "t2v", **kw)
    for policy in ("flowcache", "teacache"):
        res = generate(PROMPT, mode="t2v", checkpoint_dir=ckpt, cache=CacheConfig(policy, rel_l1_thresh=0.5,
                                                                                 warmup_steps=2), **SIZE, **kw)
        assert sum(res.record.reused.values()) > 0, policy
        assert res.record.tokens_forwarded < ref.record.tokens_forwarded
        assert res.frames.shape == ref.frames.shape
        assert rel_err(res.latents, ref.latents) < 0.5  # random weights: close, not equal


def test_kv_budget_holds_on_a_causal_one_pass_run(ckpt):
    kw = dict(num_frames=57, base_num_frames=57, num_steps=4, guidance_scale=1.0, ar_step=3, causal_block_size=3)
    res = generate(PROMPT, mode="t2v", checkpoint_dir=ckpt, cache=CacheConfig("none", total_cache_chunk_nums=3),
                   **SIZE, **kw)
    budget = 3 * 3 * 4  # chunks x frames x tokens per frame (4x4 latent, 2x2 patches)
    assert max(res.record.kv_tokens) <= budget
    assert res.record.compressions > 0


def test_kv_budget_refused_where_it_does_not_apply(ckpt):
    from flowcache_core.errors import FlowcacheError

    with pytest.raises(FlowcacheError, match="guidance_scale <= 1"):
        generate(PROMPT, checkpoint_dir=ckpt, cache=CacheConfig("none", total_cache_chunk_nums=3), **SIZE,
                 **CASES["t2v-async-cfg-on"][1])


# ------------------------------------------------------------------------------------------ the CLI


@pytest.mark.parametrize("mode", ["t2v", "i2v", "v2v"])
@pytest.mark.parametrize("policy", ["none", "flowcache", "teacache"])
def test_cli_generates_each_mode_with_each_policy(ckpt, tmp_path, mode, policy):
    args = ["generate", "--checkpoint-dir", str(ckpt), "--mode", mode, "--prompt", PROMPT, "--height", "32",
            "--width", "32", "--num-frames", "33", "--num-inference-steps", "4", "--ar-step", "2",
            "--causal-block-size", "3", "--guidance-scale", "1.5", "--cache", policy, "--quiet",
            "--output-path", str(tmp_path / "out.mp4"), "--json-log", str(tmp_path / "log.jsonl")]
    if mode == "i2v":
        Image.fromarray(rng_frames(1)[0]).save(tmp_path / "first.png")
        args += ["--image", str(tmp_path / "first.png")]
    if mode == "v2v":
        write_video(tmp_path / "in.mp4", rng_frames(13), 24, lossless=True)
        args += ["--prefix-video", str(tmp_path / "in.mp4"), "--overlap-history", "9"]
    r = runner.invoke(make_app(), args)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "out.mp4").stat().st_size > 0
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert log and all(e["tokens_forwarded"] >= 0 for e in log)
    assert sum(e["tokens_forwarded"] for e in log) > 0


def test_bad_checkpoints_are_one_line(ckpt, tmp_path):
    out = ["--prompt", PROMPT, "--output-path", str(tmp_path / "o.mp4")]
    assert "does not exist" in cli_error(["generate", "--checkpoint-dir", str(tmp_path / "nope"), *out])
    # wrong shapes: a transformer config that does not fit its weights
    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    cfg = json.loads((bad / "transformer" / "config.json").read_text())
    cfg["ffn_dim"] = 96
    (bad / "transformer" / "config.json").write_text(json.dumps(cfg))
    assert "ffn" in cli_error(["generate", "--checkpoint-dir", str(bad), "--height", "32", "--width", "32",
                               "--num-frames", "9", *out])
    # a MAGI-1 bundle put where SkyReels-V2's transformer belongs
    from flowcache_core.engine.family import DEFAULT_MODEL_DIR

    magi = tmp_path / "magi_as_skyreels"
    shutil.copytree(ckpt, magi)
    shutil.rmtree(magi / "transformer")
    shutil.copytree(DEFAULT_MODEL_DIR, magi / "transformer")
    assert "SkyReelsV2Transformer3DModel" in cli_error(["generate", "--checkpoint-dir", str(magi), *out])
    # a SkyReels-V2 pipeline that is not diffusion forcing
    other = tmp_path / "t2v_pipeline"
    shutil.copytree(ckpt, other)
    idx = json.loads((other / "model_index.json").read_text())
    idx["_class_name"] = "SkyReelsV2Pipeline"
    (other / "model_index.json").write_text(json.dumps(idx))
    assert "not a diffusion-forcing pipeline" in cli_error(["generate", "--checkpoint-dir", str(other), *out])
    # a missing component folder
    shutil.rmtree(bad / "vae")
    assert "vae/" in cli_error(["generate", "--checkpoint-dir", str(bad), *out])


def test_options_are_checked_in_one_line(ckpt, tmp_path):
    out = ["--checkpoint-dir", str(ckpt), "--prompt", PROMPT, "--output-path", str(tmp_path / "o.mp4")]
    assert "4k+1" in cli_error(["generate", *out, "--num-frames", "100"])
    assert "multiple of 16" in cli_error(["generate", *out, "--height", "40"])
    assert "overlap-history" in cli_error(["generate", *out, "--num-frames", "201"])
    assert "--cfg-number applies to magi1" in cli_error(["generate", *out, "--cfg-number", "3"])
    assert "whole causal blocks" in cli_error(["generate", *out, "--num-frames", "37", "--causal-block-size", "3",
                                               "--height", "32", "--width", "32"])
    # and a SkyReels option given to a MAGI-1 model
    assert "--ar-step applies to skyreels_df" in cli_error(["generate", "--prompt", PROMPT, "--ar-step", "5",
                                                            "--output-path", str(tmp_path / "o.mp4")])


def small_defaults(ckpt, folder):
    """The checkpoint with small defaults in its model_index.json (commands without size flags run it quickly)."""
    shutil.copytree(ckpt, folder)
    idx = json.loads((folder / "model_index.json").read_text())
    idx["flowcache"] = {"pipeline_kwargs": dict(height=32, width=32, num_frames=33, num_inference_steps=6,
                                                 guidance_scale=1.0, ar_step=1, causal_block_size=3)}
    (folder / "model_index.json").write_text(json.dumps(idx))
    return folder


def test_sample_benchmark_runs_on_a_skyreels_checkpoint(ckpt, tmp_path):
    small = small_defaults(ckpt, tmp_path / "small")
    out = tmp_path / "vbench"
    r = runner.invoke(make_app(), ["sample-benchmark", "vbench", "--checkpoint-dir", str(small), "--output-dir",
                                   str(out), "--limit", "2", "--cache", "flowcache", "--quiet"])
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(list(out.glob("*.mp4"))) == 2 and manifest


def test_sweep_runs_on_a_skyreels_checkpoint(ckpt, tmp_path):
    small = small_defaults(ckpt, tmp_path / "small")
    out = tmp_path / "sweep"
    r = runner.invoke(make_app(), ["sweep", "--checkpoint-dir", str(small), "--prompts", "2", "--thresholds", "0,0.3",
                                   "--policies", "flowcache", "--reuse-modes", "extrapolate", "--warmup-steps", "2",
                                   "--no-lpips", "--quiet", "--output-dir", str(out)])
    assert r.exit_code == 0, r.output
    data = json.loads((out / "sweep.json").read_text())
    by = {s["setting"]: s for s in data["settings"]}
    assert by["flowcache-extrapolate@0"]["psnr_mean"] == "inf"  # threshold 0 reuses nothing: the same video
    assert by["flowcache-extrapolate@0.3"]["computed_chunk_forwards"] < by["none"]["computed_chunk_forwards"]
    assert data["model"]["block_frames"] == 3 and data["model"]["size"] == [32, 32]


def test_missing_wan_extra_is_named_in_one_line(ckpt, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_diffusers(name, *args, **kwargs):  # as if the `wan` extra were not installed
        if name.split(".")[0] == "diffusers":
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_diffusers)
    line = cli_error(["generate", "--checkpoint-dir", str(ckpt), "--prompt", PROMPT, "--height", "32", "--width",
                      "32", "--num-frames", "9", "--output-path", str(tmp_path / "o.mp4")])
    assert 'pip install -e ".[wan]"' in line
