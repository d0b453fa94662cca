"""The toy DiT: pixels of a block as tokens, one causal attention layer over the blocks in range, a linear head.
It reads and writes K/V through the engine's KVStore, as a real family's DiT does."""
from __future__ import annotations

import torch
from torch import nn

from flowcache_core.cache.kv import KVStore


class ToyDiT(nn.Module):
    def __init__(self, channels: int, dim: int):
        super().__init__()
        self.embed = nn.Linear(channels + 1, dim)  # pixel channels + t
        self.qkv = nn.Linear(dim, 3 * dim)
        self.head = nn.Linear(dim, channels)
        self.num_layers = 1

    def forward(self, x: torch.Tensor, t: float, chunk_id: int, kv_start: int, store: KVStore, write: bool):
        """x (C, F, H, W) one block -> velocity (C, F, H, W), q (L, 1, dim) of its tokens."""
        C, F, H, W = x.shape
        tok = x.permute(1, 2, 3, 0).reshape(F * H * W, C)  # (L, C)
        h = self.embed(torch.cat([tok, torch.full_like(tok[:, :1], t)], 1))  # (L, dim)
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        q, k, v = q[:, None], k[:, None], v[:, None]  # (L, 1, dim): one head
        ks, vs = store.read(0, (KVStore.MAIN,), list(range(kv_start, chunk_id)))
        kk, vv = torch.cat(ks + [k]), torch.cat(vs + [v])
        att = torch.softmax(q[:, 0] @ kk[:, 0].T / kk.shape[-1] ** 0.5, dim=-1) @ vv[:, 0]  # (L, dim)
        if write:
            store.write(0, KVStore.MAIN, chunk_id, k, v)
        out = self.head(att + h)  # (L, C)
        return out.reshape(F, H, W, C).permute(3, 0, 1, 2), q
