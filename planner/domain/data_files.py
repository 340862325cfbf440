"""Readers for the data files an instance may name: request traces, bandwidth series, popularity counts.

Each reader checks shape and values and raises :class:`~planner.domain.errors.InputError` naming the
file and the row or field; nothing is evaluated.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from planner.domain.errors import InputError, Problem
from planner.domain.files import open_text, read_json
from planner.domain.units import MBPS

# Column names of the Azure LLM inference trace (2023).
AZURE_COLUMNS = {"timestamp": "TIMESTAMP", "prompt": "ContextTokens", "output": "GeneratedTokens"}
# Names the common traces and benchmark logs give each column (Azure LLM trace, BurstGPT, Mooncake,
# vLLM and SGLang benchmark outputs, ...), compared lower-case without spaces, dashes or underscores;
# the first that a file's header holds is used.
COLUMN_NAMES = {
    "timestamp": ("timestamp", "arrivaltime", "arrivaltimestamp", "arrivaltimes", "arrival", "time", "ts",
                  "requesttime", "createdat", "starttime"),
    "prompt": ("contexttokens", "prompttokens", "inputtokens", "requesttokens", "numprompttokens", "numinputtokens",
               "promptlen", "promptlength", "inputlen", "inputlength", "inputlens", "prompttokencount", "contextlength"),
    "output": ("generatedtokens", "outputtokens", "completiontokens", "responsetokens", "numoutputtokens",
               "numgeneratedtokens", "outputlen", "outputlength", "outputlens", "generatedlength", "decodetokens"),
}


def _squash(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def trace_columns(header, given: dict[str, str] | None = None) -> dict[str, str]:
    """The column of each of timestamp, prompt and output: the one ``given`` names, else the first
    of :data:`COLUMN_NAMES` that ``header`` holds, else the Azure trace's name (reported missing)."""
    by_squashed = {}
    for name in header or []:
        by_squashed.setdefault(_squash(str(name)), str(name))
    out = {}
    for key, names in COLUMN_NAMES.items():
        if given and key in given:
            out[key] = given[key]
        else:
            out[key] = next((by_squashed[n] for n in names if n in by_squashed), AZURE_COLUMNS[key])
    return out
MAX_TOKENS = 10_000_000
# Selection counts above this are not measurements (and their sums would overflow).
MAX_COUNT = 1e15


@dataclass(frozen=True)
class RequestTrace:
    """Arrivals: ``arrival_s[i]`` seconds since the first request; token counts per request."""

    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    # The file's column (CSV) or key (JSONL) read for timestamp, prompt and output.
    columns: dict = field(default_factory=dict, compare=False)

    @property
    def duration_s(self) -> float:
        return float(self.arrival_s[-1] - self.arrival_s[0])

    @property
    def rate_per_s(self) -> float:
        if len(self.arrival_s) < 2 or self.duration_s <= 0:
            return float(len(self.arrival_s))
        return (len(self.arrival_s) - 1) / self.duration_s


def _parse_time(value: str) -> float:
    """Seconds: a plain number, or an ISO date-time (fractions of seconds beyond 6 digits cut)."""
    try:
        return float(value)
    except ValueError:
        pass
    text = value.strip()
    if "." in text:
        head, frac = text.split(".", 1)
        text = f"{head}.{frac[:6]}"
    return datetime.fromisoformat(text).timestamp()


def read_request_trace(path: Path, *, columns: dict[str, str] | None = None, label: str | None = None) -> RequestTrace:
    """A request trace: CSV or JSONL (``.jsonl``).

    ``columns`` maps ``timestamp``, ``prompt``, ``output`` to the file's column names; a column it
    does not name is recognised by its common names (:func:`trace_columns`: the Azure trace's
    ``TIMESTAMP``, ``ContextTokens``, ``GeneratedTokens``, or ``arrival_time``, ``input_tokens``,
    ``output_tokens``, ...). The trace's ``columns`` say which were read.
    """
    label = label or str(path)
    cols = dict(AZURE_COLUMNS)
    times, prompts, outputs = [], [], []
    try:
        with open_text(path, label) as fh:
            if path.suffix == ".jsonl":
                rows = []
                for i, line in enumerate(fh, start=1):
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise InputError(Problem(label, f"line {i}", f"is not valid JSON: {exc.msg}")) from None
                    except (RecursionError, ValueError) as exc:
                        raise InputError(Problem(label, f"line {i}", f"is not usable JSON: {type(exc).__name__}")) from None
                    if not isinstance(obj, dict):
                        raise InputError(Problem(label, f"line {i}", "must be a JSON object"))
                    rows.append((i, obj))
                cols = trace_columns(rows[0][1] if rows else [], columns)
            else:
                reader = csv.DictReader(fh)
                cols = trace_columns(reader.fieldnames, columns)
                missing = [c for c in cols.values() if c not in (reader.fieldnames or [])]
                if missing:
                    keys = [k for k, c in cols.items() if c in missing]
                    raise InputError(Problem(label, "header", f"missing column(s) {', '.join(missing)}; found {reader.fieldnames}. "
                                                              f"No column has a known name for {', '.join(keys)}: name them "
                                                              "with --trace-columns (or workload.trace_columns)"))
                rows = list(enumerate(reader, start=2))
    except UnicodeDecodeError:
        raise InputError(Problem(label, "", "is not UTF-8 text")) from None
    except csv.Error as exc:
        raise InputError(Problem(label, "", f"is not valid CSV: {exc}")) from None
    problems = []
    for line, row in rows:
        try:
            t = _parse_time(str(row[cols["timestamp"]]))
            p = float(row[cols["prompt"]])
            o = float(row[cols["output"]])
        except KeyError as exc:
            problems.append(Problem(label, f"line {line}", f"missing field {exc.args[0]!r}"))
        except (ValueError, TypeError, OverflowError) as exc:
            problems.append(Problem(label, f"line {line}", f"bad value: {exc}"))
        else:
            if not (math.isfinite(t) and math.isfinite(p) and math.isfinite(o)) or p < 0 or o < 0 or p > MAX_TOKENS or o > MAX_TOKENS:
                problems.append(Problem(label, f"line {line}", f"token counts must be 0..{MAX_TOKENS}, got {p}, {o}"))
            else:
                times.append(t)
                prompts.append(p)
                outputs.append(o)
        if len(problems) >= 10:
            break
    if problems:
        raise InputError(problems)
    if not times:
        raise InputError(Problem(label, "", "holds no requests"))
    order = np.argsort(np.asarray(times), kind="stable")
    t = np.asarray(times)[order]
    return RequestTrace(t - t[0], np.asarray(prompts)[order], np.asarray(outputs)[order], cols)


