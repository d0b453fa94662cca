"""A pixel-statistics judge for the default model's world: does a video show its caption's colour and motion?

Meant for single-object captions on a plain background with a static camera ("a red square moves left"):
1. smooth each frame with a 3x3 box filter (generated videos are noisy),
2. background = per-frame median colour; foreground = pixels far from it (threshold above the noise),
3. object colour = median of the foreground's core pixels -> nearest of the 8 palette colours,
4. centroid track -> direction from the mean position in the last third minus the first third.
No learned parts, so it can judge a model trained on the same world without sharing its mistakes.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

import numpy as np

from flowcache_core.errors import FlowcacheError
from flowcache_core.training.world import PALETTE, parse_caption as _parse_world_caption

_NAMES = list(PALETTE)
_RGB = np.asarray([PALETTE[c] for c in _NAMES], np.float32)  # (8, 3)
DIRECTIONS = ("left", "right", "up", "down", "none")


@dataclass(frozen=True)
class Judgement:
    colour: str | None  # nearest palette colour of the object, None when nothing stands out
    direction: str  # "left" | "right" | "up" | "down" | "none"
    colour_distance: float  # RGB distance from the measured object colour to `colour`
    colour_margin: float  # distance to the second nearest palette colour minus colour_distance
    displacement: tuple[float, float]  # (dx, dy) px, last third minus first third, y down
    visible_fraction: float  # frames in which an object was found
    confidence: float  # 0..1, a rough product of the margins above


def parse_caption(caption: str) -> tuple[str, str, str]:
    """(colour, shape, direction) of the caption's first object; direction is "none" unless it 'moves'."""
    obj = _parse_world_caption(caption).objects[0]
    direction = obj.motion.split()[1] if obj.motion.startswith("moves ") else "none"
    return obj.colour, obj.shape, direction


def _box3(x: np.ndarray) -> np.ndarray:
    """3x3 mean over H and W of (T, H, W, C), edges replicated."""
    p = np.pad(x, ((0, 0), (1, 1), (0, 0), (0, 0)), mode="edge")
    x = (p[:, :-2] + p[:, 1:-1] + p[:, 2:]) / 3.0
    p = np.pad(x, ((0, 0), (0, 0), (1, 1), (0, 0)), mode="edge")
    return (p[:, :, :-2] + p[:, :, 1:-1] + p[:, :, 2:]) / 3.0


