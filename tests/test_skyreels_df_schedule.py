"""SkyReels-V2 DF's schedule, solver and latents against diffusers 0.42.1 itself (CPU, tiny shapes).

The end-to-end tests run diffusers' real DF pipelines (t2v, i2v, v2v) with a stand-in DiT and compare their final
latents with a KV-cached executor of our plan: the stand-in is a two-layer, attention-shaped function (each frame's
keys depend on its input and timestep, the second layer's keys on the first layer's mixing), so a clean row missing
from our plan, a stale key, a wrong timestep, prefix or noise draw would change the numbers.
"""
import contextlib
import json
import types

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffusers import AutoencoderKLWan, UniPCMultistepScheduler  # noqa: E402
from diffusers.pipelines.skyreels_v2.pipeline_skyreels_v2_diffusion_forcing import (  # noqa: E402
    SkyReelsV2DiffusionForcingPipeline as T2V)
from diffusers.pipelines.skyreels_v2.pipeline_skyreels_v2_diffusion_forcing_i2v import (  # noqa: E402
    SkyReelsV2DiffusionForcingImageToVideoPipeline as I2V)
from diffusers.pipelines.skyreels_v2.pipeline_skyreels_v2_diffusion_forcing_v2v import (  # noqa: E402
    SkyReelsV2DiffusionForcingVideoToVideoPipeline as V2V)

from flowcache_core.errors import FlowcacheError  # noqa: E402
from flowcache_core.models.skyreels_df import latents as L  # noqa: E402
from flowcache_core.models.skyreels_df.schedule import layout, plan_forwards, timestep_matrix  # noqa: E402
from flowcache_core.models.skyreels_df.solver import (  # noqa: E402
    SolverConfig, UniPC, flow_t, read_scheduler_config, schedule, with_shift)

C, HW = 16, 16  # latent channels (Wan VAE z_dim); pixel height = width (latent 2 x 2)
# the end-to-end test also runs on CUDA where there is one: diffusers then draws addnoise from the CUDA generator
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _diffusers_scheduler(**kw) -> UniPCMultistepScheduler:
    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, **kw)


def _ours(**kw) -> SolverConfig:
    return SolverConfig(**kw)


# ------------------------------------------------------------------------------------------- timestep matrix

def _template(n: int, shift: float = 8.0) -> torch.Tensor:
    s = _diffusers_scheduler(flow_shift=shift)
    s.set_timesteps(n)
    return s.timesteps


MATRIX_GRID = (
    [(F, F, 0, 0, 1) for F in (1, 2, 7, 25)]  # synchronous
    + [(25, 25, 5, 0, 5), (31, 31, 5, 0, 5), (24, 24, 5, 0, 2), (25, 25, 5, 0, 1), (9, 9, 5, 0, 3), (10, 10, 2, 0, 3)]
    + [(25, 25, 5, 5, 5), (25, 25, 0, 5, 1), (25, 25, 5, 3, 1), (12, 12, 1, 4, 2), (12, 12, 3, 1, 2)]  # pre-ready
    + [(20, 10, 8, 0, 1), (20, 10, 8, 0, 2), (30, 25, 6, 5, 5), (12, 6, 12, 2, 2), (40, 8, 30, 0, 1)]  # sliding
    + [(7, 25, 5, 0, 1), (10, 25, 2, 0, 3)]  # base past the frames (i2v's last segments)
)


@pytest.mark.parametrize("n", [1, 4, 30])
@pytest.mark.parametrize("F,base,ar,pre,B", MATRIX_GRID)
def test_timestep_matrix_equals_diffusers(F, base, ar, pre, B, n):
    template = _template(n)
    obj = T2V.__new__(T2V)
    try:
        ref = T2V.generate_timestep_matrix(obj, F, template, base, ar, pre, B)
    except ValueError as e:
        with pytest.raises(FlowcacheError, match=r"ar_step=\d+ .* use ar_step >= (\d+)") as ours:
            timestep_matrix(F, template, base, ar, pre, B)
        assert str(e).split("at least ")[1].split()[0] == ours.value.args[0].rsplit(">= ", 1)[1]
        return
    sch = timestep_matrix(F, template, base, ar, pre, B)
    matrix, index, mask, interval = sch.frame_view()
    assert torch.equal(matrix, ref[0]) and torch.equal(index, ref[1]) and torch.equal(mask, ref[2])
    assert interval == ref[3]
    done = [0] * sch.num_blocks  # a block's step is the number of its earlier updates: what its solver state counts
    for r in sch.rows:
        for j in range(sch.num_blocks):
            assert r.step(j) == (done[j] if j in r.updated else None)
        for j in r.updated:
            done[j] += 1


