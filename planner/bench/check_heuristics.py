"""Random-instance check of the heuristics: every plan they return passes the validator, and the
same seed gives the same plan.

``python -m planner.bench.check_heuristics [--count 1000] [--seed 0]`` draws random instances (model
shape, 2-4 devices of random tier, memory, speed and bandwidth, popularity, codec ranks (half of
them with an accuracy trade-off), SLOs, objective) from a seeded generator and runs
``route-aware``, ``local-search`` (with a fixed move count, so it is reproducible), ``replan``
after a 4x bandwidth drop, and ``greedy-placement`` on the
instance's expert-placement loads. It prints counts; a failure prints the instance's seed.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from planner import api  # noqa: F401  (lns registers local-search)
from planner.domain.changes import changed_instance
from planner.domain.instance import instance_from_dict
from planner.planners.replan import replan

TIERS = ("end", "edge", "cloud")


def random_instance(seed: int):
    """One random instance (as loaded from a file) from ``seed``."""
    rng = np.random.default_rng(seed)
    layers = int(rng.integers(1, 9))
    experts = int(rng.choice([0, 2, 4, 8]))
    hidden = int(rng.choice([64, 128, 256]))
    heads = int(rng.choice([2, 4]))
    model = {
        "name": f"rand-{seed}", "num_layers": layers, "hidden_size": hidden, "num_attention_heads": heads,
        "num_kv_heads": int(rng.choice([1, heads])), "head_dim": hidden // heads, "vocab_size": int(rng.integers(100, 2000)),
        "num_experts": experts, "top_k": int(rng.integers(1, 3)) if experts else 0,
        "expert_intermediate_size": int(rng.choice([128, 512])) if experts else 0,
        "dense_intermediate_size": int(rng.choice([128, 512])),
        "first_dense_layers": int(rng.integers(0, 2)) if experts and layers > 1 else 0,
        "dtype_bytes": float(rng.choice([0.5, 1, 2])),
    }
    if experts:
        model["top_k"] = min(model["top_k"], experts)
    n = int(rng.integers(2, 5))
    devices = []
    for d in range(n):
        tier = "end" if d == 0 else str(rng.choice(TIERS))
        devices.append({
            "name": f"d{d}", "tier": tier, "memory_gb": float(rng.uniform(0.002, 0.05)),
            "memory_bandwidth_gb_per_s": float(rng.uniform(10, 2000)), "power_w": float(rng.uniform(5, 400)),
            "peak_tflops": {"fp16": float(rng.uniform(0.5, 300))},
        })
    links = [{"a": f"d{d}", "b": f"d{int(rng.integers(0, d))}", "bandwidth_mbps": float(rng.uniform(1, 10000)),
              "rtt_ms": float(rng.uniform(0.1, 100))} for d in range(1, n)]
    data = {
        "name": f"random-{seed}", "objective": str(rng.choice(["throughput", "latency", "energy"])),
        "model": model, "devices": devices, "links": links,
        "workload": {"origin": "d0", "arrival_rate_per_s": 1.0, "prompt_tokens": int(rng.integers(1, 512)),
                     "output_tokens": int(rng.integers(1, 128)), "max_batch": int(rng.integers(1, 33)),
                     "popularity": {"kind": "zipf", "zipf_exponent": float(rng.uniform(0, 2)), "seed": seed}},
    }
    if rng.random() < 0.5:
        ranks = sorted({int(r) for r in rng.integers(1, hidden, size=2)})
        data["constraints"] = {"codec_ranks": ranks, "codec_accuracy_loss": [float(x) for x in rng.uniform(0, 0.02, len(ranks))],
                               "accuracy_loss_budget": float(rng.uniform(0, 0.03))}
        if rng.random() < 0.5:
            data["constraints"]["accuracy_tradeoff"] = float(rng.uniform(0, 0.2))
    return instance_from_dict(data, file=f"<random {seed}>")


def check_one(seed: int) -> tuple[int, list[str]]:
    """(plans checked, failures) for the instance of ``seed``."""
    inst = random_instance(seed)
    failures, checked = [], 0

    def check(name, plan):
        nonlocal checked
        checked += 1
        problems = api.validate(inst, plan) if plan is not None else []
        if problems:
            failures.append(f"seed {seed}: {name}: {problems[0]}")

    a = api.solve(inst, "route-aware", seed=seed)
    b = api.solve(inst, "route-aware", seed=seed)
    check("route-aware", a.solution)
    same = (a.solution is None) == (b.solution is None) and (
        a.solution is None or a.solution.to_dict()["pipelines"] == b.solution.to_dict()["pipelines"])
    if not same:
        failures.append(f"seed {seed}: route-aware is not deterministic")
    if a.solution is not None:
        ls1 = api.solve(inst, "local-search", seed=seed, initial_solution=a.solution, max_moves=30, time_budget_s=10.0)
        ls2 = api.solve(inst, "local-search", seed=seed, initial_solution=a.solution, max_moves=30, time_budget_s=10.0)
        check("local-search", ls1.solution)
        if ls1.solution.to_dict()["pipelines"] != ls2.solution.to_dict()["pipelines"]:
            failures.append(f"seed {seed}: local-search is not deterministic for a seed and a move count")
        if ls1.objective != a.objective and (ls1.objective < a.objective) == (inst.objective == "throughput"):
            failures.append(f"seed {seed}: local-search made the plan worse")
        dropped = changed_instance(inst, bandwidth_factor=0.25)
        r = replan(a.solution, dropped, seed=seed, max_moves=30)
        if r.plan is not None:
            checked += 1
            problems = api.validate(dropped, r.plan)
            if problems:
                failures.append(f"seed {seed}: replan: {problems[0]}")
    return checked, failures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m planner.bench.check_heuristics", description=__doc__.split("\n")[0])
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    plans, failures, infeasible = 0, [], 0
    for k in range(args.count):
        checked, fails = check_one(args.seed + k)
        plans += checked
        failures += fails
        if checked == 0:
            infeasible += 1
        if (k + 1) % 100 == 0:
            print(f"{k + 1} instances, {plans} plans checked, {len(failures)} failures", file=sys.stderr)
    print(f"{args.count} random instances ({infeasible} with no plan), {plans} heuristic plans validated, "
          f"{len(failures)} failures, {time.perf_counter() - t0:.1f} s")
    for f in failures[:20]:
        print(f"  {f}")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
