"""Time the exact assignment solvers on a 32 groups x 8 items x 4 bins instance.

Run: ``python -m solvers.bench_assignment [--solvers milp cpsat] [--time-limit S] [--threads N]``.
Prints, per solver, status, objective, bound, gap and wall time. Timings are informative only (no test
asserts them).
"""

from __future__ import annotations

import argparse

import numpy as np

from models.assignment import ReplicatedAssignment, violations
from solvers import assignment  # noqa: F401 - registers the assignment solvers
from solvers.registry import get

BYTES_PER_ITEM = 100_000_000  # one replica of any item, on any bin


def bench_instance(seed: int = 0, groups: int = 32, items: int = 8, candidates: int = 2) -> ReplicatedAssignment:
    """Zipf-like item loads per group (tokens per step); bins of speed 1, 1.5, 2.5 and 4 whose memory
    holds 40, 80, 200 and 300 replicas over all groups (the slow bins are small, and their memory binds
    before their 2 and 3 slots per group do); ``candidates`` random candidate bins per item; up to 2
    replicas per item; traffic cost on the fast (remote) bins.

    With 2 candidates per item HiGHS proves the optimum in seconds; with all 4 bins candidates the
    search space per group is larger and 32 such groups, coupled by memory, do not close in minutes.
    """
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, items + 1)
    load = np.stack([rng.permutation(1000.0 / ranks**0.8) * rng.uniform(0.8, 1.2, items) for _ in range(groups)])
    speed = np.array([1.0, 1.5, 2.5, 4.0])
    mask = np.zeros((groups, items, 4), dtype=bool)
    for g in range(groups):
        for i in range(items):
            mask[g, i, rng.choice(4, candidates, replace=False)] = True
    capacity = np.array([40, 80, 200, 300]) * BYTES_PER_ITEM
    traffic = np.broadcast_to(np.array([0.0, 0.0, 0.05, 0.1]), (groups, items, 4))
    return ReplicatedAssignment.build(load, speed, slots=[2, 3, 4, 4], weight=BYTES_PER_ITEM, capacity=capacity,
                                      mask=mask, max_replicas=2, traffic=traffic, traffic_weight=1.0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--solvers", nargs="+", default=["milp", "cpsat"])
    parser.add_argument("--time-limit", type=float, default=120.0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--candidates", type=int, default=2, help="candidate bins per item (4: all, much harder)")
    args = parser.parse_args(argv)
    problem = bench_instance(args.seed, candidates=args.candidates)
    G, I, B = problem.shape
    print(f"instance: {G} groups x {I} items x {B} bins, {args.candidates} candidate bins per item, seed {args.seed}")
    print(f"{'solver':8} {'status':11} {'objective':>14} {'bound':>14} {'gap':>10} {'time_s':>8}")
    for name in args.solvers:
        result = get(name, problem="assignment").func(problem, time_limit=args.time_limit, threads=args.threads)
        print(f"{name:8} {result.status.value:11} {result.objective:14.6f} {result.bound:14.6f} "
              f"{result.gap:10.2e} {result.solve_time_s:8.2f}", flush=True)
        assert result.solution is None or not violations(problem, result.solution)


if __name__ == "__main__":
    main()
