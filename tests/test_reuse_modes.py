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
    a, b = torch.randn(2, 5), torch.randn(2, 5)
    v = lambda t: a + b * t  # noqa: E731
    p = FlowCache(FlowCacheConfig(reuse="extrapolate"))
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
