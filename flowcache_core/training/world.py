"""The default model's procedural video world: coloured shapes that move, bounce, grow, shrink and rotate.

A clip is made in two stages, so that captions come without rendering:
1. words   -- `SceneWords`: what the caption says (objects, background, camera). Sampled from a seed or
              parsed from a caption (`parse_caption`).
2. physics -- sizes, start points, speeds, the background actually drawn. Sampled from a seed, then drawn
              with vectorised numpy (antialiased by signed distance) into uint8 (T, H, W, 3).

Caption grammar (canonical phrasing, see `caption_of`):
    a red square moves left
    a green circle moves right over a blue background
    an orange ball bounces on a grey background          ("ball" is a circle)
    a blue square grows over a yellow to black gradient
    two objects on a black background: a red circle moves up and a white square moves down
    the camera pans right over a purple circle [on a grey background]
A background that the caption does not name is a plain colour; no camera words mean a static camera.
`sample_clip(seed).caption == sample_caption(seed)`, and `render_caption` draws any caption of the grammar.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flowcache_core.errors import FlowcacheError

# --------------------------------------------------------------------------------------------- vocabulary

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (40, 60, 220),
    "yellow": (230, 220, 40),
    "orange": (240, 140, 30),
    "purple": (150, 50, 200),
    "white": (240, 240, 240),
    "black": (20, 20, 20),
}
# backgrounds may also be these neutral / dark colours (never object colours)
BACKGROUND_COLOURS: dict[str, tuple[int, int, int]] = {
    **PALETTE,
    "grey": (128, 128, 128),
    "navy": (25, 30, 80),
    "brown": (110, 70, 40),
}
SHAPES = ("circle", "square", "triangle")
SHAPE_NOUNS = {"circle": "circle", "ball": "circle", "square": "square", "triangle": "triangle"}
DIRECTIONS = ("left", "right", "up", "down")
MOTIONS = ("moves left", "moves right", "moves up", "moves down", "bounces", "grows", "shrinks", "rotates")
STILL = "still"  # an object that does not move (camera pans, or a caption without a motion)
CAMERAS = ("static", "pans left", "pans right")

# Every word a caption can contain, in a FIXED order (the text encoder's ids depend on it: append only).
WORLD_VOCAB: tuple[str, ...] = (
    "a", "an", "the", "two", "objects", "and", "over", "on", "to", "background", "gradient",
    "camera", "pans", "moves", "bounces", "grows", "shrinks", "rotates",
    "left", "right", "up", "down",
    "circle", "ball", "square", "triangle",
    "red", "green", "blue", "yellow", "orange", "purple", "white", "black",
    "grey", "navy", "brown",
)

MIN_CONTRAST = 120.0  # RGB distance an object keeps from every background colour under it
MAX_OBJECTS = 2  # objects in one clip


def _contrast(a: str, b: str) -> float:
    return float(np.linalg.norm(np.subtract(BACKGROUND_COLOURS[a], BACKGROUND_COLOURS[b])))


# -------------------------------------------------------------------------------------------- data types


@dataclass(frozen=True)
class ObjectWords:
    colour: str  # a PALETTE name
    shape: str  # a SHAPES name
    motion: str  # a MOTIONS entry or STILL
    noun: str = ""  # the word used in the caption ("ball" for a circle); "" -> the shape name


@dataclass(frozen=True)
class SceneWords:
    objects: tuple[ObjectWords, ...]
    background: str | None = None  # a BACKGROUND_COLOURS name, None: unnamed (plain, chosen when drawn)
    gradient: tuple[str, str] | None = None  # (top, bottom) colour names
    camera: str = "static"  # a CAMERAS entry
    preposition: str = "over"  # "over" | "on", before the background phrase


@dataclass
class Clip:
    frames: np.ndarray  # uint8 (T, H, W, 3)
    caption: str
    meta: dict[str, Any] = field(default_factory=dict)
    alpha: np.ndarray | None = None  # uint8 (T, H, W, MAX_OBJECTS) coverage of each object x 255 (with_alpha)


# ------------------------------------------------------------------------------------------------ words


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _object_phrase(o: ObjectWords) -> str:
    head = f"{_article(o.colour)} {o.colour} {o.noun or o.shape}"
    return head if o.motion == STILL else f"{head} {o.motion}"


def caption_of(words: SceneWords) -> str:
    """The canonical caption of a scene."""
    if words.gradient is not None:
        bg = f" {words.preposition} {_article(words.gradient[0])} {words.gradient[0]} to {words.gradient[1]} gradient"
    elif words.background is not None:
        bg = f" {words.preposition} {_article(words.background)} {words.background} background"
    else:
        bg = ""
    if words.camera != "static":
        return f"the camera {words.camera} over {_object_phrase(words.objects[0])}{bg}"
    if len(words.objects) == 2:
        a, b = words.objects
        return f"two objects{bg}: {_object_phrase(a)} and {_object_phrase(b)}"
    return f"{_object_phrase(words.objects[0])}{bg}"


def _pick(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


def _sample_object(rng: np.random.Generator, taken: set[str], motion: str | None = None) -> ObjectWords:
    colour = _pick(rng, [c for c in PALETTE if c not in taken])
    motion = motion or _pick(rng, MOTIONS)
    shapes = SHAPES[1:] if motion == "rotates" else SHAPES  # a rotating circle looks still
    shape = _pick(rng, shapes)
    noun = "ball" if shape == "circle" and rng.random() < 0.2 else shape
    return ObjectWords(colour, shape, motion, noun)


def _sample_background(rng: np.random.Generator, objects, named_p: float, gradient_p: float):
    """(background, gradient): colours far from every object colour; background None = unnamed."""
    ok = [c for c in BACKGROUND_COLOURS if all(_contrast(c, o.colour) > MIN_CONTRAST for o in objects)]
    u = rng.random()
    if u < gradient_p:
        top = _pick(rng, ok)
        bottom = _pick(rng, [c for c in ok if _contrast(c, top) > 80])
        return None, (top, bottom)
    if u < gradient_p + named_p:
        return _pick(rng, ok), None
    return None, None


def sample_words(seed: int, *, single_object: bool | None = None) -> SceneWords:
    """What clip `seed` shows. single_object: True one object (any camera), False two objects, None mixed."""
    w = _sample_words(seed, single_object)
    if w.background is None and w.gradient is None:
        w = SceneWords(w.objects, None, None, w.camera, "over")  # no phrase: the default preposition
    return w


def _sample_words(seed: int, single_object: bool | None) -> SceneWords:
    rng = np.random.default_rng([_check_seed(seed), 1])
    kind = rng.random()
    two = (kind < 0.25) if single_object is None else (not single_object)
    prep = _pick(rng, ("over", "on"))
    if two:
        a = _sample_object(rng, set())
        b = _sample_object(rng, {a.colour})
        bg, grad = _sample_background(rng, (a, b), named_p=0.5, gradient_p=0.1)
        return SceneWords((a, b), bg, grad, "static", prep)
    if rng.random() < 0.2:  # camera pan over a still object
        o = _sample_object(rng, set(), motion=STILL)
        bg, grad = _sample_background(rng, (o,), named_p=0.4, gradient_p=0.1)
        return SceneWords((o,), bg, grad, _pick(rng, CAMERAS[1:]), "on")
    o = _sample_object(rng, set())
    bg, grad = _sample_background(rng, (o,), named_p=0.5, gradient_p=0.12)
    return SceneWords((o,), bg, grad, "static", prep)


def sample_caption(seed: int, *, single_object: bool | None = None) -> str:
    """The caption of `sample_clip(seed, single_object=...)`, without drawing it."""
    return caption_of(sample_words(seed, single_object=single_object))


def sample_caption_batch(seed: int, n: int, *, single_object: bool | None = None) -> list[str]:
    """Captions of clips seed, seed+1, ..., seed+n-1."""
    return [sample_caption(seed + i, single_object=single_object) for i in range(n)]


def held_out_single_object_captions(seed: int, n: int) -> list[str]:
    """n judge-benchmark captions: one object, unnamed plain background, static camera, 'moves <dir>'.

    Directions cycle evenly, colours cycle through a seeded permutation, shapes are random. The stream is
    separate from the training seeds (`sample_clip`) but uses the same vocabulary and combinations.
    """
    rng = np.random.default_rng([_check_seed(seed), 7])
    colours = list(PALETTE)
    order = rng.permutation(len(colours))
    out = []
    for i in range(n):
        colour = colours[int(order[i % len(colours)])]
        if i % len(colours) == len(colours) - 1:
            order = rng.permutation(len(colours))
        out.append(f"{_article(colour)} {colour} {_pick(rng, SHAPES)} moves {DIRECTIONS[i % 4]}")
    return out


_MOTION_WORDS = {
    "moves": "moves", "move": "moves", "moving": "moves",
    "bounces": "bounces", "bounce": "bounces", "bouncing": "bounces",
    "grows": "grows", "grow": "grows", "growing": "grows",
    "shrinks": "shrinks", "shrink": "shrinks", "shrinking": "shrinks",
    "rotates": "rotates", "rotate": "rotates", "rotating": "rotates", "spins": "rotates",
}
_COLOUR_ALT = "|".join(BACKGROUND_COLOURS)


def parse_caption(caption: str) -> SceneWords:
    """Read a caption of the world's grammar (leniently: word order inside an object phrase, verb forms)."""
    text = " ".join(re.findall(r"[a-z]+", caption.lower()))
    camera, preposition, background, gradient = "static", "over", None, None
    m = re.search(r"\bcamera pans (left|right)\b", text)
    if m:
        camera, text = f"pans {m.group(1)}", text[: m.start()] + text[m.end():]
    m = re.search(rf"\b(?:(on|over) )?an? ({_COLOUR_ALT}) to ({_COLOUR_ALT}) gradient( background)?\b", text)
    if m:
        gradient, preposition = (m.group(2), m.group(3)), m.group(1) or preposition
        text = text[: m.start()] + text[m.end():]
    m = re.search(rf"\b(?:(on|over) )?an? ({_COLOUR_ALT}) background\b", text)
    if m and gradient is None:
        background, preposition = m.group(2), m.group(1) or preposition
        text = text[: m.start()] + text[m.end():]
    tokens = text.split()
    shape_at = [i for i, w in enumerate(tokens) if w in SHAPE_NOUNS]
    if not shape_at:
        raise FlowcacheError(f"caption {caption!r} names no shape; expected e.g. 'a red square moves left' "
                             f"(shapes: {', '.join(SHAPE_NOUNS)})")
    if len(shape_at) > 2:
        raise FlowcacheError(f"caption {caption!r} names {len(shape_at)} objects; the world draws 1 or 2")
    objects = []
    for k, i in enumerate(shape_at):
        colour = tokens[i - 1] if i > 0 else ""
        if colour not in PALETTE:
            raise FlowcacheError(f"caption {caption!r}: no colour before {tokens[i]!r}; "
                                 f"colours: {', '.join(PALETTE)}")
        end = shape_at[k + 1] - 1 if k + 1 < len(shape_at) else len(tokens)
        motion = STILL
        for j in range(i + 1, end):
            verb = _MOTION_WORDS.get(tokens[j])
            if verb == "moves":
                nxt = tokens[j + 1] if j + 1 < len(tokens) else ""
                if nxt not in DIRECTIONS:
                    raise FlowcacheError(f"caption {caption!r}: 'moves' needs one of {', '.join(DIRECTIONS)}")
                motion = f"moves {nxt}"
                break
            if verb is not None:
                motion = verb
                break
        objects.append(ObjectWords(colour, SHAPE_NOUNS[tokens[i]], motion, tokens[i]))
    if camera != "static" and len(objects) > 1:
        raise FlowcacheError(f"caption {caption!r}: a camera pan goes over one object, not {len(objects)}")
    return SceneWords(tuple(objects), background, gradient, camera, preposition)


