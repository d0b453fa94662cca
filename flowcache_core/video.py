"""Video and image io: mp4 through the ffmpeg that the `imageio-ffmpeg` wheel bundles, images through Pillow.

Pixels at this boundary are `uint8` numpy arrays: videos `(T, H, W, 3)`, images `(H, W, 3)`, RGB.

Encoding (decided here, used by every writer in the package):
- default: H.264 (libx264), yuv420p, CRF 12, preset medium. CRF 12 is past "visually lossless" (~17-18)
  on purpose: `evaluate` compares cached against uncached videos, and the codec's error must stay far
  below the differences we measure (tests/test_video.py bounds the round trip). 4:2:0 halves chroma
  resolution, so saturated coloured edges on tiny frames lose more than smooth content, whatever the CRF.
- `lossless=True`: H.264 in RGB (libx264rgb, `-qp 0`, High 4:4:4 Predictive). Bit-exact round trip;
  use it for reference/candidate videos that are only compared (PSNR/SSIM/LPIPS then measure the
  sampler, not the codec). Plays in ffmpeg/VLC, not in browsers.
- yuv420p needs even sizes. An odd width/height is padded by repeating the last column/row, and the
  true size is stored in the mp4's `comment` tag (`flowcache:size=WxH`); `read_video` crops it back.
  Other players show the extra row/column.

Writes are atomic: the encoder writes a hidden temp file in the destination folder, which is renamed
over the destination only when complete. A failed or interrupted write leaves any earlier file intact.
"""
from __future__ import annotations

import contextlib
import math
import numbers
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from flowcache_core.errors import FlowcacheError
from flowcache_core.fileio import atomic_write, check_output_path

DEFAULT_CRF = 12
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
_SIZE_TAG = "flowcache:size="


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary bundled with imageio-ffmpeg (there is no system ffmpeg)."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


# ---------------------------------------------------------------------------------------------------
# Paths


