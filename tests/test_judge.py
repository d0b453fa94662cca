"""The pixel-statistics judge on clean and degraded world clips."""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # bench/ is not a package

from bench.judge import accuracy, contact_sheet, judge_video, parse_caption  # noqa: E402
from flowcache_core.errors import FlowcacheError  # noqa: E402
from flowcache_core.training.world import held_out_single_object_captions, render_caption  # noqa: E402

CAPTIONS = held_out_single_object_captions(0, 60)


@pytest.fixture(scope="module")
def clean():
    return [render_caption(c, seed).frames for seed, c in enumerate(CAPTIONS)]


def _blur3(frames):
    p = np.pad(frames.astype(np.float32), ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    H, W = frames.shape[1:3]
    return sum(p[:, i:i + H, j:j + W] for i in range(3) for j in range(3)) / 9.0


def _degrade(frames, rng, blur_first):
    x = frames.astype(np.float32)
    if blur_first:
        x = _blur3(x) + rng.normal(0, 20, x.shape)
    else:
        x = _blur3(x + rng.normal(0, 20, x.shape))
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def test_parse_caption():
    assert parse_caption("a red square moves left") == ("red", "square", "left")
    assert parse_caption("an orange ball bounces on a black background") == ("orange", "circle", "none")
    with pytest.raises(FlowcacheError):
        parse_caption("nothing here")


def test_clean_accuracy(clean):
    acc = accuracy(CAPTIONS, clean)
    print(f"judge clean: {acc}")
    assert acc["colour"] >= 0.98 and acc["direction"] >= 0.95


@pytest.mark.parametrize("blur_first", [True, False])
def test_noisy_blurred_accuracy(clean, blur_first):
    rng = np.random.default_rng(1)
    acc = accuracy(CAPTIONS, [_degrade(v, rng, blur_first) for v in clean])
    print(f"judge noise 20 + blur3 (blur first={blur_first}): {acc}")
    assert acc["colour"] >= 0.90 and acc["direction"] >= 0.90


def test_judgement_fields_and_empty_video(clean):
    j = judge_video(clean[0])
    assert j.colour is not None and 0 < j.confidence <= 1 and j.visible_fraction == 1.0
    blank = np.full((16, 32, 32, 3), 128, np.uint8)
    j = judge_video(blank)
    assert j.colour is None and j.direction == "none" and j.confidence == 0.0
    still = np.repeat(clean[0][:1], 16, axis=0)
    assert judge_video(still).direction == "none"
    with pytest.raises(FlowcacheError):
        judge_video(clean[0][0])


def test_contact_sheet(tmp_path, clean):
    from PIL import Image
    path = tmp_path / "sheet.png"
    contact_sheet(clean[:3], CAPTIONS[:3], str(path))
    img = Image.open(path)
    assert img.size[0] > 3 * 64 and img.size[1] > 3 * 64
    assert os.listdir(tmp_path) == ["sheet.png"]
    with pytest.raises(FlowcacheError):
        contact_sheet(clean[:2], ["one"], str(path))
