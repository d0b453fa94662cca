"""Load a `WanDiT` from a diffusers `transformer/` folder.

The folder holds `config.json` and either `diffusion_pytorch_model.safetensors` or shards named by
`diffusion_pytorch_model.safetensors.index.json` (what `save_pretrained(..., max_shard_size=...)` writes).
Every problem (missing folder or file, bad JSON, an unsupported config value, a missing, unexpected or
wrongly shaped weight) is a one-line FlowcacheError, raised before the model is built where it can be.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from flowcache_core.errors import FlowcacheError
from flowcache_core.models.wan.config import read_transformer_config
from flowcache_core.models.wan.dit import WanDiT
from flowcache_core.models.weights import check_state_dict, read_state_dict

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"  # its index: WEIGHTS_NAME + ".index.json"


def load_wan_transformer(folder: str | os.PathLike, device: str | torch.device = "cpu",
                         dtype: torch.dtype = torch.float32, attn_backend: str = "auto") -> WanDiT:
    """A WanDiT in eval mode with the folder's weights, in `dtype` (float32 where diffusers keeps float32)."""
    d = Path(folder)
    if not d.is_dir():
        raise FlowcacheError(f"transformer folder {str(d)!r} does not exist")
    cfg = read_transformer_config(d / CONFIG_NAME)
    with torch.device("meta"):  # no memory until each tensor's place and dtype are known
        model = WanDiT(cfg, attn_backend=attn_backend)
    model = model.set_dtype(dtype).to_empty(device=device)  # dtypes first: 14B never exists in float32
    sd = read_state_dict(d, single_name=WEIGHTS_NAME, what="transformer folder")  # shards + index, or one file
    check_state_dict(model, sd, f"transformer folder {str(d)!r}")  # same keys, same shapes
    dtypes = {k: v.dtype for k, v in model.state_dict().items()}
    model.load_state_dict({k: v.to(dtypes[k]) for k, v in sd.items()}, strict=True)
    return model.eval()
