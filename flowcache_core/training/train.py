"""Training the default model: MAGI-1's regime on the procedural world.

Each training step draws one forward of the real inference plan (`schedule.plan_forwards`): the window
chunks at their staggered noise levels (continuous t around the plan's grid points), and the clean chunks
they may attend to, forwarded as MAGI-1 forwards clean chunks (t = clean_t, null caption, each seeing only
itself). The loss is flow matching on the window chunks: x_t = t*x1 + (1-t)*x0, target v = x1 - x0.
Captions are dropped (null caption, dropped adaLN token) 10% of the time, for CFG; with 10% probability the
first frame of chunk 0 is clean (the i2v conditioning). Everything is seeded: same seed, same run
(up to GPU nondeterminism).
"""
from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from flowcache_core.models.magi1.config import EngineConfig, MagiConfig, ModelConfig, RuntimeConfig
from flowcache_core.errors import FlowcacheError
from flowcache_core.models.codec import SpaceToDepthCodec
from flowcache_core.models.magi1.dit import ChunkBatch, VideoDiT, build_model
from flowcache_core.models.text import WordTextEncoder, save_text_encoder
from flowcache_core.models.weights import read_state_dict, save_weights
from flowcache_core.models.magi1.sampling import NULL_CAPTION_TOKENS
from flowcache_core.models.magi1.schedule import plan_forwards, time_of
from flowcache_core.training.world import world_text_config, PALETTE, sample_clip_batch

CAPTION_DROPOUT = 0.1
I2V_PROB = 0.1


def default_model_config() -> MagiConfig:
    """The shipped default model: MAGI-1 architecture, 6 layers of width 256, 64x64 px, lossless codec."""
    text = world_text_config()
    model = ModelConfig(num_layers=6, hidden_size=256, ffn_hidden_size=768, num_attention_heads=8, num_query_groups=2,
                        kv_channels=32, in_channels=48, out_channels=48, patch_size=2, caption_channels=text.dim,
                        caption_max_length=text.max_length, params_dtype="torch.float32", gated_linear_unit=False)
    # Sampling: MAGI-1's CFG with text guidance 3 and prev-chunk scale 1 (two passes per step, the unconditional
    # pass has weight 0): it follows the captions better than one pass (the judge's figures: docs/TRAINING.md).
    runtime = RuntimeConfig(cfg_number=3, text_scales=[3.0] * 5, prev_chunk_scales=[1.0] * 5,
                            noise2clean_kvrange=[5, 4, 3, 2], clean_chunk_kvrange=1, clean_t=0.9999,
                            seed=1234, num_frames=32, video_size_h=64, video_size_w=64, num_steps=32, window_size=4,
                            fps=12, chunk_width=4, scale_factor=1.0, temporal_downsample_factor=1)
    engine = EngineConfig(distributed_backend="gloo", distill=False, kv_offload=False)
    codec = SpaceToDepthCodec(spatial=4, temporal=1, scale=1.0)
    return MagiConfig(model, runtime, engine,
                      extra={"flowcache": {"codec": codec.to_dict(), "text_encoder": "word",
                                           "cache_defaults": {"rel_l1_thresh": 0.01, "warmup_steps": 8, "reuse": "extrapolate"}}})


@dataclass
class TrainConfig:
    steps: int = 20000
    batch: int = 32
    lr: float = 6e-4
    warmup: int = 500
    weight_decay: float = 0.01
    ema: float = 0.998
    seed: int = 0
    workers: int = 8
    log_every: int = 100
    time_limit_s: float | None = None  # stop (and save) after this much wall time
    fit_to_time: bool = False  # shrink the cosine horizon so that it ends when the time limit does
    warm_restart: bool = False  # a resumed run starts a new warmup + cosine from its first step
    rope_bands: tuple[float, ...] | None = None  # set the RoPE bands (after resuming) to these values
    num_steps_grid: int = 32  # the plan whose forwards are drawn (kv ranges scale with it)
    # Fine-tuning options (v4's phase uses --init-from; the others were tried and not shipped, docs/TRAINING.md):
    init_from: str | None = None  # start from this bundle's weights (fresh optimizer), e.g. the shipped model
    text_embed_norm: float | None = None  # rescale the word embeddings to this mean norm at the start
    text_lr_mult: float = 1.0  # the text encoder's learning rate = lr * this (its word embeddings: no decay)
    chunk0_frac: float = 0.0  # this share of steps draws a forward that denoises chunk 0 (no context)
    context_dropout: float = 0.0  # each window row sees only itself with this probability
    context_noise: float = 0.0  # clean context rows are noised to t ~ U[1 - this, 1] (still labelled clean)
    fg_weight: float = 0.0  # object pixels weigh 1 + this * coverage in the loss
    motion_weight: float = 0.0  # pixels an object enters or leaves between frames weigh 1 + this (+ fg) in the loss
    recolour_p: float = 0.0  # share of videos whose objects are recoloured in inputs with t < recolour_t
    recolour_t: float = 0.3
    precision: str = "bf16"  # bf16: autocast over float32 weights; fp32: float32 with TF32 matmuls (no casts);
    # bf16-master: forward/backward on a bf16 copy of the model (bf16 residual stream), float32 master weights
    continue_schedule: bool = False  # resume the saved cosine (origin and end step) instead of `steps`
    schedule_time_s: float | None = None  # fit_to_time: the cosine ends this long after the call's start (several
    # calls share one cosine; default: the call's time_limit_s)


