"""The toy plan: one block at a time (no pipelining, unlike MAGI-1's window of 4), every block attends to every
clean block before it; a finished block is re-run clean at the next block's first forward to write its K/V."""
from __future__ import annotations

from flowcache_core.engine.plan import Forward, Row


def plan_blocks(blocks: int, num_steps: int) -> list[Forward]:
    ts = [(i / num_steps) ** 2 for i in range(num_steps + 1)]  # 0 = noise, 1 = clean
    out: list[Forward] = []
    for b in range(blocks):
        for s in range(num_steps):
            rows = [Row(b - 1, None, b - 1)] if (s == 0 and b > 0) else []
            rows.append(Row(b, s, 0, ts[s], ts[s + 1]))
            out.append(Forward(len(out), rows, emits=[b] if s == num_steps - 1 else []))
    return out
