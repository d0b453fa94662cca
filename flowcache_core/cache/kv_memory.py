"""The KV memory manager's settings: a budget in bytes, the KV policy that keeps tokens, the storage format.

One budget, two spellings: `total_cache_chunk_nums` (B_total, chunk-equivalents of tokens per layer of the main
context, the published name: `KVBudgetConfig`) or `kv_budget` (bytes of K and V held by the store, every layer and
every per-pass copy counted). A request gives at most one of them (`check_one_budget`); a later settings layer that
gives one replaces an earlier layer's other (`lay_over`).

A byte budget becomes a token budget per layer once the generation is known (`tokens_for_bytes`): the bytes of one
token's K and V in every layer, from the store's dtype, KV heads and head dim and its format (int8 about halves
bf16's), with room set aside for the per-pass window copies a family keeps (MAGI-1's text pass), rounded down to the
KV policy's unit. The store then checks both the tokens and the bytes on every write.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

from flowcache_core.cache.options import check_options, option
from flowcache_core.cache.registry import KV_POLICIES, KV_QUANTS
from flowcache_core.errors import FlowcacheError

UNITS = {"": 1, "b": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
         "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*", re.IGNORECASE)
BUDGET_SPELLINGS = ("total_cache_chunk_nums", "kv_budget")


def parse_bytes(name: str, value: Any) -> int:
    """A size in bytes: an integer, or a string such as '8GiB', '512MiB', '1.5GB', '1000000' -> int (> 0)."""
    n = None
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    elif isinstance(value, str):
        m = _SIZE.fullmatch(value)
        if m and m.group(2).lower() in UNITS:
            n = int(float(m.group(1)) * UNITS[m.group(2).lower()])
    if n is None or n <= 0:
        raise FlowcacheError(f"{name}={value!r} must be a size in bytes: a positive integer or a number with "
                             f"KiB, MiB, GiB, TiB (or kB, MB, GB, TB), e.g. '8GiB', '512MiB', 1000000")
    return n


def fmt_bytes(n: float) -> str:
    """1536 -> '1.5 KiB', 8 << 30 -> '8.0 GiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # pragma: no cover


@dataclass
class KVMemoryConfig:
    """kv_budget: bytes of K/V the store may hold (every layer, window and per-pass copies included); None: no
    byte budget. kv_policy: what a full budget keeps (cache/registry.py `KV_POLICIES`). kv_quant: how K/V are
    stored (`KV_QUANTS`); works with or without a budget."""

    kv_budget: Any = option(None, "KV budget in bytes (K and V of every layer, window included), e.g. 8GiB, 512MiB, "
                                  "1000000; off if unset. Give this or --total-cache-chunk-nums, not both.",
                            kind=str, optional=True, example="8GiB", parse=parse_bytes)
    kv_policy: str = option("flowcache", "What a full KV budget keeps: flowcache (importance - redundancy) or "
                                         "sink_window (the first frames + the most recent).",
                            kind=str, choices=tuple(KV_POLICIES))
    kv_quant: str = option("none", "K/V storage: none (the model's dtype) or int8 (per token and head scales, "
                                   "dequantized before attention; about half of bf16's bytes).",
                           kind=str, choices=tuple(KV_QUANTS))

    def __post_init__(self) -> None:
        check_options(self)

    @property
    def budget_bytes(self) -> int | None:
        return None if self.kv_budget is None else parse_bytes("kv_budget", self.kv_budget)


def check_one_budget(values: Mapping[str, Any], where: str = "") -> None:
    """A request or one settings layer gives the budget in chunks or in bytes, not both."""
    given = [k for k in BUDGET_SPELLINGS if values.get(k) is not None]
    if len(given) == 2:
        raise FlowcacheError(f"{where}total_cache_chunk_nums={values['total_cache_chunk_nums']!r} and "
                             f"kv_budget={values['kv_budget']!r} are one KV budget (chunks or bytes): give one")


def lay_over(merged: dict[str, Any], layer: Mapping[str, Any]) -> None:
    """merged.update(layer), where a budget in one spelling replaces an earlier layer's budget in the other."""
    for spelling in BUDGET_SPELLINGS:
        if layer.get(spelling) is not None:
            for other in BUDGET_SPELLINGS:
                merged.pop(other, None)
    merged.update(layer)


def tokens_for_bytes(budget_bytes: int, label: str, *, layers: int, token_bytes: int, copy_tokens: int, unit: int,
                     tokens_per_chunk: int, window_size: int | None) -> int:
    """The token budget per layer of the main context that keeps the whole store within `budget_bytes`.

    token_bytes: one token's K and V in one layer; copy_tokens: per layer, the most tokens the per-pass window
    copies hold at once; unit: the KV policy's unit. The budget must hold the window and one more chunk."""
    per_token = token_bytes * layers                                    # K and V of one token, every layer
    copies = copy_tokens * per_token
    tokens = max(budget_bytes - copies, 0) // per_token
    tokens -= tokens % unit
    chunks = (window_size or 0) + 1
    if tokens < chunks * tokens_per_chunk:
        need = chunks * tokens_per_chunk * per_token + copies
        kept = f", after {fmt_bytes(copies)} for the per-pass window copies" if copies else ""
        why = f"the window of {window_size} chunks and one more" if window_size else "one chunk"
        raise FlowcacheError(
            f"kv_budget={label} holds {tokens / tokens_per_chunk:.1f} chunks of K/V per layer ({per_token} bytes per "
            f"token over {layers} layers{kept}); {why} need at least {need} bytes ({fmt_bytes(need)})")
    return tokens
