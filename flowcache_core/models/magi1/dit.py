"""The MAGI-1 video DiT, one implementation for every size (tiny test models, the default model, 4.5B, 24B).

Module and parameter names follow the official checkpoints (`videodit_blocks.layers.{i}.self_attention...`),
so an official state dict loads as is. What the model is, in one paragraph (facts from SandAI-org/MAGI-1):
latents are patch-embedded (Conv3d 1x2x2) into tokens in (t, h, w) order; each chunk has its own timestep,
whose sinusoidal embedding plus a caption-independent "adaLN" vector (null_caption_embedding[-2] or [-1],
projected) makes a per-chunk condition; each layer runs block-causal self-attention (learnable RoPE on the
first 3/4 of each head's dims, GQA) in parallel with per-chunk cross-attention to the caption, interleaves
the two outputs in 8 head groups before one output projection, and uses sandwich norms with tanh gates per
chunk on both residual branches; the MLP is GELU (4.5B) or SwiGLU (24B). There is no shift/scale modulation.

This module knows nothing about caching: it forwards the chunks it is given and reads/writes the K/V store
it is handed (`flowcache_core.cache.kv.KVAccess`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from flowcache_core.cache.kv import KVAccess
from flowcache_core.models.magi1.config import ModelConfig
from flowcache_core.models.attention import attend
from flowcache_core.models.fp8 import Fp8Linear

DTYPES = {"torch.float32": torch.float32, "torch.bfloat16": torch.bfloat16, "torch.float16": torch.float16}


# --------------------------------------------------------------------------------------------------------
# Inputs of one forward
# --------------------------------------------------------------------------------------------------------
@dataclass
class ChunkBatch:
    """The chunks one forward computes. n chunks, each `chunk_width` latent frames of h x w.

    kv_start[j]..chunk_ids[j] (inclusive) is the range of chunks chunk j attends to. Chunks listed here
    attend to each other's current K/V; other chunks in range are read from the KV store.
    """

    x: torch.Tensor  # (n, C, cw, h, w) noisy latents, or (B, n, C, cw, h, w) for B videos (training)
    t: torch.Tensor  # (n,) or (B, n) flow time of each chunk, 0 = noise, 1 = clean
    chunk_ids: list[int]  # absolute chunk index of each row
    kv_start: list[int]  # first chunk each row attends to
    caption: torch.Tensor  # ([B,] n, Lc, Dcap) caption embedding per chunk
    caption_mask: torch.Tensor  # ([B,] n, Lc) 1 = valid token
    caption_dropped: torch.Tensor  # ([B,] n) bool: adaLN vector null[-1] (dropped) instead of null[-2]
    write_kv: list[bool]  # store this row's K/V after the forward
    time_offset: list[int] | None = None  # first RoPE time position per row (default chunk_id * cw)
    shared: list[bool] | None = None  # row visible to other rows (False for the nearly-clean duplicate)
    distill_dt: float | None = None  # shortcut-distill step-size embedding (MAGI-1 distill models)


# --------------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------------
def _layer_norm(x: torch.Tensor, shape, gain: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm in the input's dtype: the kernel accumulates in float32 for bf16/fp16 input too, so a
    half-precision model reads and writes half the bytes (no float32 copy of the activations); the
    float32 params (gain, bias) are rounded to that dtype once per call."""
    return F.layer_norm(x, shape, gain.to(x.dtype), bias.to(x.dtype), eps)


class LayerNorm1p(nn.LayerNorm):
    """LayerNorm whose effective gain is 1 + weight (MAGI-1's apply_layernorm_1p); output in the input's dtype
    (pass float32 for a float32 result)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__(dim, eps=eps)
        nn.init.zeros_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _layer_norm(x, self.normalized_shape, self.weight.float() + 1, self.bias, self.eps)


class LayerNormF32(nn.LayerNorm):
    """Plain LayerNorm with float32 statistics (and float32 params), output in the input's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


