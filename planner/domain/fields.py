"""Typed reads of TOML/JSON tables that record every problem instead of stopping at the first.

Each reader takes the table, the key, the dotted path of the table (for messages) and a
:class:`~planner.domain.errors.Collector`; it returns the value, or ``None`` after recording a problem.
Files are treated as data only: nothing read here is ever evaluated.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from planner.domain.errors import Collector

_MISSING = object()

# Anything above this is a typo or a unit mix-up (1e18 bytes is an exabyte, 1e21 FLOP/s a zettaflop).
ABSURD = 1e21
# Seeds go to numpy, Python's random and CP-SAT, whose random_seed is a 32-bit signed integer.
SEED_MAX = 2**31 - 1


def seed_error(value) -> str | None:
    """Why ``value`` is not a seed (an integer from 0 to :data:`SEED_MAX`), or None: the one check
    of every ``--seed`` and of the API's ``seed=``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SEED_MAX:
        return f"must be an integer from 0 to {SEED_MAX:,}, got {value!r}"
    return None


def _path(table_path: str, key) -> str:
    if isinstance(key, int):
        return f"{table_path}[{key}]"
    return f"{table_path}.{key}" if table_path else key


def _lookup(table: dict, key, field: str, col: Collector, required: bool, what: str = "") -> Any:
    """``table[key]``, or ``_MISSING`` (recording a problem when the field is ``required``)."""
    value = table.get(key, _MISSING)
    if value is _MISSING and required:
        col.add(field, "is required" + what)
    return value


def number(
    table: dict,
    key: str,
    table_path: str,
    col: Collector,
    *,
    required: bool = True,
    default: float | None = None,
    positive: bool = False,
    nonnegative: bool = False,
    maximum: float | None = None,
    integer: bool = False,
) -> Any:
    """A finite number (``int`` when ``integer``) with optional sign and upper limits."""
    field = _path(table_path, key)
    value = _lookup(table, key, field, col, required)
    if value is _MISSING:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = "an integer" if integer else "a number"
        col.add(field, f"must be {kind}, got {type(value).__name__} {value!r}")
        return default
    if integer and not (isinstance(value, int) or float(value).is_integer()):
        col.add(field, f"must be an integer, got {value!r}")
        return default
    limit = ABSURD if maximum is None else maximum
    # Compare before any float conversion: a 400-digit TOML integer does not fit a float.
    if isinstance(value, float) and not math.isfinite(value):
        col.add(field, f"must be finite, got {value!r}")
        return default
    if positive and value <= 0:
        col.add(field, f"must be > 0, got {_short(value)}")
        return default
    if nonnegative and value < 0:
        col.add(field, f"must be >= 0, got {_short(value)}")
        return default
    if abs(value) > limit:
        if limit <= 1.0:
            col.add(field, f"must be a fraction between 0 and {limit:g}, got {_short(value)}")
        else:
            hint = "; check the unit in the field name" if _has_unit(field) else ""
            col.add(field, f"is absurdly large ({_short(value)} > {limit:g}){hint}")
        return default
    return int(value) if integer else float(value)


# Endings of field names that carry a unit (memory_gb, rtt_ms, arrival_rate_per_s, peak_tflops.fp16, ...).
_UNIT_ENDINGS = ("_gb", "_mb", "_ms", "_s", "_mbps", "_gbps", "_w", "_tflops", "_bytes")


def _has_unit(field: str) -> bool:
    return any(part.split("[")[0].endswith(_UNIT_ENDINGS) for part in field.split("."))


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 24 else f"{text[:12]}...({len(text)} digits)"


def string(
    table: dict,
    key: str,
    table_path: str,
    col: Collector,
    *,
    required: bool = True,
    default: str | None = None,
    choices: Iterable[str] | None = None,
) -> Any:
    """A non-empty string, optionally one of ``choices``."""
    field = _path(table_path, key)
    value = _lookup(table, key, field, col, required)
    if value is _MISSING:
        return default
    if not isinstance(value, str) or not value.strip():
        col.add(field, f"must be a non-empty string, got {value!r}")
        return default
    if choices is not None:
        choices = list(choices)
        if value not in choices:
            col.add(field, f"must be one of {', '.join(choices)}; got {value!r}")
            return default
    return value


def boolean(table: dict, key: str, table_path: str, col: Collector, *, default: bool) -> bool:
    field = _path(table_path, key)
    value = table.get(key, default)
    if not isinstance(value, bool):
        col.add(field, f"must be true or false, got {value!r}")
        return default
    return value


def table(parent: dict, key: str, table_path: str, col: Collector, *, required: bool = True) -> dict | None:
    """A sub-table (dict); records a problem when it is missing (if required) or not a table."""
    field = _path(table_path, key)
    value = _lookup(parent, key, field, col, required, " (a table)")
    if value is _MISSING:
        return None
    if not isinstance(value, dict):
        col.add(field, f"must be a table, got {type(value).__name__}")
        return None
    return value


def number_list(
    parent: dict,
    key: str,
    table_path: str,
    col: Collector,
    *,
    required: bool = False,
    positive: bool = False,
    nonnegative: bool = False,
    integer: bool = False,
) -> list | None:
    """A non-empty list of finite numbers."""
    field = _path(table_path, key)
    value = _lookup(parent, key, field, col, required, " (a list of numbers)")
    if value is _MISSING:
        return None
    if not isinstance(value, list) or not value:
        col.add(field, f"must be a non-empty list of numbers, got {value!r}")
        return None
    out = []
    before = len(col.problems)
    for i, _ in enumerate(value):
        out.append(
            number(dict(enumerate(value)), i, field, col, positive=positive,
                   nonnegative=nonnegative, integer=integer)
        )
    return None if len(col.problems) > before else out


def unknown_keys(table_: dict, known: Iterable[str], table_path: str, col: Collector) -> None:
    """Record keys that are not part of the schema (most often a typo or a wrong unit suffix)."""
    known = set(known)
    for key in table_:
        if key not in known:
            hint = ", ".join(sorted(known))
            col.add(_path(table_path, str(key)), f"is not a known field (known: {hint})")
