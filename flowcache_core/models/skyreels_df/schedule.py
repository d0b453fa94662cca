"""SkyReels-V2 diffusion forcing as a plan: segments, the per-block timestep matrix, and the engine's forwards.

Pure bookkeeping (ints and floats, no model tensors). The numbers are diffusers 0.42.1's
(pipelines/skyreels_v2/pipeline_skyreels_v2_diffusion_forcing{,_i2v,_v2v}.py); what each step means:

Frames. `num_frames` with (num_frames - 1) % 4 != 0 becomes num_frames // 4 * 4 + 1 (then at least 1); latent
frames are (frames - 1) // 4 + 1, for num_frames, base_num_frames and overlap_history alike. "Long" (t2v, i2v):
overlap_history given and the *rounded* num_frames > base_num_frames; the check that asks for overlap_history
when num_frames > base_num_frames uses the number *before* rounding. v2v is always run as a long video.

Segments (diffusers' `n_iter` iterations). N latent frames, base b, overlap o (latent):
n_iter = 1 + (N - b - 1) // (b - o) + 1. Segment 0 has b frames (N when not long); segment k >= 1 has
min(N - (k (b - o) + o) + o, b) frames, and its first o frames sit on the last o frames of the output so far
(they are regenerated, then dropped: the output keeps frames [o, F) of it). Its given prefix is those o output
frames with the last o % block_size of them cut (block alignment: the prefix keeps the *older* frames). v2v's
segment 0 counts the input video's encoded tail as finished, so it has min(N, b) frames of which the prefix is
given; i2v's segment 0 has the image latent as a one-frame prefix (not cut to whole blocks; see latents.py). A
segment left with no whole block to generate fails in diffusers (an empty timestep matrix); `layout` refuses it.
The prefix is pasted into the noise once, rounded through the DiT's dtype (latents[:, :, :p] =
prefix.to(transformer_dtype) on the float32 latents), and never updated.

Timestep matrix (`generate_timestep_matrix`), per block of `causal_block_size` frames: a block's position in the
padded template [999, t_0 .. t_{n-1}, 0] starts at 0 (not started; pre-ready prefix blocks at n + 1), and each
iteration the first block, or a block whose left neighbour had reached n, moves up by one; any other block sits
ar_step behind its left neighbour's new position; all clamped to [0, n + 1]. A block is updated when its position
changed and is not n + 1; at position k it is stepped from timestep t_{k-1}, its own step k - 1. Iterations run
until every block is at n or beyond. Frames past the last whole block are in no block: never forwarded, never
updated, yet output (they stay the initial noise; `Segment.tail`). The valid interval only slides when
base < num blocks; the pipelines always pass base >= num frames, so every forward covers the whole segment (t2v /
v2v pass the segment's own length; i2v passes b, which exceeds a short last segment: diffusers 0.42.1 then indexes
past the segment and fails with IndexError; we clamp the interval to the segment, which is what t2v does).

Attention. The DiT masks attention block-causally only when the block size is > 1 (`num_frame_per_block`, which
`causal_block_size` sets); with blocks of 1 every frame sees every frame of the forward. In causal runs a clean
block's K/V never changes (it sees only clean blocks), blocks that have not started cannot reach any other, so a
forward need only run its updated blocks plus, once, each block that just became clean (prefix blocks: once, in a
prefill). With blocks of 1 (clean blocks see noisy ones), or with `addnoise_condition` on a prefix (its fresh noise
reaches every later block through the layers), every clean block of the interval is recomputed in every forward.

addnoise_condition (a > 0): in each iteration whose interval starts (frame vs) before the prefix end p, the model
input (a copy in the DiT's dtype) of slice-local frames [vs, p) becomes x (1 - a / 1000) + randn_like(x) a / 1000
(torch's global generator, fresh noise every iteration) and their timestep becomes int(a). vs is 0 in all three
pipelines, so that is frames [0, p). The latents themselves are untouched.

Chunk numbering (our engine's unit is a chunk = one causal block). Chunk ids are global and sequential over the
generation: segment k's block j is chunk `chunk_base[k] + j`. A segment's prefix blocks are chunks of their own
(clean rows), not the earlier chunks covering the same output frames: the DiT's positions restart at every
segment, so their K/V differ, and a segment never attends to an earlier segment's chunks (kv_start >=
chunk_base[k]). `DFPlan.chunks[c].output` tells which global output latent frames a chunk contributes: all of its
frames in segment 0, the frames at local index >= o in later segments (a chunk straddling o contributes a part,
prefix chunks of later segments nothing).

Noise level. Rows carry t = 1 - sigma (0 = noise, 1 = clean) with the solver's float32 sigmas; the DiT gets
diffusers' integer timesteps, which `DFForward` carries separately (`timesteps`, `model_timesteps`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch

from flowcache_core.engine.plan import Forward, Row
from flowcache_core.errors import FlowcacheError

MODES = ("t2v", "i2v", "v2v")
TEMPORAL_STRIDE = 4  # Wan VAE: 2 ** sum(temperal_downsample=[False, True, True])


def round_num_frames(num_frames: int, temporal_stride: int = TEMPORAL_STRIDE) -> int:
    """The pipelines' num_frames after rounding to stride k + 1 (downwards), at least 1."""
    if num_frames % temporal_stride != 1:
        num_frames = num_frames // temporal_stride * temporal_stride + 1
    return max(num_frames, 1)


