"""Solver ``dp``: exact pipeline stage partitioning over an ordered device path, by dynamic programming.

The space, the path and the DP are described in :mod:`planner.spaces.chain`; this module runs the
DP over the batching grid and returns the best valid plan, with the DP's optimum as its bound.
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np

from planner.cost.costmodel import CostModel
from planner.cost.evaluation import is_better
from planner.cost.validator import evaluate_checked, validate
from planner.domain.instance import Instance
from planner.domain.units import GB
from planner.spaces.batching import batch_grid
from planner.spaces.chain import (
    AGREE_TOL,
    ChainTerms,
    best_latency,
    best_period,
    chain_problem,
    chain_terms,
    check_path,
    plan_from_stages,
    to_objective,
    trim_path,
)
from solvers import dp
from solvers.registry import register
from solvers.result import Result, Status


def _memory_message(terms: ChainTerms, reason: str) -> str:
    """The chain solver's explanation in the instance's words: layers, device names, GB."""
    text = reason.replace("the items", "the layers").replace("item ", "layer ").replace(" items", " layers")
    usable = ", ".join(f"{n} {c / GB:.4g} GB" for n, c in zip(terms.path, terms.capacity))
    return (f"infeasible on path {' -> '.join(terms.path)} even at micro-batch {terms.micro_batch_size} x "
            f"{terms.num_micro_batches}: {text} (bytes); memory left per device after the "
            f"{terms.workspace_bytes / GB:.3g} GB prefill workspace: {usable}")


def _slo_message(path, b: int, mb: int, least_latency_s: float, slo_s: float) -> str:
    """Why a batching with room in memory has no plan: its least request latency is over the SLO (s)."""
    return (f"infeasible: the latency SLO binds: the least request latency over path "
            f"{list(path)} at micro-batch {b} x {mb} is {least_latency_s * 1e3:.6g} ms "
            f"> SLO {slo_s * 1e3:.6g} ms")


def _solve_grid(instance: Instance, cm: CostModel, path, kind: str, deadline: float | None, grid_devices: int):
    """The chain DP at every batching ``(b, mb)`` of the grid (``batch_grid`` for ``grid_devices``
    devices), in grid order, until ``deadline`` (``time.perf_counter()`` seconds, None for none).

    Returns ``(found, failures, timed_out, dp_runs)``: ``found`` lists ``(DP value in objective
    units, plan, optimum)`` per solved batching, ``failures`` lists ``(concurrency b * mb, message)``
    per batching without a plan, ``timed_out`` whether the deadline cut the grid short, and
    ``dp_runs`` the DP runs of the solved batchings."""
    slo_s = instance.constraints.latency_slo_s
    slo = math.inf if slo_s is None else slo_s * (1 + 1e-9)  # the validator's tolerance
    found = []
    failures = []
    timed_out = False
    runs = 0
    for b, mb in batch_grid(instance.workload.max_batch, grid_devices):
        if deadline is not None and time.perf_counter() > deadline:
            timed_out = True
            break
        terms = chain_terms(cm, path, b, mb)
        problem = chain_problem(terms, kind)
        opt = best_period(problem, terms, slo) if kind == "throughput" else best_latency(problem, terms, slo)
        if opt is None:
            # Memory is the first suspect; only when some partition fits does the SLO get the blame.
            least = best_latency(chain_problem(terms, "latency"), terms)
            if least is None:
                reason = dp.infeasibility_reason(problem) or "memory binds"
                failures.append((b * mb, _memory_message(terms, reason)))
            else:
                failures.append((b * mb, _slo_message(path, b, mb, least.latency_s, slo_s)))
            continue
        runs += opt.dp_runs
        found.append((to_objective(instance, opt.value_s), plan_from_stages(instance, terms, opt.stages), opt))
    return found, failures, timed_out, runs


def _best_valid(instance: Instance, cm: CostModel, kind: str, found: list):
    """The best of ``found`` by the cost model's objective among the plans the validator accepts.

    The DP values are exact for latency and memory and an optimistic bound where links are shared
    (module docstring), so plans are ranked by the cost model's value, the first of equals winning.
    Returns ``(best, rejected)``: ``best`` is ``(objective, DP value, plan, optimum)`` or None,
    ``rejected`` one line per plan the validator refused."""
    best, rejected = None, []
    for value, plan, opt in found:
        broken = validate(instance, plan, cm)
        if broken:
            rejected.append(f"{plan.pipelines[0].micro_batch_size}x{plan.pipelines[0].num_micro_batches}: {broken[0]}")
            continue
        true = cm.evaluate(plan).objective(kind)
        if best is None or is_better(kind, true, best[0]):
            best = (true, value, plan, opt)
    return best, rejected


def _status_and_stop(true: float, bound: float, timed_out: bool) -> tuple[Status, str]:
    """Status and stop reason of the chosen plan of objective ``true`` against the DP's ``bound``."""
    agree = abs(true - bound) <= AGREE_TOL * max(abs(bound), 1e-300) if math.isfinite(bound) else False
    status = Status.TIME_LIMIT if timed_out else (Status.OPTIMAL if agree else Status.FEASIBLE)
    if status is Status.OPTIMAL:
        stop = "the DP is exact over its space"
    elif timed_out:
        stop = "time limit"
    else:
        stop = ("the DP's optimum is an upper bound here: a shared link or a TTFT / TPOT SLO makes the cost model's "
                "value of its plan worse")
    return status, stop


