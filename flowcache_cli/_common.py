"""What every command shares: one console for output, one for errors, and the one-line error contract."""
from __future__ import annotations

import functools
import sys
from typing import Callable, TypeVar

import typer
from rich.console import Console
from typer.core import TyperCommand

# Typer >= 0.20 vendors its own click (typer._click); click itself may be installed beside it, or not.
_USAGE_ERRORS: tuple[type[Exception], ...] = ()
try:
    from typer._click.exceptions import UsageError as _TyperUsageError

    _USAGE_ERRORS += (_TyperUsageError,)
except ImportError:  # pragma: no cover
    pass
try:
    from click.exceptions import UsageError as _ClickUsageError

    _USAGE_ERRORS += (_ClickUsageError,)
except ImportError:  # pragma: no cover
    pass

from flowcache_core.cache.policy import CacheConfig
from flowcache_core.errors import FlowcacheError

console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable)


def fail(message: str) -> "typer.Exit":
    """Print one error line and return the Exit(2) to raise."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


def user_errors(fn: F) -> F:
    """Turn FlowcacheError (bad input the user can fix) into one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FlowcacheError as e:
            raise fail(str(e)) from None
        except KeyboardInterrupt:
            err_console.print("interrupted")
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


class OneLineUsageErrors(TyperCommand):
    """Typer's own usage errors (a missing option, a value that is not a number) as one line + exit 2,
    instead of a multi-line box, like every other error of the command."""

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except _USAGE_ERRORS as e:
            raise fail(f"{e.format_message()} (see {ctx.command_path} --help)") from None


def cache_config_from_flags(policy: str, given: dict, config=None) -> CacheConfig:
    """CacheConfig from the cache flags the user gave, else the model's `flowcache.cache_defaults`, else
    CacheConfig's defaults (the published 0.015 / 5). Error lines name the CLI flag (`--rel-l1-thresh -1 ...`).
    config=None checks the flags alone (before the model is loaded); with a MagiConfig the budget is checked
    against its window size too."""
    import dataclasses

    fields = {f.name for f in dataclasses.fields(CacheConfig)} - {"policy"}
    defaults = ((config.extra.get("flowcache") or {}).get("cache_defaults") or {}) if config is not None else {}
    kwargs = {k: v for k, v in defaults.items() if k in fields}
    kwargs.update({k: v for k, v in given.items() if v is not None})
    try:
        cache = CacheConfig(policy=policy, **kwargs)
        if config is not None:
            cache.validate_for(config.runtime.window_size)
    except FlowcacheError as e:
        msg = str(e)
        for name in ("policy", *fields):
            if msg.startswith(f"{name}="):
                flag = "--cache" if name == "policy" else f"--{name.replace('_', '-')}"
                msg = f"{flag} " + msg[len(name) + 1:]
        raise FlowcacheError(msg) from None
    return cache
