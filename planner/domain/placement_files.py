"""The inputs of expert placement alone (``moeplan place``): per-layer expert loads and device lists.

LOADS.json: a JSON array ``[layers][experts]`` of loads (tokens routed to each expert), numbers
>= 0. Devices: a whole number N (N identical devices of speed 1) or a device file (.json or .toml)
listing devices, each with ``speed`` (> 0, relative), and optionally ``name``, ``slots`` (experts a
device holds per layer) and ``memory_gb``. A JSON device file is an array of tables or
``{"devices": [...]}``; a TOML one holds ``[[devices]]`` tables. Every reader raises
:class:`~planner.domain.errors.InputError` naming the file (or option) and the field.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from planner.domain import fields as F
from planner.domain.data_files import MAX_COUNT
from planner.domain.errors import Collector, InputError, Problem, option_error
from planner.domain.files import read_json, read_toml
from planner.domain.units import GB

MAX_REPORTED = 20  # problems listed for one file before "... and N more"
MAX_DEVICES = 100_000
_DEVICE_KEYS = ("name", "speed", "slots", "memory_gb")


def read_loads(path: str) -> np.ndarray:
    """[layers, experts] float loads; :class:`InputError` lists every bad entry.

    The file is a JSON array ``[layers][experts]``, or SGLang's expert distribution dump: a JSON
    object or a ``.pt`` file (torch.save, read with ``weights_only``; needs torch) whose
    ``logical_count`` is [layers][experts] or [steps][layers][experts] (the steps are summed, as
    SGLang's EPLB does).
    """
    field = ""
    data = _read_torch_dump(path) if path.lower().endswith(".pt") else read_json(Path(path), path)
    if isinstance(data, dict):
        if "logical_count" not in data:
            keys = ", ".join(sorted(map(str, data))[:8]) or "none"
            raise InputError(Problem(path, "", f"must hold a JSON array [layers][experts] of expert loads, or an object "
                                               f"with logical_count (SGLang's expert distribution dump); its keys: {keys}"))
        data, field = data["logical_count"], "logical_count"
    if isinstance(data, list) and data and all(isinstance(step, list) and step and isinstance(step[0], list) for step in data):
        steps = [_read_matrix(step, path, f"{field}[{k}]") for k, step in enumerate(data)]
        if len({m.shape for m in steps}) > 1:
            shapes = sorted({f"[{a}][{b}]" for a, b in (m.shape for m in steps)})
            raise InputError(Problem(path, field, f"steps of logical_count differ in shape: {', '.join(shapes)}"))
        return np.sum(steps, axis=0)
    return _read_matrix(data, path, field)


def _read_matrix(data, path: str, field: str) -> np.ndarray:
    shape_hint = "a JSON array of layers, each an array of expert loads ([layers][experts])"
    if not isinstance(data, list) or not data:
        raise InputError(Problem(path, field, f"must hold {shape_hint}, got {_kind(data)}"))
    col = Collector(path)
    width = None
    for layer, row in enumerate(data):
        if not isinstance(row, list) or not row:
            col.add(f"{field}[{layer}]", f"must be a non-empty array of expert loads, got {_kind(row)}")
            continue
        if width is None:
            width = len(row)
        elif len(row) != width:
            col.add(f"{field}[{layer}]", f"has {len(row)} loads, but layer [0] has {width}: every layer needs one load per expert")
            continue
        for expert, value in enumerate(row):
            why = _bad_load(value)
            if why:
                col.add(f"{field}[{layer}][{expert}]", why)
    if len(col.problems) > MAX_REPORTED:
        more = len(col.problems) - MAX_REPORTED
        col.problems = col.problems[:MAX_REPORTED] + [Problem(path, "", f"... and {more} more problem(s)")]
    col.raise_if_any()
    return np.array(data, dtype=float)


def _read_torch_dump(path: str) -> dict:
    """SGLang's ``expert_distribution_recorder_*.pt``: a dict whose tensors become lists."""
    try:
        import torch
    except ImportError:
        raise InputError(Problem(path, "", "reading a .pt dump needs torch (pip install -e '.[torch]'); or save "
                                           "its logical_count as JSON: {\"logical_count\": [[...]]}")) from None
    if not Path(path).is_file():
        raise InputError(Problem(path, "", "file not found" if not Path(path).exists() else "is a directory, expected a file"))
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a file that is not a checkpoint
        raise InputError(Problem(path, "", f"is not a torch file of tensors: {type(exc).__name__}: {str(exc)[:200]}")) from None
    if not isinstance(data, dict):
        raise InputError(Problem(path, "", f"must hold a dict with logical_count, got {type(data).__name__}"))
    return {k: v.tolist() if isinstance(v, torch.Tensor) else v for k, v in data.items()}


def _kind(value) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def _bad_load(value) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"must be a number, got {_kind(value)}"
    try:
        number = float(value)
    except OverflowError:
        return "is too large for a number"
    if not math.isfinite(number):
        return f"must be finite, got {value!r}"
    if number < 0:
        return f"must be >= 0, got {value!r}"
    if number > MAX_COUNT:  # loads are token counts; beyond this their sums lose all precision or overflow
        return f"must be at most {MAX_COUNT:g} (a count of tokens), got {value!r}"
    return None


def _read_device_file(path: str) -> list:
    suffix = Path(path).suffix.lower()
    if suffix == ".toml":
        data = read_toml(Path(path))
    elif suffix == ".json":
        data = read_json(Path(path), path)
    else:
        raise InputError(Problem(path, "", "a device file must end in .json or .toml"))
    entries = data.get("devices") if isinstance(data, dict) else data
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise InputError(Problem(path, "devices", "must be a non-empty array of device tables (each with speed)"))
    return entries


def read_devices(spec: str, num_experts: int, replicas: int | None, expert_gb: float | None, *,
                 physical: int | None = None) -> dict:
    """Speeds, slots, memory and names of the devices given by ``--devices`` (and the slots by
    ``--replicas``, the redundant experts in all, or ``physical``: ``--num-replicas``, EPLB's
    ``num_replicas``, the physical experts in all; at most one of the two).

    Returns a dict with ``names`` [B], ``speed`` [B], ``slots`` [B] (int), ``capacity_bytes`` [B]
    (inf where unknown) and ``expert_bytes`` (0 when memory is not checked).
    """
    if replicas is not None and physical is not None:
        raise option_error("--num-replicas", "give --num-replicas (physical experts in all, EPLB's num_replicas) or "
                                             "--replicas (redundant experts in all), not both")
    option = "--num-replicas" if physical is not None else "--replicas"
    if physical is not None:
        if physical < num_experts:
            raise option_error("--num-replicas", f"counts every physical expert, as EPLB's num_replicas does (experts + "
                                                 f"redundant): the {num_experts} experts need at least {num_experts}, got "
                                                 f"{physical}; for {physical} redundant experts give --replicas {physical}")
        replicas = physical - num_experts
    if replicas is not None and replicas < 0:
        raise option_error("--replicas", f"must be >= 0 (redundant slots in all), got {replicas}")

    def count_text(redundant: int) -> str:  # a slot count as the user's option counts it
        return f"{option} {redundant + num_experts if physical is not None else redundant}"

    text = spec.strip()
    if re.fullmatch(r"[+-]?\d+", text):
        count = int(text)
        if not 1 <= count <= MAX_DEVICES:
            raise option_error("--devices", f"must be a number of devices from 1 to {MAX_DEVICES} or a device file, got {spec!r}")
        entries, file = [{"speed": 1.0}] * count, None
    elif not Path(text).exists() and re.fullmatch(r"[+-]?[\d.eE+-]+", text):
        raise option_error("--devices", f"must be a whole number of devices >= 1 or a device file, got {spec!r}")
    else:
        if not Path(text).exists():
            raise InputError(Problem(text, "--devices", "file not found (--devices takes a number of devices or a device file)"))
        entries, file = _read_device_file(text), text
    col = Collector(file or "")
    names, speed, slots, memory = [], [], [], []
    for n, entry in enumerate(entries):
        where = f"devices[{n}]"
        F.unknown_keys(entry, _DEVICE_KEYS, where, col)
        names.append(F.string(entry, "name", where, col, required=False, default=f"device{n}"))
        speed.append(F.number(entry, "speed", where, col, positive=True))
        slots.append(F.number(entry, "slots", where, col, required=False, nonnegative=True, integer=True, maximum=num_experts))
        memory.append(F.number(entry, "memory_gb", where, col, required=False, positive=True))
    col.raise_if_any()
    given = [s is not None for s in slots]
    B = len(entries)
    if any(given) and not all(given):
        missing = given.index(False)
        raise InputError(Problem(file, f"devices[{missing}].slots",
                                 "is required when another device gives slots (give every device slots, or none)"))
    if all(given):
        total = sum(slots)
        if total < num_experts:
            raise InputError(Problem(file, "devices[].slots", f"the devices hold {total} experts per layer in all, "
                                                              f"fewer than the {num_experts} experts in the loads"))
        if replicas is not None and total != num_experts + replicas:
            raise option_error(option, f"{num_experts} experts + {replicas} redundant = {num_experts + replicas} physical "
                                       f"experts, but the device file gives {total} slots; drop {option} or make them agree")
    else:
        redundant = replicas or 0
        most = num_experts * (B - 1)
        if redundant > most:
            raise option_error(option, f"{num_experts + redundant:,} physical experts ({redundant:,} redundant) on {B} "
                                       f"device(s): at most {num_experts * B:,} ({count_text(most)}), where every device "
                                       "holds every expert; more replicas balance nothing")
        physical_count = num_experts + redundant
        if physical_count % B:
            low, high = (physical_count // B) * B - num_experts, -(-physical_count // B) * B - num_experts
            hint = " or ".join(count_text(n) for n in (low, high) if 0 <= n <= most)
            raise option_error(option, f"{num_experts} experts + {redundant} redundant = {physical_count} physical "
                                       f"experts do not split evenly over {B} devices ({physical_count} / {B} "
                                       f"is not whole); use {hint}, or give each device its slots in a device file")
        slots = [physical_count // B] * B
    checked = expert_gb is not None and any(m is not None for m in memory)
    if expert_gb is not None and not (expert_gb >= 0 and math.isfinite(expert_gb)):
        raise option_error("--expert-gb", f"must be a finite number >= 0, got {expert_gb!r}")
    return {
        "names": names,
        "speed": np.array(speed, dtype=float),
        "slots": np.array(slots, dtype=int),
        "capacity_bytes": np.array([m * GB if (checked and m is not None) else np.inf for m in memory]),
        "expert_bytes": expert_gb * GB if checked else 0.0,
        "memory_ignored": expert_gb is None and any(m is not None for m in memory),
    }
