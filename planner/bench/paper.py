"""Suite ``paper``: EC2MoE-style end-cloud scenarios (``instances/bench/paper/*.toml``), moeplan's plan
against every baseline, predicted by the cost model and simulated on the same requests."""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from planner import api
from planner.bench.common import (
    MOEPLAN,
    ROOT,
    Clock,
    Progress,
    Settings,
    SuiteOutput,
    fmt,
    geomean,
    instance_solvers,
    measured,
    origin_links,
    predicted,
    request_latency_ms,
    requests_for,
    simulate,
)
from planner.bench.inputs import BandwidthSeries, cellular_series
from planner.cost import report
from planner.domain.accuracy_table import read_accuracy_table
from planner.domain.instance import GroupGateLoss, Instance
from planner.domain.plan import Plan
from solvers import registry

PAPER_DIR = ROOT / "instances" / "bench" / "paper"
# Paper scenarios whose end-cloud link follows a measured cellular series (trace names of bench_inputs.CELLULAR).
PAPER_SERIES = {
    "mixtral-orin-h100-cellular": "TMobile-LTE-short.up",
    "olmoe-laptop-h100-cellular": "TMobile-LTE-short.up",
    "dsv2lite-m2-a100-cellular": "Verizon-LTE-short.up",
}
QUICK_PAPER = ("dsv2lite-phone-l4-lte", "olmoe-laptop-h100-cellular")
GANTT_SCENARIO = "dsv2lite-phone-l4-lte"  # moeplan's plan there: two stages, a codec at the cut, two micro-batches
GANTT_REQUESTS = 8
ARRIVALS = "Azure LLM conv 2023 excerpt, rescaled to the rate and mean token counts"
# moeplan also plans each scenario with the group gate available (EC2MoE's local expert selection;
# not to the baselines, as in EC2MoE), priced by the reference model's measured table: the loss of
# every MoE layer gated at a coverage, shared out per gated layer (GroupGateLoss). A small model's
# figures stand in for the scenario's model: an assumption the table's notes state.
GATE_TABLE = ROOT / "instances" / "data" / "reference-moe-accuracy.json"
GATED = f"{MOEPLAN} + group gate"
# Saturation runs offer this many times the highest predicted capacity (requests/s) of the scenario's plans.
SATURATION_FACTOR = 4.0


def paper_files(quick: bool) -> list[Path]:
    files = sorted(PAPER_DIR.glob("*.toml"))
    if not files:
        raise FileNotFoundError(f"no scenario files in {PAPER_DIR}")
    return [f for f in files if f.stem in QUICK_PAPER] if quick else files


def network_of(instance: Instance, series: BandwidthSeries | None) -> str:
    if series is not None:
        return f"cellular series {series.trace} ({series.source})"
    link = origin_links(instance)[0]
    return f"{link.bandwidth_bytes_per_s * 8 / 1e6:g} Mbit/s, {link.rtt_s * 1e3:g} ms"


@functools.cache
def _gate_loss(table_path: Path) -> GroupGateLoss:
    """The all-layers group-gate points of the measured table at ``table_path`` (read once)."""
    table = read_accuracy_table(table_path)
    every = max((p.layers for p in table.group_gate), key=len)
    points = sorted((p.coverage, p.loss) for p in table.group_gate if p.method == "group_gate" and p.layers == every)
    return GroupGateLoss(tuple(c for c, _ in points), tuple(v for _, v in points))


def with_group_gate(instance: Instance, table_path: Path = GATE_TABLE) -> Instance:
    """``instance`` with the group gate priced: its own loss points where it has them, else the
    all-layers group-gate points of the measured table at ``table_path`` (loss = 1 - top-1 agreement)."""
    if instance.constraints.group_gate_loss.known:
        return instance
    return replace(instance, constraints=replace(instance.constraints, group_gate_loss=_gate_loss(table_path)))


