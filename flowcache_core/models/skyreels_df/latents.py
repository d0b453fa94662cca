"""SkyReels-V2 DF's latents: seeded noise, given prefixes (image, video, a long video's overlap) and addnoise.

Everything here is diffusers 0.42.1's `prepare_latents` and denoising loop of the three DF pipelines
(pipelines/skyreels_v2/pipeline_skyreels_v2_diffusion_forcing{,_i2v,_v2v}.py), minus the VAE itself: the
functions take encoded latents. Shapes drop diffusers' batch dimension of 1: latents are (C, frames, h, w).

Noise. Each segment (schedule.Segment, in order) draws randn((1, C, F, h, w)) float32 from the caller's generator,
on the generator's device (a CPU generator draws on the CPU, then the tensor moves to the device). So a
`torch.Generator("cpu").manual_seed(seed)` here equals diffusers called with that generator. The draws cover the
whole segment; prefix frames are overwritten afterwards. Latent size: (height // 8, width // 8).

Prefix, all modes: pasted once per segment, rounded through the DiT's dtype
(latents[:, :p] = prefix.to(transformer_dtype), the latents staying float32); never updated (pre-ready blocks)
and never re-pasted. The DiT's input each forward is latents[:, vs:ve].to(transformer_dtype).

t2v: no prefix in segment 0. Segment k >= 1: the last o latent frames of the output so far (float32, what earlier
segments produced), minus the last o % causal_block_size of them.

i2v (image -> first frame): `video_processor.preprocess(image, height, width)` (resize to height x width,
PIL "lanczos", to [-1, 1], float32) -> (1, 3, H, W) -> unsqueeze a frame axis -> (1, 3, 1, H, W), cast to the VAE's
dtype, `vae.encode(...).latent_dist.mode()` (the mean; no sampling, the generator is not used) -> one latent frame
(1, 16, 1, h, w), cast to float32, normalised (x - latents_mean) * (1 / latents_std) with mean and 1 / std as
float32 tensors (1 / std computed in float32). Segment 0's prefix is that frame: prefix_frames = 1, *not* rounded
to the block size. With causal_block_size 1 the frame is a clean, pre-ready block. With blocks of B > 1 no block is
pre-ready (1 // B = 0): the image latent only replaces block 0's first noise frame, is then denoised like the rest
(the solver steps it from it), and with addnoise it still gets addnoise's noise and timestep in the DiT's input.
The DF i2v pipeline passes no image embedding to the DiT: the first frame is its only conditioning. The output
keeps frame 0 (decoded as the video's first frame). Later segments as in t2v. (`last_image`, an extra end frame
appended in the last segment, is not implemented here: its masking is broken for long videos in 0.42.1.)

v2v (video -> continuation): `video_processor.preprocess_video(video, height, width)` -> (1, 3, T, H, W) float32;
segment 0 encodes its last min(T, overlap_history) pixel frames (cast to the VAE's dtype, `mode()`) into
1 + (min(T, overlap_history) - 1) // 4 latent frames, cast to float32, normalised with mean and 1 / std cast to the
*VAE's* dtype (unlike i2v: with a bf16 VAE the statistics are rounded to bf16), then cut to a multiple of the block
size by dropping its newest frames. num_frames counts those overlap frames: the output latents are the N latent
frames starting at the encoded tail, and the decoded video is the *whole input video* followed by all decoded
output frames (the overlap appears twice). Later segments as in t2v.

Output (all modes): segment 0's latents, then each later segment's frames from o on (o = overlap latent frames,
not the truncated prefix length). Decoding: latents.to(vae dtype), x / (1 / std) + mean, `vae.decode`.

addnoise_condition (a > 0): in every iteration, the prefix frames of the DiT's input x (in the DiT's dtype) become
x * (1 - 0.001 a) + n * (0.001 a), n = torch.randn_like(x): torch's *global* generator of x's device, a fresh draw
of shape (1, C, frames, h, w) every iteration, in forward order through all segments. We draw from an explicit
generator: `addnoise_generator(seed, device)`, a fresh torch.Generator(device).manual_seed(seed), which yields the
global generator's stream when the caller ran torch.manual_seed(seed) right before calling diffusers (and the
pipeline draws nothing else from the global generator: its own noise comes from the `generator` argument). Draw
once per forward that has `noised` frames, in plan order, whether or not the forward's rows are computed.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from flowcache_core.models.skyreels_df.schedule import Layout, Segment

SPATIAL_STRIDE = 8  # Wan VAE: 2 ** len(temperal_downsample)


def latent_size(height: int, width: int, spatial_stride: int = SPATIAL_STRIDE) -> tuple[int, int]:
    return height // spatial_stride, width // spatial_stride


def segment_noise(generator: torch.Generator, num_frames: int, channels: int, height: int, width: int,
                  device: torch.device | str) -> Tensor:
    """One segment's initial noise (C, F, h, w) float32, as diffusers' randn_tensor draws it (h, w: latent size)."""
    x = torch.randn((1, channels, num_frames, height, width), generator=generator, device=generator.device,
                    dtype=torch.float32)
    return x.to(device)[0]


def draw_noise(generator: torch.Generator, lay: Layout, channels: int, height: int, width: int,
               device: torch.device | str) -> list[Tensor]:
    """Every segment's noise, in the order the pipeline draws it (nothing else draws from `generator`)."""
    return [segment_noise(generator, s.num_frames, channels, height, width, device) for s in lay.segments]