class WorldStream(torch.utils.data.IterableDataset):
    """Endless batches of world clips; worker w of k draws seeds seed*10^8 + w, + k, ... (deterministic)."""

    def __init__(self, seed: int, batch: int, T: int, H: int, W: int, start: int = 0, with_alpha: bool = False):
        self.seed, self.batch, self.T, self.H, self.W, self.start = seed, batch, T, H, W, start
        self.with_alpha = with_alpha

    def __iter__(self):
        """(frames, captions) or, with_alpha, (frames, captions, alpha, rgb) as `sample_clip_batch` gives them."""
        info = torch.utils.data.get_worker_info()
        w, k = (info.id, info.num_workers) if info else (0, 1)
        i = self.start + w
        while True:
            out = sample_clip_batch(self.seed * 10**8 + i * self.batch, self.batch, self.T, self.H, self.W,
                                    with_alpha=self.with_alpha)
            yield tuple(torch.from_numpy(z) if isinstance(z, np.ndarray) else z for z in out)
            i += k


def _to_device(x: torch.Tensor, dev: torch.device) -> torch.Tensor:
    """Host tensor to `dev` without stalling the host: a copy from pageable memory waits for the GPU to go idle,
    one from pinned memory is queued (the caching host allocator keeps the buffer alive until it is done)."""
    if x.device == dev or dev.type != "cuda":
        return x.to(dev)
    return (x if x.is_pinned() else x.pin_memory()).to(dev, non_blocking=True)


PRECISIONS = ("bf16", "fp32", "bf16-master")


def _autocast(device: str, precision: str):
    """bf16 autocast on a GPU, or nothing (float32, on a GPU its matmuls in TF32; or bf16-master, whose
    compute copy is bf16 already)."""
    if precision not in PRECISIONS:
        raise FlowcacheError(f"precision {precision!r} unknown (allowed: {', '.join(PRECISIONS)})")
    on_gpu = str(device).startswith("cuda")
    if on_gpu and precision != "bf16":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16") if on_gpu \
        else torch.autocast("cpu", enabled=False)


class Bf16Compute:
    """A bf16 copy of the DiT that each step's forward and backward run on, beside the float32 model that keeps
    the master weights (the optimizer, EMA and saved state see only those).

    Why: under autocast the residual stream stays float32 and every norm runs in float32 on float32 copies of
    bf16 matmul outputs: LayerNorm and dtype casts dominated a training step's GPU time (profile: docs/TRAINING.md).
    The copy keeps MAGI-1's float32 modules (embedders, final linear, norm params) as `set_dtype` does; bf16
    master weights would lose AdamW updates below bf16's resolution, hence the float32 masters.
    """

    def __init__(self, model: VideoDiT):
        self.model = copy.deepcopy(model).set_dtype(torch.bfloat16)
        self._master = list(model.parameters())
        self._compute = list(self.model.parameters())

    def pull_weights(self) -> None:
        """Master weights -> compute copy (rounded to bf16 where the copy is bf16)."""
        with torch.no_grad():
            torch._foreach_copy_(self._compute, self._master)

    def push_grads(self) -> None:
        """Compute copy's gradients -> the masters' .grad in float32 (then the copy's are dropped)."""
        for m, c in zip(self._master, self._compute):
            m.grad = None if c.grad is None else c.grad.float()
            c.grad = None


