"""MAGI-1's ViT VAE (the release's `ckpt/vae`): encoder, decoder, and `MagiVAECodec`, the "magi_vae" latent codec.

Written from the architecture notes (shared/reference/magi1-architecture.md section 4) and the public module
attribute names of SandAI-org/MAGI-1 (inference/model/vae/vae_module.py, vae_model.py, infra/parallelism/
tile_parallel.py at 6ff822e); no code is copied. The state dict keys are those of the official `ViTVAE`
(a diffusers ModelMixin: `encoder.*`, `decoder.*`), e.g.
    encoder.patch_embed.proj.{weight,bias}  encoder.cls_token  encoder.pos_embed
    encoder.blocks.{i}.attn.qkv.{weight,bias}  .attn.proj.*  .norm2.*  .mlp.fc1.*  .mlp.fc2.*  (.norm1.* without ln_in_attn)
    encoder.norm.*  encoder.last_layer.*
    decoder.proj_in.*  decoder.cls_token  decoder.pos_embed  decoder.blocks.{i}.*  decoder.norm.*  decoder.last_layer.*
    (decoder.final_proj.*, decoder.final_norm.* only with use_final_proj)

Shapes: video (B, 3, T, H, W) in [-1, 1]; latent (B, z, T/4, H/8, W/8). A single frame (T = 1) is encoded as
4 copies of itself, keeping the first latent frame (MAGI-1's i2v). The posterior is used by its mode (the mean).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from flowcache_core.errors import FlowcacheError
from flowcache_core.fileio import atomic_write, atomic_write_text
from flowcache_core.schema import check_fields

VAE_CLASS_NAME = "ViTVAE"
VAE_CONFIG_NAME = "config.json"
VAE_WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
SCALE_FACTOR = 0.18215  # runtime_config.scale_factor of every MAGI-1 example config
LOGVAR_CLAMP = (-30.0, 20.0)


# ------------------------------------------------------------------------------------------------ config
@dataclass
class ViTVAEConfig:
    """The release config.json's `ddconfig` (ViTEncoder/ViTDecoder keyword arguments). Defaults = the published VAE
    as inferred from the diffusers port (the official config.json is not available here)."""

    video_size: int = 256  # pos_embed base grid: video_length/patch_length x (video_size/patch_size)^2
    video_length: int = 16
    patch_size: int = 8
    patch_length: int = 4
    in_chans: int = 3
    z_chans: int = 16
    double_z: bool = True
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    qk_scale: float | None = None  # unused by the official attention (flash-attn's default 1/sqrt(hd))
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    with_cls_token: bool = True
    norm_code: bool = False
    ln_in_attn: bool = True
    conv_last_layer: bool = True
    use_rope: bool = False
    use_final_proj: bool = False

    @classmethod
    def from_ddconfig(cls, d: dict, where: str = "VAE config") -> "ViTVAEConfig":
        check_fields(cls, d, "ddconfig", where, unknown_keys=False)  # types; validate() checks the values
        return cls(**d).validate(where)

    def validate(self, where: str = "VAE config") -> "ViTVAEConfig":
        for n in ("video_size", "video_length", "patch_size", "patch_length", "in_chans", "z_chans", "embed_dim", "depth", "num_heads"):
            v = getattr(self, n)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise FlowcacheError(f"{where}: {n} {v!r} must be a positive integer")
        if self.embed_dim % self.num_heads:
            raise FlowcacheError(f"{where}: embed_dim {self.embed_dim} must be a multiple of num_heads {self.num_heads}")
        if not self.use_final_proj and self.embed_dim % self.unpatch_pixels:
            raise FlowcacheError(f"{where}: embed_dim {self.embed_dim} must be a multiple of patch_length*patch_size^2 "
                                 f"({self.unpatch_pixels}) for the decoder's sub-pixel unpatch")
        if not self.conv_last_layer:
            raise FlowcacheError(f"{where}: conv_last_layer false is not supported (the official decoder requires true)")
        if self.use_rope:
            raise FlowcacheError(f"{where}: use_rope true is not supported (the release VAE does not use it)")
        if not self.with_cls_token:
            raise FlowcacheError(f"{where}: with_cls_token false is not supported (the release VAE has a cls token)")
        if not self.double_z:
            raise FlowcacheError(f"{where}: double_z false is not supported (the posterior needs mean and logvar)")
        return self

    @property
    def unpatch_pixels(self) -> int:
        return self.patch_length * self.patch_size * self.patch_size

    @property
    def unpatch_channels(self) -> int:
        return 4 if self.use_final_proj else self.embed_dim // self.unpatch_pixels

    @property
    def base_grid(self) -> tuple[int, int, int]:
        s = self.video_size // self.patch_size
        return self.video_length // self.patch_length, s, s


# ------------------------------------------------------------------------------------------------ blocks
def _qkv_layer_norm(x: Tensor, eps: float = 1e-5) -> Tensor:
    """MAGI-1's parameter-free "ln_in_attn": (x - mean) / (std + eps), biased std, over the head dim."""
    mean = x.mean(dim=-1, keepdim=True)
    std = x.std(dim=-1, keepdim=True, unbiased=False)
    return (x - mean) / (std + eps)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, ln_in_attn: bool):
        super().__init__()
        self.num_heads, self.ln_in_attn = num_heads, ln_in_attn
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, C // self.num_heads)  # (B, N, 3, H, hd)
        if self.ln_in_attn:
            qkv = _qkv_layer_norm(qkv)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, N, hd)
        o = F.scaled_dot_product_attention(q, k, v)  # (B, H, N, hd), scale 1/sqrt(hd)
        return self.proj(o.transpose(1, 2).reshape(B, N, C))  # (B, N, C)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, cfg: ViTVAEConfig):
        super().__init__()
        E = cfg.embed_dim
        self.norm1 = nn.Identity() if cfg.ln_in_attn else nn.LayerNorm(E)  # no keys with ln_in_attn
        self.attn = Attention(E, cfg.num_heads, cfg.qkv_bias, cfg.ln_in_attn)
        self.norm2 = nn.LayerNorm(E)
        self.mlp = Mlp(E, int(E * cfg.mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, cfg: ViTVAEConfig):
        super().__init__()
        k = (cfg.patch_length, cfg.patch_size, cfg.patch_size)
        self.proj = nn.Conv3d(cfg.in_chans, cfg.embed_dim, kernel_size=k, stride=k)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


def _positions(pos_embed: Tensor, base: tuple[int, int, int], grid: tuple[int, int, int]) -> Tensor:
    """pos_embed (1, 1 + prod(base), E) for a token grid: the patch part resized trilinearly when the grid differs."""
    if tuple(grid) == tuple(base):
        return pos_embed
    patch = pos_embed[:, 1:].reshape(1, *base, -1).permute(0, 4, 1, 2, 3)  # (1, E, t, h, w)
    patch = F.interpolate(patch, size=tuple(grid), mode="trilinear", align_corners=False)
    patch = patch.permute(0, 2, 3, 4, 1).reshape(1, math.prod(grid), -1)  # (1, T*H*W, E)
    return torch.cat([pos_embed[:, :1], patch], dim=1)


class _Trunk(nn.Module):
    """cls token + positions + blocks + final LayerNorm, shared by encoder and decoder."""

    def __init__(self, cfg: ViTVAEConfig):
        super().__init__()
        self.cfg = cfg
        E, n = cfg.embed_dim, math.prod(cfg.base_grid)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, E))
        self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, E))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(E)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def trunk(self, x: Tensor, grid: tuple[int, int, int]) -> Tensor:
        B = x.shape[0]
        x = torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1)  # (B, 1 + N, E)
        x = x + _positions(self.pos_embed, self.cfg.base_grid, grid)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)[:, 1:]  # (B, N, E), cls dropped


