"""The Wan2.1 / SkyReels-V2 video DiT in plain PyTorch, with diffusers' parameter names and numerics.

Parameter names are the keys of diffusers' `SkyReelsV2Transformer3DModel` (and `WanTransformer3DModel`) state
dicts, so a diffusers checkpoint loads strictly. The model, in one paragraph (facts from diffusers 0.42,
transformer_skyreels_v2.py and transformer_wan.py): latents are patch-embedded (Conv3d 1x2x2) into tokens in
(frame, h, w) order; each latent frame's diffusion timestep (0..1000) gives, through a sinusoid and an MLP, a vector
`temb` and six modulation vectors (shift, scale, gate of self-attention and of the MLP; SkyReels-V2 adds an fps
embedding to them); each layer runs self-attention (q and k RMS-normed across all heads, then RoPE over
(frame, h, w) on interleaved pairs) on a modulated LayerNorm with a gate, plain cross-attention to the projected
umT5 text, and a tanh-GELU MLP on a modulated LayerNorm with a gate; a modulated LayerNorm and a linear map end it.
Float32 wherever diffusers computes in float32 whatever the weights' dtype: LayerNorms, modulation (table + the
per-frame projection), residual adds with gates, the timestep MLP; RoPE angles in float64, applied in float32.

Self-attention is block-causal over blocks of `block_frames` latent frames: block b sees blocks <= b (diffusers
builds its mask only when num_frame_per_block > 1, so block_frames 1 is full attention). Given a `WanKV`, a
forward computes only its own blocks and reads earlier chunks' K/V from the KV store; this module knows nothing
about caching policies.
"""
from __future__ import annotations

import bisect
import functools
import math
from dataclasses import dataclass, field, replace

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from flowcache_core.cache.kv import KVAccess
from flowcache_core.models.attention import attend
from flowcache_core.models.wan.config import SKYREELS_V2, WanDiTConfig

# diffusers' _keep_in_fp32_modules: a parameter whose dotted name has one of these parts stays float32.
FP32_PARTS = ("time_embedder", "scale_shift_table", "norm1", "norm2", "norm3")
gelu_tanh = functools.partial(F.gelu, approximate="tanh")


def fps_index(fps: int) -> int:
    """Row of SkyReels-V2's two-row fps embedding: 0 for 16 fps, 1 for any other rate (its pipelines' rule)."""
    return 0 if fps == 16 else 1


# --------------------------------------------------------------------------------------------------------
# What a forward is handed when it uses the KV store
# --------------------------------------------------------------------------------------------------------
@dataclass
class WanKV:
    """How one forward uses the KV store (one video: batch 1).

    Block b of x is chunk `chunk_ids[b]` (increasing ids; gaps allowed: a chunk a cache policy skips this forward
    is attended through the K/V it last wrote). Block b attends to chunks kv_start[b] .. kv_end[b] - 1: those in
    this forward with their fresh K/V, the others from the store. kv_end default: chunk_ids[b] + 1 (block-causal).
    Stored K/V are per layer and chunk, after norm_k and RoPE at their positions: (L, H, hd), L = block tokens.
    """

    access: KVAccess  # the store, the contexts to read (in order) and the one to write
    chunk_ids: list[int]
    kv_start: list[int]  # per block: the first chunk it attends to
    write: list[bool]  # per block: write its K/V of every layer to the store
    queries_of: int | None = None  # a chunk of this forward whose queries the KV compressor will need
    queries: dict[int, torch.Tensor] = field(default_factory=dict)  # filled by forward: layer -> (L, H, hd)
    kv_end: list[int] | None = None  # per block: one past the last chunk it attends to (None: itself)
    kv_sink: list[int] | None = None  # per block: chunks [0, kv_sink[b]) attended too, from the store (a local
    # window's sink chunks: each below kv_start[b] and not in this forward)
    kv_frames: list[tuple[int, int] | None] | None = None  # per block: (sink_end, window_start) latent frames: of
    # the uncompressed chunks it reads, only frames < sink_end or >= window_start are attended (None: all of them)