def normalize(encoded: Tensor, latents_mean: Sequence[float], latents_std: Sequence[float],
              stats_dtype: torch.dtype = torch.float32) -> Tensor:
    """(x - mean) * (1 / std) per channel of float32 latents (C, T, h, w). stats_dtype: float32 for i2v, the VAE's
    dtype for v2v (diffusers casts mean and 1 / std to it)."""
    x = encoded.to(torch.float32)
    mean = torch.tensor(latents_mean).view(-1, 1, 1, 1).to(x.device, stats_dtype)
    inv_std = (1.0 / torch.tensor(latents_std).view(-1, 1, 1, 1)).to(x.device, stats_dtype)
    return (x - mean) * inv_std


def denormalize(latents: Tensor, latents_mean: Sequence[float], latents_std: Sequence[float],
                vae_dtype: torch.dtype = torch.float32) -> Tensor:
    """What the pipelines hand to vae.decode: latents.to(vae dtype) / (1 / std) + mean."""
    x = latents.to(vae_dtype)
    mean = torch.tensor(latents_mean).view(-1, 1, 1, 1).to(x.device, x.dtype)
    inv_std = (1.0 / torch.tensor(latents_std).view(-1, 1, 1, 1)).to(x.device, x.dtype)
    return x / inv_std + mean


def image_prefix(encoded: Tensor, latents_mean: Sequence[float], latents_std: Sequence[float]) -> Tensor:
    """i2v: the encoded image (C, 1, h, w) (the VAE's mode) -> segment 0's one-frame prefix."""
    return normalize(encoded, latents_mean, latents_std, torch.float32)


def video_prefix(encoded: Tensor, latents_mean: Sequence[float], latents_std: Sequence[float],
                 causal_block_size: int, vae_dtype: torch.dtype = torch.float32) -> Tensor:
    """v2v: the encoded video tail (C, T, h, w) -> segment 0's prefix, cut to whole blocks (newest frames dropped)."""
    x = normalize(encoded, latents_mean, latents_std, vae_dtype)
    return block_aligned(x, causal_block_size)


def overlap_prefix(output: Tensor, overlap_latent_frames: int, causal_block_size: int) -> Tensor:
    """Segment k >= 1: the output's last o latent frames (C, o, h, w), cut to whole blocks (newest dropped)."""
    return block_aligned(output[:, -overlap_latent_frames:], causal_block_size)


def block_aligned(prefix: Tensor, causal_block_size: int) -> Tensor:
    cut = prefix.shape[1] % causal_block_size
    return prefix[:, : prefix.shape[1] - cut]


def start_latents(noise: Tensor, prefix: Tensor | None, model_dtype: torch.dtype) -> Tensor:
    """A segment's float32 latents before its first forward: the noise with the prefix pasted through model_dtype."""
    x = noise.clone()
    if prefix is not None and prefix.shape[1] > 0:
        x[:, : prefix.shape[1]] = prefix.to(model_dtype)
    return x


def append_segment(output: Tensor | None, latents: Tensor, seg: Segment) -> Tensor:
    """The output latents (C, T, h, w) after a segment: its frames from keep_from on, appended."""
    return latents if output is None else torch.cat([output, latents[:, seg.keep_from:]], dim=1)


def addnoise_generator(seed: int, device: torch.device | str) -> torch.Generator:
    """The stream diffusers' torch.randn_like draws addnoise from after torch.manual_seed(seed) (see module doc)."""
    return torch.Generator(device=device).manual_seed(seed)


def addnoise(x: Tensor, addnoise_condition: float, generator: torch.Generator) -> Tensor:
    """The DiT input x (C, frames, h, w) of the noised prefix frames, in the DiT's dtype, with fresh noise mixed in."""
    f = 0.001 * addnoise_condition
    # = randn_like(x) on the generator's device (a CPU generator on a GPU run: drawn on the CPU, then moved)
    n = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=generator.device).to(x.device)
    return x * (1.0 - f) + n * f
