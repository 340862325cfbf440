"""Plan the default instance with the route-aware heuristic and every baseline, one line each.

Run: python examples/solve_default.py
"""

from pathlib import Path

import planner

ROOT = Path(__file__).resolve().parents[1]


def main(instance_path: Path = ROOT / "instances" / "default.toml") -> dict:
    inst = planner.load_instance(instance_path)
    names = ["route-aware", "cloud-only", "end-only", "single-cut", "proportional"]
    results = {name: planner.solve(inst, name) for name in names}
    for name, res in results.items():
        tps = res.solution.metrics["throughput_tokens_per_s"] if res.solution else float("nan")
        print(f"{name:14s} {res.status.value:11s} {tps:8.1f} tokens/s  {res.message[:70]}")
    best = max((r for r in results.values() if r.solution), key=lambda r: r.objective)
    assert planner.validate(inst, best.solution) == []
    # The heuristic's space contains every single-cut plan.
    assert results["route-aware"].objective >= results["single-cut"].objective * (1 - 1e-9)
    return results


if __name__ == "__main__":
    main()
