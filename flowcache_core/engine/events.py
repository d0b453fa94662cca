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
    kv_bytes: int | None = None  # K/V bytes the store holds after the forward (every layer and context)
    kv_budget_bytes: int | None = None  # the byte budget; None without one (a budget in chunks, or none)

    def to_json(self) -> dict:
        return {
            "forward": self.forward,
            "chunks": [vars(c) for c in self.chunks],
            "tokens_forwarded": self.tokens_forwarded,
            "kv": {"used": self.kv_used, "budget": self.kv_budget, "bytes": self.kv_bytes,
                   "budget_bytes": self.kv_budget_bytes},
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
    """What a run did: per chunk computed/skipped forwards, totals, time, memory.

    peak_memory_bytes: CUDA's max allocated over the run on a GPU, 0 on the CPU; kv_peak_bytes: the most K/V bytes
    the store held at once. `peak_memory` gives the measured figure of the device the run used."""

    computed: dict[int, int] = field(default_factory=dict)
    reused: dict[int, int] = field(default_factory=dict)
    forwards: int = 0
    tokens_forwarded: int = 0
    seconds: float = 0.0
    peak_memory_bytes: int = 0
    compressions: int = 0
    kv_tokens: list[int] = field(default_factory=list)  # "cond" tokens per layer after each forward
    kv_bytes: list[int] = field(default_factory=list)  # K/V bytes held after each forward (every layer, context)
    kv_peak_bytes: int = 0

    @property
    def peak_memory(self) -> tuple[int, str]:
        """(bytes, what was measured): CUDA max allocated on a GPU, else the KV store's peak."""
        if self.peak_memory_bytes:
            return self.peak_memory_bytes, "CUDA max allocated"
        return self.kv_peak_bytes, "KV store peak"

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