def test_too_small_ar_step_is_one_line():
    with pytest.raises(FlowcacheError) as e:
        timestep_matrix(30, _template(30), 25, 5, 5, 5)
    assert "\n" not in str(e.value) and "ar_step=5" in str(e.value) and ">= 6" in str(e.value)


# ------------------------------------------------------------------------------------------- solver

def _per_frame_reference(sched, num_steps, x, outputs, in_place):
    """diffusers' way: one deep copy per frame, each stepped on its own frame. in_place: as the DF pipelines call it,
    `sample` a view of the latents and the result written back into it (the scheduler keeps that view as the
    corrector's last sample on steps without a corrector, so the next corrector sees the new values)."""
    import copy
    copies = []
    for _ in range(x.shape[1]):
        c = copy.deepcopy(sched)
        c.set_timesteps(num_steps)
        copies.append(c)
    x = x.clone()[None]  # (1, C, frames, h, w)
    frames = [x[:, :, f].clone() for f in range(x.shape[2])]
    for i, v in enumerate(outputs):
        for f, c in enumerate(copies):
            if in_place:
                x[:, :, f] = c.step(v[None, :, f], c.timesteps[i], x[:, :, f], return_dict=False)[0]
            else:
                frames[f] = c.step(v[None, :, f], c.timesteps[i], frames[f], return_dict=False)[0]
    return x[0] if in_place else torch.stack(frames, dim=2)[0]


def _ours_trajectory(cfg, num_steps, x, outputs, in_place):
    solver = UniPC(cfg, num_steps)
    st, x = solver.new_state(), x.clone()
    for v in outputs:
        if in_place:
            x[:] = solver.step(st, v, x)  # the block's latents, like the pipeline's frame views
        else:
            x = solver.step(st, v, x)
    return x


SOLVER_GRID = [
    dict(flow_shift=8.0), dict(flow_shift=5.0), dict(flow_shift=1.0), dict(flow_shift=3.0, solver_order=1),
    dict(flow_shift=8.0, solver_type="bh1", final_sigmas_type="sigma_min"),
    dict(flow_shift=8.0, lower_order_final=False, final_sigmas_type="sigma_min"),
    dict(flow_shift=5.0, final_sigmas_type="sigma_min"), dict(flow_shift=8.0, disable_corrector=[0, 2]),
]


@pytest.mark.parametrize("in_place", [True, False])
@pytest.mark.parametrize("num_steps", [1, 2, 3, 7, 30])
@pytest.mark.parametrize("kw", SOLVER_GRID)
def test_solver_equals_per_frame_diffusers(kw, num_steps, in_place):
    g = torch.Generator().manual_seed(num_steps)
    x0 = torch.randn(4, 3, 2, 2, generator=g)  # (C, frames, h, w): one block of 3 frames
    outputs = [torch.randn(4, 3, 2, 2, generator=g) for _ in range(num_steps)]
    ref = _per_frame_reference(_diffusers_scheduler(**kw), num_steps, x0, outputs, in_place)
    cfg = _ours(**{k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()})
    x = _ours_trajectory(cfg, num_steps, x0, outputs, in_place)
    assert torch.isfinite(x).all()
    rel = ((x - ref).abs().max() / ref.abs().max()).item()
    assert rel <= 1e-6, rel


def test_settings_that_end_in_nan_are_refused():
    x = _per_frame_reference(_diffusers_scheduler(flow_shift=8.0, solver_type="bh1"), 2, torch.ones(1, 1, 1, 1),
                             [torch.ones(1, 1, 1, 1)] * 2, False)
    assert torch.isnan(x).all()  # what diffusers gives
    with pytest.raises(FlowcacheError, match="bh1"):
        SolverConfig(solver_type="bh1")
    one = torch.ones(1, 1, 1, 1)
    x = _per_frame_reference(_diffusers_scheduler(flow_shift=8.0, lower_order_final=False), 3, one,
                             [one, -one, one], False)
    assert not torch.isfinite(x).all()
    with pytest.raises(FlowcacheError, match="lower_order_final"):
        SolverConfig(lower_order_final=False)