def run_paper(settings: Settings, progress: Progress) -> SuiteOutput:
    """End-cloud scenarios: moeplan against every baseline, predicted and simulated."""
    clock = Clock("paper", progress)
    solvers = instance_solvers()
    files = paper_files(settings.quick)
    rows: list[dict] = []
    scenarios: list[dict] = []
    cdf: dict[str, dict[str, np.ndarray]] = {}
    gantt = None
    for i, path in enumerate(files, start=1):
        inst = api.load_instance(path)
        name = inst.name
        series = cellular_series(PAPER_SERIES[name], seed=settings.seed) if name in PAPER_SERIES else None
        origin = inst.device(inst.workload.origin)
        partner = next(d for d in inst.devices if d.name != origin.name)
        base = {"suite": "paper", "scenario": name, "model": inst.model.name, "end_device": origin.kind,
                "cloud_device": partner.kind, "network": network_of(inst, series), "objective": inst.objective}
        plans: dict[str, tuple[Plan, dict, Instance]] = {}
        gated = with_group_gate(inst)
        for solver, where in [*((s, inst) for s in solvers), (GATED, gated)]:
            res = api.solve(where, MOEPLAN if solver == GATED else solver, seed=settings.seed)
            kind = registry.get(MOEPLAN if solver == GATED else solver, problem="instance").kind
            head = {**base, "solver": solver, "kind": kind, **predicted(res),
                    "pred_accuracy_loss": res.solution.metrics.get("accuracy_loss") if res.solution is not None else None,
                    "group_gates": sum(len(p.group_gate) for p in res.solution.pipelines) if res.solution is not None else 0}
            if res.solution is None:
                rows.append({**head, "run": "none"})
                clock.say(f"{i}/{len(files)} {name}: {solver} {res.status.value} in {res.solve_time_s:.2f} s (no plan: not simulated)")
                continue
            plans[solver] = (res.solution, head, where)
            clock.say(f"{i}/{len(files)} {name}: {solver} solved in {res.solve_time_s:.2f} s")
        figures = {"sat": {}, "slo": {}, "latency_p50": {}, "gated": {}}
        about = {"scenario": name, "objective": inst.objective, "slo_ms": slo_ms(inst),
                 "accuracy_budget": inst.constraints.accuracy_loss_budget}
        if not plans:
            scenarios.append({**about, **figures})
            continue
        capacity = max(h["pred_requests_per_s"] for _, h, _ in plans.values())
        runs = {"load": requests_for(inst, settings.load_requests, inst.workload.arrival_rate_per_s, settings.seed),
                "saturation": requests_for(inst, settings.saturation_requests, SATURATION_FACTOR * capacity, settings.seed)}
        done: dict[tuple, object] = {}  # (pipelines, run) -> simulation: solvers often return the same plan
        for solver, (plan, head, where) in plans.items():
            t0 = time.perf_counter()
            for run, trace in runs.items():
                res = done.get((plan.pipelines, run))
                if res is None:
                    res = done[(plan.pipelines, run)] = simulate(where, plan, trace, seed=settings.seed, series=series)
                row = {**head, "run": run, "arrivals": ARRIVALS, "requests": len(trace.arrival_s),
                       "rate_per_s": trace.rate_per_s, **measured(res)}
                rows.append(row)
                if solver == GATED:  # kept apart: the plots and the baselines' comparison are moeplan's without it
                    figures["gated"]["sat" if run == "saturation" else "latency_p50"] = (
                        row["sim_throughput_tokens_per_s"] if run == "saturation" else row["sim_latency_p50_ms"])
                    figures["gated"]["accuracy_loss"] = head["pred_accuracy_loss"]
                    figures["gated"]["group_gates"] = head["group_gates"]
                elif run == "saturation":
                    figures["sat"][solver] = row["sim_throughput_tokens_per_s"]
                else:
                    figures["latency_p50"][solver] = row["sim_latency_p50_ms"]
                    figures["slo"][solver] = row["sim_slo_attainment"]
                    cdf.setdefault(name, {})[solver] = request_latency_ms(res)
                    if solver == MOEPLAN:
                        figures["accuracy_loss"] = head["pred_accuracy_loss"]
            clock.say(f"{i}/{len(files)} {name}: {solver} simulated (2 runs) in {time.perf_counter() - t0:.2f} s")
        if name == GANTT_SCENARIO and MOEPLAN in plans:
            few = requests_for(inst, GANTT_REQUESTS, SATURATION_FACTOR * capacity, settings.seed)
            gantt = {"scenario": name, "plan": readable_plan(plans[MOEPLAN][0]),
                     "timeline": simulate(inst, plans[MOEPLAN][0], few, seed=settings.seed, timeline=True).timeline}
        scenarios.append({**about, **figures})
    table, notes = paper_table(scenarios)
    return SuiteOutput("paper", rows, table, notes, {"scenarios": scenarios, "cdf": cdf, "gantt": gantt})


def readable_plan(plan: Plan) -> str:
    """A plan in words for a plot title: "phone layers 0-6 -> codec rank 256 -> l4 layers 7-26,
    micro-batches 4 x 2" (pipelines joined by " + ")."""
    parts = []
    for pipe in plan.pipelines:
        text = ""
        for si, st in enumerate(pipe.stages):
            if si:
                rank = pipe.codec_ranks[si - 1] if si - 1 < len(pipe.codec_ranks) else None
                text += " -> uncompressed -> " if rank is None else f" -> codec rank {rank} -> "
            text += f"{st.device} layers {st.first_layer}-{st.end_layer - 1}"
        if pipe.expert_placement:
            text += f", {len(pipe.expert_placement)} experts placed elsewhere"
        parts.append(f"{text}, micro-batches {pipe.micro_batch_size} x {pipe.num_micro_batches}")
    return " + ".join(parts)


