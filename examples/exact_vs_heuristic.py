"""Solve one instance exactly and with the route-aware heuristic, and print the gap.

Run: python examples/exact_vs_heuristic.py [INSTANCE.toml]
"""

import sys
from pathlib import Path

import planner

ROOT = Path(__file__).resolve().parents[1]


def main(instance_path: Path = ROOT / "instances" / "switch-nano-t4-wifi.toml") -> tuple:
    inst = planner.load_instance(instance_path)
    exact = planner.solve(inst, "milp")
    fast = planner.solve(inst, "route-aware")
    gap = abs(fast.objective - exact.objective) / abs(exact.objective)
    print(f"{inst.name}: objective {inst.objective}")
    print(f"  milp        {exact.status.value:8s} {exact.objective:.6g} (bound {exact.bound:.6g}) in {exact.solve_time_s:.2f} s")
    print(f"  route-aware {fast.status.value:8s} {fast.objective:.6g} in {fast.solve_time_s * 1e3:.1f} ms; gap {gap:.2%}")
    assert exact.status.value == "optimal"
    assert planner.validate(inst, exact.solution) == [] and planner.validate(inst, fast.solution) == []
    return exact, fast


if __name__ == "__main__":
    main(*(Path(a) for a in sys.argv[1:2]))
