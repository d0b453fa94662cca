"""Checks of user input that every entry point shares (the CLI commands and the Python API), one function each,
so that a bad seed or device, or a run too large for the memory, is refused the same way, in one line, before
any work. Checks that need a family's config (frame sizes, how many bytes a video holds) live with the family.

`name` is how the caller's user spelled the value: `--seed` on the command line, `seed` in the API,
`runtime_config.seed` when it came from a config file.
"""
from __future__ import annotations

import os

import torch

from flowcache_core.errors import FlowcacheError
from flowcache_core.schema import Range, check_value

SEED_RANGE = Range(0, 2**64 - 1)  # what torch.Generator().manual_seed takes (unsigned 64 bit); 2**64 overflows
MAX_NUM_STEPS = 1000  # per chunk; MAGI-1 uses 8 to 64. The plan holds chunks x steps forwards: far more never ends.
# Used when the free memory cannot be read (no /proc/meminfo, no sysconf): a laptop's worth.
FALLBACK_MEMORY_BYTES = 8 * 2**30


# ------------------------------------------------------------------------------------------------ seed, device
def check_seed(seed: object, name: str = "seed") -> int:
    """A noise seed torch accepts: an integer in 0 .. 2**64-1 (torch.Generator().manual_seed's range)."""
    check_value(seed, int, name, SEED_RANGE)
    return seed  # type: ignore[return-value]


def check_device(device: str, name: str = "--device") -> str:
    """cpu, cuda or cuda:N, usable on this machine (CUDA present, N below the device count)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise FlowcacheError(f"{name} {device!r} is not a torch device (allowed: cpu, cuda, cuda:N)") from None
    if dev.type not in ("cpu", "cuda"):
        raise FlowcacheError(f"{name} {device!r} is not supported (allowed: cpu, cuda, cuda:N)")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise FlowcacheError(f"{name} {device!r} asked for but CUDA is not available here (use {name} cpu)")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise FlowcacheError(f"{name} {device!r}: this machine has {count} CUDA device(s) (allowed: cuda:0 .. cuda:{count - 1})")
    return device


# ------------------------------------------------------------------------------------------------ memory
def available_memory_bytes() -> tuple[int, str]:
    """(bytes of memory free for a new run, where the number comes from)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "MemAvailable in /proc/meminfo"
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "free pages (sysconf)"
    except (OSError, ValueError, AttributeError):
        return FALLBACK_MEMORY_BYTES, "a fixed cap (free memory unknown here)"


def check_fits_in_memory(need: int, what: str, per_frame: float) -> None:
    """Refuse a run whose output alone (`need` bytes: frames and latents) exceeds the free memory: it would swap or
    be killed after hours of sampling. `what` names the request in the message, `per_frame` its bytes a frame."""
    free, source = available_memory_bytes()
    if need > free:
        fit = int(free // per_frame)
        advice = f"at this size at most about {fit} frames fit" if fit else "not one frame of this size fits: lower the size"
        raise FlowcacheError(f"{what} needs at least {_gib(need)} of memory (frames as uint8 and latents as float32), "
                             f"more than the {_gib(free)} free ({source}); {advice}")


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"