def test_the_pipelines_in_place_calls_change_the_numbers():
    """Why `in_place` matters: from 3 steps on, the pipelines' aliasing gives other numbers than UniPC as written."""
    g = torch.Generator().manual_seed(0)
    x0, outputs = torch.randn(4, 1, 2, 2, generator=g), [torch.randn(4, 1, 2, 2, generator=g) for _ in range(3)]
    a, b = (_ours_trajectory(SolverConfig(flow_shift=8.0), 3, x0, outputs, p) for p in (True, False))
    assert not torch.allclose(a, b)


def test_solver_bf16_model_output_promotes_like_diffusers():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 2, 2, 2, generator=g)
    outputs = [torch.randn(4, 2, 2, 2, generator=g).to(torch.bfloat16) for _ in range(6)]
    ref = _per_frame_reference(_diffusers_scheduler(flow_shift=8.0), 6, x0, outputs, True)
    x = _ours_trajectory(SolverConfig(flow_shift=8.0), 6, x0, outputs, True)
    assert x.dtype == torch.float32 and torch.equal(x, ref)


@pytest.mark.parametrize("shift", [1.0, 2.5, 5.0, 8.0, 12])
@pytest.mark.parametrize("num_steps", [1, 2, 10, 30, 50, 100])
def test_schedule_equals_set_timesteps(num_steps, shift):
    d = _diffusers_scheduler(flow_shift=shift)
    if num_steps > 1 and d.set_timesteps(num_steps) is None and d.timesteps[0] == d.timesteps[1]:
        return  # covered by test_steps_where_diffusers_fails_are_refused
    d.set_timesteps(num_steps)
    ts, sig = schedule(with_shift(_ours(), shift), num_steps)
    assert torch.equal(ts, d.timesteps) and torch.equal(sig, d.sigmas)
    assert flow_t(sig)[-1] == 1.0 and flow_t(sig)[0] == pytest.approx(0.0, abs=2e-6)


def test_steps_where_diffusers_fails_are_refused():
    d = _diffusers_scheduler(flow_shift=8.0)
    d.set_timesteps(126)
    assert d.timesteps[0] == d.timesteps[1]  # diffusers then starts at index 1 and fails its last step
    with pytest.raises(AssertionError):
        x = torch.zeros(1, 2)
        for t in d.timesteps:
            x = d.step(torch.zeros(1, 2), t, x, return_dict=False)[0]
    with pytest.raises(FlowcacheError, match=r"num_steps=126 .* use at most 125 steps") as e:
        schedule(_ours(flow_shift=8.0), 126)
    assert "\n" not in str(e.value)
    schedule(_ours(flow_shift=8.0), 125)


def test_read_scheduler_config(tmp_path):
    _diffusers_scheduler(flow_shift=8.0).save_config(tmp_path)  # what a Diffusers checkpoint's scheduler/ holds
    cfg = read_scheduler_config(tmp_path)
    assert cfg == SolverConfig(flow_shift=8.0) and with_shift(cfg, 5).flow_shift == 5.0
    raw = json.loads((tmp_path / "scheduler_config.json").read_text())
    for key, value, word in [("use_karras_sigmas", True, "use_karras_sigmas=true"),
                             ("prediction_type", "epsilon", 'prediction_type="epsilon"'),
                             ("solver_order", 3, "solver_order=3"), ("timestep_spacing", "trailing", "trailing"),
                             ("mystery", 1, "'mystery'"), ("_class_name", "DDIMScheduler", "DDIMScheduler")]:
        bad = dict(raw, **{key: value})
        (tmp_path / "scheduler_config.json").write_text(json.dumps(bad))
        with pytest.raises(FlowcacheError, match=word) as e:
            read_scheduler_config(tmp_path / "scheduler_config.json")
        assert "\n" not in str(e.value)
    with pytest.raises(FlowcacheError, match="does not exist"):
        read_scheduler_config(tmp_path / "nowhere.json")


# ------------------------------------------------------------------------------------------- segments and noise

