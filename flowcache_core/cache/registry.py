"""The one registry of cache policies: name -> policy class (its `Config` dataclass holds its options).

The core's factory, the CLI's `--cache` choices and its option flags, the sweep and the progress view all read
it. A new policy is one file in this folder plus one line here. The same holds for the KV memory manager's parts:
`KV_POLICIES` (what a full KV budget keeps, `--kv-policy`) and `KV_QUANTS` (how K/V are stored, `--kv-quant`).
"""
from __future__ import annotations

from flowcache_core.cache.flowcache import FlowCache
from flowcache_core.cache.kv_flowcache import FlowcacheKV
from flowcache_core.cache.kv_policy import KVPolicy
from flowcache_core.cache.kv_quant import Int8Quant, NoQuant
from flowcache_core.cache.kv_sink_window import SinkWindowKV
from flowcache_core.cache.policy import CachePolicy, NoCache
from flowcache_core.cache.teacache import TeaCache

POLICIES: dict[str, type[CachePolicy]] = {
    "none": NoCache,
    "teacache": TeaCache,
    "flowcache": FlowCache,
}

KV_POLICIES: dict[str, type[KVPolicy]] = {
    "flowcache": FlowcacheKV,
    "sink_window": SinkWindowKV,
}

KV_QUANTS: dict[str, type] = {
    "none": NoQuant,
    "int8": Int8Quant,
}
