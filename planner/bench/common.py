"""What the suites of ``moeplan bench`` share: settings, outputs, solving and simulating a plan, CSV columns.

Each suite (:mod:`~planner.bench.paper`, :mod:`~planner.bench.scale`, :mod:`~planner.bench.dynamic`;
``docs/bench.md``) returns a :class:`SuiteOutput`: one row per measurement (written as
``<suite>.csv``), the table printed at the end, and the data its plots need. Figures are measured
in one run and printed, never asserted. ``quick`` shrinks every suite so that tests run it in seconds.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from planner import api
from planner.bench.inputs import BandwidthSeries, azure_requests
from planner.domain.instance import Instance
from planner.domain.plan import Plan
from planner.planners.baselines import BASELINES
from planner.sim import simulate as run_simulation
from solvers import registry

ROOT = Path(__file__).resolve().parents[2]
MOEPLAN = api.DEFAULT_SOLVER  # moeplan's plan in every comparison

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


def geomean(xs: list[float]) -> float:
    return float(math.exp(sum(math.log(x) for x in xs) / len(xs)))


def fmt(x, spec: str, unit: str = "") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return format(x, spec) + unit


def write_csv(path: Path, rows: list[dict]) -> Path:
    """Every row, columns in the order first seen; empty cells for missing values, NaN and None."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, columns, restval="")
        w.writeheader()
        for r in rows:
            w.writerow({k: _cell(v) for k, v in r.items()})
    return path


def _cell(v):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    return v
