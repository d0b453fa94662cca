"""KV policy `sink_window`: the first frames of the video (attention sinks) and the most recent frames.

StreamingLLM keeps the first few tokens, which attention uses as a sink, and a window of recent ones; LongLive
keeps the first generated block as a frame sink beside its local attention window. Here: the tokens of the first
`sink_frames` latent frames of the video (a v2v prefix's included), then as many of the newest clean frames as
the budget holds. It reads no queries and computes no scores, so it costs nothing next to a forward; it forgets
everything between the sink and the window.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from flowcache_core.cache.kv_policy import KVPolicy
from flowcache_core.cache.options import check_options, option

_SINK_FIRST = 1 << 62  # sink tokens rank above every recent one (earliest first)


@dataclass
class SinkWindowConfig:
    """sink_frames: latent frames at the start of the video that are always kept (0: a plain recent window)."""

    sink_frames: int = option(4, "sink_window: latent frames at the video's start that are always kept.", kind=int, low=0)

    def __post_init__(self) -> None:
        check_options(self)


class SinkWindowKV(KVPolicy):
    name = "sink_window"
    Config = SinkWindowConfig

    def unit(self, tokens_per_frame: int, tokens_per_chunk: int) -> int:
        return tokens_per_frame

    def select(self, keys: Tensor, positions: Tensor, queries: Tensor | None, *, tokens_per_frame: int,
               tokens_per_chunk: int, keep: int) -> Tensor:
        pos = positions.t()                                              # (Hkv, L)
        sink = self.config.sink_frames * tokens_per_frame
        rank = pos.where(pos >= sink, _SINK_FIRST - pos)                 # sinks first, then the newest
        return rank.topk(min(keep, pos.shape[1]), dim=-1).indices.sort(dim=-1).values  # (Hkv, keep)