class TimestepEmbedder(nn.Module):
    """Sinusoidal embedding of t*1000 (256 dims, [cos | sin]) followed by Linear-SiLU-Linear."""

    def __init__(self, out_dim: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t.float()[:, None] * 1000.0 * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (n, 256)
        w = self.mlp[0].weight
        return self.mlp(emb.to(w.dtype))


class CaptionEmbedder(nn.Module):
    def __init__(self, caption_channels: int, hidden: int, cond_dim: int, max_length: int):
        super().__init__()
        self.y_proj_xattn = nn.Sequential(nn.Linear(caption_channels, hidden), nn.SiLU())
        self.y_proj_adaln = nn.Sequential(nn.Linear(caption_channels, cond_dim))
        self.null_caption_embedding = nn.Parameter(torch.randn(max_length, caption_channels) / caption_channels**0.5)

    def adaln(self, dropped: torch.Tensor) -> torch.Tensor:
        """MAGI-1 feeds adaLN a caption-independent token: null[-2] (kept) or null[-1] (dropped)."""
        rows = torch.where(dropped.bool(), -1, -2) % self.null_caption_embedding.shape[0]
        return self.y_proj_adaln(self.null_caption_embedding[rows].float())  # (n, cond_dim)


class LearnableRoPE(nn.Module):
    """MAGI-1's rotary embedding over (t, h, w): hd//8 learnable bands per axis, applied to 6*(hd//8) dims.

    Positions: t is the absolute latent-frame index; h, w are centred and rescaled so that the grid spans
    what a 16x16 grid would (sqrt(H*W/256)). The rotation is GPT-NeoX style (two halves, not interleaved).
    """

    def __init__(self, head_dim: int):
        super().__init__()
        nb = head_dim // 8
        self.bands = nn.Parameter(1.0 / (10000.0 ** (torch.arange(nb, dtype=torch.float32) / nb)))

    def sin_cos(self, t_pos: torch.Tensor, H: int, W: int) -> tuple[torch.Tensor, torch.Tensor]:
        """t_pos: (T,) absolute frame indices -> sin, cos each (T*H*W, 3*nb), float32."""
        dev = self.bands.device
        rescale = math.sqrt(H * W / 256.0)

        def axis(n: int, ref: float) -> torch.Tensor:
            x = torch.arange(n, dtype=torch.float32, device=dev) - (n - 1) / 2
            return x / (n - 1) * (ref - 1) if n > 1 else x

        h, w = axis(H, H / rescale), axis(W, W / rescale)
        t = t_pos.to(device=dev, dtype=torch.float32)
        grid = torch.stack(torch.meshgrid(t, h, w, indexing="ij"), dim=-1)  # (T, H, W, 3)
        pos = (grid[..., None] * self.bands.float()).reshape(-1, 3 * self.bands.numel())  # (S, 3*nb)
        return torch.sin(pos), torch.cos(pos)

    @staticmethod
    def apply(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
        """x: (..., S, H, hd); sin/cos (..., S, r) float32, 2r <= hd: rotate dims [:r] with [r:2r] (in x's dtype)."""
        r = sin.shape[-1]
        x1, x2 = x[..., :r], x[..., r : 2 * r]
        s, c = sin[..., None, :].to(x.dtype), cos[..., None, :].to(x.dtype)
        if torch.is_grad_enabled() and (x.requires_grad or s.requires_grad):  # training: autograd needs out-of-place
            return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s, x[..., 2 * r :]], dim=-1)
        out = torch.empty_like(x)  # inference: written in place, no temporaries, no concatenation
        o1, o2 = out[..., :r], out[..., r : 2 * r]
        torch.mul(x1, c, out=o1).addcmul_(x2, s, value=-1.0)  # x1·cos − x2·sin
        torch.mul(x2, c, out=o2).addcmul_(x1, s)  # x2·cos + x1·sin
        out[..., 2 * r :] = x[..., 2 * r :]
        return out


