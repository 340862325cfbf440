"""The suites of ``moeplan bench``: ``paper``, ``scale`` and ``dynamic`` (see ``docs/bench.md``).

Each suite returns a :class:`SuiteOutput`: one row per measurement (written as ``<suite>.csv``), the
table printed at the end, and the data its plots need. Figures are measured in one run and printed,
never asserted. ``quick`` shrinks every suite so that tests run it in seconds.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from planner import api

from planner.cost import report
from planner.solve.baselines import BASELINES
from planner.bench.inputs import BandwidthSeries, azure_requests, cellular_series
from planner.domain.instance import Instance, instance_from_dict
from planner.domain.plan import Plan
from planner.sim import ReplanHook, SimEvent
from planner.sim import simulate as run_simulation
from solvers import registry

ROOT = Path(__file__).resolve().parents[2]
PAPER_DIR = ROOT / "instances" / "bench" / "paper"
DYNAMIC_DIR = ROOT / "instances" / "bench" / "dynamic"
MOEPLAN = api.DEFAULT_SOLVER  # moeplan's plan in every comparison

# Paper scenarios whose end-cloud link follows a measured cellular series (trace names of bench_inputs.CELLULAR).
PAPER_SERIES = {
    "mixtral-orin-h100-cellular": "TMobile-LTE-short.up",
    "olmoe-laptop-h100-cellular": "TMobile-LTE-short.up",
    "dsv2lite-m2-a100-cellular": "Verizon-LTE-short.up",
}
QUICK_PAPER = ("dsv2lite-phone-l4-lte", "olmoe-laptop-h100-cellular")
CDF_SCENARIOS = ("mixtral-orin-h100-cellular", "qwen3-laptop-a100-wifi")
GANTT_SCENARIO = "dsv2lite-phone-l4-lte"  # moeplan's plan there: two stages, a codec at the cut, two micro-batches
GANTT_REQUESTS = 8
ARRIVALS = "Azure LLM conv 2023 excerpt, rescaled to the rate and mean token counts"
# Saturation runs offer this many times the highest predicted capacity (requests/s) of the scenario's plans.
SATURATION_FACTOR = 4.0

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Settings:
    """``quick``: the shrunk suites (a few scenarios and requests, no milp); ``seed``: of solvers,
    request windows, synthetic bandwidth series and the simulator."""

    quick: bool = False
    seed: int = 0

    @property
    def load_requests(self) -> int:
        """Requests of a run at the scenario's own rate (latencies, SLO attainment)."""
        return 40 if self.quick else 600

    @property
    def saturation_requests(self) -> int:
        """Requests of a run above capacity (throughput)."""
        return 40 if self.quick else 300


@dataclass
class SuiteOutput:
    name: str
    rows: list[dict]
    table: str
    notes: list[str] = field(default_factory=list)
    figures: dict = field(default_factory=dict)


def instance_solvers() -> list[str]:
    """moeplan's default solver, then every registered baseline (the built-in ones first)."""
    registered = registry.available(problem="instance", kind="baseline")
    return [MOEPLAN] + [b for b in BASELINES if b in registered] + sorted(set(registered) - set(BASELINES))


class Clock:
    """Elapsed time of a suite, for the progress lines."""

    def __init__(self, suite: str, progress: Progress):
        self.suite, self.progress, self.t0 = suite, progress, time.perf_counter()

    def say(self, text: str) -> None:
        self.progress(f"[{self.suite} {time.perf_counter() - self.t0:7.1f} s] {text}")


# ----- solving and simulating --------------------------------------------------------------------

def predicted(res) -> dict:
    """Solver outcome and the cost model's prediction of its plan, as CSV columns."""
    row = {"status": res.status.value, "stop_reason": res.stop_reason, "solve_time_s": res.solve_time_s,
           "objective_value": res.objective, "message": (res.message or "").replace("\n", " ")[:300]}
    m = res.solution.metrics if res.solution is not None else {}
    for key in ("throughput_tokens_per_s", "requests_per_s", "latency_ms", "ttft_ms", "tpot_ms"):
        row[f"pred_{key}"] = m.get(key)
    row["plan"] = "" if res.solution is None else plan_summary(res.solution)
    return row