@dataclass(frozen=True)
class _Group:
    """Blocks [first, last) of this forward whose queries see the same keys: `stored` chunks read from the
    store, then this forward's blocks [lo, hi)."""

    first: int
    last: int
    stored: tuple[int, ...]
    lo: int
    hi: int
    frames: tuple[int, int] | None = None  # (sink_end, window_start): the attended frames of the chunks read


def attention_groups(n: int, causal: bool, kv: WanKV | None) -> list[_Group]:
    """The keys each of this forward's n blocks attends to, as runs of blocks that share them (one attention call
    each): block b sees chunks kv_start[b] .. kv_end[b] - 1 (without a store: blocks <= b, or all if not causal);
    the ones not in this forward come from the store, first (with consecutive ids: the chunks before the first)."""
    groups: list[_Group] = []
    for b in range(n):
        stored, lo, hi, frames = (), 0, (b + 1 if causal else n), None
        if kv is not None:
            frames = kv.kv_frames[b] if kv.kv_frames is not None else None
            ids = kv.chunk_ids
            end = kv.kv_end[b] if kv.kv_end is not None else (ids[b] + 1 if causal else ids[-1] + 1)
            here = set(ids)
            sink = range(min(kv.kv_sink[b], kv.kv_start[b])) if kv.kv_sink is not None else ()
            stored = tuple(c for c in (*sink, *range(kv.kv_start[b], end)) if c not in here)
            lo, hi = bisect.bisect_left(ids, kv.kv_start[b]), bisect.bisect_left(ids, end)
        last = groups[-1] if groups else None
        if last is not None and (last.stored, last.lo, last.hi, last.frames) == (stored, lo, hi, frames):
            groups[-1] = replace(last, last=b + 1)
        else:
            groups.append(_Group(b, b + 1, stored, lo, hi, frames))
    return groups