# ---------------------------------------------------------------------------------------------- physics


@dataclass
class _Track:
    """Per-frame state of one object, in pixels of the frame."""
    rgb: np.ndarray  # float32 (3,)
    shape: str
    cx: np.ndarray  # float32 (T,)
    cy: np.ndarray  # float32 (T,)
    r: np.ndarray  # float32 (T,) radius-like size
    angle: np.ndarray  # float32 (T,) radians
    enters: bool = False


def _linear_path(rng, n_frames: int, extent: float, r0: float, enter: bool, speed: float) -> np.ndarray:
    """Positions along one axis moving in + direction; mostly inside [0, extent] unless entering."""
    steps = max(n_frames - 1, 1)
    lo, hi = 0.35 * r0, extent - 0.35 * r0
    if enter:
        lo = -0.9 * r0
    speed = max(min(speed, (hi - lo) / steps), 0.25 * extent / 64)
    span = speed * steps
    start = lo if enter else lo + rng.random() * max(hi - lo - span, 0.0)
    return (start + speed * np.arange(n_frames)).astype(np.float32)


def _object_track(rng, o: ObjectWords, T: int, H: int, W: int, pan: float, allow_enter: bool) -> _Track:
    s = min(H, W) / 64.0
    t = np.arange(T, dtype=np.float32)
    r0 = float(rng.uniform(5.0, 9.0) * s)
    r = np.full(T, r0, np.float32)
    angle = np.zeros(T, np.float32)
    enters = False
    cx = np.full(T, rng.uniform(r0 + 1, W - r0 - 1), np.float32)
    cy = np.full(T, rng.uniform(r0 + 1, H - r0 - 1), np.float32)
    if o.motion.startswith("moves"):
        d = o.motion.split()[1]
        enters = allow_enter and rng.random() < 0.12
        extent = W if d in ("left", "right") else H
        path = _linear_path(rng, T, extent, r0, enters, float(rng.uniform(0.5, 1.2) * s))
        if d in ("left", "up"):
            path = extent - path
        if d in ("left", "right"):
            cx = path
        else:
            cy = path
    elif o.motion == "bounces":
        floor = H - r0 - 1
        height = rng.uniform(0.35, 0.6) * H
        period = rng.uniform(16, 28)
        cy = (floor - height * np.abs(np.sin(np.pi * t / period + rng.uniform(0, np.pi)))).astype(np.float32)
    elif o.motion in ("grows", "shrinks"):
        r_small = float(rng.uniform(3.0, 5.0) * s)
        r_big = r_small * float(rng.uniform(2.0, 2.8))
        r = np.linspace(r_small, r_big, T, dtype=np.float32)
        if o.motion == "shrinks":
            r = r[::-1].copy()
        cx[:] = rng.uniform(r_big * 0.7, W - r_big * 0.7)
        cy[:] = rng.uniform(r_big * 0.7, H - r_big * 0.7)
    elif o.motion == "rotates":
        spin = rng.uniform(2.5, 6.0) * (1 if rng.random() < 0.5 else -1)
        angle = np.deg2rad(spin * t).astype(np.float32)
    if pan != 0.0:  # the camera moves by `pan` px/frame: a still object drifts the other way in the frame
        path = _linear_path(rng, T, W, r0, False, abs(pan))
        cx = path if pan < 0 else W - path
    return _Track(np.asarray(PALETTE[o.colour], np.float32), o.shape, cx, cy, r, angle, enters)


