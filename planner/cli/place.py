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

import numpy as np

from models.assignment import ReplicatedAssignment, bin_loads
from planner.cli.output import EXIT_NO_PLAN, EXIT_OK, emit_json, log
from planner.domain.placement_files import read_devices, read_loads
from solvers import placement, registry

SOLVERS = ("greedy-placement", "local-search-placement", "eplb")


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


def cmd_place(args) -> int:
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
