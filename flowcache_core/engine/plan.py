"""A generation's plan as plain data: which chunks every forward carries, at which step, seeing which chunks.

A family's plan builder (e.g. models/magi1/schedule.py) lists every forward; the loop executes it. A family may
subclass `Forward` to carry its own per-forward facts (MAGI-1: stage, shortcut interval, nearly-clean blend);
the loop reads only the fields below.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Row:
    """One chunk of one forward."""

    chunk_id: int
    step: int | None  # the chunk's own denoise step; None for a clean row (forwarded only to write its K/V)
    kv_start: int  # first chunk this row attends to (up to chunk_id inclusive)
    t: float | None = None  # noise level at this step (0 = noise, 1 = clean); None for a clean row
    t_next: float | None = None  # noise level after this step's Euler update
    kv_sink: int = 0  # chunks [0, kv_sink) are attended too, whatever kv_start (sink chunks of a local window)

    @property
    def clean(self) -> bool:
        return self.step is None

    @property
    def dt(self) -> float:
        return self.t_next - self.t


@dataclass
class Forward:
    index: int  # forward number (a prefix prefill shares index 0 with the first denoising forward)
    rows: list[Row]  # clean rows first, then the denoising rows oldest -> newest
    prefill: bool = False  # fills the KV store with clean prefix chunks; no denoising row
    emits: list[int] = field(default_factory=list)  # chunks that are clean after this forward

    @property
    def denoising(self) -> list[Row]:
        return [r for r in self.rows if not r.clean]


def kv_horizons(plan: list[Forward]) -> list[int]:
    """For each forward, the first chunk that it or any later forward attends to: K/V before it can go."""
    out, lowest = [0] * len(plan), None
    for i in range(len(plan) - 1, -1, -1):
        for r in plan[i].rows:
            lowest = r.kv_start if lowest is None else min(lowest, r.kv_start)
        out[i] = lowest if lowest is not None else 0
    return out


def kv_sinks(plan: list[Forward]) -> list[int]:
    """For each forward, the sink chunks (Row.kv_sink) it or any later forward attends to: kept by eviction."""
    out, most = [0] * len(plan), 0
    for i in range(len(plan) - 1, -1, -1):
        most = max([most] + [r.kv_sink for r in plan[i].rows])
        out[i] = most
    return out
