"""The reused update of a skipped chunk: displacement (published), velocity, extrapolate."""
import torch

from flowcache_core.cache.flowcache import FlowCache, FlowCacheConfig
from flowcache_core.cache.policy import ChunkDecision, ChunkStep


def _step(t, dt, step=1):
    return ChunkStep(chunk_id=3, step=step, num_steps=8, t=t, dt=dt, entered=False, feature=torch.zeros(4, 2))


def _compute(policy, t, dt, v):
    s = _step(t, dt)
    policy.update([s], [ChunkDecision(3, True, "threshold", None, 0.0)], {3: v}, {3: v * dt})


def test_extrapolate_is_exact_for_a_velocity_linear_in_t():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 5, generator=g), torch.randn(2, 5, generator=g)
    v = lambda t: a + b * t  # noqa: E731
    p = FlowCache(FlowCacheConfig(reuse="extrapolate", extrapolate_max_change=10.0, extrapolate_max_scale=100.0))  # guard off
    _compute(p, 0.10, 0.05, v(0.10))
    _compute(p, 0.15, 0.05, v(0.15))
    torch.testing.assert_close(p.reused_delta(_step(0.30, 0.07)), v(0.30) * 0.07)
    # the velocity rule keeps the last velocity: wrong by b * (0.30 - 0.15) * dt
    q = FlowCache(FlowCacheConfig(reuse="velocity"))
    _compute(q, 0.10, 0.05, v(0.10))
    _compute(q, 0.15, 0.05, v(0.15))
    torch.testing.assert_close(q.reused_delta(_step(0.30, 0.07)), v(0.15) * 0.07)


def test_extrapolate_needs_two_computed_steps_and_forgets_dropped_chunks():
    p = FlowCache(FlowCacheConfig(reuse="extrapolate"))
    v0 = torch.randn(3)
    _compute(p, 0.2, 0.1, v0)
    torch.testing.assert_close(p.reused_delta(_step(0.3, 0.1)), v0 * 0.1)  # one point: the velocity rule
    _compute(p, 0.3, 0.1, v0 * 2)
    p.drop(3)
    assert 3 not in p.tracked_chunks()
    _compute(p, 0.5, 0.1, v0)  # a new life for id 3: no slope from before the drop
    torch.testing.assert_close(p.reused_delta(_step(0.6, 0.1)), v0 * 0.1)


def test_extrapolate_falls_back_to_the_velocity_rule_when_the_two_steps_disagree():
    p = FlowCache(FlowCacheConfig(reuse="extrapolate", extrapolate_max_change=0.25))
    v0 = torch.ones(4)
    _compute(p, 0.10, 0.01, v0)
    _compute(p, 0.11, 0.01, v0 * 2)  # relative change |v1 - v0| / |v1| = 0.5 > 0.25
    torch.testing.assert_close(p.reused_delta(_step(0.30, 0.02)), v0 * 2 * 0.02)


def test_extrapolate_step_is_clamped_to_a_multiple_of_the_last_velocity():
    p = FlowCache(FlowCacheConfig(reuse="extrapolate", extrapolate_max_change=0.25, extrapolate_max_scale=1.25))
    v0 = torch.tensor([1.0, -1.0, 2.0])
    _compute(p, 0.100, 0.001, v0)
    _compute(p, 0.101, 0.001, v0 * 1.1)  # consistent (change 0.09), but the line reaches 1.1 + 0.1 * 199 far ahead
    d = p.reused_delta(_step(0.300, 0.05))
    torch.testing.assert_close(d, v0 * 1.1 * 1.25 * 0.05)  # same direction, size capped at 1.25 x |v1|
    assert torch.isfinite(d).all()


def test_guard_options_are_validated():
    import pytest

    from flowcache_core.errors import FlowcacheError

    with pytest.raises(FlowcacheError):
        FlowCacheConfig(extrapolate_max_scale=0.5)
    with pytest.raises(FlowcacheError):
        FlowCacheConfig(extrapolate_max_change=-1.0)


def test_generate_runs_a_policy_object_of_ones_own(tiny_bundle_dir):
    """`generate(policy=...)`: the loop asks the given object, not the request's cache, and reuses by its rule."""
    from flowcache_core.api import generate
    from flowcache_core.cache.policy import CachePolicy
    from flowcache_core.cache.settings import CacheConfig
    from flowcache_core.models.magi1.bundle import load_bundle

    class OddStepsReused(CachePolicy):
        feature = None

        def __init__(self):
            super().__init__(FlowCacheConfig(reuse="velocity"))
            self.asked = 0

        def decide(self, steps):
            self.asked += len(steps)
            return [ChunkDecision(s.chunk_id, s.step % 2 == 0 or s.is_last_step, "threshold") for s in steps]

    b = load_bundle(tiny_bundle_dir)
    policy = OddStepsReused()
    kw = dict(bundle=b, seed=0, num_frames=8, num_steps=8, cache=CacheConfig("none"))
    own = generate("a red square", policy=policy, **kw)
    plain = generate("a red square", **kw)
    r = own.record
    chunks = len(r.computed)
    assert policy.asked == chunks * 8 and r.reused == {c: 3 for c in r.computed}  # steps 1, 3, 5 of 8
    assert r.computed == {c: 5 for c in r.computed} and plain.record.reused == {}
    assert not torch.equal(own.latents, plain.latents)