class LinearQKV(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        D, hd = cfg.hidden_size, cfg.kv_channels
        self.layer_norm = LayerNormF32(D, eps=cfg.layernorm_epsilon)
        self.q = nn.Linear(D, cfg.num_attention_heads * hd, bias=False)
        self.qx = nn.Linear(D, cfg.num_attention_heads * hd, bias=False)
        self.k = nn.Linear(D, cfg.num_query_groups * hd, bias=False)
        self.v = nn.Linear(D, cfg.num_query_groups * hd, bias=False)


def _project_out(proj: nn.Module, s: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """MAGI-1's output projection of [self | cross] interleaved in 8 head groups (its TP8 layout): s, c (M, Hq·hd)
    -> (M, D). A plain linear splits its weight into self and cross columns and sums the two products (the second
    accumulates onto the first in the matmul) rather than interleaving the activations (two copies of them); an fp8
    layer quantizes its input as one tensor, so it gets the interleaved activations, as in MAGI-1."""
    M = s.shape[0]
    if isinstance(proj, Fp8Linear):
        return proj(torch.stack([s.reshape(M, 8, -1), c.reshape(M, 8, -1)], dim=2).view(M, -1))
    D = proj.weight.shape[0]
    w = proj.weight.view(D, 8, 2, -1)  # (D, group, self/cross, Hq*hd/8)
    return torch.addmm(F.linear(s, w[:, :, 0].reshape(D, -1)), c, w[:, :, 1].reshape(D, -1).t())


class SelfAndCrossAttention(nn.Module):
    """Block-causal self-attention and per-chunk cross-attention from one normed input, one output projection."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        D, hd, Hq, Hkv, eps = cfg.hidden_size, cfg.kv_channels, cfg.num_attention_heads, cfg.num_query_groups, cfg.layernorm_epsilon
        self.Hq, self.Hkv, self.hd = Hq, Hkv, hd
        self.linear_qkv = LinearQKV(cfg)
        self.linear_kv_xattn = nn.Linear(D, 2 * Hkv * hd, bias=False)
        self.linear_proj = nn.Linear(2 * Hq * hd, D, bias=False)
        self.q_layernorm = LayerNorm1p(hd, eps)
        self.k_layernorm = LayerNorm1p(hd, eps)
        self.q_layernorm_xattn = LayerNorm1p(hd, eps)
        self.k_layernorm_xattn = LayerNorm1p(hd, eps)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        D, F_ = cfg.hidden_size, cfg.ffn_hidden_size
        self.glu = cfg.gated_linear_unit
        self.layer_norm = LayerNormF32(D, eps=cfg.layernorm_epsilon)
        self.linear_fc1 = nn.Linear(D, 2 * F_ if self.glu else F_, bias=False)
        self.linear_fc2 = nn.Linear(F_, D, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.linear_fc1(self.layer_norm(x))
        if self.glu:  # SwiGLU: silu(first half) * second half
            a, b = u.chunk(2, dim=-1)
            h = F.silu(a) * b
        else:
            h = F.gelu(u)
        return self.linear_fc2(h)


class AdaModulate(nn.Module):
    def __init__(self, cond_dim: int, hidden: int):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(cond_dim, 2 * hidden))


class TransformerLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_number: int):
        super().__init__()
        self.layer_number = layer_number
        D = cfg.hidden_size
        self.ada_modulate_layer = AdaModulate(cfg.cond_dim, D)
        self.self_attention = SelfAndCrossAttention(cfg)
        self.self_attn_post_norm = LayerNorm1p(D, cfg.layernorm_epsilon)
        self.mlp = MLP(cfg)
        self.mlp_post_norm = LayerNorm1p(D, cfg.layernorm_epsilon)

    def forward(self, x: torch.Tensor, ctx: "_LayerContext") -> torch.Tensor:
        B, n, L, D = x.shape  # (videos, chunks, tokens per chunk, hidden)
        sa = self.self_attention
        Hq, Hkv, hd = sa.Hq, sa.Hkv, sa.hd
        h = sa.linear_qkv.layer_norm(x)  # (B, n, L, D)

        # Self-attention inputs: per-head 1p-LayerNorm then RoPE (absolute positions), in the model's dtype.
        sin, cos = ctx.rope  # (n, L, r) each
        q = LearnableRoPE.apply(sa.q_layernorm(sa.linear_qkv.q(h).view(B, n, L, Hq, hd)), sin, cos)
        k = LearnableRoPE.apply(sa.k_layernorm(sa.linear_qkv.k(h).view(B, n, L, Hkv, hd)), sin, cos)
        v = sa.linear_qkv.v(h).view(B, n, L, Hkv, hd)
        self_out = self._block_causal_attention(q, k, v, ctx)  # (B, n, L, Hq, hd)

        # Cross-attention: each chunk reads its own caption's valid tokens.
        qx = sa.q_layernorm_xattn(sa.linear_qkv.qx(h).view(B * n, L, Hq, hd))
        kvx = sa.linear_kv_xattn(ctx.caption_tokens).view(B * n, -1, Hkv, 2 * hd)  # (B*n, Lc, Hkv, 2hd)
        kx = sa.k_layernorm_xattn(kvx[..., :hd])
        vx = kvx[..., hd:]
        cross_out = attend(qx, kx, vx, mask=ctx.caption_attn_mask, backend=ctx.backend)
        if ctx.caption_any is not None:  # a chunk without caption tokens gets zero cross-attention output
            cross_out = cross_out * ctx.caption_any

        a = _project_out(sa.linear_proj, self_out.reshape(-1, Hq * hd), cross_out.reshape(-1, Hq * hd)).view(B, n, L, D)

        gate_msa, gate_mlp = ctx.gates[self.layer_number]  # (B, n, 1, D) each, in x's dtype
        x = x + self.self_attn_post_norm(a * gate_msa)
        m = self.mlp(x)
        x = x + self.mlp_post_norm(m * gate_mlp)
        return x

    def _block_causal_attention(self, q, k, v, ctx: "_LayerContext") -> torch.Tensor:
        """Row j attends to chunks kv_start[j]..chunk_ids[j]: its own forward's rows first, the store for the rest."""
        b = ctx.batch
        B, n, L, Hq, hd = q.shape
        kv = ctx.kv
        if kv is None:  # everything in range is in this forward
            if ctx.row_spans is not None:  # each row's keys are one contiguous run of rows: no mask needed
                out = torch.empty_like(q)
                for j, (a, e) in enumerate(ctx.row_spans):
                    out[:, j] = attend(q[:, j], k[:, a:e].flatten(1, 2), v[:, a:e].flatten(1, 2), backend=ctx.backend)
                return out
            out = attend(q.reshape(B, n * L, Hq, hd), k.reshape(B, n * L, -1, hd), v.reshape(B, n * L, -1, hd),
                         mask=ctx.dense_mask, backend=ctx.backend)
            return out.view(B, n, L, Hq, hd)
        layer = self.layer_number
        q, k, v = q[0], k[0], v[0]  # the KV store serves one video
        shared = b.shared or [True] * n
        here = {cid: j for j, cid in enumerate(b.chunk_ids) if shared[j]}
        if ctx.queries_of is not None and ctx.queries_of in here:  # for the KV compressor, returned by forward
            ctx.queries[layer] = q[here[ctx.queries_of]].detach()
        out = torch.empty_like(q)
        for j, cid in enumerate(b.chunk_ids):
            ids = range(b.kv_start[j], cid + 1)
            stored = [c for c in ids if c not in here and c != cid]
            ks, vs = kv.store.read(layer, kv.read_ctxs, stored)
            for c in ids:
                if c == cid:
                    ks.append(k[j]); vs.append(v[j])
                elif c in here:
                    ks.append(k[here[c]]); vs.append(v[here[c]])
            kk = torch.cat(ks) if len(ks) > 1 else ks[0]
            vv = torch.cat(vs) if len(vs) > 1 else vs[0]
            out[j] = attend(q[j : j + 1], kk[None].to(q.dtype), vv[None].to(q.dtype), backend=ctx.backend)[0]
        for j, cid in enumerate(b.chunk_ids):
            if b.write_kv[j]:
                kv.store.write(layer, kv.write_ctx, cid, k[j], v[j])
        return out[None]


@dataclass
class _LayerContext:
    """What every layer of one forward shares (computed once in `VideoDiT.forward`)."""

    batch: ChunkBatch
    kv: KVAccess | None
    rope: tuple[torch.Tensor, torch.Tensor]  # sin, cos (n, L, r)
    caption_tokens: torch.Tensor  # (B*n, Lc, D) projected captions, padded
    caption_attn_mask: torch.Tensor  # (B*n, 1, 1, Lc) bool
    caption_any: torch.Tensor | None  # (B*n, 1, 1, 1): 0 for rows without a valid caption token; None: all have one
    dense_mask: torch.Tensor | None  # (n*L, n*L) bool block-causal mask when no store is used
    row_spans: list[tuple[int, int]] | None  # per row, the rows [a, e) it attends to, when contiguous
    gates: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: gate_msa, gate_mlp (B, n, 1, D)
    backend: str
    queries_of: int | None = None  # chunk whose post-norm/RoPE queries the forward returns
    queries: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (L, Hq, hd)


class VideoDiTBlocks(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.layers = nn.ModuleList([TransformerLayer(cfg, i) for i in range(cfg.num_layers)])
        self.final_layernorm = LayerNorm1p(cfg.hidden_size, cfg.layernorm_epsilon)


class FinalLinear(nn.Module):
    def __init__(self, hidden: int, out: int):
        super().__init__()
        self.linear = nn.Linear(hidden, out, bias=False)


# --------------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------------
class VideoDiT(nn.Module):
    def __init__(self, cfg: ModelConfig, attn_backend: str = "auto"):
        super().__init__()
        self.cfg = cfg
        self.attn_backend = attn_backend
        D, p, pt = cfg.hidden_size, cfg.patch_size, cfg.t_patch_size
        self.x_embedder = nn.Conv3d(cfg.in_channels, D, kernel_size=(pt, p, p), stride=(pt, p, p), bias=False)
        self.t_embedder = TimestepEmbedder(cfg.cond_dim)
        self.y_embedder = CaptionEmbedder(cfg.caption_channels, D, cfg.cond_dim, cfg.caption_max_length)
        self.rope = LearnableRoPE(cfg.kv_channels)
        self.videodit_blocks = VideoDiTBlocks(cfg)
        self.final_linear = FinalLinear(D, p * p * pt * cfg.out_channels)

    # Modules MAGI-1 always runs in float32, whatever params_dtype is.
    FP32_MODULES = ("x_embedder", "t_embedder", "y_embedder", "rope", "final_linear")

    def set_dtype(self, dtype: torch.dtype) -> "VideoDiT":
        """Cast to params dtype, keeping the embedders, RoPE bands, final linear and all norms in float32."""
        self.to(dtype)
        for name in self.FP32_MODULES:
            getattr(self, name).float()
        for m in self.modules():
            if isinstance(m, nn.LayerNorm):
                m.float()
        return self

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype (params dtype), read off a linear no fp8 layout touches."""
        return self.videodit_blocks.layers[0].self_attention.linear_kv_xattn.weight.dtype

    # ---- pieces the sampler and cache policies use ----
    def embed_patches(self, x: torch.Tensor) -> torch.Tensor:
        """(n, C, T, h, w) latents -> (n, T*h/p*w/p, D) float32 patch tokens; also the cache policies' feature."""
        x = x.float() * self.cfg.x_rescale_factor
        if self.cfg.half_channel_vae:
            x = torch.cat([x, x], dim=1)
        w = self.x_embedder.weight
        e = F.conv3d(x.to(w.dtype), w, stride=self.x_embedder.stride)  # (n, D, T, H, W)
        # Token-major in memory, not only in shape: the residual stream inherits this layout through every layer,
        # and a channel-major stream makes each residual add a transposed copy and each LayerNorm copy it first.
        return rearrange(e, "n d t h w -> n (t h w) d").float().contiguous()

    def condition(self, t: torch.Tensor, dropped: torch.Tensor, distill_dt: float | None) -> torch.Tensor:
        """(n,) times -> (n, cond_dim): timestep embedding (+ distill step embedding) + caption-independent adaLN."""
        c = self.t_embedder(t)
        if distill_dt is not None:
            c = c + self.t_embedder(torch.full_like(t, float(distill_dt)))
        return c + self.y_embedder.adaln(dropped.to(t.device))

    def forward(self, batch: ChunkBatch, kv: KVAccess | None = None,
                queries_of: int | None = None) -> torch.Tensor | tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Velocity for each chunk row: ([B,] n, C, cw, h, w) float32. With `queries_of` (a chunk id in the batch,
        KV store in use) also {layer: (L, Hq, hd) post-norm/RoPE queries of that chunk}, for the KV compressor."""
        cfg = self.cfg
        single = batch.x.dim() == 5
        xb = batch.x[None] if single else batch.x  # (B, n, C, T, h, w)
        expand = (lambda z: z[None]) if single else (lambda z: z)
        tb, cap, capm, drop = expand(batch.t), expand(batch.caption), expand(batch.caption_mask), expand(batch.caption_dropped)
        B, n, C, T, h, w = xb.shape
        if kv is not None and B != 1:
            raise ValueError("the KV store serves one video at a time")
        p = cfg.patch_size
        H, W = h // p, w // p
        L = T * H * W
        dtype = self.dtype

        x = self.embed_patches(xb.flatten(0, 1)).to(dtype).view(B, n, L, -1)  # (B, n, L, D)
        cond = self.condition(tb.flatten(), drop.flatten(), batch.distill_dt).to(dtype)  # (B*n, Dc)
        offsets = batch.time_offset if batch.time_offset is not None else [c * T for c in batch.chunk_ids]
        dev = self.rope.bands.device
        sc = [self.rope.sin_cos(torch.arange(o, o + T, device=dev), H, W) for o in offsets]
        rope = (torch.stack([a for a, _ in sc]), torch.stack([b for _, b in sc]))  # (n, L, r) each

        # Captions: project once, trimmed to the last column any row uses. (B*n, Lc, D)
        # Training keeps every column and always applies the row mask: reading the mask on the host would stall
        # it until the GPU is idle, every step.
        mask = capm.flatten(0, 1).bool()
        if not self.training:
            used = int(mask.any(0).nonzero().max()) + 1 if bool(mask.any()) else 1
            mask = mask[:, :used]
        used = mask.shape[1]
        caption_tokens = self.y_embedder.y_proj_xattn(cap.flatten(0, 1)[:, :used].float()).to(dtype)
        any_valid = mask.any(1)
        attn_mask = (mask | ~any_valid[:, None])[:, None, None, :]  # rows with no token attend anywhere, then zeroed
        caption_any = any_valid.to(dtype)[:, None, None, None]
        if not self.training and bool(any_valid.all()):
            caption_any = None

        dense_mask, row_spans = None, None
        if kv is None:
            ids = torch.tensor(batch.chunk_ids)
            starts = torch.tensor(batch.kv_start)
            shared = torch.tensor(batch.shared or [True] * n)
            rows = (ids[None, :] >= starts[:, None]) & (ids[None, :] <= ids[:, None]) & shared[None, :]
            rows |= torch.eye(n, dtype=torch.bool)
            spans = []
            for j in range(n):
                sel = rows[j].nonzero().flatten().tolist()
                spans.append((sel[0], sel[-1] + 1) if sel == list(range(sel[0], sel[-1] + 1)) else None)
            row_spans = spans if all(sp is not None for sp in spans) else None
            if row_spans is None:
                dense_mask = rows.repeat_interleave(L, 0).repeat_interleave(L, 1).to(xb.device)  # (n*L, n*L)

        silu_cond = F.silu(cond)
        gates = []
        for layer in self.videodit_blocks.layers:
            g = torch.tanh(layer.ada_modulate_layer.proj(silu_cond).float()).view(B, n, 1, -1)  # (B, n, 1, 2D)
            gm, gf = g.to(dtype).chunk(2, dim=-1)
            gates.append((gm, gf))

        ctx = _LayerContext(batch, kv, rope, caption_tokens, attn_mask, caption_any, dense_mask, row_spans, gates,
                            self.attn_backend, queries_of)
        for layer in self.videodit_blocks.layers:
            x = layer(x, ctx)

        x = self.videodit_blocks.final_layernorm(x.float())  # float32 from here on
        out = self.final_linear.linear(x.to(self.final_linear.linear.weight.dtype)).float()
        v = rearrange(out, "b n (t hh ww) (ph pw c) -> b n c t (hh ph) (ww pw)", t=T, hh=H, ww=W, ph=p, pw=p)
        if cfg.half_channel_vae:
            v = v[:, :, : cfg.out_channels // 2]
        v = v / cfg.x_rescale_factor
        v = v[0] if single else v
        return v if queries_of is None else (v, ctx.queries)


def build_model(cfg: ModelConfig, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                attn_backend: str = "auto", seed: int | None = None) -> VideoDiT:
    """A VideoDiT with MAGI-1-like random init (used for fresh training and random-weight benchmarks)."""
    if seed is not None:
        torch.manual_seed(seed)
    with torch.device(device):
        model = VideoDiT(cfg, attn_backend=attn_backend)
    if str(device) != "meta":
        init_weights(model)
    return model.set_dtype(dtype or DTYPES[cfg.params_dtype])


@torch.no_grad()
def init_weights(model: VideoDiT) -> None:
    """Small-residual init: linears N(0, 1/fan_in), zero 1p-norm gains (gain 1), output projections scaled down."""
    for name, p in model.named_parameters():
        if name.endswith("null_caption_embedding") or name == "rope.bands":
            continue
        if p.dim() >= 2:
            fan_in = p[0].numel()
            nn.init.normal_(p, std=fan_in**-0.5)
        elif name.endswith("bias"):
            nn.init.zeros_(p)
    for layer in model.videodit_blocks.layers:
        layer.self_attention.linear_proj.weight.mul_(0.5)
        layer.mlp.linear_fc2.weight.mul_(0.5)
    nn.init.zeros_(model.final_linear.linear.weight)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
