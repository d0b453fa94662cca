"""Cache settings: each policy's Config validates itself (one-line errors naming field and value), a request is
resolved in one order (built-in < model's cache_defaults < config file < given), and a policy is a plugin."""
import dataclasses

import pytest

from flowcache_core.cache.flowcache import FlowCache, FlowCacheConfig
from flowcache_core.cache.kv_compressor import KVBudgetConfig
from flowcache_core.cache.options import option
from flowcache_core.cache.policy import CachePolicy, ChunkDecision, NoCache
from flowcache_core.cache.registry import POLICIES
from flowcache_core.cache.settings import CacheConfig, all_options, make_policy, resolve_cache
from flowcache_core.cache.teacache import TeaCache
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
    ({"total_cache_chunk_nums": True}, "True"),
    ({"stride": 3}, "'stride'"),
])
def test_bad_values_raise_one_line(kwargs, needle):
    with pytest.raises(FlowcacheError) as e:
        CacheConfig(**kwargs)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg
    assert next(iter(kwargs)) in msg


def test_each_policy_config_validates_itself():
    with pytest.raises(FlowcacheError, match=r"rel_l1_thresh=-1 must be a finite number >= 0"):
        FlowCacheConfig(rel_l1_thresh=-1)
    with pytest.raises(FlowcacheError, match=r"mix_lambda=2 must be a finite number in \[0, 1\]"):
        KVBudgetConfig(mix_lambda=2)


def test_budget_must_exceed_window():
    kv = resolve_cache(CacheConfig("flowcache", total_cache_chunk_nums=4)).kv
    with pytest.raises(FlowcacheError, match=r"total_cache_chunk_nums=4 .*window_size\+1=5") as e:
        kv.validate_for(window_size=4)
    assert "\n" not in str(e.value)
    resolve_cache(CacheConfig(total_cache_chunk_nums=5)).kv.validate_for(window_size=4)
    off = resolve_cache(CacheConfig(total_cache_chunk_nums=None)).kv
    off.validate_for(window_size=4)
    assert not off.enabled


def test_registry_and_defaults():
    assert list(POLICIES) == ["none", "teacache", "flowcache"]
    assert (POLICIES["none"], POLICIES["teacache"], POLICIES["flowcache"]) == (NoCache, TeaCache, FlowCache)
    for name, cls in POLICIES.items():
        policy = make_policy(CacheConfig(name))
        assert type(policy) is cls and isinstance(policy.config, cls.Config)
    r = resolve_cache(CacheConfig("flowcache"))
    assert (r.config.rel_l1_thresh, r.config.warmup_steps, r.config.reuse) == (0.015, 5, "displacement")  # published
    assert (r.kv.enabled, r.kv.mix_lambda) == (False, 0.07)


def test_resolution_order_builtin_model_file_given():
    model = {"rel_l1_thresh": 0.01, "warmup_steps": 4, "reuse": "extrapolate"}
    file = {"warmup_steps": 2}
    r = resolve_cache(CacheConfig("flowcache", reuse="velocity"), [("model", model), ("file", file)])
    assert (r.config.rel_l1_thresh, r.config.warmup_steps, r.config.reuse) == (0.01, 2, "velocity")
    assert resolve_cache(CacheConfig("none"), [("model", model)]).config == POLICIES["none"].Config()


def test_an_option_of_another_policy_is_an_error_not_ignored():
    with pytest.raises(FlowcacheError, match=r"rel_l1_thresh applies to cache teacache, flowcache, not 'none'"):
        resolve_cache(CacheConfig("none", rel_l1_thresh=0.1))
    with pytest.raises(FlowcacheError, match=r"model: flowcache.cache_defaults: key 'stride' is unknown"):
        resolve_cache(CacheConfig("none"), [("model", {"stride": 1})])
    with pytest.raises(FlowcacheError, match=r"model: flowcache.cache_defaults.warmup_steps=-2 must be an integer >= 0"):
        resolve_cache(CacheConfig("flowcache"), [("model", {"warmup_steps": -2})])


# ----------------------------------------------------------------------------- a toy policy as a plugin
@dataclasses.dataclass
class EveryOtherConfig:
    """Compute a chunk on even own steps only (a test policy)."""

    phase: int = option(0, "Which parity of the chunk's step computes.", kind=int, low=0, high=1)

    def __post_init__(self):
        from flowcache_core.cache.options import check_options

        check_options(self)


class EveryOther(CachePolicy):
    name = "every_other"
    Config = EveryOtherConfig
    feature = None

    def decide(self, steps):
        return [ChunkDecision(s.chunk_id, s.entered or s.is_last_step or s.step % 2 == self.config.phase,
                              "toy") for s in steps]


@pytest.fixture
def toy_policy(monkeypatch):
    monkeypatch.setitem(POLICIES, "every_other", EveryOther)  # the one registry line
    return EveryOther


def test_a_new_policy_is_one_class_and_one_registry_line(toy_policy, tiny_bundle_dir, tmp_path):
    from typer.testing import CliRunner

    from flowcache_cli.main import make_app

    assert "phase" in all_options()
    app = make_app()  # flags are read from the registry when the app is built
    assert "--phase" in CliRunner().invoke(app, ["generate", "--help"], env={"COLUMNS": "200"}).output
    out = tmp_path / "toy.mp4"
    log = tmp_path / "toy.jsonl"
    r = CliRunner().invoke(app, ["generate", "--checkpoint-dir", str(tiny_bundle_dir), "--prompt", "a red square",
                                 "--cache", "every_other", "--phase", "1", "--output-path", str(out),
                                 "--json-log", str(log), "--quiet"])
    assert r.exit_code == 0, r.output
    import json

    decisions = [c for line in log.read_text().splitlines() for c in json.loads(line)["chunks"]]
    reused = [c for c in decisions if c["decision"] == "reuse"]
    assert reused and all(c["step"] % 2 == 0 and c["reason"] == "toy" for c in reused)
    bad = CliRunner().invoke(app, ["generate", "--checkpoint-dir", str(tiny_bundle_dir), "--prompt", "a red square",
                                   "--cache", "every_other", "--phase", "2", "--output-path", str(out)])
    assert bad.exit_code == 2 and "--phase=2 must be an integer in [0, 1]" in bad.output
