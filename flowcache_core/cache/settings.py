"""A cache request and its resolution: which policy runs, with which options, and the KV budget.

`CacheConfig("flowcache", rel_l1_thresh=0.02)` records what the caller set. `resolve_cache` fills every other
option, in this order (later wins): each config's built-in default < the model bundle's `cache_defaults` <
a config file's `cache_defaults` < the options set. The API and the CLI both resolve through it, so the same
request gives the same run either way.

The KV side: the budget (`KVBudgetConfig.total_cache_chunk_nums` in chunks, or `KVMemoryConfig.kv_budget` in
bytes: one budget, so a layer that gives one spelling replaces the other), the KV policy (`kv_policy`, with its
own Config's options) and the storage format (`kv_quant`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from flowcache_core.cache.kv_compressor import KVBudgetConfig
from flowcache_core.cache.kv_memory import KVMemoryConfig, check_one_budget, fmt_bytes, lay_over
from flowcache_core.cache.kv_policy import KVPolicy
from flowcache_core.cache.options import check_value, option_fields
from flowcache_core.cache.policy import CachePolicy
from flowcache_core.cache.registry import KV_POLICIES, KV_QUANTS, POLICIES
from flowcache_core.errors import FlowcacheError
from flowcache_core.schema import shown


def policy_names() -> tuple[str, ...]:
    return tuple(POLICIES)


def kv_option_classes() -> list[type]:
    """The configs of the KV side: the budget (both spellings), the manager's choices, every KV policy's."""
    return [KVBudgetConfig, KVMemoryConfig, *(p.Config for p in KV_POLICIES.values())]


def all_options() -> dict[str, dataclasses.Field]:
    """Every option of every registered policy and of the KV budget, once each (a name two policies share,
    such as rel_l1_thresh, must mean the same in both)."""
    out: dict[str, dataclasses.Field] = {}
    for cls in [*(p.Config for p in POLICIES.values()), *kv_option_classes()]:
        for name, f in option_fields(cls).items():
            if name in out and out[name].metadata != f.metadata:
                raise TypeError(f"cache option {name!r} is declared twice with different rules ({cls.__name__})")
            out.setdefault(name, f)
    return out


def options_of(policy: str) -> tuple[str, ...]:
    """The options that apply with this policy: its own and the KV side's (every KV policy's: which of those apply
    depends on kv_policy, checked by `resolve_cache`)."""
    out = dict.fromkeys(option_fields(POLICIES[policy].Config))
    for cls in kv_option_classes():
        out.update(dict.fromkeys(option_fields(cls)))
    return tuple(out)


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
        check_one_budget(self.options)

    def __repr__(self) -> str:
        opts = "".join(f", {k}={v!r}" for k, v in self.options.items())
        return f"CacheConfig({self.policy!r}{opts})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CacheConfig) and (self.policy, self.options) == (other.policy, other.options)


def _fmt_options(values: dict[str, Any]) -> str:
    return "".join(f", {k} {v:g}" if isinstance(v, float) else f", {k} {v}" for k, v in values.items())


@dataclass(frozen=True)
class ResolvedCache:
    """What runs: the policy's name and config, and the KV side: `kv` (B_total, the published spelling, with the
    flowcache selection options), `memory` (the byte budget, kv_policy, kv_quant) and `kv_policy_config` (the
    chosen KV policy's Config). `budget_on` is False without a budget in either spelling."""

    policy: str
    config: Any  # the policy's Config instance
    kv: KVBudgetConfig
    memory: KVMemoryConfig = field(default_factory=KVMemoryConfig)
    kv_policy_config: Any = None  # the KV policy's Config instance; None: its defaults

    @property
    def budget_on(self) -> bool:
        return self.kv.enabled or self.memory.kv_budget is not None

    def make_policy(self) -> CachePolicy:
        return POLICIES[self.policy](self.config)

    def make_kv_policy(self) -> KVPolicy:
        return KV_POLICIES[self.memory.kv_policy](self.kv_policy_config)

    def make_kv_quant(self):
        return KV_QUANTS[self.memory.kv_quant]()

    def options(self) -> dict[str, Any]:
        """Every option that applies, resolved (for records and JSON)."""
        out = dataclasses.asdict(self.config)
        if self.budget_on:
            out["total_cache_chunk_nums"] = self.kv.total_cache_chunk_nums
            out.update(dataclasses.asdict(self.make_kv_policy().config))
            out.update(kv_budget=self.memory.kv_budget, kv_policy=self.memory.kv_policy)
        else:
            out["total_cache_chunk_nums"] = None
        if self.memory.kv_quant != "none":
            out["kv_quant"] = self.memory.kv_quant
        return out

    def describe(self) -> str:
        text = f"cache {self.policy}" + _fmt_options(dataclasses.asdict(self.config))
        m = self.memory
        if self.budget_on:
            size = (f"{self.kv.total_cache_chunk_nums} chunks" if self.kv.enabled
                    else f"{fmt_bytes(m.budget_bytes)} ({m.kv_budget})")
            kvp = self.make_kv_policy()
            text += f", KV budget {size}, kv_policy {m.kv_policy} ({_fmt_options(dataclasses.asdict(kvp.config))[2:]})"
        if m.kv_quant != "none":
            text += f", KV stored as {m.kv_quant}"
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
        layer = {k: v for k, v in (values or {}).items() if k in applicable}
        check_one_budget(layer, f"{source}: flowcache.cache_defaults: " if source else "")
        lay_over(merged, layer)
    lay_over(merged, request.options)
    kv_policy = KV_POLICIES[merged.get("kv_policy", KVMemoryConfig.kv_policy)]
    kv_own = option_fields(kv_policy.Config)
    for k in request.options:
        users = [name for name, p in KV_POLICIES.items() if k in option_fields(p.Config)]
        if users and k not in kv_own:
            raise FlowcacheError(f"{k} applies to kv_policy {', '.join(users)}, not {kv_policy.name!r}")

    def of(cls: type) -> Any:
        return cls(**{k: v for k, v in merged.items() if k in option_fields(cls)})

    return ResolvedCache(request.policy, of(POLICIES[request.policy].Config), of(KVBudgetConfig),
                         of(KVMemoryConfig), of(kv_policy.Config))


def make_policy(request: CacheConfig) -> CachePolicy:
    """The policy a request names, its unset options at the built-in defaults (no model's cache_defaults)."""
    return resolve_cache(request).make_policy()
