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
