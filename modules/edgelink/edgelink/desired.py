"""Desired properties of a module twin applied to a settings dataclass, field by field: the
one rule both modules follow (a wrong value keeps its field and is reported; unknown keys are
reported; twin metadata such as `$version` is ignored)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

Settings = TypeVar("Settings")
# desired property -> (dataclass field, parser raising ValueError with the reason)
Fields = Mapping[str, tuple[str, Callable[[Any], Any]]]


def apply_fields(
    current: Settings, desired: Mapping[str, Any], fields: Fields
) -> tuple[Settings, dict[str, str]]:
    """`current` with the valid desired keys applied, and an error per rejected key."""
    changes: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for key, value in desired.items():
        if key.startswith("$"):
            continue
        if key not in fields:
            errors[key] = "unknown property"
            continue
        field, parse = fields[key]
        try:
            changes[field] = parse(value)
        except ValueError as error:
            errors[key] = f"{error} (got {json.dumps(value)})"
    return dataclasses.replace(current, **changes), errors  # type: ignore[type-var]


def probability(value: Any) -> float:
    """A number from 0 to 1 (a JSON `true` is not one)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError("must be a number from 0 to 1")
    return float(value)


def whole_number(value: Any) -> int:
    """A whole number, 0 or more."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("must be a whole number, 0 or more")
    return value


def flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value