def plan_summary(plan: Plan) -> str:
    """One line per plan: stages as device[first, end) joined by the cut's codec rank ('|' when
    uncompressed), remote experts, micro-batching; pipelines separated by ' + '."""
    parts = []
    for pipe in plan.pipelines:
        text = ""
        for si, st in enumerate(pipe.stages):
            if si:
                rank = pipe.codec_ranks[si - 1] if si - 1 < len(pipe.codec_ranks) else None
                text += " |" if rank is None else f" -r{rank}-"
                text += " "
            text += f"{st.device}[{st.first_layer},{st.end_layer})"
        if pipe.expert_placement:
            text += f" +{len(pipe.expert_placement)} placed experts"
        parts.append(f"{text} b{pipe.micro_batch_size}x{pipe.num_micro_batches}")
    return " + ".join(parts)


def origin_links(instance: Instance) -> list:
    """The links of the origin device (its uplink to the rest of the fleet), in file order."""
    origin = instance.workload.origin
    return [l for l in instance.links if origin in (l.a, l.b)]


def link_series(instance: Instance, series: BandwidthSeries | None) -> dict | None:
    """The series on every link of the origin device, bytes/s."""
    if series is None:
        return None
    return {(l.a, l.b): series.bytes_per_s for l in origin_links(instance)}


def simulate(instance: Instance, plan: Plan, trace, *, seed: int, series: BandwidthSeries | None = None,
             events=(), replan=None, timeline: bool = False):
    """One simulator run of ``plan`` (:func:`planner.sim.engine.simulate`); returns its result."""
    return run_simulation(instance, plan, trace=trace, bandwidth_series=link_series(instance, series), events=tuple(events),
               replan=replan, seed=seed, record_timeline=timeline)


def measured(res) -> dict:
    """The simulator's metrics of one run, as CSV columns."""
    m = res.metrics()
    row = {f"sim_{k}": m.get(k) for k in ("throughput_tokens_per_s", "requests_per_s", "requests_total",
                                           "requests_finished", "requests_dropped", "requests_retried",
                                           "slo_attainment", "replans", "migration_bytes", "sim_time_s", "wall_time_s")}
    row["sim_drop_reasons"] = "; ".join(f"{k}: {v}" for k, v in sorted((m.get("drop_reasons") or {}).items()))
    for key in ("ttft_ms", "tpot_ms", "latency_ms"):
        for q in ("mean", "p50", "p95", "p99"):
            row[f"sim_{key[:-3]}_{q}_ms"] = (m.get(key) or {}).get(q)
    return row


def served_accuracy_loss(res, instance: Instance) -> float | None:
    """Mean codec accuracy loss of the finished requests: the losses of the codec ranks along the
    pipeline that served each (None when none finished)."""
    done = np.flatnonzero(res.finished & (res.plan_index >= 0))
    if done.size == 0:
        return None
    codec = instance.constraints.codec
    loss = [[sum(codec.loss(r) for r in pipe.codec_ranks if r is not None) for pipe in plan.pipelines] for plan in res.plans]
    return float(np.mean([loss[res.plan_index[i]][res.pipeline[i]] for i in done]))


def request_latency_ms(res) -> np.ndarray:
    """End-to-end latency of every finished request, ms, sorted."""
    return np.sort(res.latency_s[res.finished] * 1e3)


def requests_for(instance: Instance, n: int, rate_per_s: float, seed: int):
    """``n`` requests of the Azure excerpt at ``rate_per_s`` with the instance's mean token counts."""
    w = instance.workload
    return azure_requests(n, rate_per_s, w.prompt_tokens, w.output_tokens, seed=seed)


