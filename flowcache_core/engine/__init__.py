"""The engine: the family-agnostic chunk loop, its plan records, its events, and the family registry.

A model family (flowcache_core/models/<family>/) turns a request into a `Generation` (latent state, plan,
forward function); `loop.run_chunks` walks the plan with a cache policy and a KV store and yields clean chunks.
"""
