"""Wan's causal 3D VAE as a latent codec: diffusers' `AutoencoderKLWan` used as a library (the `wan` extra).

Why a library here and our own code for the DiT: the VAE runs once per frame group, outside the loop that caching
speeds up, and its exact numbers (causal convolutions with a carried per-layer frame cache) are what diffusers'
pipelines decode with; re-implementing it would add risk and no speed. The DiT is where the time goes.

Facts (diffusers 0.42 `autoencoder_kl_wan.py`, SkyReels-V2 / Wan pipelines):
- 8x spatial, 4x temporal compression, causal in time: latent frame 0 <-> video frame 0, latent frame i > 0 <->
  video frames 4i-3 .. 4i; a video of T frames has (T - 1) // 4 + 1 latent frames.
- The pipelines normalise latents per channel: z = (mu - latents_mean) / latents_std, with mu the posterior's mean
  ("argmax" sampling); decoding inverts that, then clamps the video to [-1, 1].
- The decoder walks latent frames one at a time and carries a per-convolution cache of the last frames; decoding
  chunk after chunk with that cache carried (`stream_decoder`) gives the frames of one whole-latent decode.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import Tensor

from flowcache_core.errors import FlowcacheError
from flowcache_core.fileio import read_json_object
from flowcache_core.models.wan.quiet import quiet_loading


def vae_factors(vae_config) -> tuple[int, int]:
    """(spatial, temporal) compression of a Wan VAE from its config (`temperal_downsample`, diffusers' spelling)."""
    td = vae_config.get("temperal_downsample", [False, True, True])
    return 2 ** len(td), 2 ** sum(bool(x) for x in td)


class WanFamilyConfig:
    """What the configs of the Wan-based families (SkyReels-V2 DF, causal Wan) derive alike from their `vae` (the VAE's
    config.json) and `settings` (a dataclass of the request's settings) fields."""

    @property
    def temporal_downsample(self) -> int:
        return vae_factors(self.vae)[1]

    @property
    def spatial_downsample(self) -> int:
        return vae_factors(self.vae)[0]

    def replace_settings(self, **changes):
        """A copy with these settings changed."""
        return dataclasses.replace(self, settings=dataclasses.replace(self.settings, **changes))


def _diffusers():
    try:
        from diffusers import AutoencoderKLWan
    except ImportError:
        raise FlowcacheError("this checkpoint needs diffusers for Wan's VAE: pip install -e \".[wan]\"") from None
    return AutoencoderKLWan


class WanVAECodec:
    """(3, T, H, W) in [-1, 1] <-> normalised latent (C, T', h, w), float32 at the boundary."""

    name = "wan_vae"

    def __init__(self, vae: torch.nn.Module):
        self.vae = vae
        cfg = vae.config
        self.latent_channels = int(cfg.z_dim)
        self.spatial_downsample, self.temporal_downsample = vae_factors(cfg)
        self.mean = torch.tensor(cfg.latents_mean, dtype=torch.float32).view(-1, 1, 1, 1)  # (C, 1, 1, 1)
        self.std = torch.tensor(cfg.latents_std, dtype=torch.float32).view(-1, 1, 1, 1)
        if self.mean.shape[0] != self.latent_channels or self.std.shape[0] != self.latent_channels:
            raise FlowcacheError(f"vae config: latents_mean/latents_std have {self.mean.shape[0]}/{self.std.shape[0]} "
                                 f"entries, z_dim is {self.latent_channels}")

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    def latent_frames(self, num_frames: int) -> int:
        return (num_frames - 1) // self.temporal_downsample + 1

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        s = self.spatial_downsample
        return self.latent_channels, self.latent_frames(num_frames), height // s, width // s

    @torch.no_grad()
    def encode_raw(self, video: Tensor) -> Tensor:
        """(3, T, H, W) in [-1, 1] -> (C, (T-1)//4+1, H/8, W/8) the posterior mean, not normalised (float32)."""
        x = video[None].to(self.device, self.dtype)  # (1, 3, T, H, W)
        return self.vae.encode(x).latent_dist.mode()[0].float()  # (C, T', h, w)

    def encode(self, video: Tensor) -> Tensor:
        """(3, T, H, W) in [-1, 1] -> normalised latent (C, T', h, w): (mean - latents_mean) * (1 / latents_std)."""
        mu = self.encode_raw(video)
        return (mu - self.mean.to(mu.device)) * (1.0 / self.std).to(mu.device)

    @torch.no_grad()
    def decode(self, latent: Tensor) -> Tensor:
        """(C, T', h, w) normalised -> (3, T, H, W) in [-1, 1] (float32): one whole-latent decode."""
        z = self._denormalise(latent)
        return self.vae.decode(z).sample[0].float()

    def _denormalise(self, latent: Tensor) -> Tensor:
        """As the pipelines do it: latents.to(vae dtype) / (1 / latents_std) + latents_mean, in the VAE's dtype."""
        z = latent[None].to(self.device, self.dtype)  # (1, C, T', h, w)
        inv_std = (1.0 / self.std).to(z.device, z.dtype)
        return z / inv_std + self.mean.to(z.device, z.dtype)

    def stream_decoder(self) -> "WanStreamDecoder":
        """A decoder for the latent in consecutive pieces: each call returns the pieces' frames, and their
        concatenation equals `decode` of the whole latent (the causal frame cache is carried between calls)."""
        return WanStreamDecoder(self)


class WanStreamDecoder:
    """Consecutive latent pieces -> their video frames, with the decoder's causal cache carried across calls.

    Uses AutoencoderKLWan's per-frame decoder entry (`post_quant_conv`, `decoder(..., feat_cache, feat_idx,
    first_chunk)`) the way its own `_decode` loop does; tiling is not used (a tiled decode is not causal-streamed)."""

    def __init__(self, codec: WanVAECodec):
        vae = codec.vae
        if getattr(vae, "use_tiling", False):
            raise FlowcacheError("the Wan VAE's tiled decoding cannot stream; load it without tiling")
        self.codec, self.vae = codec, vae
        self.cache: list = [None] * vae._cached_conv_counts["decoder"]  # per causal conv: its last frames
        self.frames_done = 0

    @torch.no_grad()
    def __call__(self, latent: Tensor) -> Tensor:
        """(C, n, h, w) normalised, the next n latent frames -> (3, frames, H, W) in [-1, 1] (float32)."""
        x = self.vae.post_quant_conv(self.codec._denormalise(latent))  # (1, C, n, h, w)
        outs = []
        for i in range(x.shape[2]):
            idx = [0]
            outs.append(self.vae.decoder(x[:, :, i : i + 1], feat_cache=self.cache, feat_idx=idx,
                                         first_chunk=self.frames_done == 0))
            self.frames_done += 1
        out = torch.cat(outs, 2)
        if self.vae.config.patch_size is not None:
            from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

            out = unpatchify(out, patch_size=self.vae.config.patch_size)
        return out.clamp(-1.0, 1.0)[0].float()


def load_wan_vae(folder: Path, *, device: str | torch.device, dtype: torch.dtype) -> WanVAECodec:
    """A diffusers `vae/` folder (config.json + safetensors) -> codec; every weight must be present and fit."""
    AutoencoderKLWan = _diffusers()
    cfg_path = folder / "config.json"
    cfg = read_json_object(cfg_path, "VAE config")
    if cfg.get("_class_name") != "AutoencoderKLWan":
        got = cfg.get("_class_name")
        raise FlowcacheError(f"{str(cfg_path)!r}: _class_name {got!r}, expected 'AutoencoderKLWan'")
    if not any(folder.glob("*.safetensors")):
        raise FlowcacheError(f"VAE folder {str(folder)!r} has no .safetensors weights")
    try:
        with quiet_loading():
            vae, info = AutoencoderKLWan.from_pretrained(folder, local_files_only=True, torch_dtype=dtype,
                                                         output_loading_info=True, low_cpu_mem_usage=False)
    except (OSError, ValueError, RuntimeError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FlowcacheError(f"VAE folder {str(folder)!r} does not load: {first}") from None
    for what in ("missing_keys", "mismatched_keys", "unexpected_keys"):
        bad = info.get(what) or []
        if bad:
            first = bad[0] if isinstance(bad[0], str) else bad[0][0]
            raise FlowcacheError(f"VAE folder {str(folder)!r}: {len(bad)} {what.replace('_', ' ')}, e.g. {first!r}")
    return WanVAECodec(vae.to(device).eval())
