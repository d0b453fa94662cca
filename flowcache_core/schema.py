"""Type and range checks of JSON values against the dataclasses that read them.

A JSON file may hold any type where a dataclass field expects an int: `check_fields` compares every key of an
object with the annotation of the dataclass field of that name and with an optional `Range`, and raises a
one-line FlowcacheError naming the key path, what is allowed and the value found, e.g.

    config file 'run.json': runtime_config.seed: expected an integer, got "abc"

Annotations understood: int, float, bool, str, tuple[str, ...] and `X | None` / `list[X]` of those.
Rules: a bool is not a number (JSON `true` is not 1); an integer is a valid float (MAGI-1's 4.5B config writes
`"x_rescale_factor": 1`); a float must be finite (Python's json module reads NaN and Infinity).
"""
from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Mapping

from flowcache_core.errors import FlowcacheError


@dataclass(frozen=True)
class Range:
    """Allowed numbers: low <= v <= high (either bound optional); `low_open` excludes low itself."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False

    def __contains__(self, v: float) -> bool:
        if self.low is not None and (v <= self.low if self.low_open else v < self.low):
            return False
        return self.high is None or v <= self.high

    def __str__(self) -> str:
        def num(v: float) -> str:  # 1, 0.5, 18446744073709551615 (never 1.8e+19)
            return str(v) if isinstance(v, int) else f"{v:g}"

        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{num(self.low)}, {num(self.high)}]"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {num(self.low)}"
        return f"<= {num(self.high)}"


AT_LEAST_1 = Range(1)  # counts and sizes
POSITIVE = Range(0.0, low_open=True)  # factors and epsilons


def shown(value: Any, limit: int = 60) -> str:
    """A value as JSON writes it (null, "abc", [1, 2]), cut to `limit` characters for a one-line message."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def at(where: str, path: str) -> str:
    """`file: key.path`, or the key path alone when there is no file (a config built in Python)."""
    return f"{where}: {path}" if where else path


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


_FITS = {int: _is_int, float: _is_number, bool: lambda v: isinstance(v, bool), str: lambda v: isinstance(v, str)}
_ONE = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
_MANY = {int: "integers", float: "numbers", bool: "booleans", str: "strings"}


def _describe(tp: Any) -> str:
    """What a type annotation (not an `X | None`) allows, in words: "an integer", "a list of numbers"."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (list, tuple):
        return f"a list of {_MANY[args[0]]}"
    return _ONE[tp]


def check_value(value: Any, tp: Any, path: str, limit: Range | None = None, where: str = "") -> None:
    """Raise FlowcacheError unless `value` fits the annotation `tp` (and `limit`: of the value, or of each item
    of a list). `path` names the value in the message (`runtime_config.seed`, `--seed`), `where` the file."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    optional = origin in (typing.Union, types.UnionType)  # X | None: the only unions of the configs
    if optional:
        if value is None:
            return
        (tp,) = [a for a in args if a is not type(None)]
        origin, args = typing.get_origin(tp), typing.get_args(tp)

    def fail(item: str, expected: str, got: Any) -> FlowcacheError:
        return FlowcacheError(f"{at(where, item)}: expected {expected}, got {shown(got)}")

    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise fail(path, _describe(tp) + (" or null" if optional else ""), value)
        for i, item in enumerate(value):
            check_value(item, args[0], f"{path}[{i}]", limit, where)
        return
    if not _FITS[tp](value):
        expected = "a finite number" if tp is float and isinstance(value, float) else _describe(tp)
        raise fail(path, expected + (f" {limit}" if limit else "") + (" or null" if optional else ""), value)
    if limit is not None and value not in limit:
        raise fail(path, f"{_describe(tp)} {limit}", value)


def check_fields(cls: type, obj: Any, section: str, where: str = "", limits: Mapping[str, Range] | None = None,
                 unknown_keys: bool = True) -> None:
    """Check a JSON object `obj` against dataclass `cls`: every key naming a field must fit the field's annotation
    (and `limits[key]`). Keys that name no field are allowed (kept aside by MAGI-1 config readers) unless
    `unknown_keys` is False. `section` is the object's key path, `where` the file (both go in the message)."""
    if not isinstance(obj, dict):
        raise FlowcacheError(f"{at(where, section)}: expected an object, got {shown(obj)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    if not unknown_keys:
        extra = sorted(k for k in obj if k not in names)
        if extra:
            raise FlowcacheError(f"{at(where, section)}: key {extra[0]!r} unknown (allowed: {', '.join(names)})")
    for name in names:
        if name in obj:
            path = f"{section}.{name}" if section else name  # a file's top-level object has no section name
            check_value(obj[name], hints[name], path, (limits or {}).get(name), where)
