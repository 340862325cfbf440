"""One result type for every solver, exact or heuristic.

Why the solver stopped (``status``, ``stop_reason``) is kept apart from what it found
(``solution``, ``objective``, ``bound``, ``gap``). No solution is a status, never an exception.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Status(str, Enum):
    OPTIMAL = "optimal"          # solution proven optimal (within the requested gap)
    FEASIBLE = "feasible"        # a solution, optimality not proven (heuristics, baselines)
    INFEASIBLE = "infeasible"    # proven that no solution exists (or none exists in the solver's space)
    TIME_LIMIT = "time_limit"    # stopped by the time limit; ``solution`` holds the incumbent if any
    ERROR = "error"              # the solver failed; ``message`` says why


@dataclass
class Result:
    """Outcome of one solve.

    ``objective``: value of ``solution`` (NaN without one). ``bound``: best proven bound on the
    optimum (NaN when the solver proves none). ``gap``: ``|objective - bound| / max(|objective|, 1e-12)``,
    NaN without both. ``sense``: ``"max"`` or ``"min"``.
    """

    status: Status
    solver: str
    objective: float = math.nan
    bound: float = math.nan
    solve_time_s: float = 0.0
    solution: Any = None
    message: str = ""
    sense: str = "max"
    solver_version: str = ""
    stop_reason: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def gap(self) -> float:
        if math.isnan(self.objective) or math.isnan(self.bound):
            return math.nan
        return abs(self.objective - self.bound) / max(abs(self.objective), 1e-12)

    @property
    def has_solution(self) -> bool:
        return self.solution is not None


@dataclass
class SolveOutcome:
    """Why one backend solve (a MILP or a CP-SAT model) stopped and what it found.

    ``objective``: incumbent value (NaN without one). ``bound``: best proven bound on the optimum
    (lower for "min", upper for "max"; NaN when none is known). ``solve_time_s``: the solver's own
    time. ``stop_reason``: a readable sentence; ``native_status``: the solver's own termination status.
    """

    status: Status
    objective: float
    bound: float
    solve_time_s: float
    solver_name: str
    solver_version: str
    stop_reason: str
    native_status: str

    @property
    def has_solution(self) -> bool:
        return not math.isnan(self.objective)
