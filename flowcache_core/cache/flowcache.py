"""FlowCache: per-chunk step reuse (SPEC section 5).

Every chunk id has its own accumulator and last feature. At each forward a chunk is computed when

  - it just entered the window, or this is its own first step       -> "entered"   (acc = 0)
  - this is its own last step (step == num_steps - 1)              -> "last_step" (acc = 0)
  - its own step < warmup_steps                                    -> "warmup"    (acc = 0)

otherwise rel = mean|f - f_prev| / (mean|f_prev| + 1e-8) (float32) and acc' = acc + rel:
reuse ("below_threshold", acc = acc') while acc' < rel_l1_thresh, else compute ("threshold", acc = 0).
The previous feature is replaced at every forward, reused or not.

Differences from the published code (mikeallen39/FlowCache, ChunkWiseCache), on purpose:
  - its "first/last step" is the global forward index, so a chunk's own last denoise step (the one
    that makes the clean K/V every later chunk reads) could be reused; here it is always computed.
  - rel is always computed in float32 (the published bf16 runs quantise it and lose the 1e-8).
  - the accumulator is a Python float (float64 sum of float32 distances), as in the published code.
Everything else reproduces its decisions (tests/test_flowcache_golden.py).
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from flowcache_core.cache.policy import CachePolicy, ChunkDecision, ChunkStep, ReuseConfig, rel_l1


@dataclass
class FlowCacheConfig(ReuseConfig):
    """`flowcache`: per-chunk reuse from each chunk's own input-feature drift (published defaults 0.015 / 5)."""


class FlowCache(CachePolicy):
    """Per-chunk reuse decided from each chunk's own input-feature drift."""

    name = "flowcache"
    Config = FlowCacheConfig

    def __init__(self, config: FlowCacheConfig | None = None) -> None:
        super().__init__(config)
        self._feature: dict[int, Tensor] = {}  # chunk id -> feature at its previous forward (float32)
        self._acc: dict[int, float] = {}       # chunk id -> accumulated rel L1 since its last compute

    def decide(self, steps: list[ChunkStep]) -> list[ChunkDecision]:
        return [self._decide_one(s) for s in steps]

    def _decide_one(self, s: ChunkStep) -> ChunkDecision:
        prev = self._feature.get(s.chunk_id)
        rel = rel_l1(s.feature, prev) if prev is not None and not s.entered else None
        if rel is None or s.step == 0:
            return ChunkDecision(s.chunk_id, True, "entered", rel, 0.0)
        if s.is_last_step:
            return ChunkDecision(s.chunk_id, True, "last_step", rel, 0.0)
        if s.step < self.config.warmup_steps:
            return ChunkDecision(s.chunk_id, True, "warmup", rel, 0.0)
        acc = self._acc.get(s.chunk_id, 0.0) + rel
        if acc < self.config.rel_l1_thresh:
            return ChunkDecision(s.chunk_id, False, "below_threshold", rel, acc)
        return ChunkDecision(s.chunk_id, True, "threshold", rel, 0.0)

    def update(self, steps, decisions, velocities, deltas) -> None:
        super().update(steps, decisions, velocities, deltas)
        for s, d in zip(steps, decisions, strict=True):
            self._feature[s.chunk_id] = s.feature.detach().float()
            self._acc[s.chunk_id] = float(d.acc)

    def drop(self, chunk_id: int) -> None:
        super().drop(chunk_id)
        self._feature.pop(chunk_id, None)
        self._acc.pop(chunk_id, None)

    def reset(self) -> None:
        super().reset()
        self._feature.clear()
        self._acc.clear()

    def tracked_chunks(self) -> set[int]:
        return super().tracked_chunks() | set(self._feature) | set(self._acc)
