"""KV policy `flowcache`: FlowCache's importance − redundancy selection (the compressor, cache/kv_compressor.py).

score = λ·importance (attention of the newest chunk's queries) − (1−λ)·redundancy (mean cosine to the other keys),
then the best tokens per KV head, or whole frames / chunks by mean score. The published names and rules of its
options are `KVBudgetConfig`'s (the published spelling of the whole budget), declared there once.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from torch import Tensor

from flowcache_core.cache.kv_compressor import KVBudgetConfig, KVCompressor
from flowcache_core.cache.kv_policy import KVPolicy
from flowcache_core.cache.options import check_options, option_fields


def _published(name: str):
    f = option_fields(KVBudgetConfig)[name]
    return dataclasses.field(default=f.default, metadata=f.metadata)


@dataclass
class FlowcacheKVConfig:
    """compress_strategy: keep the best tokens, or whole frames / chunks, per KV head. query_granularity: the
    importance queries (the newest chunk's last 50 tokens, last latent frame, or all). mix_lambda: λ."""

    compress_strategy: str = _published("compress_strategy")
    query_granularity: str = _published("query_granularity")
    mix_lambda: float = _published("mix_lambda")

    def __post_init__(self) -> None:
        check_options(self)


class FlowcacheKV(KVPolicy):
    name = "flowcache"
    Config = FlowcacheKVConfig
    needs_queries = True

    def __init__(self, config: FlowcacheKVConfig | None = None) -> None:
        super().__init__(config)
        c = self.config
        self.compressor = KVCompressor(c.compress_strategy, c.query_granularity, c.mix_lambda)

    @classmethod
    def from_compressor(cls, compressor: KVCompressor) -> "FlowcacheKV":
        policy = cls(FlowcacheKVConfig(compressor.strategy, compressor.query_granularity, compressor.mix_lambda))
        policy.compressor = compressor  # its kernel size too
        return policy

    def unit(self, tokens_per_frame: int, tokens_per_chunk: int) -> int:
        return self.compressor.unit_size(tokens_per_frame, tokens_per_chunk)

    def select(self, keys: Tensor, positions: Tensor, queries: Tensor | None, *, tokens_per_frame: int,
               tokens_per_chunk: int, keep: int) -> Tensor:
        return self.compressor.select(keys, queries, tokens_per_frame, tokens_per_chunk, keep).indices