# --------------------------------------------------------------------------------------------------------
# Positions and time
# --------------------------------------------------------------------------------------------------------
def rope_cos_sin(head_dim: int, frames: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """frames: (F,) latent-frame positions -> cos, sin (F*h*w, head_dim/2) float32, one angle per pair of dims.

    The head dim splits into frame, h and w parts (h and w: 2*(hd//6) dims each, the frame the rest), each with
    frequencies 10000^(-2i/d) over its own d. Angles, cos and sin in float64 as diffusers' table, then float32;
    positions past its 1024 rows are computed the same way.
    """
    d_hw = 2 * (head_dim // 6)
    dev = frames.device

    def axis(pos: torch.Tensor, d: int) -> tuple[torch.Tensor, torch.Tensor]:  # (n,) -> cos, sin (n, d/2)
        inv_freq = 1.0 / (10000.0 ** (torch.arange(0, d, 2, dtype=torch.float64, device=dev) / d))
        angle = torch.outer(pos.to(torch.float64), inv_freq)
        return angle.cos().float(), angle.sin().float()

    n = frames.shape[0]
    per_axis = (axis(frames, head_dim - 2 * d_hw), axis(torch.arange(h, device=dev), d_hw),
                axis(torch.arange(w, device=dev), d_hw))

    def grid(i: int) -> torch.Tensor:  # 0: cos, 1: sin -> (F*h*w, hd/2), [frame | h | w] parts per token
        f_, h_, w_ = (a[i] for a in per_axis)
        parts = [f_[:, None, None].expand(n, h, w, -1), h_[None, :, None].expand(n, h, w, -1),
                 w_[None, None].expand(n, h, w, -1)]
        return torch.cat(parts, dim=-1).reshape(n * h * w, head_dim // 2)

    return grid(0), grid(1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, S, H, hd): rotate each pair (x[2i], x[2i+1]) by its angle; float32 math, result in x's dtype."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)  # (B, S, H, hd/2) each
    c, s = cos[:, None], sin[:, None]  # (S, 1, hd/2) float32: bf16 * f32 computes in f32, as diffusers
    return torch.stack([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1).flatten(-2).to(x.dtype)


def timestep_sinusoid(t: torch.Tensor, dim: int, class_name: str) -> torch.Tensor:
    """(N,) timesteps -> (N, dim) [cos | sin]. SkyReels-V2 computes it in float64, Wan in float32 (other code)."""
    half = dim // 2
    if class_name == SKYREELS_V2:
        freqs = 1.0 / 10000 ** (torch.arange(half, dtype=torch.float64, device=t.device) / half)
        args = torch.outer(t.to(torch.float64), freqs)  # (N, half)
    else:
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def _norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm without affine, float32 out (diffusers' FP32LayerNorm)."""
    return F.layer_norm(x.float(), (x.shape[-1],), eps=eps)


# --------------------------------------------------------------------------------------------------------
# Building blocks (module names follow diffusers' key names)
# --------------------------------------------------------------------------------------------------------
class TwoLinear(nn.Module):
    """linear_1 -> act -> linear_2: diffusers' TimestepEmbedding (SiLU) and PixArtAlphaTextProjection (tanh-GELU)."""

    def __init__(self, dim_in: int, dim: int, act):
        super().__init__()
        self.linear_1, self.linear_2, self.act = nn.Linear(dim_in, dim), nn.Linear(dim, dim), act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


class _Proj(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out)


class FeedForward(nn.Module):
    """diffusers' FeedForward layout: net.0.proj, activation, net.2 (net.1 is its dropout: no weights)."""

    def __init__(self, dim_in: int, hidden: int, dim_out: int, act):
        super().__init__()
        self.net = nn.ModuleList([_Proj(dim_in, hidden), nn.Identity(), nn.Linear(hidden, dim_out)])
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net[2](self.act(self.net[0].proj(x)))


class ConditionEmbedder(nn.Module):
    def __init__(self, cfg: WanDiTConfig):
        super().__init__()
        D = cfg.dim
        self.time_embedder = TwoLinear(cfg.freq_dim, D, F.silu)
        self.time_proj = nn.Linear(D, 6 * D)
        self.text_embedder = TwoLinear(cfg.text_dim, D, gelu_tanh)


class Attention(nn.Module):
    """q/k/v/out projections with bias; q and k RMS-normed over all heads together (before the head split)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.to_q, self.to_k, self.to_v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])  # diffusers' [linear, dropout]
        self.norm_q, self.norm_k = nn.RMSNorm(dim, eps=eps), nn.RMSNorm(dim, eps=eps)


class WanBlock(nn.Module):
    def __init__(self, cfg: WanDiTConfig, index: int):
        super().__init__()
        D = cfg.dim
        self.index, self.heads, self.eps = index, cfg.num_attention_heads, cfg.eps
        self.scale_shift_table = nn.Parameter(torch.randn(1, 6, D) / D**0.5)
        self.attn1 = Attention(D, cfg.eps)
        self.attn2 = Attention(D, cfg.eps)
        self.norm2 = nn.LayerNorm(D, eps=cfg.eps) if cfg.cross_attn_norm else None
        self.ffn = FeedForward(D, cfg.ffn_dim, D, gelu_tanh)

    def forward(self, x: torch.Tensor, ctx: "_Forward") -> torch.Tensor:
        B, nf, P, D = x.shape  # (videos, frames, tokens per frame, width)
        H = self.heads
        mod = self.scale_shift_table[:, None] + ctx.modulation.float()  # (B, F, 6, D) float32
        shift, scale, gate, c_shift, c_scale, c_gate = mod[:, :, :, None].unbind(2)  # (B, F, 1, D) each

        # Self-attention: block-causal, earlier chunks from the store when given one.
        a = self.attn1
        h = ((_norm(x, self.eps) * (1 + scale) + shift).to(x.dtype)).flatten(1, 2)  # (B, S, D)
        q = apply_rope(a.norm_q(a.to_q(h)).unflatten(2, (H, -1)), *ctx.rope)  # (B, S, H, hd)
        k = apply_rope(a.norm_k(a.to_k(h)).unflatten(2, (H, -1)), *ctx.rope)
        v = a.to_v(h).unflatten(2, (H, -1))
        o = a.to_out[0](ctx.self_attention(self.index, q, k, v).flatten(2)).view(B, nf, P, D)
        x = (x.float() + o * gate).to(x.dtype)

        # Cross-attention to the text, no mask (padding tokens are attended, as in diffusers).
        c = self.attn2
        h = x if self.norm2 is None else F.layer_norm(
            x.float(), (D,), self.norm2.weight.float(), self.norm2.bias.float(), self.eps).to(x.dtype)
        q = c.norm_q(c.to_q(h.flatten(1, 2))).unflatten(2, (H, -1))  # (B, S, H, hd)
        k = c.norm_k(c.to_k(ctx.text)).unflatten(2, (H, -1))  # (B, Lt, H, hd)
        v = c.to_v(ctx.text).unflatten(2, (H, -1))
        x = x + c.to_out[0](attend(q, k, v, backend=ctx.backend).flatten(2)).view(B, nf, P, D)

        # MLP.
        h = (_norm(x, self.eps) * (1 + c_scale) + c_shift).to(x.dtype)
        return (x.float() + self.ffn(h).float() * c_gate).to(x.dtype)


@dataclass
class _Forward:
    """What every layer of one forward shares (built once in `WanDiT.forward`)."""

    modulation: torch.Tensor  # (B, F, 6, D) per-frame timestep projection (+ fps), model dtype
    text: torch.Tensor  # (B, Lt, D) from embed_text
    rope: tuple[torch.Tensor, torch.Tensor]  # cos, sin (S, hd/2) float32
    groups: list[_Group]
    block_tokens: int  # L = block_frames * h * w
    kv: WanKV | None
    backend: str
    frame_tokens: int = 0  # h * w: tokens of one latent frame (frame-trimmed windows)
    _keep: dict = field(default_factory=dict)  # group index -> the attended key positions (same for every layer)

    def self_attention(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q, k, v (B, S, H, hd) of this forward's blocks -> (B, S, H, hd); writes/records per `kv`."""
        L, kv = self.block_tokens, self.kv
        outs = []
        for i, g in enumerate(self.groups):  # in block order, covering every block once
            ks, vs = [k[:, g.lo * L : g.hi * L]], [v[:, g.lo * L : g.hi * L]]
            if g.stored:
                sk, sv = kv.access.store.read(layer, kv.access.read_ctxs, list(g.stored))  # (Li, H, hd) pieces
                ks = [piece[None].to(q.dtype) for piece in sk] + ks  # stored first, then this forward's
                vs = [piece[None].to(q.dtype) for piece in sv] + vs
            kk = torch.cat(ks, dim=1) if len(ks) > 1 else ks[0]
            vv = torch.cat(vs, dim=1) if len(vs) > 1 else vs[0]
            if g.frames is not None:  # a frame-granular window: drop the key frames it does not see
                if i not in self._keep:
                    self._keep[i] = self._attended(g, [p.shape[0] for p in sk] if g.stored else [], kk.device)
                kk, vv = kk[:, self._keep[i]], vv[:, self._keep[i]]
            outs.append(attend(q[:, g.first * L : g.last * L], kk, vv, backend=self.backend))
        if kv is not None:
            self._record(layer, q, k, v)
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)

    def _attended(self, g: _Group, stored_lengths: list[int], device: torch.device) -> torch.Tensor:
        """Positions of the attended keys in [stored pieces | this forward's blocks lo..hi): the compressed block (if
        read, first) whole; of each chunk, the frames < sink_end or >= window_start."""
        kv, L, P = self.kv, self.block_tokens, self.frame_tokens
        nf = L // P
        store = kv.access.store
        chunks = [c for c in g.stored if c not in store.compressed_chunks] + kv.chunk_ids[g.lo : g.hi]
        sink_end, window_start = g.frames
        keep, offset = [], 0
        if len(stored_lengths) > len([c for c in g.stored if c not in store.compressed_chunks]):  # the block
            keep.append(torch.arange(stored_lengths[0]))
            offset = stored_lengths[0]
        for j, c in enumerate(chunks):
            frame = c * nf + torch.arange(L) // P  # (L,) each key's latent frame
            seen = (frame < sink_end) | (frame >= window_start)
            keep.append(offset + j * L + torch.nonzero(seen).flatten())
        return torch.cat(keep).to(device)

    def _record(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write the K/V of the blocks marked `write`; keep the queries the KV compressor asked for."""
        kv, L = self.kv, self.block_tokens
        several = len(kv.chunk_ids) > 1
        for b, cid in enumerate(kv.chunk_ids):
            if kv.write[b]:
                kb, vb = k[0, b * L : (b + 1) * L], v[0, b * L : (b + 1) * L]  # (L, H, hd)
                if several:  # a view would keep this forward's whole K/V alive in the store
                    kb, vb = kb.clone(), vb.clone()
                kv.access.store.write(layer, kv.access.write_ctx, cid, kb, vb)
        if kv.queries_of in kv.chunk_ids:
            b = kv.chunk_ids.index(kv.queries_of)
            kv.queries[layer] = q[0, b * L : (b + 1) * L].detach()


# --------------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------------
class WanDiT(nn.Module):
    def __init__(self, cfg: WanDiTConfig, attn_backend: str = "auto"):
        super().__init__()
        self.cfg, self.attn_backend = cfg, attn_backend
        D = cfg.dim
        self.patch_embedding = nn.Conv3d(cfg.in_channels, D, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.condition_embedder = ConditionEmbedder(cfg)
        self.blocks = nn.ModuleList([WanBlock(cfg, i) for i in range(cfg.num_layers)])
        self.proj_out = nn.Linear(D, cfg.latent_channels_out * math.prod(cfg.patch_size))
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, D) / D**0.5)
        if cfg.inject_sample_info:
            self.fps_embedding = nn.Embedding(2, D)
            self.fps_projection = FeedForward(D, D, 6 * D, F.silu)

    def set_dtype(self, dtype: torch.dtype) -> "WanDiT":
        """Cast to `dtype`, keeping float32 what diffusers keeps float32 (timestep MLP, modulation tables, norm2)."""
        self.to(dtype)
        for name, p in self.named_parameters():
            if any(part in FP32_PARTS for part in name.split(".")):
                p.data = p.data.float()
        return self

    @property
    def dtype(self) -> torch.dtype:
        return self.blocks[0].attn1.to_q.weight.dtype

    # ---- pieces the engine uses ----
    def embed_text(self, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        """(B, Lt, text_dim) umT5 states -> (B, Lt, D) context, model dtype; once per prompt and run."""
        return self.condition_embedder.text_embedder(encoder_hidden_states.to(self.dtype))

    def embed_patches(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, F, H, W) latents -> (B, F, h*w, D) patch tokens, model dtype."""
        e = self.patch_embedding(x.to(self.dtype))  # (B, D, F, h, w)
        return rearrange(e, "b d f h w -> b f (h w) d").contiguous()  # token-major in memory (see magi1.dit)

    def condition(self, timesteps: torch.Tensor, fps: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, F) timesteps -> temb (B, F, D) and modulation (B, F, 6, D), model dtype (diffusers rounds both)."""
        cfg, ce = self.cfg, self.condition_embedder
        B, nf = timesteps.shape
        sinus = timestep_sinusoid(timesteps.flatten(), cfg.freq_dim, cfg.class_name)  # (B*F, freq_dim)
        temb = ce.time_embedder(sinus.to(ce.time_embedder.linear_1.weight.dtype)).to(self.dtype)  # (B*F, D)
        mod = ce.time_proj(F.silu(temb)).view(B, nf, 6, -1)
        if cfg.inject_sample_info:
            if fps is None:
                raise ValueError("this SkyReels-V2 model embeds the frame rate: pass fps")
            idx = torch.full((B,), fps_index(fps), dtype=torch.long, device=timesteps.device)
            mod = mod + self.fps_projection(self.fps_embedding(idx)).view(B, 1, 6, -1)
        return temb.view(B, nf, -1), mod

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor, *, frame_offset: int = 0,
                block_frames: int, fps: int | None = None, kv: WanKV | None = None,
                causal: bool | None = None, positions: torch.Tensor | None = None) -> torch.Tensor:
        """The model output for x's frames, (B, C, F, H, W) float32: diffusers' flow velocity, noise - clean
        (sigma = timestep / 1000 goes 1 -> 0), so the engine's v (t = 0 noise -> 1 clean) is its negative.

        x (B, C, F, H, W) latents of whole blocks; timesteps (B, F) per frame, 0..1000; context (B, Lt, D) from
        embed_text; frame_offset: RoPE position of x's first frame (positions: (F,) one per frame instead, for
        blocks that are not adjacent); causal: blocks see only earlier blocks
        (default: block_frames > 1, diffusers' rule); fps: frames per second (SkyReels-V2 embeds 16 vs other);
        kv: read earlier chunks' K/V from the store and write this forward's (see `WanKV`).
        """
        B, _, nf, Hl, Wl = x.shape
        _, ph, pw = self.cfg.patch_size
        h, w = Hl // ph, Wl // pw
        n = nf // block_frames
        _check_inputs(x, timesteps, context, block_frames, (ph, pw), kv)
        causal = block_frames > 1 if causal is None else causal

        tokens = self.embed_patches(x)  # (B, F, P, D)
        temb, modulation = self.condition(timesteps, fps)  # (B, F, D), (B, F, 6, D)
        frames = torch.arange(nf, device=x.device) + frame_offset if positions is None else positions.to(x.device)
        ctx = _Forward(modulation, context.to(self.dtype), rope_cos_sin(self.cfg.attention_head_dim, frames, h, w),
                       attention_groups(n, causal, kv), block_frames * h * w, kv, self.attn_backend, h * w)
        for block in self.blocks:
            tokens = block(tokens, ctx)

        shift, scale = (self.scale_shift_table[:, None] + temb[:, :, None]).unsqueeze(3).unbind(2)  # (B, F, 1, D)
        out = self.proj_out((_norm(tokens, self.cfg.eps) * (1 + scale) + shift).to(self.dtype))  # (B, F, P, ph*pw*C)
        return rearrange(out, "b f (hh ww) (ph pw c) -> b c f (hh ph) (ww pw)", hh=h, ph=ph, pw=pw).float()


def _check_inputs(x, timesteps, context, block_frames: int, patch: tuple[int, int], kv: WanKV | None) -> None:
    """The caller's contract (programming errors, so ValueError rather than a user-facing FlowcacheError)."""
    B, _, nf, Hl, Wl = x.shape
    if tuple(timesteps.shape) != (B, nf):
        raise ValueError(f"timesteps {tuple(timesteps.shape)}: expected one per frame, ({B}, {nf})")
    if context.shape[0] != B:
        raise ValueError(f"context batch {context.shape[0]} != latents batch {B}")
    if block_frames < 1 or nf % block_frames:
        raise ValueError(f"{nf} frames are not whole blocks of {block_frames}")
    if Hl % patch[0] or Wl % patch[1]:
        raise ValueError(f"latent size {Hl}x{Wl} is not a multiple of the patch {patch[0]}x{patch[1]}")
    if kv is None:
        return
    n, ids = nf // block_frames, kv.chunk_ids
    if B != 1:
        raise ValueError("the KV store serves one video at a time")
    if not len(ids) == len(kv.kv_start) == len(kv.write) == n:
        raise ValueError(f"{n} blocks but {len(ids)} chunk_ids, {len(kv.kv_start)} kv_start, {len(kv.write)} write")
    if any(b <= a for a, b in zip(ids, ids[1:])):
        raise ValueError(f"chunk_ids {ids} must increase")
    if any(s > c for s, c in zip(kv.kv_start, ids)):
        raise ValueError(f"kv_start {kv.kv_start} must not pass chunk_ids {ids}")
    if kv.kv_end is not None and (len(kv.kv_end) != n or any(e <= c for e, c in zip(kv.kv_end, ids))):
        raise ValueError(f"kv_end {kv.kv_end} must hold one entry per block, each past its chunk id {ids}")