def slo_ms(instance: Instance) -> dict:
    """The instance's latency SLOs in ms: ``latency``, ``ttft``, ``tpot`` (those it sets) and
    ``mean_output_tokens`` (to bound a mean request's end-to-end latency by TTFT + TPOT SLOs)."""
    c = instance.constraints
    out = {k: v * 1e3 for k, v in (("latency", c.latency_slo_s), ("ttft", c.ttft_slo_s), ("tpot", c.tpot_slo_s)) if v}
    return {**out, "mean_output_tokens": instance.workload.output_tokens}


def best_baseline(values: dict[str, float], better: Callable[[float, float], bool]) -> tuple[str | None, float | None]:
    best, best_v = None, None
    for solver, v in values.items():
        if solver == MOEPLAN or v is None or not math.isfinite(v):
            continue
        if best_v is None or better(v, best_v):
            best, best_v = solver, v
    return best, best_v


def paper_table(scenarios: list[dict]) -> tuple[str, list[str]]:
    """Per scenario: moeplan's simulated throughput over the best baseline's (saturation runs) and
    its p50 latency reduction against the lowest-latency baseline (runs at the scenario's rate);
    then the same two with the group gate available to moeplan, and the accuracy loss each of
    moeplan's plans spends (codecs and group gates, of the scenario's budget)."""
    rows, ratios, reductions, gated_ratios, gated_reductions, gating = [], [], [], [], [], 0
    for s in scenarios:
        sat, lat, slo = s.get("sat", {}), s.get("latency_p50", {}), s.get("slo", {})
        gated = s.get("gated", {})
        mine_t, mine_l = sat.get(MOEPLAN), lat.get(MOEPLAN)
        bt, bt_v = best_baseline(sat, lambda a, b: a > b)
        bl, bl_v = best_baseline(lat, lambda a, b: a < b)
        ratio = mine_t / bt_v if mine_t is not None and bt_v else None
        reduction = 1.0 - mine_l / bl_v if mine_l is not None and bl_v else None
        g_ratio = gated["sat"] / bt_v if gated.get("sat") is not None and bt_v else None
        g_reduction = 1.0 - gated["latency_p50"] / bl_v if gated.get("latency_p50") is not None and bl_v else None
        for value, into in ((ratio, ratios), (reduction, reductions), (g_ratio, gated_ratios), (g_reduction, gated_reductions)):
            if value is not None:
                into.append(value)
        gating += bool(gated.get("group_gates"))
        spent = (f"{fmt(s.get('accuracy_loss'), '.4f')} / {fmt(gated.get('accuracy_loss'), '.4f')}"
                 f" of {fmt(s.get('accuracy_budget'), '.3g')}")
        rows.append([s["scenario"], fmt(mine_t, ".1f"), bt or "-", fmt(bt_v, ".1f"), fmt(ratio, ".2f", "x"),
                     fmt(mine_l, ".0f"), bl or "-", fmt(bl_v, ".0f"), fmt(None if reduction is None else 100 * reduction, "+.1f", " %"),
                     fmt(slo.get(MOEPLAN), ".2f"), fmt(slo.get(bl) if bl else None, ".2f"),
                     fmt(g_ratio, ".2f", "x"), fmt(None if g_reduction is None else 100 * g_reduction, "+.1f", " %"),
                     str(gated.get("group_gates", 0)), spent])
    headers = ["scenario", "moeplan tok/s", "best baseline (tok/s)", "its tok/s", "ratio", "moeplan p50 ms",
               "best baseline (latency)", "its p50 ms", "latency reduction", "moeplan SLO", "its SLO",
               "ratio w/ gate", "reduction w/ gate", "gates", "accuracy loss (no gate / gate) of budget"]
    notes = []
    if ratios:
        notes.append(f"throughput ratio over the best baseline: geometric mean {geomean(ratios):.2f}x, "
                     f"min {min(ratios):.2f}x, max {max(ratios):.2f}x over {len(ratios)} scenarios")
    if reductions:
        notes.append(f"p50 latency reduction against the best baseline: median {100 * float(np.median(reductions)):+.1f} %, "
                     f"min {100 * min(reductions):+.1f} %, max {100 * max(reductions):+.1f} %")
    if gated_ratios:
        notes.append(f"with the group gate available to moeplan (not to the baselines, as in EC2MoE; priced by the "
                     f"reference model's measured table, {GATE_TABLE.name}): throughput ratio geometric mean "
                     f"{geomean(gated_ratios):.2f}x, min {min(gated_ratios):.2f}x, max {max(gated_ratios):.2f}x; "
                     + (f"p50 latency reduction median {100 * float(np.median(gated_reductions)):+.1f} %; " if gated_reductions else "")
                     + f"moeplan's plan gates layers in {gating} of {len(scenarios)} scenarios")
    return report.table(headers, rows), notes