def training_batch(model: VideoDiT, text_encoder: WordTextEncoder, cfg: MagiConfig, frames: torch.Tensor,
                   captions: list[str], plan, gen: torch.Generator, num_steps: int,
                   dev_gen: torch.Generator | None = None, chunk0_frac: float = 0.0,
                   context_dropout: float = 0.0, context_noise: float = 0.0, *,
                   alpha: torch.Tensor | None = None, rgb: torch.Tensor | None = None,
                   fg_weight: float = 0.0, recolour_p: float = 0.0, recolour_t: float = 0.3,
                   motion_weight: float = 0.0):
    """Build one ChunkBatch from a batch of clips and one randomly drawn forward of the plan.

    Returns (batch, target, number of clean context rows, loss weight or None). `gen` (CPU) draws the forward
    and which rows see context; `dev_gen` (on the model's device) draws noise levels and noise, so a step
    never copies small tensors to the GPU (each such copy would stall the host until the GPU is idle).

    chunk0_frac: share of forwards drawn among those that denoise chunk 0 (where only the caption tells the
    colour and motion); context_dropout: a window row sees only itself with this probability (the caption must
    carry it); context_noise: clean context is noised to t ~ U[1-a, 1] but still labelled clean, so the model
    learns to continue imperfect (generated) context instead of shrinking it chunk after chunk.
    alpha (B, T, H, W, k) uint8 and rgb (B, k, 3) uint8 (`sample_clip_batch(with_alpha=True)`) enable:
    fg_weight: object pixels weigh 1 + fg_weight * coverage in the loss (objects cover a small share of the
    pixels, so plain MSE pays little for drawing them); recolour_p: this share of videos has its objects recoloured to
    random palette colours in the inputs of window rows with t < recolour_t, while the target stays the true
    clip (v = (x1 - x_t) / (1 - t)): at high noise the colour in the input is chance, so only the caption
    can say which colour to move towards, and the loss now pays for reading it.
    motion_weight: pixels whose object coverage changes from the previous frame (frame 0: to the next one) weigh
    1 + motion_weight * |change| more. A 1 px/frame move changes a thin rim of an object, so plain MSE pays
    almost nothing for drawing the object still; the rim is on both sides (where it arrives and where it
    leaves), so unlike the object weight this does not reward drawing objects bigger.
    """
    rt = cfg.runtime
    dev = next(model.parameters()).device
    dev_gen = dev_gen or gen
    B = frames.shape[0]
    cw = rt.chunk_width
    codec = SpaceToDepthCodec(4, 1)
    pix = _to_device(frames, dev).float()  # (B, T, H, W, 3) 0..255
    x1 = codec.encode(pix.permute(0, 4, 1, 2, 3) / 127.5 - 1.0)  # (B, C, T, h, w)
    pool = plan
    if chunk0_frac > 0 and float(torch.rand(1, generator=gen)) < chunk0_frac:
        pool = [f for f in plan if f.denoising[0].chunk_id == 0] or plan
    f = pool[int(torch.randint(len(pool), (1,), generator=gen))]
    den = f.denoising
    first = den[0].chunk_id
    lo = min(r.kv_start for r in den)
    clean_ids = list(range(lo, first))
    ids = clean_ids + [r.chunk_id for r in den]
    n, ncl = len(ids), len(clean_ids)
    starts = clean_ids + [r.kv_start for r in den]  # clean chunks see only themselves
    if context_dropout > 0:
        alone = torch.rand(len(den), generator=gen) < context_dropout
        starts = clean_ids + [r.chunk_id if bool(a) else r.kv_start for r, a in zip(den, alone)]

    def rows(z):  # (B, C, T, h, w) -> (B, n, C, cw, h, w), the chunks of this forward
        return torch.stack([z[:, :, c * cw:(c + 1) * cw] for c in ids], 1)

    chunks = rows(x1)
    # Noise levels: clean rows at clean_t; window rows around their plan step, jittered per video.
    jitter = torch.rand(B, len(den), generator=dev_gen, device=dev)
    u = torch.stack([(jitter[:, i] + r.step) / num_steps for i, r in enumerate(den)], 1)  # (B, nd)
    t_den = time_of(u)
    t = torch.cat([torch.full((B, ncl), rt.clean_t, device=dev), t_den], 1)  # (B, n)
    x0 = torch.randn(chunks.shape, generator=dev_gen, device=dev)  # drawn where it is used: 20M normals a step
    paste = torch.rand(B, generator=dev_gen, device=dev) < I2V_PROB  # drawn before the optional parts' draws,
    drop = torch.rand(B, generator=dev_gen, device=dev) < CAPTION_DROPOUT  # so these stay as without them
    tt = t[:, :, None, None, None, None]
    a = None if alpha is None else _to_device(alpha, dev).float() / 255  # (B, T, H, W, k) object coverage
    source = chunks  # what the noisy inputs are made from
    if recolour_p > 0 and a is not None:
        k = a.shape[-1]
        palette = _to_device(torch.tensor(list(PALETTE.values()), dtype=torch.float32), dev)  # (P, 3)
        new = palette[torch.randint(len(palette), (B, k), generator=dev_gen, device=dev)]  # (B, k, 3)
        delta = new - _to_device(rgb, dev).float()  # (B, k, 3)
        pick = torch.rand(B, generator=dev_gen, device=dev) < recolour_p
        recoloured = pix + torch.einsum("bthwk,bkc->bthwc", a, delta * pick[:, None, None])
        source = torch.where(tt < recolour_t, rows(codec.encode(recoloured.permute(0, 4, 1, 2, 3) / 127.5 - 1.0)), chunks)
    xt = torch.where(tt >= rt.clean_t, chunks, tt * source + (1 - tt) * x0)
    if source is chunks:
        target = chunks - x0
    else:  # recoloured inputs: the velocity that takes x_t to the true clip
        target = torch.where(tt < recolour_t, (chunks - xt) / (1 - tt), chunks - x0)
    if context_noise > 0 and clean_ids:
        tc = 1 - context_noise * torch.rand(B, 1, 1, 1, 1, 1, generator=dev_gen, device=dev)  # per video
        xt[:, :ncl] = tc * chunks[:, :ncl] + (1 - tc) * x0[:, :ncl]
    if 0 in ids and ids.index(0) >= ncl:  # i2v: clean first frame pasted into a noisy chunk 0
        j = ids.index(0)
        xt[:, j, :, 0] = torch.where(paste[:, None, None, None], chunks[:, j, :, 0], xt[:, j, :, 0])
    weight = None
    if (fg_weight > 0 or motion_weight > 0) and a is not None:
        w = 1 + fg_weight * a.amax(-1)  # (B, T, H, W)
        if motion_weight > 0:
            d = (a[:, 1:] - a[:, :-1]).abs().amax(-1)  # (B, T-1, H, W): coverage change per frame pair
            w = w + motion_weight * torch.cat([d[:, :1], d], 1)  # frame f weighs its change from f-1 (0: to 1)
        w = w[:, None].expand(-1, 3, -1, -1, -1)  # (B, 3, T, H, W)
        weight = rows(codec.encode(w))  # (B, n, C, cw, h, w): space-to-depth moves each pixel's weight with it
    # Captions: window rows get the prompt (or, 10% of videos, the null caption + dropped token); clean rows null.
    ids_t, mask = (_to_device(z, dev) for z in text_encoder.tokenize(captions))  # (B, Lc) each
    emb = text_encoder(ids_t, mask)  # (B, Lc, Dc)
    null = model.y_embedder.null_caption_embedding[: emb.shape[1]].float()
    null_mask = (torch.arange(mask.shape[1], device=dev) < NULL_CAPTION_TOKENS).to(mask.dtype)
    cond = torch.where(drop[:, None, None], null[None], emb)
    cond_mask = torch.where(drop[:, None], null_mask[None], mask)
    is_clean = torch.arange(n, device=dev) < ncl
    cap = torch.where(is_clean[None, :, None, None], null[None, None], cond[:, None])  # (B, n, Lc, Dc)
    cap_mask = torch.where(is_clean[None, :, None], null_mask[None, None], cond_mask[:, None])  # (B, n, Lc)
    dropped = drop[:, None] & ~is_clean[None]
    batch = ChunkBatch(x=xt, t=t, chunk_ids=ids, kv_start=starts, caption=cap, caption_mask=cap_mask,
                       caption_dropped=dropped, write_kv=[False] * n)
    return batch, target, ncl, weight


