"""``moeplan place``: expert placement alone, from per-layer expert loads (EPLB's and SGLang's formats).

    moeplan place LOADS --devices SPEC [--replicas N | --num-replicas N] [--num-groups G --num-nodes N]
                  [--solver NAME] [--seed N] [--format moeplan|sglang] [-o FILE] [--json]

LOADS: a JSON array ``[layers][experts]`` of loads (tokens routed to each expert), numbers from 0
to 1e15; or SGLang's expert distribution dump (``/dump_expert_distribution_record``): a ``.pt``
file (needs torch) or a JSON object whose ``logical_count`` is [layers][experts] or
[steps][layers][experts] (steps summed). ``--devices`` (also ``--num-gpus``): a whole number N (N
identical devices of speed 1) or a device file (.json or .toml) listing devices, each with
``speed`` (> 0, relative), and optionally ``name``, ``slots`` (experts a device holds per layer)
and ``memory_gb`` (checked when ``--expert-gb`` gives the size of one expert). A JSON device file
is an array of tables or ``{"devices": [...]}``; a TOML one holds ``[[devices]]`` tables.

Slots: ``--replicas N`` is the number of redundant experts in all, so there are ``experts + N``
physical experts; ``--num-replicas N`` is EPLB's ``num_replicas`` (and SGLang's physical expert
count): the physical experts in all, ``experts`` + redundant. Either way they are split evenly,
``physical / devices`` per device, which must come out whole, and at most every device holds every
expert. A device file that gives every device its ``slots`` sets them itself (the option, if
given, must then agree with their sum). ``--num-groups G --num-nodes N`` select EPLB's
hierarchical policy (``--solver eplb``): experts in G contiguous groups, the devices in N nodes,
as in ``rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus)``.

Output: a per-device table with the balancedness, or with ``--json`` one object holding
``status``, ``stop_reason``, ``message``, ``solver``, ``solve_time_s``, ``objective``,
``bound``, ``gap``, ``phy2log`` [layers][slots], ``log2phy`` [layers][experts][max replicas] (-1
padded), ``logcnt`` [layers][experts], ``replica_share`` [layers][slots] (the part of its
expert's load a slot serves; EPLB's own maps assume even shares, these need not be),
``device_load`` [layers][devices] (load, not divided by speed), ``balancedness`` (vLLM's: sum
over layers of the mean over devices of load / speed, divided by the sum over layers of the
maximum), ``mean_balancedness`` (the mean over layers of mean / max). Physical slots are
device-major: device d holds the slots after those of devices 0 .. d-1. With ``--solver eplb``
the maps are EPLB's own (it may give one device two slots of the same expert); the other solvers
put at most one replica of an expert on a device and mark a slot they leave empty with -1.

``-o FILE`` writes the output in ``--format``: ``moeplan`` (the ``--json`` object) or ``sglang``:
``{"physical_to_logical_map": [layers][physical experts]}``, the file SGLang's
``--init-expert-location FILE.json`` reads (with ``--ep-num-redundant-experts`` = the redundant
count and the devices as its EP ranks: every device the same slots). SGLang needs every slot to
hold an expert: a slot the solver leaves empty gets a second copy of the busiest expert already
on its device (the output says how many).

Exit codes: 0 placed, 1 the solver found no placement, 2 bad input (the message names the file
and field, or the option).
"""

from __future__ import annotations

import json

import numpy as np

from models.assignment import ReplicatedAssignment, bin_loads
from planner.cli.output import EXIT_NO_PLAN, EXIT_OK, emit_json, json_safe, log
from planner.domain.errors import InputError, Problem, option_error
from planner.domain.files import check_writable, write_atomic
from planner.domain.placement_files import read_devices, read_loads
from solvers import placement, registry

SOLVERS = ("greedy-placement", "local-search-placement", "eplb")
FORMATS = ("moeplan", "sglang")


def add_parser(subparsers) -> None:
    """Register ``place`` on the ``moeplan`` sub-command parsers."""
    p = subparsers.add_parser("place", help="expert placement and replication from per-layer expert loads (EPLB, SGLang)")
    p.add_argument("loads", metavar="LOADS", help="JSON array [layers][experts] of expert loads (>= 0), or SGLang's "
                                                 "expert distribution dump (.pt, or JSON with logical_count)")
    p.add_argument("--devices", "--num-gpus", dest="devices", required=True, metavar="SPEC",
                   help="number of identical devices (EPLB's num_gpus), or a .json/.toml file listing devices "
                        "(speed, slots, memory_gb)")
    slots = p.add_mutually_exclusive_group()
    slots.add_argument("--replicas", type=int, default=None, metavar="N",
                       help="redundant experts in all: experts + N physical experts, split evenly over the devices (default 0)")
    slots.add_argument("--num-replicas", type=int, default=None, metavar="N",
                       help="EPLB's num_replicas: physical experts in all (experts + redundant)")
    eplb = p.add_argument_group("EPLB's hierarchical policy (--solver eplb)")
    eplb.add_argument("--num-groups", type=int, default=None, metavar="G", help="expert groups (a divisor of the experts)")
    eplb.add_argument("--num-nodes", type=int, default=None, metavar="N", help="nodes (a divisor of the devices)")
    p.add_argument("--solver", choices=SOLVERS, default="greedy-placement")
    p.add_argument("--expert-gb", type=float, default=None, metavar="GB",
                   help="memory of one expert replica; with memory_gb in the device file, memory is checked")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", choices=FORMATS, default="moeplan",
                   help="what -o writes: moeplan (the --json object) or sglang (physical_to_logical_map for "
                        "SGLang's --init-expert-location)")
    p.add_argument("-o", "--output", metavar="FILE", help="write the placement here, in --format")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(func=cmd_place)


