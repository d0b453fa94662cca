"""Options of cache policies and the KV budget, declared once as dataclass fields with their rules.

`option(...)` puts a default, a help line and the allowed values on a field; `check_options(obj)` (called by
each config's __post_init__) raises one-line FlowcacheErrors naming the field and the value; the CLI builds its
flags from the same fields (`--rel-l1-thresh` for `rel_l1_thresh`), so nothing is declared twice. A value with a
syntax of its own (a size such as "8GiB") names a `parse(name, value)` that checks it and raises the one line.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

from flowcache_core.errors import FlowcacheError


def option(default: Any, help: str, *, kind: type = float, choices: tuple[str, ...] | None = None,
           low: float | None = None, high: float | None = None, optional: bool = False, example: Any = None,
           parse: Callable[[str, Any], Any] | None = None) -> Any:
    """A config field with its rules: kind (int, float, str), choices, closed range [low, high], None allowed,
    or `parse(name, value)` for a value with its own syntax (raises FlowcacheError when it is not valid)."""
    return dataclasses.field(default=default, metadata={
        "help": help, "kind": kind, "choices": choices, "low": low, "high": high, "optional": optional,
        "example": example if example is not None else default, "parse": parse})


def _what(meta: dict) -> str:
    kind, low, high = meta["kind"], meta["low"], meta["high"]
    if meta["choices"]:
        return f"one of {', '.join(meta['choices'])}"
    if kind is str:
        return "a string"
    noun = "an integer" if kind is int else "a finite number"
    if low is not None and high is not None:
        text = f"{noun} in [{low:g}, {high:g}]"
    elif low is not None:
        text = f"{noun} >= {low:g}"
    else:
        text = noun
    if meta["optional"]:
        text += " or None (off)"
    return text + (f" (e.g. {meta['example']!r})" if meta["example"] is not None else "")


def check_value(name: str, value: Any, meta: dict) -> None:
    """One field's value against its rules; FlowcacheError `name=value must be ...` otherwise."""
    if value is None and meta["optional"]:
        return
    if meta.get("parse") is not None:
        meta["parse"](name, value)
        return
    kind, ok = meta["kind"], True
    if meta["choices"]:
        ok = isinstance(value, str) and value in meta["choices"]
    elif kind is str:  # free text (a negative prompt)
        ok = isinstance(value, str)
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        ok = False
    elif kind is int and not isinstance(value, int):
        ok = False
    elif not math.isfinite(value):
        ok = False
    else:
        ok = (meta["low"] is None or value >= meta["low"]) and (meta["high"] is None or value <= meta["high"])
    if not ok:
        raise FlowcacheError(f"{name}={value!r} must be {_what(meta)}")


def check_options(obj: Any) -> None:
    for f in dataclasses.fields(obj):
        if "kind" in f.metadata:
            check_value(f.name, getattr(obj, f.name), f.metadata)


def option_fields(cls: type) -> dict[str, dataclasses.Field]:
    """name -> field of every option a config class declares."""
    return {f.name: f for f in dataclasses.fields(cls) if "kind" in f.metadata}