def _needs_alpha(tc: TrainConfig) -> bool:
    """Whether the recipe reads object coverage (the loader then draws it with every clip)."""
    return tc.fg_weight > 0 or tc.recolour_p > 0 or tc.motion_weight > 0


def step_loss(model: VideoDiT, text: WordTextEncoder, cfg: MagiConfig, tc: TrainConfig, item: tuple, plan,
              gen: torch.Generator, dev_gen: torch.Generator, amp) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss to minimise, plain MSE) of one loader item under the recipe `tc`: the plain MSE is what the log
    shows, comparable across recipes; the loss weighs object pixels when `tc.fg_weight` > 0."""
    frames, captions = item[0], item[1]
    alpha, rgb = (item[2], item[3]) if _needs_alpha(tc) else (None, None)
    batch, target, ncl, weight = training_batch(
        model, text, cfg, frames, captions, plan, gen, tc.num_steps_grid, dev_gen, tc.chunk0_frac,
        tc.context_dropout, tc.context_noise, alpha=alpha, rgb=rgb, fg_weight=tc.fg_weight,
        recolour_p=tc.recolour_p, recolour_t=tc.recolour_t, motion_weight=tc.motion_weight)
    with amp:
        v = model(batch)
    err = (v[:, ncl:].float() - target[:, ncl:]) ** 2
    plain = err.mean()
    loss = plain if weight is None else (err * weight[:, ncl:]).sum() / weight[:, ncl:].sum()
    return loss, plain


def compute_copy(model: VideoDiT, tc: TrainConfig) -> Bf16Compute | None:
    """The bf16 compute copy the recipe's precision asks for, or None (forward and backward on `model`)."""
    return Bf16Compute(model) if tc.precision == "bf16-master" else None


