"""Cache policies: the seam between the sampler and the step-skipping rules.

The sampler calls, once per forward (see docs/DESIGN.md):

    decisions = policy.decide(steps)        # pure: one ChunkDecision per ChunkStep, same order
    # forward only the chunks with compute=True -> velocities {chunk_id: v}
    delta = v * s.dt if d.compute else policy.reused_delta(s)
    # (a family with its own solver steps from v, or from policy.reused_velocity(s) for a reused chunk)
    policy.update(steps, decisions, velocities, deltas)
    policy.drop(chunk_id)                   # once a chunk is clean

Policies never read the model, never print and never count calls to infer a chunk's step: the step,
the step count and dt come in every `ChunkStep`. State is keyed by chunk id and dropped when the
chunk is clean. Each policy has its own `Config` dataclass (its options, validated on construction); the
registry that maps names to policies is `flowcache_core/cache/registry.py`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from flowcache_core.cache.options import check_options, option, option_fields

REASONS = ("warmup", "entered", "last_step", "threshold", "below_threshold", "none")
REUSE_MODES = ("displacement", "velocity", "extrapolate")


# ----------------------------------------------------------------------------- records


@dataclass(frozen=True)
class ChunkStep:
    """One window chunk at one forward, as the sampler sees it.

    step: the chunk's own denoise step index (0 .. num_steps-1), counted by the sampler.
    entered: this is the chunk's first forward in the window.
    feature: (tokens, D) float32, the patch embedding of the chunk's noisy input.
    """

    chunk_id: int
    step: int
    num_steps: int
    t: float
    dt: float
    entered: bool
    feature: Tensor

    @property
    def is_last_step(self) -> bool:
        return self.step == self.num_steps - 1


@dataclass(frozen=True)
class ChunkDecision:
    """What to do with one chunk at one forward.

    reason: one of REASONS. rel_l1: the distance to the chunk's previous feature (None when there is
    none). acc: the accumulator after this decision (None for policies without one).
    """

    chunk_id: int
    compute: bool
    reason: str
    rel_l1: float | None = None
    acc: float | None = None


# ----------------------------------------------------------------------------- config


@dataclass
class NoCacheConfig:
    """`none`: nothing to set; every chunk is computed at every forward."""

    def __post_init__(self) -> None:
        check_options(self)


@dataclass
class ReuseConfig:
    """What every step-reusing policy shares: the threshold, the warmup and how a reused update is formed.

    reuse: "displacement" adds the last computed Euler step v*dt_old as is (the published rule);
        "velocity" adds the cached v times this step's dt; "extrapolate" adds v(t)*dt with v(t) extended
        linearly in t from the chunk's last two computed velocities (the velocity rule until it has two).
    extrapolate_max_change: "extrapolate" only while the last two computed velocities agree, i.e. their
        relative change mean|v1 - v0| / mean|v1| is at most this; otherwise the velocity rule.
    extrapolate_max_scale: the extrapolated velocity's size mean|v(t)| is clamped to this multiple of the last
        computed one's mean|v1| (the step is scaled down, its direction kept), so a reused step never blows up.
    """

    rel_l1_thresh: float = option(0.015, "Reuse while the accumulated relative L1 distance stays below this (0 = never reuse).", low=0)
    warmup_steps: int = option(5, "Steps always computed: each chunk's first (flowcache) or the run's first forwards (teacache).", kind=int, low=0)
    reuse: str = option("displacement", "Reused update: the last displacement, the cached velocity x dt, or the velocity extrapolated in t.", kind=str, choices=REUSE_MODES)
    extrapolate_max_change: float = option(0.25, "extrapolate: fall back to the velocity rule when the last two computed velocities differ by more than this (relative L1).", low=0)
    extrapolate_max_scale: float = option(1.25, "extrapolate: clamp the extrapolated velocity's size to this multiple of the last computed one's.", low=1)

    def __post_init__(self) -> None:
        check_options(self)


# ----------------------------------------------------------------------------- distance


def rel_l1(feature: Tensor, prev: Tensor) -> float:
    """mean|f - f_prev| / (mean|f_prev| + 1e-8), in float32. One of the few host syncs of the policies (with the extrapolation guard)."""
    f, p = feature.float(), prev.float()
    if f.shape != p.shape:
        raise ValueError(f"feature shape {tuple(f.shape)} differs from the previous {tuple(p.shape)}")
    return ((f - p).abs().mean() / (p.abs().mean() + 1e-8)).item()


# ----------------------------------------------------------------------------- base


class CachePolicy:
    """Base of every policy: cached updates per chunk id, shared reuse rule (`ReuseConfig.reuse`).

    Subclasses set `Config`, implement `decide` (pure) and extend `update`, `drop`, `reset` for their own state.
    `feature` names the chunk feature `decide` compares (the family computes it); None: no feature needed.
    """

    name: ClassVar[str] = "base"
    Config: ClassVar[type] = ReuseConfig
    feature: ClassVar[str | None] = "input_embedding"

    def __init__(self, config=None) -> None:
        self.config = config if config is not None else self.Config()
        # how a reused update is formed: the config's `reuse` option where it declares one, else the published rule
        self.reuse = self.config.reuse if "reuse" in option_fields(type(self.config)) else "displacement"
        self._velocity: dict[int, Tensor] = {}   # chunk id -> v of its last computed step
        self._delta: dict[int, Tensor] = {}      # chunk id -> v*dt of its last computed step
        self._t_last: dict[int, float] = {}      # chunk id -> t of its last computed step ("extrapolate")
        self._previous: dict[int, tuple[float, Tensor]] = {}  # chunk id -> (t, v) of the computed step before it

    def decide(self, steps: list[ChunkStep]) -> list[ChunkDecision]:
        raise NotImplementedError

    def reused_delta(self, step: ChunkStep) -> Tensor:
        """The update to add to x for a chunk this forward reuses."""
        cid = step.chunk_id
        if cid not in self._delta:
            raise RuntimeError(f"chunk {cid} is reused before any computed step (policy bug)")
        if self.reuse == "velocity":
            return self._velocity[cid] * step.dt
        if self.reuse == "extrapolate":
            return self._extrapolated(cid, step.t) * step.dt
        return self._delta[cid]

    def reused_velocity(self, step: ChunkStep) -> Tensor:
        """The model output to step with for a chunk this forward reuses, for families whose own solver turns
        outputs into updates (multistep UniPC): the last computed output ("displacement", "velocity"), or the
        output extended in t from the last two ("extrapolate")."""
        cid = step.chunk_id
        if cid not in self._velocity:
            raise RuntimeError(f"chunk {cid} is reused before any computed step (policy bug)")
        if self.reuse == "extrapolate":
            return self._extrapolated(cid, step.t)
        return self._velocity[cid]

    def _extrapolated(self, cid: int, t: float) -> Tensor:
        """v(t) on the line through the chunk's last two computed (t, v), guarded: the last velocity as is when
        there is one point only or the two disagree (relative change > extrapolate_max_change); the result's
        size clamped to extrapolate_max_scale x the last velocity's."""
        v1 = self._velocity[cid]
        if cid not in self._previous or self._previous[cid][0] == self._t_last[cid]:
            return v1
        (t0, v0), t1 = self._previous[cid], self._t_last[cid]
        size1 = v1.abs().mean()
        change = (v1 - v0).abs().mean() / (size1 + 1e-12)
        if float(change) > self.config.extrapolate_max_change:
            return v1
        v = v1 + (v1 - v0) * ((t - t1) / (t1 - t0))  # the line through (t0, v0) and (t1, v1) at t
        cap = self.config.extrapolate_max_scale * size1
        size = v.abs().mean()
        if float(size) > float(cap):
            v = v * (cap / size)
        return v

    def update(
        self,
        steps: list[ChunkStep],
        decisions: list[ChunkDecision],
        velocities: dict[int, Tensor],
        deltas: dict[int, Tensor],
    ) -> None:
        """After the forward: remember the computed chunks' velocity and applied update."""
        for s, d in zip(steps, decisions, strict=True):
            if d.compute:
                if self.reuse == "extrapolate":
                    if s.chunk_id in self._t_last:
                        self._previous[s.chunk_id] = (self._t_last[s.chunk_id], self._velocity[s.chunk_id])
                    self._t_last[s.chunk_id] = s.t
                self._velocity[s.chunk_id] = velocities[s.chunk_id].detach()
                self._delta[s.chunk_id] = deltas[s.chunk_id].detach()

    def drop(self, chunk_id: int) -> None:
        """The chunk is clean: forget everything about it."""
        self._velocity.pop(chunk_id, None)
        self._delta.pop(chunk_id, None)
        self._t_last.pop(chunk_id, None)
        self._previous.pop(chunk_id, None)

    def reset(self) -> None:
        self._velocity.clear()
        self._delta.clear()
        self._t_last.clear()
        self._previous.clear()

    def tracked_chunks(self) -> set[int]:
        """Chunk ids with state held (for tests and events)."""
        return set(self._velocity) | set(self._delta)


class NoCache(CachePolicy):
    """Computes every chunk at every forward."""

    name = "none"
    Config = NoCacheConfig
    feature = None

    def decide(self, steps: list[ChunkStep]) -> list[ChunkDecision]:
        return [ChunkDecision(s.chunk_id, True, "none") for s in steps]

    def update(self, steps, decisions, velocities, deltas) -> None:  # nothing is ever reused
        return None