def _diffusers_layout_t2v(num_frames, base, overlap):
    """The t2v pipeline's own arithmetic, read off its prepare_latents and generate_timestep_matrix calls."""
    pipe = _pipe(T2V, torch.float32)
    calls = []
    prep, gen = pipe.prepare_latents, pipe.generate_timestep_matrix

    def spy_prep(*a, **k):
        out = prep(*a, **k)
        calls.append({"frames": out[1], "prefix": out[3]})
        return out

    def spy_gen(F, template, base_, ar, pre, B):
        calls[-1].update(base=base_, pre=pre)
        return gen(F, template, base_, ar, pre, B)

    pipe.prepare_latents, pipe.generate_timestep_matrix = spy_prep, spy_gen
    out = _run(pipe, num_frames=num_frames, base_num_frames=base, overlap_history=overlap, num_inference_steps=1)
    return calls, out.shape[2]


@pytest.mark.parametrize("num_frames,base,overlap", [
    (17, 17, None), (18, 17, 5), (20, 17, 5), (21, 17, 5), (33, 17, 5), (57, 17, 9), (61, 21, 13), (29, 9, 5),
    (97, 97, 17), (257, 97, 17), (101, 41, 37), (49, 33, 1), (14, 17, None), (65, 13, 9),
])
def test_layout_equals_t2v_pipeline(num_frames, base, overlap):
    calls, total = _diffusers_layout_t2v(num_frames, base, overlap)
    lay = layout("t2v", num_frames, base, overlap, 1)
    assert len(lay.segments) == len(calls)
    for seg, c in zip(lay.segments, calls):
        assert (seg.num_frames, seg.prefix_frames, seg.matrix_base) == (c["frames"], c["prefix"], c["base"])
        assert c["pre"] == seg.prefix_frames
    assert lay.output_latent_frames == total
    # the overlap sits on the output's last o frames; segment outputs tile the video
    ends = [0] + [s.output[1] for s in lay.segments]
    assert all(s.output[0] == e for s, e in zip(lay.segments, ends))


def test_a_segment_with_nothing_to_generate_is_refused():
    """57 frames, base 33, overlap 13, blocks of 3: the last segment has 5 frames, 3 of them given (one block);
    diffusers fails there (its timestep matrix has no row); we say so in one line."""
    with pytest.raises(RuntimeError):
        _run(_pipe(T2V, torch.float32), num_frames=57, base_num_frames=33, overlap_history=13, ar_step=2,
             causal_block_size=3, num_inference_steps=1)
    with pytest.raises(FlowcacheError, match="segment 2 has 5 latent frames, 3 of them given") as e:
        layout("t2v", 57, 33, 13, 3)
    assert "\n" not in str(e.value)


def test_i2v_short_last_segment():
    """i2v hands its timestep matrix base b even for a shorter last segment; diffusers 0.42.1 then indexes past the
    segment (IndexError). We clamp the interval to the segment, which is what t2v does there."""
    with pytest.raises(IndexError):
        _run(_pipe(I2V, torch.float32), image=_image(), num_frames=45, base_num_frames=25, overlap_history=9,
             num_inference_steps=1)
    lay = layout("i2v", 45, 25, 9, 1)
    assert [s.num_frames for s in lay.segments] == [7, 7, 4] and lay.segments[2].matrix_base == 7
    solver = UniPC(SolverConfig(flow_shift=5.0), 2)
    pl = plan_forwards(lay, solver.timesteps, flow_t(solver.sigmas), ar_step=0, causal_block_size=1)
    last = [f for f in pl.forwards if f.segment == 2]
    assert all(f.frames == (0, 4) and f.interval == (pl.chunk_base[2], pl.chunk_base[2] + 4) for f in last)


def test_overlap_is_required_like_diffusers():
    with pytest.raises(FlowcacheError, match="overlap_history"):
        layout("t2v", 98, 97, None)  # diffusers checks before rounding 98 down to 97
    assert not layout("t2v", 98, 97, 17).long  # ... and decides "long" after it
    with pytest.raises(FlowcacheError, match="v2v needs overlap_history"):
        layout("v2v", 33, 97, None, video_frames=20)


