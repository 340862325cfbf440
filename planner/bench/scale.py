"""Suite ``scale``: solve time and objective of every solver on growing models and fleets."""

from __future__ import annotations

import math
import time

from planner import api
from planner.bench.common import MOEPLAN, ROOT, Clock, Progress, Settings, SuiteOutput, instance_solvers, predicted
from planner.cost import report
from planner.domain.instance import Instance, instance_from_dict
from solvers import registry

SCALE_MODELS = ("switch-base-8", "olmoe-1b-7b", "mixtral-8x7b", "qwen3-30b-a3b", "deepseek-v2-lite", "deepseek-v3")
SCALE_FLEETS = (2, 4, 8, 16, 40)
QUICK_SCALE = (("olmoe-1b-7b", "mixtral-8x7b"), (2, 8))
MILP_TIME_LIMIT_S = 5.0
LNS_MOVES = 200


def scale_instance(model: str, num_devices: int) -> Instance:
    """The instance of :func:`scale_data`, checked."""
    return instance_from_dict(scale_data(model, num_devices), file=f"<scale {model} x {num_devices}>", base_dir=ROOT / "instances")


def scale_data(model: str, num_devices: int) -> dict:
    """The instance file's tables (catalog names only, so it can be written anywhere): ``model``
    from a Jetson AGX Orin (end) with ``num_devices - 1`` more: about a fifth L40S at an edge site
    (1 Gbit/s, 5 ms from the end device), the rest H100 in a cloud region (Wi-Fi 100 Mbit/s, 25 ms
    from the end device; 10 Gbit/s, 15 ms from the edge site)."""
    if num_devices < 2:
        raise ValueError(f"a scale fleet has at least 2 devices, got {num_devices}")
    edge = 0 if num_devices < 4 else max(1, round((num_devices - 1) / 5))
    cloud = num_devices - 1 - edge
    devices = [{"name": "orin", "catalog": "jetson-agx-orin-64gb"}]
    links = []

    def group(name, card, count, gbps):
        entry = {"name": name, "catalog": card}
        if count > 1:
            entry.update(count=count, interconnect_gb_per_s=gbps, interconnect_rtt_ms=0.01)
        return entry

    if edge:
        devices.append(group("l40s", "l40s", edge, 32.0))  # PCIe Gen4 x16 between the edge site's GPUs
        links.append({"a": "orin", "b": "l40s", "bandwidth_mbps": 1000, "rtt_ms": 5})
        links.append({"a": "l40s", "b": "h100", "bandwidth_gbps": 10, "rtt_ms": 15})
    devices.append(group("h100", "h100-sxm", cloud, 450.0))  # NVLink (aiconfigurator)
    links.append({"a": "orin", "b": "h100", "bandwidth_mbps": 100, "rtt_ms": 25})
    return {"name": f"{model}-{num_devices}dev", "objective": "throughput", "model": {"catalog": model},
            "devices": devices, "links": links,
            "workload": {"origin": "orin", "arrival_rate_per_s": 1.0, "prompt_tokens": 512, "output_tokens": 128,
                         "max_batch": 16, "popularity": {"kind": "zipf", "zipf_exponent": 1.0}}}


def scale_size(instance: Instance) -> int:
    """Layers x routed experts (1 for a dense model) x devices."""
    m = instance.model
    return m.num_layers * max(1, m.num_experts) * len(instance.devices)


def run_scale(settings: Settings, progress: Progress) -> SuiteOutput:
    """Solve time and objective of every solver on growing models and fleets."""
    clock = Clock("scale", progress)
    models, fleets = QUICK_SCALE if settings.quick else (SCALE_MODELS, SCALE_FLEETS)
    solvers = [MOEPLAN, "dp", "local-search"] + instance_solvers()[1:] + ([] if settings.quick else ["milp"])
    rows = []
    for model in models:
        for n in fleets:
            inst = scale_instance(model, n)
            base = {"suite": "scale", "instance": inst.name, "model": model, "devices": len(inst.devices),
                    "layers": inst.model.num_layers, "experts": inst.model.num_experts, "size": scale_size(inst),
                    "weights_gb": inst.model.total_params * inst.model.dtype_bytes / 1e9,
                    "fleet_memory_gb": inst.total_memory_bytes / 1e9}
            for solver in solvers:
                options = {"max_moves": LNS_MOVES} if solver == "local-search" else {}
                limit = MILP_TIME_LIMIT_S if solver == "milp" else None
                t0 = time.perf_counter()
                res = api.solve(inst, solver, time_limit=limit, seed=settings.seed, **options)
                wall = time.perf_counter() - t0
                rows.append({**base, "solver": solver, "kind": registry.get(solver, problem="instance").kind,
                             "time_limit_s": limit, "wall_time_s": wall, **predicted(res),
                             "bound": res.bound, "gap": res.gap})
                clock.say(f"{inst.name} ({base['size']:,} layer-expert-devices): {solver} {res.status.value} in {wall:.2f} s")
    return SuiteOutput("scale", rows, scale_table(rows, solvers), figures={"solvers": solvers})


def scale_table(rows: list[dict], solvers: list[str]) -> str:
    """Per instance: each solver's objective (tokens/s) and wall time; '-' where it found no plan."""
    by_inst: dict[str, dict[str, dict]] = {}
    for r in rows:
        by_inst.setdefault(r["instance"], {})[r["solver"]] = r
    out = []
    for name, per in by_inst.items():
        first = per[solvers[0]]
        cells = [name, f"{first['size']:,}"]
        for s in solvers:
            r = per[s]
            cells.append("-" if r["objective_value"] is None or not math.isfinite(r["objective_value"])
                         else f"{r['objective_value']:.0f} ({r['wall_time_s']:.2f} s)")
        # No solver can plan when the capacity check fails: say why once.
        cells.append(f"weights {first['weights_gb']:.0f} GB > fleet memory {first['fleet_memory_gb']:.0f} GB"
                     if first["stop_reason"] == "capacity check" else "")
        out.append(cells)
    return ("tokens/s (wall time) per solver; '-': no plan (scale.csv has each reason)\n"
            + report.table(["instance", "size", *solvers, "note"], out))
