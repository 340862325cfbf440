"""Repairs of a running plan that no longer fits its changed instance (lost devices, fewer ranks, less memory).

:func:`repair` returns the valid repaired versions of a plan: stages on lost devices give their
layers to a neighbouring stage (variant ``merge``) or move to an unused device (variant
``replace``); experts whose every host is lost go home (``experts home``) or to the device with the
most free memory (``experts rehost``); codec ranks no longer allowed (or over the accuracy budget)
are dropped; micro-batching is clamped to ``max_batch``; devices over memory shed boundary layers
to a neighbour with room, else their least popular experts to the device with the most free
memory; the batching is kept if valid, else lowered along the shared grid until it fits.
:func:`check_plan_matches_model` rejects a plan that cannot belong to the instance's model at all.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import replace

from planner.cost.costmodel import CostModel
from planner.domain.errors import InputError, Problem
from planner.domain.instance import Instance
from planner.domain.plan import ExpertPlacement, Plan, Stage, home_device, make_pipeline, ranks_of, with_pipeline
from planner.planners.local_search import Scorer
from planner.spaces.batching import batch_grid


def check_plan_matches_model(plan: Plan, instance: Instance) -> None:
    """Raise :class:`InputError` (every problem) if ``plan`` cannot be a plan of ``instance``'s model:
    layer ranges, expert indices or codec entries that do not fit it. Unknown devices are fine (lost)."""
    m = instance.model
    problems = []

    def bad(where, msg):
        problems.append(Problem("<current plan>", where, msg))

    if not isinstance(plan, Plan):
        raise TypeError(f"current must be a Plan, got {type(plan).__name__}")
    if not plan.pipelines:
        bad("pipelines", "the plan has no pipeline")
    for pi, pipe in enumerate(plan.pipelines):
        where = f"pipelines[{pi}]"
        if not pipe.stages:
            bad(f"{where}.stages", "no stage")
            continue
        expected = 0
        for si, s in enumerate(pipe.stages):
            if s.first_layer != expected or s.end_layer <= s.first_layer:
                bad(f"{where}.stages[{si}]", f"layers [{s.first_layer}, {s.end_layer}) do not continue from layer {expected}")
            expected = max(expected, s.end_layer)
        if expected != m.num_layers:
            bad(f"{where}.stages", f"the stages cover {expected} layers; model {m.name!r} has {m.num_layers}")
        if len(pipe.codec_ranks) > max(0, len(pipe.stages) - 1):
            bad(f"{where}.codec_ranks", f"{len(pipe.codec_ranks)} ranks for {len(pipe.stages) - 1} cuts")
        for r in pipe.codec_ranks:
            if r is not None and not 0 < r < m.hidden_size:
                bad(f"{where}.codec_ranks", f"rank {r} does not fit hidden_size {m.hidden_size}")
        for j, e in enumerate(pipe.expert_placement):
            if not (0 <= e.layer < m.num_layers and m.is_moe_layer(e.layer)) or not 0 <= e.expert < m.num_experts:
                bad(f"{where}.expert_placement[{j}]",
                    f"({e.layer}, {e.expert}) is not a routed expert of model {m.name!r} "
                    f"({m.num_moe_layers} MoE layers, {m.num_experts} experts)")
            if not e.devices or len(e.devices) != len(e.shares):
                bad(f"{where}.expert_placement[{j}]", "needs devices with one share each")
    if problems:
        raise InputError(problems)


def _unused(instance: Instance, plan: Plan, taken: Iterable[str] = ()) -> list[str]:
    used = plan.devices | set(taken)
    devs = [d for d in instance.devices if d.name not in used]
    return [d.name for d in sorted(devs, key=lambda d: (-d.memory_bytes, d.name))]


def _drop_lost(current: Plan, instance: Instance, variant: str) -> tuple[Plan | None, list[tuple[int, int, int]]]:
    """The current plan without devices the instance lacks (``merge``: their layers go to a
    neighbouring stage; ``replace``: to the unused device with the most memory, else merge); experts
    whose every host is lost go home. Also returns those experts as (pipeline, layer, expert)."""
    alive = instance.device_index
    pool = _unused(instance, current)
    pipes = []
    orphans: list[tuple[int, int, int]] = []
    for pipe in current.pipelines:
        ranks = ranks_of(pipe)
        items = []  # [device, first, end, rank of the cut after]
        for si, s in enumerate(pipe.stages):
            dev = s.device if s.device in alive else (pool.pop(0) if variant == "replace" and pool else None)
            items.append([dev, s.first_layer, s.end_layer, ranks[si] if si < len(ranks) else None])
        out: list[list] = []
        pending = None
        for dev, a, b, r in items:
            if dev is None:
                if out:
                    out[-1][2], out[-1][3] = b, r
                elif pending is None:
                    pending = a
                continue
            if pending is not None:
                a, pending = pending, None
            if out and out[-1][0] == dev:  # the same device twice in a row: one stage
                out[-1][2], out[-1][3] = b, r
            else:
                out.append([dev, a, b, r])
        if not out:
            continue
        stages = [Stage(d, a, b) for d, a, b, _ in out]
        if len({s.device for s in stages}) != len(stages):
            return None, []
        placement = []
        for e in pipe.expert_placement:
            kept = [(d, x) for d, x in zip(e.devices, e.shares) if d in alive]
            if not kept:
                orphans.append((len(pipes), e.layer, e.expert))
                continue
            total = sum(x for _, x in kept)
            shares = tuple(x / total for _, x in kept) if total > 0 else tuple(1.0 / len(kept) for _ in kept)
            placement.append(ExpertPlacement(e.layer, e.expert, tuple(d for d, _ in kept), shares))
        pipes.append(make_pipeline(stages, [r for *_, r in out[:-1]], placement, pipe.micro_batch_size,
                                       pipe.num_micro_batches, pipe.request_share, pipe.group_gate))
    if not pipes:
        return None, []
    total = sum(p.request_share for p in pipes)
    pipes = [replace(p, request_share=(p.request_share / total) if total > 0 else 1.0 / len(pipes)) for p in pipes]
    return replace(current, pipelines=tuple(pipes)), orphans


def _rehost(plan: Plan, instance: Instance, cm: CostModel, orphans: list[tuple[int, int, int]]) -> Plan | None:
    """Experts that lost their host go to the device (of their pipeline, or unused) with the most free
    memory other than their home, the most popular first; None when none has room."""
    cap = {d.name: d.memory_bytes for d in instance.devices}
    mem = cm.memory_bytes(plan)
    free = {d: cap[d] - mem.get(d, 0.0) for d in cap}
    size = cm.expert_bytes
    extra: dict[int, list[ExpertPlacement]] = {}
    taken: set[str] = set()
    for pi, layer, e in sorted(orphans, key=lambda o: (-float(cm.Q[o[1], o[2]]), o)):
        pipe = plan.pipelines[pi]
        home = home_device(pipe.stages, layer)
        others = {d for i, p in enumerate(plan.pipelines) if i != pi for d in p.devices + sorted(p.expert_devices())}
        options = [d for d in pipe.devices + sorted(pipe.expert_devices()) + _unused(instance, plan, taken)
                   if d != home and d not in others and free[d] >= size]
        if not options:
            return None
        to = min(options, key=lambda d: (-free[d], d))
        free[to] -= size
        taken.add(to)
        extra.setdefault(pi, []).append(ExpertPlacement(layer, e, (to,), (1.0,)))
    for pi, added in sorted(extra.items()):
        pipe = plan.pipelines[pi]
        plan = with_pipeline(plan, pi, make_pipeline(pipe.stages, ranks_of(pipe), list(pipe.expert_placement) + added,
                                                             pipe.micro_batch_size, pipe.num_micro_batches, pipe.request_share,
                                                             pipe.group_gate))
    return plan


def _fix_codec(plan: Plan, instance: Instance) -> Plan:
    codec = instance.constraints.codec
    budget = instance.constraints.accuracy_loss_budget
    pipes = []
    for p in plan.pipelines:
        ranks = [r if r in codec.ranks else None for r in ranks_of(p)]
        while sum(codec.loss(r) for r in ranks if r is not None) > budget + 1e-12:
            worst = max((i for i, r in enumerate(ranks) if r is not None), key=lambda i: codec.loss(ranks[i]))
            ranks[worst] = None
        pipes.append(replace(p, codec_ranks=tuple(ranks)))
    return replace(plan, pipelines=tuple(pipes))


def _clamp_batch(plan: Plan, instance: Instance) -> Plan:
    B = instance.workload.max_batch
    pipes = []
    for p in plan.pipelines:
        b, m = p.micro_batch_size, p.num_micro_batches
        if b * m > B:
            m = max(1, min(m, B))
            b = max(1, B // m)
        pipes.append(replace(p, micro_batch_size=b, num_micro_batches=m))
    return replace(plan, pipelines=tuple(pipes))


def _fit_memory(plan: Plan, instance: Instance, cm: CostModel, max_steps: int = 200) -> Plan:
    """Greedy: while a device is over memory, shift a boundary layer of its stage to a neighbour with
    room, else send its least popular home experts to the device with the most free memory."""
    cap = {d.name: d.memory_bytes for d in instance.devices}
    m = instance.model
    for _ in range(max_steps):
        mem = cm.memory_bytes(plan)
        over = sorted(((used - cap.get(d, 0.0), d) for d, used in mem.items() if used > cap.get(d, 0.0) * (1 + 1e-9)),
                      reverse=True)
        if not over:
            return plan
        excess, dev = over[0]
        free = {d: cap[d] - mem.get(d, 0.0) for d in cap}
        changed = False
        for pi, pipe in enumerate(plan.pipelines):
            st = list(pipe.stages)
            idx = next((i for i, s in enumerate(st) if s.device == dev), None)
            if idx is None:
                continue
            s = st[idx]
            # (a) a boundary layer to the neighbour with the most free memory that can take it.
            options = []
            for j, layer in ((idx - 1, s.first_layer), (idx + 1, s.end_layer - 1)):
                if 0 <= j < len(st) and s.end_layer - s.first_layer >= 2:
                    size = cm.nonexpert_bytes[layer] + (m.num_experts * cm.expert_bytes if m.is_moe_layer(layer) else 0)
                    if free[st[j].device] >= size:
                        options.append((free[st[j].device], j, layer))
            if options:
                _, j, layer = max(options)
                if j < idx:
                    st[j] = Stage(st[j].device, st[j].first_layer, layer + 1)
                    st[idx] = Stage(dev, layer + 1, s.end_layer)
                else:
                    st[idx] = Stage(dev, s.first_layer, layer)
                    st[j] = Stage(st[j].device, layer, st[j].end_layer)
                plan = with_pipeline(plan, pi, make_pipeline(st, ranks_of(pipe), pipe.expert_placement,
                                                                     pipe.micro_batch_size, pipe.num_micro_batches,
                                                                     pipe.request_share, pipe.group_gate))
                changed = True
                break
            # (b) the least popular home experts to the device with the most free memory.
            if not m.num_experts or cm.expert_bytes <= 0:
                continue
            others = {d for i, p in enumerate(plan.pipelines) if i != pi for d in p.devices + sorted(p.expert_devices())}
            targets = [d for d in pipe.devices + sorted(pipe.expert_devices()) + _unused(instance, plan)
                       if d != dev and d not in others]
            targets = sorted(set(targets), key=lambda d: (-free[d], d))
            if not targets or free[targets[0]] < cm.expert_bytes:
                continue
            to = targets[0]
            placed = {(e.layer, e.expert) for e in pipe.expert_placement}
            cells = [(float(cm.Q[layer, e]), layer, e) for layer in s.layers if m.is_moe_layer(layer)
                     for e in range(m.num_experts) if (layer, e) not in placed]
            if not cells:
                continue
            cells.sort()
            count = min(len(cells), int(math.ceil(excess / cm.expert_bytes)), int(free[to] // cm.expert_bytes))
            if count <= 0:
                continue
            extra = [ExpertPlacement(layer, e, (to,), (1.0,)) for _, layer, e in cells[:count]]
            plan = with_pipeline(plan, pi, make_pipeline(pipe.stages, ranks_of(pipe),
                                                                 list(pipe.expert_placement) + extra, pipe.micro_batch_size,
                                                                 pipe.num_micro_batches, pipe.request_share, pipe.group_gate))
            changed = True
            break
        if not changed:
            return plan
    return plan


def _fit_batching(plan: Plan, instance: Instance, scorer: Scorer) -> Plan | None:
    """Per pipeline: its own (clamped) batching if the plan is valid with it, else the grid's pairs
    from the most sequences in flight down, the first valid one; None when none is."""
    current = plan
    for pi, pipe in enumerate(plan.pipelines):
        options = [(pipe.micro_batch_size, pipe.num_micro_batches)]
        grid = sorted(batch_grid(instance.workload.max_batch, len(pipe.stages)), key=lambda o: (-o[0] * o[1], -o[0]))
        options += [o for o in grid if o not in options and o[0] * o[1] <= options[0][0] * options[0][1]]
        found = None
        for b, m in options:
            cand = with_pipeline(current, pi, replace(pipe, micro_batch_size=b, num_micro_batches=m))
            if scorer.score(cand)[0] is not None:
                found = cand
                break
        if found is None:
            return None
        current = found
    return current


def repair(current: Plan, instance: Instance, cost_model: CostModel | None = None, *,
           scorer: Scorer | None = None) -> list[tuple[str, Plan]]:
    """Valid repaired versions of ``current`` on ``instance``: ``[(variant name, plan)]`` (maybe empty)."""
    scorer = scorer or Scorer(instance, cost_model or CostModel(instance))
    cm = scorer.cm
    alive = instance.device_index
    lost_stage = any(s.device not in alive for p in current.pipelines for s in p.stages)
    modes = ["replace", "merge"] if lost_stage and _unused(instance, current) else ["merge"]
    out, seen = [], set()
    for mode in modes:
        base, orphans = _drop_lost(current, instance, mode)
        if base is None:
            continue
        tries = [("rehost", _rehost(base, instance, cm, orphans))] if orphans else []
        tries.append(("home" if orphans else "", base))
        for how, plan in tries:
            if plan is None:
                continue
            plan = _fit_memory(_clamp_batch(_fix_codec(plan, instance), instance), instance, cm)
            plan = _fit_batching(plan, instance, scorer)
            if plan is None or plan in seen or scorer.score(plan)[0] is None:
                continue
            seen.add(plan)
            label = ", ".join(x for x in ((mode if lost_stage else ""), (f"experts {how}" if how else "")) if x)
            out.append((f"repair ({label})" if label else "repair", plan))
    return out