def _check_input_path(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise FlowcacheError(f"{what} {path} does not exist")
    if path.is_dir():
        raise FlowcacheError(f"{what} {path} is a folder, expected a file")
    if not os.access(path, os.R_OK):
        raise FlowcacheError(f"{what} {path} is not readable (permission denied)")
    if path.stat().st_size == 0:
        raise FlowcacheError(f"{what} {path} is empty (0 bytes)")
    return path


def _ffmpeg_reason(stderr: str) -> str:
    """The most informative line of ffmpeg's stderr, for a one-line error."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    skip = ("Conversion failed", "Error opening input file", "Error opening input files")
    for ln in reversed(lines):
        if not ln.startswith(skip):
            return re.sub(r"^\[[^\]]*\]\s*", "", ln)
    return lines[-1] if lines else "no message"


# ---------------------------------------------------------------------------------------------------
# Video


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise FlowcacheError(
            f"video frames must be uint8 of shape (T, H, W, 3) with T >= 1, got {frames.dtype} {frames.shape}"
        )
    if frames.shape[1] < 2 or frames.shape[2] < 2:
        raise FlowcacheError(f"video frames must be at least 2x2 pixels, got {frames.shape[2]}x{frames.shape[1]}")
    return np.ascontiguousarray(frames)


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray,
    fps: float,
    *,
    crf: int | None = None,
    lossless: bool = False,
) -> Path:
    """Write `frames` uint8 (T, H, W, 3) as an H.264 mp4, atomically. See the module doc for the encodings.

    `crf` (0..51, lower is better) overrides the default quality of the yuv420p encoding.
    """
    path = check_output_path(path)
    frames = _check_frames(frames)
    _check_fps(fps)
    try:
        with VideoStream(path, fps, crf=crf, lossless=lossless) as out:
            out.write(frames)
    except OSError as e:  # e.g. ENOSPC: the temp file is gone already
        raise FlowcacheError(f"cannot write video {path}: {e.strerror or e}") from None
    return path


def _check_fps(fps) -> None:
    if not (isinstance(fps, numbers.Real) and math.isfinite(fps) and fps > 0):
        raise FlowcacheError(f"fps must be a positive number, got {fps!r}")


class VideoStream:
    """An mp4 written as frames arrive, in write_video's encodings, atomically: the file replaces `path` when the
    `with` block ends without an error, else the temp file goes. Memory: the batch being written, not the video.

        with VideoStream(path, lossless=True) as out:
            for frames in batches:
                out.write(frames, fps)      # uint8 (T, H, W, 3); fps needed by the first write (or given here)
    """

    def __init__(self, path: str | os.PathLike, fps: float | None = None, *, crf: int | None = None,
                 lossless: bool = False):
        self.path = check_output_path(path)
        if crf is not None and not (0 <= int(crf) <= 51):
            raise FlowcacheError(f"crf must be in 0..51, got {crf}")
        self.fps, self.crf, self.lossless = fps, crf, lossless
        self.frames = 0  # written so far
        self.size: tuple[int, int] | None = None  # (height, width) of the first batch
        self._proc: subprocess.Popen | None = None
        self._broken = False

    def __enter__(self) -> "VideoStream":
        self._stack = contextlib.ExitStack()
        self._tmp = self._stack.enter_context(atomic_write(self.path, ".mp4"))
        self._err = self._stack.enter_context(tempfile.TemporaryFile())
        return self

    def _start(self, h: int, w: int, fps: float) -> None:
        _check_fps(fps)
        if self.lossless:
            codec = ["-c:v", "libx264rgb", "-qp", "0", "-pix_fmt", "rgb24"]
        else:
            crf_value = DEFAULT_CRF if self.crf is None else int(self.crf)
            codec = ["-c:v", "libx264", "-preset", "medium", "-crf", str(crf_value), "-pix_fmt", "yuv420p"]
        ph, pw = (h, w) if self.lossless else (h + h % 2, w + w % 2)
        rate = str(Fraction(fps).limit_denominator(1001 * 1000))
        try:
            self._proc = subprocess.Popen(_command(self._tmp, rate, codec, pw, ph, w, h), stdin=subprocess.PIPE,
                                          stdout=subprocess.DEVNULL, stderr=self._err)
        except OSError as e:
            raise FlowcacheError(f"cannot write video {self.path}: {e.strerror or e}") from None
        self.size = (h, w)

    def write(self, frames: np.ndarray, fps: float | None = None) -> None:
        frames = _check_frames(frames)
        t, h, w, _ = frames.shape
        if self._proc is None:
            self._start(h, w, fps if fps is not None else self.fps)
        elif (h, w) != self.size:
            raise FlowcacheError(f"video {self.path}: frames of {w}x{h} after frames of {self.size[1]}x{self.size[0]}")
        if not self.lossless and (h % 2 or w % 2):  # yuv420p needs even sizes: repeat the last row/column
            frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        for frame in frames:  # a frame at a time: no second copy of the batch in memory
            if self._broken:
                break
            try:
                self._proc.stdin.write(frame.tobytes())
            except BrokenPipeError:  # ffmpeg stopped: its reason is reported when the stream closes
                self._broken = True
        self.frames += t

    def __exit__(self, exc_type, exc, tb) -> bool:
        error = None
        if self._proc is not None:
            with contextlib.suppress(BrokenPipeError):
                self._proc.stdin.close()
            rc = self._proc.wait()
            if exc_type is None and rc != 0:
                self._err.seek(0)
                reason = _ffmpeg_reason(self._err.read().decode("utf-8", "replace"))
                error = FlowcacheError(f"cannot write video {self.path}: ffmpeg: {reason}")
        elif exc_type is None:
            error = FlowcacheError(f"cannot write video {self.path}: no frames were given")
        if error is not None:
            self._stack.__exit__(FlowcacheError, error, None)  # removes the temp file
            raise error
        return bool(self._stack.__exit__(exc_type, exc, tb))


def _command(tmp: Path, rate: str, codec: list[str], pw: int, ph: int, w: int, h: int) -> list[str]:
    return [
        ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{pw}x{ph}", "-r", rate, "-i", "-",
        "-an", *codec,
        "-metadata", f"comment={_SIZE_TAG}{w}x{h}", "-movflags", "+faststart", "-f", "mp4", str(tmp),
    ]  # fmt: skip


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: float
    crop: tuple[int, int] | None  # (w, h) stored by write_video for odd sizes


def _parse_info(stderr: str, path: Path) -> VideoInfo:
    """Read size, fps and our size tag from ffmpeg's banner (there is no ffprobe in the wheel)."""
    inp, _, out = stderr.partition("Output #0")
    m_out = re.search(r"Stream #\d+:\d+.*?: Video: .*?, (\d+)x(\d+)", out)
    m_in = re.search(r"Stream #\d+:\d+.*?: Video: (.*)", inp)
    if not m_out or not m_in:
        raise FlowcacheError(f"video {path} has no video stream")
    fps_m = re.search(r", ([\d.]+)(k?) fps", m_in.group(1)) or re.search(r", ([\d.]+)(k?) tbr", m_in.group(1))
    fps = float(fps_m.group(1)) * (1000 if fps_m.group(2) else 1) if fps_m else 0.0
    tag = re.search(re.escape(_SIZE_TAG) + r"(\d+)x(\d+)", inp)
    crop = (int(tag.group(1)), int(tag.group(2))) if tag else None
    return VideoInfo(int(m_out.group(1)), int(m_out.group(2)), fps, crop)


def read_video(path: str | os.PathLike, *, max_frames: int | None = None) -> tuple[np.ndarray, float]:
    """Decode a video to (frames uint8 (T, H, W, 3), fps). `max_frames` stops decoding after N frames."""
    path = _check_input_path(path, "video")
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path), "-map", "0:v:0"]
    if max_frames is not None:
        cmd += ["-frames:v", str(int(max_frames))]
    cmd += ["-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    stderr = proc.stderr.decode("utf-8", "replace")
    if proc.returncode != 0:
        raise FlowcacheError(f"video {path} is not readable: ffmpeg: {_ffmpeg_reason(stderr)}")
    info = _parse_info(stderr, path)
    frame_bytes = info.width * info.height * 3
    n = len(proc.stdout) // frame_bytes
    if n == 0:
        raise FlowcacheError(f"video {path} has no decodable frames")
    frames = np.frombuffer(proc.stdout, np.uint8, count=n * frame_bytes).reshape(n, info.height, info.width, 3)
    if info.crop is not None:
        cw, ch = info.crop
        if cw <= info.width and ch <= info.height:
            frames = frames[:, :ch, :cw]
    return frames.copy(), info.fps  # a writable array of its own (frombuffer views ffmpeg's read-only bytes)


def count_frames(path: str | os.PathLike) -> int:
    """Number of frames, by decoding (imageio-ffmpeg's count_frames_and_secs; there is no ffprobe)."""
    import imageio_ffmpeg

    path = _check_input_path(path, "video")
    try:
        return int(imageio_ffmpeg.count_frames_and_secs(str(path))[0])
    except (RuntimeError, ValueError, OSError) as e:
        raise FlowcacheError(f"video {path} is not readable: {str(e).splitlines()[0] if str(e) else e}") from None


# ---------------------------------------------------------------------------------------------------
# Images


# Largest image read_image decodes: 8192 x 8192 (64 Mi pixels, 192 MiB as RGB), below PIL's own decompression-bomb
# limit (89.5 M pixels: a warning, twice that: an error), which would otherwise speak first, in several lines.
MAX_IMAGE_PIXELS = 8192 * 8192


def _open_image(path: Path):
    """PIL image of `path` with only its header read. PIL's own bomb check is off for this one open, so that an
    oversized image reaches read_image's size check (with its size) instead of failing inside PIL."""
    from PIL import Image

    pil_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        return Image.open(path)
    finally:
        Image.MAX_IMAGE_PIXELS = pil_limit


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a PNG/JPEG/BMP/WebP image as uint8 (H, W, 3) RGB (alpha dropped, grey expanded).
    Images over MAX_IMAGE_PIXELS are refused from their header, before any pixel is decoded."""
    from PIL import UnidentifiedImageError

    path = _check_input_path(path, "image")

    def unreadable(e: Exception) -> FlowcacheError:
        reason = "not a recognised image" if isinstance(e, UnidentifiedImageError) else str(e).splitlines()[0]
        return FlowcacheError(f"image {path} is not readable: {reason}")

    try:
        im = _open_image(path)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise unreadable(e) from None
    with im:
        w, h = im.size
        if w * h > MAX_IMAGE_PIXELS:
            raise FlowcacheError(f"image {path} is {w}x{h} ({w * h:,} pixels), more than the {MAX_IMAGE_PIXELS:,} pixels "
                                 "allowed (8192x8192); resize it first")
        try:
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
        except (OSError, SyntaxError, ValueError) as e:  # a truncated or corrupt body
            raise unreadable(e) from None


def write_image(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write uint8 (H, W, 3) as PNG (lossless) or JPEG (quality 95) by suffix, atomically."""
    from PIL import Image

    path = check_output_path(path)
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise FlowcacheError(f"image must be uint8 of shape (H, W, 3), got {image.dtype} {image.shape}")
    fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".webp": "WEBP"}.get(path.suffix.lower())
    if fmt is None:
        raise FlowcacheError(f"image path {path} must end in one of {', '.join(IMAGE_SUFFIXES)}")
    kwargs = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    try:
        with atomic_write(path, path.suffix) as tmp:
            Image.fromarray(np.ascontiguousarray(image), "RGB").save(tmp, format=fmt, **kwargs)
    except OSError as e:
        raise FlowcacheError(f"cannot write image {path}: {e}") from None
    return path
