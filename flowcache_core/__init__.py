"""flowcache: chunk-wise caching and KV-cache compression for autoregressive video diffusion."""
from flowcache_core.errors import FlowcacheError

__all__ = ["FlowcacheError"]
__version__ = "0.1.0"
