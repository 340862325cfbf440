"""Benchmark: the fidelity table, measured runs of the shipped runtime plans beside the predictions.

    python -m planner.runtime.bench_fidelity [--requests N] [--plans A,B] [--workloads poisson,burst] [--json F]

Runs each plan of ``instances/runtime-plans/`` on ``instances/runtime-loopback.toml`` (this
machine's processes, its measured profile, the reference model) under two workloads: Poisson
arrivals at the instance's rate and a burst (every request at once: saturation), and prints for
each run the fidelity report (:mod:`planner.runtime.fidelity`), then a summary over every run: the
cost model's MAPE over all stage times, the ratio of each term, and TTFT, TPOT and tokens/s
against the cost model and the simulator.

Where the stage times miss, it measures what the cost model leaves out, a framework term: the
operations eager PyTorch runs per decoder layer (counted with a dispatch mode) times the time of
one small operation on this machine, against a per-layer and per-pass overhead fitted to the
measured stage times (``measured - predicted = a x layers + b`` per phase, least squares, each
plan's rows predicted from a fit on the other plans). With a profile that carries the framework
term (``moeplan profile --backend torch``) the cost model prices that term itself and the fit shows
what is left.

Contention: before the runs it measures how much slower the tiny model's decode step runs in
CPU time when as many processes as a plan has run it at once as when one does
(:func:`planner.executor.framework.contention_slowdown`, ``--contention probe``, the default; ``none``
skips it), and reports each run's MAPE with the predictions times that factor beside the plain one.
Figures are measured in one run; they are not test assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
INSTANCE = ROOT / "instances" / "runtime-loopback.toml"
PLANS = ROOT / "instances" / "runtime-plans"
DEFAULT_PLANS = ("phone-cloud", "phone-cloud-codec32", "phone-edge-cloud", "phone-edge-remote-experts")


def count_ops(model, instance, plan, rows: int = 4) -> dict:
    """Aten operations of one decode step of ``rows`` sequences (after a prefill of 32 tokens), per
    decoder layer, split into the routed experts' and the rest; and of the whole step (masks,
    rotary embeddings, LM head included)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from planner.executor.apply import apply_plan

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n += 1
            return func(*args, **(kwargs or {}))

    planned = apply_plan(model, instance, plan)
    placed = planned.placed_experts()
    counts = {"layer": [], "experts": []}
    layer = planned.stages[0].layers[0]
    with torch.no_grad():
        planned.prefill(torch.randint(0, 256, (rows, 32)))
        x = torch.randint(0, 256, (rows, 1))
        with Count() as whole:
            planned.decode_step(x)
        hooks = []
        for module, key in ((layer, "layer"), (placed[0], "experts")):
            mode = Count()

            def enter(*_, m=mode) -> None:
                m.__enter__()

            def leave(*_, m=mode, k=key) -> None:
                m.__exit__(None, None, None)
                counts[k].append(m.n)

            hooks += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
        planned.decode_step(x)
        for h in hooks:
            h.remove()
    layers = int(model.config.num_hidden_layers)
    return {"step": whole.n, "per_layer": counts["layer"][0], "experts_per_layer": counts["experts"][0],
            "non_expert_per_layer": counts["layer"][0] - counts["experts"][0], "outside_layers": whole.n - layers * counts["layer"][0]}


def isolated_stage_ms(model, instance, plan, rows: int, prompt: int, repeats: int = 15, calibration_ids=None) -> dict:
    """CPU ms of each stage of ``plan`` run alone in this process (no other stage, no messages): the
    median of ``repeats`` prefills of ``prompt`` tokens and of ``repeats`` decode steps of ``rows``
    sequences at context ``prompt``, through :meth:`planner.runtime.stage.StageRole.forward`."""
    import torch

    from planner.executor.apply import apply_plan
    from planner.runtime.device import DeviceClock
    from planner.runtime.stage import StageRole
    from planner.runtime.transport import DelayQueue
    from planner.runtime.wire import DECODE, PREFILL

    ids = torch.as_tensor(calibration_ids) if calibration_ids is not None else None
    planned = apply_plan(model, instance, plan, calibration_ids=ids)
    out = {}
    for i, runner in enumerate(planned.stages):
        codec_in = planned.codecs[i - 1] if i > 0 and hasattr(planned.codecs[i - 1], "rank") else None
        role = StageRole(runner, codec_in=codec_in, codec_out=None, next_rank=None, origin_rank=0, send=lambda *a: None,
                         device=DeviceClock(), remote=None, inbox=DelayQueue())
        width = codec_in.rank if codec_in is not None else int(model.config.hidden_size)
        times = {"prefill": [], "decode": []}
        for k in range(repeats):
            rids = [1000 * k + r for r in range(rows)]
            for r in rids:
                ints = torch.tensor([[r, 0] + [7] * prompt]) if role.first else torch.tensor([[r, 0]])
                t = time.thread_time()
                role.forward(PREFILL, 0, ints, None if role.first else torch.randn(1, prompt, width))
                times["prefill"].append(time.thread_time() - t)
            ints = torch.tensor([[r, prompt] + ([7] if role.first else []) for r in rids])
            t = time.thread_time()
            role.forward(DECODE, k, ints, None if role.first else torch.randn(rows, 1, width))
            times["decode"].append(time.thread_time() - t)
        out[runner.device_label] = {phase: float(np.median(v) * 1e3) for phase, v in times.items()}
    return out


