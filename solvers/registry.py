"""Solvers by problem type and name.

A solver is a callable ``f(problem, *, time_limit=None, seed=0, **options) -> Result``. Modules
register theirs with :func:`register` under a problem type ("instance", "assignment", "chain", ...)
and a name; the same name (``milp``, say) may exist for several problem types. :func:`get` raises
``ValueError`` naming the known solvers for an unknown name. Optional backends are imported only
when their solver is chosen.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

KINDS = ("baseline", "exact", "heuristic")


@dataclass(frozen=True)
class SolverInfo:
    name: str
    kind: str
    problem: str  # what the callable takes, e.g. "instance"
    func: Callable
    description: str


_REGISTRY: dict[tuple[str, str], SolverInfo] = {}


def register(name: str, *, kind: str, problem: str, description: str = ""):
    """Decorator: register ``func`` as solver ``name`` for problems of type ``problem``."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")

    def wrap(func: Callable) -> Callable:
        key = (problem, name)
        if key in _REGISTRY and _REGISTRY[key].func is not func:
            raise ValueError(f"solver {name!r} for {problem!r} problems is registered twice")
        _REGISTRY[key] = SolverInfo(name, kind, problem, func, description or (func.__doc__ or "").strip().split("\n")[0])
        return func

    return wrap


def get(name: str, *, problem: str) -> SolverInfo:
    """The solver ``name`` for problems of type ``problem``; ``ValueError`` listing the known ones otherwise."""
    info = _REGISTRY.get((problem, name))
    if info is None:
        names = ", ".join(available(problem=problem)) or "(none)"
        raise ValueError(f"unknown solver {name!r}; available: {names}")
    return info


def available(*, problem: str | None = None, kind: str | None = None) -> list[str]:
    return sorted({n for (p, n), i in _REGISTRY.items()
                   if (problem is None or p == problem) and (kind is None or i.kind == kind)})
