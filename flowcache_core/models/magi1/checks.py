"""MAGI-1's input checks that need its config: frame sizes that split into whole patches, and the bytes a video
of the request holds (see flowcache_core/checks.py for the checks every family shares)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from flowcache_core.checks import check_fits_in_memory
from flowcache_core.errors import FlowcacheError
from flowcache_core.models.magi1.vae import ViTVAEConfig

if TYPE_CHECKING:
    from flowcache_core.models.codec import LatentCodec
    from flowcache_core.models.magi1.config import MagiConfig

# The codec of a config that names none (a release's variant config.json has no `flowcache.codec`): the MAGI-1
# ViT VAE of the official releases, 8x8 pixels and 4 frames to one latent of 16 channels.
_MAGI_VAE = ViTVAEConfig()
MAGI_VAE_SPATIAL, MAGI_VAE_TEMPORAL, MAGI_VAE_CHANNELS = _MAGI_VAE.patch_size, _MAGI_VAE.patch_length, _MAGI_VAE.z_chans


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


def check_output_fits(config: "MagiConfig", codec: "LatentCodec | None" = None, name: str = "num_frames") -> None:
    """The request's frames and latents must fit in the free memory; `name` spells the frame count as given."""
    rt = config.runtime
    need = output_bytes(config, codec)
    check_fits_in_memory(need, f"{name} {rt.num_frames} at {rt.video_size_w}x{rt.video_size_h}", need / rt.num_frames)
