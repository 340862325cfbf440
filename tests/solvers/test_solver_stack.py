"""highspy and OR-Tools must import and solve in one process (highspy 1.15.x + ortools 9.15 clash)."""

import highspy
import pyomo.environ as pyo
from ortools.sat.python import cp_model


def test_highs_and_cpsat_solve_in_one_process():
    m = pyo.ConcreteModel()
    m.x = pyo.Var(domain=pyo.NonNegativeIntegers, bounds=(0, 10))
    m.y = pyo.Var(domain=pyo.NonNegativeIntegers, bounds=(0, 10))
    m.c = pyo.Constraint(expr=2 * m.x + 3 * m.y <= 12)
    m.o = pyo.Objective(expr=3 * m.x + 4 * m.y, sense=pyo.maximize)
    res = pyo.SolverFactory("appsi_highs").solve(m)
    assert str(res.solver.termination_condition) == "optimal"
    assert pyo.value(m.o) == 18  # x = 6, y = 0

    cp = cp_model.CpModel()
    x, y = cp.new_int_var(0, 10, "x"), cp.new_int_var(0, 10, "y")
    cp.add(2 * x + 3 * y <= 12)
    cp.maximize(3 * x + 4 * y)
    solver = cp_model.CpSolver()
    assert solver.solve(cp) == cp_model.OPTIMAL
    assert solver.objective_value == 18

    h = highspy.Highs()
    assert h.version().startswith("1.14")
