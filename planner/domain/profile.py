"""Measured hardware profiles: what one device really reaches, fitted to two saturating curves.

A profile holds raw timing samples (matrix multiplies, memory copies and an expert-FFN-shaped op)
taken on one machine with one backend, and two curves fitted to them::

    effective_flops_per_s(flops)  = peak_flops_per_s * flops  / (flops  + half_flops)
    effective_bytes_per_s(nbytes) = peak_bytes_per_s * nbytes / (nbytes + half_bytes)

``flops`` is the work of one operation (FLOPs), ``nbytes`` the memory traffic of one operation
(bytes); ``half_flops``/``half_bytes`` is the size of an operation that reaches half the peak.
Equivalently the time of one operation is a fixed overhead plus a rate::

    seconds = (flops + half_flops) / peak_flops_per_s = a + b * flops,  b = 1 / peak,  a = half / peak

which is what :func:`fit` estimates (see there). With ``Device.profile`` set, the device's
roofline uses these curves instead of its datasheet peaks times efficiencies.

Optionally (``framework``, :class:`FrameworkOverhead`) a profile also carries the fixed cost the
framework adds to every decoder layer, expert call and pass regardless of its size (eager PyTorch
runs about a hundred operations per decoder layer, each costing microseconds of Python and
dispatch): measured by timing a tiny MoE model and fitted as ``seconds = fixed + slope x FLOPs``.
A profile without it (every profile written before it existed) prices no such overhead.

Units: FLOPs, FLOP/s, bytes, bytes/s, seconds. A profile is saved as JSON (schema
``moeplan.profile/1``); :meth:`HardwareProfile.load` checks every field and reports every problem.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from planner.domain import fields as F
from planner.domain.device import DTYPES
from planner.domain.errors import Collector, InputError, MoeplanError, Problem
from planner.domain.files import write_atomic

SCHEMA = "moeplan.profile/1"
BACKENDS = ("numpy", "torch-cpu", "torch-cuda")

# Field -> integer? for the samples of each list.
MATMUL_FIELDS = {"m": True, "n": True, "k": True, "flops": False, "seconds": False}
MEMORY_FIELDS = {"bytes": False, "seconds": False}
EXPERT_FFN_FIELDS = {
    "tokens": True, "hidden": True, "intermediate": True, "flops": False, "bytes": False, "seconds": False,
}
SAMPLE_FIELDS = {"matmul": MATMUL_FIELDS, "memory": MEMORY_FIELDS, "expert_ffn": EXPERT_FFN_FIELDS}
CURVE_FIELDS = ("peak_flops_per_s", "half_flops", "peak_bytes_per_s", "half_bytes")
TOP_FIELDS = ("schema", "host", "backend", "dtype", "created", *SAMPLE_FIELDS, *CURVE_FIELDS)
OPTIONAL_FIELDS = ("framework",)
# Framework samples: one pass of a tiny MoE model (seconds per pass, totals over its layers).
FRAMEWORK_SAMPLE_FIELDS = {
    "tokens": True, "context": False, "layers": True, "layer_flops": False, "expert_flops": False,
    "pass_s": False, "layers_s": False, "experts_s": False,
}
FRAMEWORK_FIELDS = ("library", "model", "layer_s", "layer_s_per_flop", "expert_call_s", "expert_s_per_flop",
                    "pass_s", "samples")


class ProfileError(MoeplanError):
    """A measurement cannot be made (backend or accelerator missing) or its samples cannot be fitted."""


@dataclass(frozen=True)
class FrameworkOverhead:
    """Fixed seconds the framework adds regardless of an operation's size, fitted to timed passes.

    ``layer_s``: per decoder layer per pass (its attention, router, norms and local routed-experts
    call, the whole layer module); ``expert_call_s``: per call of a layer's routed-experts module (what
    a device serving remote experts pays per call); ``pass_s``: per pass through one stage outside its
    layers (masks, rotary embeddings, embedding or LM head). ``layer_s_per_flop`` and
    ``expert_s_per_flop`` are the fitted slopes (seconds per FLOP), kept to show the fit; the cost
    model adds only the fixed terms to its roofline. ``library``: what was timed (framework versions,
    threads); ``model``: the tiny model's shape. ``samples``: the timed passes (``tokens`` rows of a
    decode step or a prefill's prompt, ``context`` cached tokens, ``layers``, FLOPs per layer of the
    layer and of its routed experts, and seconds per pass: whole pass, summed layers, summed experts).
    """

    library: str
    model: str
    layer_s: float
    layer_s_per_flop: float
    expert_call_s: float
    expert_s_per_flop: float
    pass_s: float
    samples: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {key: getattr(self, key) for key in FRAMEWORK_FIELDS}

    @classmethod
    def from_dict(cls, d: Any, where: str, col: Collector) -> FrameworkOverhead | None:
        """Check and build from parsed JSON (``where``: the field's path in messages); None on problems."""
        if not isinstance(d, dict):
            col.add(where, f"must be an object with {', '.join(FRAMEWORK_FIELDS)}; got {type(d).__name__}")
            return None
        before = len(col.problems)
        F.unknown_keys(d, FRAMEWORK_FIELDS, where, col)
        values: dict[str, Any] = {"library": F.string(d, "library", where, col), "model": F.string(d, "model", where, col)}
        for key in ("layer_s", "layer_s_per_flop", "expert_call_s", "expert_s_per_flop", "pass_s"):
            values[key] = F.number(d, key, where, col, nonnegative=True)
        values["samples"] = _samples(d, "samples", FRAMEWORK_SAMPLE_FIELDS, col, where=where, nonnegative=True)
        return cls(**values) if len(col.problems) == before else None


@dataclass(frozen=True)
class HardwareProfile:
    """Samples measured on one device and the throughput curves fitted to them.

    ``matmul`` samples: ``m, n, k`` (sizes), ``flops`` (2*m*n*k FLOPs), ``seconds`` (one call).
    ``memory`` samples: ``bytes`` (traffic of one copy, read + write), ``seconds``.
    ``expert_ffn`` samples: ``tokens, hidden, intermediate`` (sizes), ``flops`` (FLOPs of the three
    matrix multiplies), ``bytes`` (weights + input + output), ``seconds``.
    Curves: ``peak_flops_per_s`` (FLOP/s), ``half_flops`` (FLOPs), ``peak_bytes_per_s`` (bytes/s),
    ``half_bytes`` (bytes).
    """

    host: str
    backend: str
    dtype: str
    created: str
    peak_flops_per_s: float
    half_flops: float
    peak_bytes_per_s: float
    half_bytes: float
    matmul: list = field(default_factory=list)
    memory: list = field(default_factory=list)
    expert_ffn: list = field(default_factory=list)
    framework: FrameworkOverhead | None = None
    schema: str = SCHEMA

    def effective_flops_per_s(self, flops: float) -> float:
        """FLOP/s reached by one operation of ``flops`` FLOPs."""
        return self.peak_flops_per_s * flops / (flops + self.half_flops)

    def effective_bytes_per_s(self, nbytes: float) -> float:
        """Bytes/s reached by one operation moving ``nbytes`` bytes."""
        return self.peak_bytes_per_s * nbytes / (nbytes + self.half_bytes)

    def to_dict(self) -> dict:
        """Plain JSON-able dict, ``schema`` first; ``framework`` only when measured."""
        d = asdict(self)
        out = {key: d[key] for key in TOP_FIELDS}
        if self.framework is not None:
            out["framework"] = self.framework.to_dict()
        return out

    def save(self, path: str | os.PathLike) -> None:
        """Write the profile as JSON, atomically (temporary file in the same folder, then rename).

        Raises :class:`InputError` naming ``path`` when it cannot be written.
        """
        path = os.fspath(path)
        # One sample per line, so that a profile reads (and diffs) well.
        items = []
        for key, value in self.to_dict().items():
            if isinstance(value, list):
                rows = ",\n".join(f"    {json.dumps(s)}" for s in value)
                items.append(f'  "{key}": [\n{rows}\n  ]' if value else f'  "{key}": []')
            elif isinstance(value, dict):
                inner = []
                for k, v in value.items():
                    if isinstance(v, list):
                        rows = ",\n".join(f"      {json.dumps(s)}" for s in v)
                        inner.append(f'    "{k}": [\n{rows}\n    ]' if v else f'    "{k}": []')
                    else:
                        inner.append(f'    "{k}": {json.dumps(v)}')
                items.append(f'  "{key}": {{\n' + ",\n".join(inner) + "\n  }")
            else:
                items.append(f'  "{key}": {json.dumps(value)}')
        text = "{\n" + ",\n".join(items) + "\n}\n"
        write_atomic(path, text, what="the profile")

    @classmethod
    def load(cls, path: str | os.PathLike) -> HardwareProfile:
        """Read and check a profile JSON file; raises :class:`InputError` listing every problem."""
        path = os.fspath(path)
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise InputError(Problem(path, "", f"cannot read the profile: {exc.strerror or exc}")) from None
        except UnicodeDecodeError:
            raise InputError(Problem(path, "", "is not a profile: not UTF-8 text")) from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(Problem(
                path, "", f"is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
            )) from None
        return cls.from_dict(data, path)

    @classmethod
    def from_dict(cls, d: Any, file: str) -> HardwareProfile:
        """Build a profile from parsed JSON, checking every field; ``file`` names the source in messages."""
        col = Collector(file)
        if not isinstance(d, dict):
            col.add("", f"must be a JSON object with the fields {', '.join(TOP_FIELDS)}; got {type(d).__name__}")
            col.raise_if_any()
        F.unknown_keys(d, TOP_FIELDS + OPTIONAL_FIELDS, "", col)
        schema = F.string(d, "schema", "", col)
        if schema is not None and schema != SCHEMA:
            col.add("schema", f"unknown schema version {schema!r}; this moeplan reads {SCHEMA!r}")
        values: dict[str, Any] = {
            "host": F.string(d, "host", "", col),
            "backend": F.string(d, "backend", "", col, choices=BACKENDS),
            "dtype": F.string(d, "dtype", "", col, choices=DTYPES),
            "created": F.string(d, "created", "", col),
        }
        if values["created"] is not None:
            try:
                datetime.fromisoformat(values["created"])
            except ValueError:
                col.add("created", f"must be an ISO 8601 time, got {values['created']!r}")
        for key in ("peak_flops_per_s", "peak_bytes_per_s"):
            values[key] = F.number(d, key, "", col, positive=True)
        for key in ("half_flops", "half_bytes"):
            values[key] = F.number(d, key, "", col, nonnegative=True)
        for key, spec in SAMPLE_FIELDS.items():
            values[key] = _samples(d, key, spec, col)
        if d.get("framework") is not None:
            values["framework"] = FrameworkOverhead.from_dict(d["framework"], "framework", col)
        col.raise_if_any()
        return cls(**values)


def _samples(d: dict, key: str, spec: dict[str, bool], col: Collector, where: str = "",
             nonnegative: bool = False) -> list | None:
    """A list of sample objects whose fields (``spec``: name -> integer?) are all positive numbers
    (``nonnegative``: or zero). ``where``: the path of ``d`` in messages."""
    path = f"{where}.{key}" if where else key
    if key not in d:
        col.add(path, f"is required (a list of samples with {', '.join(spec)})")
        return None
    value = d[key]
    if not isinstance(value, list):
        col.add(path, f"must be a list of samples, got {type(value).__name__}")
        return None
    before = len(col.problems)
    out = []
    for i, item in enumerate(value):
        where = f"{path}[{i}]"
        if not isinstance(item, dict):
            col.add(where, f"must be an object with {', '.join(spec)}; got {type(item).__name__}")
            continue
        F.unknown_keys(item, spec, where, col)
        out.append({name: F.number(item, name, where, col, positive=not nonnegative, nonnegative=nonnegative,
                                   integer=integer)
                    for name, integer in spec.items()})
    return out if len(col.problems) == before else None
