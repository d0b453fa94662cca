"""TeaCache: the fair global baseline (SPEC section 5), and the shared reuse rules of all policies."""
import pytest
import torch

from flowcache_core.cache.policy import ChunkStep, NoCache
from flowcache_core.cache.settings import CacheConfig, make_policy
from flowcache_core.cache.teacache import TeaCache, window_rel_l1

NUM_STEPS = 8


def step(cid, k, feature, entered=False, dt=0.1):
    return ChunkStep(cid, k, NUM_STEPS, t=k / NUM_STEPS, dt=dt, entered=entered, feature=feature)


def run(policy, steps, v=1.0):
    """One forward: decide, apply, update. Returns the decisions and the applied deltas."""
    decisions = policy.decide(steps)
    velocities = {s.chunk_id: torch.full((2,), v) for s, d in zip(steps, decisions) if d.compute}
    deltas = {
        s.chunk_id: velocities[s.chunk_id] * s.dt if d.compute else policy.reused_delta(s)
        for s, d in zip(steps, decisions)
    }
    policy.update(steps, decisions, velocities, deltas)
    return decisions, deltas


def feats(n, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(6, 4, generator=g) + 3.0 for _ in range(n)]


def tea(thr=0.1, warm=0, reuse="displacement"):
    return make_policy(CacheConfig(policy="teacache", rel_l1_thresh=thr, warmup_steps=warm, reuse=reuse))


def test_registry_makes_teacache():
    assert isinstance(tea(), TeaCache)


def test_decide_is_pure():
    p = tea(thr=1.0)
    f = feats(2, 0)
    run(p, [step(0, 0, f[0], entered=True), step(1, 0, f[1], entered=True)])
    steps = [step(0, 1, f[0] * 1.01), step(1, 1, f[1] * 1.01)]
    assert p.decide(steps) == p.decide(steps)


def test_entered_chunk_is_computed_while_others_reuse():
    p = tea(thr=1.0)
    f = feats(3, 1)
    run(p, [step(0, 0, f[0], entered=True), step(1, 0, f[1], entered=True)])
    d, _ = run(p, [step(0, 1, f[0]), step(1, 1, f[1]), step(2, 0, f[2], entered=True)])
    assert [(x.compute, x.reason) for x in d] == [
        (False, "below_threshold"), (False, "below_threshold"), (True, "entered")]


def test_matched_by_chunk_id_when_the_window_slides():
    """Unchanged chunk features under a sliding window give rel 0 (by position they would differ)."""
    p = tea(thr=0.01)
    f = feats(5, 2)
    run(p, [step(c, 0, f[c], entered=True) for c in range(4)])
    d, _ = run(p, [step(c, 1, f[c]) for c in range(1, 4)] + [step(4, 0, f[4], entered=True)])
    assert d[0].rel_l1 == 0.0
    assert [x.compute for x in d] == [False, False, False, True]
    by_position = window_rel_l1([(f[c + 1], f[c]) for c in range(3)])
    assert by_position > 0.1  # what a position-matched comparison would see


def test_global_rel_is_the_mean_over_matched_tokens():
    a, b = feats(2, 3)
    pa, pb = a * 1.1, b * 0.5
    rel = window_rel_l1([(a, pa), (b, pb)])
    num = ((a - pa).abs().sum() + (b - pb).abs().sum()) / (a.numel() + b.numel())
    den = (pa.abs().sum() + pb.abs().sum()) / (a.numel() + b.numel())
    assert rel == pytest.approx((num / den).item(), rel=1e-6)


def test_threshold_zero_computes_every_changed_step():
    p = tea(thr=0.0, warm=1)
    f = feats(2, 4)
    run(p, [step(0, 0, f[0], entered=True), step(1, 0, f[1], entered=True)])
    for k in range(1, NUM_STEPS - 1):
        d, _ = run(p, [step(0, k, f[0] * (1 + 0.01 * k)), step(1, k, f[1] * (1 + 0.01 * k))])
        assert all(x.compute and x.reason == "threshold" and x.rel_l1 > 0 for x in d)


def test_warmup_counts_forwards():
    p = tea(thr=10.0, warm=3)
    f = feats(1, 5)
    reasons = []
    for k in range(5):
        d, _ = run(p, [step(0, k, f[0] * (1 + 0.001 * k), entered=k == 0)])
        reasons.append(d[0].reason)
    assert reasons == ["entered", "warmup", "warmup", "below_threshold", "below_threshold"]


def test_accumulator_resets_on_compute():
    p = tea(thr=0.025)
    f = feats(1, 6)
    run(p, [step(0, 0, f[0], entered=True)])
    out = []
    x = f[0]
    for k in range(1, 6):
        x = x * 1.01  # rel = 0.01 each step
        d, _ = run(p, [step(0, k, x)])
        out.append((d[0].compute, round(d[0].acc, 4)))
    assert out == [(False, 0.01), (False, 0.02), (True, 0.0), (False, 0.01), (False, 0.02)]


def test_own_last_step_always_computed():
    p = tea(thr=10.0)
    f = feats(2, 7)
    run(p, [step(0, NUM_STEPS - 2, f[0], entered=True), step(1, 0, f[1], entered=True)])
    d, _ = run(p, [step(0, NUM_STEPS - 1, f[0]), step(1, 1, f[1])])
    assert [(x.compute, x.reason) for x in d] == [(True, "last_step"), (False, "below_threshold")]


@pytest.mark.parametrize("reuse", ["displacement", "velocity"])
def test_reuse_modes(reuse):
    p = tea(thr=10.0, reuse=reuse)
    f = feats(1, 8)
    _, deltas = run(p, [step(0, 0, f[0], entered=True, dt=0.1)], v=2.0)
    assert torch.allclose(deltas[0], torch.full((2,), 0.2))
    d, deltas = run(p, [step(0, 1, f[0], dt=0.3)], v=99.0)
    assert not d[0].compute
    want = 0.2 if reuse == "displacement" else 0.6
    assert torch.allclose(deltas[0], torch.full((2,), want))


def test_drop_and_reset_forget_chunks():
    p = tea()
    f = feats(2, 9)
    run(p, [step(0, 0, f[0], entered=True), step(1, 0, f[1], entered=True)])
    p.drop(0)
    assert p.tracked_chunks() == {1}
    p.reset()
    assert p.tracked_chunks() == set()


def test_nocache_computes_everything():
    p = NoCache()
    f = feats(2, 10)
    d, _ = run(p, [step(0, 3, f[0]), step(1, 0, f[1], entered=True)])
    assert [(x.compute, x.reason) for x in d] == [(True, "none"), (True, "none")]
