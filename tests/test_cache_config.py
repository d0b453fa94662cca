"""CacheConfig validates itself with one-line FlowcacheError messages naming the bad value."""
import pytest

from flowcache_core.cache.policy import POLICIES, CacheConfig, make_policy
from flowcache_core.errors import FlowcacheError


@pytest.mark.parametrize("kwargs,needle", [
    ({"policy": "magic"}, "'magic'"),
    ({"reuse": "residual"}, "'residual'"),
    ({"compress_strategy": "pixel"}, "'pixel'"),
    ({"query_granularity": "scene"}, "'scene'"),
    ({"rel_l1_thresh": -0.1}, "-0.1"),
    ({"rel_l1_thresh": float("nan")}, "nan"),
    ({"rel_l1_thresh": "0.1"}, "'0.1'"),
    ({"warmup_steps": -1}, "-1"),
    ({"warmup_steps": 2.5}, "2.5"),
    ({"mix_lambda": 1.5}, "1.5"),
    ({"mix_lambda": -0.01}, "-0.01"),
    ({"total_cache_chunk_nums": 0}, "total_cache_chunk_nums=0"),
])
def test_bad_values_raise_one_line(kwargs, needle):
    with pytest.raises(FlowcacheError) as e:
        CacheConfig(**kwargs)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg
    assert next(iter(kwargs)) in msg


def test_budget_must_exceed_window():
    cfg = CacheConfig(policy="flowcache", total_cache_chunk_nums=4)
    with pytest.raises(FlowcacheError, match=r"total_cache_chunk_nums=4 .*window_size\+1=5") as e:
        cfg.validate_for(window_size=4)
    assert "\n" not in str(e.value)
    CacheConfig(total_cache_chunk_nums=5).validate_for(window_size=4)
    CacheConfig(total_cache_chunk_nums=None).validate_for(window_size=4)


def test_defaults_and_registry():
    cfg = CacheConfig()
    assert (cfg.policy, cfg.mix_lambda, cfg.compress) == ("none", 0.07, False)
    assert list(POLICIES) == ["none", "teacache", "flowcache"]
    for name, cls in POLICIES.items():
        policy = make_policy(CacheConfig(policy=name))
        assert type(policy) is cls and policy.config.policy == name