def alone_against_predicted(model, instance, names: list[str], stage_rows: list[dict], calibration_ids=None) -> list[dict]:
    """Per stage and phase of each plan in ``names`` without remote experts: its CPU ms alone in this
    process (:func:`isolated_stage_ms`, decode of 2 rows at context = prompt, prefill of the prompt),
    the cost model's prediction for the same pass, and the mean of the runs' measured times."""
    from planner.cost.costmodel import CostModel
    from planner.domain.plan import Plan
    from planner.runtime.fidelity import pass_prediction

    cm = CostModel(instance)
    prompt = instance.workload.prompt_tokens
    out = []
    for name in names:
        plan = Plan.load(PLANS / f"{name}.json")
        if any(p.expert_placement for p in plan.pipelines):
            continue
        alone = isolated_stage_ms(model, instance, plan, rows=2, prompt=prompt, calibration_ids=calibration_ids)
        pipe = plan.pipelines[0]
        pred = {"decode": pass_prediction(cm, pipe, 2.0, float(prompt), False)[0],
                "prefill": pass_prediction(cm, pipe, float(prompt), prompt / 2.0, True)[0]}
        for dev, phases in alone.items():
            for phase, ms in phases.items():
                runs = [r["measured_ms"] for r in stage_rows if r["plan"] == name and r["device"] == dev and r["phase"] == phase]
                out.append({"plan": name, "device": dev, "phase": phase, "alone_ms": ms,
                            "predicted_ms": pred[phase].get(dev, 0.0) * 1e3,
                            "in_runs_ms": float(np.mean(runs)) if runs else float("nan")})
    return out


