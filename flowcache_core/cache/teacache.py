"""TeaCache: one global reuse decision per forward, a fair baseline for FlowCache (SPEC section 5).

Same feature and distance as FlowCache, but over the whole window at once:

    rel = mean over the matched tokens of |f - f_prev|  /  (mean over them of |f_prev| + 1e-8)

where the matched tokens are those of every chunk present at this forward and the previous one,
matched by chunk id (never by window position), so a sliding window with unchanged chunks gives 0.
Chunks that just entered carry no previous feature and are left out of the distance.

Per forward:
  - the first `warmup_steps` forwards (counted by `update`, one per forward) compute everything,
    "warmup", acc = 0; so does a forward with no matched chunk ("entered");
  - otherwise acc' = acc + rel: reuse all ("below_threshold", acc = acc') while acc' < thr,
    else compute all ("threshold", acc = 0).
Per chunk, whatever the global decision: a chunk that just entered is computed ("entered"), and a
chunk at its own last step is computed ("last_step", only the oldest chunk can be): the forward that
makes a chunk clean always runs. These overrides do not touch the global accumulator.

Not copied from the published MAGI-1 TeaCache (reference/flowcache-method.md, last section): no
"partial reuse" path (older chunks always advance, by their own cached update), no frozen chunks,
no wrong-chunk velocity, no comparison by window position, no crash on a reused stage end.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from flowcache_core.cache.policy import CachePolicy, ChunkDecision, ChunkStep, ReuseConfig


def window_rel_l1(pairs: list[tuple[Tensor, Tensor]]) -> float:
    """Relative L1 over the union of matched tokens: (Σ|f-p| / N) / (Σ|p| / N + 1e-8), float32."""
    n = sum(f.numel() for f, _ in pairs)
    diff = torch.stack([(f.float() - p.float()).abs().sum() for f, p in pairs]).sum() / n
    base = torch.stack([p.float().abs().sum() for _, p in pairs]).sum() / n
    return (diff / (base + 1e-8)).item()


@dataclass
class TeaCacheConfig(ReuseConfig):
    """`teacache`: one reuse decision per forward for the whole window (same options as flowcache)."""


class TeaCache(CachePolicy):
    """Global reuse: all chunks of the window follow one accumulator."""

    name = "teacache"
    Config = TeaCacheConfig

    def __init__(self, config: TeaCacheConfig | None = None) -> None:
        super().__init__(config)
        self._feature: dict[int, Tensor] = {}  # chunk id -> feature at its previous forward (float32)
        self._acc = 0.0                        # global accumulated rel L1 since the last full compute
        self._forwards = 0                     # forwards seen by update() since reset()

    def decide(self, steps: list[ChunkStep]) -> list[ChunkDecision]:
        compute, reason, rel, acc = self._decide_global(steps)
        decisions = []
        for s in steps:
            if s.entered or s.chunk_id not in self._feature or s.step == 0:
                decisions.append(ChunkDecision(s.chunk_id, True, "entered", rel, acc))
            elif s.is_last_step and not compute:
                decisions.append(ChunkDecision(s.chunk_id, True, "last_step", rel, acc))
            else:
                decisions.append(ChunkDecision(s.chunk_id, compute, reason, rel, acc))
        return decisions

    def _decide_global(self, steps: list[ChunkStep]) -> tuple[bool, str, float | None, float]:
        pairs = [
            (s.feature, self._feature[s.chunk_id])
            for s in steps
            if not s.entered and s.chunk_id in self._feature
        ]
        rel = window_rel_l1(pairs) if pairs else None
        if self._forwards < self.config.warmup_steps:
            return True, "warmup", rel, 0.0
        if rel is None:
            return True, "entered", None, 0.0
        acc = self._acc + rel
        if acc < self.config.rel_l1_thresh:
            return False, "below_threshold", rel, acc
        return True, "threshold", rel, 0.0

    def update(self, steps, decisions, velocities, deltas) -> None:
        super().update(steps, decisions, velocities, deltas)
        for s in steps:
            self._feature[s.chunk_id] = s.feature.detach().float()
        if decisions:
            self._acc = float(decisions[0].acc)
        self._forwards += 1

    def drop(self, chunk_id: int) -> None:
        super().drop(chunk_id)
        self._feature.pop(chunk_id, None)

    def reset(self) -> None:
        super().reset()
        self._feature.clear()
        self._acc = 0.0
        self._forwards = 0

    def tracked_chunks(self) -> set[int]:
        return super().tracked_chunks() | set(self._feature)
