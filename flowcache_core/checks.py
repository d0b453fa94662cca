"""Checks of user input that every entry point shares (the CLI commands and the Python API), one function each,
so that a bad seed, device, frame size or video length is refused the same way, in one line, before any work.

`name` is how the caller's user spelled the value: `--seed` on the command line, `seed` in the API,
`runtime_config.seed` when it came from a config file.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch

from flowcache_core.config import SEED_RANGE
from flowcache_core.errors import FlowcacheError
from flowcache_core.model.vae import ViTVAEConfig
from flowcache_core.schema import check_value

if TYPE_CHECKING:
    from flowcache_core.config import MagiConfig
    from flowcache_core.model.codec import LatentCodec

# The codec of a config that names none (a release's variant config.json has no `flowcache.codec`): the MAGI-1
# ViT VAE of the official releases, 8x8 pixels and 4 frames to one latent of 16 channels.
_MAGI_VAE = ViTVAEConfig()
MAGI_VAE_SPATIAL, MAGI_VAE_TEMPORAL, MAGI_VAE_CHANNELS = _MAGI_VAE.patch_size, _MAGI_VAE.patch_length, _MAGI_VAE.z_chans
# Used when the free memory cannot be read (no /proc/meminfo, no sysconf): a laptop's worth.
FALLBACK_MEMORY_BYTES = 8 * 2**30


# ------------------------------------------------------------------------------------------------ seed, device
def check_seed(seed: object, name: str = "seed") -> int:
    """A noise seed torch accepts: an integer in 0 .. 2**64-1 (torch.Generator().manual_seed's range)."""
    check_value(seed, int, name, SEED_RANGE)
    return seed  # type: ignore[return-value]


def check_device(device: str, name: str = "--device") -> str:
    """cpu, cuda or cuda:N, usable on this machine (CUDA present, N below the device count)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise FlowcacheError(f"{name} {device!r} is not a torch device (allowed: cpu, cuda, cuda:N)") from None
    if dev.type not in ("cpu", "cuda"):
        raise FlowcacheError(f"{name} {device!r} is not supported (allowed: cpu, cuda, cuda:N)")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise FlowcacheError(f"{name} {device!r} asked for but CUDA is not available here (use {name} cpu)")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise FlowcacheError(f"{name} {device!r}: this machine has {count} CUDA device(s) (allowed: cuda:0 .. cuda:{count - 1})")
    return device


# ------------------------------------------------------------------------------------------------ frame size
def codec_factors(config: "MagiConfig", codec: "LatentCodec | None" = None) -> tuple[int, int, int]:
    """(spatial, temporal, channels) of the latent codec: the loaded `codec`'s, else the one config.json names
    (`flowcache.codec`: space_to_depth has 3*spatial^2*temporal channels), else MAGI-1's VAE (a release)."""
    if codec is not None:
        return codec.spatial_downsample, codec.temporal_downsample, codec.latent_channels
    spec = (config.extra.get("flowcache") or {}).get("codec") or {}
    if spec.get("name") == "space_to_depth":
        s, t = int(spec.get("spatial", 4)), int(spec.get("temporal", 1))
        return s, t, 3 * s * s * t
    if spec:  # another registered codec: its channels are the DiT's input
        return int(spec.get("spatial", MAGI_VAE_SPATIAL)), int(spec.get("temporal", MAGI_VAE_TEMPORAL)), config.model.in_channels
    return MAGI_VAE_SPATIAL, MAGI_VAE_TEMPORAL, MAGI_VAE_CHANNELS


def check_frame_size(config: "MagiConfig", codec: "LatentCodec | None" = None,
                     names: tuple[str, str] = ("height", "width")) -> None:
    """Height and width must divide into whole DiT patches: a multiple of the codec's spatial factor times
    model_config.patch_size (else the latent grid does not split into patches and the model fails deep inside)."""
    spatial = codec_factors(config, codec)[0]
    multiple = spatial * config.model.patch_size
    for name, value in zip(names, (config.runtime.video_size_h, config.runtime.video_size_w)):
        if value % multiple:
            raise FlowcacheError(f"{name} {value} must be a multiple of {multiple} for this model (codec spatial factor "
                                 f"{spatial} x patch size {config.model.patch_size}); e.g. {value - value % multiple or multiple}")


# ------------------------------------------------------------------------------------------------ memory
def available_memory_bytes() -> tuple[int, str]:
    """(bytes of memory free for a new run, where the number comes from)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "MemAvailable in /proc/meminfo"
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "free pages (sysconf)"
    except (OSError, ValueError, AttributeError):
        return FALLBACK_MEMORY_BYTES, "a fixed cap (free memory unknown here)"


def output_bytes(config: "MagiConfig", codec: "LatentCodec | None" = None) -> int:
    """What a run must hold however it runs: the generated frames as uint8 (T*H*W*3 bytes, kept until the video
    is written) and their latents as float32. A lower bound: weights, activations and the KV cache come on top."""
    rt = config.runtime
    spatial, temporal, channels = codec_factors(config, codec)
    latent_frames = -(-rt.num_frames // temporal)
    latent_frames = -(-latent_frames // rt.chunk_width) * rt.chunk_width  # whole chunks are generated
    frames = latent_frames * temporal
    h, w = rt.video_size_h, rt.video_size_w
    return frames * h * w * 3 + channels * latent_frames * (h // spatial) * (w // spatial) * 4


def check_fits_in_memory(config: "MagiConfig", codec: "LatentCodec | None" = None, name: str = "num_frames") -> None:
    """Refuse a run whose frames and latents alone exceed the free memory: it would swap or be killed after hours
    of sampling. `name` spells the frame count as the user gave it (--num-frames, num_frames, ...)."""
    rt = config.runtime
    need = output_bytes(config, codec)
    free, source = available_memory_bytes()
    if need > free:
        fit = int(free // (need / rt.num_frames))
        advice = f"at this size at most about {fit} frames fit" if fit else "not one frame of this size fits: lower the size"
        raise FlowcacheError(
            f"{name} {rt.num_frames} at {rt.video_size_w}x{rt.video_size_h} needs at least {_gib(need)} of memory "
            f"(frames as uint8 and latents as float32), more than the {_gib(free)} free ({source}); {advice}")


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"
