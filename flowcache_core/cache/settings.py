"""A cache request and its resolution: which policy runs, with which options, and the KV budget.

`CacheConfig("flowcache", rel_l1_thresh=0.02)` records what the caller set. `resolve_cache` fills every other
option, in this order (later wins): each config's built-in default < the model bundle's `cache_defaults` <
a config file's `cache_defaults` < the options set. The API and the CLI both resolve through it, so the same
request gives the same run either way.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from flowcache_core.cache.kv_compressor import KVBudgetConfig
from flowcache_core.cache.options import check_value, option_fields
from flowcache_core.cache.policy import CachePolicy
from flowcache_core.cache.registry import POLICIES
from flowcache_core.errors import FlowcacheError
from flowcache_core.schema import shown


def policy_names() -> tuple[str, ...]:
    return tuple(POLICIES)


def all_options() -> dict[str, dataclasses.Field]:
    """Every option of every registered policy and of the KV budget, once each (a name two policies share,
    such as rel_l1_thresh, must mean the same in both)."""
    out: dict[str, dataclasses.Field] = {}
    for cls in [*(p.Config for p in POLICIES.values()), KVBudgetConfig]:
        for name, f in option_fields(cls).items():
            if name in out and out[name].metadata != f.metadata:
                raise TypeError(f"cache option {name!r} is declared twice with different rules ({cls.__name__})")
            out.setdefault(name, f)
    return out


def options_of(policy: str) -> tuple[str, ...]:
    """The options that apply with this policy: its own and the KV budget's."""
    return tuple(option_fields(POLICIES[policy].Config)) + tuple(option_fields(KVBudgetConfig))


def check_policy(policy: Any, name: str = "policy") -> str:
    if policy not in POLICIES:
        raise FlowcacheError(f"{name} {policy!r} is not one of {', '.join(POLICIES)}")
    return policy


class CacheConfig:
    """A cache request: the policy and the options the caller set (None = not set). Values are checked now;
    the rest is filled by `resolve_cache`."""

    def __init__(self, policy: str = "none", **options: Any) -> None:
        self.policy = check_policy(policy)
        known = all_options()
        for k, v in options.items():
            if k not in known:
                raise FlowcacheError(f"cache option {k!r} is unknown (allowed: {', '.join(known)})")
            if v is not None:
                check_value(k, v, known[k].metadata)
        self.options = {k: v for k, v in options.items() if v is not None}

    def __repr__(self) -> str:
        opts = "".join(f", {k}={v!r}" for k, v in self.options.items())
        return f"CacheConfig({self.policy!r}{opts})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CacheConfig) and (self.policy, self.options) == (other.policy, other.options)


@dataclass(frozen=True)
class ResolvedCache:
    """What runs: the policy's name and config, and the KV budget (kv.enabled is False without one)."""

    policy: str
    config: Any  # the policy's Config instance
    kv: KVBudgetConfig

    def make_policy(self) -> CachePolicy:
        return POLICIES[self.policy](self.config)

    def options(self) -> dict[str, Any]:
        """Every option that applies, resolved (for records and JSON)."""
        out = dataclasses.asdict(self.config)
        out.update(dataclasses.asdict(self.kv) if self.kv.enabled else {"total_cache_chunk_nums": None})
        return out

    def describe(self) -> str:
        text = f"cache {self.policy}" + "".join(f", {k} {v:g}" if isinstance(v, float) else f", {k} {v}"
                                                for k, v in dataclasses.asdict(self.config).items())
        if self.kv.enabled:
            k = self.kv
            text += (f", KV budget {k.total_cache_chunk_nums} chunks ({k.compress_strategy}, "
                     f"queries {k.query_granularity}, λ {k.mix_lambda:g})")
        return text


def check_cache_defaults(values: Any, source: str) -> None:
    """A `cache_defaults` object (a model's config.json, a config file): known options with valid values."""
    if values is None:
        return
    path = (f"{source}: " if source else "") + "flowcache.cache_defaults"
    if not isinstance(values, Mapping):
        raise FlowcacheError(f"{path}: expected an object of cache options, got {shown(values)}")
    known = all_options()
    for k, v in values.items():
        if k not in known:
            raise FlowcacheError(f"{path}: key {k!r} is unknown (allowed: {', '.join(known)})")
        check_value(f"{path}.{k}", v, known[k].metadata)


def resolve_cache(request: CacheConfig | None, defaults: list[tuple[str, Mapping[str, Any] | None]] = ()) -> ResolvedCache:
    """Fill the request's unset options: config defaults < each (source, cache_defaults) in order < the request.

    cache_defaults hold options of any policy; those that do not apply to the chosen policy are skipped. A
    request option that does not apply to its policy is an error (it would silently do nothing).
    """
    request = request or CacheConfig()
    applicable = options_of(request.policy)
    for k in request.options:
        if k not in applicable:
            users = [name for name, p in POLICIES.items() if k in option_fields(p.Config)]
            raise FlowcacheError(f"{k} applies to cache {', '.join(users)}, not {request.policy!r}")
    merged: dict[str, Any] = {}
    for source, values in defaults:
        check_cache_defaults(values, source)
        merged.update({k: v for k, v in (values or {}).items() if k in applicable})
    merged.update(request.options)
    cfg_cls = POLICIES[request.policy].Config
    own = option_fields(cfg_cls)
    config = cfg_cls(**{k: v for k, v in merged.items() if k in own})
    kv = KVBudgetConfig(**{k: v for k, v in merged.items() if k in option_fields(KVBudgetConfig)})
    return ResolvedCache(request.policy, config, kv)


def make_policy(request: CacheConfig) -> CachePolicy:
    """The policy a request names, its unset options at the built-in defaults (no model's cache_defaults)."""
    return resolve_cache(request).make_policy()