def judge_video(frames: np.ndarray, *, min_threshold: float = 40.0) -> Judgement:
    """Judge uint8 frames (T, H, W, 3) of a single object on a plain background, static camera."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 2:
        raise FlowcacheError(f"judge needs frames (T>=2, H, W, 3), got shape {tuple(frames.shape)}")
    T, H, W, _ = frames.shape
    x = _box3(frames.astype(np.float32))  # (T, H, W, 3)
    bg = np.median(x.reshape(T, H * W, 3), axis=1)  # (T, 3)
    dist = np.linalg.norm(x - bg[:, None, None, :], axis=-1)  # (T, H, W)
    noise = float(np.median(dist))  # ~1.5 sigma of the smoothed noise over background pixels
    mask = dist > max(min_threshold, 4.0 * noise)  # (T, H, W)
    area = mask.sum(axis=(1, 2))  # (T,)
    visible = area >= max(4, H * W // 1000)
    if not visible.any():
        return Judgement(None, "none", float("inf"), 0.0, (0.0, 0.0), 0.0, 0.0)

    # colour: the core of the object (far from the background), away from blurred edges
    fg = dist[mask]
    core = mask & (dist >= 0.7 * np.percentile(fg, 90))
    rgb = np.median(x[core], axis=0)  # (3,)
    d = np.linalg.norm(_RGB - rgb, axis=1)
    order = np.argsort(d)
    colour, cdist, margin = _NAMES[order[0]], float(d[order[0]]), float(d[order[1]] - d[order[0]])

    # motion: centroid track over frames that show the object
    ys, xs = np.arange(H, dtype=np.float32), np.arange(W, dtype=np.float32)
    m = mask.astype(np.float32)
    safe = np.maximum(area, 1).astype(np.float32)
    cx = (m.sum(axis=1) * xs).sum(axis=1) / safe  # (T,)
    cy = (m.sum(axis=2) * ys).sum(axis=1) / safe  # (T,)
    t = np.flatnonzero(visible)
    first, last = t[t < T / 3], t[t >= 2 * T / 3]
    if len(first) == 0 or len(last) == 0:  # the object is seen only part of the time
        k = max(len(t) // 3, 1)
        first, last = t[:k], t[-k:]
    dx = float(cx[last].mean() - cx[first].mean())
    dy = float(cy[last].mean() - cy[first].mean())
    min_disp = 0.06 * min(H, W)
    dom, other = (abs(dx), abs(dy)) if abs(dx) >= abs(dy) else (abs(dy), abs(dx))
    if dom < min_disp:
        direction = "none"
    elif abs(dx) >= abs(dy):
        direction = "right" if dx > 0 else "left"
    else:
        direction = "down" if dy > 0 else "up"

    vis = float(visible.mean())
    conf = vis * min(1.0, margin / 40.0) * min(1.0, dom / (2 * min_disp)) * (dom / (dom + other + 1e-6))
    return Judgement(colour, direction, cdist, margin, (dx, dy), vis, float(conf))


def judge_against_caption(caption: str, frames: np.ndarray) -> dict:
    """{'colour_ok', 'direction_ok', 'expected', 'judgement'} for one video."""
    colour, shape, direction = parse_caption(caption)
    j = judge_video(frames)
    return dict(colour_ok=j.colour == colour, direction_ok=j.direction == direction,
                expected=dict(colour=colour, shape=shape, direction=direction), judgement=j)


def accuracy(captions: list[str], videos: list[np.ndarray]) -> dict:
    """Colour and direction accuracy of videos against their captions."""
    if len(captions) != len(videos) or not captions:
        raise FlowcacheError(f"accuracy needs as many captions as videos (>0), got {len(captions)} and {len(videos)}")
    rows = [judge_against_caption(c, v) for c, v in zip(captions, videos)]
    return dict(n=len(rows),
                colour=float(np.mean([r["colour_ok"] for r in rows])),
                direction=float(np.mean([r["direction_ok"] for r in rows])),
                both=float(np.mean([r["colour_ok"] and r["direction_ok"] for r in rows])))


def contact_sheet(videos: list[np.ndarray], labels: list[str] | None, path_png: str, *, scale: int = 2,
                  max_label_chars: int = 60) -> None:
    """One row per video: first, middle and last frame (scaled up `scale`x), with its label above."""
    from PIL import Image, ImageDraw

    if not videos:
        raise FlowcacheError("contact_sheet needs at least one video")
    labels = list(labels) if labels is not None else [""] * len(videos)
    if len(labels) != len(videos):
        raise FlowcacheError(f"contact_sheet got {len(videos)} videos but {len(labels)} labels")
    H = max(v.shape[1] for v in videos) * scale
    W = max(v.shape[2] for v in videos) * scale
    pad, text_h = 4, 12 if any(labels) else 0
    row_h = H + text_h + pad
    sheet = Image.new("RGB", (3 * W + 4 * pad, len(videos) * row_h + pad), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, (v, label) in enumerate(zip(videos, labels)):
        y = pad + i * row_h
        if label:
            draw.text((pad, y), label[:max_label_chars], fill=(0, 0, 0))
        for j, t in enumerate((0, len(v) // 2, len(v) - 1)):
            img = Image.fromarray(np.ascontiguousarray(v[t])).resize(
                (v.shape[2] * scale, v.shape[1] * scale), Image.NEAREST)
            sheet.paste(img, (pad + j * (W + pad), y + text_h))
    folder = os.path.dirname(os.path.abspath(path_png))
    if not os.path.isdir(folder):
        raise FlowcacheError(f"contact sheet folder {folder} does not exist")
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=folder)
    os.close(fd)
    try:
        sheet.save(tmp, format="PNG")
        os.replace(tmp, path_png)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