def _tracks(rng, words: SceneWords, T: int, H: int, W: int, pan: float, allow_enter: bool) -> list[_Track]:
    if len(words.objects) == 1:
        return [_object_track(rng, words.objects[0], T, H, W, pan, allow_enter)]
    best, best_d = None, -1.0
    for _ in range(8):  # keep two objects apart for most of the clip
        tr = [_object_track(rng, o, T, H, W, pan, allow_enter) for o in words.objects]
        gap = np.hypot(tr[0].cx - tr[1].cx, tr[0].cy - tr[1].cy) - (tr[0].r + tr[1].r)
        d = float(np.mean(gap > 0))
        if d > best_d:
            best, best_d = tr, d
        if d >= 0.9:
            break
    return best


def _background(rng, words: SceneWords, T: int, H: int, W: int, pan: float):
    """(array broadcastable to (T, H, W, 3) float32, meta)."""
    meta: dict[str, Any] = {}
    if words.gradient is not None:
        top, bottom = (np.asarray(BACKGROUND_COLOURS[c], np.float32) for c in words.gradient)
        w = np.linspace(0.0, 1.0, H, dtype=np.float32)[:, None]
        bg = (top * (1 - w) + bottom * w)[None, :, None, :]  # (1, H, 1, 3)
        meta.update(background="gradient", gradient=words.gradient, background_rgb=None)
    else:
        name = words.background
        if name is None:
            ok = [c for c in BACKGROUND_COLOURS
                  if all(_contrast(c, o.colour) > MIN_CONTRAST for o in words.objects)]
            name = _pick(rng, ok)
        bg = np.asarray(BACKGROUND_COLOURS[name], np.float32)[None, None, None, :]  # (1, 1, 1, 3)
        meta.update(background=name, gradient=None, background_rgb=BACKGROUND_COLOURS[name])
    if pan != 0.0:  # texture that scrolls with the camera, so the pan shows on the background too
        period = rng.uniform(12.0, 20.0) * W / 64
        x = np.arange(W, dtype=np.float32)[None, :] + pan * np.arange(T, dtype=np.float32)[:, None]
        bands = 22.0 * np.sin(2 * np.pi * x / period + rng.uniform(0, 2 * np.pi))  # (T, W)
        bg = bg + bands[:, None, :, None].astype(np.float32)
    return bg, meta


