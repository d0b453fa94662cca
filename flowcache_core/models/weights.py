"""Load and save DiT weights as safetensors in MAGI-1's checkpoint layout, with official key names.

A checkpoint directory holds either one `model.safetensors`, or shards plus `model.safetensors.index.json`
(`{"metadata": {...}, "weight_map": {key: shard file}}`). Loading is strict: every key the model has must be
present with the right shape, and no unknown key may be left over; the first problem is reported in one line.
Nothing is ever unpickled.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from flowcache_core.errors import FlowcacheError
from flowcache_core.schema import shown
from flowcache_core.fileio import atomic_write, atomic_write_text

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


def _read_safetensors(path: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FlowcacheError(f"checkpoint file {str(path)!r} does not exist")
    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise FlowcacheError(f"checkpoint file {str(path)!r} is not a readable safetensors file ({msg})") from None


def read_state_dict(ckpt_dir: str | os.PathLike, device: str = "cpu", single_name: str = SINGLE_NAME,
                    what: str = "checkpoint directory") -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory: shards + `<single_name>.index.json`, or the single file."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        raise FlowcacheError(f"{what} {str(d)!r} does not exist")
    index = d / (single_name + ".index.json")
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
            raise FlowcacheError(f"{str(index)!r} is not a valid safetensors index (needs a 'weight_map' object)") from None
        if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
            raise FlowcacheError(f"{str(index)!r}: weight_map must map each weight name to a shard file name, "
                                 f"got {shown(weight_map)}")
        sd: dict[str, torch.Tensor] = {}
        held: dict[str, set[str]] = {}
        for shard in sorted(set(weight_map.values())):
            part = _read_safetensors(d / shard, device)
            held[shard] = set(part)
            sd.update(part)
        for k, f in weight_map.items():
            if k not in held[f]:
                raise FlowcacheError(f"index {str(index)!r} names {k!r} in {f!r}, which does not hold it")
        return sd
    if (d / single_name).is_file():
        return _read_safetensors(d / single_name, device)
    raise FlowcacheError(f"{what} {str(d)!r} has neither {single_name}.index.json nor {single_name}")


def check_state_dict(model: torch.nn.Module, sd: dict[str, torch.Tensor], where: str) -> None:
    """Strict check: same keys, same shapes. Raises FlowcacheError naming the first mismatch."""
    own = model.state_dict()
    for k, p in own.items():
        if k not in sd:
            raise FlowcacheError(f"{where}: missing weight {k!r} (expected shape {tuple(p.shape)})")
        if tuple(sd[k].shape) != tuple(p.shape):
            raise FlowcacheError(
                f"{where}: weight {k!r} has shape {tuple(sd[k].shape)}, the config needs {tuple(p.shape)}")
    extra = sorted(set(sd) - set(own))
    if extra:
        raise FlowcacheError(f"{where}: unexpected weight {extra[0]!r} (not part of this model config)")


def load_weights(model: torch.nn.Module, ckpt_dir: str | os.PathLike,
                 check: Callable[[torch.nn.Module, dict[str, torch.Tensor], str], None] | None = None) -> torch.nn.Module:
    """Strict load, each tensor cast to the model's dtype for it; `check(model, sd, where)` runs after the key and
    shape check (e.g. dtypes that must not be cast: fp8 weights)."""
    sd = read_state_dict(ckpt_dir)
    where = f"checkpoint {str(ckpt_dir)!r}"
    check_state_dict(model, sd, where)
    if check is not None:
        check(model, sd, where)
    dtypes = {k: v.dtype for k, v in model.state_dict().items()}
    model.load_state_dict({k: v.to(dtypes[k]) for k, v in sd.items()}, strict=True)
    return model


def save_weights(model_or_sd, ckpt_dir: str | os.PathLike, max_shard_bytes: int | None = None,
                 metadata: dict[str, str] | None = None) -> None:
    """Write a checkpoint directory; shards + index when the weights exceed `max_shard_bytes`."""
    sd = model_or_sd.state_dict() if isinstance(model_or_sd, torch.nn.Module) else model_or_sd
    sd = {k: v.detach().contiguous().cpu() for k, v in sd.items()}
    d = Path(ckpt_dir)
    d.mkdir(parents=True, exist_ok=True)
    total = sum(v.numel() * v.element_size() for v in sd.values())
    if max_shard_bytes is None or total <= max_shard_bytes:
        _atomic_save(sd, d / SINGLE_NAME, metadata)
        return
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k in sorted(sd):
        nb = sd[k].numel() * sd[k].element_size()
        if shards[-1] and size + nb > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = sd[k]
        size += nb
    n = len(shards)
    weight_map = {}
    for i, part in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        _atomic_save(part, d / name, metadata)
        weight_map.update({k: name for k in part})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    atomic_write_text(d / INDEX_NAME, json.dumps(index, indent=2))


def _atomic_save(sd: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None) -> None:
    with atomic_write(path, ".safetensors") as tmp:
        save_file(sd, str(tmp), metadata=metadata)
