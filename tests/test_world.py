"""The procedural world: determinism, caption grammar, colours, motion, speed."""
import re

import numpy as np
import pytest

from flowcache_core.errors import FlowcacheError
from flowcache_core.training.world import (BACKGROUND_COLOURS, PALETTE, WORLD_VOCAB, caption_of, held_out_single_object_captions,
                                  parse_caption, render_caption, sample_caption_batch, sample_clip,
                                  sample_clip_batch, sample_words)

OBJ = r"an? (red|green|blue|yellow|orange|purple|white|black) (circle|ball|square|triangle)"
MOTION = r"(moves (left|right|up|down)|bounces|grows|shrinks|rotates)"
BG = r"( (over|on) an? \w+ (background|to \w+ gradient))?"
GRAMMAR = re.compile(
    rf"^(?:{OBJ} {MOTION}{BG}"
    rf"|two objects{BG}: {OBJ} {MOTION} and {OBJ} {MOTION}"
    rf"|the camera pans (left|right) over {OBJ}{BG})$")


def test_same_seed_same_clip_and_different_seeds_differ():
    a, b, c = sample_clip(7), sample_clip(7), sample_clip(8)
    assert a.frames.shape == (48, 64, 64, 3) and a.frames.dtype == np.uint8
    assert np.array_equal(a.frames, b.frames) and a.caption == b.caption
    assert not np.array_equal(a.frames, c.frames)
    again = render_caption("a red square moves left", 3)
    assert np.array_equal(again.frames, render_caption("a red square moves left", 3).frames)


def test_captions_follow_the_grammar_and_parse_back():
    for seed in range(600):
        words = sample_words(seed)
        cap = caption_of(words)
        assert GRAMMAR.match(cap), cap
        assert set(re.findall(r"[a-z]+", cap)) <= set(WORLD_VOCAB), cap
        assert parse_caption(cap) == words, cap
    assert sample_caption_batch(10, 5) == [sample_clip(10 + i).caption for i in range(5)]
    assert all(len(sample_words(s, single_object=True).objects) == 1 for s in range(50))
    assert all(len(sample_words(s, single_object=False).objects) == 2 for s in range(50))


def test_examples_from_the_spec_parse():
    w = parse_caption("a green circle moves right over a blue background")
    assert (w.objects[0].colour, w.objects[0].shape, w.objects[0].motion, w.background) == \
        ("green", "circle", "moves right", "blue")
    w = parse_caption("two objects: a red circle moves up and a white square moves down")
    assert [o.motion for o in w.objects] == ["moves up", "moves down"] and w.camera == "static"
    w = parse_caption("the camera pans right over a purple circle")
    assert w.camera == "pans right" and w.objects[0].motion == "still"
    assert parse_caption("A red ball bounces!").objects[0].shape == "circle"
    for bad in ("", "something blue", "a square moves", "a red square, a blue circle and a green triangle"):
        with pytest.raises(FlowcacheError):
            parse_caption(bad)
    with pytest.raises(FlowcacheError):
        render_caption("a black square moves left on a navy background", 0)  # too little contrast


def test_rendered_colours_are_the_palette():
    checked = 0
    for seed in range(80):
        clip = sample_clip(seed, single_object=True)
        m = clip.meta
        o = m["objects"][0]
        if m["camera"] == "static" and m["background"] != "gradient":
            flat = clip.frames[0].reshape(-1, 3)
            values, counts = np.unique(flat, axis=0, return_counts=True)
            assert tuple(values[counts.argmax()]) == BACKGROUND_COLOURS[m["background"]]
        bg = np.asarray(m["background_rgb"] or BACKGROUND_COLOURS[m["gradient"][0]])
        assert np.linalg.norm(bg - np.asarray(o["rgb"])) > 100
        for t in range(0, 48, 8):
            x, y = o["centers"][t]
            if 0 <= x < 64 and 0 <= y < 64 and o["radius"][t] >= 2:
                assert tuple(clip.frames[t, int(y), int(x)]) == PALETTE[o["colour"]], (clip.caption, t)
                checked += 1
    assert checked > 200


def _centroid(frames, rgb):
    m = np.all(frames == np.asarray(rgb, np.uint8), axis=-1)  # (T, H, W)
    ys, xs = np.mgrid[: frames.shape[1], : frames.shape[2]]
    n = m.sum(axis=(1, 2))
    return (m * xs).sum(axis=(1, 2)) / n, (m * ys).sum(axis=(1, 2)) / n, n


@pytest.mark.parametrize("direction", ["left", "right", "up", "down"])
def test_moves_clips_move_the_object_visibly(direction):
    for seed in range(5):
        clip = render_caption(f"a red square moves {direction}", seed)
        cx, cy, n = _centroid(clip.frames, PALETTE["red"])
        assert (n > 20).all()  # stays mostly visible
        d = {"right": cx[-1] - cx[0], "left": cx[0] - cx[-1], "down": cy[-1] - cy[0], "up": cy[0] - cy[-1]}[direction]
        assert d > 15
        step = np.diff(cx if direction in ("left", "right") else cy)
        assert (np.sign(step) != -np.sign(step.sum())).all()  # never steps back


def test_other_motions_and_camera():
    clip = render_caption("a blue circle grows on a white background", 0)
    assert _centroid(clip.frames, PALETTE["blue"])[2][-1] > 3 * _centroid(clip.frames, PALETTE["blue"])[2][0]
    clip = render_caption("the camera pans right over a green square on a black background", 1)
    x = clip.meta["objects"][0]["centers"][:, 0]
    assert x[-1] < x[0] - 15 and not np.array_equal(clip.frames[0, 0], clip.frames[-1, 0])  # background moves too
    clip = render_caption("a yellow triangle bounces on a black background", 2)
    y = clip.meta["objects"][0]["centers"][:, 1]
    assert y.max() - y.min() > 15


def test_held_out_captions_are_single_object_static_moves():
    caps = held_out_single_object_captions(0, 40)
    assert caps == held_out_single_object_captions(0, 40) and caps != held_out_single_object_captions(1, 40)
    for c in caps:
        w = parse_caption(c)
        assert len(w.objects) == 1 and w.background is None and w.gradient is None and w.camera == "static"
        assert w.objects[0].motion.startswith("moves ")
    assert {parse_caption(c).objects[0].colour for c in caps} == set(PALETTE)


def test_other_sizes_and_bad_sizes():
    frames, caps = sample_clip_batch(0, 3, num_frames=16, height=32, width=48)
    assert frames.shape == (3, 16, 32, 48, 3) and len(caps) == 3
    with pytest.raises(FlowcacheError):
        sample_clip(0, num_frames=0)
    with pytest.raises(FlowcacheError):
        sample_clip(-1)
