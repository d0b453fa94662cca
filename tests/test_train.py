"""Training batches of the default model: chunk-0 share, context dropout, context noise, object-weighted loss,
motion-weighted loss, recoloured inputs."""
import math

import pytest
import torch

from flowcache_core.training import train
from flowcache_core.models.magi1.bundle import default_model_dir
from flowcache_core.errors import FlowcacheError
from flowcache_core.models.magi1.dit import build_model
from flowcache_core.models.text import WordTextEncoder, load_text_encoder
from flowcache_core.models.weights import read_state_dict
from flowcache_core.models.magi1.schedule import plan_forwards
from flowcache_core.training.world import world_text_config, sample_clip_batch


@pytest.fixture(scope="module")
def setup():
    cfg = train.default_model_config()
    rt = cfg.runtime
    model = build_model(cfg.model, dtype=torch.float32, seed=0)
    text = WordTextEncoder(world_text_config())
    plan = [f for f in plan_forwards(rt.num_frames // rt.chunk_width, 32, rt.window_size, 0,
                                     noise2clean_kvrange=rt.noise2clean_kvrange,
                                     clean_chunk_kvrange=rt.clean_chunk_kvrange) if not f.prefill]
    frames, captions, alpha, rgb = sample_clip_batch(5, 2, rt.num_frames, rt.video_size_h, rt.video_size_w,
                                                     with_alpha=True)
    return cfg, model, text, plan, torch.from_numpy(frames), captions, torch.from_numpy(alpha), torch.from_numpy(rgb)


def _batch(setup, plan=None, seed=0, **kw):
    cfg, model, text, full_plan, frames, captions = setup[:6]
    return train.training_batch(model, text, cfg, frames, captions, plan or full_plan, torch.Generator().manual_seed(seed),
                                32, **kw)


def test_chunk0_share_draws_only_chunk0_forwards(setup):
    plan = setup[3]
    assert any(f.denoising[0].chunk_id != 0 for f in plan)
    for seed in range(8):
        batch, _, ncl, _ = _batch(setup, seed=seed, chunk0_frac=1.0)
        assert batch.chunk_ids[ncl] == 0 and ncl == 0


def test_context_dropout_isolates_window_rows(setup):
    with_ctx = [f for f in setup[3] if len(f.denoising) >= 3]
    batch, _, ncl, _ = _batch(setup, plan=with_ctx, context_dropout=1.0)
    assert all(s == c for s, c in zip(batch.kv_start[ncl:], batch.chunk_ids[ncl:]))
    plain, _, ncl0, _ = _batch(setup, plan=with_ctx)
    assert any(s < c for s, c in zip(plain.kv_start[ncl0:], plain.chunk_ids[ncl0:]))


def test_context_noise_noises_clean_rows_but_keeps_their_label(setup):
    cfg = setup[0]
    with_clean = [f for f in setup[3] if f.denoising[0].chunk_id >= 3]
    clean, _, ncl, _ = _batch(setup, plan=with_clean)
    noisy, _, ncl2, _ = _batch(setup, plan=with_clean, context_noise=0.5)
    assert ncl == ncl2 > 0
    assert torch.equal(noisy.t[:, :ncl], torch.full_like(noisy.t[:, :ncl], cfg.runtime.clean_t))
    assert not torch.allclose(noisy.x[:, :ncl], clean.x[:, :ncl])
    torch.testing.assert_close(noisy.x[:, ncl:], clean.x[:, ncl:])  # window rows untouched


@pytest.mark.slow
def test_fine_tune_from_a_bundle_rescales_word_embeddings(tmp_path):
    train.main(["--out", str(tmp_path), "--steps", "2", "--batch", "2", "--workers", "0", "--device", "cpu",
                "--no-resume", "--init-from", str(default_model_dir()), "--text-embed-norm", "8",
                "--text-lr-mult", "3", "--chunk0-frac", "0.5", "--context-dropout", "0.2", "--context-noise", "0.1",
                "--lr", "1e-5", "--warmup", "1"])
    enc = load_text_encoder(str(tmp_path / "default_model"))
    norm = enc.tok_embed.weight.norm(dim=1).mean().item()
    assert 6.0 < norm < 10.0, norm  # shipped embeddings have norm ~0.3; EMA of two tiny steps keeps ~8


def test_bad_fraction_is_a_usage_error(tmp_path):
    with pytest.raises(SystemExit) as e:
        train.main(["--out", str(tmp_path), "--context-dropout", "2"])
    assert e.value.code == 2