@register("dp", kind="exact", problem="instance")
def chain_dp(instance: Instance, *, time_limit: float | None = None, seed: int = 0, cost_model: CostModel | None = None,
             path=None, **_) -> Result:
    """Exact pipeline stage partitioning over an ordered device path (experts home, no codec)."""
    t0 = time.perf_counter()
    kind = instance.objective
    sense = "max" if kind == "throughput" else "min"
    version = f"numpy {np.__version__}"
    path = check_path(instance, path)
    grid_devices = len(path)  # the batching grid of the whole path; the DP runs over its trimmed copy
    path = trim_path(instance, path)
    cm = cost_model or CostModel(instance)
    if kind == "energy":
        return _energy(instance, cm, path, t0, time_limit, version, grid_devices)
    deadline = None if time_limit is None else t0 + time_limit
    found, failures, timed_out, runs = _solve_grid(instance, cm, path, kind, deadline, grid_devices)
    elapsed = lambda: time.perf_counter() - t0  # noqa: E731
    if not found:
        if timed_out:
            return Result(Status.TIME_LIMIT, "dp", sense=sense, solve_time_s=elapsed(), solver_version=version,
                          message="time limit reached before any batching was solved", stop_reason="time limit")
        # Report the least demanding batching (least concurrency): its failure is the telling one.
        failures.sort(key=lambda f: f[0])
        return Result(Status.INFEASIBLE, "dp", sense=sense, solve_time_s=elapsed(), solver_version=version,
                      message=failures[0][1], stop_reason="proven infeasible by the DP on every batching")
    best, rejected = _best_valid(instance, cm, kind, found)
    # The objective is the cost model's, the bound the DP's best; a grid cut short bounds nothing.
    bound = max(v for v, _, _ in found) if kind == "throughput" else min(v for v, _, _ in found)
    if timed_out:
        bound = math.nan
    if best is None:
        return Result(Status.ERROR, "dp", sense=sense, bound=bound, solve_time_s=elapsed(), solver_version=version,
                      message="every DP optimum breaks a constraint outside the chain problem (TTFT / TPOT SLO): "
                              + "; ".join(rejected[:3]), stop_reason="no valid plan")
    true, value, plan, opt = best
    status, stop = _status_and_stop(true, bound, timed_out)
    pipe = plan.pipelines[0]
    return Result(status, "dp", objective=true, bound=bound, sense=sense, solve_time_s=elapsed(), solution=plan,
                  solver_version=version, stop_reason=stop,
                  extra={"path": list(path), "dp_objective": value, "micro_batch_size": pipe.micro_batch_size,
                         "num_micro_batches": pipe.num_micro_batches, "bottleneck_s": opt.bottleneck_s,
                         "request_latency_s": opt.latency_s, "grid_points": len(found), "dp_runs": runs,
                         "rejected": rejected})


def _energy(instance: Instance, cm: CostModel, path, t0: float, time_limit: float | None, version: str,
            grid_devices: int) -> Result:
    """The energy objective: J per token = (busy energy + idle power x the request period) / output.

    The busy part is additive over layers (``(power - idle power) x busy time`` of each layer where
    it runs), so per batching one DP finds the partition of least busy energy exactly; the idle part
    falls as throughput rises, so the batching's least-bottleneck partition is a candidate too.
    Every candidate is priced by the cost model and the best valid one returned: ``feasible``, the
    idle part making the DP's value not a bound on the true optimum."""
    deadline = None if time_limit is None else t0 + time_limit
    busy_power = np.array([cm.devices[d].power_w - cm.devices[d].idle_power_w for d in path])
    slo_s = instance.constraints.latency_slo_s
    slo = math.inf if slo_s is None else slo_s * (1 + 1e-9)
    candidates, failures, timed_out = [], [], False
    for b, mb in batch_grid(instance.workload.max_batch, grid_devices):
        if deadline is not None and time.perf_counter() > deadline:
            timed_out = True
            break
        terms = chain_terms(cm, path, b, mb)
        throughput = chain_problem(terms, "throughput")
        joules = dataclasses.replace(throughput, compute=terms.busy * busy_power[:, None],
                                     transfer_latency=np.zeros_like(throughput.transfer_latency),
                                     entry_latency=np.zeros_like(throughput.entry_latency),
                                     exit_latency=np.zeros_like(throughput.exit_latency))
        stages = dp.best_stages(joules, "latency", math.inf)
        period = best_period(throughput, terms, slo)
        if stages is None and period is None:
            failures.append((b * mb, _memory_message(terms, dp.infeasibility_reason(throughput) or "memory binds")))
            continue
        for st in ([stages] if stages else []) + ([period.stages] if period is not None else []):
            candidates.append(plan_from_stages(instance, terms, st))
    elapsed = lambda: time.perf_counter() - t0  # noqa: E731
    best = None
    for plan in candidates:
        ev, broken = evaluate_checked(instance, plan, cm)
        if broken:
            continue
        value = ev.objective("energy")
        if best is None or value < best[0]:
            best = (value, plan)
    if best is None:
        if timed_out and not failures:
            return Result(Status.TIME_LIMIT, "dp", sense="min", solve_time_s=elapsed(), solver_version=version,
                          message="time limit reached before any batching was solved", stop_reason="time limit")
        failures.sort(key=lambda f: f[0])
        why = failures[0][1] if failures else "infeasible: every partition breaks an SLO or the memory with its KV cache"
        return Result(Status.INFEASIBLE, "dp", sense="min", solve_time_s=elapsed(), solver_version=version,
                      message=why, stop_reason="no valid partition at any batching")
    return Result(Status.TIME_LIMIT if timed_out else Status.FEASIBLE, "dp", objective=best[0], sense="min",
                  solve_time_s=elapsed(), solution=best[1], solver_version=version,
                  stop_reason="least busy energy and least bottleneck per batching, priced by the cost model "
                              "(idle energy makes the DP's value no bound)")
