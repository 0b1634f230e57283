"""msgspec.convert with one-line errors: msgspec's path (`... - at $.train.lr`) is followed through
the raw data and the types to say `train.lr = -1 is out of range: must be > 0`. Only the path and
an unknown key's name are read from msgspec's text, so its wording cannot change ours."""

from __future__ import annotations

import difflib
import operator
import re
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec
import msgspec.inspect as mi

T = TypeVar("T")

_AT = re.compile(r"^(?P<what>.*?)(?: - at (?P<in_key>`key` in )?`\$(?P<path>[^`]*)`)?$")
_STEP = re.compile(r"\.([^.\[]+)|\[(\d+)\]")
_UNKNOWN = re.compile(r"unknown field `(?P<key>[^`]*)`")
_MISSING = re.compile(r"Object missing required field `(?P<key>[^`]*)`")
_NUMBERS = {mi.IntType: (int, "an integer"), mi.FloatType: ((int, float), "a number")}
_BOUNDS = {"ge": (">=", operator.ge), "gt": (">", operator.gt), "le": ("<=", operator.le),
           "lt": ("<", operator.lt)}  # fmt: skip


def convert(raw: Any, cls: type[T], *, error: Callable[..., Exception], prefix: str = "") -> T:
    """`msgspec.convert(raw, cls)`; on failure raise `error(one-line message, keys=(key,))`. prefix
    names raw itself in messages (`train` makes `$.lr` read `train.lr`)."""
    try:
        return msgspec.convert(raw, cls)
    except msgspec.ValidationError as err:
        raise error(explain(err, raw, cls, prefix), keys=(key_at_fault(err, prefix),)) from None


def key_at_fault(err: msgspec.ValidationError, prefix: str = "") -> str:
    """The dotted key the error is about: a list item's list, an unknown key by its own name."""
    what, path = location(err)
    names = [prefix] if prefix else []
    names += [key for key, _ in _STEP.findall(path) if key]
    if unknown := _UNKNOWN.search(what):
        names.append(unknown["key"])
    return ".".join(names)


def location(err: msgspec.ValidationError) -> tuple[str, str]:
    """(what failed, where as `$.a.b[3]`) from msgspec's message; a missing field is named in
    the path. With `explain`, the one place that reads msgspec's wording."""
    found = _AT.match(str(err))
    what, path = found["what"], "$" + (found["path"] or "")
    if missing := _MISSING.fullmatch(what):
        path += f".{missing['key']}"
    return what, path


def explain(err: msgspec.ValidationError, raw: Any, cls: type, prefix: str = "") -> str:
    """Follow the error's path through raw and cls's type info; describe what is there."""
    match = _AT.match(str(err))
    value, info, names = raw, mi.type_info(cls), [prefix] if prefix else []
    for key, index in _STEP.findall(match["path"] or ""):
        if key:
            info = next(f.type for f in _bare(info).fields if f.name == key)
            value, names = value[key], [*names, key]
        else:
            info, value = _bare(info).item_type, value[int(index)]
            names[-1:] = [f"{''.join(names[-1:])}[{index}]"]  # raw itself may be the list
    name = ".".join(names)
    unknown = _UNKNOWN.search(match["what"])
    if unknown:  # named in dotted form, with the closest allowed key when one is near
        allowed = [f.name for f in _bare(info).fields]
        dotted = (lambda k: f"{name}.{k}") if name else (lambda k: k)
        close = difflib.get_close_matches(unknown["key"], allowed, n=1, cutoff=0.4)
        hint = f" (did you mean '{dotted(close[0])}'?)" if close else ""
        return f"unknown key '{dotted(unknown['key'])}'{hint}; allowed: {', '.join(allowed)}"
    if match["in_key"]:
        bad = next(k for k in value if not isinstance(k, str))
        return f"{name or 'the top level'} has the key {bad!r}; keys must be names (text)"
    return _describe(name, value, info) or str(err)


def _bare(info: mi.Type) -> mi.Type:
    """The type under a `Meta(description=...)` wrapper."""
    return info.type if isinstance(info, mi.Metadata) else info


def _describe(name: str, value: Any, info: mi.Type) -> str | None:
    """What is wrong with value for a key of type info; None when nothing is found."""
    doc = info.extra_json_schema.get("description") if isinstance(info, mi.Metadata) else None
    info, shown = _bare(info), f"{name} = {value!r}"
    if isinstance(info, mi.StructType) and not isinstance(value, dict):
        return f"{name} must be a mapping of keys to values, got {value!r}"
    if isinstance(info, mi.LiteralType):
        return f"{shown} is not allowed; choose one of {list(info.values)}"
    if isinstance(info, mi.BoolType):
        return f"{shown} must be true or false"
    if isinstance(info, mi.StrType):
        if isinstance(value, str) and value and info.pattern:
            return f"{shown} is not allowed; {doc or f'must match {info.pattern}'}"
        return f"{shown} must be a non-empty string" + (f"; {doc}" if doc else "")
    if isinstance(info, mi.ListType):
        return _describe_list(shown, value, info, doc)
    if type(info) not in _NUMBERS:
        return None  # a type this module does not word: msgspec's own message is used
    kind, noun = _NUMBERS[type(info)]
    if isinstance(value, bool) or not isinstance(value, kind):
        return f"{shown} must be {noun}"
    for attr, (op, holds) in _BOUNDS.items():
        bound = getattr(info, attr)
        if bound is not None and not holds(value, bound):
            return f"{shown} is out of range: must be {op} {bound}"
    return None


def _describe_list(shown: str, value: Any, info: mi.ListType, doc: str | None) -> str:
    """A list is either not a list or of the wrong length (its items fail on their own path)."""
    if not isinstance(value, list):
        item = type(_bare(info.item_type)).__name__.removesuffix("Type").lower()
        return f"{shown} must be a list of {item}"
    low, high = info.min_length or 0, info.max_length
    count = f"exactly {low}" if low == high else f"at least {low}" if high is None else ""
    entries = (
        f"{count or f'{low} to {high}'} entr{'y' if (low, high) in ((1, None), (1, 1)) else 'ies'}"
    )
    return f"{shown} must have {entries}" + (f": {doc}" if doc else "")