def test_object_weight_follows_the_object_pixels(setup):
    cfg, *_, alpha, rgb = setup
    batch, target, ncl, weight = _batch(setup, alpha=alpha, rgb=rgb, fg_weight=3.0)
    assert weight.shape == target.shape
    assert weight.min() == 1.0 and weight.max() == 4.0  # background 1, fully covered object pixels 1 + 3
    codec_w = (weight - 1) / 3  # coverage in latent layout; it must sit where the clip differs from its background
    share = codec_w.mean().item()
    assert 0.005 < share < 0.2, share
    _, _, _, none = _batch(setup)
    assert none is None


def test_motion_weight_sits_where_object_coverage_changes(setup):
    """--motion-weight adds weight on the rims an object enters and leaves between frames, nowhere else."""
    cfg, *_, alpha, rgb = setup
    plan = [f for f in setup[3] if f.denoising[0].chunk_id >= 1]
    _, target, ncl, fg = _batch(setup, plan=plan, alpha=alpha, rgb=rgb, fg_weight=1.0)
    _, _, _, both = _batch(setup, plan=plan, alpha=alpha, rgb=rgb, fg_weight=1.0, motion_weight=5.0)
    assert both.shape == fg.shape == target.shape
    extra = both - fg  # the motion part alone, in latent layout
    assert extra.min() >= 0 and extra.max() <= 5.0 + 1e-5
    share = (extra > 0).float().mean().item()
    assert 0.001 < share < 0.1, share  # thin rims, not whole objects
    # the same pixels as |coverage change| in pixel space, taken through the codec by hand
    a = alpha.float() / 255
    d = (a[:, 1:] - a[:, :-1]).abs().amax(-1)
    moved = torch.cat([d[:, :1], d], 1)  # (B, T, H, W)
    chunk = both.shape[3]
    ids = _batch(setup, plan=plan)[0].chunk_ids
    codec = train.SpaceToDepthCodec(4, 1)
    lat = codec.encode(moved[:, None].expand(-1, 3, -1, -1, -1).contiguous())  # (B, C, T, h, w)
    want = torch.stack([lat[:, :, c * chunk:(c + 1) * chunk] for c in ids], 1)
    torch.testing.assert_close(extra, 5.0 * want, atol=1e-5, rtol=0)


def test_motion_weight_is_zero_on_a_still_clip(setup):
    cfg, *_, alpha, rgb = setup
    still = alpha[:, :1].expand_as(alpha).contiguous()  # every frame = frame 0: nothing moves
    _, _, _, fg = _batch(setup, alpha=still, rgb=rgb, fg_weight=1.0)
    _, _, _, both = _batch(setup, alpha=still, rgb=rgb, fg_weight=1.0, motion_weight=5.0)
    torch.testing.assert_close(both, fg)


def test_recolour_changes_only_noisy_inputs_and_keeps_the_true_target(setup):
    cfg, *_, alpha, rgb = setup
    plan0 = [f for f in setup[3] if f.denoising[0].chunk_id == 0 and len(f.denoising) >= 3]
    plain, target0, ncl, _ = _batch(setup, plan=plan0)
    rec, target, ncl2, _ = _batch(setup, plan=plan0, alpha=alpha, rgb=rgb, recolour_p=1.0, recolour_t=1.0)
    assert ncl == ncl2 == 0 and torch.equal(plain.t, rec.t)
    assert not torch.allclose(plain.x, rec.x)  # objects drawn in other colours (the same noise)
    # the target still leads to the true clip: x_t + (1 - t) v = x1, for the recoloured input as for the plain one
    tt = rec.t[:, :, None, None, None, None]
    x1_plain = plain.x + (1 - tt) * target0
    x1_rec = rec.x + (1 - tt) * target
    first = (slice(None), 0, slice(None), slice(1, None))  # chunk 0 minus its first frame (the i2v paste)
    torch.testing.assert_close(x1_rec[first], x1_plain[first], atol=1e-4, rtol=0)
    high = _batch(setup, plan=plan0, alpha=alpha, rgb=rgb, recolour_p=1.0, recolour_t=0.0)[0]
    torch.testing.assert_close(high.x, plain.x)  # no row below t = 0: inputs untouched


@pytest.mark.slow
@pytest.mark.parametrize("extra", [["--fg-weight", "3"], ["--fg-weight", "1", "--precision", "bf16-master"],
                                   ["--fg-weight", "1", "--precision", "bf16-master", "--motion-weight", "10"]],
                         ids=["v2", "v3", "v4"])