def optimizer_step(model: VideoDiT, compute: Bf16Compute | None, text: WordTextEncoder, cfg: MagiConfig,
                   tc: TrainConfig, item: tuple, plan, gen: torch.Generator, dev_gen: torch.Generator, amp,
                   opt: torch.optim.Optimizer, params: list) -> tuple[torch.Tensor, torch.Tensor]:
    """One training step on one loader item (the training loop's and the profiler's): forward and backward on
    the compute copy when there is one, gradients clipped to norm 1, AdamW on `params`. Returns step_loss's."""
    if compute:
        compute.pull_weights()
    loss, plain = step_loss(compute.model if compute else model, text, cfg, tc, item, plan, gen, dev_gen, amp)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if compute:
        compute.push_grads()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    return loss, plain


def train_default(out_dir: str | os.PathLike, tc: TrainConfig, device: str = "cuda", resume: bool = True,
                  log: Callable[[dict], None] | None = None) -> dict:
    """Train (or resume) the default model into `out_dir`; returns a summary."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = default_model_config()
    rt = cfg.runtime
    torch.manual_seed(tc.seed)
    np.random.seed(tc.seed)
    model = build_model(cfg.model, device=device, dtype=torch.float32, seed=tc.seed)
    text = WordTextEncoder(world_text_config(seed=tc.seed)).to(device)
    if tc.init_from:  # fine-tune: weights from a bundle, optimizer and schedule fresh
        from flowcache_core.models.magi1.bundle import load_bundle

        b = load_bundle(tc.init_from, device=device)
        model.load_state_dict({k: v.float() for k, v in b.model.state_dict().items()})
        text.load_state_dict({k: v.float() for k, v in b.text_encoder.state_dict().items()})
    if tc.text_embed_norm:
        # Trained from std 0.02, the word embeddings stayed tiny (norm ~0.3) next to what each encoder block
        # adds (~24, much of it shared by all tokens): "red" and "blue" came out with cosine 0.99, so the
        # caption barely reached the DiT. Rescaled, word identity dominates the encoder's residual stream.
        with torch.no_grad():
            w = text.tok_embed.weight
            w.mul_(tc.text_embed_norm / w.norm(dim=1).mean())
    # Groups keep the order of model.parameters() + text.parameters() (pos_embed, tok_embed, blocks, norm): saved
    # optimizer states and the EMA index parameters in that order. Embeddings get no weight decay.
    named = list(text.named_parameters())
    assert [n for n, _ in named[:2]] == ["pos_embed", "tok_embed.weight"], "text encoder parameter order changed"
    groups = [{"params": list(model.parameters()), "lr_mult": 1.0},
              {"params": [p for _, p in named[:2]], "lr_mult": tc.text_lr_mult, "weight_decay": 0.0},
              {"params": [p for _, p in named[2:]], "lr_mult": tc.text_lr_mult}]
    params = [p for g in groups for p in g["params"]]
    assert params == list(model.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(groups, lr=tc.lr, weight_decay=tc.weight_decay, betas=(0.9, 0.99))
    ema = copy.deepcopy(model).requires_grad_(False)
    ema_text = copy.deepcopy(text).requires_grad_(False)
    step, sched = 0, None  # sched: the saved cosine's (origin, end) step
    state_dir = out / "state"
    if resume and state_dir.is_dir():
        step, sched = load_train_state(state_dir, model, text, ema, ema_text, opt)
    if tc.rope_bands is not None:
        # The 4 bands MAGI-1's formula gives a 32-dim head (1, 0.1, 0.01, 0.001 rad per unit) leave an 8x8 patch grid
        # almost without position: neighbours are 2.1 units apart, so the two slow bands barely turn and the
        # fast one aliases every ~3 tokens. Training moved them to (0.70, 0.32, -0.02, -0.11); this resets bands.
        with torch.no_grad():
            for m in (model, ema):
                m.rope.bands.copy_(torch.tensor(tc.rope_bands, dtype=torch.float32))
    gen = torch.Generator().manual_seed(tc.seed * 7919 + step)
    dev_gen = torch.Generator(device=device).manual_seed(tc.seed * 104729 + step)
    plan = [f for f in plan_forwards(rt.num_frames // rt.chunk_width, tc.num_steps_grid, rt.window_size, 0,
                                     noise2clean_kvrange=rt.noise2clean_kvrange,
                                     clean_chunk_kvrange=rt.clean_chunk_kvrange) if not f.prefill]
    stream = WorldStream(tc.seed, tc.batch, rt.num_frames, rt.video_size_h, rt.video_size_w, start=step * 1,
                         with_alpha=_needs_alpha(tc))
    on_gpu = str(device).startswith("cuda")
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=tc.workers, pin_memory=on_gpu,
                                         persistent_workers=tc.workers > 0, prefetch_factor=4 if tc.workers else None)
    amp = _autocast(device, tc.precision)
    compute = compute_copy(model, tc)
    t0 = time.perf_counter()
    start_step = step
    s0 = start_step if tc.warm_restart else 0  # the learning-rate schedule's origin
    if tc.continue_schedule:
        if sched is None:
            raise FlowcacheError(f"continue_schedule: no saved schedule in {state_dir} (a state saved by this version)")
        s0, tc.steps = sched
    t_rate = t0
    loss_sum, loss_n = torch.zeros((), device=device), 0  # summed on the device: no per-step host sync
    history = []
    model.train(); text.train()
    if compute:
        compute.model.train()
    ema_params, live_params = list(ema.parameters()) + list(ema_text.parameters()), params
    t_wait = time.perf_counter()
    data_wait = 0.0
    for item in loader:
        data_wait += time.perf_counter() - t_wait
        if step >= tc.steps or (tc.time_limit_s and time.perf_counter() - t0 > tc.time_limit_s):
            break
        if tc.fit_to_time and tc.time_limit_s and step == start_step + 150:  # end the cosine with the time budget
            rate = 100 / (time.perf_counter() - t_rate)
            horizon = tc.schedule_time_s or tc.time_limit_s
            tc.steps = min(tc.steps, int(step + (horizon - (time.perf_counter() - t0)) * rate * 0.98))
            if log:
                log({"step": step, "schedule_end": tc.steps, "steps_per_s": round(rate, 3)})
        if step == start_step + 50:  # after start-up (workers, allocator)
            t_rate = time.perf_counter()
        lr = tc.lr * min(1.0, (step - s0 + 1) / tc.warmup) * 0.5 * (
            1 + math.cos(math.pi * min(1.0, (step - s0) / max(1, tc.steps - s0))))
        for g in opt.param_groups:
            g["lr"] = lr * g["lr_mult"]
        _, plain = optimizer_step(model, compute, text, cfg, tc, item, plan, gen, dev_gen, amp, opt, params)
        with torch.no_grad():
            d = min(tc.ema, (1 + step) / (10 + step))
            torch._foreach_lerp_(ema_params, live_params, 1 - d)
            loss_sum += plain.detach()
        loss_n += 1
        step += 1
        t_wait = time.perf_counter()
        if step % tc.log_every == 0:
            rec = {"step": step, "loss": float(loss_sum) / loss_n, "lr": lr, "seconds": time.perf_counter() - t0,
                   "data_wait_s": round(data_wait, 2)}
            history.append(rec)
            loss_sum.zero_()
            loss_n = 0
            if log:
                log(rec)
    save_train_state(state_dir, model, text, ema, ema_text, opt, step, schedule=(s0, tc.steps))
    export_default_model(ema, ema_text, cfg, out / "default_model")
    with open(out / "loss_history.jsonl", "a") as fh:
        for rec in history:
            fh.write(json.dumps(rec) + "\n")
    return {"steps": step, "seconds": time.perf_counter() - t0, "history": history}


def save_train_state(d: Path, model, text, ema, ema_text, opt, step: int,
                     schedule: tuple[int, int] | None = None) -> None:
    """Everything needed to resume, as bf16 safetensors shards of at most 15 MB (so it travels back from a
    lent GPU machine). bf16 moments and weights make a resumed run close to, not bit-identical with, one run.
    schedule: the cosine's (origin, end) step, for a later call with continue_schedule."""
    sd: dict[str, torch.Tensor] = {"step": torch.tensor([step])}
    if schedule is not None:
        sd["schedule"] = torch.tensor(list(schedule))
    for prefix, m in (("model.", model), ("text.", text), ("ema.", ema), ("ema_text.", ema_text)):
        sd.update({prefix + k: v.detach().to(torch.bfloat16) for k, v in m.state_dict().items()})
    for i, st in opt.state_dict()["state"].items():
        sd[f"opt.{i}.exp_avg"] = st["exp_avg"].to(torch.bfloat16)
        sd[f"opt.{i}.exp_avg_sq"] = st["exp_avg_sq"].to(torch.bfloat16)
        sd[f"opt.{i}.step"] = torch.as_tensor(st["step"], dtype=torch.float32).reshape(1)
    save_weights(sd, d, max_shard_bytes=15_000_000)