def small_op_s(repeats: int = 2000) -> float:
    """Median seconds of one small eager operation (an add of two [4, 128] float32 tensors), one thread."""
    import torch

    torch.set_num_threads(1)
    a, b = torch.randn(4, 128), torch.randn(4, 128)
    times = []
    for _ in range(20):
        t = time.perf_counter()
        for _ in range(repeats // 20):
            torch.add(a, b)
        times.append((time.perf_counter() - t) / (repeats // 20))
    return float(np.median(times))


def _layers(plan, device: str) -> int:
    for p in plan.pipelines:
        for s in p.stages:
            if s.device == device:
                return s.end_layer - s.first_layer
    return 0


def overhead_fit(rows: list[dict]) -> dict:
    """Per phase, ``measured - predicted = a x layers + b`` (ms) fitted on all stage rows, and the
    MAPE of ``predicted + a x layers + b`` with each plan's rows fitted on the other plans."""
    out = {}
    for phase in ("prefill", "decode"):
        rs = [r for r in rows if r["phase"] == phase]
        X = np.array([[r["layers"], 1.0] for r in rs])
        y = np.array([r["measured_ms"] - r["predicted_ms"] for r in rs])
        (a, b), *_ = np.linalg.lstsq(X, y, rcond=None)
        errors = []
        for plan in {r["plan"] for r in rs}:
            train = [i for i, r in enumerate(rs) if r["plan"] != plan]
            (ta, tb), *_ = np.linalg.lstsq(X[train], y[train], rcond=None)
            for r in (r for r in rs if r["plan"] == plan):
                pred = r["predicted_ms"] + ta * r["layers"] + tb
                errors.append(abs(pred - r["measured_ms"]) / r["measured_ms"])
        out[phase] = {"ms_per_layer": float(a), "ms_per_pass": float(b), "mape_pct_held_out": float(np.mean(errors) * 100)}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m planner.runtime.bench_fidelity", description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=24)
    p.add_argument("--plans", default=",".join(DEFAULT_PLANS))
    p.add_argument("--workloads", default="poisson,burst")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="F", help="also write every report to F")
    p.add_argument("--contention", choices=("probe", "none"), default="probe",
                   help="measure the slowdown of N busy processes on this machine before the runs (default) or not")
    args = p.parse_args(argv)

    import torch
    from transformers.utils import logging as hf_logging

    from planner import api
    from planner.domain.plan import Plan
    from planner.runtime import fidelity, inputs, launch, report

    torch.set_num_threads(1)
    hf_logging.disable_progress_bar()
    instance = api.load_instance(INSTANCE)
    model = inputs.load_model("reference", instance)
    calibration = inputs.calibration_ids(256)
    options = launch.RunOptions(timeout_s=10.0, run_timeout_s=600.0, model_module=type(model).__module__, calibration=calibration)
    runs, stage_rows, term_rows = [], [], []
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    from planner.executor.framework import contention_slowdown
    from planner.runtime.topology import cores as topology_cores
    from planner.runtime.topology import topology

    slowdowns: dict[int, dict] = {}
    if args.contention == "probe":
        for name in args.plans.split(","):
            world = len(topology(instance, Plan.load(PLANS / f"{name}.json")).devices)
            if world not in slowdowns:
                slowdowns[world] = contention_slowdown(world)
                print(f"contention probe: {world} busy processes run the tiny model's decode step "
                      f"x{slowdowns[world]['slowdown']:.2f} slower in CPU time than one "
                      f"({slowdowns[world]['together_s'] * 1e3:.2f} / {slowdowns[world]['alone_s'] * 1e3:.2f} ms)",
                      file=sys.stderr, flush=True)
    for name in args.plans.split(","):
        plan = Plan.load(PLANS / f"{name}.json")
        world = len(topology(instance, plan).devices)
        factor = slowdowns[world]["slowdown"] if world in slowdowns else None
        codecs = inputs.prepare(model, instance, plan, calibration)
        for workload in args.workloads.split(","):
            requests = inputs.make_requests(instance, 256, 512, num_requests=args.requests, burst=workload == "burst", seed=args.seed)
            result = launch.run(instance, plan, requests, options, codecs, log=lambda m: print(m, file=sys.stderr, flush=True))
            gen = result.generations[-1]
            if gen.stats is None or result.failed:
                print(f"{name} / {workload}: the run failed: {result.failed}", file=sys.stderr)
                return 1
            measured = report.RunMeasurement(gen.stats, instance, plan, gen.done)
            rep = fidelity.compare(measured, requests, contention=factor)
            print(f"=== {name}, {workload} ({len(requests)} requests; b x m = {plan.pipelines[0].micro_batch_size} x "
                  f"{plan.pipelines[0].num_micro_batches})")
            print(fidelity.fidelity_table(rep))
            runs.append({"plan": name, "workload": workload, "measured": measured.summary(), "fidelity": rep})
            stage_rows += [dict(r, plan=name, workload=workload, layers=_layers(plan, r["device"]))
                           for r in rep["stages"] if r["role"] != "experts"]
            term_rows += [dict(r, plan=name, workload=workload) for r in rep["terms"]]

    mape = float(np.mean([abs(r["predicted_ms"] - r["measured_ms"]) / r["measured_ms"] for r in stage_rows]) * 100)
    mape_c = (float(np.mean([abs(r["predicted_contended_ms"] - r["measured_ms"]) / r["measured_ms"] for r in stage_rows]) * 100)
              if all("predicted_contended_ms" in r for r in stage_rows) else None)
    print("\n=== summary: measured / predicted")
    print(f"{'plan':<28} {'workload':<8} {'stage times':>14} {'TTFT mean':>10} {'TPOT mean':>10} {'tokens/s':>9} "
          f"{'TTFT sim':>9} {'TPOT sim':>9} {'tok/s sim':>9}")
    for run in runs:
        st = [r["ratio"] for r in run["fidelity"]["stages"] if r["role"] != "experts"]
        fig = {f["figure"]: f for f in run["fidelity"]["figures"]}
        print(f"{run['plan']:<28} {run['workload']:<8} {min(st):>6.1f}-{max(st):<7.1f} "
              f"{fig['TTFT ms, mean']['ratio_cost_model']:>10.2f} {fig['TPOT ms, mean']['ratio_cost_model']:>10.2f} "
              f"{fig['tokens/s']['ratio_cost_model']:>9.2f} {fig['TTFT ms, mean']['ratio_simulated']:>9.2f} "
              f"{fig['TPOT ms, mean']['ratio_simulated']:>9.2f} {fig['tokens/s']['ratio_simulated']:>9.2f}")
    if load_before is not None:
        print(f"machine: {topology_cores()} cores; load average (1 min) {load_before[0]:.2f} before the runs, "
              f"{os.getloadavg()[0]:.2f} after (other work on the machine shows as contention)")
    print(f"MAPE of the cost model over all {len(stage_rows)} stage times: {mape:.1f} % (target 15 %)")
    if mape_c is not None:
        factors = ", ".join(f"{w} processes x{v['slowdown']:.2f}" for w, v in sorted(slowdowns.items()))
        print(f"with the measured contention slowdown ({factors}): {mape_c:.1f} %")
    print("stage times, ms per pass (measured / predicted = ratio" + ("; predicted x contention" if mape_c is not None else "") + "):")
    for r in stage_rows:
        extra = (f"; x contention {r['predicted_contended_ms']:.3f} = {r['measured_ms'] / r['predicted_contended_ms']:.2f}"
                 if mape_c is not None else "")
        print(f"  {r['plan']:<26} {r['workload']:<8} {r['device']:<6} {r['phase']:<8} {r['measured_ms']:.3f} / "
              f"{r['predicted_ms']:.3f} = {r['ratio']:.2f}{extra}")
    print("figures (measured; cost model, ratio; simulator, ratio):")
    for run in runs:
        fig = {f["figure"]: f for f in run["fidelity"]["figures"]}
        cells = []
        for key in ("TTFT ms, mean", "TPOT ms, mean", "tokens/s"):
            f = fig[key]
            cells.append(f"{key} {f['measured']:.1f}; {f['cost_model']:.1f}, {f['ratio_cost_model']:.2f}; "
                         f"{f['simulated']:.1f}, {f['ratio_simulated']:.2f}")
        print(f"  {run['plan']:<26} {run['workload']:<8} " + " | ".join(cells))
    for term in ("non-expert blocks", "routed experts, embedding, head, codec"):
        for phase in ("prefill", "decode"):
            ratios = [r["ratio"] for r in term_rows if r["term"] == term and r["phase"] == phase]
            print(f"term {term!r}, {phase}: measured / predicted {np.median(ratios):.1f} (range {min(ratios):.1f}-{max(ratios):.1f})")
    first = Plan.load(PLANS / f"{DEFAULT_PLANS[0]}.json")
    alone = isolated_stage_ms(model, instance, first, rows=2, prompt=instance.workload.prompt_tokens)
    print(f"the stages of {DEFAULT_PLANS[0]} alone in one process (CPU ms, median; prefill of "
          f"{instance.workload.prompt_tokens} tokens, decode of 2 rows):")
    for dev, phases in alone.items():
        inrun = {r["phase"]: r for r in stage_rows if r["plan"] == DEFAULT_PLANS[0] and r["device"] == dev}
        print("  " + dev + ": " + ", ".join(
            f"{ph} {ms:.2f} ms alone, {inrun[ph]['predicted_ms']:.3f} predicted, {inrun[ph]['measured_ms']:.2f} in the runs"
            for ph, ms in phases.items() if ph in inrun))
    alone_rows = alone_against_predicted(model, instance, args.plans.split(","), stage_rows, calibration)
    if alone_rows:
        mape_alone = float(np.mean([abs(r["predicted_ms"] - r["alone_ms"]) / r["alone_ms"] for r in alone_rows]) * 100)
        print(f"without contention: each stage of the plans without remote experts run alone in this process "
              f"(decode of 2 rows at context {instance.workload.prompt_tokens}, prefill of {instance.workload.prompt_tokens} "
              f"tokens) against the cost model at the same size: MAPE {mape_alone:.1f} % over {len(alone_rows)} stage times")
        for r in alone_rows:
            print(f"  {r['plan']:<26} {r['device']:<6} {r['phase']:<8} alone {r['alone_ms']:.3f} / predicted "
                  f"{r['predicted_ms']:.3f} = {r['alone_ms'] / r['predicted_ms']:.2f}; in the runs / alone "
                  f"{r['in_runs_ms'] / r['alone_ms']:.2f}")
    else:
        mape_alone = None
    ops = count_ops(model, instance, first)
    op_s = small_op_s()
    fit = overhead_fit(stage_rows)
    per_layer_ms = float(np.mean([v["decode"] for v in alone.values()])) / max(_layers(first, d) for d in alone)
    print(f"framework: a decode step of 4 rows runs {ops['step']} aten operations, {ops['per_layer']} per decoder layer "
          f"({ops['non_expert_per_layer']} outside the routed experts, {ops['experts_per_layer']} in them) and "
          f"{ops['outside_layers']} outside the layers, where the cost model counts one operation per non-expert block "
          f"and one per routed expert; a bare small operation takes {op_s * 1e6:.1f} us here, a layer alone about "
          f"{per_layer_ms:.2f} ms ({per_layer_ms * 1e3 / ops['per_layer']:.0f} us per operation: the modules' Python)")
    for phase, f in fit.items():
        print(f"fitted overhead, {phase}: {f['ms_per_layer']:.3f} ms per layer + {f['ms_per_pass']:.3f} ms per pass; "
              f"with it the MAPE (each plan held out of its fit) is {f['mape_pct_held_out']:.1f} %")
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": runs, "mape_stage_pct": mape, "mape_stage_contended_pct": mape_c,
                                               "mape_alone_pct": mape_alone, "alone_rows": alone_rows,
                                               "contention": slowdowns, "ops": ops, "small_op_s": op_s, "fit": fit,
                                               "alone_ms": alone}, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
