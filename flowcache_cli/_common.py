"""What every command shares: one console for output, one for errors, and the one-line error contract."""
from __future__ import annotations

import functools
import sys
from typing import Callable, TypeVar

import typer
from rich.console import Console

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
