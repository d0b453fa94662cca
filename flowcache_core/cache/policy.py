"""Cache policies: the seam between the sampler and the step-skipping rules.

The sampler calls, once per forward (see docs/DESIGN.md):

    decisions = policy.decide(steps)        # pure: one ChunkDecision per ChunkStep, same order
    # forward only the chunks with compute=True -> velocities {chunk_id: v}
    delta = v * s.dt if d.compute else policy.reused_delta(s)
    policy.update(steps, decisions, velocities, deltas)
    policy.drop(chunk_id)                   # once a chunk is clean

Policies never read the model, never print and never count calls to infer a chunk's step: the step,
the step count and dt come in every `ChunkStep`. State is keyed by chunk id and dropped when the
chunk is clean. `POLICIES` (bottom of this file) is the one registry both the core and the CLI use.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from flowcache_core.errors import FlowcacheError

REASONS = ("warmup", "entered", "last_step", "threshold", "below_threshold", "none")
REUSE_MODES = ("displacement", "velocity", "extrapolate")
COMPRESS_STRATEGIES = ("token", "frame", "chunk")
QUERY_GRANULARITIES = ("token", "frame", "chunk")


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


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise FlowcacheError(f"{name}={value!r} is not one of {', '.join(allowed)}")


@dataclass
class CacheConfig:
    """Which cache policy runs and how (SPEC section 5). Validates itself on construction.

    policy: "none" | "teacache" | "flowcache".
    rel_l1_thresh: reuse while the accumulated relative L1 distance stays below this (>= 0).
    warmup_steps: a chunk's first `warmup_steps` own steps (TeaCache: the first forwards) always compute.
    reuse: "displacement" adds the last computed Euler step v*dt_old as is (the published rule);
        "velocity" adds the cached v times this step's dt; "extrapolate" adds v(t)·dt with v(t) extended
        linearly in t from the chunk's last two computed velocities (the velocity rule until it has two).
    total_cache_chunk_nums: KV budget B_total in chunk-equivalents per layer (None = no compression);
        must exceed the window size (`validate_for`).
    compress_strategy: keep the best "token"s, or whole "frame"s / "chunk"s, per KV head.
    query_granularity: importance queries = the newest chunk's last 50 ("token"), last latent frame
        ("frame") or all ("chunk") queries.
    mix_lambda: score = λ·importance − (1−λ)·redundancy, λ in [0, 1].
    """

    policy: str = "none"
    rel_l1_thresh: float = 0.015
    warmup_steps: int = 5
    reuse: str = "displacement"
    total_cache_chunk_nums: int | None = None
    compress_strategy: str = "token"
    query_granularity: str = "chunk"
    mix_lambda: float = 0.07

    def __post_init__(self) -> None:
        _choice("policy", self.policy, tuple(POLICY_NAMES))
        _choice("reuse", self.reuse, REUSE_MODES)
        _choice("compress_strategy", self.compress_strategy, COMPRESS_STRATEGIES)
        _choice("query_granularity", self.query_granularity, QUERY_GRANULARITIES)
        thr = self.rel_l1_thresh
        if isinstance(thr, bool) or not isinstance(thr, (int, float)) or not thr >= 0 or thr == float("inf"):
            raise FlowcacheError(f"rel_l1_thresh={thr!r} must be a finite number >= 0 (e.g. 0.015)")
        warm = self.warmup_steps
        if isinstance(warm, bool) or not isinstance(warm, int) or warm < 0:
            raise FlowcacheError(f"warmup_steps={warm!r} must be an integer >= 0 (e.g. 5)")
        lam = self.mix_lambda
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not 0.0 <= lam <= 1.0:
            raise FlowcacheError(f"mix_lambda={lam!r} must be in [0, 1] (e.g. 0.07)")
        b = self.total_cache_chunk_nums
        if b is not None and (isinstance(b, bool) or not isinstance(b, int) or b < 1):
            raise FlowcacheError(
                f"total_cache_chunk_nums={b!r} must be a positive integer (chunks of KV per layer) or None (off)"
            )

    @property
    def compress(self) -> bool:
        return self.total_cache_chunk_nums is not None

    def validate_for(self, window_size: int) -> None:
        """Checks that need the sampler's window size: B_total counts every slot, window included."""
        b = self.total_cache_chunk_nums
        if b is not None and b <= window_size:
            raise FlowcacheError(
                f"total_cache_chunk_nums={b} must be at least window_size+1={window_size + 1} "
                f"(it counts the {window_size} window chunks too)"
            )


# ----------------------------------------------------------------------------- distance


def rel_l1(feature: Tensor, prev: Tensor) -> float:
    """mean|f - f_prev| / (mean|f_prev| + 1e-8), in float32. The one `.item()` of the policies."""
    f, p = feature.float(), prev.float()
    if f.shape != p.shape:
        raise ValueError(f"feature shape {tuple(f.shape)} differs from the previous {tuple(p.shape)}")
    return ((f - p).abs().mean() / (p.abs().mean() + 1e-8)).item()


# ----------------------------------------------------------------------------- base


class CachePolicy:
    """Base of every policy: cached updates per chunk id, shared reuse rule.

    Subclasses implement `decide` (pure) and extend `update`, `drop`, `reset` for their own state.
    """

    name: ClassVar[str] = "base"

    def __init__(self, config: CacheConfig | None = None) -> None:
        self.config = config if config is not None else CacheConfig(policy=self.name)
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
        if self.config.reuse == "velocity":
            return self._velocity[cid] * step.dt
        if self.config.reuse == "extrapolate":
            v = self._velocity[cid]
            if cid in self._previous and self._previous[cid][0] != self._t_last[cid]:
                (t0, v0), t1 = self._previous[cid], self._t_last[cid]
                v = v + (v - v0) * ((step.t - t1) / (t1 - t0))  # the line through (t0, v0) and (t1, v) at step.t
            return v * step.dt
        return self._delta[cid]

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
                if self.config.reuse == "extrapolate":
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

    def decide(self, steps: list[ChunkStep]) -> list[ChunkDecision]:
        return [ChunkDecision(s.chunk_id, True, "none") for s in steps]

    def update(self, steps, decisions, velocities, deltas) -> None:  # nothing is ever reused
        return None


# ----------------------------------------------------------------------------- registry
# Imported here, after the base classes they subclass. `flowcache_core/cache/__init__.py` should import
# this module first so that importing flowcache.py or teacache.py directly also works.

from flowcache_core.cache.flowcache import FlowCache  # noqa: E402
from flowcache_core.cache.teacache import TeaCache  # noqa: E402

POLICIES: dict[str, type[CachePolicy]] = {"none": NoCache, "teacache": TeaCache, "flowcache": FlowCache}
POLICY_NAMES = tuple(POLICIES)  # the CLI's choices


def make_policy(config: CacheConfig) -> CachePolicy:
    """The policy `config.policy` names, configured by `config`."""
    return POLICIES[config.policy](config)


__all__ = [
    "REASONS", "ChunkStep", "ChunkDecision", "CacheConfig", "CachePolicy", "NoCache",
    "FlowCache", "TeaCache", "POLICIES", "POLICY_NAMES", "make_policy", "rel_l1",
]
