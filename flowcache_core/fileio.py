"""Writing files so that nothing already there is lost: a temp file beside the destination, renamed onto it
only when complete, with the permissions a plain `open()` would give (mkstemp and safetensors make 0600).
Reading the one text input every prompt-taking command shares: `read_prompt_lines`; JSON objects: `read_json_object`."""
from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path

from flowcache_core.errors import FlowcacheError


def usual_mode(path: str | os.PathLike) -> None:
    """chmod to 0o666 & ~umask, what a file created with open() gets."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def check_output_path(path: str | os.PathLike) -> Path:
    """Fail early (before any expensive work) if `path` cannot be written: missing or read-only folder,
    or the path is a folder. Returns the path as a Path."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise FlowcacheError(f"output path {path} is a folder; give a file name")
    if not parent.exists():
        raise FlowcacheError(f"output folder {parent} of {path} does not exist; create it first")
    if not parent.is_dir():
        raise FlowcacheError(f"output folder {parent} of {path} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise FlowcacheError(f"output folder {parent} of {path} is not writable")
    if path.exists() and not os.access(path, os.W_OK):
        raise FlowcacheError(f"output file {path} exists and is read-only")
    return path


_MKSTEMP_NAME = r"[a-z0-9_]{8}"  # tempfile's random part


def stale_temps(path: str | os.PathLike) -> list[Path]:
    """Temp files a killed writer (SIGKILL cannot be caught) left for `path`: ".{name}.{8 random}.tmp[...]"
    beside it, as `atomic_write` and the JSON log make them."""
    path = Path(path)
    pattern = re.compile(r"\." + re.escape(path.name) + r"\." + _MKSTEMP_NAME + r"\.tmp(\.[^/]*)?")
    try:
        entries = list(os.scandir(path.parent if str(path.parent) else "."))
    except OSError:
        return []
    return [Path(e.path) for e in entries if pattern.fullmatch(e.name) and e.is_file(follow_symlinks=False)]


def remove_stale_temps(path: str | os.PathLike) -> int:
    """Remove `stale_temps(path)`; the number removed. Call it only where no other live process writes `path`."""
    n = 0
    for tmp in stale_temps(path):
        try:
            tmp.unlink()
            n += 1
        except FileNotFoundError:
            pass
        except OSError as e:
            raise FlowcacheError(f"cannot remove the stale temp file {tmp} (left by a killed run): {e.strerror}") from None
    return n


@contextlib.contextmanager
def claim(path: str | os.PathLike):
    """Claim the right to write `path` among processes sharing its folder: yields True if this process holds the
    claim (until the block ends), False if another live process holds it. The claim is an exclusive `flock` on a
    hidden lock file beside it, ".{name}.lock" (holding pid and host, for people): the kernel drops the lock when
    its process dies, however it dies (SIGKILL included), so a dead process's lock file is simply taken over.
    The lock file is removed when the block ends."""
    import fcntl
    import socket

    path = Path(path)
    lock = path.with_name(f".{path.name}.lock")
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise FlowcacheError(f"cannot create the lock file {lock}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            yield False
            return
        try:  # the file may have been removed (and another created) by its holder between our open and flock
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        yield True
    finally:
        try:
            lock.unlink()  # while still locked: a process that opened it re-checks the inode and retries
        except FileNotFoundError:
            pass
        os.close(fd)


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True if the two paths name one file: the same inode when both exist (hard links, symlinks, another
    spelling), else the same resolved path."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return Path(a).resolve() == Path(b).resolve()


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, suffix: str = ".tmp"):
    """Yield a fresh hidden temp path beside `path` (same folder, so the rename is atomic); when the block
    succeeds, give it the usual mode and rename it onto `path`; otherwise remove it."""
    path = check_output_path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    except OSError as e:
        raise FlowcacheError(f"cannot write in folder {path.parent}: {e.strerror}") from None
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        usual_mode(tmp)  # after the writer: some (safetensors) recreate the file with mode 0600
        try:
            os.replace(tmp, path)
        except OSError as e:
            raise FlowcacheError(f"cannot write {path}: {e.strerror}") from None
    finally:
        tmp.unlink(missing_ok=True)  # gone already after a successful rename


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file (JSON, CSV) through `atomic_write`; returns the path."""
    path = Path(path)
    try:
        with atomic_write(path, path.suffix) as tmp:
            tmp.write_text(text, encoding="utf-8")
    except OSError as e:
        raise FlowcacheError(f"cannot write {path}: {e.strerror}") from None
    return path


MAX_PROMPT_FILE_BYTES = 16 * 2**20  # VBench's 946 prompts take 100 kB; more than this is not a prompt list


def read_user_text(path: Path, what: str, encoding: str = "utf-8", expected: str = "") -> str:
    """A text file the user gave; one-line FlowcacheError naming `what` it is when it is not UTF-8 or unreadable."""
    try:
        return path.read_text(encoding=encoding)
    except UnicodeDecodeError:
        raise FlowcacheError(f"{what} {path} is not UTF-8 text{expected}") from None
    except OSError as e:
        raise FlowcacheError(f"{what} {path} is not readable: {e.strerror}") from None


def read_prompt_lines(path: str | os.PathLike, comments: bool = False) -> list[str]:
    """The prompts of a text file, one a line, stripped, blank lines skipped (and lines starting with '#' when
    `comments`). A UTF-8 byte order mark is dropped. One-line FlowcacheError for a missing, unreadable, binary
    or oversized file, or one without prompts."""
    path = Path(path)
    if not path.is_file():
        raise FlowcacheError(f"prompt file {path} does not exist" if not path.exists() else f"prompt file {path} is not a file")
    size = path.stat().st_size
    if size > MAX_PROMPT_FILE_BYTES:
        raise FlowcacheError(f"prompt file {path} is {size / 2**20:.1f} MiB; a prompt file is text, one prompt a line, "
                             f"at most {MAX_PROMPT_FILE_BYTES // 2**20} MiB")
    text = read_user_text(path, "prompt file", encoding="utf-8-sig")
    if "\x00" in text:
        raise FlowcacheError(f"prompt file {path} holds NUL bytes: not a text file")
    lines = [ln.strip() for ln in text.splitlines()]
    prompts = [ln for ln in lines if ln and not (comments and ln.startswith("#"))]
    if not prompts:
        raise FlowcacheError(f"prompt file {path} has no prompts (expected one prompt a line)")
    return prompts


def make_output_dir(path: str | os.PathLike, parents: bool = False) -> Path:
    """The output folder, created if missing (with its missing parents when `parents`), checked writable."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise FlowcacheError(f"output folder {str(out)!r} is a file")
    if not parents and not out.parent.is_dir():
        raise FlowcacheError(f"output folder's parent {str(out.parent)!r} does not exist")
    try:
        out.mkdir(parents=parents, exist_ok=True)
    except OSError as e:
        raise FlowcacheError(f"cannot create output folder {str(out)!r} ({e.strerror})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise FlowcacheError(f"output folder {str(out)!r} is not writable")
    return out


def read_json_object(path: str | os.PathLike, what: str) -> dict:
    """A JSON file holding an object (a checkpoint's config, a config file): one-line FlowcacheError naming `what`
    and the file when it is missing, not JSON, or not an object."""
    p = Path(path)
    if not p.is_file():
        raise FlowcacheError(f"{what} {str(p)!r} does not exist")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FlowcacheError(f"{what} {str(p)!r} is not valid JSON ({getattr(e, 'msg', e)})") from None
    if not isinstance(data, dict):
        raise FlowcacheError(f"{what} {str(p)!r} must hold a JSON object, not {type(data).__name__}")
    return data
