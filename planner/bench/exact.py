"""Measure the exact solvers, in one run: ``python -m planner.bench.exact [--quick]``.

(a) the joint end-cloud plan of Mixtral-8x7B on one end device plus one cloud device
    (``instances/default.toml`` and ``instances/mixtral-orin-a100-lte.toml``) with ``milp`` and
    ``cpsat`` through :func:`planner.api.solve`;
(b) expert placement of 32 layers x 8 experts on 4 devices of different speed and memory with
    ``milp`` proven optimal: the synthetic instance of :mod:`solvers.bench_assignment`, and Mixtral's
    experts on 4 devices of ``instances/a100-l4-t4-cluster.toml``;
(c) DeepSeek-V3's expert placement (58 MoE layers x 256 experts) on the 32 GPUs of
    ``instances/deepseek-v3-mixed-cloud.toml``: ``greedy-placement``, then ``milp`` under a time limit
    warm-started from it (a restricted problem, see :mod:`planner.spaces.placement`);
(d) route-aware against ``milp`` on every ``instances/*.toml`` but DeepSeek-V3.

Numbers are printed, never asserted (they depend on the machine); progress goes to stderr. It
needs nothing outside the repository and prints, first, the most it can take (every solve run to
its limit): about 33 min, or 11 min with ``--quick`` ((c) under 10 s instead of 60 s, (a) and (d)
under 30 s per solve instead of 120 s).
``--full-milp`` adds the unrestricted DeepSeek-V3 MILP (475,136 replica variables) to (c), to
measure its formulation time and memory: minutes and gigabytes.
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
import time
from pathlib import Path

from models.assignment import bin_loads, violations
from planner import api
from planner.planners.placement import solve_placement
from solvers.bench_assignment import bench_instance
from solvers.placement import mean_balancedness
from solvers.registry import get

ROOT = Path(__file__).resolve().parents[2]
INSTANCES = ROOT / "instances"
JOINT = ("default.toml", "mixtral-orin-a100-lte.toml")


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MB; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def fmt(x, width: int = 14, spec: str = ".6g") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return f"{'-':>{width}}"
    return format(x, spec).rjust(width)


# ----- (a) and (d): joint plans ----------------------------------------------------------------


def joint_runs(files: list[str], solvers: list[str], time_limit: float, cache: dict) -> None:
    for file in files:
        inst = api.load_instance(INSTANCES / file)
        for name in solvers:
            if (file, name) in cache:
                continue
            log(f"  {file}: {name} (time limit {time_limit:g}s) ...")
            t = time.perf_counter()
            result = api.solve(inst, name, time_limit=time_limit)
            cache[(file, name)] = (result, time.perf_counter() - t, inst.objective)
            log(f"  {file}: {name} {result.status.value} in {time.perf_counter() - t:.1f}s")


def part_a(time_limit: float, cache: dict) -> None:
    log("(a) joint plans of Mixtral-8x7B, end + cloud device")
    joint_runs(list(JOINT), ["milp", "cpsat"], time_limit, cache)
    print("\n(a) Joint end-cloud plan, Mixtral-8x7B on Jetson AGX Orin + A100 (planner.api.solve)")
    print(f"{'instance':28} {'solver':6} {'status':11} {'objective':>14} {'bound':>14} {'gap':>10} {'time_s':>8}  objective")
    for file in JOINT:
        for name in ("milp", "cpsat"):
            r, wall, kind = cache[(file, name)]
            print(f"{file:28} {name:6} {r.status.value:11} {fmt(r.objective)} {fmt(r.bound)} {fmt(r.gap, 10, '.2e')} "
                  f"{wall:8.2f}  {kind}")


def part_d(time_limit: float, cache: dict) -> None:
    files = sorted(p.name for p in INSTANCES.glob("*.toml") if "deepseek-v3" not in p.name)
    log(f"(d) route-aware vs milp on {len(files)} instances (milp time limit {time_limit:g}s each)")
    joint_runs(files, ["route-aware"], time_limit, cache)
    # (a) ran milp on two of them under its own limit: reuse those runs when the limit is the same.
    joint_runs(files, ["milp"], time_limit, cache)
    print(f"\n(d) Route-aware vs milp (joint plan; milp time limit {time_limit:g}s per instance; DeepSeek-V3 skipped)")
    print("    ra_vs_bound: (milp bound - route-aware) / route-aware, signed so that > 0 means route-aware is below")
    print("    the best possible plan of milp's space (one cut between the origin and one partner); < 0 means it")
    print("    beats that space. 'finished' = milp proved its optimum within the limit.")
    print(f"{'instance':42} {'sense':5} {'route-aware':>12} {'milp':>12} {'milp_bound':>12} {'milp_gap':>9} "
          f"{'ra_vs_bound':>11} {'milp_s':>7} finished")
    for file in files:
        ra, _, kind = cache[(file, "route-aware")]
        mi, wall, _ = cache[(file, "milp")]
        sense = "max" if kind == "throughput" else "min"
        finished = mi.status.value == "optimal"
        rel = math.nan
        if not math.isnan(mi.bound) and not math.isnan(ra.objective):
            rel = (mi.bound - ra.objective) / abs(ra.objective) * (1 if sense == "max" else -1)
            rel = 0.0 if abs(rel) < 1e-9 else rel  # round-off of equal values
        print(f"{file:42} {sense:5} {fmt(ra.objective, 12)} {fmt(mi.objective, 12)} {fmt(mi.bound, 12)} "
              f"{fmt(mi.gap, 9, '.1e')} {fmt(rel, 11, '+.2%')} {wall:7.1f} {'yes' if finished else 'NO (' + mi.status.value + ')'}")


# ----- (b): exact placement on 4 devices ------------------------------------------------------


def part_b(time_limit: float) -> None:
    print("\n(b) Expert placement, 32 layers x 8 experts on 4 devices, milp to proven optimality")
    print(f"{'problem':64} {'status':9} {'objective':>12} {'bound':>12} {'gap':>9} {'time_s':>7}")
    log("(b) synthetic 32 x 8 x 4 (solvers.bench_assignment) ...")
    problem = bench_instance(0, candidates=2)
    r = get("milp", problem="assignment").func(problem, time_limit=time_limit)
    assert r.solution is None or not violations(problem, r.solution)
    print(f"{'synthetic: speeds 1/1.5/2.5/4, memory 40-300 replicas':64} {r.status.value:9} {fmt(r.objective, 12)} "
          f"{fmt(r.bound, 12)} {fmt(r.gap, 9, '.1e')} {r.solve_time_s:7.2f}")
    log("(b) Mixtral-8x7B on a100, l4-0, t4-0, t4-1 ...")
    inst = api.load_instance(INSTANCES / "a100-l4-t4-cluster.toml")
    devices = ["a100", "l4-0", "t4-0", "t4-1"]
    r = solve_placement(inst, "milp", devices=devices, time_limit=time_limit, warm_start_solver="local-search-placement")
    p = r.extra["problem"]
    label = "Mixtral a100-l4-t4-cluster: " + ", ".join(f"{d} {s:.3g}" for d, s in zip(devices, p.speed))
    print(f"{label:64} {r.status.value:9} {fmt(r.objective, 12)} {fmt(r.bound, 12)} {fmt(r.gap, 9, '.1e')} "
          f"{r.solve_time_s:7.2f}")
    print(f"    (Mixtral: speeds as listed, capacity {', '.join(f'{c / 1e9:.1f}' for c in p.capacity)} GB, "
          f"slots {p.slots.tolist()}, warm start local-search {r.extra.get('warm_start_objective', math.nan):.6g})")


# ----- (c): DeepSeek-V3 ------------------------------------------------------------------------


def part_c(time_limit: float, full_milp: bool) -> None:
    log("(c) DeepSeek-V3 on 16 H100 + 16 L40S ...")
    inst = api.load_instance(INSTANCES / "deepseek-v3-mixed-cloud.toml")
    greedy = solve_placement(inst, "greedy-placement")
    p = greedy.extra["problem"]
    G, I, B = p.shape
    print(f"\n(c) DeepSeek-V3 expert placement: {G} MoE layers x {I} experts x {B} GPUs "
          f"({G * I * B} replica variables in the full MILP)")
    print(f"    speeds: h100 {p.speed[0]:.3g}, l40s {p.speed[-1]:.3g}; slots per layer: h100 {p.slots[0]}, "
          f"l40s {p.slots[-1]}; expert capacity: h100 {p.capacity[0] / 1e9:.1f} GB, l40s {p.capacity[-1] / 1e9:.1f} GB; "
          f"lower bound of the full problem {greedy.extra['full_bound']:.6g}")
    print(f"{'run':44} {'status':10} {'objective':>11} {'bound':>11} {'gap':>8} {'full_gap':>8} {'time_s':>7} "
          f"{'build_s':>7} {'rss_MB':>7}")
    print(f"{'greedy-placement':44} {greedy.status.value:10} {fmt(greedy.objective, 11)} {fmt(greedy.bound, 11)} "
          f"{fmt(greedy.gap, 8, '.2%')} {fmt(greedy.extra['full_gap'], 8, '.2%')} {greedy.solve_time_s:7.2f} "
          f"{'-':>7} {peak_rss_mb():7.0f}")
    balanced = {"greedy-placement": mean_balancedness(bin_loads(p, greedy.solution))}

    runs = [("milp, restricted, layers apart", {})]
    if full_milp:
        runs.append(("milp, FULL problem (candidates='all')", {"candidates": "all", "decompose": False}))
    for label, opts in runs:
        log(f"(c) {label}, time limit {time_limit:g}s, warm start greedy-placement ...")
        t = time.perf_counter()
        r = solve_placement(inst, "milp", time_limit=time_limit, warm_start_solver="greedy-placement",
                            progress=None, **opts)
        wall = time.perf_counter() - t
        warm = r.extra.get("warm_start_objective", math.nan)
        print(f"{label:44} {r.status.value:10} {fmt(r.objective, 11)} {fmt(r.bound, 11)} {fmt(r.gap, 8, '.2%')} "
              f"{fmt(r.extra.get('full_gap'), 8, '.2%')} {wall:7.2f} {fmt(r.extra.get('build_s'), 7, '.1f')} "
              f"{peak_rss_mb():7.0f}")
        never_worse = r.objective <= warm * (1 + 1e-9)
        print(f"    warm start {warm:.6g} -> {r.objective:.6g} ({(warm - r.objective) / warm:+.1%} better); "
              f"never worse than the warm start: {never_worse}; candidate triples {r.extra['candidate_triples']}; "
              f"layers solved {r.extra.get('layers_solved', '-')}")
        if r.extra.get("restricted"):
            print(f"    bound and gap are of the RESTRICTED problem ({r.extra['restriction']})")
        balanced[label] = mean_balancedness(bin_loads(p, r.solution))
    print("    mean balancedness (per layer mean/max of load/speed): "
          + ", ".join(f"{k} {v:.3f}" for k, v in balanced.items()))


def worst_case_s(parts: str, c_limit: float, d_limit: float) -> float:
    """Seconds the run takes when every solve runs to its time limit: (a) milp and cpsat on the two
    joint instances, (b) two placement MILPs of 120 s, (c) one MILP, (d) milp on each instance."""
    instances = sum(1 for p in INSTANCES.glob("*.toml") if "deepseek-v3" not in p.name)
    per_part = {"a": 2 * len(JOINT) * d_limit, "b": 2 * 120.0, "c": c_limit, "d": instances * d_limit}
    return sum(t for part, t in per_part.items() if part in parts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="(c) 10 s and (d) 30 s per instance")
    parser.add_argument("--time-limit", type=float, default=None, help="(c) milp time limit, s (default 60; 10 with --quick)")
    parser.add_argument("--instance-time-limit", type=float, default=None,
                        help="(a) and (d) time limit per solve, s (default 120; 30 with --quick)")
    parser.add_argument("--full-milp", action="store_true",
                        help="(c) also the unrestricted MILP (formulation takes minutes and GBs)")
    parser.add_argument("--parts", default="abcd", help="which parts to run (default abcd)")
    args = parser.parse_args(argv)
    c_limit = args.time_limit if args.time_limit is not None else (10.0 if args.quick else 60.0)
    d_limit = args.instance_time_limit if args.instance_time_limit is not None else (30.0 if args.quick else 120.0)
    t0 = time.perf_counter()
    cache: dict = {}
    print(f"planner.bench.exact: (c) time limit {c_limit:g}s, (a)/(d) {d_limit:g}s per solve; measured, not asserted")
    print(f"needs only this repository; runs at most {worst_case_s(args.parts, c_limit, d_limit) / 60:.0f} min "
          "(every solve to its limit; most finish sooner)" + (", plus minutes for --full-milp" if args.full_milp else ""))
    if "a" in args.parts:
        part_a(d_limit, cache)
    if "b" in args.parts:
        part_b(120.0)
    if "c" in args.parts:
        part_c(c_limit, args.full_milp)
    if "d" in args.parts:
        part_d(d_limit, cache)
    print(f"\ntotal {time.perf_counter() - t0:.0f}s, peak memory {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
