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

Cost: the importance is computed in tiles of query rows (x key columns when a row is too long), never as the
whole (queries x keys) logits; the redundancy is O(L·D). An event's memory is O(tile + (Lq + L)·D) per layer.
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
_BLOCK_ELEMENTS = 1 << 26  # logits in one importance tile (all query heads): 128 MB bf16, 256 MB float32


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


def block_shape(lq: int, L: int, heads: int, budget: int) -> tuple[int, int]:
    """(query rows, key columns) of one logits tile holding at most max(budget, heads) logits over all `heads`:
    whole key rows when one fits (queries per tile = budget // (heads·L)), else one query row and key blocks."""
    if heads * L <= budget:
        return min(lq, budget // (heads * L)), L
    return 1, max(1, budget // heads)


def _group_max(qb: Tensor, k: Tensor, g: int) -> Tensor:
    """qb (Hkv, b·g, hd) scaled queries, k (Hkv, l, hd) keys -> (Hkv, b, l) max over the g query heads of a group."""
    s = torch.bmm(qb, k.transpose(1, 2))                                  # (Hkv, b·g, l)
    return s.view(s.shape[0], -1, g, s.shape[-1]).amax(dim=2)


def _row_logsumexp(qb: Tensor, k: Tensor, g: int, bk: int) -> Tensor:
    """log-sum-exp over all keys of each query row's group-max logits, key block by key block: (Hkv, b) float32."""
    mx = sm = None
    for k0 in range(0, k.shape[1], bk):
        m = _group_max(qb, k[:, k0:k0 + bk], g).float()                   # (Hkv, b, bk)
        new = m.amax(dim=-1) if mx is None else torch.maximum(mx, m.amax(dim=-1))
        part = torch.exp(m.sub_(new.unsqueeze(-1))).sum(dim=-1)
        sm = part if sm is None else sm * torch.exp(mx - new) + part
        mx = new
    return mx + torch.log(sm)


def importance_pre_pool(keys: Tensor, queries: Tensor, block_elements: int | None = None) -> Tensor:
    """mean over queries of softmax over keys of the group-max logits: (Hkv, L) float32, in tiles.

    The (queries x keys) logits never exist at once: a tile holds at most `block_elements` logits (query rows x
    key columns x query heads; default `_BLOCK_ELEMENTS`), so the scorer's memory is O(block + (Lq + L)·D). When
    a whole key row fits a tile (the usual case), each query block's group-max tile goes through one softmax
    (the per-query log-sum-exp stays inside that kernel) and its column sums are accumulated: one Q·K pass.
    Otherwise the keys are blocked too: a first pass keeps each query's running max and sum of exp over the key
    blocks (its log-sum-exp), a second recomputes the tiles and accumulates the column sums of exp(logit − lse).

    float32 K/V: float32 throughout (the published arithmetic; equal to `importance_pre_pool_dense`). bf16/fp16
    K/V (a bf16 model): half-precision logits (float32 accumulation inside the matmul, as the model's own
    attention computes them) and probabilities; softmax statistics and column sums in float32.
    """
    L, hkv, hd = keys.shape
    lq, hq, _ = queries.shape
    if hq % hkv:
        raise ValueError(f"{hq} query heads do not split into {hkv} KV groups")
    g = hq // hkv
    dt = keys.dtype if keys.dtype in (torch.bfloat16, torch.float16) else torch.float32
    k = keys.to(dt).transpose(0, 1).contiguous()                          # (Hkv, L, hd)
    q = (queries.to(dt) * (1.0 / math.sqrt(hd))).view(lq, hkv, g, hd).transpose(0, 1).contiguous()  # (Hkv, Lq, g, hd)
    bq, bk = block_shape(lq, L, hq, _BLOCK_ELEMENTS if block_elements is None else block_elements)
    total = torch.zeros(hkv, L, device=keys.device)
    for lo in range(0, lq, bq):
        qb = q[:, lo:lo + bq].flatten(1, 2)                               # (Hkv, b·g, hd), a view
        if bk == L:  # whole rows: one softmax per tile
            total += torch.softmax(_group_max(qb, k, g), dim=-1).sum(dim=1, dtype=torch.float32)
            continue
        lse = _row_logsumexp(qb, k, g, bk).unsqueeze(-1)                  # (Hkv, b, 1)
        for k0 in range(0, L, bk):
            m = _group_max(qb, k[:, k0:k0 + bk], g).float()               # (Hkv, b, bk)
            total[:, k0:k0 + bk] += torch.exp(m.sub_(lse)).sum(dim=1)
    return total / lq


def importance_pre_pool_dense(keys: Tensor, queries: Tensor) -> Tensor:
    """The dense float32 importance (the whole (Hq, Lq, L) logits at once, as the published code): tests only."""
    L, hkv, hd = keys.shape
    lq, hq, _ = queries.shape
    k = keys.float().repeat_interleave(hq // hkv, dim=1)                  # (L, Hq, hd): query head h reads KV h // g
    logits = torch.einsum("qhd,lhd->hql", queries.float(), k) / math.sqrt(hd)  # (Hq, Lq, L)
    return logits.view(hkv, hq // hkv, lq, L).amax(dim=1).softmax(dim=-1).mean(dim=1)


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
    # default "token" (the published code's default is "chunk"; its PhysicsIQ config uses "token"): on the default
    # model's long videos with a budget the three scored the same within 0.6 dB, and on the H100 a "chunk" event
    # costs 49 % of a forward against 1.3 % (docs/PERFORMANCE.md)
    query_granularity: str = option("token", "Importance queries: the newest chunk's last 50 tokens, last frame or all.", kind=str, choices=UNITS)
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
    query_granularity: str = "token"
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
