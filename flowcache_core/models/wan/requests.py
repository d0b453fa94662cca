"""Request handling the Wan-based family plugins (SkyReels-V2 DF, causal Wan) share, each naming its own checkpoint
kind (`what`, e.g. "a SkyReels-V2 DF checkpoint") and its config file section (`section`)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from flowcache_core.errors import FlowcacheError


def refuse_variant(variant: str | None, path: Path, what: str) -> None:
    """--variant names a MAGI-1 release variant; a Wan checkpoint has none."""
    if variant is not None:
        raise FlowcacheError(f"--variant {variant!r} applies to MAGI-1 release directories only; {str(path)!r} is {what}")


def overlay_config_file(config, config_file: dict | None, source: str, section: str, what: str,
                        check_settings: Callable[[object, str], None]):
    """The config with a config file's `section` (the family's settings, checked) laid over its settings; a config
    file may hold only that section and `flowcache`."""
    if config_file is None:
        return config
    unknown = sorted(set(config_file) - {section, "flowcache"})
    if unknown:
        raise FlowcacheError(f"{source}: key {unknown[0]!r} unknown for {what} (allowed: {section}, flowcache)")
    if section in config_file:
        check_settings(config_file[section], source)
        config = config.replace_settings(**config_file[section])
    return config


def check_prefix_video(settings, prefix_video: np.ndarray | None) -> None:
    """v2v: a prefix video is given, (T, H, W, 3) at the video's size."""
    if prefix_video is None:
        raise FlowcacheError("v2v needs --prefix-video")
    if prefix_video.shape[1:3] != (settings.height, settings.width):
        raise FlowcacheError(f"prefix video is {prefix_video.shape[2]}x{prefix_video.shape[1]}, the video "
                             f"is {settings.width}x{settings.height}")
