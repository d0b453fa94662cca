"""What a model family gives the engine, the loaded model it hands back, and how a checkpoint finds its family.

A family lives in flowcache_core/models/<name>/ (config, DiT, plan, forward function, loaders) and is listed in
flowcache_core/models/registry.py. The engine and the API call only the methods below; nothing else of a family
is visible to them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from flowcache_core.engine.loop import Generation
from flowcache_core.errors import FlowcacheError

DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "default_model"  # the shipped default model (MAGI-1 family)


@dataclass
class Bundle:
    """A loaded model: the checkpoint's own config (a request's overrides are not written into it), its DiT,
    the latent codec and the text encoder."""

    family: str
    config: Any
    model: torch.nn.Module
    codec: Any  # models.codec.LatentCodec
    text_encoder: Any
    path: Path | None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


class Family(Protocol):
    name: str
    Options: type  # dataclass of the family's own request options (models/…: option() fields), e.g. cfg_number

    def recognises(self, path: Path) -> bool:
        """True if `path` is a checkpoint folder of this family (its layout, or a config.json naming it)."""

    def read_config(self, path: Path, variant: str | None) -> Any:
        """The checkpoint's config, without loading weights (cheap: used to check a request first)."""

    def apply(self, config: Any, config_file: dict | None, source: str, *, spelled: dict[str, str],
              **options: Any) -> Any:
        """The config with a config file's settings (the parsed JSON object, named `source` in errors) and the
        request's options (num_steps, num_frames, height, width, seed and the family's Options) laid over it,
        validated; one-line FlowcacheError otherwise, naming a given option as `spelled` says."""

    def cache_defaults(self, config: Any) -> dict | None:
        """Cache options this checkpoint recommends (its `cache_defaults`), or None."""

    def window_size(self, config: Any) -> int:
        """Chunks denoised together: a KV budget must hold more than this."""

    def video(self, config: Any) -> dict:
        """What a request with this config makes, for the eval commands (sweep, sample-benchmark): num_steps,
        num_frames, height, width, fps, plus facts of the family's own (e.g. chunk_width) for their reports."""

    def check_inputs(self, config: Any, mode: str, image: np.ndarray | None, prefix_video: np.ndarray | None) -> None:
        """Sizes and lengths of the given image / prefix video, before anything is loaded."""

    def load(self, path: Path, config: Any, *, device: str, attn_backend: str, variant: str | None) -> Bundle:
        """Weights, codec and text encoder, checked strictly (a missing or mis-shaped tensor is one line)."""

    def prepare(self, bundle: Bundle, config: Any, prompt: str, mode: str, image: np.ndarray | None,
                prefix_video: np.ndarray | None) -> Generation:
        """Text conditioning, seeded noise, encoded prefix: a Generation the loop can run (it has `.fps`)."""


def declared_family(path: Path) -> str | None:
    """The family a flowcache bundle's config.json names (its top-level "family"), if any."""
    cfg = path / "config.json"
    if not cfg.is_file():
        return None
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return None  # the family's own reader reports the broken file in one line
    name = data.get("family") if isinstance(data, dict) else None
    return name if isinstance(name, str) else None


def find_family(path: Path | None, families: dict[str, Family]) -> tuple[Family, Path]:
    """The family of a checkpoint folder (None: the shipped default model) and the folder."""
    d = DEFAULT_MODEL_DIR if path is None else Path(path)
    if not d.is_dir():
        raise FlowcacheError(f"checkpoint directory {str(d)!r} does not exist")
    named = declared_family(d)
    if named is not None:
        if named not in families:
            raise FlowcacheError(f"{str(d / 'config.json')!r} names family {named!r}, which is unknown "
                                 f"(known: {', '.join(families)})")
        return families[named], d
    for fam in families.values():
        if fam.recognises(d):
            return fam, d
    raise FlowcacheError(f"checkpoint directory {str(d)!r} is not a model any family recognises "
                         f"(families: {', '.join(families)}; a flowcache bundle has a config.json)")