# ----- paper ------------------------------------------------------------------------------------

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
        plans: dict[str, tuple[Plan, dict]] = {}
        for solver in solvers:
            res = api.solve(inst, solver, seed=settings.seed)
            head = {**base, "solver": solver, "kind": registry.get(solver, problem="instance").kind, **predicted(res)}
            if res.solution is None:
                rows.append({**head, "run": "none"})
                clock.say(f"{i}/{len(files)} {name}: {solver} {res.status.value} in {res.solve_time_s:.2f} s (no plan: not simulated)")
                continue
            plans[solver] = (res.solution, head)
            clock.say(f"{i}/{len(files)} {name}: {solver} solved in {res.solve_time_s:.2f} s")
        figures = {"sat": {}, "slo": {}, "latency_p50": {}}
        if not plans:
            scenarios.append({"scenario": name, **figures})
            continue
        capacity = max(h["pred_requests_per_s"] for _, h in plans.values())
        runs = {"load": requests_for(inst, settings.load_requests, inst.workload.arrival_rate_per_s, settings.seed),
                "saturation": requests_for(inst, settings.saturation_requests, SATURATION_FACTOR * capacity, settings.seed)}
        done: dict[tuple, object] = {}  # (pipelines, run) -> simulation: solvers often return the same plan
        for solver, (plan, head) in plans.items():
            t0 = time.perf_counter()
            for run, trace in runs.items():
                res = done.get((plan.pipelines, run))
                if res is None:
                    res = done[(plan.pipelines, run)] = simulate(inst, plan, trace, seed=settings.seed, series=series)
                row = {**head, "run": run, "arrivals": ARRIVALS, "requests": len(trace.arrival_s),
                       "rate_per_s": trace.rate_per_s, **measured(res)}
                rows.append(row)
                if run == "saturation":
                    figures["sat"][solver] = row["sim_throughput_tokens_per_s"]
                else:
                    figures["latency_p50"][solver] = row["sim_latency_p50_ms"]
                    figures["slo"][solver] = row["sim_slo_attainment"]
                    if name in CDF_SCENARIOS or (settings.quick and i == 1):
                        cdf.setdefault(name, {})[solver] = request_latency_ms(res)
            clock.say(f"{i}/{len(files)} {name}: {solver} simulated (2 runs) in {time.perf_counter() - t0:.2f} s")
        if name == GANTT_SCENARIO and MOEPLAN in plans:
            few = requests_for(inst, GANTT_REQUESTS, SATURATION_FACTOR * capacity, settings.seed)
            gantt = {"scenario": name, "timeline": simulate(inst, plans[MOEPLAN][0], few, seed=settings.seed, timeline=True).timeline}
        scenarios.append({"scenario": name, **figures})
    table, notes = paper_table(scenarios)
    return SuiteOutput("paper", rows, table, notes, {"scenarios": scenarios, "cdf": cdf, "gantt": gantt})


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
    its p50 latency reduction against the lowest-latency baseline (runs at the scenario's rate)."""
    rows, ratios, reductions = [], [], []
    for s in scenarios:
        sat, lat, slo = s.get("sat", {}), s.get("latency_p50", {}), s.get("slo", {})
        mine_t, mine_l = sat.get(MOEPLAN), lat.get(MOEPLAN)
        bt, bt_v = best_baseline(sat, lambda a, b: a > b)
        bl, bl_v = best_baseline(lat, lambda a, b: a < b)
        ratio = mine_t / bt_v if mine_t is not None and bt_v else None
        reduction = 1.0 - mine_l / bl_v if mine_l is not None and bl_v else None
        if ratio is not None:
            ratios.append(ratio)
        if reduction is not None:
            reductions.append(reduction)
        rows.append([s["scenario"], fmt(mine_t, ".1f"), bt or "-", fmt(bt_v, ".1f"), fmt(ratio, ".2f", "x"),
                     fmt(mine_l, ".0f"), bl or "-", fmt(bl_v, ".0f"), fmt(None if reduction is None else 100 * reduction, "+.1f", " %"),
                     fmt(slo.get(MOEPLAN), ".2f"), fmt(slo.get(bl) if bl else None, ".2f")])
    headers = ["scenario", "moeplan tok/s", "best baseline (tok/s)", "its tok/s", "ratio", "moeplan p50 ms",
               "best baseline (latency)", "its p50 ms", "latency reduction", "moeplan SLO", "its SLO"]
    notes = []
    if ratios:
        notes.append(f"throughput ratio over the best baseline: geometric mean {geomean(ratios):.2f}x, "
                     f"min {min(ratios):.2f}x, max {max(ratios):.2f}x over {len(ratios)} scenarios")
    if reductions:
        notes.append(f"p50 latency reduction against the best baseline: median {100 * float(np.median(reductions)):+.1f} %, "
                     f"min {100 * min(reductions):+.1f} %, max {100 * max(reductions):+.1f} %")
    return report.table(headers, rows), notes


def geomean(xs: list[float]) -> float:
    return float(math.exp(sum(math.log(x) for x in xs) / len(xs)))


def fmt(x, spec: str, unit: str = "") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return format(x, spec) + unit


# ----- scale ------------------------------------------------------------------------------------

SCALE_MODELS = ("switch-base-8", "olmoe-1b-7b", "mixtral-8x7b", "qwen3-30b-a3b", "deepseek-v2-lite", "deepseek-v3")
SCALE_FLEETS = (2, 4, 8, 16, 40)
QUICK_SCALE = (("olmoe-1b-7b", "mixtral-8x7b"), (2, 8))
MILP_TIME_LIMIT_S = 5.0
LNS_MOVES = 200


def scale_instance(model: str, num_devices: int) -> Instance:
    """``model`` from a Jetson AGX Orin (end) with ``num_devices - 1`` more: about a fifth L40S at an
    edge site (1 Gbit/s, 5 ms from the end device), the rest H100 in a cloud region (Wi-Fi 100 Mbit/s,
    25 ms from the end device; 10 Gbit/s, 15 ms from the edge site)."""
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
    data = {"name": f"{model}-{num_devices}dev", "objective": "throughput", "model": {"catalog": model},
            "devices": devices, "links": links,
            "workload": {"origin": "orin", "arrival_rate_per_s": 1.0, "prompt_tokens": 512, "output_tokens": 128,
                         "max_batch": 16, "popularity": {"kind": "zipf", "zipf_exponent": 1.0}}}
    return instance_from_dict(data, file=f"<scale {model} x {num_devices}>", base_dir=ROOT / "instances")


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


# ----- dynamic ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class DynamicScenario:
    """A nominal instance and what happens to it while it serves requests.

    ``change``: ``rate`` (the requests between fractions ``start`` and ``end`` of the trace's span
    arrive ``factor`` times faster), ``bandwidth`` (every link x ``factor`` between those fractions
    of the span), ``device_down`` (``target`` lost at ``start``) or ``cellular`` (the origin's links
    follow the series ``target``)."""

    name: str
    file: str
    change: str
    target: str = ""
    factor: float = 1.0
    start: float = 1 / 3
    end: float = 2 / 3


DYNAMIC = (
    DynamicScenario("load spike x3", "paper/qwen3-laptop-a100-wifi.toml", "rate", factor=3.0),
    DynamicScenario("bandwidth drop /4", "paper/mixtral-orin-a100-wifi.toml", "bandwidth", factor=0.25),
    DynamicScenario("device failure", "dynamic/olmoe-laptop-l4-a100-failover.toml", "device_down", target="a100"),
    DynamicScenario("cellular series", "dynamic/mixtral-orin-h100-cellular-slo.toml", "cellular", target="TMobile-LTE-short.up"),
)
QUICK_DYNAMIC = ("bandwidth drop /4", "cellular series")
# Periods of the cellular series the run lasts (the simulator cycles a series past its end).
CELLULAR_CYCLES = 20
# Re-planning calls every this many simulated seconds where the change is a load spike (the
# simulator observes the arrival rate only when it is asked for a plan).
RATE_REPLAN_EVERY_S = 10.0


# Under a cellular series the re-planner sees the harmonic mean bandwidth of this many past seconds:
# requests outlive a second by far, and plans made for a momentary peak (larger codec ranks) then
# meet the troughs that follow. Over seeds 0-3 of the cellular scenario (20 periods each) the mean
# SLO attainment was 0.771 with the bandwidth of the moment, 0.849 with 10 s, 0.814 with 30 s
# (static plan: 0.810).
CELLULAR_WINDOW_S = 10.0


def dynamic_hook(scenario: DynamicScenario, seed: int) -> ReplanHook:
    every = RATE_REPLAN_EVERY_S if scenario.change == "rate" else None
    window = CELLULAR_WINDOW_S if scenario.change == "cellular" else 0.0
    return ReplanHook(every_s=every, seed=seed, bandwidth_window_s=window)


def dynamic_window(scenario: DynamicScenario, horizon_s: float) -> tuple[float, float]:
    """Simulated start and end (s) of the change, for a trace whose arrivals span ``horizon_s``.
    A rate factor compresses the arrivals it covers, so its window is ``factor`` times shorter."""
    t0 = scenario.start * horizon_s
    span = (scenario.end - scenario.start) * horizon_s
    return t0, t0 + (span / scenario.factor if scenario.change == "rate" else span)


def dynamic_events(scenario: DynamicScenario, horizon_s: float) -> list:
    """The scenario's change as simulator events over a run of ``horizon_s`` seconds of arrivals."""
    t0, t1 = dynamic_window(scenario, horizon_s)
    if scenario.change == "rate":
        return [SimEvent(t0, "rate", None, scenario.factor), SimEvent(t1, "rate", None, 1.0)]
    if scenario.change == "bandwidth":
        return [SimEvent(t0, "bandwidth", None, scenario.factor), SimEvent(t1, "bandwidth", None, 1.0)]
    if scenario.change == "device_down":
        return [SimEvent(t0, "device_down", scenario.target)]
    return []


def run_dynamic(settings: Settings, progress: Progress) -> SuiteOutput:
    """The static plan (made once for the nominal instance) against online re-planning, per scenario."""
    clock = Clock("dynamic", progress)
    chosen = [d for d in DYNAMIC if not settings.quick or d.name in QUICK_DYNAMIC]
    rows: list[dict] = []
    bandwidth_plots = []
    for i, sc in enumerate(chosen, start=1):
        inst = api.load_instance(DYNAMIC_DIR.parent / sc.file)
        res = api.solve(inst, MOEPLAN, seed=settings.seed)
        if res.solution is None:
            raise RuntimeError(f"dynamic scenario {sc.name!r}: no nominal plan for {inst.name}: {res.message}")
        plan = res.solution
        rate = inst.workload.arrival_rate_per_s
        series = cellular_series(sc.target, seed=settings.seed) if sc.change == "cellular" else None
        if series is not None:
            n = max(2, round(rate * series.mbps.size * (1 if settings.quick else CELLULAR_CYCLES)))
        else:
            n = settings.load_requests
        trace = requests_for(inst, n, rate, settings.seed)
        horizon = float(trace.arrival_s[-1])
        events = dynamic_events(sc, horizon)
        w0, w1 = dynamic_window(sc, horizon)
        detail = {"rate": f"arrival rate x{sc.factor:g} from {w0:.0f} s to {w1:.0f} s",
                  "bandwidth": f"every link x{sc.factor:g} from {w0:.0f} s to {w1:.0f} s",
                  "device_down": f"{sc.target} lost at {w0:.0f} s",
                  "cellular": "" if series is None else f"{series.trace}, {series.source}"}[sc.change]
        base = {"suite": "dynamic", "scenario": sc.name, "instance": inst.name, "change": detail,
                "requests": len(trace.arrival_s), "rate_per_s": rate, "solve_time_s": res.solve_time_s}
        modes = [("static", series, None), ("replan", series, dynamic_hook(sc, settings.seed))]
        if series is not None:
            modes.insert(0, ("static, nominal bandwidth", None, None))  # the fairness check: the SLO is met here
        sims = {}
        for mode, s, hook in modes:
            t0 = time.perf_counter()
            sim = simulate(inst, plan, trace, seed=settings.seed, series=s, events=events, replan=hook)
            sims[mode] = sim
            row = {**base, "mode": mode, **measured(sim), "replan_calls": len(sim.replan_log),
                   "sim_accuracy_loss_mean": served_accuracy_loss(sim, inst)}
            rows.append(row)
            clock.say(f"{i}/{len(chosen)} {sc.name} ({inst.name}): {mode} simulated in {time.perf_counter() - t0:.2f} s, "
                      f"SLO attainment {fmt(row['sim_slo_attainment'], '.3f')}")
        if sc.change in ("bandwidth", "cellular"):
            rp = sims["replan"]
            bandwidth_plots.append(bandwidth_figure(sc, inst, series, events, rp.replan_log, rows[-1]["sim_sim_time_s"],
                                                    rp.plans))
    return SuiteOutput("dynamic", rows, *dynamic_table(rows), figures={"bandwidth": bandwidth_plots})


# The cellular timeline shows this many periods of the series (the run has CELLULAR_CYCLES).
CELLULAR_PLOT_CYCLES = 2


def bandwidth_figure(sc: DynamicScenario, inst: Instance, series: BandwidthSeries | None, events: list,
                     replan_log: list[dict], sim_time_s: float, plans: list[Plan]) -> dict:
    """Data of the bandwidth timeline plot: the origin's link bandwidth per second (Mbit/s), the
    nominal figure, the instants the re-planner applied a new plan or kept the old one, and (when
    the plans have codec ranks) the rank of the first pipeline's first ranked cut from the moment
    each plan took effect. A cellular series is shown for its first periods only."""
    link = origin_links(inst)[0]
    nominal = link.bandwidth_bytes_per_s * 8 / 1e6
    seconds = max(1, math.ceil(sim_time_s))
    if series is not None:
        mbps = np.resize(series.mbps, seconds)
        label = f"{series.trace} ({series.source})"
    else:
        mbps = np.full(seconds, nominal)
        for ev in events:
            mbps[int(ev.time_s):] = nominal * ev.value
        label = f"link {link.a}<->{link.b}"
    applied = [e for e in replan_log if e["outcome"] == "applied"]
    ranks = [next((r for r in p.pipelines[0].codec_ranks if r is not None), None) for p in plans]
    rank_steps = []
    if any(r is not None for r in ranks) and len(ranks) == len(applied) + 1:
        rank_steps = [(0.0, ranks[0])] + [(e["effective_s"], r) for e, r in zip(applied, ranks[1:])]
    show = mbps.size if series is None else min(mbps.size, CELLULAR_PLOT_CYCLES * series.mbps.size)
    if show < mbps.size:
        label += f"; first {show} s of {mbps.size} s"
    return {"slug": re.sub(r"[^a-z0-9]+", "-", sc.name.lower()).strip("-"),
            "title": f"Dynamic suite, {sc.name}: {inst.name}\n{label}", "mbps": mbps[:show], "nominal_mbps": nominal,
            "applied_s": [e["time_s"] for e in applied if e["time_s"] < show],
            "kept_s": [e["time_s"] for e in replan_log if e["outcome"] != "applied" and e["time_s"] < show],
            "rank_steps": [(t, r) for t, r in rank_steps if t < show]}


def dynamic_table(rows: list[dict]) -> tuple[str, list[str]]:
    """Per scenario: SLO attainment, throughput and p95 latency of the static plan and of re-planning."""
    out, notes = [], []
    for name in dict.fromkeys(r["scenario"] for r in rows):
        per = {r["mode"]: r for r in rows if r["scenario"] == name}
        st, rp = per["static"], per["replan"]
        out.append([name, st["change"], fmt(st["sim_slo_attainment"], ".3f"), fmt(rp["sim_slo_attainment"], ".3f"),
                    fmt(st["sim_throughput_tokens_per_s"], ".1f"), fmt(rp["sim_throughput_tokens_per_s"], ".1f"),
                    fmt(st["sim_latency_p95_ms"], ".0f"), fmt(rp["sim_latency_p95_ms"], ".0f"),
                    f"{rp['sim_replans']} of {rp['replan_calls']}", fmt(rp["sim_migration_bytes"] / 1e9, ".2f"),
                    fmt(st["sim_accuracy_loss_mean"], ".4f"), fmt(rp["sim_accuracy_loss_mean"], ".4f")])
        nominal = per.get("static, nominal bandwidth")
        if nominal is not None:
            a, b = st["sim_slo_attainment"], rp["sim_slo_attainment"]
            verdict = "higher than" if b > a else ("the same as" if b == a else "lower than")
            notes.append(f"{name}: the static plan meets the SLO at the nominal bandwidth (attainment "
                         f"{fmt(nominal['sim_slo_attainment'], '.3f')}); under the series re-planning gives {fmt(b, '.3f')}, "
                         f"{verdict} the static plan's {fmt(a, '.3f')}")
    headers = ["scenario", "change", "SLO static", "SLO re-plan", "tok/s static", "tok/s re-plan",
               "p95 ms static", "p95 ms re-plan", "re-plans applied (calls)", "migrated GB",
               "codec loss static", "codec loss re-plan"]
    return report.table(headers, out), notes
