"""The one registry of cache policies: name -> policy class (its `Config` dataclass holds its options).

The core's factory, the CLI's `--cache` choices and its option flags, the sweep and the progress view all read
it. A new policy is one file in this folder plus one line here.
"""
from __future__ import annotations

from flowcache_core.cache.flowcache import FlowCache
from flowcache_core.cache.policy import CachePolicy, NoCache
from flowcache_core.cache.teacache import TeaCache

POLICIES: dict[str, type[CachePolicy]] = {
    "none": NoCache,
    "teacache": TeaCache,
    "flowcache": FlowCache,
}