@pytest.mark.parametrize("num_frames,base,overlap", [(33, 33, None), (57, 17, 9), (61, 21, 13)])
def test_noise_equals_prepare_latents(num_frames, base, overlap):
    pipe = _pipe(T2V, torch.float32)
    lay = layout("t2v", num_frames, base, overlap, 1)
    gen = torch.Generator("cpu").manual_seed(7)
    ours = L.draw_noise(torch.Generator("cpu").manual_seed(7), lay, C, 2, 2, "cpu")
    acc = None
    for seg, x in zip(lay.segments, ours):
        r = pipe.prepare_latents(1, C, HW, HW, lay.num_frames, torch.float32, torch.device("cpu"), gen, None,
                                 base_latent_num_frames=lay.base_latent_frames if lay.long else None,
                                 video_latents=acc, causal_block_size=1,
                                 overlap_history_latent_frames=lay.overlap_latent_frames, long_video_iter=seg.index
                                 if lay.long else None)
        assert torch.equal(r[0][0], x)
        acc = r[0] if acc is None else torch.cat([acc, r[0][:, :, lay.overlap_latent_frames:]], dim=2)


# ------------------------------------------------------------------------------------------- end to end

def _fake_layers(frames, x, t, visible, k1, k2):
    """A two-layer attention-shaped DiT on per-frame tensors; k1/k2 are per-frame key caches it writes for `frames`.
    Sums run over visible frames in ascending order on both sides, so equal inputs give equal bits."""
    def mean(cache, fs):
        acc = cache[fs[0]].clone()
        for f in fs[1:]:
            acc = acc + cache[f]
        return acc / len(fs)

    for f in frames:
        k1[f] = x[f].float() + 0.001 * t[f]
    y = {f: x[f].float() + mean(k1, visible[f]) for f in frames}
    for f in frames:
        k2[f] = torch.tanh(y[f])
    return {f: (torch.tanh(y[f]) * 0.5 + 0.3 * mean(k2, visible[f]) + 0.0005 * t[f]).to(x[f].dtype) for f in frames}