def _init_linears(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class ViTEncoder(_Trunk):
    def __init__(self, cfg: ViTVAEConfig):
        super().__init__(cfg)
        self.patch_embed = PatchEmbed(cfg)
        self.last_layer = nn.Linear(cfg.embed_dim, 2 * cfg.z_chans)
        _init_linears(self)

    def forward(self, x: Tensor) -> Tensor:
        """video (B, 3, T, H, W) -> moments (B, 2z, T/pt, H/p, W/p) (mean, logvar)."""
        x = self.patch_embed(x)  # (B, E, t, h, w)
        B, _, t, h, w = x.shape
        x = self.trunk(x.flatten(2).transpose(1, 2), (t, h, w))  # (B, t*h*w, E)
        x = self.last_layer(x)  # (B, t*h*w, 2z)
        x = x.view(B, t, h, w, -1).permute(0, 4, 1, 2, 3)  # (B, 2z, t, h, w)
        if self.cfg.norm_code:
            x = (x.float() / torch.norm(x.float(), dim=1, keepdim=True)).to(x.dtype)
        return x


class ViTDecoder(_Trunk):
    def __init__(self, cfg: ViTVAEConfig):
        super().__init__(cfg)
        self.proj_in = nn.Linear(cfg.z_chans, cfg.embed_dim)
        if cfg.use_final_proj:
            self.final_proj = nn.Linear(cfg.embed_dim, cfg.unpatch_channels * cfg.unpatch_pixels)
            self.final_norm = nn.LayerNorm(cfg.unpatch_channels * cfg.unpatch_pixels)
        self.last_layer = nn.Conv3d(cfg.unpatch_channels, 3, kernel_size=3, stride=1, padding=1)
        _init_linears(self)

    def forward(self, z: Tensor) -> Tensor:
        """latent (B, z, t, h, w) -> video (B, 3, t*pt, h*p, w*p)."""
        B, _, t, h, w = z.shape
        x = self.proj_in(z.permute(0, 2, 3, 4, 1).reshape(B, t * h * w, -1))  # (B, N, E)
        x = self.trunk(x, (t, h, w))  # (B, N, E)
        if self.cfg.use_final_proj:
            x = self.final_norm(self.final_proj(x))
        c = self.cfg
        x = x.reshape(B, t, h, w, c.patch_length, c.patch_size, c.patch_size, c.unpatch_channels)
        x = rearrange(x, "b t h w pt ph pw c -> b c (t pt) (h ph) (w pw)")  # (B, C_u, T, H, W)
        return self.last_layer(x)  # (B, 3, T, H, W)


class ViTVAE(nn.Module):
    def __init__(self, cfg: ViTVAEConfig):
        super().__init__()
        self.cfg = cfg.validate("ViT VAE config")  # a shape the decoder cannot unpatch fails here, not at load time
        self.encoder, self.decoder = ViTEncoder(cfg), ViTDecoder(cfg)

    def encode_mode(self, x: Tensor) -> Tensor:
        """video (B, 3, T, H, W) -> posterior mode (B, z, T', h, w), unscaled. T = 1: 4 copies, first latent frame."""
        single = x.shape[2] == 1 and self.cfg.patch_length > 1
        if single:
            x = x.expand(-1, -1, self.cfg.patch_length, -1, -1)
        mean = self.encoder(x)[:, : self.cfg.z_chans]  # mode of the diagonal Gaussian (logvar unused)
        return mean[:, :, :1] if single else mean

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z)


