"""moeplan: plan Mixture-of-Experts inference across heterogeneous end, edge and cloud devices.

The public API (:mod:`planner.api`), importable from here::

    import planner
    inst = planner.load_instance("instances/default.toml")
    res = planner.solve(inst)                 # route-aware, the default solver
    plan = res.solution                       # a validated Plan with predicted metrics

Sub-packages, each importing only those before it (``docs/architecture.md``): ``domain``
(instances, cards, plans, data files) <- ``cost`` (cost model, profiles, validator) <- ``spaces``
(instances as the generic problems of :mod:`models`) <- ``planners`` (every registered solver, the
re-planner) <- ``sim`` (simulator) <- ``api`` <- ``bench`` <- ``cli``; ``executor`` (the torch
extra) imports ``domain`` and ``cost`` only.
"""

from planner.api import (
                         DEFAULT_SOLVER,
                         Evaluation,
                         Instance,
                         Plan,
                         ReplanResult,
                         Result,
                         SimResult,
                         Status,
                         Violation,
                         available_solvers,
                         capacity_check,
                         compare,
                         evaluate,
                         load_instance,
                         replan,
                         simulate,
                         solve,
                         validate,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_SOLVER", "Evaluation", "Instance", "Plan", "ReplanResult", "Result", "SimResult", "Status", "Violation",
    "available_solvers", "capacity_check", "compare", "evaluate", "load_instance", "replan", "simulate", "solve",
    "validate",
]