def read_bandwidth_series(path: Path, *, label: str | None = None) -> np.ndarray:
    """Bandwidth per second, bytes/s: a CSV with a ``mbps`` column (megabits/s), one row per second."""
    label = label or str(path)
    values = []
    try:
        with open_text(path, label) as fh:
            reader = csv.DictReader(fh)
            if "mbps" not in (reader.fieldnames or []):
                raise InputError(Problem(label, "header", f"needs a 'mbps' column; found {reader.fieldnames}"))
            for line, row in enumerate(reader, start=2):
                try:
                    v = float(row["mbps"])
                except (TypeError, ValueError):
                    raise InputError(Problem(label, f"line {line}", f"mbps must be a number, got {row['mbps']!r}")) from None
                if not math.isfinite(v) or v < 0 or v > 1e7:
                    raise InputError(Problem(label, f"line {line}", f"mbps must be between 0 and 1e7, got {v}"))
                values.append(v)
    except UnicodeDecodeError:
        raise InputError(Problem(label, "", "is not UTF-8 text")) from None
    except csv.Error as exc:
        raise InputError(Problem(label, "", f"is not valid CSV: {exc}")) from None
    if not values:
        raise InputError(Problem(label, "", "holds no rows"))
    series = np.asarray(values) * MBPS
    if not np.any(series > 0):
        raise InputError(Problem(label, "mbps", "is zero everywhere: the link never carries data"))
    return series


def read_popularity_counts(path: Path, num_layers: int, num_experts: int, *, label: str | None = None) -> np.ndarray:
    """Measured expert selection counts, shape [moe layers][experts].

    Accepts a JSON array of arrays or an object with the array under ``expert_popularity`` or
    ``counts`` (the layout of efeslab/fiddler's popularity files).
    """
    label = label or str(path)
    data = read_json(path, label)
    field = ""
    if isinstance(data, dict):
        for key in ("expert_popularity", "counts"):
            if key in data:
                data, field = data[key], key
                break
        else:
            raise InputError(Problem(label, "", "needs a key 'expert_popularity' or 'counts' holding [layers][experts]"))
    if not isinstance(data, list) or not all(isinstance(r, list) for r in data):
        raise InputError(Problem(label, field, "must be an array of arrays [layers][experts]"))
    if len(data) != num_layers or any(len(r) != num_experts for r in data):
        shape = f"[{len(data)}][{', '.join(sorted({str(len(r)) for r in data})) or 0}]"
        raise InputError(Problem(label, field, f"has shape {shape}; the model needs [{num_layers}][{num_experts}] (MoE layers x experts)"))
    arr = np.zeros((num_layers, num_experts))
    prefix = field or "counts"
    for i, row in enumerate(data):
        for j, v in enumerate(row):
            where = f"{prefix}[{i}][{j}]"
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise InputError(Problem(label, where, f"must be a number, got {v!r}"))
            if (isinstance(v, float) and not math.isfinite(v)) or v < 0 or v > MAX_COUNT:
                raise InputError(Problem(label, where, f"must be a count between 0 and {MAX_COUNT:g}, got {str(v)[:24]}"))
            arr[i, j] = v
    if np.any(arr.sum(axis=1) <= 0):
        bad = int(np.flatnonzero(arr.sum(axis=1) <= 0)[0])
        raise InputError(Problem(label, f"{field}[{bad}]", "a layer's counts sum to zero"))
    return arr
