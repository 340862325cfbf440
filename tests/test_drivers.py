"""The generic drivers: solvers.milp (Pyomo + HiGHS) and solvers.cpsat (OR-Tools CP-SAT).

Status mapping on tiny models with known outcomes, a time-limited hard model (market split: equality
knapsacks that branch and bound cannot crack), model export, unknown backends.
"""

import math

import numpy as np
import pyomo.environ as pyo
import pytest
from ortools.sat.python import cp_model

from solvers.cpsat import map_status, solve_cpsat
from solvers.milp import export_model, installed_solvers, solve_pyomo, status_from_termination
from solvers.result import Status

# -- models ---------------------------------------------------------------------------------------


def knapsack_pyomo() -> pyo.ConcreteModel:
    """max 3x + 4y, 2x + 3y <= 12, x, y in 0..10 integer: optimum 18 at x = 6, y = 0 (3/2 per unit of
    x beats 4/3 per unit of y, and 12 / 2 = 6 uses the capacity exactly)."""
    m = pyo.ConcreteModel()
    m.x = pyo.Var(domain=pyo.NonNegativeIntegers, bounds=(0, 10))
    m.y = pyo.Var(domain=pyo.NonNegativeIntegers, bounds=(0, 10))
    m.c = pyo.Constraint(expr=2 * m.x + 3 * m.y <= 12)
    m.o = pyo.Objective(expr=3 * m.x + 4 * m.y, sense=pyo.maximize)
    return m


def market_split(m_rows: int = 5, n: int = 40, seed: int = 1):
    """Cornuejols-Dawande market split data: a in 0..99, d = floor(sum a / 2); almost surely no 0/1
    x meets a x = d exactly, and branch and bound cannot show it for n = 10 (m - 1) and beyond."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 100, size=(m_rows, n))
    return a, a.sum(axis=1) // 2


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


def market_split_cpsat(slack: bool) -> cp_model.CpModel:
    a, d = market_split()
    rows, n = a.shape
    m = cp_model.CpModel()
    x = [m.new_bool_var(f"x{j}") for j in range(n)]
    if slack:
        dev = [m.new_int_var(0, int(a[r].sum()), f"dev{r}") for r in range(rows)]
        for r in range(rows):
            expr = sum(int(a[r, j]) * x[j] for j in range(n)) - int(d[r])
            m.add(dev[r] >= expr)
            m.add(dev[r] >= -expr)
        m.minimize(sum(dev))
    else:
        for r in range(rows):
            m.add(sum(int(a[r, j]) * x[j] for j in range(n)) == int(d[r]))
        m.minimize(sum(x))
    return m


# -- status maps ----------------------------------------------------------------------------------


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


@pytest.mark.parametrize("native, has_solution, hit, expected", [
    ("OPTIMAL", True, False, Status.OPTIMAL),
    ("FEASIBLE", True, True, Status.TIME_LIMIT),
    ("FEASIBLE", True, False, Status.FEASIBLE),
    ("INFEASIBLE", False, False, Status.INFEASIBLE),
    ("MODEL_INVALID", False, False, Status.ERROR),
    ("UNKNOWN", False, True, Status.TIME_LIMIT),
    ("UNKNOWN", False, False, Status.ERROR),
])
def test_cpsat_status_map(native, has_solution, hit, expected):
    assert map_status(native, has_solution=has_solution, hit_time_limit=hit)[0] == expected


# -- HiGHS through Pyomo --------------------------------------------------------------------------


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


# -- CP-SAT ---------------------------------------------------------------------------------------


def test_cpsat_optimal_with_progress():
    m = cp_model.CpModel()
    x, y = m.new_int_var(0, 10, "x"), m.new_int_var(0, 10, "y")
    m.add(2 * x + 3 * y <= 12)
    m.maximize(3 * x + 4 * y)
    lines = []
    solver, out = solve_cpsat(m, sense="max", progress=lines.append)
    assert out.status == Status.OPTIMAL and out.objective == 18 and out.bound == 18
    assert solver.value(x) == 6 and lines and lines[-1].startswith("incumbent 18 bound 18")


def test_cpsat_infeasible():
    m = cp_model.CpModel()
    x = m.new_int_var(0, 1, "x")
    m.add(x >= 2)
    m.minimize(x)
    _, out = solve_cpsat(m)
    assert out.status == Status.INFEASIBLE and not out.has_solution and math.isnan(out.bound)


def test_cpsat_model_invalid_is_an_error_with_the_validation_message():
    m = cp_model.CpModel()
    x, y = m.new_int_var(0, 10, "x"), m.new_int_var(0, 10, "y")
    m.add_division_equality(x, y, 0)
    m.minimize(x)
    _, out = solve_cpsat(m)
    assert out.status == Status.ERROR and "Division by 0" in out.stop_reason


def test_cpsat_time_limit_with_incumbent_and_bound():
    _, out = solve_cpsat(market_split_cpsat(slack=True), time_limit=0.5)
    assert out.status == Status.TIME_LIMIT and out.native_status == "FEASIBLE"
    assert out.objective >= out.bound >= 0


def test_cpsat_time_limit_without_incumbent():
    _, out = solve_cpsat(market_split_cpsat(slack=False), time_limit=0.3)
    assert out.status == Status.TIME_LIMIT and out.native_status == "UNKNOWN" and not out.has_solution


def test_cpsat_same_seed_same_result():
    m = market_split_cpsat(slack=True)
    runs = [solve_cpsat(m, seed=3, parameters={"max_deterministic_time": 0.05})[1] for _ in range(2)]
    assert runs[0].status == Status.FEASIBLE  # stopped by the deterministic limit, not by time
    assert runs[0].objective == runs[1].objective


def test_cpsat_hint_is_the_first_solution():
    a, d = market_split()
    m = market_split_cpsat(slack=True)
    x = np.zeros(a.shape[1], dtype=int)
    x[::3] = 1
    variables = [m.get_bool_var_from_proto_index(j) for j in range(a.shape[1])]
    dev = [m.get_int_var_from_proto_index(a.shape[1] + r) for r in range(a.shape[0])]
    gaps = np.abs(a @ x - d)
    hint = list(zip(variables, x)) + list(zip(dev, gaps))
    _, out = solve_cpsat(m, hint=hint, parameters={"stop_after_first_solution": True})
    assert out.objective == gaps.sum()


def test_cpsat_rejects_unknown_parameter_and_sense_mismatch():
    m = cp_model.CpModel()
    x = m.new_int_var(0, 3, "x")
    m.minimize(x)
    with pytest.raises(ValueError, match="no parameter"):
        solve_cpsat(m, parameters={"no_such_parameter": 1})
    with pytest.raises(ValueError, match="sense"):
        solve_cpsat(m, sense="max")
