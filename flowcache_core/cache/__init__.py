"""Cache policies (which chunks a forward computes) and the KV store with its compressor."""
# policy.py is loaded first: flowcache.py and teacache.py subclass its classes.
from flowcache_core.cache.policy import POLICIES, CacheConfig, make_policy

__all__ = ["POLICIES", "CacheConfig", "make_policy"]
