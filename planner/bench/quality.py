"""Route-aware's quality on every shipped and scale-suite instance: against every other solver and the plan-space bound.

``python -m planner.bench.quality [--time-limit S] [--instances NAME ...] [--out DIR]`` solves each
instance with ``route-aware`` (the default solver), every baseline, ``dp``, ``local-search`` (time
limit 0.1 s, start plan included), ``milp`` and ``cpsat`` (``--time-limit``, default 10 s), and
computes :func:`planner.spaces.bounds.plan_space_bound` (same time limit). One row per instance:
its device count, route-aware's objective and solve time, the best other solver and its objective,
the bound, route-aware's gap to the bound (throughput: ``1 - ra / bound``; latency and energy:
``1 - bound / ra``), and the ratio route-aware / best other (for latency and energy
``best / ra``: above 1 route-aware is better, below 0.99 it is more than 1 % worse).

Writes ``quality.csv`` (one row per instance), ``quality_solvers.csv`` (one row per instance and
solver) and ``quality.md`` (the table, the median gap, the rows more than 1 % below the best other
solver) into ``--out`` (default: a new temporary folder, never the repository), prints the table.
Instances: the shipped ones by file stem (``default``, ``deepseek-v3-mixed-cloud``, ...) and the
scale suite's by name (``olmoe-1b-7b-8dev``, ...); ``--instances`` takes a subset.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from planner import api
from planner.bench.common import MOEPLAN, ROOT, fmt, write_csv
from planner.bench.scale import SCALE_FLEETS, SCALE_MODELS, scale_instance
from planner.cost import report
from planner.cost.costmodel import CostModel
from planner.cost.evaluation import is_better
from planner.domain.instance import Instance
from planner.spaces.bounds import plan_space_bound
from solvers import registry

DEFAULT_TIME_LIMIT_S = 10.0
LOCAL_SEARCH_TIME_LIMIT_S = 0.1
RATIO_FLAG = 0.99  # route-aware more than 1 % below the best other solver
RA_RERUN_TIME_LIMIT_S = 60.0  # route-aware again, where its own time budget (1 s) stopped it
UNITS = {"throughput": "tokens/s", "latency": "ms", "energy": "J/token"}


def shipped_instances() -> dict[str, Callable[[], Instance]]:
    """Every ``instances/*.toml``, by file stem."""
    return {p.stem: (lambda p=p: api.load_instance(p)) for p in sorted((ROOT / "instances").glob("*.toml"))}


def scale_instances() -> dict[str, Callable[[], Instance]]:
    """Every instance of the scale suite, by name (``MODEL-Ndev``)."""
    return {f"{m}-{n}dev": (lambda m=m, n=n: scale_instance(m, n)) for m in SCALE_MODELS for n in SCALE_FLEETS}


def all_instances() -> dict[str, Callable[[], Instance]]:
    return {**shipped_instances(), **scale_instances()}


def other_solvers() -> list[str]:
    """Every registered instance solver but route-aware: baselines, then dp, local-search, milp, cpsat."""
    baselines = registry.available(problem="instance", kind="baseline")
    rest = [s for s in ("dp", "local-search", "milp", "cpsat") if s in registry.available(problem="instance")]
    extra = sorted(set(registry.available(problem="instance")) - set(baselines) - set(rest) - {MOEPLAN})
    return baselines + rest + extra


def gap_to_bound(kind: str, value: float | None, bound: float | None) -> float | None:
    """How far ``value`` is from the bound, as a share of the better of the two (0: on the bound)."""
    if value is None or bound is None or not (math.isfinite(value) and math.isfinite(bound)) or value <= 0:
        return None
    return 1.0 - value / bound if kind == "throughput" else 1.0 - bound / value


def ratio_to(kind: str, value: float | None, other: float | None) -> float | None:
    """route-aware / other (throughput) or other / route-aware (latency, energy): below 1 route-aware is worse."""
    if value is None or other is None or value <= 0 or other <= 0:
        return None
    return value / other if kind == "throughput" else other / value


@dataclass
class Row:
    instance: str
    objective: str
    devices: int
    ra_objective: float | None
    ra_time_s: float
    ra_budget_hit: bool
    ra_rerun_objective: float | None  # with time_limit RA_RERUN_TIME_LIMIT_S, where the budget was hit
    best_other: str | None
    best_other_objective: float | None
    bound: float | None
    bound_time_s: float
    gap: float | None
    ratio: float | None
    wall_time_s: float


def _usable(res) -> float | None:
    if res.solution is None or res.objective is None or not math.isfinite(res.objective):
        return None
    return float(res.objective)


def measure(name: str, inst: Instance, *, time_limit: float, solvers: list[str], seed: int = 0,
            progress: Callable[[str], None] = lambda s: None) -> tuple[Row, list[dict]]:
    """One instance: route-aware, every other solver of ``solvers``, the bound."""
    t_start = time.perf_counter()
    kind = inst.objective
    per_solver = []

    def run(solver: str, limit: float | None):
        t0 = time.perf_counter()
        try:
            res = api.solve(inst, solver, time_limit=limit, seed=seed)
            status, stop, value = res.status.value, res.stop_reason or "", _usable(res)
            message = (res.message or "").replace("\n", " ")[:200]
        except Exception as exc:  # a crash is a finding: record it, keep going
            status, stop, message, value = "crash", "", f"{type(exc).__name__}: {exc}"[:200], None
        wall = time.perf_counter() - t0
        per_solver.append({"instance": name, "solver": solver, "time_limit_s": limit, "status": status,
                           "objective": value, "wall_time_s": wall, "stop_reason": stop, "message": message})
        progress(f"{name}: {solver} {status} {value if value is not None else '-'} in {wall:.2f} s ({stop})")
        return value, wall, stop

    ra, ra_time, stop = run(MOEPLAN, None)
    budget_hit = stop.startswith("time budget")
    rerun = run(MOEPLAN, RA_RERUN_TIME_LIMIT_S)[0] if budget_hit else None
    best, best_value = None, None
    for solver in solvers:
        limit = LOCAL_SEARCH_TIME_LIMIT_S if solver == "local-search" else (
            time_limit if registry.get(solver, problem="instance").kind == "exact" and solver != "dp" else None)
        value = run(solver, limit)[0]
        if value is not None and (best_value is None or is_better(kind, value, best_value)):
            best, best_value = solver, value
    t0 = time.perf_counter()
    b = plan_space_bound(inst, CostModel(inst), time_limit=time_limit)
    bound_time = time.perf_counter() - t0
    bound = None if b is None else b.value
    progress(f"{name}: bound {bound} in {bound_time:.2f} s")
    row = Row(name, kind, len(inst.devices), ra, ra_time, budget_hit, rerun, best, best_value, bound, bound_time,
              gap_to_bound(kind, ra, bound), ratio_to(kind, ra, best_value), time.perf_counter() - t_start)
    return row, per_solver


def markdown(rows: list[Row], time_limit: float) -> str:
    head = ["instance", "objective", "devices", "route-aware", "ra time", "best other", "best other obj",
            "bound", "ra gap to bound", "ra / best other"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([
            r.instance, f"{r.objective} ({UNITS[r.objective]})", str(r.devices), fmt(r.ra_objective, ".4g"),
            fmt(r.ra_time_s * 1e3, ".0f") + " ms" + (f" (budget hit; {fmt(r.ra_rerun_objective, '.4g')} with "
                                                    f"{RA_RERUN_TIME_LIMIT_S:g} s)" if r.ra_budget_hit else ""),
            r.best_other or "-", fmt(r.best_other_objective, ".4g"),
            fmt(r.bound, ".4g"), fmt(None if r.gap is None else 100 * r.gap, ".1f") + ("%" if r.gap is not None else ""),
            fmt(r.ratio, ".3f")]) + " |")
    gaps = [r.gap for r in rows if r.gap is not None]
    flagged = [r for r in rows if r.ratio is not None and r.ratio < RATIO_FLAG]
    no_plan = [r.instance for r in rows if r.ra_objective is None and r.best_other_objective is not None]
    out = [f"Exact solvers and the bound: time limit {time_limit:g} s; local-search: {LOCAL_SEARCH_TIME_LIMIT_S:g} s. "
           "Ratio: route-aware / best other (latency, energy: best other / route-aware); below 1 route-aware is worse.",
           "", *lines, "",
           f"Median gap of route-aware to the bound: {fmt(None if not gaps else 100 * statistics.median(gaps), '.1f')}% "
           f"over {len(gaps)} instances."]
    if flagged:
        out.append(f"Route-aware more than 1 % below the best other solver ({len(flagged)}): "
                   + ", ".join(f"{r.instance} ({r.best_other}, ratio {r.ratio:.3f})" for r in flagged) + ".")
    else:
        out.append("Route-aware is within 1 % of the best other solver everywhere.")
    hit = [r.instance for r in rows if r.ra_budget_hit]
    if hit:
        out.append(f"Route-aware stopped at its time budget (its plan then depends on the machine's speed) on {len(hit)}: "
                   + ", ".join(hit) + f"; the column says what it finds with time_limit {RA_RERUN_TIME_LIMIT_S:g} s.")
    if no_plan:
        out.append("Route-aware found no plan where another solver did: " + ", ".join(no_plan) + ".")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m planner.bench.quality", description=__doc__.split("\n")[0])
    p.add_argument("--time-limit", type=float, default=DEFAULT_TIME_LIMIT_S,
                   help=f"seconds for milp, cpsat and the bound, each (default {DEFAULT_TIME_LIMIT_S:g})")
    p.add_argument("--instances", nargs="+", metavar="NAME", help="a subset: shipped file stems or scale names (MODEL-Ndev)")
    p.add_argument("--solvers", nargs="+", metavar="NAME", help="the other solvers (default: every registered one)")
    p.add_argument("--out", help="output folder (default: a new temporary folder)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not (args.time_limit > 0 and math.isfinite(args.time_limit)):
        p.error(f"--time-limit must be a positive number of seconds, got {args.time_limit}")
    known = all_instances()
    names = args.instances or list(known)
    unknown = [n for n in names if n not in known]
    if unknown:
        p.error(f"unknown instance(s) {', '.join(unknown)}; known: {', '.join(known)}")
    solvers = args.solvers or other_solvers()
    for s in solvers:
        try:
            registry.get(s, problem="instance")
        except (KeyError, ValueError) as exc:
            p.error(str(exc))
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="moeplan-quality-"))
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    def progress(text: str) -> None:
        print(f"[quality {time.perf_counter() - t0:7.1f} s] {text}", file=sys.stderr, flush=True)

    rows, per_solver = [], []
    for name in names:
        row, solved = measure(name, known[name](), time_limit=args.time_limit, solvers=solvers, seed=args.seed,
                              progress=progress)
        rows.append(row)
        per_solver += solved
        # Written after every instance, so that an interrupted run keeps what it measured.
        write_csv(out / "quality.csv", [vars(r) for r in rows])
        write_csv(out / "quality_solvers.csv", per_solver)
        (out / "quality.md").write_text(markdown(rows, args.time_limit))
    table = [[r.instance, str(r.devices), fmt(r.ra_objective, ".4g"), f"{r.best_other or '-'} {fmt(r.best_other_objective, '.4g')}",
              fmt(r.bound, ".4g"), fmt(None if r.gap is None else 100 * r.gap, ".1f"), fmt(r.ratio, ".3f")] for r in rows]
    print(report.table(["instance", "devices", "route-aware", "best other", "bound", "gap %", "ratio"], table))
    print(markdown(rows, args.time_limit).split("\n\n")[-1].strip())
    print(f"wrote {out / 'quality.csv'}, {out / 'quality_solvers.csv'}, {out / 'quality.md'} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
