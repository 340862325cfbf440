"""``moeplan place``: expert placement alone, from EPLB-style per-layer expert loads.

    moeplan place LOADS.json --devices SPEC [--replicas N] [--solver NAME] [--seed N] [--json]

LOADS.json: a JSON array ``[layers][experts]`` of loads (tokens routed to each expert), numbers
>= 0. ``--devices``: a whole number N (N identical devices of speed 1) or a device file (.json or
.toml) listing devices, each with ``speed`` (> 0, relative), and optionally ``name``, ``slots``
(experts a device holds per layer) and ``memory_gb`` (checked when ``--expert-gb`` gives the size
of one expert). A JSON device file is an array of tables or ``{"devices": [...]}``; a TOML one
holds ``[[devices]]`` tables.

Slots, as in EPLB: ``--replicas N`` is the number of redundant slots in all, so there are
``experts + N`` physical experts, ``(experts + N) / devices`` per device, which must come out
whole. A device file that gives every device its ``slots`` sets them itself (``--replicas``, if
given, must then agree with their sum).

Output: a per-device table with the balancedness, or with ``--json`` one object holding
``phy2log`` [layers][slots], ``log2phy`` [layers][experts][max replicas] (-1 padded), ``logcnt``
[layers][experts], ``replica_share`` [layers][slots] (the part of its expert's load a slot serves;
EPLB's own maps assume even shares, these need not be), ``device_load`` [layers][devices] (load,
not divided by speed), ``balancedness`` (vLLM's: sum over layers of the mean over devices of
load / speed, divided by the sum over layers of the maximum), ``mean_balancedness`` (the mean
over layers of mean / max), ``solver``, ``status`` and ``solve_time_s``. Physical slots are
device-major: device d holds the slots after those of devices 0 .. d-1. With ``--solver eplb``
the maps are EPLB's own (it may give one device two slots of the same expert); the other solvers
put at most one replica of an expert on a device and mark a slot they leave empty with -1.

Exit codes: 0 placed, 1 the solver found no placement, 2 bad input (the message names the file
and field).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from planner.domain import fields as F
from planner.domain.errors import Collector, InputError, Problem
from planner.domain.data_files import read_json

SOLVERS = ("greedy-placement", "local-search-placement", "eplb")
GB = 1e9
MAX_REPORTED = 20  # problems listed for one file before "... and N more"
MAX_DEVICES = 100_000
_DEVICE_KEYS = ("name", "speed", "slots", "memory_gb")


def add_parser(subparsers) -> None:
    """Register ``place`` on the ``moeplan`` sub-command parsers."""
    p = subparsers.add_parser("place", help="expert placement and replication from per-layer expert loads (EPLB-style)")
    p.add_argument("loads", metavar="LOADS.json", help="JSON array [layers][experts] of expert loads (>= 0)")
    p.add_argument("--devices", required=True, metavar="SPEC",
                   help="number of identical devices, or a .json/.toml file listing devices (speed, slots, memory_gb)")
    p.add_argument("--replicas", type=int, default=None, metavar="N",
                   help="redundant slots in all: experts + N physical experts, split evenly over the devices (default 0)")
    p.add_argument("--solver", choices=SOLVERS, default="greedy-placement")
    p.add_argument("--expert-gb", type=float, default=None, metavar="GB",
                   help="memory of one expert replica; with memory_gb in the device file, memory is checked")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(func=cmd_place)


# ----- inputs ----------------------------------------------------------------------------------

def read_loads(path: str) -> np.ndarray:
    """[layers, experts] float loads from a JSON file; :class:`InputError` lists every bad entry."""
    data = read_json(Path(path), path)
    shape_hint = "a JSON array of layers, each an array of expert loads ([layers][experts])"
    if not isinstance(data, list) or not data:
        raise InputError(Problem(path, "", f"must hold {shape_hint}, got {_kind(data)}"))
    col = Collector(path)
    width = None
    for layer, row in enumerate(data):
        if not isinstance(row, list) or not row:
            col.add(f"[{layer}]", f"must be a non-empty array of expert loads, got {_kind(row)}")
            continue
        if width is None:
            width = len(row)
        elif len(row) != width:
            col.add(f"[{layer}]", f"has {len(row)} loads, but layer [0] has {width}: every layer needs one load per expert")
            continue
        for expert, value in enumerate(row):
            why = _bad_load(value)
            if why:
                col.add(f"[{layer}][{expert}]", why)
    if len(col.problems) > MAX_REPORTED:
        more = len(col.problems) - MAX_REPORTED
        col.problems = col.problems[:MAX_REPORTED] + [Problem(path, "", f"... and {more} more problem(s)")]
    col.raise_if_any()
    return np.array(data, dtype=float)


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
    return None


def _read_device_file(path: str) -> list:
    from planner.domain.catalog import read_toml

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


def read_devices(spec: str, num_experts: int, replicas: int | None, expert_gb: float | None) -> dict:
    """Speeds, slots, memory and names of the devices given by ``--devices`` (and ``--replicas``).

    Returns a dict with ``names`` [B], ``speed`` [B], ``slots`` [B] (int), ``capacity_bytes`` [B]
    (inf where unknown) and ``expert_bytes`` (0 when memory is not checked).
    """
    if replicas is not None and replicas < 0:
        raise InputError(Problem("--replicas", "", f"must be >= 0 (redundant slots in all), got {replicas}"))
    text = spec.strip()
    if re.fullmatch(r"[+-]?\d+", text):
        count = int(text)
        if not 1 <= count <= MAX_DEVICES:
            raise InputError(Problem("--devices", "", f"must be a number of devices from 1 to {MAX_DEVICES} or a "
                                                      f"device file, got {spec!r}"))
        entries, file = [{"speed": 1.0}] * count, None
    elif not Path(text).exists() and re.fullmatch(r"[+-]?[\d.eE+-]+", text):
        raise InputError(Problem("--devices", "", f"must be a whole number of devices >= 1 or a device file, got {spec!r}"))
    else:
        if not Path(text).exists():
            raise InputError(Problem(text, "", "file not found (--devices takes a number of devices or a device file)"))
        entries, file = _read_device_file(text), text
    col = Collector(file or "--devices")
    names, speed, slots, memory = [], [], [], []
    for n, entry in enumerate(entries):
        where = f"devices[{n}]"
        F.unknown_keys(entry, _DEVICE_KEYS, where, col)
        names.append(F.string(entry, "name", where, col, required=False, default=f"device{n}"))
        speed.append(F.number(entry, "speed", where, col, positive=True))
        slots.append(F.number(entry, "slots", where, col, required=False, nonnegative=True, integer=True))
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
            raise InputError(Problem("--replicas", "", f"{num_experts} experts + {replicas} redundant = {num_experts + replicas} "
                                                       f"physical experts, but the device file gives {total} slots; "
                                                       "drop --replicas or make them agree"))
    else:
        redundant = replicas or 0
        physical = num_experts + redundant
        if physical % B:
            low, high = (physical // B) * B - num_experts, -(-physical // B) * B - num_experts
            hint = " or ".join(f"--replicas {n}" for n in (low, high) if n >= 0)
            raise InputError(Problem("--replicas", "", f"{num_experts} experts + {redundant} redundant = {physical} physical "
                                                       f"experts do not split evenly over {B} devices ({physical} / {B} "
                                                       f"is not whole); use {hint}, or give each device its slots in a "
                                                       "device file"))
        slots = [physical // B] * B
    checked = expert_gb is not None and any(m is not None for m in memory)
    if expert_gb is not None and not (expert_gb >= 0 and math.isfinite(expert_gb)):
        raise InputError(Problem("--expert-gb", "", f"must be a finite number >= 0, got {expert_gb!r}"))
    return {
        "names": names,
        "speed": np.array(speed, dtype=float),
        "slots": np.array(slots, dtype=int),
        "capacity_bytes": np.array([m * GB if (checked and m is not None) else np.inf for m in memory]),
        "expert_bytes": expert_gb * GB if checked else 0.0,
        "memory_ignored": expert_gb is None and any(m is not None for m in memory),
    }


# ----- command ---------------------------------------------------------------------------------

def cmd_place(args) -> int:
    from models.assignment import ReplicatedAssignment, bin_loads
    from planner.cli.main import EXIT_NO_PLAN, EXIT_OK, emit_json, log
    from solvers import placement, registry

    loads = read_loads(args.loads)
    layers, experts = loads.shape
    fleet = read_devices(args.devices, experts, args.replicas, args.expert_gb)
    if fleet["memory_ignored"]:
        log("note: memory_gb is not checked without --expert-gb (the memory of one expert replica)")
    B = fleet["speed"].size
    problem = ReplicatedAssignment.build(loads, fleet["speed"], slots=fleet["slots"], weight=fleet["expert_bytes"],
                                         capacity=fleet["capacity_bytes"], max_replicas=B,
                                         names={"bins": fleet["names"]})
    result = registry.get(args.solver, problem="assignment").func(problem, seed=args.seed)
    head = {"status": result.status.value, "solver": result.solver, "solve_time_s": result.solve_time_s}
    if result.solution is None:
        if args.json:
            emit_json({**head, "message": result.message})
        else:
            log(f"{result.solver}: {result.status.value}: {result.message}")
        return EXIT_NO_PLAN
    sol = result.solution
    g = np.arange(layers)[:, None]
    if "phy2log" in result.extra:  # EPLB's own maps: replicas on one device kept apart, even shares
        phy2log, log2phy, logcnt = (result.extra[k] for k in ("phy2log", "log2phy", "logcnt"))
        replica_share = 1.0 / logcnt[g, phy2log]
    else:
        phy2log, log2phy, logcnt = placement.to_eplb_maps(problem, sol)
        device_of_slot = np.repeat(np.arange(B), problem.slots)
        replica_share = np.where(phy2log >= 0, sol.shares[g, np.maximum(phy2log, 0), device_of_slot[None, :]], 0.0)
    device_load = bin_loads(problem, sol) * problem.speed[None, :]
    out = {
        **head,
        "objective": result.objective,
        "balancedness": result.extra["balancedness"],
        "mean_balancedness": result.extra["mean_balancedness"],
        "devices": [{"name": n, "speed": float(s), "slots": int(k)}
                    for n, s, k in zip(fleet["names"], problem.speed, problem.slots)],
        "phy2log": phy2log.tolist(),
        "log2phy": log2phy.tolist(),
        "logcnt": logcnt.tolist(),
        "replica_share": replica_share.tolist(),
        "device_load": device_load.tolist(),
    }
    if args.json:
        emit_json(out)
    else:
        print(_table(out, layers, experts, device_load))
    return EXIT_OK


def _table(out: dict, layers: int, experts: int, device_load: np.ndarray) -> str:
    devices = out["devices"]
    physical = sum(d["slots"] for d in devices)
    total = device_load.sum(axis=0)
    lines = [f"{layers} layers x {experts} experts on {len(devices)} devices, {physical} slots per layer "
             f"({physical - experts} redundant); {out['solver']}: {out['status']} in {1e3 * out['solve_time_s']:.1f} ms",
             f"{'device':<16} {'speed':>7} {'slots':>5} {'load':>12} {'share':>7} {'worst layer load/speed':>23}"]
    worst = (device_load / np.array([d["speed"] for d in devices])[None, :]).max(axis=0)
    grand = max(float(total.sum()), 1e-300)
    for d, load, peak in zip(devices, total, worst):
        lines.append(f"{d['name']:<16} {d['speed']:>7.3g} {d['slots']:>5} {load:>12.6g} {load / grand:>7.1%} {peak:>23.6g}")
    lines.append(f"balancedness {out['balancedness']:.4f} (vLLM: sum over layers of mean / sum of max of load/speed), "
                 f"mean per layer {out['mean_balancedness']:.4f}")
    return "\n".join(lines)
