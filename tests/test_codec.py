"""The lossless space-to-depth codec and the pixel helpers."""
import numpy as np
import pytest
import torch

from flowcache_core.errors import FlowcacheError
from flowcache_core.models.codec import LatentCodec, SpaceToDepthCodec, from_pixels, make_codec, to_pixels


def test_round_trip_is_exact_and_shapes():
    codec = make_codec("space_to_depth")
    assert isinstance(codec, LatentCodec)
    assert (codec.latent_channels, codec.spatial_downsample, codec.temporal_downsample) == (48, 4, 1)
    video = torch.rand(3, 12, 64, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    z = codec.encode(video)
    assert z.shape == (48, 12, 16, 8) == codec.latent_shape(12, 64, 32)
    assert torch.equal(codec.decode(z), video)


def test_layout_and_temporal_and_scale():
    codec = SpaceToDepthCodec(spatial=2, temporal=2, scale=0.5)
    video = torch.arange(3 * 4 * 4 * 6, dtype=torch.float32).reshape(3, 4, 4, 6)
    z = codec.encode(video)
    assert z.shape == (24, 2, 2, 3)
    # channel (c, pt, ph, pw) at (t, h, w) = video[c, 2t+pt, 2h+ph, 2w+pw] * scale
    assert z[1 * 8 + 1 * 4 + 0 * 2 + 1, 1, 0, 2] == video[1, 3, 0, 5] * 0.5
    assert torch.allclose(codec.decode(z), video)
    batch = torch.stack([video, -video])
    assert torch.equal(codec.encode(batch)[1], codec.encode(-video))
    assert torch.allclose(codec.decode(codec.encode(batch)), batch)


def test_errors():
    codec = SpaceToDepthCodec(4, 2)
    with pytest.raises(FlowcacheError, match="height"):
        codec.encode(torch.zeros(3, 4, 30, 32))
    with pytest.raises(FlowcacheError, match="num_frames"):
        codec.encode(torch.zeros(3, 3, 32, 32))
    with pytest.raises(FlowcacheError):
        codec.encode(torch.zeros(4, 4, 32, 32))
    with pytest.raises(FlowcacheError):
        codec.decode(torch.zeros(48, 2, 8, 8))  # latent_channels is 96
    with pytest.raises(FlowcacheError, match="unknown"):
        make_codec("magic")
    with pytest.raises(FlowcacheError):
        make_codec("space_to_depth", spatial=0)
    with pytest.raises(FlowcacheError):
        make_codec("space_to_depth", scale=-1.0)
    with pytest.raises(FlowcacheError):
        make_codec("space_to_depth", colour=True)


def test_pixel_helpers_round_trip():
    frames = np.random.default_rng(0).integers(0, 256, (5, 8, 12, 3), dtype=np.uint8)
    video = from_pixels(frames)
    assert video.shape == (3, 5, 8, 12) and video.dtype == torch.float32
    assert video.min() >= -1 and video.max() <= 1
    assert np.array_equal(to_pixels(video), frames)
    assert np.array_equal(to_pixels(video * 3), to_pixels(video.clamp(-1, 1) * 3))  # clamps
    with pytest.raises(FlowcacheError):
        from_pixels(frames.astype(np.float32))
