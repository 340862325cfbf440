"""Exact dynamic programming for chain partition (:mod:`models.chain`).

A solution is a path through states ``(k, d)``: "items ``0 .. k - 1`` are placed and the last stage,
on device ``d``, ends at item ``k``". Two tables over boundaries ``k = 0 .. L`` and devices ``d``:

    arrive[k, d]  best value of items 0 .. k-1 placed with the next stage starting at k on d
                  (k = 0: the entry term of d; k > 0: min over p < d of f[k, p] (+) cut(p, d, k-1))
    f[k, d]       best value with a stage on d ending at k
                  = min over j < k of arrive[j, d] (+) stage(d, j, k)
    optimum       min over d of f[L, d] (+) exit(d)

where ``(+)`` is ``max`` for the bottleneck objective (terms are busy times) and ``+`` for the latency
objective (terms are latencies). Device order holds because a cut goes from ``p`` to ``d > p`` only.
Memory and the cap ``max_bottleneck`` are conditions on a single stage, cut, entry or exit, so they
are applied exactly as filters on transitions: a transition whose stage memory exceeds the capacity,
or whose busy time (stage time, cut busy, entry busy, exit busy) exceeds the cap, is left out. Hence
both objectives are solved exactly with the cap (the latency objective under a throughput floor is a
shortest path in a filtered DAG; the bottleneck objective a min-max path in the same DAG).

Complexity: splitting the transition through ``arrive`` gives O(L^2 D + L D^2) time (instead of
the O(L^2 D^2) of trying every previous stage) and O(L D) memory; each boundary ``k`` is one
vectorised step over ``j`` and ``d``, then one over ``(p, d)``.

The bottleneck objective is solved lexicographically: the least bottleneck ``B*`` first, then the
least latency among solutions with bottleneck ``<= B*`` (one more latency DP with the cap
``min(max_bottleneck, B*)``), which is exact because both DPs share their stage times with
:func:`models.chain.evaluate` bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from models.chain import ChainPartition, Stage

_STAGE_TABLE_MAX = 2_000_000  # entries of the [D, L + 1, L + 1] stage table built at once


@dataclass(frozen=True)
class _Tables:
    f: np.ndarray           # [L + 1, D]  best value with a stage on d ending at k (inf: unreachable)
    from_item: np.ndarray   # [L + 1, D]  start j of that stage
    from_device: np.ndarray  # [L + 1, D] device p before a stage starting at k on d (-1: entry)
    value: float            # optimum (inf: infeasible)
    last: int               # device of the last stage of an optimum (-1: none)


def _forward(problem: ChainPartition, objective: str, cap: float, use_memory: bool = True) -> _Tables:
    """Fill the DP tables for ``objective`` ("bottleneck" or "latency") under the busy-time cap ``cap``."""
    D, L = problem.shape
    combine = np.maximum if objective == "bottleneck" else np.add
    cut = problem.transfer_busy if objective == "bottleneck" else problem.transfer_latency
    entry = problem.entry_busy if objective == "bottleneck" else problem.entry_latency
    exit_ = problem.exit_busy if objective == "bottleneck" else problem.exit_latency
    P, M = problem.compute_prefix, problem.memory_prefix
    capacity = problem.capacity if use_memory else np.full(D, np.inf)
    forward_cut = np.triu(np.ones((D, D), dtype=bool), k=1)  # p < d

    arrive = np.full((L + 1, D), np.inf)
    arrive[0] = np.where(problem.entry_busy <= cap, entry, np.inf)
    from_device = np.full((L + 1, D), -1, dtype=int)
    f = np.full((L + 1, D), np.inf)
    from_item = np.full((L + 1, D), -1, dtype=int)
    rows = np.arange(D)
    cut_ok = forward_cut[:, :, None] & (problem.transfer_busy <= cap)                    # [p, d, l]
    cut_vals = np.where(cut_ok, cut, np.inf)
    # Stage times [d, j, k] of every stage [j, k), inf where it breaks memory or the cap: computed
    # at once when that table is small, else per boundary k (the same values either way).
    table = None
    if D * (L + 1) ** 2 <= _STAGE_TABLE_MAX:
        T, fitting = _stage_table(problem, capacity, use_memory)
        table = fitting if cap == np.inf else np.where(T <= cap, fitting, np.inf)
    for k in range(1, L + 1):
        # Step 1: best stage on each d ending at k, over starts j < k.
        if table is not None:
            vals = combine(arrive[:k].T, table[:, :k, k])                     # inf stays inf
        else:
            time = P[:, k:k + 1] - P[:, :k]                                    # [D, k]
            ok = (M[:, k:k + 1] - M[:, :k] <= capacity[:, None]) & (time <= cap)
            vals = np.where(ok, combine(arrive[:k].T, time), np.inf)
        best = vals.argmin(axis=1)
        from_item[k] = best
        f[k] = vals[rows, best]
        if k == L:
            break
        # Step 2: the cut after item k - 1 from p to d > p.
        vals = combine(f[k][:, None], cut_vals[:, :, k - 1])                   # [p, d]
        best = vals.argmin(axis=0)
        from_device[k] = best
        arrive[k] = vals[best, rows]
    final = np.where(problem.exit_busy <= cap, combine(f[L], exit_), np.inf)
    last = int(np.argmin(final))
    value = float(final[last])
    return _Tables(f, from_item, from_device, value, last if math.isfinite(value) else -1)


_RECENT_TABLES: dict = {}  # (id(problem), use_memory) -> (problem, T, T where memory fits): the last few


def _stage_table(problem: ChainPartition, capacity: np.ndarray, use_memory: bool) -> tuple[np.ndarray, np.ndarray]:
    """Stage times T [d, j, k] of every stage [j, k) and the same with +inf where the stage breaks
    memory, remembered per (frozen) problem: the DPs of one problem under several caps share them."""
    key = (id(problem), use_memory)
    hit = _RECENT_TABLES.get(key)
    if hit is not None and hit[0] is problem:
        return hit[1], hit[2]
    P, M = problem.compute_prefix, problem.memory_prefix
    T = P[:, None, :] - P[:, :, None]
    fitting = np.where((M[:, None, :] - M[:, :, None] <= capacity[:, None, None]) & (T <= np.inf), T, np.inf)  # NaN: inf
    _RECENT_TABLES[key] = (problem, T, fitting)  # the entry keeps the problem alive: its id is not reused
    while len(_RECENT_TABLES) > 4:
        _RECENT_TABLES.pop(next(iter(_RECENT_TABLES)))
    return T, fitting


def _backtrack(t: _Tables) -> list[Stage]:
    stages = []
    k, d = t.f.shape[0] - 1, t.last
    while True:
        j = int(t.from_item[k, d])
        stages.append(Stage(d, j, k))
        if j == 0:
            return stages[::-1]
        k, d = j, int(t.from_device[j, d])


def best_stages(problem: ChainPartition, objective: str | None = None, cap: float | None = None, *,
                tie_break: bool = True) -> list[Stage] | None:
    """An optimal solution for ``objective`` (default: the problem's) under the cap ``cap`` (default:
    ``problem.max_bottleneck``), or None when none exists. Bottleneck ties go to the least latency
    (one more DP) unless ``tie_break`` is False (then: any solution of least bottleneck)."""
    objective = objective or problem.objective
    cap = problem.max_bottleneck if cap is None else cap
    if objective == "bottleneck":
        t = _forward(problem, "bottleneck", cap)
        if not math.isfinite(t.value):
            return None
        if not tie_break:
            return _backtrack(t)
        cap = min(cap, t.value)
    t = _forward(problem, "latency", cap)
    return _backtrack(t) if math.isfinite(t.value) else None


def best_bottleneck(problem: ChainPartition, *, use_memory: bool = True) -> float:
    """The least bottleneck (s) ignoring the cap (and memory if not ``use_memory``); inf if none."""
    return _forward(problem, "bottleneck", math.inf, use_memory).value


def infeasibility_reason(problem: ChainPartition) -> str | None:
    """Which constraint family makes the problem infeasible, with numbers; None if it is feasible."""
    D, L = problem.shape
    t = _forward(problem, "bottleneck", math.inf)
    if not math.isfinite(t.value):
        need = float(problem.memory.min(axis=0).sum())
        have = float(problem.capacity.sum())
        if need > have:
            return f"memory binds: the items need {need:.4g} in all (each on its smallest-memory device), the devices hold {have:.4g}"
        fits = problem.memory <= problem.capacity[:, None]
        for l in np.nonzero(~fits.any(axis=0))[0]:
            return (f"memory binds: item {l} needs at least {problem.memory[:, l].min():.4g}, "
                    f"the largest capacity is {problem.capacity.max():.4g}")
        placed = int(np.max(np.nonzero(np.isfinite(t.f).any(axis=1))[0], initial=0))
        return (f"memory binds: at most the first {placed} of {L} items fit in contiguous stages on devices in path "
                f"order (the items need {need:.4g} in all, the devices hold {have:.4g})")
    if t.value > problem.max_bottleneck:
        return (f"the throughput floor binds: the best bottleneck without it is {t.value:.6g} s "
                f"> cap {problem.max_bottleneck:.6g} s")
    return None