def _eplb_options(args, experts: int, devices: int) -> dict:
    """``num_groups`` and ``num_nodes`` for the eplb solver, checked the way EPLB asserts them."""
    given = {k: v for k, v in (("num_groups", args.num_groups), ("num_nodes", args.num_nodes)) if v is not None}
    if given and args.solver != "eplb":
        option = "--" + next(iter(given)).replace("_", "-")
        raise option_error(option, f"selects EPLB's hierarchical policy: add --solver eplb (the solver is {args.solver})")
    groups, nodes = given.get("num_groups", 1), given.get("num_nodes", 1)
    for option, value, total, what in (("--num-groups", groups, experts, "experts"), ("--num-nodes", nodes, devices, "devices")):
        if value < 1 or total % value:
            raise option_error(option, f"must be a divisor of the {total} {what}, got {value}")
    if groups % nodes:
        log(f"note: {groups} groups do not split over {nodes} nodes; EPLB then uses its global policy, as here")
    return given


def cmd_place(args) -> int:
    if args.output:
        if args.format == "sglang" and not args.output.endswith(".json"):
            raise InputError(Problem(args.output, "--output", "SGLang reads --init-expert-location as a file only when "
                                                              "its name ends in .json"))
        check_writable(args.output, what="the placement", option="--output")
    elif args.format != "moeplan":
        raise option_error("--format", f"{args.format} is a file format: give -o FILE.json")
    loads = read_loads(args.loads)
    layers, experts = loads.shape
    fleet = read_devices(args.devices, experts, args.replicas, args.expert_gb, physical=args.num_replicas)
    if fleet["memory_ignored"]:
        log("note: memory_gb is not checked without --expert-gb (the memory of one expert replica)")
    B = fleet["speed"].size
    if args.format == "sglang" and len(set(fleet["slots"].tolist())) > 1:
        raise option_error("--format", f"SGLang gives every EP rank the same number of physical experts; the devices "
                                       f"have {fleet['slots'].tolist()} slots")
    options = _eplb_options(args, experts, B)
    problem = ReplicatedAssignment.build(loads, fleet["speed"], slots=fleet["slots"], weight=fleet["expert_bytes"],
                                         capacity=fleet["capacity_bytes"], max_replicas=B,
                                         names={"bins": fleet["names"]})
    result = registry.get(args.solver, problem="assignment").func(problem, seed=args.seed, **options)
    head = {"status": result.status.value, "stop_reason": result.stop_reason, "message": result.message,
            "solver": result.solver, "solve_time_s": result.solve_time_s}
    if result.solution is None:
        if args.json:
            emit_json(head)
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
        "bound": result.bound,
        "gap": result.gap,
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
    if args.output:
        _write(args.output, args.format, out, phy2log, loads, int(problem.slots[0]))
    if args.json:
        emit_json(out)
    else:
        print(_table(out, layers, experts, device_load))
        if args.output:
            print(f"placement written to {args.output} ({args.format})")
    return EXIT_OK


def sglang_map(phy2log: np.ndarray, loads: np.ndarray, per_device: int) -> tuple[np.ndarray, int]:
    """SGLang's ``physical_to_logical_map`` [layers, physical experts] from ``phy2log`` (device-major,
    ``per_device`` slots a device, -1 for an empty slot), and the number of slots filled: SGLang
    needs an expert in every slot, so an empty one gets a copy of the busiest expert (by load per
    replica) already on its device, or, on a device that holds none, of the busiest expert."""
    out = phy2log.copy()
    filled = 0
    for layer, device in zip(*np.nonzero((out.reshape(out.shape[0], -1, per_device) < 0).any(axis=2))):
        slots = out[layer, device * per_device:(device + 1) * per_device]
        counts = np.bincount(out[layer][out[layer] >= 0], minlength=loads.shape[1])
        per_replica = loads[layer] / np.maximum(counts, 1)
        held = slots[slots >= 0]
        candidates = held if held.size else np.arange(loads.shape[1])
        slots[slots < 0] = candidates[np.argmax(per_replica[candidates])]
        filled += int(np.sum(phy2log[layer, device * per_device:(device + 1) * per_device] < 0))
    return out, filled


def _write(path: str, fmt: str, out: dict, phy2log: np.ndarray, loads: np.ndarray, per_device: int) -> None:
    if fmt == "moeplan":
        write_atomic(path, json.dumps(json_safe(out), indent=2) + "\n", what="the placement", option="--output")
        return
    mapping, filled = sglang_map(phy2log, loads, per_device)
    write_atomic(path, json.dumps({"physical_to_logical_map": mapping.tolist()}) + "\n", what="the placement",
                 option="--output")
    experts = loads.shape[1]
    log(f"SGLang: --init-expert-location {path} --ep-num-redundant-experts {mapping.shape[1] - experts} "
        f"with {mapping.shape[1] // per_device} EP ranks")
    if filled:
        log(f"note: {filled} empty slot(s) hold a second copy of an expert already on their device (SGLang fills every slot)")


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
