"""Micro-batching: the (micro-batch size, micro-batches in flight) grid every solver shares, and the
best batching of a plan whose structure (stages, codecs, expert placement) is fixed.

Also the two plain layouts the baselines start from: contiguous layer ranges split in proportion to
weights, and a pipeline built from such ranges.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from planner.cost.costmodel import CostModel
from planner.cost.evaluation import is_better
from planner.cost.validator import limit_violations, structure_violations
from planner.domain.instance import Instance
from planner.domain.plan import ExpertPlacement, Pipeline, Plan, Stage


def split_by_weights(num_layers: int, weights: list[float]) -> list[tuple[int, int]]:
    """Contiguous ranges ``[a, b)`` over ``num_layers`` layers, sizes proportional to ``weights``
    (largest remainder); devices whose share rounds to zero layers get an empty range."""
    w = np.asarray(weights, dtype=float)
    raw = w / w.sum() * num_layers
    sizes = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - sizes), kind="stable")[: num_layers - sizes.sum()]:
        sizes[i] += 1
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    return [(int(bounds[i]), int(bounds[i + 1])) for i in range(len(w))]


def pipeline_from_ranges(devices: list[str], ranges: list[tuple[int, int]], b: int = 1, m: int = 1) -> Pipeline:
    stages = tuple(Stage(d, a, e) for d, (a, e) in zip(devices, ranges) if e > a)
    return Pipeline(stages, micro_batch_size=b, num_micro_batches=m)


def batch_grid(max_batch: int, num_stages: int) -> list[tuple[int, int]]:
    """(micro-batch size, micro-batches) pairs to try: m in {1, stages}, b halved from max_batch // m."""
    out = []
    for m in sorted({1, max(1, min(num_stages, max_batch))}):
        b = max(1, max_batch // m)
        while True:
            out.append((b, m))
            if b == 1:
                break
            b = max(1, b // 2)
    return out


def best_batching(instance: Instance, cm: CostModel, stages: tuple[Stage, ...], name: str,
                  expert_placement: tuple[ExpertPlacement, ...] = ()) -> tuple[Plan | None, float, list]:
    """Best valid plan over the batching grid for fixed stages (and expert placement); returns
    (plan, objective, last violations)."""
    b, m = batch_grid(instance.workload.max_batch, len(stages))[0]
    plan = Plan((Pipeline(stages, micro_batch_size=b, num_micro_batches=m, expert_placement=expert_placement),),
                instance.name, name)
    return batching_sweep(instance, cm, plan)


def batching_sweep(instance: Instance, cm: CostModel, plan: Plan) -> tuple[Plan | None, float, list]:
    """Best valid version of the one-pipeline ``plan`` over its own batching and the batching grid,
    structure (stages, codecs, expert placement) fixed: (plan, objective, last violations). The
    shape is checked once: every batching tried stays within ``max_batch``, so only the figures
    (memory, SLOs) change from one to the next."""
    pipe = plan.pipelines[0]
    shape = structure_violations(instance, plan)
    if shape:
        return None, None, shape
    own = (pipe.micro_batch_size, pipe.num_micro_batches)
    grid = batch_grid(instance.workload.max_batch, len(pipe.stages))
    best, best_obj, last = None, None, []
    for b, m in ([own] if own not in grid else []) + grid:
        cand = replace(plan, pipelines=(replace(pipe, micro_batch_size=b, num_micro_batches=m),))
        ev = cm.evaluate(cand)
        violations = limit_violations(instance, ev)
        if violations:
            last = violations
            continue
        obj = ev.objective(instance.objective)
        if best is None or is_better(instance.objective, obj, best_obj):
            best, best_obj = cand, obj
    return best, best_obj, last


def throughput_ceiling(instance: Instance, cm: CostModel, plan: Plan) -> float:
    """Tokens/s that no batching of the one-pipeline ``plan``'s structure (stages, codecs, expert
    placement) exceeds, from its evaluations at ``(b, 1)`` for ``b`` = 1, 2, 4, ... and
    ``max_batch`` (passes that a batching sweep of the structure reuses).

    A request holds each device and link for its prefill (independent of the batching) plus
    ``output - 1`` decode steps' share, ``busy(b) / b``. Every decode term's time per token is
    non-increasing in the micro-batch size ``b``: rooflines and measured profiles are affine in the
    FLOPs and bytes, of which the weights, the framework overheads and the codec matrices are
    fixed per pass, the KV cache, hidden states and FLOPs grow with ``b``, and an expert's touched
    weights (``1 - (1 - q)^b``) and a remote holder's call probability are concave in ``b`` with
    value 0 at 0. So the busy rate ``f(b) = 1 / max(busy per request)`` does not fall as ``b``
    grows. Each term of a pass takes no less time for more tokens, so a request's latency does not
    fall either, and with at most ``max_batch`` requests in flight the loop's rate ``g(b) =
    max_batch / latency(b)`` does not grow. Between two points ``lo < hi`` every batching serves at
    most ``output x min(f(hi), g(lo))`` (memory may forbid some; the bound stays valid).
    """
    pipe = plan.pipelines[0]
    B = instance.workload.max_batch
    points = sorted({2 ** k for k in range(B.bit_length()) if 2 ** k <= B} | {B})
    busy, loop = [], []
    for b in points:
        pm = cm.evaluate(replace(plan, pipelines=(replace(pipe, micro_batch_size=b, num_micro_batches=1),))).pipelines[0]
        worst = max(pm.request_busy_s.values(), default=0.0)
        busy.append(math.inf if worst <= 0 else 1.0 / worst)
        loop.append(math.inf if pm.latency_s <= 0 else B / pm.latency_s)
    best = min(busy[0], loop[0])
    for i in range(1, len(points)):
        best = max(best, min(busy[i], loop[i - 1]))
    return instance.workload.output_tokens * best


def micro_batch_sizes(max_batch: int, exact_up_to: int = 32) -> list[int]:
    """Micro-batch sizes worth trying: every size up to ``exact_up_to``, then about 12 per doubling,
    and ``max_batch // m`` for every ``m`` (the sizes that fill the batch exactly)."""
    sizes = set(range(1, min(max_batch, exact_up_to) + 1))
    b = exact_up_to
    while b < max_batch:
        b = max(b + 1, int(b * 1.06))
        sizes.add(min(b, max_batch))
    sizes.update(max_batch // m for m in range(1, max_batch + 1))
    return sorted(s for s in sizes if 1 <= s <= max_batch)


def full_batching_sweep(instance: Instance, cm: CostModel, plan: Plan, index: int = 0,
                        sizes: list[int] | None = None) -> tuple[Plan | None, float | None]:
    """The best valid batching of pipeline ``index`` of ``plan`` over the whole grid
    ``b x m <= max_batch``, its structure fixed: (plan, objective), or (None, None).

    In the cost model the number of micro-batches ``m`` changes only the concurrency ``b m`` (the
    latency loop) and the KV cache: for throughput and energy more is never worse while memory
    lasts, for latency it changes nothing. So for each size ``b`` (``sizes``, by default
    :func:`micro_batch_sizes`) only the largest ``m`` whose memory fits is priced (memory is cheap
    to compute and grows with ``m``: found by bisection; for latency ``m = 1``), and the plan's own
    batching too."""
    if structure_violations(instance, plan):
        return None, None
    pipe = plan.pipelines[index]
    kind = instance.objective
    B = instance.workload.max_batch
    capacity = {d.name: d.memory_bytes * (1 + 1e-9) for d in instance.devices}

    def variant(b: int, m: int) -> Plan:
        pipes = list(plan.pipelines)
        pipes[index] = replace(pipe, micro_batch_size=b, num_micro_batches=m)
        return replace(plan, pipelines=tuple(pipes))

    def fits(cand: Plan) -> bool:
        return all(used <= capacity[d] for d, used in cm.memory_bytes(cand).items())

    best, best_obj = None, None

    def consider(cand: Plan) -> None:
        nonlocal best, best_obj
        ev = cm.evaluate(cand)
        if limit_violations(instance, ev):
            return
        obj = ev.objective(kind)
        if best is None or is_better(kind, obj, best_obj):
            best, best_obj = cand, obj

    consider(variant(pipe.micro_batch_size, pipe.num_micro_batches))
    for b in sizes if sizes is not None else micro_batch_sizes(B):
        if kind == "latency":
            consider(variant(b, 1))
            continue
        lo, hi = 1, B // b
        if not fits(variant(b, lo)):
            continue
        if not fits(variant(b, hi)):
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if fits(variant(b, mid)):
                    lo = mid
                else:
                    hi = mid
            hi = lo
        consider(variant(b, hi))
    return best, best_obj
