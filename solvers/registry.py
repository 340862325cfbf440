"""Solvers by name.

A solver is a callable ``f(problem, *, time_limit=None, seed=0, **options) -> Result``. Modules
register theirs with :func:`register`; :func:`get` raises ``ValueError`` naming the known solvers
for an unknown name. Optional backends are imported only when their solver is chosen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

KINDS = ("baseline", "exact", "heuristic")


@dataclass(frozen=True)
class SolverInfo:
    name: str
    kind: str
    problem: str  # what the callable takes, e.g. "instance"
    func: Callable
    description: str


_REGISTRY: dict[str, SolverInfo] = {}


def register(name: str, *, kind: str, problem: str, description: str = ""):
    """Decorator: register ``func`` under ``name``."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")

    def wrap(func: Callable) -> Callable:
        if name in _REGISTRY and _REGISTRY[name].func is not func:
            raise ValueError(f"solver {name!r} is registered twice")
        _REGISTRY[name] = SolverInfo(name, kind, problem, func, description or (func.__doc__ or "").strip().split("\n")[0])
        return func

    return wrap


def get(name: str, *, problem: str | None = None) -> SolverInfo:
    info = _REGISTRY.get(name)
    if info is None or (problem is not None and info.problem != problem):
        names = ", ".join(available(problem=problem)) or "(none)"
        raise ValueError(f"unknown solver {name!r}; available: {names}")
    return info


def available(*, problem: str | None = None, kind: str | None = None) -> list[str]:
    return sorted(n for n, i in _REGISTRY.items()
                  if (problem is None or i.problem == problem) and (kind is None or i.kind == kind))
