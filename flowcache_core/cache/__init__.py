"""Cache policies (which chunks a forward computes) and the KV store with its compressor."""
from flowcache_core.cache.policy import POLICIES, CacheConfig, make_policy  # noqa: F401  (load first: flowcache.py/teacache.py subclass its classes)
