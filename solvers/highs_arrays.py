"""Solve a linear program or MILP given as arrays with HiGHS (highspy), quietly.

For models built as matrices (the plan-space bound's relaxations) rather than as Pyomo models
(:mod:`solvers.milp`): ``min c x`` subject to ``row_lower <= A x <= row_upper``,
``col_lower <= x <= col_upper``, ``x[j]`` integer where ``integrality[j]``. HiGHS's output is off
(scipy's bundled HiGHS prints debug lines on stdout that would break ``--json``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import highspy
import numpy as np
from scipy.sparse import csc_matrix

from solvers.result import Status


@dataclass(frozen=True)
class ArraySolution:
    """``status``: OPTIMAL, INFEASIBLE, TIME_LIMIT or ERROR; ``objective`` (NaN without a solution),
    ``dual_bound`` (a MILP's best bound, the objective for an LP; NaN when unknown), ``x``."""

    status: Status
    objective: float
    dual_bound: float
    x: np.ndarray | None
    message: str


def solve_arrays(c: np.ndarray, A, row_lower: np.ndarray, row_upper: np.ndarray, col_lower: np.ndarray,
                 col_upper: np.ndarray, integrality: np.ndarray | None = None, *,
                 time_limit: float | None = None) -> ArraySolution:
    """Minimise ``c x`` over the rows and columns given (infinite bounds as ``+-inf``)."""
    A = csc_matrix(A)
    n = len(c)
    lp = highspy.HighsLp()
    lp.num_col_ = n
    lp.num_row_ = A.shape[0]
    lp.col_cost_ = np.asarray(c, dtype=float)
    lp.col_lower_ = np.asarray(col_lower, dtype=float)
    lp.col_upper_ = np.asarray(col_upper, dtype=float)
    lp.row_lower_ = np.asarray(row_lower, dtype=float)
    lp.row_upper_ = np.asarray(row_upper, dtype=float)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = A.indptr.astype(np.int32)
    lp.a_matrix_.index_ = A.indices.astype(np.int32)
    lp.a_matrix_.value_ = A.data.astype(float)
    mip = integrality is not None and bool(np.any(integrality))
    if mip:
        lp.integrality_ = [highspy.HighsVarType.kInteger if v else highspy.HighsVarType.kContinuous for v in integrality]
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    if time_limit is not None:
        h.setOptionValue("time_limit", max(float(time_limit), 1e-3))
    h.passModel(lp)
    h.run()
    status = h.getModelStatus()
    info = h.getInfo()
    has_x = info.primal_solution_status == highspy.kSolutionStatusFeasible
    x = np.array(h.getSolution().col_value) if has_x else None
    objective = float(info.objective_function_value) if has_x else math.nan
    dual = float(info.mip_dual_bound) if mip else objective
    if status == highspy.HighsModelStatus.kOptimal:
        return ArraySolution(Status.OPTIMAL, objective, objective if not mip else dual, x, "optimal")
    if status == highspy.HighsModelStatus.kInfeasible:
        return ArraySolution(Status.INFEASIBLE, math.nan, math.nan, None, "infeasible")
    if status == highspy.HighsModelStatus.kTimeLimit:
        return ArraySolution(Status.TIME_LIMIT, objective, dual if math.isfinite(dual) else math.nan, x, "time limit")
    return ArraySolution(Status.ERROR, objective, math.nan, x, f"HiGHS model status {h.modelStatusToString(status)}")
