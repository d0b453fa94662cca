"""`flowcache evaluate` end to end on real mp4 files written by our writer."""
from __future__ import annotations

import functools
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from flowcache_cli.main import app
from flowcache_core.eval.metrics import LpipsUnavailable, load_lpips
from flowcache_core.video import write_image, write_video

runner = CliRunner()
FETCH = Path(__file__).resolve().parents[1] / "scripts" / "fetch_lpips_weights.sh"


def invoke(*args: str):
    return runner.invoke(app, ["evaluate"] + [str(a) for a in args])


@functools.lru_cache(maxsize=1)
def lpips_available() -> str | None:
    """None when LPIPS weights are (or could be fetched) in the cache folder, else the reason."""
    found = load_lpips()
    if isinstance(found, LpipsUnavailable):
        try:
            subprocess.run(["sh", str(FETCH)], check=True, capture_output=True, timeout=600)
        except (subprocess.SubprocessError, OSError):
            return found.reason
        found = load_lpips()
    return found.reason if isinstance(found, LpipsUnavailable) else None


def squares(t=12, h=64, w=64) -> np.ndarray:
    """Moving coloured squares on a soft background."""
    yy, xx = np.mgrid[:h, :w]
    f = np.empty((t, h, w, 3), np.uint8)
    for i in range(t):
        f[i, ..., 0] = 60 + xx
        f[i, ..., 1] = 80 + yy
        f[i, ..., 2] = 120
        x0 = (3 * i) % (w - 14)
        f[i, 8:22, x0 : x0 + 14] = (220, 40, 30)
        y0 = (2 * i) % (h - 12)
        f[i, y0 : y0 + 12, 40:52] = (30, 200, 60)
    return f


def noised(frames, sigma, seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(frames + rng.normal(0, sigma, frames.shape), 0, 255).astype(np.uint8)


@pytest.fixture
def ref_video(tmp_path) -> Path:
    return write_video(tmp_path / "ref.mp4", squares(), fps=8, lossless=True)


def one_error_line(result) -> str:
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


def test_same_video_twice(tmp_path, ref_video):
    out = tmp_path / "metrics.json"
    flags = [] if lpips_available() is None else ["--no-lpips"]
    r = invoke("--reference", ref_video, "--candidate", ref_video, "--output", out, *flags)
    assert r.exit_code == 0, r.output
    assert "inf" in r.output
    data = json.loads(out.read_text())
    v = data["videos"][0]
    assert v["psnr"] == "inf" and data["mean"]["psnr"] == "inf"
    assert all(p == "inf" for p in v["psnr_per_frame"]) and len(v["psnr_per_frame"]) == 12
    assert v["ssim"] == pytest.approx(1.0)
    csv_lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert csv_lines[0].startswith("name,") and csv_lines[-1].startswith("mean,") and ",inf," in csv_lines[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv", "metrics.json", "ref.mp4"]
    if lpips_available() is not None:
        pytest.skip(f"LPIPS part skipped: {lpips_available()}")
    assert v["lpips"] == pytest.approx(0.0, abs=1e-6)


def test_noise_levels_order_the_metrics(tmp_path):
    clean = squares()
    for d in ("ref", "cand"):
        (tmp_path / d).mkdir()
    for name, sigma in (("a_low.mp4", 4), ("b_high.mp4", 20)):
        write_video(tmp_path / "ref" / name, clean, fps=8, lossless=True)
        write_video(tmp_path / "cand" / name, noised(clean, sigma), fps=8, lossless=True)
    out = tmp_path / "m.json"
    flags = [] if lpips_available() is None else ["--no-lpips"]
    r = invoke("--reference", tmp_path / "ref", "--candidate", tmp_path / "cand", "--output", out, *flags)
    assert r.exit_code == 0, r.output
    low, high = json.loads(out.read_text())["videos"]
    assert low["name"] == "a_low.mp4"
    assert low["psnr"] > high["psnr"] > 20
    assert low["ssim"] > high["ssim"]
    if lpips_available() is None:
        assert 0 < low["lpips"] < high["lpips"]


def test_mismatched_frame_count(tmp_path, ref_video):
    short = write_video(tmp_path / "short.mp4", squares(t=9), fps=8, lossless=True)
    r = invoke("--reference", ref_video, "--candidate", short, "--no-lpips")
    assert r.exit_code == 2
    line = one_error_line(r)
    assert "ref.mp4 has 12 frames of 64x64" in line and "short.mp4 has 9 frames of 64x64" in line
    r = invoke("--reference", ref_video, "--candidate", short, "--no-lpips", "--max-frames", "9")
    assert r.exit_code == 0, r.output
    assert "inf" in r.output


def test_mismatched_size_and_resize(tmp_path, ref_video):
    small = write_video(tmp_path / "small.mp4", squares(h=48, w=48), fps=8, lossless=True)
    r = invoke("--reference", ref_video, "--candidate", small, "--no-lpips")
    assert r.exit_code == 2 and "48x48" in one_error_line(r)
    r = invoke("--reference", ref_video, "--candidate", small, "--no-lpips", "--resize")
    assert r.exit_code == 0, r.output


def test_unreadable_mp4(tmp_path, ref_video):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x01 definitely not an mp4 " * 40)
    r = invoke("--reference", ref_video, "--candidate", bad, "--no-lpips")
    assert r.exit_code == 2
    assert "bad.mp4" in one_error_line(r)


def test_missing_output_folder(tmp_path, ref_video):
    r = invoke("--reference", ref_video, "--candidate", ref_video, "--output", tmp_path / "nope" / "m.json")
    assert r.exit_code == 2
    assert "nope" in one_error_line(r)


def test_folders_with_unmatched_names(tmp_path):
    for d, names in (("ref", ["a.mp4", "b.mp4"]), ("cand", ["a.mp4", "c.mp4"])):
        (tmp_path / d).mkdir()
        for n in names:
            write_video(tmp_path / d / n, squares(t=2), fps=8, lossless=True)
    r = invoke("--reference", tmp_path / "ref", "--candidate", tmp_path / "cand", "--no-lpips")
    assert r.exit_code == 2
    line = one_error_line(r)
    assert "b.mp4" in line and "c.mp4" in line


def test_images(tmp_path):
    img = squares(t=1)[0]
    a, b = write_image(tmp_path / "a.png", img), write_image(tmp_path / "b.png", noised(img[None], 10)[0])
    r = invoke("--reference", a, "--candidate", b, "--no-lpips")
    assert r.exit_code == 0, r.output
    assert "a.png" in r.output


@pytest.mark.parametrize("device, needle", [("foo", "--device 'foo' is not a torch device"),
                                            ("cuda:99", "--device 'cuda:99'"), ("mps", "--device 'mps' is not supported")])
def test_bad_device_is_one_line_even_without_lpips(tmp_path, ref_video, device, needle):
    """The device was only looked at when LPIPS weights were found: `--device foo` passed unnoticed."""
    r = invoke("--reference", ref_video, "--candidate", ref_video, "--no-lpips", "--device", device)
    assert r.exit_code == 2
    assert needle in one_error_line(r)


def test_decompression_bomb_image_is_one_line(tmp_path):
    from PIL import Image

    bomb = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(bomb, optimize=True)  # ~50 kB; 1.2 GB once decoded as RGB
    r = invoke("--reference", bomb, "--candidate", bomb, "--no-lpips")
    assert r.exit_code == 2
    assert "20000x20000 (400,000,000 pixels), more than the 67,108,864 pixels allowed" in one_error_line(r)
