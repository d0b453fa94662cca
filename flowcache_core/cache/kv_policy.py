"""KV policies: which clean K/V tokens a full budget keeps. The KV store calls one when a chunk needs room.

Each policy file has a `Config` dataclass (its options, validated on construction) and the policy class; the
registry `KV_POLICIES` (cache/registry.py) maps names to classes, so `--kv-policy` and the option flags come from
the same place as the cache policies'. The interface is one pure function:

    indices = policy.select(keys, positions, queries, tokens_per_frame=..., tokens_per_chunk=..., keep=...)

keys (L, Hkv, hd): the clean tokens (already kept ones and the chunks being merged), per head in position order;
positions (L, Hkv) int64: each token's index in the video (chunk * tokens_per_chunk + offset), so
`positions // tokens_per_frame` is its latent frame; queries (Lq, Hq, hd): the newest computed chunk's (None when
the policy says it needs none). Returns (Hkv, n <= keep) token indices per KV head, ascending. Kept tokens keep
their K/V and RoPE positions as stored; `unit` is the granule a policy keeps (a budget is rounded down to it).
"""
from __future__ import annotations

from typing import ClassVar

from torch import Tensor


class KVPolicy:
    """Base of the KV policies: `name`, `Config`, whether it reads the queries, its unit, `select`."""

    name: ClassVar[str] = ""
    Config: ClassVar[type]
    needs_queries: ClassVar[bool] = False

    def __init__(self, config=None) -> None:
        self.config = config if config is not None else self.Config()

    def unit(self, tokens_per_frame: int, tokens_per_chunk: int) -> int:
        """Tokens a selection keeps together (a budget in tokens is a multiple of it)."""
        return 1

    def select(self, keys: Tensor, positions: Tensor, queries: Tensor | None, *, tokens_per_frame: int,
               tokens_per_chunk: int, keep: int) -> Tensor:
        raise NotImplementedError
