"""Our PSNR and LPIPS (AlexNet, v0.1) against published values on pyiqa's five TID2013 calibration pairs.

Images: `ResultsCalibra/{ref_dir,dist_dir}/I{03,04,06,08,19}.bmp` inside the `pyiqa` 0.1.16 wheel
(downloaded at test time with pip into the flowcache cache folder, read inside the zip, never committed).
Values: `ResultsCalibra/calibration_summary.csv` of github.com/chaofengc/IQA-PyTorch (not in the wheel),
columns I03, I04, I06, I08, I19 in that order. Its "lpips" row is the original implementation
(richzhang/PerceptualSimilarity, alex v0.1): 0.7237, 0.2572, 0.0508, 0.052, 0.4253 (pyiqa's own row
has 0.0521 for I08: both are 0.052 to 3 decimals). Its "psnr" row: 21.11, 20.99, 27.01, 23.3, 21.62.
We check LPIPS to 3 decimals and PSNR to 2 (|ours - published| <= half a unit of the last place).
"""
from __future__ import annotations

import functools
import io
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import real_lpips
from flowcache_core.eval.metrics import LpipsUnavailable, cache_dir, lpips_per_frame, psnr

PAIRS = ["I03", "I04", "I06", "I08", "I19"]
PUBLISHED_LPIPS = [0.7237, 0.2572, 0.0508, 0.0520, 0.4253]
PUBLISHED_PSNR = [21.11, 20.99, 27.01, 23.30, 21.62]
PYIQA = ("pyiqa", "0.1.16")


@functools.lru_cache(maxsize=1)
def _pyiqa_wheel() -> Path | str:
    """The pyiqa wheel in the cache folder (downloaded once), or why it could not be had."""
    dest = cache_dir() / "test-data"
    name, version = PYIQA
    found = sorted(dest.glob(f"{name}-{version}-*.whl"))
    if not found:
        dest.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
               "--dest", str(dest), f"{name}=={version}"]  # fmt: skip
        try:
            subprocess.run(cmd, check=True, capture_output=True, timeout=300)
        except (subprocess.SubprocessError, OSError) as e:
            return f"pip download {name}=={version} failed ({type(e).__name__}); no registry reachable?"
        found = sorted(dest.glob(f"{name}-{version}-*.whl"))
    return found[0] if found else f"pip download {name}=={version} produced no wheel"


def _pair(name: str) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    wheel = _pyiqa_wheel()
    if isinstance(wheel, str):
        pytest.skip(wheel)
    with zipfile.ZipFile(wheel) as zf:
        ref, dist = (
            np.asarray(Image.open(io.BytesIO(zf.read(f"ResultsCalibra/{d}/{name}.bmp"))).convert("RGB"))
            for d in ("ref_dir", "dist_dir")
        )
    return ref[None], dist[None]  # (1, H, W, 3)


@pytest.mark.parametrize("name,published", list(zip(PAIRS, PUBLISHED_PSNR)))
def test_psnr_matches_published(name, published):
    ref, dist = _pair(name)
    assert abs(psnr(ref, dist) - published) <= 0.005 + 1e-9


@pytest.mark.parametrize("name,published", list(zip(PAIRS, PUBLISHED_LPIPS)))
def test_lpips_matches_published(name, published):
    ref, dist = _pair(name)
    model = real_lpips()
    if isinstance(model, LpipsUnavailable):
        pytest.skip(f"LPIPS weights unavailable offline: {model.reason}")
    value = float(lpips_per_frame(model, ref, dist)[0])
    assert abs(value - published) <= 0.0005 + 1e-9, f"{name}: ours {value:.5f}, published {published}"
