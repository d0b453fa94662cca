"""diffusers and transformers print progress bars and warnings while they load; the library never prints, so their
loaders run inside `quiet_loading()` (their own settings restored afterwards)."""
from __future__ import annotations

import contextlib


@contextlib.contextmanager
def quiet_loading():
    restore = []
    for name in ("diffusers.utils.logging", "transformers.utils.logging"):
        try:
            log = __import__(name, fromlist=["logging"])
        except ImportError:
            continue
        bars, level = log.is_progress_bar_enabled(), log.get_verbosity()
        log.disable_progress_bar()
        log.set_verbosity_error()
        restore.append((log, bars, level))
    try:
        yield
    finally:
        for log, bars, level in restore:
            (log.enable_progress_bar if bars else log.disable_progress_bar)()
            log.set_verbosity(level)
