"""What every command shares: one console for output, one for errors, and the one-line error contract."""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import math
import signal
import sys
import threading
from typing import Callable, Optional, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
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

from flowcache_core.cache.options import check_value
from flowcache_core.errors import FlowcacheError

console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable)


def fail(message: str) -> "typer.Exit":
    """Print one error line and return the Exit(2) to raise."""
    # the message is plain text: brackets in it (`pip install -e ".[wan]"`, a JSON list) are not rich markup
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived: unwinds the command like Ctrl-C does, so that every `with` block removes its
    temp files (atomic writes, the JSON log) on the way out."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


CAUGHT_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n))


@contextlib.contextmanager
def signals_unwind():
    """While the block runs, SIGTERM/SIGHUP raise Terminated (in the main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated(signum)

    old = {s: signal.signal(s, handler) for s in CAUGHT_SIGNALS}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def user_errors(fn: F) -> F:
    """Turn FlowcacheError (bad input the user can fix) into one line on stderr and exit code 2. Ctrl-C, SIGTERM
    and SIGHUP remove the temp files being written and exit with one line and 128 + the signal number (130,
    143, 129), the shell's convention."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with signals_unwind():
                return fn(*args, **kwargs)
        except FlowcacheError as e:
            raise fail(str(e)) from None
        except KeyboardInterrupt:
            err_console.print("interrupted")
            sys.exit(130)
        except Terminated as e:
            name = signal.Signals(e.signum).name
            err_console.print(f"stopped by {name}; nothing half-written is left (temp files removed)", highlight=False,
                              soft_wrap=True)
            sys.exit(128 + e.signum)

    return wrapper  # type: ignore[return-value]


def _no_type(ctx) -> None:
    return None


class OneLineUsageErrors(TyperCommand):
    """Typer's own usage errors (a missing option, a value that is not a number) as one line + exit 2,
    instead of a multi-line box, like every other error of the command."""

    def get_params(self, ctx):
        """Boolean flags (--quiet, --lossless, --help) take no value: --help shows no type for them (Typer
        would show `<bool>`, as if they took one)."""
        params = super().get_params(ctx)
        for p in params:
            if getattr(p, "is_flag", False):
                p.display_type_rich = _no_type
        return params

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except _USAGE_ERRORS as e:
            raise fail(f"{e.format_message()} (see {ctx.command_path} --help)") from None


def fmt_number(v: float | None, digits: int) -> str:
    """A table cell: '-' for a missing value, 'inf' for an infinite one (identical videos' PSNR)."""
    if v is None:
        return "-"
    return "inf" if math.isinf(v) else f"{v:.{digits}f}"


# ------------------------------------------------------------------------------------------ option flags
def option_flags(fields: dict[str, dataclasses.Field]) -> Callable[[F], F]:
    """Give a command one flag per option field (`rel_l1_thresh` -> `--rel-l1-thresh`), typed, help from the
    field, default None (= not given). The command receives the given ones as a dict in its `options` argument,
    each value already checked by the field's rules (error lines name the flag)."""

    def decorate(fn: F) -> F:
        sig = inspect.signature(fn)
        base = [p for p in sig.parameters.values() if p.name != "options"]
        extra = []
        for name, f in fields.items():
            meta, kind = f.metadata, f.metadata["kind"]
            helptext = meta["help"] + (f" One of {', '.join(meta['choices'])}." if meta["choices"] else "")
            extra.append(inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[kind],
                default=typer.Option(None, flag_name(name), help=helptext, show_default=False)))

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            given = {n: kwargs.pop(n) for n in fields if kwargs.get(n) is not None}
            for n in fields:
                kwargs.pop(n, None)
            for n, v in given.items():
                check_value(flag_name(n), v, fields[n].metadata)
            return fn(*args, options=given, **kwargs)

        wrapper.__signature__ = sig.replace(parameters=base + extra)
        return wrapper  # type: ignore[return-value]

    return decorate


def flag_name(option: str) -> str:
    return "--" + option.replace("_", "-")


def cache_flag_fields() -> dict[str, dataclasses.Field]:
    """Every cache option flag (all registered policies' options and the KV budget's), each once."""
    from flowcache_core.cache.settings import all_options

    return all_options()


def family_flag_fields() -> dict[str, dataclasses.Field]:
    """Every family's own request options (e.g. MAGI-1's cfg_number), each once."""
    from flowcache_core.cache.options import option_fields
    from flowcache_core.models.registry import FAMILIES

    out: dict[str, dataclasses.Field] = {}
    for fam in FAMILIES.values():
        out.update(option_fields(fam.Options))
    return out


def split_options(options: dict) -> tuple[dict, dict]:
    """(cache options, family options) of a command's given option flags."""
    cache = cache_flag_fields()
    return {k: v for k, v in options.items() if k in cache}, {k: v for k, v in options.items() if k not in cache}


def check_policy_flag(policy: str) -> str:
    from flowcache_core.cache.settings import check_policy

    return check_policy(policy, "--cache")
