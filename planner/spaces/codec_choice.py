"""Codec ranks traded against the objective: the EC2MoE accuracy-latency knob.

A low-rank codec at a cut sends ``rank`` numbers per token instead of ``hidden_size``: smaller
ranks send less and lose more accuracy (``constraints.codec_accuracy_loss``). Under a pure
throughput or latency objective the smallest rank within the accuracy budget wins whenever the
link matters at all, so the rank never follows the bandwidth. ``constraints.accuracy_tradeoff`` =
``t`` (default 0) states how much of the objective a user gives up for accuracy: among plans that
differ only in their codec ranks, the one with the least accuracy loss whose objective is within
``t`` of the reference (``value >= (1 - t) * ref`` for throughput, ``value <= (1 + t) * ref`` for
latency and energy) is preferred. With a good link a larger rank is within ``t`` of the best; when
the link slows down only smaller ranks are, which is what online re-planning then switches to.

Route-aware applies :func:`prefer_accuracy` to its plan, with its plan's objective as reference;
the re-planner (:mod:`planner.planners.replan`) adds :func:`codec_variants` of its starts to its candidates
and, with ``t > 0``, picks the least accuracy loss among the candidates within ``t`` of the best.
The exact solvers and the baselines ignore the trade-off: they optimise the objective alone.

Work: a pipeline with ``c`` ranked cuts and ``R`` allowed ranks has ``R**c`` rank combinations;
up to :data:`MAX_COMBINATIONS` per pipeline are all scored, beyond that each cut is varied alone.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

from planner.cost.evaluation import is_within
from planner.domain.instance import Instance
from planner.domain.plan import Plan

MAX_COMBINATIONS = 64


def plan_accuracy_loss(plan: Plan, instance: Instance) -> float:
    """The plan's codec accuracy loss: the largest over its pipelines of the sum of its cuts' losses
    (as :class:`planner.cost.evaluation.Evaluation` reports it)."""
    codec = instance.constraints.codec
    return max((sum(codec.loss(r) for r in p.codec_ranks if r is not None) for p in plan.pipelines), default=0.0)


def codec_variants(plan: Plan, instance: Instance) -> list[Plan]:
    """Plans equal to ``plan`` but for the ranks of one pipeline's ranked cuts, each set to another
    allowed rank (every combination up to :data:`MAX_COMBINATIONS` per pipeline, else one cut at a
    time); cuts without a codec stay without. Deterministic order; ``plan`` itself is not listed."""
    allowed = instance.constraints.codec.ranks
    out: list[Plan] = []
    if not allowed:
        return out
    for pi, pipe in enumerate(plan.pipelines):
        cuts = [i for i, r in enumerate(pipe.codec_ranks) if r is not None]
        if not cuts:
            continue
        if len(allowed) ** len(cuts) <= MAX_COMBINATIONS:
            combos = itertools.product(allowed, repeat=len(cuts))
        else:
            base = tuple(pipe.codec_ranks[i] for i in cuts)
            combos = (base[:j] + (r,) + base[j + 1:] for j in range(len(cuts)) for r in allowed)
        seen = {pipe.codec_ranks}  # rank tuples, not plans: hashing a large placement is slow
        for combo in combos:
            ranks = list(pipe.codec_ranks)
            for i, r in zip(cuts, combo):
                ranks[i] = r
            if tuple(ranks) in seen:
                continue
            seen.add(tuple(ranks))
            pipes = list(plan.pipelines)
            pipes[pi] = replace(pipe, codec_ranks=tuple(ranks))
            out.append(replace(plan, pipelines=tuple(pipes)))
    return out


def prefer_accuracy(plan: Plan, instance: Instance, score, reference: float | None = None) -> tuple[Plan, float]:
    """The codec variant of ``plan`` (or ``plan``) with the least accuracy loss among the valid ones
    whose objective is within ``constraints.accuracy_tradeoff`` of ``reference`` (default: ``plan``'s
    objective); ties go to the better objective, then to ``plan``. ``score(plan)`` returns the
    objective of a valid plan and None otherwise. Returns (plan, its objective); with a trade-off of
    0 or no codec ranks, ``plan`` unchanged."""
    own = score(plan)
    if own is None:
        raise ValueError("prefer_accuracy needs a valid plan")
    t = instance.constraints.accuracy_tradeoff
    if t <= 0 or not instance.constraints.codec.ranks:
        return plan, own
    kind = instance.objective
    ref = own if reference is None else reference
    sign = -1.0 if kind == "throughput" else 1.0  # smaller key = better objective
    best = (plan_accuracy_loss(plan, instance), sign * own, 0)
    chosen = (plan, own)
    for i, variant in enumerate(codec_variants(plan, instance), start=1):
        v = score(variant)
        if v is None or not is_within(kind, v, ref, t):
            continue
        key = (plan_accuracy_loss(variant, instance), sign * v, i)
        if key < best:
            best, chosen = key, (variant, v)
    return chosen
