"""The Pyomo + HiGHS driver: every termination mapped, bounds, warm starts, progress, export."""

import math

import numpy as np
import pyomo.environ as pyo
import pytest

from solvers.milp import export_model, installed_solvers, solve_pyomo, status_from_termination
from solvers.result import Status
from tests.helpers import market_split


def knapsack_pyomo() -> pyo.ConcreteModel:
    """max 3x + 4y, 2x + 3y <= 12, x, y in 0..10 integer: optimum 18 at x = 6, y = 0 (3/2 per unit of
    x beats 4/3 per unit of y, and 12 / 2 = 6 uses the capacity exactly)."""
    m = pyo.ConcreteModel()
    m.x = pyo.Var(domain=pyo.NonNegativeIntegers, bounds=(0, 10))
    m.y = pyo.Var(domain=pyo.NonNegativeIntegers, bounds=(0, 10))
    m.c = pyo.Constraint(expr=2 * m.x + 3 * m.y <= 12)
    m.o = pyo.Objective(expr=3 * m.x + 4 * m.y, sense=pyo.maximize)
    return m


def market_split_pyomo(slack: bool) -> pyo.ConcreteModel:
    """With ``slack``: min sum |a x - d| (x = 0 is an incumbent, the LP bound is 0). Without: the
    feasibility version (min sum x subject to a x = d), with no incumbent to find."""
    a, d = market_split()
    rows, n = a.shape
    m = pyo.ConcreteModel()
    m.x = pyo.Var(range(n), domain=pyo.Binary)
    if slack:
        m.up = pyo.Var(range(rows), domain=pyo.NonNegativeReals)
        m.down = pyo.Var(range(rows), domain=pyo.NonNegativeReals)
        m.rows = pyo.Constraint(range(rows), rule=lambda m, r: sum(int(a[r, j]) * m.x[j] for j in range(n))
                                + m.up[r] - m.down[r] == int(d[r]))
        m.o = pyo.Objective(expr=sum(m.up[r] + m.down[r] for r in range(rows)))
    else:
        m.rows = pyo.Constraint(range(rows), rule=lambda m, r: sum(int(a[r, j]) * m.x[j] for j in range(n)) == int(d[r]))
        m.o = pyo.Objective(expr=sum(m.x[j] for j in range(n)))
    return m


@pytest.mark.parametrize("condition, has_solution, expected", [
    ("optimal", True, Status.OPTIMAL),
    ("maxTimeLimit", True, Status.TIME_LIMIT),
    ("maxTimeLimit", False, Status.TIME_LIMIT),
    ("infeasible", False, Status.INFEASIBLE),
    ("unbounded", False, Status.ERROR),
    ("infeasibleOrUnbounded", False, Status.ERROR),
    ("maxIterations", True, Status.FEASIBLE),
    ("maxIterations", False, Status.ERROR),
    ("unknown", False, Status.ERROR),
    ("error", False, Status.ERROR),
])
def test_pyomo_termination_map(condition, has_solution, expected):
    status, reason = status_from_termination(condition, has_solution)
    assert status == expected and reason
    if condition == "unknown":
        assert "unknown" in reason  # named, never passed off as a time limit


def test_highs_optimal_loads_solution_and_bound():
    m = knapsack_pyomo()
    out = solve_pyomo(m, sense="max")
    assert out.status == Status.OPTIMAL and out.native_status == "optimal"
    assert out.objective == 18 and out.bound == pytest.approx(18)
    assert (m.x.value, m.y.value) == (pytest.approx(6), pytest.approx(0))
    assert out.solver_name == "highs" and out.solver_version.startswith("1.14")


def test_highs_infeasible():
    m = pyo.ConcreteModel()
    m.x = pyo.Var(domain=pyo.Binary)
    m.c = pyo.Constraint(expr=m.x >= 2)
    m.o = pyo.Objective(expr=m.x)
    out = solve_pyomo(m)
    assert out.status == Status.INFEASIBLE and not out.has_solution and math.isnan(out.objective)


def test_highs_unbounded_is_an_error():
    m = pyo.ConcreteModel()
    m.x = pyo.Var(domain=pyo.Reals)
    m.c = pyo.Constraint(expr=m.x <= 3)
    m.o = pyo.Objective(expr=m.x)
    out = solve_pyomo(m)
    assert out.status == Status.ERROR and "unbounded" in out.stop_reason


def test_highs_time_limit_with_incumbent_and_bound():
    out = solve_pyomo(market_split_pyomo(slack=True), time_limit=0.5)
    assert out.status == Status.TIME_LIMIT and out.native_status == "maxTimeLimit"
    assert out.has_solution and out.objective >= out.bound >= 0


def test_highs_time_limit_without_incumbent():
    out = solve_pyomo(market_split_pyomo(slack=False), time_limit=0.3)
    assert out.status == Status.TIME_LIMIT and not out.has_solution
    assert "before any feasible solution" in out.stop_reason


def test_highs_warm_start_is_used():
    """x = 0 except the warm start: a solution of the slack model whose objective HiGHS keeps."""
    m = market_split_pyomo(slack=True)
    a, d = market_split()
    x = np.zeros(a.shape[1])
    x[: a.shape[1] // 2] = 1
    for j, v in enumerate(x):
        m.x[j].set_value(v)
    dev = a @ x - d
    for r, v in enumerate(dev):
        m.up[r].set_value(max(-v, 0))
        m.down[r].set_value(max(v, 0))
    out = solve_pyomo(m, time_limit=0.3, warm_start=True)
    assert out.has_solution and out.objective <= np.abs(dev).sum() + 1e-9


def test_highs_progress_lines():
    lines = []
    out = solve_pyomo(market_split_pyomo(slack=True), time_limit=0.3, progress=lines.append)
    assert out.has_solution and lines and all(line.startswith("incumbent ") for line in lines)


def test_sense_mismatch_and_bad_time_limit():
    with pytest.raises(ValueError, match="sense"):
        solve_pyomo(knapsack_pyomo(), sense="min")
    with pytest.raises(ValueError, match="time_limit"):
        solve_pyomo(knapsack_pyomo(), sense="max", time_limit=0)


@pytest.mark.parametrize("name", ["cbc", "no-such-solver"])
def test_unknown_backend_names_the_installed_ones(name):
    if name in installed_solvers():
        pytest.skip(f"{name} is installed here")
    with pytest.raises(ValueError, match=rf"solver '{name}' is not installed; available: highs"):
        solve_pyomo(knapsack_pyomo(), solver=name, sense="max")


@pytest.mark.parametrize("suffix, marker", [(".lp", "max"), (".mps", "ROWS")])
def test_export_writes_lp_and_mps(tmp_path, suffix, marker):
    path = export_model(knapsack_pyomo(), tmp_path / f"knapsack{suffix}")
    text = path.read_text()
    assert marker in text and "x" in text and "12" in text


def test_export_rejects_other_suffixes(tmp_path):
    with pytest.raises(ValueError, match=r"\.lp, \.mps"):
        export_model(knapsack_pyomo(), tmp_path / "knapsack.nl")
