"""KV-cache compression of the clean chunks (SPEC section 5), pure functions on tensors.

Layouts: keys/values (L, Hkv, hd) of the clean tokens in position order; queries (Lq, Hq, hd) of the
newest computed chunk, after q-norm and RoPE; query head h belongs to KV group h // (Hq // Hkv).

    importance = maxpool7( mean_q softmax_L( max_{q heads of the group} q·k/√d ) )    (Hkv, L)
    redundancy = softmax_L( (k̂_i · Σ_j k̂_j − 1) / L )     mean cosine to the others, O(L·D)  (Hkv, L)
    score      = λ·importance − (1−λ)·redundancy

then per KV head keep the top `budget` tokens ("token"), or the whole frames / chunks with the best
mean score ("frame" / "chunk"). Kept indices come back sorted by position (the published code keeps
them in score order), so the compressed store stays in position order.

Scores match the published `KVCompressor` (mikeallen39/FlowCache, score_weighting_method="no_weight")
to float rounding; the redundancy divides by L, as the published O(L·D) rewrite does (the mean over
L−1 other keys would differ only by a constant factor inside the softmax).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from flowcache_core.cache.options import check_options, option
from flowcache_core.errors import FlowcacheError

TOKEN_QUERIES = 50        # "token" query granularity: the newest 50 queries
POOL_KERNEL = 7
_BLOCK_ELEMENTS = 1 << 26  # logits held at once while computing the importance (256 MB float32)


# ----------------------------------------------------------------------------- scores


def select_queries(queries: Tensor, granularity: str, tokens_per_frame: int) -> Tensor:
    """The newest queries the importance is measured with: (Lq', Hq, hd)."""
    if granularity == "token":
        return queries[-TOKEN_QUERIES:]
    if granularity == "frame":
        return queries[-tokens_per_frame:]
    if granularity == "chunk":
        return queries
    raise FlowcacheError(f"query_granularity={granularity!r} is not one of token, frame, chunk")


def importance_pre_pool(keys: Tensor, queries: Tensor) -> Tensor:
    """mean over queries of softmax over keys of the group-max logits: (Hkv, L) float32.

    float32 K/V: float32 throughout (the published arithmetic). bf16/fp16 K/V (a bf16 model): the logits
    come from a half-precision matmul (float32 accumulation, as the model's own attention computes them) and
    the softmax and the mean are float32; this is what makes an event cheap next to a forward at full scale.
    """
    L, hkv, hd = keys.shape
    lq, hq, _ = queries.shape
    if hq % hkv:
        raise ValueError(f"{hq} query heads do not split into {hkv} KV groups")
    half = keys.dtype in (torch.bfloat16, torch.float16)
    if half:
        k = keys.permute(1, 2, 0)                                       # (Hkv, hd, L)
        q = (queries.to(keys.dtype) * (1.0 / math.sqrt(hd))).reshape(lq, hkv, hq // hkv, hd).permute(1, 2, 0, 3)
    else:
        k = keys.float().permute(1, 2, 0)                               # (Hkv, hd, L)
        q = queries.float().reshape(lq, hkv, hq // hkv, hd).permute(1, 2, 0, 3)  # (Hkv, g, Lq, hd)
    block = max(1, _BLOCK_ELEMENTS // (hq * L) * (2 if half else 1))   # queries per block
    total = torch.zeros(hkv, L, device=keys.device)
    for lo in range(0, lq, block):
        if half:
            logits = torch.matmul(q[:, :, lo:lo + block], k.unsqueeze(1))  # (Hkv, g, b, L), already scaled
            total += torch.softmax(logits.amax(dim=1), dim=-1, dtype=torch.float32).sum(dim=1)
        else:
            logits = torch.matmul(q[:, :, lo:lo + block], k.unsqueeze(1)) / math.sqrt(hd)  # (Hkv, g, b, L)
            total += logits.amax(dim=1).softmax(dim=-1).sum(dim=1)      # (Hkv, L)
    return total / lq


def importance(keys: Tensor, queries: Tensor, kernel_size: int = POOL_KERNEL) -> tuple[Tensor, Tensor]:
    """(pre-pool, max-pooled along tokens) importance, each (Hkv, L)."""
    pre = importance_pre_pool(keys, queries)
    pooled = F.max_pool1d(pre.unsqueeze(0), kernel_size, stride=1, padding=kernel_size // 2).squeeze(0)
    return pre, pooled


def redundancy(keys: Tensor) -> Tensor:
    """softmax over tokens of each key's mean cosine similarity to the others, O(L·D): (Hkv, L)."""
    k = keys.float().transpose(0, 1)                                    # (Hkv, L, hd)
    L = k.shape[1]
    if L == 1:
        return torch.ones(k.shape[0], 1, device=k.device)
    k_hat = k / (k.norm(dim=-1, keepdim=True) + 1e-8)
    mean_sim = ((k_hat @ k_hat.sum(dim=1).unsqueeze(-1)).squeeze(-1) - 1.0) / L  # (Hkv, L)
    return mean_sim.softmax(dim=-1)


def redundancy_dense(keys: Tensor) -> Tensor:
    """The L×L version of `redundancy` (tests only)."""
    k = keys.float().transpose(0, 1)
    k_hat = k / (k.norm(dim=-1, keepdim=True) + 1e-8)
    sim = k_hat @ k_hat.transpose(1, 2)                                 # (Hkv, L, L)
    sim = sim - torch.diag_embed(torch.diagonal(sim, dim1=1, dim2=2))   # zero the self-similarity
    return sim.mean(dim=-1).softmax(dim=-1)


@dataclass(frozen=True)
class Scores:
    """Per-token scores, each (Hkv, L) float32."""

    importance_pre_pool: Tensor
    importance: Tensor
    redundancy: Tensor
    combined: Tensor


@dataclass(frozen=True)
class Selection:
    """indices: (Hkv, keep) token indices per KV head, ascending (= position order)."""

    indices: Tensor
    scores: Scores
    unit_scores: Tensor | None = None     # (Hkv, L // unit) mean score per frame/chunk, None for "token"


# ----------------------------------------------------------------------------- budget config

UNITS = ("token", "frame", "chunk")


@dataclass
class KVBudgetConfig:
    """The KV budget (published names). Off while total_cache_chunk_nums is None; works with any cache policy.

    total_cache_chunk_nums: B_total, at most this many chunks' worth of K/V tokens per layer, window included;
        must exceed the window size (`validate_for`).
    compress_strategy: keep the best "token"s, or whole "frame"s / "chunk"s, per KV head.
    query_granularity: importance queries = the newest chunk's last 50 ("token"), last latent frame ("frame")
        or all ("chunk") queries.
    mix_lambda: score = λ·importance − (1−λ)·redundancy.
    """

    total_cache_chunk_nums: int | None = option(None, "KV budget B_total in chunks per layer, window included (> window size); off if unset.", kind=int, low=1, optional=True, example=6)
    compress_strategy: str = option("token", "KV selection unit.", kind=str, choices=UNITS)
    query_granularity: str = option("chunk", "Importance queries: the newest chunk's last 50 tokens, last frame or all.", kind=str, choices=UNITS)
    mix_lambda: float = option(0.07, "λ: importance vs redundancy, in [0, 1].", low=0, high=1)

    def __post_init__(self) -> None:
        check_options(self)

    @property
    def enabled(self) -> bool:
        return self.total_cache_chunk_nums is not None

    def validate_for(self, window_size: int) -> None:
        """B_total counts every slot, the window's included."""
        b = self.total_cache_chunk_nums
        if b is not None and b <= window_size:
            raise FlowcacheError(f"total_cache_chunk_nums={b} must be at least window_size+1={window_size + 1} "
                                 f"(it counts the {window_size} window chunks too)")

    def compressor(self) -> "KVCompressor":
        return KVCompressor(self.compress_strategy, self.query_granularity, self.mix_lambda)


# ----------------------------------------------------------------------------- selection


@dataclass(frozen=True)
class KVCompressor:
    """Scores clean K/V tokens and picks the ones to keep (SPEC section 5)."""

    strategy: str = "token"
    query_granularity: str = "chunk"
    mix_lambda: float = 0.07
    kernel_size: int = POOL_KERNEL

    def __post_init__(self) -> None:
        KVBudgetConfig(None, self.strategy, self.query_granularity, self.mix_lambda)  # the same rules

    def score(self, keys: Tensor, queries: Tensor, tokens_per_frame: int) -> Scores:
        q = select_queries(queries, self.query_granularity, tokens_per_frame)
        pre, imp = importance(keys, q, self.kernel_size)
        red = redundancy(keys)
        lam = self.mix_lambda
        return Scores(pre, imp, red, imp * lam - red * (1.0 - lam))

    def unit_size(self, tokens_per_frame: int, tokens_per_chunk: int) -> int:
        return {"token": 1, "frame": tokens_per_frame, "chunk": tokens_per_chunk}[self.strategy]

    def select(
        self, keys: Tensor, queries: Tensor, tokens_per_frame: int, tokens_per_chunk: int, budget: int
    ) -> Selection:
        """Indices (Hkv, budget) of the tokens to keep per KV head, ascending."""
        L = keys.shape[0]
        unit = self.unit_size(tokens_per_frame, tokens_per_chunk)
        if not 0 < budget <= L:
            raise ValueError(f"budget {budget} must be in 1..{L} (the clean tokens)")
        if L % unit or budget % unit:
            raise FlowcacheError(
                f"compress_strategy={self.strategy} keeps whole units of {unit} tokens, but the clean "
                f"length {L} or the budget {budget} is not a multiple of it; use compress_strategy=token"
            )
        scores = self.score(keys, queries, tokens_per_frame)
        if unit == 1:
            idx = scores.combined.topk(budget, dim=-1).indices               # (Hkv, budget)
            return Selection(idx.sort(dim=-1).values, scores)
        unit_scores = scores.combined.view(scores.combined.shape[0], L // unit, unit).mean(dim=-1)
        units = unit_scores.topk(budget // unit, dim=-1).indices.sort(dim=-1).values  # (Hkv, n_units)
        idx = (units.unsqueeze(-1) * unit + torch.arange(unit, device=units.device)).flatten(1)  # (Hkv, budget)
        return Selection(idx, scores, unit_scores)


def gather_per_head(x: Tensor, indices: Tensor) -> Tensor:
    """x (L, Hkv, ...) gathered with per-head indices (Hkv, keep) -> (keep, Hkv, ...)."""
    idx = indices.transpose(0, 1)                                       # (keep, Hkv)
    idx = idx.reshape(*idx.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:])
    return x.gather(0, idx.to(x.device))


@dataclass(frozen=True)
class CompressedKV:
    """Kept clean tokens per KV head, in position order.

    keys/values: (keep, Hkv, hd). positions/origin_chunk: (keep, Hkv) int64, each kept token's
    absolute position (its RoPE position, unchanged) and the chunk id it came from.
    """

    keys: Tensor
    values: Tensor
    positions: Tensor
    origin_chunk: Tensor
    selection: Selection


def compress_clean(
    keys: Tensor,
    values: Tensor,
    positions: Tensor,
    origin_chunk: Tensor,
    queries: Tensor,
    *,
    compressor: KVCompressor,
    tokens_per_frame: int,
    tokens_per_chunk: int,
    budget: int,
) -> CompressedKV:
    """Keep `budget` of the L clean tokens per KV head.

    keys/values (L, Hkv, hd) in position order per head; positions/origin_chunk (L,) (never compressed
    yet: the same for every head) or (L, Hkv) (already compressed: per head); queries (Lq, Hq, hd) of
    the newest computed chunk.
    """
    hkv = keys.shape[1]
    if positions.dim() == 1:
        positions = positions.unsqueeze(1).expand(-1, hkv)
    if origin_chunk.dim() == 1:
        origin_chunk = origin_chunk.unsqueeze(1).expand(-1, hkv)
    sel = compressor.select(keys, queries, tokens_per_frame, tokens_per_chunk, budget)
    return CompressedKV(
        keys=gather_per_head(keys, sel.indices),
        values=gather_per_head(values, sel.indices),
        positions=gather_per_head(positions, sel.indices),
        origin_chunk=gather_per_head(origin_chunk, sel.indices),
        selection=sel,
    )
