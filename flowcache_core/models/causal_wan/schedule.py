"""Self-Forcing's few-step schedule and the streaming plan: blocks of latent frames, a Row per denoising step.

Facts of their inference (pipeline/causal_inference.py, utils/scheduler.py, utils/wan_wrapper.py of
guandeh17/Self-Forcing): the flow-matching table has 1000 entries, sigma_i = shift*s/(1+(shift-1)*s) for s going
linearly from 1 to 0 over 1001 points (the last dropped), timestep_i = 1000*sigma_i, float32. With
warp_denoising_step the step list [1000, 750, 500, 250] is read through that table (entry 1000 - t, a 0 appended);
a timestep's sigma is the table entry nearest to it. Each step predicts x0 = x_t - sigma_t * output (float64) and,
but for the last, re-noises it to the next step's sigma with fresh noise. A finished block is run again at
`context_noise` to write the K/V later blocks read. Blocks attend to every earlier block, or with local_attn_size a
window of that many latent frames (their KV cache) keeping the first sink_size frames (LongLive's sink).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from flowcache_core.engine.plan import Forward, Row
from flowcache_core.errors import FlowcacheError


def flow_table(shift: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigmas, timesteps) float32 (1000,): their FlowMatchScheduler(shift, sigma_min=0, extra_one_step) at 1000."""
    s = torch.linspace(1.0, 0.0, 1001)[:-1]
    sigmas = shift * s / (1 + (shift - 1) * s)
    return sigmas, sigmas * 1000


def denoising_timesteps(step_list: list[int], warp: bool, shift: float) -> torch.Tensor:
    """The model timesteps of the steps (float32 with warp, as theirs; int64 values otherwise)."""
    if not warp:
        return torch.tensor(step_list, dtype=torch.long)
    _, timesteps = flow_table(shift)
    table = torch.cat((timesteps, torch.tensor([0], dtype=torch.float32)))
    return table[1000 - torch.tensor(step_list, dtype=torch.long)]


def sigma_of(t: torch.Tensor, shift: float) -> torch.Tensor:
    """The table sigma nearest to each timestep (their argmin lookup), float32."""
    sigmas, timesteps = flow_table(shift)
    idx = torch.argmin((timesteps[None] - t.reshape(-1, 1).to(timesteps.dtype)).abs(), dim=1)
    return sigmas[idx]


@dataclass(frozen=True)
class Window:
    """Which earlier frames block b attends to: all (frames None), or as their rolling KV cache of `frames` latent
    frames keeps them: the first `sink` frames and the newest frames - sink (block b's own included). Their cache
    rolls frame by frame, so a window may cut a block (LongLive: blocks of 6, sink 3, window 12)."""

    frames: int | None
    sink: int
    block: int

    def of(self, b: int) -> tuple[int, int, tuple[int, int] | None]:
        """(kv_start, kv_sink) in chunks (the chunks it reads) and (sink_end, window_start) in frames (the frames of
        them it sees; None: every frame of them)."""
        end = (b + 1) * self.block
        if self.frames is None or end <= self.frames:  # the cache has not rolled yet
            return 0, 0, None
        start = end - (self.frames - self.sink)
        sink_chunks = -(-self.sink // self.block)
        trim = None if start % self.block == 0 and self.sink % self.block == 0 else (self.sink, start)
        kv_start = start // self.block
        if kv_start <= sink_chunks:
            return 0, 0, trim if trim is not None else (self.sink, start)
        return kv_start, sink_chunks, trim


def window_for(local_attn_size: int, sink_size: int, block: int) -> Window:
    """Their local_attn_size / sink_size (latent frames); FlowcacheError where their cache could not roll."""
    if local_attn_size == -1:
        return Window(None, 0, block)
    if local_attn_size < sink_size + block:
        raise FlowcacheError(f"local_attn_size={local_attn_size} must hold the sink_size={sink_size} frames and one "
                             f"block of {block}")
    return Window(local_attn_size, sink_size, block)


def plan_forwards(prefix_blocks: int, blocks: int, timesteps: torch.Tensor, sigmas: torch.Tensor,
                  window: Window) -> list[Forward]:
    """Prefill one forward per given block, then per generated block one forward per step; the finished block's
    clean re-run rides with the next block's first step (it is final: the last block's is not needed).
    Row t = 1 - sigma (the engine's t: 0 noise, 1 clean)."""
    n = len(timesteps)
    t = [1.0 - float(s) for s in sigmas] + [1.0]
    plan: list[Forward] = []
    for c in range(prefix_blocks):
        start, sink, _ = window.of(c)
        plan.append(Forward(0, [Row(c, None, start, kv_sink=sink)], prefill=True))
    index = 0
    for b in range(prefix_blocks, blocks):
        start, sink, _ = window.of(b)
        for k in range(n):
            rows = []
            if k == 0 and b > prefix_blocks:
                ps, pk, _ = window.of(b - 1)
                rows.append(Row(b - 1, None, ps, kv_sink=pk))
            rows.append(Row(b, k, start, t[k], t[k + 1], kv_sink=sink))
            emits = list(range(prefix_blocks)) if index == 0 else []
            plan.append(Forward(index, rows, emits=emits + ([b] if k == n - 1 else [])))
            index += 1
    return plan
