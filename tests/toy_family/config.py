"""The toy family's config: a few numbers, read from the bundle's config.json ("family": "toy", "config": {...})."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from flowcache_core.errors import FlowcacheError


@dataclass
class ToyConfig:
    dim: int = 16  # attention width (one head)
    chunk_frames: int = 2  # frames per chunk (block)
    num_steps: int = 4  # denoise steps per block
    num_frames: int = 8
    height: int = 8
    width: int = 8
    seed: int = 0
    fps: int = 8

    @classmethod
    def read(cls, path: Path) -> "ToyConfig":
        try:
            data = json.loads(path.read_text())["config"]
            return cls(**data)
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise FlowcacheError(f"{str(path)!r} is not a toy config ({e})") from None

    def write(self, path: Path) -> None:
        path.write_text(json.dumps({"family": "toy", "config": dataclasses.asdict(self)}))