def load_train_state(d: Path, model, text, ema, ema_text, opt) -> tuple[int, tuple[int, int] | None]:
    """Load a saved state into the given modules and optimizer; returns (step, the cosine's (origin, end) step,
    None for a state saved before the schedule was)."""
    sd = read_state_dict(d)
    for prefix, m in (("model.", model), ("text.", text), ("ema.", ema), ("ema_text.", ema_text)):
        own = m.state_dict()
        m.load_state_dict({k: sd[prefix + k].to(v.dtype) for k, v in own.items()})
    osd = opt.state_dict()
    n = sum(len(g["params"]) for g in osd["param_groups"])
    osd["state"] = {i: {"step": sd[f"opt.{i}.step"].reshape(()).float(),
                        "exp_avg": sd[f"opt.{i}.exp_avg"].float(), "exp_avg_sq": sd[f"opt.{i}.exp_avg_sq"].float()}
                    for i in range(n) if f"opt.{i}.exp_avg" in sd}
    opt.load_state_dict(osd)
    sched = tuple(int(v) for v in sd["schedule"]) if "schedule" in sd else None
    return int(sd["step"][0]), sched


def export_from_state(out: Path) -> None:
    """The EMA weights of a saved training state as a bundle in out/default_model."""
    cfg = default_model_config()
    model = build_model(cfg.model, dtype=torch.float32)
    text = WordTextEncoder(world_text_config())
    opt = torch.optim.AdamW(list(model.parameters()) + list(text.parameters()))
    ema, ema_text = copy.deepcopy(model), copy.deepcopy(text)
    load_train_state(out / "state", model, text, ema, ema_text, opt)
    export_default_model(ema, ema_text, cfg, out / "default_model")


