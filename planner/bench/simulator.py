"""Simulator speed: ``python -m planner.bench.simulator``.

Simulates ``--requests`` requests (default 100,000) served by the route-aware plan of
``--instance`` (default ``instances/default.toml``) and prints the requests simulated, the events
processed, the wall seconds and the figures of the run. Arrivals (``--arrivals``): ``trace``, the
Azure LLM conversation trace excerpt (``instances/data/azure_llm_2023_conv_first2000.csv``, its own
prompt and output tokens) repeated back to back and time-scaled so that its request rate is
``--load`` times the cost model's predicted requests/s for those tokens; or ``poisson``, at
``--load`` times the predicted requests/s with the instance's tokens. The prediction for the trace
uses the trace's mean prompt and output tokens; the cost model does not see their spread, so a
load near 1 may be above or below what the plan sustains. Times depend on the machine.

``--saturation``: instead, for the route-aware, single-cut and proportional plans of every
instance in ``instances/``, arrivals at 3x the predicted requests/s (``--requests``, default
3,000; 1,000 for plans with more than 20 remote experts) and the throughput of the finishes
between the 20th and the 80th percentile against the cost model's prediction (a markdown table).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

import numpy as np

from planner import api
from planner.bench.inputs import AZURE_EXCERPT, ROOT
from planner.cost.costmodel import CostModel
from planner.domain.changes import changed_instance
from planner.domain.data_files import read_request_trace
from planner.sim import simulate


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m planner.bench.simulator", description=__doc__.split("\n\n")[0])
    ap.add_argument("--instance", default=str(ROOT / "instances" / "default.toml"))
    ap.add_argument("--requests", type=int, default=None, help="default 100,000 (3,000 with --saturation)")
    ap.add_argument("--arrivals", choices=("trace", "poisson"), default="trace")
    ap.add_argument("--load", type=float, default=0.9, help="arrival rate over the predicted requests/s")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--saturation", action="store_true", help="simulated against predicted throughput at 3x load")
    args = ap.parse_args(argv)
    requests = args.requests or (3000 if args.saturation else 100_000)
    if args.saturation:
        saturation_table(requests, args.seed)
        return 0
    inst = api.load_instance(args.instance)
    plan = api.solve(inst, "route-aware").solution
    if plan is None:
        print(f"{args.instance}: route-aware finds no plan", file=sys.stderr)
        return 1
    trace = None
    if args.arrivals == "trace":
        raw = read_request_trace(AZURE_EXCERPT)
        w = replace(inst.workload, prompt_tokens=int(round(raw.prompt_tokens.mean())),
                    output_tokens=int(round(raw.output_tokens.mean())))
        predicted = CostModel(replace(inst, workload=w)).evaluate(plan).requests_per_s
        scale = raw.rate_per_s / (args.load * predicted)
        trace = replace(raw, arrival_s=raw.arrival_s * scale)
    else:
        predicted = CostModel(inst).evaluate(plan).requests_per_s
        inst = changed_instance(inst, arrival_rate_per_s=args.load * predicted)
    res = simulate(inst, plan, trace=trace, num_requests=requests, seed=args.seed,
                   progress=lambda line: print(line, file=sys.stderr))
    m = res.metrics()
    print(f"instance {inst.name}, plan {plan.solver}: "
          + ", ".join(f"{p.micro_batch_size}x{p.num_micro_batches} on {'/'.join(p.devices)}" for p in plan.pipelines))
    print(f"arrivals {args.arrivals} at {args.load:g} x predicted {predicted:.4g} requests/s")
    print(f"requests simulated {m['requests_total']:,}  (finished {m['requests_finished']:,}, dropped {m['requests_dropped']:,})")
    print(f"output tokens      {m['output_tokens']:,}")
    print(f"events processed   {m['events_processed']:,}")
    print(f"simulated time     {m['sim_time_s']:,.0f} s")
    print(f"wall time          {m['wall_time_s']:.2f} s  ({m['events_processed'] / m['wall_time_s']:,.0f} events/s)")
    print(f"throughput         {m['throughput_tokens_per_s']:.2f} tokens/s, {m['requests_per_s']:.4f} requests/s")
    for key in ("ttft_ms", "tpot_ms", "latency_ms"):
        s = m[key]
        print(f"{key:<18} p50 {s['p50']:.1f}  p95 {s['p95']:.1f}  p99 {s['p99']:.1f}")
    util = ", ".join(f"{k} {v:.1%}" for k, v in sorted(m["utilisation"].items()) if v > 0)
    print(f"utilisation        {util}")
    assert m["requests_finished"] + m["requests_dropped"] == m["requests_total"] == requests
    assert np.all(res.finish_s[res.finished] >= res.arrival_s[res.finished])
    return 0


def saturation_table(requests: int, seed: int) -> None:
    print("| instance | plan | b x m | cost model bottleneck | predicted tokens/s | simulated | ratio | requests | wall s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for path in sorted((ROOT / "instances").glob("*.toml")):
        inst = api.load_instance(path)
        for solver in ("route-aware", "single-cut", "proportional"):
            plan = api.solve(inst, solver).solution
            if plan is None:
                continue
            ev = CostModel(inst).evaluate(plan)
            n = min(requests, 1000) if max(len(p.expert_placement) for p in plan.pipelines) > 20 else requests
            res = simulate(changed_instance(inst, arrival_rate_per_s=3.0 * ev.requests_per_s), plan, num_requests=n, seed=seed)
            ends = np.sort(res.finish_s)
            measured = res.throughput_between(ends[n // 5], ends[4 * n // 5])
            batching = ", ".join(f"{p.micro_batch_size}x{p.num_micro_batches}" for p in plan.pipelines)
            bottleneck = "latency loop" if ev.bottleneck.startswith("latency loop") else ev.bottleneck
            print(f"| {path.stem} | {solver} | {batching} | {bottleneck} | {ev.throughput_tokens_per_s:.1f} | "
                  f"{measured:.1f} | {measured / ev.throughput_tokens_per_s:.3f} | {n} | {res.wall_time_s:.1f} |", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
