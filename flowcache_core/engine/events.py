"""What a run reports: one `ForwardEvent` per forward and one `ChunkEmitted` per clean chunk (through `on_event`),
and a `RunRecord` of the whole run. The core never prints; the CLI renders these."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ChunkRecord:
    id: int
    step: int
    t: float
    decision: str  # "compute" | "reuse"
    reason: str
    rel_l1: float | None
    acc: float | None


@dataclass
class ForwardEvent:
    forward: int
    chunks: list[ChunkRecord]
    tokens_forwarded: int
    kv_used: int
    kv_budget: int | None
    seconds: float
    total_forwards: int

    def to_json(self) -> dict:
        return {
            "forward": self.forward,
            "chunks": [vars(c) for c in self.chunks],
            "tokens_forwarded": self.tokens_forwarded,
            "kv": {"used": self.kv_used, "budget": self.kv_budget},
        }


@dataclass
class UnknownWords:
    """Sent once before the first forward when the model's text encoder has a closed vocabulary (the default
    model's word encoder: `unknown_words(prompt)`) and the prompt has words outside it: they do not steer the video."""

    words: list[str]


@dataclass
class ChunkEmitted:
    index: int  # output chunk index (0 = first chunk after the prefix)
    chunk_id: int
    total: int  # chunks this run emits


@dataclass
class RunRecord:
    """What a run did: per chunk computed/skipped forwards, totals, time."""

    computed: dict[int, int] = field(default_factory=dict)
    reused: dict[int, int] = field(default_factory=dict)
    forwards: int = 0
    tokens_forwarded: int = 0
    seconds: float = 0.0
    peak_memory_bytes: int = 0
    compressions: int = 0
    kv_tokens: list[int] = field(default_factory=list)  # "cond" tokens per layer after each forward

    @property
    def chunk_forwards(self) -> int:
        return sum(self.computed.values()) + sum(self.reused.values())

    @property
    def computed_chunk_forwards(self) -> int:
        return sum(self.computed.values())

    @property
    def ideal_speedup(self) -> float:
        c = self.computed_chunk_forwards
        return self.chunk_forwards / c if c else 1.0
