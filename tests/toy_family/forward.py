"""The toy generation: the latent state, and what one forward of the plan runs."""
from __future__ import annotations

import torch

from flowcache_core.cache.kv import KVStore
from flowcache_core.engine.loop import ForwardResult
from flowcache_core.engine.plan import Forward, Row

from toy_family.dit import ToyDiT
from toy_family.plan import plan_blocks


class ToyGeneration:
    def __init__(self, model: ToyDiT, noise: torch.Tensor, chunk_frames: int, num_steps: int, fps: int):
        self.model, self.x, self.cf = model, noise.clone(), chunk_frames  # x: (C, T, H, W)
        C, T, H, W = noise.shape
        self.plan = plan_blocks(T // chunk_frames, num_steps)
        self.num_steps, self.fps, self.kv_layers = num_steps, fps, model.num_layers
        self.tokens_per_frame = H * W
        self.tokens_per_chunk = chunk_frames * H * W
        self.blocks = T // chunk_frames
        self.kv_heads, self.kv_head_dim, self.kv_dtype = 1, model.qkv.out_features // 3, torch.float32  # a byte budget

    def chunk(self, c: int) -> torch.Tensor:
        return self.x[:, c * self.cf : (c + 1) * self.cf]

    def feature(self, name: str, c: int) -> torch.Tensor:
        return self.chunk(c).flatten(1).T  # (tokens, C)

    def before_forward(self) -> None:
        pass

    def write_clean(self, f: Forward, rows: list[Row], store: KVStore) -> int:
        for r in rows:
            self.model(self.chunk(r.chunk_id), 1.0, r.chunk_id, r.kv_start, store, write=True)
        return len(rows) * self.tokens_per_chunk

    def forward(self, f: Forward, rows: list[Row], store: KVStore, queries_of: int | None) -> ForwardResult:
        self.write_clean(f, [r for r in rows if r.clean], store)
        velocities, queries = {}, None
        for r in rows:
            if not r.clean:
                v, q = self.model(self.chunk(r.chunk_id), r.t, r.chunk_id, r.kv_start, store, write=True)
                velocities[r.chunk_id] = v
                if r.chunk_id == queries_of:
                    queries = {0: q}
        return ForwardResult(velocities, len(rows) * self.tokens_per_chunk, queries)

    def emit(self, c: int) -> tuple[int, int, torch.Tensor]:
        return c, self.blocks, self.chunk(c).clone()
