"""The fidelity report: what a run measured beside what the cost model and the simulator predicted.

Per device and phase (stage times): the cost model's prediction is priced pass by pass for the
passes that ran, each with its own size (a decode step's rows, a prefill's prompt) and context
(the rows' mean cached tokens), from :meth:`planner.cost.costmodel.CostModel.pass_steps`: a device's
predicted time in a pass is the sum of its steps' holds (its stage, and the expert branches it
serves for other stages). Measured: the device's CPU time in the same passes
(:mod:`planner.runtime.report`). Both are averaged per pass; ``ratio`` = measured / predicted (above
1: slower than predicted). The MAPE is the mean of ``|predicted - measured| / measured`` over the
stage devices' rows.

Contention: where the run had more processes than this machine's cores, every device's time is
slower than its profile says (processes take cores and caches from each other, which shows even in
CPU time). The report says so (``contention``); with a measured slowdown factor (``contention=F``,
e.g. :func:`planner.executor.framework.contention_slowdown` for the run's process count, measured
apart from the run) it also gives each stage row's prediction times ``F`` and their MAPE
(``mape_stage_contended_pct``), beside the plain ones.

Terms: each stage's time split as the cost model splits it, the non-expert blocks of its layers
(``LayerTimes.layer_times``) against the rest of its steps (routed experts, embedding, LM head,
codec); measured with the executor's per-layer timings (the routed experts' share, waits for
remote experts left out), scaled to the measured CPU time.

Links: the emulated busy seconds of each instance link against the cost model's link holds of the
same passes. Passes: each phase's origin-to-origin latency (median) against the cost model's pass
latency. Figures: TTFT, TPOT, tokens/s against :func:`planner.api.evaluate` (an idle pipeline for
TTFT and TPOT, saturation for tokens/s) and :func:`planner.sim.simulate` (the same arrivals).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from planner.cost.costmodel import CostModel
from planner.cost.evaluation import Step
from planner.domain.data_files import RequestTrace
from planner.runtime.report import PHASES, RunMeasurement, request_figures
from planner.runtime.topology import cores
from planner.sim import simulate


def pass_prediction(cm: CostModel, pipe, tokens: float, context: float, prefill: bool) -> tuple[dict, float]:
    """(key -> hold s, latency s) of one pass as the cost model prices it (keys: device names and
    link pairs)."""
    holds: dict = defaultdict(float)
    latency = 0.0
    for item in cm.pass_steps(pipe, float(tokens), float(context), prefill):
        steps = (item,) if isinstance(item, Step) else [s for branch in item.branches for s in branch]
        for s in steps:
            holds[s.key] += s.hold_s
        latency += item.latency_s  # a Fork's: its slowest branch
    return dict(holds), latency


class _Priced:
    """Predictions of every pass of a run, priced once per (pipeline, phase, tokens, context)."""

    def __init__(self, run: RunMeasurement):
        self.cm = CostModel(run.instance)
        self.run = run
        self._cache: dict = {}
        first = {}
        for dev, recs in run.stage.items():
            if run.stage_index[dev][1] == 0:
                for r in recs:
                    first[r["pass_id"]] = r
        self.size = {}  # pass id -> (pipeline, phase, tokens, context)
        for pid, p in run.pass_phase().items():
            r = first.get(pid)
            if r is None or p["returned_s"] is None:
                continue
            tokens = r["tokens"] if p["phase"] == "prefill" else r["rows"]
            self.size[pid] = (p["pipeline"], p["phase"], tokens, round(r["context"], 1))

    def of(self, pid: int) -> tuple[dict, float]:
        key = self.size[pid]
        hit = self._cache.get(key)
        if hit is None:
            p, phase, tokens, context = key
            hit = self._cache[key] = pass_prediction(self.cm, self.run.plan.pipelines[p], tokens, context, phase == "prefill")
        return hit

    def nonexpert_s(self, pid: int, device: str, layers: range) -> float:
        _, phase, tokens, context = self.size[pid]
        ne, _ = self.cm.times.layer_times(device, float(tokens), float(context), phase == "prefill")
        return float(ne[layers.start:layers.stop].sum())


def compare(run: RunMeasurement, requests: list, contention: float | None = None) -> dict:
    """The fidelity report of one run (see the module docstring); ``requests``: the run's
    :class:`~planner.runtime.scheduler.RequestSpec` s (their arrivals drive the simulation);
    ``contention``: a measured slowdown factor of the devices' compute for this run's process count."""
    priced = _Priced(run)
    busy = run.device_busy("cpu_s")
    stage_rows, term_rows = [], []
    for dev in run.devices:
        for phase in PHASES:
            pids = [pid for (d, pid) in busy if d == dev and pid in priced.size and priced.size[pid][1] == phase]
            if not pids:
                continue
            measured = float(np.mean([busy[(dev, pid)] for pid in pids]))
            predicted = float(np.mean([priced.of(pid)[0].get(dev, 0.0) for pid in pids]))
            role = f"stage {run.stage_index[dev][1]}" if dev in run.stage_index else "experts"
            stage_rows.append(_row(device=dev, role=role, phase=phase, passes=len(pids), measured_ms=measured * 1e3,
                                   predicted_ms=predicted * 1e3))
            if dev in run.stage:
                term_rows += _terms(run, priced, dev, phase, measured, predicted)
    stage_only = [r for r in stage_rows if r["role"] != "experts"]
    mape = float(np.mean([abs(r["predicted_ms"] - r["measured_ms"]) / r["measured_ms"] for r in stage_only]) * 100) if stage_only else None
    contended = None
    if contention is not None:
        for r in stage_rows:
            r["predicted_contended_ms"] = r["predicted_ms"] * contention
        contended = float(np.mean([abs(r["predicted_contended_ms"] - r["measured_ms"]) / r["measured_ms"]
                                   for r in stage_only]) * 100) if stage_only else None
    machine = {"processes": len(run.devices), "cores": cores(), "oversubscribed": len(run.devices) > cores(),
               "slowdown": contention}
    link_pred: dict = defaultdict(float)
    for pid in priced.size:
        for key, h in priced.of(pid)[0].items():
            if isinstance(key, tuple):
                link_pred[f"{key[0]}<->{key[1]}"] += h
    link_rows = [_row(link=k, measured_ms=run.link_busy_s.get(k, 0.0) * 1e3, predicted_ms=v * 1e3) for k, v in sorted(link_pred.items())]
    pass_rows = []
    for phase in PHASES:
        done = [p for p in run.passes if p["phase"] == phase and p["pass_id"] in priced.size]
        if done:
            measured = float(np.median([p["returned_s"] - p["sent_s"] for p in done]))
            predicted = float(np.median([priced.of(p["pass_id"])[1] for p in done]))
            pass_rows.append(_row(phase=phase, passes=len(done), measured_ms=measured * 1e3, predicted_ms=predicted * 1e3))
    return {"stages": stage_rows, "terms": term_rows, "links": link_rows, "passes": pass_rows,
            "figures": _figures(run, requests, priced.cm), "mape_stage_pct": mape, "contention": machine,
            "mape_stage_contended_pct": contended}


def _row(**kw) -> dict:
    m, p = kw.get("measured_ms"), kw.get("predicted_ms")
    kw["ratio"] = m / p if m is not None and p else None
    return kw


def _terms(run: RunMeasurement, priced: _Priced, dev: str, phase: str, measured_s: float, predicted_s: float) -> list[dict]:
    recs = [r for r in run.stage[dev] if r["phase"] == phase and r["pass_id"] in priced.size]
    if not recs:
        return []
    s = run.slowdown.get(dev, 1.0)
    ne = sum(r["layers_s"] - r["experts_s"] for r in recs)
    wall = sum(r["wall_s"] / s for r in recs)
    scale = measured_s * len(recs) / wall if wall > 0 else 0.0  # wall shares -> CPU seconds
    layers = _layers_of(run, dev)
    ne_pred = float(np.mean([priced.nonexpert_s(r["pass_id"], dev, layers) for r in recs]))
    ne_meas = ne * scale / len(recs)
    return [_row(device=dev, phase=phase, term="non-expert blocks", measured_ms=ne_meas * 1e3, predicted_ms=ne_pred * 1e3),
            _row(device=dev, phase=phase, term="routed experts, embedding, head, codec",
                 measured_ms=(measured_s - ne_meas) * 1e3, predicted_ms=(predicted_s - ne_pred) * 1e3)]


def _layers_of(run: RunMeasurement, dev: str) -> range:
    p, i = run.stage_index[dev]
    st = run.plan.pipelines[p].stages[i]
    return range(st.first_layer, st.end_layer)


def _figures(run: RunMeasurement, requests: list, cm: CostModel) -> list[dict]:
    """TTFT, TPOT, tokens/s: measured, the cost model's and the simulator's (same arrivals)."""
    measured = request_figures(run.requests)
    ev = cm.evaluate(run.plan)
    done = {r["rid"] for r in run.requests}
    reqs = [r for r in requests if r.rid in done]
    sim = None
    if reqs:
        arr = np.array([r.arrival_s for r in reqs])
        trace = RequestTrace(arr - arr.min(), np.array([len(r.prompt) for r in reqs]), np.array([r.output_tokens for r in reqs]))
        sim = simulate(run.instance, run.plan, trace=trace).metrics()
    rows = []
    figures = (("TTFT ms, mean", "ttft_ms", "mean", ev.ttft_s), ("TTFT ms, p50", "ttft_ms", "p50", ev.ttft_s),
               ("TPOT ms, mean", "tpot_ms", "mean", ev.tpot_s), ("TPOT ms, p50", "tpot_ms", "p50", ev.tpot_s),
               ("latency ms, mean", "latency_ms", "mean", ev.latency_s))
    for label, key, stat, cost_s in figures:
        cost = cost_s * 1e3
        m = measured[key][stat]
        s = sim[key][stat] if sim else None
        rows.append({"figure": label, "measured": m, "cost_model": cost, "simulated": s,
                     "ratio_cost_model": m / cost if m is not None and cost else None,
                     "ratio_simulated": m / s if m is not None and s else None})
    m, cost, s = measured["tokens_per_s"], ev.throughput_tokens_per_s, sim["throughput_tokens_per_s"] if sim else None
    rows.append({"figure": "tokens/s", "measured": m, "cost_model": cost, "simulated": s,
                 "ratio_cost_model": m / cost if cost else None, "ratio_simulated": m / s if s else None})
    return rows


def _f(x, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def fidelity_table(report: dict) -> str:
    """The fidelity report as text (ratios: measured / predicted)."""
    lines = [f"{'device':<8} {'role':<8} {'phase':<8} {'passes':>6} {'measured ms':>11} {'predicted ms':>12} {'ratio':>7}"]
    for r in report["stages"]:
        lines.append(f"{r['device']:<8} {r['role']:<8} {r['phase']:<8} {r['passes']:>6} {r['measured_ms']:>11.3f} "
                     f"{r['predicted_ms']:>12.3f} {_f(r['ratio']):>7}")
    lines.append(f"MAPE of the cost model over the stage times: {_f(report['mape_stage_pct'], '.1f')} %")
    c = report.get("contention") or {}
    if c.get("oversubscribed"):
        lines.append(f"contention: {c['processes']} processes on {c['cores']} cores: measured device times include it"
                     + (f"; with the measured slowdown x{c['slowdown']:.2f} the MAPE is "
                        f"{_f(report['mape_stage_contended_pct'], '.1f')} %" if c.get("slowdown") else
                        " (no slowdown factor given: the predictions leave it out)"))
    lines.append(f"{'device':<8} {'phase':<8} {'term':<40} {'measured ms':>11} {'predicted ms':>12} {'ratio':>7}")
    for r in report["terms"]:
        lines.append(f"{r['device']:<8} {r['phase']:<8} {r['term']:<40} {r['measured_ms']:>11.3f} {r['predicted_ms']:>12.3f} "
                     f"{_f(r['ratio']):>7}")
    lines.append(f"{'link':<16} {'measured busy ms':>16} {'predicted ms':>12} {'ratio':>7}")
    for r in report["links"]:
        lines.append(f"{r['link']:<16} {r['measured_ms']:>16.2f} {r['predicted_ms']:>12.2f} {_f(r['ratio']):>7}")
    lines.append(f"{'pass, origin to origin':<24} {'passes':>6} {'measured p50 ms':>15} {'predicted ms':>12} {'ratio':>7}")
    for r in report["passes"]:
        lines.append(f"{r['phase']:<24} {r['passes']:>6} {r['measured_ms']:>15.2f} {r['predicted_ms']:>12.2f} {_f(r['ratio']):>7}")
    lines.append(f"{'figure':<18} {'measured':>10} {'cost model':>10} {'ratio':>7} {'simulated':>10} {'ratio':>7}")
    for r in report["figures"]:
        lines.append(f"{r['figure']:<18} {_f(r['measured']):>10} {_f(r['cost_model']):>10} {_f(r['ratio_cost_model']):>7} "
                     f"{_f(r['simulated']):>10} {_f(r['ratio_simulated']):>7}")
    return "\n".join(lines)
