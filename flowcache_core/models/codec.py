"""Latent codecs: video (3, T, H, W) in [-1, 1] <-> latent (C, T', h, w).

`SpaceToDepthCodec` is the default model's codec: a lossless rearrange of s x s pixels (and t frames) into
channels, times `scale`. The MAGI-1 ViT VAE will register here as "magi_vae".
Both codecs also accept a leading batch dimension: (B, 3, T, H, W) <-> (B, C, T', h, w).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Protocol, runtime_checkable

import numpy as np
import torch
from einops import rearrange
from torch import Tensor

from flowcache_core.errors import FlowcacheError


@runtime_checkable
class LatentCodec(Protocol):
    latent_channels: int
    spatial_downsample: int
    temporal_downsample: int

    def encode(self, video: Tensor) -> Tensor:  # (3, T, H, W) in [-1,1] -> (C, T', h, w), already scaled
        ...

    def decode(self, latent: Tensor) -> Tensor:  # (C, T', h, w) -> (3, T, H, W) in [-1,1]
        ...


# ------------------------------------------------------------------------------------------ space to depth


@dataclass(frozen=True)
class SpaceToDepthConfig:
    spatial: int = 4
    temporal: int = 1
    scale: float = 1.0

    def __post_init__(self):
        for name in ("spatial", "temporal"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise FlowcacheError(f"space_to_depth {name}={v!r} must be an integer >= 1")
        if not (isinstance(self.scale, (int, float)) and np.isfinite(self.scale) and self.scale > 0):
            raise FlowcacheError(f"space_to_depth scale={self.scale!r} must be a finite number > 0")


class SpaceToDepthCodec:
    """Lossless: latent[(c, pt, ph, pw), t, h, w] = scale * video[c, t*pt', h*s+ph, w*s+pw].

    With scale 1.0 the round trip is exact bit for bit; other scales are exact up to float rounding.
    """

    name = "space_to_depth"

    def __init__(self, spatial: int = 4, temporal: int = 1, scale: float = 1.0):
        self.config = SpaceToDepthConfig(spatial, temporal, float(scale))
        self.spatial_downsample = int(spatial)
        self.temporal_downsample = int(temporal)
        self.scale = float(scale)
        self.latent_channels = 3 * self.spatial_downsample**2 * self.temporal_downsample

    def to_dict(self) -> dict:
        return {"name": self.name, **asdict(self.config)}

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(C, T', h, w) of a video of this size; FlowcacheError if a size does not divide."""
        s, t = self.spatial_downsample, self.temporal_downsample
        for what, n, k in (("num_frames", num_frames, t), ("height", height, s), ("width", width, s)):
            if n < 1 or n % k:
                rule = f"a positive multiple of {k}" if k > 1 else "at least 1"  # not "a multiple of 1"
                raise FlowcacheError(f"{what}={n} must be {rule} for the "
                                     f"space_to_depth codec (spatial={s}, temporal={t})")
        return self.latent_channels, num_frames // t, height // s, width // s

    def encode(self, video: Tensor) -> Tensor:
        if video.ndim not in (4, 5) or video.shape[-4] != 3:
            raise FlowcacheError(f"encode needs a video (3, T, H, W) or (B, 3, T, H, W), got {tuple(video.shape)}")
        self.latent_shape(*video.shape[-3:])
        s, t = self.spatial_downsample, self.temporal_downsample
        z = rearrange(video, "... c (t pt) (h ph) (w pw) -> ... (c pt ph pw) t h w", pt=t, ph=s, pw=s)
        return z * self.scale if self.scale != 1.0 else z.contiguous()

    def decode(self, latent: Tensor) -> Tensor:
        if latent.ndim not in (4, 5) or latent.shape[-4] != self.latent_channels:
            raise FlowcacheError(f"decode needs a latent ({self.latent_channels}, T, h, w) or with a batch "
                                 f"dim, got {tuple(latent.shape)}")
        s, t = self.spatial_downsample, self.temporal_downsample
        z = latent / self.scale if self.scale != 1.0 else latent
        return rearrange(z, "... (c pt ph pw) t h w -> ... c (t pt) (h ph) (w pw)", c=3, pt=t, ph=s, pw=s).contiguous()


# ---------------------------------------------------------------------------------------------- registry

from flowcache_core.models.magi1.vae import MagiVAECodec  # noqa: E402 (vae.py does not import this module)

CODECS: dict[str, Callable[..., LatentCodec]] = {"space_to_depth": SpaceToDepthCodec, "magi_vae": MagiVAECodec}


def make_codec(name: str, **kw) -> LatentCodec:
    """A codec by registry name ("space_to_depth"; "magi_vae" once it lands) with its keyword options."""
    if name not in CODECS:
        raise FlowcacheError(f"codec {name!r} is unknown; choose one of: {', '.join(sorted(CODECS))}")
    try:
        return CODECS[name](**kw)
    except TypeError as e:  # unexpected keyword
        raise FlowcacheError(f"codec {name!r} got bad options {sorted(kw)}: {e}") from None


# ---------------------------------------------------------------------------------------- pixel helpers


def from_pixels(frames: np.ndarray | Tensor) -> Tensor:
    """uint8 (T, H, W, 3) -> float32 (3, T, H, W) in [-1, 1]."""
    x = torch.as_tensor(np.asarray(frames) if not isinstance(frames, Tensor) else frames)
    if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != torch.uint8:
        raise FlowcacheError(f"from_pixels needs uint8 frames (T, H, W, 3), got {x.dtype} {tuple(x.shape)}")
    return (x.permute(3, 0, 1, 2).to(torch.float32) / 127.5 - 1.0).contiguous()


def to_pixels(video: Tensor) -> np.ndarray:
    """float (3, T, H, W) in [-1, 1] (clamped) -> uint8 numpy (T, H, W, 3). Exact inverse of from_pixels."""
    if video.ndim != 4 or video.shape[0] != 3:
        raise FlowcacheError(f"to_pixels needs a video (3, T, H, W), got {tuple(video.shape)}")
    x = ((video.detach().float().clamp(-1.0, 1.0) + 1.0) * 127.5).round()
    return x.to(torch.uint8).permute(1, 2, 3, 0).contiguous().cpu().numpy()