# ---------------------------------------------------------------------------------------------- drawing

_TRI_NORMALS = np.array([[math.cos(a), math.sin(a)] for a in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3,
                                                            np.pi / 2 + 4 * np.pi / 3)], np.float32)


def _coverage(tr: _Track, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Antialiased coverage (T, h, w) in [0, 1] of the object over pixel centres ys (h,), xs (w,)."""
    dx = xs[None, None, :] + 0.5 - tr.cx[:, None, None]  # (T, 1, w)
    dy = ys[None, :, None] + 0.5 - tr.cy[:, None, None]  # (T, h, 1)
    r = tr.r[:, None, None]
    if tr.shape == "circle":
        sd = np.sqrt(dx * dx + dy * dy) - r
    else:
        c, s = np.cos(tr.angle)[:, None, None], np.sin(tr.angle)[:, None, None]
        u, v = dx * c + dy * s, dy * c - dx * s  # object frame
        if tr.shape == "square":
            sd = np.maximum(np.abs(u), np.abs(v)) - 0.886 * r  # same area as the circle
        else:  # equilateral triangle pointing up, circumradius 1.35 r, inradius half that
            n = _TRI_NORMALS
            sd = np.maximum(np.maximum(u * n[0, 0] + v * n[0, 1], u * n[1, 0] + v * n[1, 1]),
                            u * n[2, 0] + v * n[2, 1]) - 0.675 * r
    return np.clip(0.5 - sd, 0.0, 1.0)


def _draw(bg: np.ndarray, tracks: list[_Track], T: int, H: int, W: int, alpha: np.ndarray | None = None) -> np.ndarray:
    """uint8 (T, H, W, 3); alpha (T, H, W, k) float32, if given, receives each object's coverage (training
    uses it to weight object pixels and to recolour objects: frame + a*(new - old) is the clip drawn in new)."""
    frames = np.empty((T, H, W, 3), np.float32)
    frames[...] = bg
    for k, tr in enumerate(tracks):
        reach = tr.r * (1.4 if tr.shape == "triangle" else 1.3) + 1.0
        x0, x1 = int(max(np.floor(np.min(tr.cx - reach)), 0)), int(min(np.ceil(np.max(tr.cx + reach)), W))
        y0, y1 = int(max(np.floor(np.min(tr.cy - reach)), 0)), int(min(np.ceil(np.max(tr.cy + reach)), H))
        if x1 <= x0 or y1 <= y0:
            continue
        a = _coverage(tr, np.arange(y0, y1, dtype=np.float32), np.arange(x0, x1, dtype=np.float32))
        win = frames[:, y0:y1, x0:x1]  # view (T, h, w, 3)
        win += a[..., None] * (tr.rgb - win)
        if alpha is not None:
            alpha[:, y0:y1, x0:x1, k] = a
    np.clip(frames, 0, 255, out=frames)
    frames += 0.5
    return frames.astype(np.uint8)


# ------------------------------------------------------------------------------------------------ clips


def _check_seed(seed: int) -> int:
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise FlowcacheError(f"seed {seed!r} must be an integer >= 0")
    return int(seed)


def _check_size(num_frames: int, height: int, width: int) -> None:
    if num_frames < 1:
        raise FlowcacheError(f"num_frames {num_frames} must be >= 1")
    if height < 16 or width < 16:
        raise FlowcacheError(f"frame size {height}x{width} must be at least 16x16")


def _render(words: SceneWords, rng, T: int, H: int, W: int, allow_enter: bool, seed: int, caption: str,
            with_alpha: bool = False) -> Clip:
    pan = 0.0
    if words.camera != "static":
        pan = float(rng.uniform(0.5, 1.0) * W / 64) * (1 if words.camera == "pans right" else -1)
    bg, meta = _background(rng, words, T, H, W, pan)
    tracks = _tracks(rng, words, T, H, W, pan, allow_enter)
    alpha = np.zeros((T, H, W, MAX_OBJECTS), np.float32) if with_alpha else None
    frames = _draw(bg, tracks, T, H, W, alpha)
    meta.update(
        seed=seed,
        camera=words.camera,
        pan_px_per_frame=pan,
        objects=[dict(colour=o.colour, shape=o.shape, motion=o.motion, rgb=PALETTE[o.colour],
                      centers=np.stack([tr.cx, tr.cy], axis=1), radius=tr.r, enters=tr.enters)
                 for o, tr in zip(words.objects, tracks)],
    )
    a8 = None if alpha is None else (alpha * 255 + 0.5).astype(np.uint8)
    return Clip(frames, caption, meta, a8)


def sample_clip(seed: int, num_frames: int = 48, height: int = 64, width: int = 64, *,
                single_object: bool | None = None, with_alpha: bool = False) -> Clip:
    """Clip number `seed` of the world (deterministic). meta: objects (colour, shape, motion, rgb,
    centers (T, 2) x/y px, radius (T,), enters), background name ("gradient" for a gradient),
    background_rgb, gradient, camera, pan_px_per_frame, seed."""
    _check_size(num_frames, height, width)
    words = sample_words(seed, single_object=single_object)
    rng = np.random.default_rng([int(seed), 2])
    return _render(words, rng, num_frames, height, width, True, int(seed), caption_of(words), with_alpha)


def sample_clip_batch(seed: int, n: int, num_frames: int = 48, height: int = 64, width: int = 64, *,
                      single_object: bool | None = None, with_alpha: bool = False):
    """Clips seed..seed+n-1 as frames uint8 (n, T, H, W, 3) and their captions; with_alpha adds each object's
    coverage uint8 (n, T, H, W, MAX_OBJECTS) (x 255) and colour uint8 (n, MAX_OBJECTS, 3) (0 where absent)."""
    clips = [sample_clip(seed + i, num_frames, height, width, single_object=single_object, with_alpha=with_alpha)
             for i in range(n)]
    frames, captions = np.stack([c.frames for c in clips]), [c.caption for c in clips]
    if not with_alpha:
        return frames, captions
    rgb = np.zeros((n, MAX_OBJECTS, 3), np.uint8)
    for i, c in enumerate(clips):
        for k, o in enumerate(c.meta["objects"]):
            rgb[i, k] = o["rgb"]
    return frames, captions, np.stack([c.alpha for c in clips]), rgb


def render_caption(caption: str, seed: int, num_frames: int = 48, height: int = 64, width: int = 64) -> Clip:
    """Draw a clip that shows `caption` (grammar of this module); placement, speed and an unnamed
    background come from `seed`. Objects stay mostly in view. Raises FlowcacheError on captions
    outside the grammar."""
    _check_size(num_frames, height, width)
    words = parse_caption(caption)
    for o in words.objects:
        under = [words.background] if words.background else list(words.gradient or ())
        for b in under:
            if _contrast(b, o.colour) <= MIN_CONTRAST:
                raise FlowcacheError(f"caption {caption!r}: a {o.colour} object on {b} would not show; "
                                     f"pick colours further apart")
    rng = np.random.default_rng([_check_seed(seed), 3])
    return _render(words, rng, num_frames, height, width, False, int(seed), caption)


def world_text_config(**kw):
    """The default model's text encoder config: one id for each word of this world (after PAD and UNK)."""
    from flowcache_core.models.text import PAD, UNK, WordTextEncoderConfig

    return WordTextEncoderConfig(vocab=(PAD, UNK, *WORLD_VOCAB), **kw)
