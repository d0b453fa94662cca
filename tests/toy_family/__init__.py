"""A toy model family for tests: proof that a family is a folder plus one registry line.

    monkeypatch.setitem(FAMILIES, "toy", ToyFamily())

Its plan differs from MAGI-1's (one block at a time), its DiT is one attention layer over pixels, its codec the
lossless space-to-depth codec at factor 1, its text encoder ignores the prompt."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from flowcache_core.engine.family import Bundle
from flowcache_core.errors import FlowcacheError
from flowcache_core.models.codec import SpaceToDepthCodec
from flowcache_core.models.weights import load_weights, save_weights

from toy_family.config import ToyConfig
from toy_family.dit import ToyDiT
from toy_family.forward import ToyGeneration


@dataclass
class ToyOptions:
    """The toy family has no options of its own."""


class ToyFamily:
    name = "toy"
    Options = ToyOptions

    def recognises(self, path: Path) -> bool:
        return False  # only through config.json's "family"

    def read_config(self, path: Path, variant: str | None) -> ToyConfig:
        return ToyConfig.read(path / "config.json")

    def apply(self, config: ToyConfig, config_file: dict | None, source: str, *, spelled: dict, num_steps=None,
              num_frames=None, height=None, width=None, seed=None) -> ToyConfig:
        given = dict(num_steps=num_steps, num_frames=num_frames, height=height, width=width, seed=seed)
        config = replace(config, **{k: v for k, v in given.items() if v is not None})
        if config.num_frames % config.chunk_frames:
            raise FlowcacheError(f"num_frames {config.num_frames} must be a multiple of {config.chunk_frames}")
        return config

    def cache_defaults(self, config: ToyConfig) -> dict | None:
        return None

    def window_size(self, config: ToyConfig) -> int:
        return 1

    def video(self, config: ToyConfig) -> dict:
        return dict(num_steps=config.num_steps, num_frames=config.num_frames, height=config.height,
                    width=config.width, fps=config.fps)

    def check_inputs(self, config, mode, image, prefix_video) -> None:
        if mode != "t2v":
            raise FlowcacheError(f"the toy family generates t2v only, not {mode}")

    def load(self, path: Path, config: ToyConfig, *, device: str, attn_backend: str, variant) -> Bundle:
        model = ToyDiT(3, config.dim).to(device)
        load_weights(model, path)
        return Bundle("toy", config, model.eval(), SpaceToDepthCodec(spatial=1), None, path)

    def prepare(self, bundle: Bundle, config: ToyConfig, prompt, mode, image, prefix_video) -> ToyGeneration:
        g = torch.Generator().manual_seed(config.seed)
        noise = torch.randn(3, config.num_frames, config.height, config.width, generator=g)
        return ToyGeneration(bundle.model, noise, config.chunk_frames, config.num_steps, config.fps)


def write_toy_bundle(path: Path, config: ToyConfig | None = None, seed: int = 0) -> Path:
    """A random toy model folder: config.json naming the family, model.safetensors."""
    config = config or ToyConfig()
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    save_weights(ToyDiT(3, config.dim), path)
    config.write(path / "config.json")
    return path