def export_default_model(model: VideoDiT, text: WordTextEncoder, cfg: MagiConfig, out_dir: str | os.PathLike,
                         dtype: torch.dtype = torch.bfloat16) -> None:
    """Write a bundle directory (config.json, model.safetensors, text encoder) as `load_bundle` reads it."""
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    cfg.to_json(d / "config.json")
    sd = {k: (v.to(dtype) if v.is_floating_point() and v.dim() >= 2 else v.float()) for k, v in model.state_dict().items()}
    save_weights(sd, d)
    save_text_encoder(text.cpu().float(), str(d))


def profile_steps(batch: int, device: str, workers: int, tc: TrainConfig | None = None) -> None:
    """Where a training step's time goes (GPU kernels vs host), to tune `train_default`; on a GPU it also
    lists every host-device synchronisation one step makes (there should be none)."""
    from torch.profiler import ProfilerActivity, profile

    cfg = default_model_config()
    rt = cfg.runtime
    model = build_model(cfg.model, device=device, dtype=torch.float32, seed=0)
    text = WordTextEncoder(world_text_config()).to(device)
    params = list(model.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    dev_gen = torch.Generator(device=device).manual_seed(0)
    plan = [f for f in plan_forwards(rt.num_frames // rt.chunk_width, 32, rt.window_size, 0,
                                     noise2clean_kvrange=rt.noise2clean_kvrange, clean_chunk_kvrange=1) if not f.prefill]
    tc = tc or TrainConfig()
    with_alpha = _needs_alpha(tc)
    item = next(iter(WorldStream(0, batch, rt.num_frames, rt.video_size_h, rt.video_size_w, with_alpha=with_alpha)))
    if device.startswith("cuda"):  # as the training loader's pin_memory gives them
        item = tuple(z.pin_memory() if isinstance(z, torch.Tensor) else z for z in item)
    amp = _autocast(device, tc.precision)
    compute = compute_copy(model, tc)
    model.train(); text.train()
    if compute:
        compute.model.train()

    def one():
        return optimizer_step(model, compute, text, cfg, tc, item, plan, gen, dev_gen, amp, opt, params)[0]

    for _ in range(20):
        one()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")  # each sync inside one step prints a warning with its stack
        for _ in range(3):
            one()
        torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    t = time.perf_counter()
    with profile(activities=acts) as prof:
        for _ in range(10):
            one()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    print(f"step_s {(time.perf_counter() - t) / 10:.4f} (batch {batch}, profiled)")
    key = "cuda_time_total" if device.startswith("cuda") else "cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=25))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    t = time.perf_counter()
    for _ in range(20):
        one()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    print(f"step_s {(time.perf_counter() - t) / 20:.4f} (batch {batch}, unprofiled)")
    t = time.perf_counter()
    it = iter(torch.utils.data.DataLoader(WorldStream(0, batch, rt.num_frames, rt.video_size_h, rt.video_size_w,
                                                      with_alpha=with_alpha), batch_size=None, num_workers=workers))
    for _ in range(20):
        next(it)
    print(f"loader_s_per_batch {(time.perf_counter() - t) / 20:.4f} ({workers} workers, incl. start-up)")


def main(argv: list[str] | None = None) -> None:
    """`python -m flowcache_core.training.train --out DIR [--time-limit S] [--steps N] [--seed S]` (what `make default-model` runs)."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=TrainConfig.steps)
    ap.add_argument("--batch", type=int, default=TrainConfig.batch)
    ap.add_argument("--seed", type=int, default=TrainConfig.seed)
    ap.add_argument("--workers", type=int, default=TrainConfig.workers)
    ap.add_argument("--lr", type=float, default=TrainConfig.lr)
    ap.add_argument("--time-limit", type=float, default=None, help="stop and save after this many seconds")
    ap.add_argument("--fit-to-time", action="store_true",
                    help="shrink the cosine horizon (--steps) so that it ends when --time-limit does (the last of several calls)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-resume", action="store_true")
    ap.add_argument("--warm-restart", action="store_true", help="a resumed run starts a new warmup + cosine (to --steps)")
    ap.add_argument("--warmup", type=int, default=TrainConfig.warmup)
    ap.add_argument("--rope-bands", default=None, help="comma-separated RoPE band values to set after resuming")
    ap.add_argument("--profile", action="store_true", help="profile 10 steps after 20 warm-up steps and print the top ops")
    ap.add_argument("--export-only", action="store_true", help="write OUT/default_model from OUT/state (no training)")
    ap.add_argument("--init-from", default=None, help="fine-tune: start from this bundle's weights (fresh optimizer)")
    ap.add_argument("--text-embed-norm", type=float, default=None, help="rescale the word embeddings to this mean norm")
    ap.add_argument("--text-lr-mult", type=float, default=1.0, help="text encoder learning rate multiplier")
    ap.add_argument("--chunk0-frac", type=float, default=0.0, help="share of steps on forwards that denoise chunk 0")
    ap.add_argument("--context-dropout", type=float, default=0.0, help="probability a window row sees only itself")
    ap.add_argument("--context-noise", type=float, default=0.0, help="clean context noised to t ~ U[1-a, 1]")
    ap.add_argument("--fg-weight", type=float, default=0.0, help="object pixels weigh 1 + this * coverage in the loss")
    ap.add_argument("--motion-weight", type=float, default=0.0,
                    help="pixels an object enters or leaves between frames weigh 1 + this more in the loss")
    ap.add_argument("--recolour-p", type=float, default=0.0,
                    help="share of videos whose objects are recoloured in the inputs of rows with t < --recolour-t")
    ap.add_argument("--recolour-t", type=float, default=0.3)
    ap.add_argument("--precision", choices=PRECISIONS, default="bf16",
                    help="bf16 autocast over float32 weights; float32 (TF32 matmuls on a GPU); or bf16-master: "
                         "forward/backward on a bf16 copy, float32 master weights")
    ap.add_argument("--continue-schedule", action="store_true",
                    help="resume the saved state's cosine (origin and end step) instead of --steps")
    ap.add_argument("--schedule-time", type=float, default=None,
                    help="with --fit-to-time: end the cosine this many seconds after the start (default --time-limit)")
    a = ap.parse_args(argv)
    for name in ("fg_weight", "motion_weight"):
        if getattr(a, name) < 0:
            ap.error(f"--{name.replace('_', '-')} {getattr(a, name)!r} must be >= 0")
    for name in ("chunk0_frac", "context_dropout", "context_noise", "recolour_p", "recolour_t"):
        if not 0.0 <= getattr(a, name) <= 1.0:
            ap.error(f"--{name.replace('_', '-')} {getattr(a, name)!r} must be in [0, 1]")
    bands = None
    if a.rope_bands:
        try:
            bands = tuple(float(x) for x in a.rope_bands.split(","))
        except ValueError:
            ap.error(f"--rope-bands {a.rope_bands!r}: comma-separated numbers expected")
        n = default_model_config().model.kv_channels // 8
        if len(bands) != n:
            ap.error(f"--rope-bands {a.rope_bands!r}: the default model has {n} bands per axis, got {len(bands)}")
    if a.continue_schedule and a.warm_restart:
        ap.error("--continue-schedule and --warm-restart exclude each other (one resumes the saved cosine, one starts a new one)")
    if a.export_only:
        export_from_state(Path(a.out))
        return
    tc = TrainConfig(steps=a.steps, batch=a.batch, lr=a.lr, seed=a.seed, workers=a.workers, time_limit_s=a.time_limit,
                     fit_to_time=a.fit_to_time, warm_restart=a.warm_restart, warmup=a.warmup,
                     rope_bands=bands, init_from=a.init_from, text_embed_norm=a.text_embed_norm,
                     text_lr_mult=a.text_lr_mult, chunk0_frac=a.chunk0_frac, context_dropout=a.context_dropout,
                     context_noise=a.context_noise, fg_weight=a.fg_weight, motion_weight=a.motion_weight, recolour_p=a.recolour_p,
                     recolour_t=a.recolour_t, precision=a.precision, continue_schedule=a.continue_schedule,
                     schedule_time_s=a.schedule_time)
    if a.profile:
        profile_steps(a.batch, a.device, a.workers, tc)
        return
    r = train_default(a.out, tc, device=a.device, resume=not a.no_resume,
                      log=lambda rec: print(json.dumps(rec), flush=True))
    print(json.dumps({"steps": r["steps"], "seconds": round(r["seconds"], 1), "device": a.device,
                      "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}), flush=True)


if __name__ == "__main__":
    main()
