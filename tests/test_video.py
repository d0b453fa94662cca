"""Video/image io: round trips through the bundled ffmpeg, atomic writes, one-line errors on bad paths."""
from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from flowcache_core import video
from flowcache_core.errors import FlowcacheError
from flowcache_core.eval.metrics import psnr
from flowcache_core.video import check_output_path, read_image, read_video, write_image, write_video


def natural_clip(t=24, h=64, w=64) -> np.ndarray:
    """Luma-dominant moving texture with soft coloured blobs, like natural video (uint8 (T,H,W,3))."""
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    f = np.empty((t, h, w, 3), np.float32)
    for i in range(t):
        lum = 110 + 45 * np.sin(xx / 6 + i / 4) * np.cos(yy / 8 - i / 6)
        f[i] = lum[..., None] * np.array([1.0, 0.95, 0.9])
        for cx, cy, col in [((8 + 2 * i) % w, 28, (150, 90, 70)), (36, (4 + 3 * i) % h, (80, 130, 100))]:
            g = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 6**2))[..., None]
            f[i] = f[i] * (1 - g) + np.array(col) * g
    return np.clip(f, 0, 255).astype(np.uint8)


def squares_clip(t=12, h=64, w=64) -> np.ndarray:
    """Saturated moving squares on a gradient: hard colour edges (worst case for yuv420p)."""
    f = np.zeros((t, h, w, 3), np.uint8)
    f[..., 2] = np.linspace(0, 255, w, dtype=np.uint8)[None, None, :]
    for i in range(t):
        x0 = (3 * i) % (w - 12)
        f[i, 10:22, x0 : x0 + 12] = (230, 30, 40)
        f[i, h - 20 : h - 8, (w - 12 - 2 * i) % (w - 12) :][:, :12] = (20, 210, 60)
    return f


def test_round_trip_default_quality(tmp_path):
    frames = natural_clip()
    out = write_video(tmp_path / "a.mp4", frames, fps=8)
    back, fps = read_video(out)
    assert back.shape == frames.shape and back.dtype == np.uint8
    assert fps == pytest.approx(8.0)
    assert psnr(frames, back) >= 40.0
    assert video.count_frames(out) == len(frames)


@pytest.mark.parametrize("size", [(64, 64), (63, 65)])
def test_lossless_is_bit_exact(tmp_path, size):
    frames = squares_clip(h=size[0], w=size[1])
    back, fps = read_video(write_video(tmp_path / "a.mp4", frames, fps=24, lossless=True))
    assert fps == pytest.approx(24.0)
    np.testing.assert_array_equal(back, frames)


def test_odd_size_is_padded_then_cropped_back(tmp_path):
    frames = natural_clip(t=6, h=33, w=47)
    back, _ = read_video(write_video(tmp_path / "odd.mp4", frames, fps=8))
    assert back.shape == frames.shape
    assert psnr(frames, back) >= 35.0


def test_max_frames_reads_a_prefix(tmp_path):
    frames = natural_clip(t=10)
    back, _ = read_video(write_video(tmp_path / "a.mp4", frames, fps=8, lossless=True), max_frames=4)
    np.testing.assert_array_equal(back, frames[:4])


def test_write_leaves_no_temp_file(tmp_path):
    write_video(tmp_path / "a.mp4", natural_clip(t=4), fps=8)
    write_image(tmp_path / "a.png", natural_clip(t=1)[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4", "a.png"]


def test_failed_write_keeps_previous_file(tmp_path, monkeypatch):
    out = tmp_path / "a.mp4"
    write_video(out, natural_clip(t=4), fps=8)
    before = out.read_bytes()
    # an "ffmpeg" that writes half a file to its output argument and fails
    fake = tmp_path / "fake_ffmpeg"
    fake.write_text('#!/bin/sh\nfor last; do :; done\nhead -c 100 /dev/urandom > "$last"\necho "boom: disk on fire" >&2\nexit 1\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(video, "ffmpeg_exe", lambda: str(fake))
    with pytest.raises(FlowcacheError, match=r"a\.mp4.*boom: disk on fire"):
        write_video(out, natural_clip(t=4), fps=8)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4", "fake_ffmpeg"]


def test_missing_output_folder_is_a_one_line_error(tmp_path):
    target = tmp_path / "nope" / "a.mp4"
    with pytest.raises(FlowcacheError, match="does not exist") as e:
        write_video(target, natural_clip(t=2), fps=8)
    assert str(tmp_path / "nope") in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(FlowcacheError, match="is a folder"):
        check_output_path(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only folders")
def test_read_only_output_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(FlowcacheError, match="not writable"):
            check_output_path(ro / "a.mp4")
    finally:
        ro.chmod(0o755)


def test_bad_inputs_name_the_path(tmp_path):
    with pytest.raises(FlowcacheError, match="missing.mp4 does not exist"):
        read_video(tmp_path / "missing.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(FlowcacheError, match="empty.mp4 is empty"):
        read_video(tmp_path / "empty.mp4")
    (tmp_path / "junk.mp4").write_bytes(b"this is not a video" * 50)
    with pytest.raises(FlowcacheError, match="junk.mp4 is not readable") as e:
        read_video(tmp_path / "junk.mp4")
    assert "\n" not in str(e.value)
    (tmp_path / "junk.png").write_bytes(b"nope" * 10)
    with pytest.raises(FlowcacheError, match="junk.png is not readable"):
        read_image(tmp_path / "junk.png")
    with pytest.raises(FlowcacheError, match="uint8"):
        write_video(tmp_path / "f.mp4", np.zeros((2, 8, 8, 3), np.float32), fps=8)
    with pytest.raises(FlowcacheError, match="fps"):
        write_video(tmp_path / "f.mp4", np.zeros((2, 8, 8, 3), np.uint8), fps=0)


def test_image_round_trip(tmp_path):
    img = squares_clip(t=1, h=31, w=45)[0]
    np.testing.assert_array_equal(read_image(write_image(tmp_path / "x.png", img)), img)
    jpg = read_image(write_image(tmp_path / "x.jpg", natural_clip(t=1)[0]))
    assert jpg.shape == (64, 64, 3) and psnr(natural_clip(t=1)[0], jpg) > 30


@pytest.mark.parametrize("size", [(20000, 20000), (10000, 10000), (9000, 8000)])
def test_oversized_image_is_refused_from_its_header(tmp_path, size):
    """Above PIL's bomb limit x2 PIL raised (a traceback); above the limit it warned, then decoded; below it, a
    72 M pixel image was decoded too. read_image refuses all three from the header, in one line, no warning."""
    import warnings

    from PIL import Image

    path = tmp_path / "big.png"
    Image.new("1", size).save(path, optimize=True)  # 1-bit: a few kB to ~50 kB on disk
    limit = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(FlowcacheError) as e:
            read_image(path)
    w, h = size
    assert str(e.value) == (f"image {path} is {w}x{h} ({w * h:,} pixels), more than the 67,108,864 pixels "
                            "allowed (8192x8192); resize it first")
    assert Image.MAX_IMAGE_PIXELS == limit  # PIL's own guard is back for everyone else