class FakeDiT(torch.nn.Module):
    """Stands in for SkyReelsV2Transformer3DModel inside diffusers' pipelines (block-causal mask when blocks > 1)."""

    def __init__(self, dtype):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros((), dtype=dtype))
        self.config = types.SimpleNamespace(num_frame_per_block=1, in_channels=C)
        self.calls = []

    @property
    def dtype(self):
        return self.w.dtype

    @property
    def device(self):
        return self.w.device

    def _set_ar_attention(self, b):
        self.config.num_frame_per_block = b

    def cache_context(self, name):
        return contextlib.nullcontext()

    def forward(self, hidden_states, timestep, **kw):
        B, F = self.config.num_frame_per_block, hidden_states.shape[2]
        x = {f: hidden_states[0, :, f] for f in range(F)}
        t = {f: int(timestep[0, f]) for f in range(F)}
        vis = {f: [g for g in range(F) if B == 1 or g // B <= f // B] for f in range(F)}
        self.calls.append((F, [t[f] for f in range(F)]))
        out = _fake_layers(range(F), x, t, vis, {}, {})
        return (torch.stack([out[f] for f in range(F)], dim=1)[None],)


def _vae():
    torch.manual_seed(0)
    return AutoencoderKLWan(base_dim=3, z_dim=C, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True])


def _pipe(cls, dtype, shift=8.0, device="cpu"):
    pipe = cls(tokenizer=None, text_encoder=None, transformer=FakeDiT(dtype), vae=_vae(),
               scheduler=_diffusers_scheduler(flow_shift=shift)).to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _run(pipe, seed=3, **kw):
    torch.manual_seed(seed)  # addnoise's randn_like draws from the global generator
    kw.setdefault("num_inference_steps", 3)
    return pipe(prompt=None, prompt_embeds=torch.zeros(1, 4, 8), guidance_scale=1.0, height=HW, width=HW,
                generator=torch.Generator("cpu").manual_seed(seed), output_type="latent", **kw).frames


def _image():
    rng = np.random.default_rng(0)
    from PIL import Image
    return Image.fromarray(rng.integers(0, 256, (HW, HW, 3), dtype=np.uint8))


def _video(frames):
    rng = np.random.default_rng(1)
    from PIL import Image
    return [Image.fromarray(rng.integers(0, 256, (HW, HW, 3), dtype=np.uint8)) for _ in range(frames)]


def _encoded_prefix(pipe, mode, overlap_history, B, video=None):
    """What our family does with its VAE: encode (mode of the latent distribution), then our latents.* helpers."""
    vae, cfg, dev = pipe.vae, pipe.vae.config, pipe.vae.device
    if mode == "i2v":
        px = pipe.video_processor.preprocess(_image(), height=HW, width=HW).to(dev, torch.float32)
        enc = vae.encode(px.unsqueeze(2).to(vae.dtype)).latent_dist.mode()[0]
        return L.image_prefix(enc, cfg.latents_mean, cfg.latents_std)
    px = pipe.video_processor.preprocess_video(video, height=HW, width=HW).to(dev, torch.float32)
    enc = vae.encode(px[:, :, -overlap_history:].to(vae.dtype)).latent_dist.mode()[0]
    return L.video_prefix(enc, cfg.latents_mean, cfg.latents_std, B, vae.dtype)


def _run_plan(pl, lay, solver, first_prefix, model_dtype, device, seed=3):
    """Executes our plan with per-chunk K caches: only the plan's rows (and context) are forwarded."""
    B = pl.block_size
    noises = L.draw_noise(torch.Generator("cpu").manual_seed(seed), lay, C, 2, 2, device)
    addgen = L.addnoise_generator(seed, device)
    output = None
    for seg, noise in zip(lay.segments, noises):
        prefix = first_prefix if seg.index == 0 else L.overlap_prefix(output, lay.overlap_latent_frames, B)
        lat = L.start_latents(noise, prefix, model_dtype)
        k1, k2, states = {}, {}, {}
        for f in (f for f in pl.forwards if f.segment == seg.index):
            assert f.frames[0] == 0  # the pipelines never slide the window
            forwarded = sorted({r.chunk_id for r in f.rows} | set(f.context))
            frames = [fr for c in forwarded for fr in range(*pl.chunks[c].frames)]
            x = {fr: lat[:, fr].to(model_dtype).clone() for fr in frames}
            if f.noised[1] > f.noised[0]:
                lo, hi = f.noised
                assert all(fr in x for fr in range(lo, hi))
                noisy = L.addnoise(torch.stack([x[fr] for fr in range(lo, hi)], dim=1), f.addnoise, addgen)
                x.update({fr: noisy[:, fr - lo] for fr in range(lo, hi)})
            t = {fr: f.model_timesteps[fr - f.frames[0]] for fr in frames}
            first = f.interval[0] - pl.chunk_base[seg.index]
            if f.causal:
                vis = {fr: list(range(first * B, (fr // B + 1) * B)) for fr in frames}
            else:
                vis = {fr: list(range(*f.frames)) for fr in frames}
            for fr in frames:
                assert all(g in k1 or g in x for g in vis[fr]), "a visible chunk has no keys"
            out = _fake_layers(frames, x, t, vis, k1, k2)
            for r in f.denoising:
                lo, hi = pl.chunks[r.chunk_id].frames
                v = torch.stack([out[fr] for fr in range(lo, hi)], dim=1)
                st = states.setdefault(r.chunk_id, solver.new_state())
                lat[:, lo:hi] = solver.step(st, v, lat[:, lo:hi])
        output = L.append_segment(output, lat, seg)
    return output


E2E = [  # mode, num_frames, base, overlap, ar_step, block, addnoise, model dtype, steps
    ("t2v", 21, 97, None, 0, 1, 0, torch.bfloat16, 3),  # sync, full attention
    ("t2v", 21, 97, None, 1, 2, 0, torch.float32, 4),  # async, block-causal, 6 latent frames
    ("t2v", 25, 97, None, 2, 3, 0, torch.bfloat16, 3),  # 7 latent frames: one tail frame stays noise
    ("t2v", 45, 25, 9, 0, 1, 20, torch.bfloat16, 3),  # long, sync, addnoise
    ("t2v", 45, 25, 9, 1, 2, 0, torch.bfloat16, 3),  # long, prefix cut to whole blocks, prefill
    ("t2v", 61, 33, 13, 2, 3, 20.7, torch.float32, 3),  # long, async, causal, addnoise (truncated timestep)
    ("i2v", 21, 97, None, 0, 1, 20, torch.bfloat16, 3),
    ("i2v", 41, 25, 9, 1, 1, 0, torch.bfloat16, 3),  # long i2v (diffusers needs the last segment full length)
    ("i2v", 21, 97, None, 1, 2, 20, torch.float32, 3),  # the image frame is in a denoised block
    ("v2v", 29, 25, 9, 0, 1, 20, torch.bfloat16, 3),
    ("v2v", 41, 21, 9, 1, 2, 0, torch.float32, 3),  # encoded tail of 3 frames cut to 2
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode,num_frames,base,overlap,ar,B,addnoise,dtype,steps", E2E)
def test_plan_solver_and_latents_equal_the_pipeline(mode, num_frames, base, overlap, ar, B, addnoise, dtype, steps,
                                                     device):
    cls = {"t2v": T2V, "i2v": I2V, "v2v": V2V}[mode]
    shift = 8.0 if mode == "t2v" else 5.0
    pipe = _pipe(cls, dtype, shift, device)
    video = _video(15) if mode == "v2v" else None
    extra = {"image": _image()} if mode == "i2v" else {"video": video} if mode == "v2v" else {}
    ref = _run(pipe, num_frames=num_frames, base_num_frames=base, overlap_history=overlap, ar_step=ar,
               causal_block_size=B, addnoise_condition=addnoise, num_inference_steps=steps, **extra)[0]

    lay = layout(mode, num_frames, base, overlap, B, video_frames=15)
    solver = UniPC(with_shift(SolverConfig(), shift), steps)
    pl = plan_forwards(lay, solver.timesteps, flow_t(solver.sigmas), ar_step=ar, causal_block_size=B,
                       addnoise_condition=addnoise)
    prefix = _encoded_prefix(pipe, mode, overlap, B, video) if mode != "t2v" else None
    ours = _run_plan(pl, lay, solver, prefix, dtype, device)
    assert ours.shape == ref.shape
    assert torch.equal(ours, ref), (ours - ref).abs().max()
    # diffusers ran one DiT call per non-prefill forward of ours, with the same timesteps
    calls = [c for c in pipe.transformer.calls]
    assert [c[1] for c in calls] == [f.model_timesteps for f in pl.forwards if not f.prefill]
    # every output frame is emitted exactly once, by a chunk or (frames past the last block) left as noise
    emitted = sorted(fr for f in pl.forwards for c in f.emits for fr in range(*pl.chunks[c].output))
    tails = sorted(fr for s in lay.segments for fr in range(max(s.output[0], s.start + s.num_frames - s.tail(B)),
                                                             s.output[1]))
    assert sorted(emitted + tails) == list(range(lay.output_latent_frames))


def test_plan_rows_for_the_engine():
    """Block-causal, no addnoise: prefix in a prefill, a clean row once after a chunk's last step, kv from the
    segment's first chunk; chunk ids run on across segments."""
    lay = layout("t2v", 45, 25, 9, 2)
    solver = UniPC(SolverConfig(flow_shift=8.0), 3)
    pl = plan_forwards(lay, solver.timesteps, flow_t(solver.sigmas), ar_step=1, causal_block_size=2)
    seg1 = lay.segments[1]
    assert (seg1.start, seg1.num_frames, seg1.prefix_frames, seg1.keep_from) == (4, 7, 2, 3)  # o = 3, cut to 2
    base1 = pl.chunk_base[1]
    pre = [f for f in pl.forwards if f.prefill]  # one per later segment: its one prefix block
    assert [(f.segment, [r.chunk_id for r in f.rows]) for f in pre] == [(1, [base1]), (2, [pl.chunk_base[2]])]
    clean_seen = {}
    for f in pl.forwards:
        for r in f.rows:
            assert r.kv_start == pl.chunk_base[f.segment]
            if r.clean:
                clean_seen[r.chunk_id] = clean_seen.get(r.chunk_id, 0) + 1
            else:
                assert r.t == pytest.approx(1 - float(solver.sigmas[r.step]))
                assert r.t_next == pytest.approx(1 - float(solver.sigmas[r.step + 1]))
    assert all(v == 1 for v in clean_seen.values())
    assert pl.chunks[base1].prefix and pl.chunks[base1].output[0] == pl.chunks[base1].output[1]
    straddle = pl.chunks[base1 + 1]  # local frames 2, 3: frame 2 regenerated and dropped, frame 3 kept
    assert straddle.kept == (1, 2) and straddle.output == (7, 8)
    assert len([c for c in pl.chunks if c.segment == 1]) == 3 and seg1.tail(2) == 1  # frame 6: noise, output 10
    assert [f.index for f in pl.forwards if not f.prefill] == list(range(sum(not f.prefill for f in pl.forwards)))
