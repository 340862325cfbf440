"""The CP-SAT driver: every status mapped, bounds, hints, seeds, invalid models explained."""

import math

import numpy as np
import pytest
from ortools.sat.python import cp_model

from solvers.cpsat import map_status, solve_cpsat
from solvers.result import Status
from tests.helpers import market_split


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


def test_cpsat_unknown_before_the_time_limit_says_what_the_solver_reported():
    """A limit other than time (here a tiny deterministic time) gives UNKNOWN: the message carries
    CP-SAT's own words (solution_info, else its first statistics line), not a method's repr."""
    _, out = solve_cpsat(market_split_cpsat(False), time_limit=100.0, parameters={"max_deterministic_time": 1e-6})
    assert out.status == Status.ERROR and out.native_status == "UNKNOWN"
    assert out.stop_reason.startswith("CP-SAT stopped with status UNKNOWN before the time limit: CpSolverResponse")
    assert "bound method" not in out.stop_reason


def test_cpsat_time_limit_with_incumbent_and_bound():
    _, out = solve_cpsat(market_split_cpsat(slack=True), time_limit=0.5)
    assert out.status == Status.TIME_LIMIT and out.native_status == "FEASIBLE"
    assert out.objective >= out.bound >= 0


def test_cpsat_time_limit_without_incumbent():
    _, out = solve_cpsat(market_split_cpsat(slack=False), time_limit=0.3)
    assert out.status == Status.TIME_LIMIT and out.native_status == "UNKNOWN" and not out.has_solution


@pytest.mark.parametrize("time_limit", [0.005, 0.02, 0.05])
def test_cpsat_stopping_just_short_of_a_tight_time_limit_is_a_time_limit(time_limit):
    """CP-SAT stops before its limit when its next step would overrun it (often at 80 % of a 20 ms
    limit): with no other stopping parameter that is the time limit, never an error."""
    for _ in range(5):
        _, out = solve_cpsat(market_split_cpsat(slack=False), time_limit=time_limit)
        assert out.status == Status.TIME_LIMIT, out.stop_reason
        _, out = solve_cpsat(market_split_cpsat(slack=True), time_limit=time_limit)
        assert out.status in (Status.TIME_LIMIT, Status.OPTIMAL), out.stop_reason


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