def test_same_seed_same_weights_with_the_shipped_recipes(tmp_path, extra):
    """Training is a function of its seed: two runs of the shipped recipes' options end with identical weights."""
    args = ["--steps", "3", "--batch", "2", "--workers", "0", "--device", "cpu", "--no-resume", "--seed", "5",
            "--recolour-p", "0.5", "--context-noise", "0.05", "--lr", "1e-3", "--warmup", "2",
            "--rope-bands", "0.73,0.37,0.18,0.09", "--text-embed-norm", "8", *extra]
    for name in ("a", "b"):
        train.main(["--out", str(tmp_path / name), *args])
    a, b = (read_state_dict(tmp_path / n / "default_model") for n in ("a", "b"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    start = build_model(train.default_model_config().model, dtype=torch.float32, seed=5).state_dict()
    assert not torch.equal(a["final_linear.linear.weight"].float(), start["final_linear.linear.weight"].to(torch.bfloat16).float())


@pytest.mark.slow
def test_bf16_master_trains_a_bf16_copy_and_keeps_float32_masters(tmp_path):
    """bf16-master: forward/backward on a bf16 copy, the optimizer on float32 masters; the losses follow the
    float32 run's closely (the copy rounds weights and activations to bf16, nothing else changes)."""
    losses = {}
    for prec in ("fp32", "bf16-master"):
        tc = train.TrainConfig(steps=3, batch=2, workers=0, log_every=1, seed=3, warmup=1, precision=prec)
        r = train.train_default(tmp_path / prec, tc, device="cpu", resume=False)
        losses[prec] = [h["loss"] for h in r["history"]]
    assert losses["fp32"][0] == pytest.approx(losses["bf16-master"][0], rel=1e-6)  # zero-init output: same loss
    assert losses["fp32"][1:] == pytest.approx(losses["bf16-master"][1:], rel=0.02)
    assert losses["fp32"][1:] != losses["bf16-master"][1:]  # it did run in bf16
    sd = read_state_dict(tmp_path / "bf16-master" / "state")
    assert sd["schedule"].tolist() == [0, 3]

    cfg = train.default_model_config()
    model = build_model(cfg.model, dtype=torch.float32, seed=0)
    comp = train.Bf16Compute(model)
    assert comp.model.videodit_blocks.layers[0].mlp.linear_fc1.weight.dtype == torch.bfloat16
    with torch.no_grad():
        model.videodit_blocks.layers[0].mlp.linear_fc1.weight.add_(1.0)
    comp.pull_weights()
    torch.testing.assert_close(comp.model.videodit_blocks.layers[0].mlp.linear_fc1.weight.float(),
                               model.videodit_blocks.layers[0].mlp.linear_fc1.weight, atol=2e-2, rtol=1e-2)
    comp.model.videodit_blocks.layers[0].mlp.linear_fc1.weight.grad = torch.ones(768, 256, dtype=torch.bfloat16)
    comp.push_grads()
    g = model.videodit_blocks.layers[0].mlp.linear_fc1.weight.grad
    assert g.dtype == torch.float32 and bool((g == 1).all())
    assert comp.model.videodit_blocks.layers[0].mlp.linear_fc1.weight.grad is None


@pytest.mark.slow
def test_continue_schedule_resumes_the_saved_cosine(tmp_path):
    """A later call with --continue-schedule keeps the first call's learning-rate curve (origin and end step)."""
    base = ["--out", str(tmp_path), "--batch", "2", "--workers", "0", "--device", "cpu", "--seed", "1", "--warmup", "1"]
    train.main([*base, "--steps", "6", "--time-limit", "0.001", "--no-resume"])  # stops at once, saves the state
    with pytest.raises(SystemExit):  # the two resume modes exclude each other
        train.main([*base, "--continue-schedule", "--warm-restart"])
    assert read_state_dict(tmp_path / "state")["schedule"].tolist() == [0, 6]
    tc = train.TrainConfig(steps=99, batch=2, workers=0, seed=1, warmup=1, log_every=1, continue_schedule=True)
    r = train.train_default(tmp_path, tc, device="cpu", resume=True)
    assert r["steps"] == 6  # ended where the saved cosine ends, not at --steps 99
    lrs = [h["lr"] for h in r["history"]]
    start = r["history"][0]["step"] - 1
    assert lrs[0] == pytest.approx(tc.lr * 0.5 * (1 + math.cos(math.pi * start / 6)))
    with pytest.raises(FlowcacheError):
        train.train_default(tmp_path / "fresh", tc, device="cpu", resume=True)