# ------------------------------------------------------------------------------------------------ tiling
def _blend(a: Tensor, b: Tensor, extent: int, dim: int) -> Tensor:
    """Linear cross-fade of b's first `extent` slices along `dim` with a's last ones (in place on b)."""
    e = min(a.shape[dim], b.shape[dim], extent)
    if e <= 0:
        return b
    w = torch.arange(e, dtype=b.dtype, device=b.device) / e  # weight of b
    shape = [1] * b.ndim
    shape[dim] = e
    w = w.view(shape)
    head = b.narrow(dim, 0, e)
    head.copy_(a.narrow(dim, a.shape[dim] - e, e) * (1 - w) + head * w)
    return b


def tiled_apply(fn, x: Tensor, tile: tuple[int, int, int], stride: tuple[int, int, int],
                blend: tuple[int, int, int], keep: tuple[int, int, int], blend_blended: bool) -> Tensor:
    """MAGI-1's tile scheme: tiles of size `tile` (input units) start every `stride`; each output tile is blended
    with its previous neighbour in t, h, w over `blend` slices (output units) and cut to `keep` before concat.
    `blend_blended`: neighbours are the already blended tiles (the official encode) or the raw ones (decode)."""
    counts = [max(1, -(-x.shape[2 + a] // stride[a])) for a in range(3)]
    outs: dict[tuple[int, int, int], Tensor] = {}
    idx = [(f, i, j) for f in range(counts[0]) for i in range(counts[1]) for j in range(counts[2])]
    for f, i, j in idx:
        s = [f * stride[0], i * stride[1], j * stride[2]]
        outs[f, i, j] = fn(x[:, :, s[0]: s[0] + tile[0], s[1]: s[1] + tile[1], s[2]: s[2] + tile[2]])
    kept = {}
    for f, i, j in idx:
        t = outs[f, i, j] if blend_blended else outs[f, i, j].clone()
        for axis, prev in ((0, (f - 1, i, j)), (1, (f, i - 1, j)), (2, (f, i, j - 1))):
            if prev[axis] >= 0:
                t = _blend(outs[prev], t, blend[axis], 2 + axis)
        kept[f, i, j] = t[:, :, : keep[0], : keep[1], : keep[2]]
    rows = [torch.cat([torch.cat([kept[f, i, j] for j in range(counts[2])], dim=4) for i in range(counts[1])], dim=3)
            for f in range(counts[0])]
    return torch.cat(rows, dim=2)


# ------------------------------------------------------------------------------------------------ codec
class MagiVAECodec:
    """The LatentCodec of the MAGI-1 release: ViT VAE, scale 0.18215, input [-1, 1], tiled like MAGI-1.

    Tiles (video_process.py / tile_parallel.py): spatial 256 x 256 px (32 x 32 latents) starting every 192 px,
    neighbours linearly blended over 64 px (decode) / 8 latents (encode); temporal tiles of fps//2 = 12 frames
    (3 latent frames) with no overlap. `tile_px`, `tile_frames` and `overlap` change them (tests use small tiles).
    Accepts (3, T, H, W) or (B, 3, T, H, W); returns float32 on the input's device.
    """

    name = "magi_vae"

    def __init__(self, path: str | os.PathLike | None = None, *, vae: ViTVAE | None = None, device: str = "cpu",
                 dtype: str | torch.dtype = torch.float32, scale_factor: float = SCALE_FACTOR, tile_px: int = 256,
                 tile_frames: int = 12, overlap: float = 0.25):
        if (path is None) == (vae is None):
            raise FlowcacheError("magi_vae codec needs exactly one of: path (a release ckpt/vae dir) or vae")
        if isinstance(dtype, str):
            dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype.replace("torch.", ""))
            if dtype is None:
                raise FlowcacheError("magi_vae dtype must be float32, bfloat16 or float16")
        self.vae = (vae if vae is not None else load_vit_vae(path)).to(device=device, dtype=dtype).eval()
        cfg = self.vae.cfg
        self.path = None if path is None else str(path)
        self.latent_channels = cfg.z_chans
        self.spatial_downsample = cfg.patch_size
        self.temporal_downsample = cfg.patch_length
        self.scale_factor = float(scale_factor)
        if tile_px % cfg.patch_size or tile_frames % cfg.patch_length or not 0 <= overlap < 1:
            raise FlowcacheError(f"magi_vae tiles: tile_px {tile_px} must be a multiple of {cfg.patch_size}, tile_frames "
                                 f"{tile_frames} of {cfg.patch_length}, overlap {overlap} in [0, 1)")
        self.tile_px, self.tile_frames, self.overlap = int(tile_px), int(tile_frames), float(overlap)

    def to_dict(self) -> dict:
        return {"name": self.name, "path": self.path, "scale_factor": self.scale_factor, "tile_px": self.tile_px,
                "tile_frames": self.tile_frames, "overlap": self.overlap}

    @property
    def _param(self) -> Tensor:
        return self.vae.encoder.pos_embed

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        s, t = self.spatial_downsample, self.temporal_downsample
        if num_frames < 1 or (num_frames != 1 and num_frames % t):
            raise FlowcacheError(f"num_frames={num_frames} must be 1 (an image) or a positive multiple of {t} for the MAGI-1 VAE")
        for what, n in (("height", height), ("width", width)):
            if n < 1 or n % s:
                raise FlowcacheError(f"{what}={n} must be a positive multiple of {s} for the MAGI-1 VAE")
        return self.latent_channels, (1 if num_frames == 1 else num_frames // t), height // s, width // s

    @torch.no_grad()
    def encode(self, video: Tensor) -> Tensor:
        if video.ndim not in (4, 5) or video.shape[-4] != 3:
            raise FlowcacheError(f"encode needs a video (3, T, H, W) or (B, 3, T, H, W), got {tuple(video.shape)}")
        self.latent_shape(*video.shape[-3:])
        x = (video if video.ndim == 5 else video[None]).to(self._param)
        s, t, p = self.spatial_downsample, self.temporal_downsample, self.tile_px
        lat_tile = p // s
        z = tiled_apply(self.vae.encode_mode, x, tile=(self.tile_frames, p, p),
                        stride=(self.tile_frames, int(p * (1 - self.overlap)), int(p * (1 - self.overlap))),
                        blend=(0, int(lat_tile * self.overlap), int(lat_tile * self.overlap)),
                        keep=(self.tile_frames // t, lat_tile - int(lat_tile * self.overlap), lat_tile - int(lat_tile * self.overlap)),
                        blend_blended=True)
        z = (z.float() * self.scale_factor).to(video.device)
        return z if video.ndim == 5 else z[0]

    @torch.no_grad()
    def decode(self, latent: Tensor) -> Tensor:
        if latent.ndim not in (4, 5) or latent.shape[-4] != self.latent_channels:
            raise FlowcacheError(f"decode needs a latent ({self.latent_channels}, T, h, w) or with a batch dim, got {tuple(latent.shape)}")
        z = (latent if latent.ndim == 5 else latent[None]).to(self._param) / self.scale_factor
        s, t, p = self.spatial_downsample, self.temporal_downsample, self.tile_px
        lt, ls = self.tile_frames // t, p // s
        blend_px = int(p * self.overlap)
        x = tiled_apply(self.vae.decode, z, tile=(lt, ls, ls), stride=(lt, int(ls * (1 - self.overlap)), int(ls * (1 - self.overlap))),
                        blend=(0, blend_px, blend_px), keep=(lt * t, p - blend_px, p - blend_px), blend_blended=False)
        x = x.float().to(latent.device)
        return x if latent.ndim == 5 else x[0]


# ------------------------------------------------------------------------------------------------ files
def read_vae_config(directory: str | os.PathLike) -> ViTVAEConfig:
    """The ddconfig of a diffusers-style VAE dir; FlowcacheError unless it is a "vit" ViTVAE."""
    p = Path(directory) / VAE_CONFIG_NAME
    if not p.is_file():
        raise FlowcacheError(f"VAE config {str(p)!r} does not exist (expected a diffusers-style ViTVAE config.json)")
    try:
        d = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FlowcacheError(f"VAE config {str(p)!r} is not valid JSON ({e})") from None
    if not isinstance(d, dict) or d.get("_class_name") != VAE_CLASS_NAME:
        got = d.get("_class_name") if isinstance(d, dict) else None
        raise FlowcacheError(f"VAE config {str(p)!r} has _class_name {got!r}; only {VAE_CLASS_NAME!r} (MAGI-1's ViT VAE) is supported")
    if d.get("model_type", "vit") != "vit":
        raise FlowcacheError(f"VAE config {str(p)!r}: model_type {d.get('model_type')!r} is not supported (allowed: 'vit')")
    return ViTVAEConfig.from_ddconfig(d.get("ddconfig"), where=f"VAE config {str(p)!r}")


def load_vit_vae(directory: str | os.PathLike) -> ViTVAE:
    """A release VAE dir (config.json + diffusion_pytorch_model.safetensors or shards + index), strict keys, float32."""
    from flowcache_core.models.weights import check_state_dict, read_state_dict

    d = Path(directory)
    if not d.is_dir():
        raise FlowcacheError(f"VAE directory {str(d)!r} does not exist")
    cfg = read_vae_config(d)
    sd = read_state_dict(d, single_name=VAE_WEIGHTS_NAME, what="VAE directory")
    with torch.device("meta"):
        vae = ViTVAE(cfg)
    check_state_dict(vae, sd, f"VAE {str(d)!r}")
    vae = vae.to_empty(device="cpu")
    vae.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    return vae.eval()


def save_vit_vae(vae: ViTVAE, directory: str | os.PathLike, dtype: torch.dtype | None = None) -> None:
    """Write the release layout: config.json (`_class_name` ViTVAE, ddconfig) + diffusion_pytorch_model.safetensors."""
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().to(dtype or v.dtype).contiguous().cpu() for k, v in vae.state_dict().items()}
    with atomic_write(d / VAE_WEIGHTS_NAME, ".safetensors") as tmp:
        save_file(sd, str(tmp))
    meta = {"_class_name": VAE_CLASS_NAME, "_diffusers_version": "0.29.2", "ddconfig": asdict(vae.cfg), "model_type": "vit"}
    atomic_write_text(d / VAE_CONFIG_NAME, json.dumps(meta, indent=2) + "\n")
