"""flowcache: chunk-wise caching and KV-cache compression for autoregressive video diffusion.

    from flowcache_core import generate, CacheConfig
    result = generate("a green circle moves right", cache=CacheConfig("flowcache"))   # the model's cache_defaults
    result = generate("a green circle moves right", cache=CacheConfig("flowcache", rel_l1_thresh=0.03))
"""
from flowcache_core.errors import FlowcacheError

__all__ = ["FlowcacheError", "generate", "resolve", "load", "CacheConfig", "GenerationResult"]
__version__ = "0.1.0"


def __getattr__(name: str):  # the API pulls in torch and the model: import it when first asked for
    if name in ("generate", "resolve", "load", "GenerationResult"):
        from flowcache_core import api

        return getattr(api, name)
    if name == "CacheConfig":
        from flowcache_core.cache.settings import CacheConfig

        return CacheConfig
    raise AttributeError(name)
