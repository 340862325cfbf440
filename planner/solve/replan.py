"""Online re-planning: adapt a running plan to a changed instance, with bounded weight migration.

:func:`replan` takes the plan that runs now and the instance as it is now (links slower or faster,
a device added or lost, a load spike, drifting expert popularity) and returns a
:class:`ReplanResult`: the plan to run next, the objective before (the current plan on the new
instance; NaN if it is no longer valid there) and after, and the weights to copy.

Candidates:

* the current plan, if it is still valid (no migration);
* the current plan repaired, if it is not: stages on lost devices give their layers to a
  neighbouring stage (variant ``merge``) or move to an unused device (variant ``replace``); experts
  whose every host is lost go home (``experts home``) or to the device with the most free memory
  (``experts rehost``); codec ranks no longer allowed (or over the accuracy budget) are dropped;
  micro-batching is clamped to ``max_batch``; devices over memory shed boundary layers to a
  neighbour with room, else their least popular experts to the device with the most free memory;
  the batching is kept if valid, else lowered along the shared grid until it fits;
* the route-aware plan on the new instance (:mod:`planner.solve.route_aware`);
* the current (or repaired) plans with other allowed codec ranks at their cuts
  (:func:`planner.spaces.codec_choice.codec_variants`): a migration of codec matrices only, the cheap
  answer to a bandwidth change;
* local moves (:mod:`planner.solve.local_search`) from the best start within the migration budget and from the
  least-migrating valid start, vetoing every move whose plan would exceed the migration budget.

Choice: among the valid candidates whose migration fits the budget (the argument, else the
instance's ``constraints.migration_budget_bytes``, else unlimited), those that no other such
candidate beats by more than ``threshold`` (default 1 %) are equally good; of these the one that
migrates the fewest bytes wins, and a current plan that is still valid always wins among them: it is
kept unchanged (the same object), with zero migration and reason "no change needed", unless some
candidate improves the objective by more than the threshold. With ``constraints.accuracy_tradeoff``
= ``t`` > 0 this choice is made among the candidates of least codec accuracy loss within ``t`` of
the best objective (so the ranks follow the bandwidth: larger while the link is fast, smaller when
it slows down). With no valid candidate within budget the status is ``infeasible``, the plan None,
and the reason says why.

Migration bytes: a plan's *memory map* lists which device holds which weights: every layer's
non-expert block (on its stage device), every routed expert (on its stage device, or where the
expert placement puts it), the embedding (first stage) and LM head (last stage; for tied embeddings
the head is the embedding matrix), and codec matrices (encoder on the sending side, decoder on the
receiving side of a cut, keyed by the cut's layer and rank, ``hidden_size x rank`` each). Migration
is every (weights, device) pair of the new map absent from the current one, at the cost model's
byte sizes (what :meth:`CostModel.memory_bytes` counts). KV caches and activations are not weights
and are not counted (in-flight requests are assumed to drain or be re-prefilled). Each copy is a
:class:`MigrationStep` from a device that still exists and holds those weights now, or from
``None`` (the model store) when none does.

The time budget: the route-aware heuristic may use the first half of ``time_budget_s`` (it stops
between partners and steps once it has a plan, so with a small budget it returns the first
structure it finds, untuned) and the local moves get what is left but a tenth, kept for choosing
and reporting. A search that cannot produce its first plan within the budget still finishes (a
few ms on Mixtral, more on large fleets), in which case no local moves run unless ``max_moves`` is
given (then exactly ``max_moves`` moves per start, and route-aware runs to its end: reproducible,
but the time budget no longer bounds the run). Route-aware does not run at all when the repairs of the
current plan left it less than a quarter of the budget and one of them is within the migration
budget (unless ``max_moves`` is given). Without ``max_moves`` the chosen plan may depend on
the machine's speed.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Iterable

import numpy as np

from planner.solve import local_search as lns
from planner.solve.baselines import batch_grid
from planner.spaces.codec_choice import codec_variants, plan_accuracy_loss
from planner.cost.costmodel import CostModel, is_within
from planner.domain.device import Device
from planner.domain.errors import InputError, Problem
from planner.domain.instance import Instance, Link, routing_probabilities
from planner.domain.plan import ExpertPlacement, Plan, Stage
from planner.cost.validator import validate
from solvers.result import Status

GB = 1e9
DEFAULT_THRESHOLD = 0.01


@dataclass(frozen=True)
class MigrationStep:
    """Copy weights ``what`` (``layer``: a layer's non-expert block; ``expert``; ``embedding``; ``head``;
    ``codec-encoder`` / ``codec-decoder``: layer = first layer after the cut, ``rank``) to ``to_device``.
    ``from_device`` None: no device that is still there holds them (load from the model store)."""

    what: str
    layer: int | None
    expert: int | None
    from_device: str | None
    to_device: str
    bytes: float
    rank: int | None = None


@dataclass
class ReplanResult:
    plan: Plan | None
    status: Status
    objective_before: float
    objective_after: float
    migration_bytes: float
    steps: list[MigrationStep]
    reason: str
    solve_time_s: float
    # Every candidate considered: name, objective (NaN if invalid), migration bytes, within budget.
    candidates: list[dict] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------
# memory maps and migration

_WHAT_ORDER = {"embedding": 0, "layer": 1, "expert": 2, "head": 3, "codec-encoder": 4, "codec-decoder": 5}


def weight_map(plan: Plan, instance: Instance, cost_model: CostModel | None = None) -> dict[tuple, tuple[str, float]]:
    """The plan's memory map: ``(device, key) -> (what, bytes)`` for every weight a device holds.

    Keys: ``("layer", l)``, ``("expert", l, e)``, ``("embedding",)``, ``("head",)`` (``("embedding",)``
    again for tied embeddings: the same matrix), ``("codec-encoder", l, r)``, ``("codec-decoder", l, r)``.
    """
    cm = cost_model or CostModel(instance)
    m = instance.model
    db = m.dtype_bytes
    out: dict[tuple, tuple[str, float]] = {}
    for pipe in plan.pipelines:
        placed = {(e.layer, e.expert): e.devices for e in pipe.expert_placement}
        ranks = lns.ranks_of(pipe)
        for si, s in enumerate(pipe.stages):
            for layer in s.layers:
                out[(s.device, ("layer", layer))] = ("layer", float(cm.nonexpert_bytes[layer]))
                if m.is_moe_layer(layer):
                    for e in range(m.num_experts):
                        for d in placed.get((layer, e), (s.device,)):
                            out[(d, ("expert", layer, e))] = ("expert", float(cm.expert_bytes))
            if s.first_layer == 0:
                out[(s.device, ("embedding",))] = ("embedding", float(m.embedding_params * db))
            if s.end_layer == m.num_layers and not (m.tie_word_embeddings and s.first_layer == 0):
                key = ("embedding",) if m.tie_word_embeddings else ("head",)
                out[(s.device, key)] = ("head", float(m.lm_head_params * db))
            if si < len(ranks) and ranks[si] is not None:
                r, nxt = ranks[si], pipe.stages[si + 1]
                size = float(m.hidden_size * r * db)
                out[(s.device, ("codec-encoder", s.end_layer, r))] = ("codec-encoder", size)
                out[(nxt.device, ("codec-decoder", s.end_layer, r))] = ("codec-decoder", size)
    return out


def migration(current: Plan, new: Plan, instance: Instance, cost_model: CostModel | None = None,
              *, current_map: dict | None = None) -> tuple[float, list[MigrationStep]]:
    """Bytes to copy to turn ``current`` into ``new`` on ``instance``, and the copy steps."""
    cm = cost_model or CostModel(instance)
    old = current_map if current_map is not None else weight_map(current, instance, cm)
    new_map = weight_map(new, instance, cm)
    holders: dict[tuple, list[str]] = {}
    alive = instance.device_index
    for dev, key in old:
        if dev in alive:
            holders.setdefault(key, []).append(dev)
    steps = []
    for (dev, key), (what, size) in new_map.items():
        if (dev, key) in old:
            continue
        src = sorted(holders.get(key, []))
        layer = key[1] if len(key) > 1 else None
        expert = key[2] if key[0] == "expert" else None
        rank = key[2] if key[0].startswith("codec") else None
        steps.append(MigrationStep(what, layer, expert, src[0] if src else None, dev, size, rank))
    steps.sort(key=lambda s: (s.to_device, _WHAT_ORDER[s.what], -1 if s.layer is None else s.layer,
                              -1 if s.expert is None else s.expert, s.rank or 0))
    return float(sum(s.bytes for s in steps)), steps


def migration_bytes(current: Plan, new: Plan, instance: Instance, cost_model: CostModel | None = None) -> float:
    return migration(current, new, instance, cost_model)[0]


# ----------------------------------------------------------------------------------------------
# checks

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


# ----------------------------------------------------------------------------------------------
# repair

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
        ranks = lns.ranks_of(pipe)
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
        pipes.append(lns.make_pipeline(stages, [r for *_, r in out[:-1]], placement, pipe.micro_batch_size,
                                       pipe.num_micro_batches, pipe.request_share))
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
        home = lns.home_device(pipe.stages, layer)
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
        plan = lns.with_pipeline(plan, pi, lns.make_pipeline(pipe.stages, lns.ranks_of(pipe), list(pipe.expert_placement) + added,
                                                             pipe.micro_batch_size, pipe.num_micro_batches, pipe.request_share))
    return plan


def _fix_codec(plan: Plan, instance: Instance) -> Plan:
    codec = instance.constraints.codec
    budget = instance.constraints.accuracy_loss_budget
    pipes = []
    for p in plan.pipelines:
        ranks = [r if r in codec.ranks else None for r in lns.ranks_of(p)]
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
                plan = lns.with_pipeline(plan, pi, lns.make_pipeline(st, lns.ranks_of(pipe), pipe.expert_placement,
                                                                     pipe.micro_batch_size, pipe.num_micro_batches,
                                                                     pipe.request_share))
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
            plan = lns.with_pipeline(plan, pi, lns.make_pipeline(pipe.stages, lns.ranks_of(pipe),
                                                                 list(pipe.expert_placement) + extra, pipe.micro_batch_size,
                                                                 pipe.num_micro_batches, pipe.request_share))
            changed = True
            break
        if not changed:
            return plan
    return plan


def _fit_batching(plan: Plan, instance: Instance, scorer: lns.Scorer) -> Plan | None:
    """Per pipeline: its own (clamped) batching if the plan is valid with it, else the grid's pairs
    from the most sequences in flight down, the first valid one; None when none is."""
    current = plan
    for pi, pipe in enumerate(plan.pipelines):
        options = [(pipe.micro_batch_size, pipe.num_micro_batches)]
        grid = sorted(batch_grid(instance.workload.max_batch, len(pipe.stages)), key=lambda o: (-o[0] * o[1], -o[0]))
        options += [o for o in grid if o not in options and o[0] * o[1] <= options[0][0] * options[0][1]]
        found = None
        for b, m in options:
            cand = lns.with_pipeline(current, pi, replace(pipe, micro_batch_size=b, num_micro_batches=m))
            if scorer.score(cand)[0] is not None:
                found = cand
                break
        if found is None:
            return None
        current = found
    return current


def repair(current: Plan, instance: Instance, cost_model: CostModel | None = None, *,
           scorer: lns.Scorer | None = None) -> list[tuple[str, Plan]]:
    """Valid repaired versions of ``current`` on ``instance``: ``[(variant name, plan)]`` (maybe empty)."""
    scorer = scorer or lns.Scorer(instance, cost_model or CostModel(instance))
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


# ----------------------------------------------------------------------------------------------
# the re-planner

@dataclass
class _Cand:
    name: str
    plan: Plan
    objective: float
    migration_bytes: float
    steps: list


def _fmt_obj(kind: str, v: float) -> str:
    if not math.isfinite(v):
        return "n/a"
    unit = {"throughput": "tokens/s", "latency": "ms", "energy": "J/token"}[kind]
    return f"{v:.4g} {unit}"


def replan(current: Plan, instance: Instance, *, time_budget_s: float = 0.02, migration_budget_bytes: float | None = None,
           seed: int = 0, threshold: float = DEFAULT_THRESHOLD, max_moves: int | None = None,
           cost_model: CostModel | None = None) -> ReplanResult:
    """Adapt ``current`` to the changed ``instance`` (see the module docstring for the rules).

    ``threshold``: relative improvement a change must bring over the least-migrating good candidate
    (default 1 %). ``max_moves``: local moves per start, for exact reproducibility. Raises
    :class:`InputError` when ``current`` does not fit the instance's model, ``ValueError`` for bad options.
    """
    t0 = time.perf_counter()
    if not (time_budget_s >= 0 and math.isfinite(time_budget_s)):
        raise ValueError(f"time_budget_s must be a finite number >= 0, got {time_budget_s!r}")
    if not threshold >= 0:
        raise ValueError(f"threshold must be >= 0, got {threshold!r}")
    check_plan_matches_model(current, instance)
    budget = migration_budget_bytes if migration_budget_bytes is not None else instance.constraints.migration_budget_bytes
    budget = math.inf if budget is None else float(budget)
    if not budget >= 0:
        raise ValueError(f"migration budget must be >= 0 bytes, got {budget!r}")
    deadline = t0 + time_budget_s
    scorer = lns.Scorer(instance, cost_model or CostModel(instance))
    cm = scorer.memo
    kind = instance.objective
    current_map = weight_map(current, instance, cm)
    before, _ = scorer.score(current)
    violations = [] if before is not None else (validate(instance, current, cm) or ["invalid"])
    before = math.nan if before is None else before
    weights = instance.model.total_params * instance.model.dtype_bytes
    if weights > instance.total_memory_bytes:
        # No plan can exist: the fleet cannot even hold the weights.
        reason = (f"infeasible: the model needs {weights / GB:.1f} GB for its weights, the fleet has "
                  f"{instance.total_memory_bytes / GB:.1f} GB (devices: {', '.join(d.name for d in instance.devices)})")
        return ReplanResult(None, Status.INFEASIBLE, before, math.nan, 0.0, [], reason, time.perf_counter() - t0, [])

    cands: list[_Cand] = []
    rejected: list[_Cand] = []  # valid but over the migration budget

    def add(name: str, plan: Plan | None, objective: float | None = None):
        if plan is None or any(c.plan == plan for c in cands + rejected):
            return
        if objective is None:
            objective = scorer.score(plan)[0]
            if objective is None:
                return
        mig, steps = (0.0, []) if plan is current else migration(current, plan, instance, cm, current_map=current_map)
        (cands if mig <= budget else rejected).append(_Cand(name, plan, objective, mig, steps))

    if not violations:
        add("current", current, before)
    else:
        for name, plan in repair(current, instance, scorer=scorer):
            add(name, plan)
    from planner.solve.route_aware import route_aware

    # Route-aware may use the first half of the budget (it stops between partners and steps once a
    # plan is found); the local moves get the rest but a tenth, kept for choosing and reporting.
    # With ``max_moves`` nothing depends on the clock: route-aware runs to its end.
    # When the repairs gave a plan within the migration budget and left route-aware less than a
    # quarter of the budget, route-aware is skipped: its first plan would likely come too late.
    ra_left = t0 + 0.5 * time_budget_s - time.perf_counter()
    if max_moves is not None or ra_left >= 0.25 * time_budget_s or not cands:
        ra = route_aware(instance, seed=seed, cost_model=cm, time_budget_s=1.0 if max_moves is not None else max(ra_left, 1e-4))
        if ra.solution is not None:
            add("route-aware", ra.solution)

    # Other codec ranks for the current or repaired plans: a cheap migration (the codec matrices)
    # that follows the bandwidth (see planner.spaces.codec_choice).
    for c in list(cands):
        if c.name != "route-aware":
            for variant in codec_variants(c.plan, instance):
                add(f"{c.name}, codec ranks {_ranks_text(variant)}", variant)

    # Local moves from the best start and from the least-migrating start, within the migration budget.
    if cands:
        best_start = _best(kind, cands)
        thrifty = min(cands, key=lambda c: (c.migration_bytes, _key(kind, c.objective)))
        starts = [best_start] + ([thrifty] if thrifty is not best_start else [])

        def within(plan: Plan) -> bool:
            return math.isinf(budget) or migration(current, plan, instance, cm, current_map=current_map)[0] <= budget

        for i, start in enumerate(starts):
            left = deadline - 0.1 * time_budget_s - time.perf_counter()
            if max_moves is None and left <= 0:
                break
            share = None if max_moves is not None else left / (len(starts) - i)
            out = lns.improve(instance, start.plan, time_budget_s=share, max_moves=max_moves, seed=seed + i,
                              accept=within, scorer=scorer)
            if out.plan is not start.plan:
                add(f"local-search from {start.name}", out.plan, out.objective)

    table = [{"name": c.name, "objective": c.objective, "migration_bytes": c.migration_bytes, "within_budget": c in cands,
              "accuracy_loss": plan_accuracy_loss(c.plan, instance)} for c in cands + rejected]
    elapsed = lambda: time.perf_counter() - t0  # noqa: E731
    budget_txt = "unlimited" if math.isinf(budget) else f"{budget / GB:.3g} GB"
    why_current = ("current plan valid" if not violations
                   else "current plan invalid (" + "; ".join(map(str, violations[:2])) + ")")
    if not cands:
        if rejected:
            cheapest = min(rejected, key=lambda c: c.migration_bytes)
            reason = (f"infeasible within the migration budget: {why_current}; the cheapest valid plan "
                      f"({cheapest.name}) needs {cheapest.migration_bytes / GB:.3g} GB of migration, budget {budget_txt}")
        else:
            reason = (f"infeasible: {why_current}; neither a repair nor the route-aware heuristic finds a valid plan "
                      f"on the changed instance")
        return ReplanResult(None, Status.INFEASIBLE, before, math.nan, 0.0, [], reason, elapsed(), table)

    best = _best(kind, cands)
    pool = cands
    tradeoff = instance.constraints.accuracy_tradeoff
    if tradeoff > 0:
        # The least accuracy loss among the candidates within the trade-off of the best objective.
        near = [c for c in cands if is_within(kind, c.objective, best.objective, tradeoff)]
        least = min(plan_accuracy_loss(c.plan, instance) for c in near)
        pool = [c for c in near if plan_accuracy_loss(c.plan, instance) <= least + 1e-12]
    top = _best(kind, pool)
    good = [c for c in pool if not lns.improves(kind, top.objective, c.objective, threshold)]
    keep = next((c for c in good if c.plan is current), None)
    chosen = keep or min(good, key=lambda c: (c.migration_bytes, _key(kind, c.objective), cands.index(c)))
    if chosen.plan is current:
        if best is chosen:
            reason = "no change needed: current plan valid and no candidate beats it"
        elif top is chosen:
            reason = (f"no change needed: current plan valid; the best candidate ({best.name}, "
                      f"{_fmt_obj(kind, best.objective)}) is within the accuracy trade-off {tradeoff:.0%} and "
                      f"loses more accuracy")
        else:
            gain = abs(top.objective - before) / abs(before) if before else math.inf
            reason = (f"no change needed: current plan valid; the best candidate ({top.name}, "
                      f"{_fmt_obj(kind, top.objective)}) improves it by {gain:.2%}, threshold {threshold:.0%}")
        return ReplanResult(current, Status.FEASIBLE, before, before, 0.0, [], reason, elapsed(), table)
    plan = replace(chosen.plan, instance=instance.name, solver="replan", metrics=cm.evaluate(chosen.plan).metrics())
    if violations:
        head = why_current
    elif tradeoff > 0 and plan_accuracy_loss(chosen.plan, instance) != plan_accuracy_loss(current, instance):
        head = (f"current plan valid, {chosen.name} has codec accuracy loss {plan_accuracy_loss(chosen.plan, instance):.4g} "
                f"(current {plan_accuracy_loss(current, instance):.4g}) within the accuracy trade-off {tradeoff:.0%}")
    else:
        gain = abs(chosen.objective - before) / abs(before) if before else math.inf
        head = f"current plan valid, {chosen.name} is {gain:.1%} better"
    reason = (f"{head}; chose {chosen.name}: {_fmt_obj(kind, before)} -> {_fmt_obj(kind, chosen.objective)}, "
              f"migration {chosen.migration_bytes / GB:.3g} GB (budget {budget_txt})")
    return ReplanResult(plan, Status.FEASIBLE, before, chosen.objective, chosen.migration_bytes, chosen.steps, reason,
                        elapsed(), table)


def _ranks_text(plan: Plan) -> str:
    return "; ".join(",".join("none" if r is None else str(r) for r in p.codec_ranks) for p in plan.pipelines)


def _key(kind: str, v: float) -> float:
    """Sort key: smaller is better."""
    return -v if kind == "throughput" else v


def _best(kind: str, cands: list[_Cand]) -> _Cand:
    return min(cands, key=lambda c: (_key(kind, c.objective), c.migration_bytes, cands.index(c)))


# ----------------------------------------------------------------------------------------------
# scenarios

def changed_instance(instance: Instance, *, bandwidth_factor: float | None = None, link=None,
                     drop_device: str | Iterable[str] | None = None, add_device=None,
                     arrival_rate_per_s: float | None = None, max_batch: int | None = None,
                     popularity=None) -> Instance:
    """A copy of ``instance`` with one or more changes (the instance itself is not modified).

    * ``bandwidth_factor``: multiply link bandwidths (and bandwidth series) by it: every link, or
      only the link(s) ``link`` names as a pair ``("a", "b")`` or a list of pairs;
    * ``link``: with no ``bandwidth_factor``, a :class:`Link` or list of Links to add, replacing any
      link between the same two devices;
    * ``drop_device``: a device name (or several) lost; its links go too, and so does any device
      that is then cut off from the origin. Dropping the origin is a ``ValueError``;
    * ``add_device``: a :class:`Device`, or ``(device, links)``; the new device needs at least one
      link (here or in ``link``);
    * ``arrival_rate_per_s``, ``max_batch``: a load spike or lull;
    * ``popularity``: expert weights ``[moe layers, experts]`` (normalised to routing
      probabilities, rows summing to top-k): popularity drift.
    """
    devices = list(instance.devices)
    links = list(instance.links)
    workload = instance.workload
    notes = []

    def pair(x):
        if isinstance(x, Link):
            return frozenset((x.a, x.b))
        if isinstance(x, (tuple, list)) and len(x) == 2 and all(isinstance(v, str) for v in x):
            return frozenset(x)
        raise ValueError(f"a link is a Link or a pair of device names, got {x!r}")

    link_items = [] if link is None else ([link] if isinstance(link, Link) or (
        isinstance(link, tuple) and len(link) == 2 and all(isinstance(v, str) for v in link)) else list(link))
    if add_device is not None:
        dev, extra = (add_device, []) if isinstance(add_device, Device) else (add_device[0], list(add_device[1]))
        if not isinstance(dev, Device):
            raise ValueError(f"add_device must be a Device or (Device, links), got {add_device!r}")
        if dev.name in instance.device_index:
            raise ValueError(f"device {dev.name!r} already exists")
        devices.append(dev)
        link_items = link_items + extra
        notes.append(f"added {dev.name}")
    if bandwidth_factor is not None:
        if not (bandwidth_factor > 0 and math.isfinite(bandwidth_factor)):
            raise ValueError(f"bandwidth_factor must be a positive number, got {bandwidth_factor!r}")
        which = {pair(x) for x in link_items} if link_items else None
        if which is not None:
            missing = which - {frozenset((l.a, l.b)) for l in links}
            if missing:
                raise ValueError(f"no link between {sorted(sorted(p) for p in missing)}")

        def scaled(l: Link) -> Link:
            if which is not None and frozenset((l.a, l.b)) not in which:
                return l
            series = None if l.bandwidth_series is None else np.asarray(l.bandwidth_series) * bandwidth_factor
            return replace(l, bandwidth_bytes_per_s=l.bandwidth_bytes_per_s * bandwidth_factor, bandwidth_series=series)

        links = [scaled(l) for l in links]
        notes.append(f"bandwidth x{bandwidth_factor:g}")
    else:
        for l in link_items:
            if not isinstance(l, Link):
                raise ValueError(f"link must be a Link to add (or give bandwidth_factor), got {l!r}")
            links = [x for x in links if frozenset((x.a, x.b)) != pair(l)] + [l]
    names = {d.name for d in devices}
    for l in links:
        if l.a not in names or l.b not in names:
            raise ValueError(f"link {l.a}<->{l.b} names a device the instance lacks")
    if drop_device is not None:
        drop = {drop_device} if isinstance(drop_device, str) else set(drop_device)
        unknown = drop - names
        if unknown:
            raise ValueError(f"cannot drop unknown device(s) {sorted(unknown)}; devices: {sorted(names)}")
        if workload.origin in drop:
            raise ValueError(f"cannot drop the origin {workload.origin!r}: requests enter there")
        devices = [d for d in devices if d.name not in drop]
        links = [l for l in links if l.a not in drop and l.b not in drop]
        notes.append("lost " + ", ".join(sorted(drop)))
    # Devices cut off from the origin are lost too.
    import networkx as nx

    g = nx.Graph()
    g.add_nodes_from(d.name for d in devices)
    g.add_edges_from((l.a, l.b) for l in links)
    reach = nx.node_connected_component(g, workload.origin)
    if len(reach) < len(devices):
        cut = sorted(d.name for d in devices if d.name not in reach)
        if add_device is not None and (add_device if isinstance(add_device, Device) else add_device[0]).name in cut:
            raise ValueError("the added device has no link to the fleet: give links with add_device or link")
        devices = [d for d in devices if d.name in reach]
        links = [l for l in links if l.a in reach and l.b in reach]
        notes.append("cut off " + ", ".join(cut))
    if arrival_rate_per_s is not None:
        if not (arrival_rate_per_s > 0 and math.isfinite(arrival_rate_per_s)):
            raise ValueError(f"arrival_rate_per_s must be a positive number, got {arrival_rate_per_s!r}")
        workload = replace(workload, arrival_rate_per_s=float(arrival_rate_per_s))
        notes.append(f"arrival rate {arrival_rate_per_s:g}/s")
    if max_batch is not None:
        if isinstance(max_batch, bool) or not isinstance(max_batch, (int, np.integer)) or max_batch < 1:
            raise ValueError(f"max_batch must be an integer >= 1, got {max_batch!r}")
        workload = replace(workload, max_batch=int(max_batch))
        notes.append(f"max_batch {max_batch}")
    if popularity is not None:
        m = instance.model
        w = np.asarray(popularity, dtype=float)
        if w.shape != (m.num_moe_layers, m.num_experts):
            raise ValueError(f"popularity must have shape (moe layers, experts) = {(m.num_moe_layers, m.num_experts)}, got {w.shape}")
        if not np.all(np.isfinite(w)) or (w < 0).any() or (w.sum(axis=1) <= 0).any():
            raise ValueError("popularity weights must be finite, >= 0, with a positive sum in every layer")
        workload = replace(workload, popularity=routing_probabilities(w, m.top_k), popularity_kind="measured")
        notes.append("popularity drift")
    description = instance.description + (" [changed: " + "; ".join(notes) + "]" if notes else "")
    return replace(instance, devices=tuple(devices), links=tuple(links), workload=workload, description=description)
