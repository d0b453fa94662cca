"""MAGI-1's chunk pipeline as a plan: which chunks each forward carries, at which noise level, seeing which chunks.

Pure bookkeeping, no tensors of the model: `plan_forwards` lists every forward of a generation (prefix
prefill, then the pipelined stages), so the sampler executes it and tests compare it with the official
schedule. Facts (SandAI-org/MAGI-1 inference/pipeline/video_generate.py):
- time grid t = s(u^2), u = linspace(0, 1, n+1), s(x) = x / (3 - 2x); t = 0 noise, t = 1 clean (float32);
  with 12 steps the distilled shortcut walks the 16-step grid in strides given by `shortcut_mode`;
- `window_size` chunks are denoised together; each stage is num_steps / window_size steps; the oldest chunk
  in the window is the most denoised; after each stage the oldest chunk is clean and leaves the window;
- a chunk that just became clean is forwarded once more (at t = clean_t, null caption, seeing only itself)
  at the first step of the next stage, and that forward writes its K/V for every later chunk;
- a denoising chunk at its own step s sees the last noise2clean_kvrange[s // (n / len)] chunks incl. itself;
- one-pass runs (cfg_number 1; the official dispatcher does this for any model, distilled or not): if the
  oldest denoising chunk's t > threshold, it is forwarded twice (once seeing only itself) and the two
  velocities are blended 0.7 / 0.3;
- distill models embed a step size next to t (`distill_step_size`): num_steps / 2, except at 12 steps, where
  it is 8 / interval with the forward's shortcut interval; a forward's interval is the one of its index within
  the stage (`denoise_idx`), the prefix prefill's the first one (SampleTransport.extract_prefix_video_feature
  and forward_velocity; VideoDiTModel.get_embedding_and_meta).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from flowcache_core.engine.plan import Forward, Row


def time_of(u: torch.Tensor) -> torch.Tensor:
    """t = s(u^2), s(x) = x / (3 - 2x): MAGI-1's noise level for u in [0, 1] (any shape; training draws u too).
    Written as the official code evaluates it, so the float32 grid matches bit for bit."""
    t = u**2
    return t * (1 / 3) / (1 + (1 / 3 - 1) * t)


def init_t(num_steps: int, shortcut_mode: str = "8,16,16") -> tuple[torch.Tensor, list[float]]:
    """The float32 time grid (num_steps + 1 values) and each step's shortcut interval."""

    def grid(n: int) -> torch.Tensor:
        return time_of(torch.linspace(0, 1, n + 1, dtype=torch.float32))

    if num_steps % 3 == 0:  # shortcut intervals: (1, 1, 2) repeated for "16,16,8", (2, 1, 1) for any other mode
        strides = [1, 1, 2] if shortcut_mode == "16,16,8" else [2, 1, 1]
        intervals = (strides * (num_steps // 3))[:num_steps]
        if num_steps != 12:
            return grid(num_steps), intervals
        idx = [0]  # 12 steps walk the 16-step grid in those strides
        for s in intervals:
            idx.append(idx[-1] + s)
        return grid(16)[idx], intervals
    return grid(num_steps), [1.0] * num_steps


def distill_step_size(num_steps: int, interval: float) -> float:
    """The step size a shortcut-distilled MAGI-1 model embeds beside t (added as t_embedder(size)).

    Official rule: 12 steps walk the 16-step grid with strides `interval`, so the size is
    4 / interval * 2 (8 with interval 1, 4 with interval 2); every other step count embeds num_steps / 4 * 2,
    whatever the interval."""
    if num_steps == 12:
        return 4 / float(interval) * 2
    return num_steps / 4 * 2


@dataclass
class MagiForward(Forward):
    """A forward of MAGI-1's pipeline: the generic plan record plus what MAGI-1's forward function needs."""

    stage: int = 0
    denoise_idx: int = 0
    nearly_clean: bool = False  # cfg_number 1: oldest denoising chunk forwarded again, seeing only itself
    distill_interval: float = 1.0  # shortcut interval of this forward (see distill_step_size)


def kv_start_for(chunk_id: int, step: int | None, num_steps: int, noise2clean_kvrange: list[int],
                 clean_chunk_kvrange: int) -> int:
    if step is None:
        r = clean_chunk_kvrange
    elif noise2clean_kvrange:
        r = noise2clean_kvrange[step // (num_steps // len(noise2clean_kvrange))]
    else:
        r = -1
    return 0 if r is None or r < 1 else max(0, chunk_id - r + 1)


def plan_forwards(chunk_num: int, num_steps: int, window_size: int, chunk_offset: int = 0, *,
                  noise2clean_kvrange: list[int] | None = None, clean_chunk_kvrange: int = 1,
                  nearly_clean_blend: bool = False, nearly_clean_threshold: float = 0.3,
                  shortcut_mode: str = "8,16,16") -> list[MagiForward]:
    """Every forward of a generation of `chunk_num` chunks, the first `chunk_offset` of them clean prefix."""
    kvr = list(noise2clean_kvrange or [])
    ts, intervals = init_t(num_steps, shortcut_mode)
    d = num_steps // window_size
    out: list[MagiForward] = []
    if chunk_offset > 0:
        rows = [Row(c, None, kv_start_for(c, None, num_steps, kvr, clean_chunk_kvrange)) for c in range(chunk_offset)]
        out.append(MagiForward(0, rows, prefill=True, distill_interval=intervals[0]))
    gen = chunk_num - chunk_offset
    for stage in range(gen + window_size - 1):
        lo = max(chunk_offset, chunk_offset + stage - window_size + 1)
        hi = min(chunk_offset + stage + 1, chunk_num)
        for di in range(d):
            rows = []
            if di == 0 and lo > chunk_offset:  # the chunk that became clean at the end of the last stage
                c = lo - 1
                rows.append(Row(c, None, kv_start_for(c, None, num_steps, kvr, clean_chunk_kvrange)))
            for c in range(lo, hi):
                s = (stage - (c - chunk_offset)) * d + di
                rows.append(Row(c, s, kv_start_for(c, s, num_steps, kvr, clean_chunk_kvrange),
                                float(ts[s]), float(ts[s + 1])))
            den = [r for r in rows if not r.clean]
            near = nearly_clean_blend and float(ts[den[0].step]) > nearly_clean_threshold  # float32 t vs a float64 threshold, as official
            emits = [r.chunk_id for r in den if r.step == num_steps - 1]
            out.append(MagiForward(stage * d + di, rows, emits=emits, stage=stage, denoise_idx=di, nearly_clean=near,
                                   distill_interval=intervals[di]))
    return out


def chunk_layout(num_latent_frames: int, prefix_latent_frames: int, chunk_width: int) -> tuple[int, int]:
    """(chunk_num, chunk_offset) as MAGI-1 computes them: prefix chunks count, partial prefix chunks are pasted."""
    chunk_num = math.ceil((num_latent_frames + prefix_latent_frames) / chunk_width)
    return chunk_num, prefix_latent_frames // chunk_width
