"""Benchmark (not a test): expert placement, EPLB against moeplan's greedy and local search.

    python -m solvers.bench_placement            # 58 layers x 256 experts, 32 devices, 32 redundant slots
    python -m solvers.bench_placement --layers 4 --experts 16 --devices 4 --redundant 4

Loads: per layer, ``tokens * top_k`` expert choices drawn from a Zipf-like popularity
(``p_r ~ 1 / r**zipf``) whose ranking is permuted per layer (seeded). Two fleets: (a) identical
devices, (b) mixed: half of the devices at ``--slow`` (0.4) speed. Every solver gets
``sum(slots) = experts + redundant`` slots (equal on every device), no memory limit, any device a
candidate and up to one replica per device. Balancedness is the per-layer average of
mean/max of speed-normalised device load (:func:`solvers.placement.mean_balancedness`); times are
the median of ``--repeat`` runs.

Targets (from the issue): on identical devices the heuristic within 0.005 of EPLB's
balancedness, on mixed devices >= 0.95, and greedy placement under 50 ms at the default size.
"""

from __future__ import annotations

import argparse

import numpy as np

from models.assignment import ReplicatedAssignment
from solvers import placement  # noqa: F401  (registers the placement solvers)
from solvers.registry import get

SOLVERS = ("eplb", "greedy-placement", "local-search-placement")


def zipf_loads(layers: int, experts: int, *, tokens: int = 4096, top_k: int = 8, zipf: float = 1.0,
               seed: int = 0) -> np.ndarray:
    """[layers, experts] expert choices per layer: Zipf-like popularity, ranking permuted per layer."""
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, experts + 1) ** zipf
    popularity /= popularity.sum()
    return np.stack([rng.multinomial(tokens * top_k, popularity[rng.permutation(experts)]).astype(float)
                     for _ in range(layers)])


def fleet_problem(load: np.ndarray, speed: np.ndarray, redundant: int) -> ReplicatedAssignment:
    layers, experts = load.shape
    devices = speed.size
    if (experts + redundant) % devices:
        raise ValueError(f"{experts} experts + {redundant} redundant slots do not split evenly over {devices} devices")
    return ReplicatedAssignment.build(load, speed, slots=(experts + redundant) // devices, max_replicas=devices)


def measure(problem: ReplicatedAssignment, name: str, repeat: int, seed: int) -> dict:
    info = get(name, problem="assignment")
    times, result = [], None
    for _ in range(repeat):
        result = info.func(problem, seed=seed)
        times.append(result.solve_time_s)
    if result.solution is None:
        return {"solver": name, "status": result.status.value, "mean_balancedness": float("nan"),
                "balancedness": float("nan"), "time_ms": 1e3 * float(np.median(times)), "message": result.message}
    return {"solver": name, "status": result.status.value, "mean_balancedness": result.extra["mean_balancedness"],
            "balancedness": result.extra["balancedness"], "objective": result.objective,
            "time_ms": 1e3 * float(np.median(times)), "stop": result.stop_reason}


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=58)
    ap.add_argument("--experts", type=int, default=256)
    ap.add_argument("--devices", type=int, default=32)
    ap.add_argument("--redundant", type=int, default=32)
    ap.add_argument("--slow", type=float, default=0.4, help="speed of the slow half in the mixed fleet")
    ap.add_argument("--zipf", type=float, default=1.0)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    load = zipf_loads(args.layers, args.experts, zipf=args.zipf, seed=args.seed)
    fast = np.ones(args.devices)
    mixed = np.where(np.arange(args.devices) < args.devices // 2, 1.0, args.slow)
    rows = []
    print(f"{args.layers} layers x {args.experts} experts, {args.devices} devices, {args.redundant} redundant slots, "
          f"zipf {args.zipf}, seed {args.seed}; balancedness = per-layer mean/max of load/speed, averaged")
    print(f"{'fleet':<10} {'solver':<24} {'mean bal.':>9} {'vLLM bal.':>9} {'time ms':>8}  stop")
    for fleet, speed in (("identical", fast), ("mixed", mixed)):
        problem = fleet_problem(load, speed, args.redundant)
        for name in SOLVERS:
            row = {"fleet": fleet, **measure(problem, name, args.repeat, args.seed)}
            rows.append(row)
            print(f"{fleet:<10} {name:<24} {row['mean_balancedness']:>9.4f} {row['balancedness']:>9.4f} "
                  f"{row['time_ms']:>8.1f}  {row.get('stop', row.get('message', ''))}")
    by = {(r["fleet"], r["solver"]): r for r in rows}
    eplb_id = by["identical", "eplb"]["mean_balancedness"]
    print("targets:")
    for name in SOLVERS[1:]:
        gap = eplb_id - by["identical", name]["mean_balancedness"]
        print(f"  {name}: identical within 0.005 of EPLB: {gap <= 0.005} (EPLB - it = {gap:+.4f}); "
              f"mixed >= 0.95: {by['mixed', name]['mean_balancedness'] >= 0.95} "
              f"({by['mixed', name]['mean_balancedness']:.4f})")
    print(f"  greedy-placement under 50 ms: {by['identical', 'greedy-placement']['time_ms'] < 50} "
          f"({by['identical', 'greedy-placement']['time_ms']:.1f} ms identical, "
          f"{by['mixed', 'greedy-placement']['time_ms']:.1f} ms mixed)")
    assert all(np.isfinite(r["mean_balancedness"]) and 0 < r["mean_balancedness"] <= 1 + 1e-9 for r in rows)
    return rows


if __name__ == "__main__":
    main()