def latent_frames(frames: int, temporal_stride: int = TEMPORAL_STRIDE) -> int:
    """Latent frames of `frames` pixel frames: the first alone, then one per `temporal_stride` (Wan VAE encode)."""
    return (frames - 1) // temporal_stride + 1


# ---------------------------------------------------------------------------------------------- timestep matrix

@dataclass(frozen=True)
class BlockRow:
    """One iteration of the timestep matrix, per block."""

    interval: tuple[int, int]  # blocks diffusers forwards, [start, end); end may pass the last block (see module doc)
    index: tuple[int, ...]  # position in the padded template: 0 not started, k in 1..n at its step k-1, n+1 clean
    timesteps: tuple[int, ...]  # the DiT's timestep of each block: padded template[index]
    updated: tuple[int, ...]  # blocks the solver steps this iteration (each at its own step index - 1)

    def step(self, block: int) -> int | None:
        """The block's own denoise step in this iteration, None when it is not updated."""
        return self.index[block] - 1 if block in self.updated else None


@dataclass(frozen=True)
class BlockSchedule:
    """`generate_timestep_matrix` at block level; `frame_view()` gives diffusers' frame-level return value."""

    block_size: int
    num_blocks: int
    num_steps: int  # n, the template's length
    rows: tuple[BlockRow, ...]

    def frame_view(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
        """(step_matrix int64, step_index int64, update_mask bool, valid_interval): all (iterations, blocks * B),
        intervals in frames, exactly as diffusers returns them."""
        B = self.block_size
        idx = torch.tensor([r.index for r in self.rows], dtype=torch.int64).reshape(len(self.rows), self.num_blocks)
        ts = torch.tensor([r.timesteps for r in self.rows], dtype=torch.int64).reshape(idx.shape)
        upd = torch.zeros(idx.shape, dtype=torch.bool)
        for i, r in enumerate(self.rows):
            upd[i, list(r.updated)] = True
        rep = lambda x: x.repeat_interleave(B, dim=1)  # noqa: E731  each block's value on each of its frames
        return rep(ts), rep(idx), rep(upd), [(s * B, e * B) for s, e in (r.interval for r in self.rows)]


def timestep_matrix(num_latent_frames: int, step_template: Sequence[int] | torch.Tensor, base_num_latent_frames: int,
                    ar_step: int = 5, num_pre_ready: int = 0, causal_block_size: int = 1) -> BlockSchedule:
    """diffusers' `generate_timestep_matrix` (without shrink_interval_with_mask, which no pipeline uses)."""
    B = causal_block_size
    if not isinstance(B, int) or B < 1:
        raise FlowcacheError(f"causal_block_size={B!r} is not supported: use an integer >= 1")
    if not isinstance(ar_step, int) or ar_step < 0:
        raise FlowcacheError(f"ar_step={ar_step!r} is not supported: use an integer >= 0")
    template = [int(t) for t in step_template]
    n = len(template)
    nb, base_nb = num_latent_frames // B, base_num_latent_frames // B
    if nb < 1:
        raise FlowcacheError(f"{num_latent_frames} latent frames hold no causal block of {B}: use more frames "
                             f"or causal_block_size <= {max(num_latent_frames, 1)}")
    if base_nb < nb:
        if base_nb < 1:
            raise FlowcacheError(f"base of {base_num_latent_frames} latent frames holds no causal block of {B}")
        min_ar = n / base_nb
        if ar_step < min_ar:
            raise FlowcacheError(f"ar_step={ar_step} is too small for {nb} blocks in a {base_nb}-block window "
                                 f"with {n} steps: use ar_step >= {math.ceil(min_ar)}")
    done = n + 1  # diffusers' num_iterations: the position of a clean block
    padded = [999] + template + [0]
    pre = [0] * nb
    for i in range(min(num_pre_ready // B, nb)):
        pre[i] = done
    rows: list[tuple[list[int], list[int]]] = []
    while not all(p >= done - 1 for p in pre):
        new = [0] * nb
        for i in range(nb):
            # first block, or left neighbour finished: one step on; else ar_step behind the neighbour (unclamped)
            new[i] = pre[i] + 1 if i == 0 or pre[i - 1] >= done - 1 else new[i - 1] - ar_step
        new = [min(max(v, 0), done) for v in new]
        rows.append((new, [i for i in range(nb) if new[i] != pre[i] and new[i] != done]))
        pre = new
    terminal, out = base_nb, []
    for new, upd in rows:
        if terminal < nb and terminal in upd:  # the window slides once its next block starts
            terminal += 1
        out.append(BlockRow((max(terminal - base_nb, 0), terminal), tuple(new), tuple(padded[k] for k in new),
                            tuple(upd)))
    return BlockSchedule(B, nb, n, tuple(out))


# ---------------------------------------------------------------------------------------------- segments

@dataclass(frozen=True)
class Segment:
    """One of diffusers' long-video iterations (the only one for a short video)."""

    index: int
    start: int  # global output latent frame of its local frame 0
    num_frames: int  # its latent frames (current_num_latent_frames)
    prefix_frames: int  # given (pasted, never updated) frames at its start: num_pre_ready of its timestep matrix
    keep_from: int  # first local frame it adds to the output (0 for segment 0, the overlap o after)
    matrix_base: int  # base_num_latent_frames its timestep matrix gets

    def tail(self, block_size: int) -> int:
        """Frames after the last whole block: in no chunk, never denoised (diffusers leaves them as noise)."""
        return self.num_frames % block_size

    @property
    def output(self) -> tuple[int, int]:
        """Global output latent frames [lo, hi) this segment adds."""
        return self.start + self.keep_from, self.start + self.num_frames


@dataclass(frozen=True)
class Layout:
    mode: str
    num_frames: int  # pixel frames after rounding
    num_latent_frames: int  # N
    long: bool
    base_latent_frames: int  # b
    overlap_latent_frames: int | None  # o (None when not long)
    segments: tuple[Segment, ...]

    @property
    def output_latent_frames(self) -> int:
        return self.segments[-1].output[1]


def layout(mode: str, num_frames: int, base_num_frames: int = 97, overlap_history: int | None = None,
           causal_block_size: int = 1, *, video_frames: int | None = None,
           temporal_stride: int = TEMPORAL_STRIDE) -> Layout:
    """The segments diffusers' pipeline for `mode` runs. v2v needs `video_frames`, the input video's frame count
    (its last min(video_frames, overlap_history) frames are encoded as segment 0's prefix)."""
    if mode not in MODES:
        raise FlowcacheError(f"mode={mode!r} is not supported: use one of {', '.join(MODES)}")
    B = causal_block_size
    if not isinstance(B, int) or B < 1:
        raise FlowcacheError(f"causal_block_size={B!r} is not supported: use an integer >= 1")
    if num_frames > base_num_frames and overlap_history is None:  # diffusers checks the number before rounding
        raise FlowcacheError(f"num_frames={num_frames} exceeds base_num_frames={base_num_frames}: give "
                             "overlap_history (17 or 37 recommended)")
    if mode == "v2v" and overlap_history is None:
        raise FlowcacheError("v2v needs overlap_history: the input video's last overlap_history frames are its prefix")
    nf = round_num_frames(num_frames, temporal_stride)
    lat = lambda f: latent_frames(f, temporal_stride)  # noqa: E731
    N = lat(nf)
    long = mode == "v2v" or (overlap_history is not None and nf > base_num_frames)
    if not long:
        p0 = 1 if mode == "i2v" else 0
        seg = Segment(0, 0, N, p0, 0, N)
        _check_segment(seg, B)
        return Layout(mode, nf, N, False, N, None, (seg,))
    o, b = lat(overlap_history), lat(base_num_frames)
    if b - o < 1:
        raise FlowcacheError(f"overlap_history={overlap_history} ({o} latent frames) leaves nothing new in a "
                             f"base_num_frames={base_num_frames} window ({b} latent frames): use a smaller overlap")
    n_iter = 1 + (N - b - 1) // (b - o) + 1
    if n_iter < 1:
        raise FlowcacheError(f"num_frames={num_frames} is shorter than overlap_history={overlap_history}: "
                             "nothing to generate")
    segs, produced = [], 0
    for k in range(n_iter):
        if k == 0 and mode != "v2v":
            seg = Segment(0, 0, b, 1 if mode == "i2v" else 0, 0, b)
        else:
            if k == 0:  # v2v: the encoded video tail is the prefix; the overlap counts as finished
                if video_frames is None or video_frames < 1:
                    raise FlowcacheError("v2v needs the input video's frame count (video_frames >= 1)")
                given = lat(min(video_frames, overlap_history))
                start = 0
            else:
                given = min(o, produced)  # diffusers: accumulated[:, :, -o:]
                start = produced - o
            F = min(N - (k * (b - o) + o) + o, b)
            seg = Segment(k, start, F, given - given % B, 0 if k == 0 else o, b if mode == "i2v" else F)
        _check_segment(seg, B)
        segs.append(seg)
        produced = seg.output[1]
    return Layout(mode, nf, N, True, b, o, tuple(segs))


def _check_segment(seg: Segment, B: int) -> None:
    if seg.num_frames // B <= seg.prefix_frames // B:
        raise FlowcacheError(f"segment {seg.index} has {seg.num_frames} latent frames, {seg.prefix_frames} of them "
                             f"given: no causal block of {B} left to generate (use more frames or a smaller "
                             "causal_block_size)")


# ---------------------------------------------------------------------------------------------- the engine's plan

@dataclass
class DFForward(Forward):
    """A forward of SkyReels DF: the generic plan record plus what the DiT call needs (diffusers' one iteration).

    rows: clean rows (step None; see the module doc for when a clean chunk is listed, once or in every forward),
    then the chunks this iteration updates, each at its own step. emits: chunks whose frames are final and go to
    the output (`DFPlan.chunks[c].output`): generated chunks after their last step, segment 0's given chunks (i2v
    image, v2v video tail) in its first forward; later segments' prefix chunks are never emitted (no output).
    Diffusers' DiT input for this iteration is latents[:, frames] in the DiT's dtype, `noised` frames mixed with
    addnoise, timesteps `model_timesteps`; with `causal` the rows (+ cached K/V from `interval[0]` on) give the
    same outputs for the updated chunks."""

    segment: int = 0
    iteration: int = 0  # row of the segment's timestep matrix (-1 for a prefill)
    # block-causal attention (block size > 1). False: every row sees every frame of `frames` (later chunks and
    # `context` too), so kv_start is only the interval's start and clean rows are recomputed in every forward
    causal: bool = True
    interval: tuple[int, int] = (0, 0)  # chunks diffusers forwards, [first, end) (clamped to the segment's blocks)
    frames: tuple[int, int] = (0, 0)  # segment-local latent frames diffusers forwards, [lo, hi)
    timesteps: dict[int, int] = field(default_factory=dict)  # chunk -> its DiT timestep (block level, no addnoise)
    model_timesteps: list[int] = field(default_factory=list)  # per frame of `frames`: the DiT's timestep input
    context: list[int] = field(default_factory=list)  # non-causal only: not-started chunks forwarded (pure noise)
    noised: tuple[int, int] = (0, 0)  # segment-local frames whose DiT input gets addnoise (empty: none)
    addnoise: float = 0.0  # addnoise_condition when `noised` is not empty


@dataclass(frozen=True)
class ChunkInfo:
    chunk_id: int
    segment: int
    block: int
    frames: tuple[int, int]  # segment-local latent frames [lo, hi)
    prefix: bool  # given (pasted) rather than generated
    output: tuple[int, int]  # global output latent frames it contributes, [lo, hi) (lo == hi: none)
    kept: tuple[int, int]  # the same frames relative to the chunk's first frame ((0, 0): none)


@dataclass
class DFPlan:
    layout: Layout
    block_size: int
    num_steps: int
    t: list[float]  # our noise level per step boundary, t = 1 - sigma (n + 1 values)
    schedules: list[BlockSchedule]
    chunk_base: list[int]  # first chunk id of each segment
    chunks: list[ChunkInfo]
    forwards: list[DFForward]


def plan_forwards(lay: Layout, timesteps: Sequence[int] | torch.Tensor, t: Sequence[float], *, ar_step: int,
                  causal_block_size: int, addnoise_condition: float = 0.0, reuse_clean_kv: bool = True) -> DFPlan:
    """Every forward of a generation. `timesteps`: the solver's n int timesteps; `t`: its n + 1 noise levels
    (solver.flow_t(sigmas))."""
    B, n = causal_block_size, len(timesteps)
    causal = B > 1
    a = float(addnoise_condition)
    if a < 0:
        raise FlowcacheError(f"addnoise_condition={addnoise_condition} is not supported: use a number >= 0")
    schedules, chunks, chunk_base, forwards = [], [], [], []
    index = 0
    for seg in lay.segments:
        sch = timestep_matrix(seg.num_frames, timesteps, seg.matrix_base, ar_step, seg.prefix_frames, B)
        schedules.append(sch)
        base = len(chunks)
        chunk_base.append(base)
        nb, pre_blocks = sch.num_blocks, seg.prefix_frames // B
        for j in range(nb):
            lo, hi = j * B, (j + 1) * B
            k = max(lo, seg.keep_from)  # a chunk straddling the overlap end keeps its later frames only
            out, kept = ((seg.start + k, seg.start + hi), (k - lo, B)) if k < hi else ((0, 0), (0, 0))
            chunks.append(ChunkInfo(base + j, seg.index, j, (lo, hi), j < pre_blocks, out, kept))
        output = lambda j: chunks[base + j].output[1] > chunks[base + j].output[0]  # noqa: E731
        steps_done = [0] * nb
        prev_index = [n + 1 if j < pre_blocks else 0 for j in range(nb)]
        p = seg.prefix_frames
        # Clean blocks whose K/V can change between forwards are forwarded in every forward: all of them without
        # the causal mask (they see noisy blocks), and with addnoise (fresh noise on the prefix reaches every later
        # block through the layers). Otherwise a clean block is forwarded once: prefix blocks in a prefill, others
        # in the forward after their last update.
        # reuse_clean_kv False runs diffusers' work: every block of the interval in every forward, clean and
        # not-started ones included (for comparisons; the video is the same)
        recompute = not causal or (a > 0 and p > 0) or not reuse_clean_kv
        if pre_blocks and not recompute:
            rows = [Row(base + j, None, base) for j in range(pre_blocks)]
            forwards.append(DFForward(index, rows, prefill=True, segment=seg.index, iteration=-1, causal=True,
                                      interval=(base, base + pre_blocks), frames=(0, pre_blocks * B),
                                      timesteps={base + j: 0 for j in range(pre_blocks)},
                                      model_timesteps=[0] * (pre_blocks * B)))
        for it, r in enumerate(sch.rows):
            s_blk, e_blk = r.interval[0], min(r.interval[1], nb)
            vs, ve = s_blk * B, min(r.interval[1] * B, seg.num_frames)  # diffusers slices latents[vs:ve]
            kv = base + s_blk
            noised, model_ts = (0, 0), [r.timesteps[f // B] for f in range(vs, min(ve, nb * B))]
            if a > 0 and vs < p:  # slice-local [vs, p): the pipeline indexes the already-sliced input again
                lo, hi = min(vs + vs, ve), min(vs + p, ve)
                noised = (lo, hi) if lo < hi else (0, 0)
                for f in range(vs, min(p, len(model_ts))):
                    model_ts[f] = int(a)  # assigned into an int64 tensor: truncates
            clean, den, ctx = [], [], []
            for j in range(s_blk, e_blk):
                idx = r.index[j]
                if j in r.updated:
                    s = steps_done[j]
                    assert idx - 1 == s, (seg.index, it, j, idx, s)  # a block's position is its solver step + 1
                    den.append(Row(base + j, s, kv, t[s], t[s + 1]))
                    steps_done[j] += 1
                elif idx == n + 1:
                    if recompute or prev_index[j] == n:
                        clean.append(Row(base + j, None, kv))
                elif idx == 0:
                    if not causal or not reuse_clean_kv:
                        ctx.append(base + j)
                else:
                    raise AssertionError(f"block {j} started but not updated at iteration {it}")
            if not den:
                raise AssertionError(f"iteration {it} of segment {seg.index} updates nothing")
            emits = [row.chunk_id for row in den if row.step == n - 1 and output(row.chunk_id - base)]
            if it == 0:  # given chunks that are output (segment 0's image / video prefix) are final from the start
                emits = [base + j for j in range(pre_blocks) if output(j)] + emits
            forwards.append(DFForward(
                index, clean + den, emits=emits, segment=seg.index, iteration=it, causal=causal,
                interval=(base + s_blk, base + e_blk), frames=(vs, min(ve, nb * B)),
                timesteps={base + j: r.timesteps[j] for j in range(s_blk, e_blk)}, model_timesteps=model_ts,
                context=ctx, noised=noised, addnoise=a if noised[1] > noised[0] else 0.0))
            index += 1
            prev_index = list(r.index)
        assert all(s == n for s in steps_done[pre_blocks:]), steps_done
    return DFPlan(lay, B, n, list(t), schedules, chunk_base, chunks, forwards)
