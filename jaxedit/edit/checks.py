"""Validation of editing settings at the boundary: every hyperparameter dataclass checks its own fields.

`check_fields(settings, ranges, choices)` runs in each settings class's `__post_init__`, so a value
built in code, read from a `--hparams` file or replaced with `dataclasses.replace` is checked the same
way: each field against its type annotation (a float where an int is wanted, a string where a number is,
NaN or infinity are refused), then against its range and its allowed values. Errors are one-line
`InputError`s naming the class, the field and the value.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any

from jaxedit.errors import InputError

# a range: (lower bound, whether the bound itself is allowed)
AT_LEAST_ONE = (1, True)
POSITIVE = (0, False)
NON_NEGATIVE = (0, True)


def _matches(value: Any, hint: Any) -> bool:
    """Whether `value` fits the annotation `hint` (the subset of typing used by settings classes)."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return len(args) == len(value) and all(_matches(v, h) for v, h in zip(value, args, strict=True))
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def check_fields(
    settings: Any,
    ranges: Mapping[str, tuple[float, bool]] = {},
    choices: Mapping[str, tuple] = {},
) -> None:
    """Raise `InputError` unless every field of the dataclass `settings` fits its annotation, numbers
    are finite, the fields in `ranges` lie above their bound and those in `choices` are among them.
    A field that is None (an optional setting left to its default) is not range-checked."""
    name = type(settings).__name__
    hints = typing.get_type_hints(type(settings))
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        hint = hints.get(field.name, Any)
        if not _matches(value, hint):
            raise InputError(
                f"{name}.{field.name} must be {_describe(hint)}, got {value!r} ({type(value).__name__})"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"{name}.{field.name} must be a finite number, got {value!r}")
        if value is None:
            continue
        if field.name in ranges:
            bound, inclusive = ranges[field.name]
            if value < bound or (value == bound and not inclusive):
                relation = "at least" if inclusive else "above"
                raise InputError(f"{name}.{field.name} must be {relation} {bound}, got {value!r}")
        if field.name in choices and value not in choices[field.name]:
            allowed = ", ".join(repr(c) for c in choices[field.name])
            raise InputError(f"{name}.{field.name} must be one of {allowed}, got {value!r}")


def check_prefixes(name: str, prefixes: tuple[tuple[int, int], ...]) -> None:
    """Context-prefix specs are (length >= 1, count >= 0) pairs."""
    if any(length < 1 or count < 0 for length, count in prefixes):
        raise InputError(f"{name}.prefixes must hold (length >= 1, count >= 0) pairs, got {prefixes}")


def _describe(hint: Any) -> str:
    text = getattr(hint, "__name__", None) if typing.get_origin(hint) is None else None
    return text or str(hint).replace("typing.", "")
