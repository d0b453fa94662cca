"""Cache policies (which chunks a forward computes), their registry and settings, and the KV store with its
compressor."""
from flowcache_core.cache.registry import POLICIES
from flowcache_core.cache.settings import CacheConfig, ResolvedCache, resolve_cache

__all__ = ["POLICIES", "CacheConfig", "ResolvedCache", "resolve_cache"]
