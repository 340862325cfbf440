"""The large-neighbourhood search engine behind the ``local-search`` solver
(:mod:`planner.planners.local_search`, which documents the moves): the moves, the scorer and
:func:`improve`. A module of its own, not a registered solver, so that route-aware's Step 11 and
the re-planner can run the search with their own scorer (registered solvers do not import one
another; ``tests/test_architecture.py``)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, fields, replace

import numpy as np

from planner.cost.costmodel import CostModel
from planner.cost.validator import validate
from planner.domain.instance import Instance
from planner.domain.memo import Identity
from planner.domain.plan import ExpertPlacement, Pipeline, Plan, Stage, home_device, make_pipeline, ranks_of, with_pipeline
from planner.spaces.batching import batch_grid

DEFAULT_TIME_BUDGET_S = 0.1
MOVES = ("shift", "device", "merge", "split", "codec", "expert", "batch", "share")
# Relative improvement a move must bring to be accepted (guards against float noise).
_EPS = 1e-9


def improves(kind: str, a: float, b: float, rel: float = _EPS) -> bool:
    """Whether objective value ``a`` beats ``b`` by more than ``rel`` (relative) for objective ``kind``."""
    if not math.isfinite(a):
        return False
    if not math.isfinite(b):
        return True
    if kind == "throughput":
        return a > b + rel * abs(b)
    return a < b - rel * abs(b)


@dataclass
class SearchOutcome:
    plan: Plan
    objective: float
    initial_objective: float
    moves_tried: int
    moves_accepted: int
    evaluations: int
    stop_reason: str


class MemoCostModel:
    """A :class:`CostModel` stand-in that keeps its last evaluation, so that ``validate(..., cm)``
    followed by ``cm.evaluate`` of the same plan object evaluates once. Everything else is delegated."""

    def __init__(self, cm: CostModel):
        self.cm = cm.cm if isinstance(cm, MemoCostModel) else cm
        self._plan = None
        self._ev = None

    def evaluate(self, plan: Plan):
        if plan is not self._plan:
            self._ev = self.cm.evaluate(plan)
            self._plan = plan
        return self._ev

    def __getattr__(self, name):
        return getattr(self.cm, name)


class Scorer:
    """Objective of valid plans (None for invalid ones), memoised per plan."""

    def __init__(self, instance: Instance, cm: CostModel):
        self.instance = instance
        self.memo = MemoCostModel(cm)
        self.cm = self.memo.cm
        self.kind = instance.objective
        self.capacity = {d.name: d.memory_bytes for d in instance.devices}
        self.cache: dict[tuple, tuple[float | None, str]] = {}  # plan_key(plan) -> score
        self.evaluations = 0
        self.evaluation_s = 0.0  # time spent validating and evaluating (the cost of a score, on average)

    @property
    def mean_evaluation_s(self) -> float:
        """Mean time (s) of one evaluation so far (0 before the first)."""
        return self.evaluation_s / self.evaluations if self.evaluations else 0.0

    def memory_ok(self, plan: Plan) -> bool:
        try:
            mem = self.cm.memory_bytes(plan)
        except (KeyError, IndexError, ValueError):
            return False
        return all(d in self.capacity and used <= self.capacity[d] * (1 + 1e-9) for d, used in mem.items())

    def score(self, plan: Plan) -> tuple[float | None, str]:
        """(objective, "") for a valid plan, (None, violation kind) otherwise."""
        key = plan_key(plan)
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        if not self.memory_ok(plan):
            out = (None, "memory")
        else:
            self.evaluations += 1
            t0 = time.perf_counter()
            try:
                violations = validate(self.instance, plan, self.memo)
            except (KeyError, IndexError, ValueError) as exc:  # a route that does not exist, say
                violations = [str(exc)]
            if violations:
                out = (None, getattr(violations[0], "kind", "structure"))
            else:
                out = (float(self.memo.evaluate(plan).objective(self.kind)), "")
            self.evaluation_s += time.perf_counter() - t0
        self.cache[key] = out
        return out


_HASHED_ENTRIES = 256  # placements up to this size are keyed by value, larger ones by identity


def plan_key(plan: Plan) -> tuple:
    """The :class:`Scorer`'s key of a plan: its fields, but a placement of more than
    ``_HASHED_ENTRIES`` entries by identity (hashing 15,000 entries on every score cost as much as the
    score; the moves keep an unchanged placement's tuple, so an equal placement that is a distinct
    tuple only costs one more evaluation)."""
    return (plan.instance, plan.solver, tuple(
        tuple(Identity(v) if name == "expert_placement" and len(v) > _HASHED_ENTRIES else v
              for name, v in ((f, getattr(p, f)) for f in _PIPELINE_FIELDS))
        for p in plan.pipelines))


_PIPELINE_FIELDS = tuple(f.name for f in fields(Pipeline))


def unused_devices(instance: Instance, plan: Plan) -> list[str]:
    used = plan.devices
    return [d.name for d in instance.devices if d.name not in used]


def weighted_index(rng: np.random.Generator, p: np.ndarray) -> int:
    """``int(rng.choice(len(p), p=p))``, step for step (the same draw, the same index) without
    numpy's argument checks: a move picks dozens of these (tests/planners/test_local_search.py
    checks it against numpy's)."""
    cdf = np.cumsum(p)
    cdf /= cdf[-1]
    return int(cdf.searchsorted(rng.random(), side="right"))


def weighted_sample(rng: np.random.Generator, k: int, p: np.ndarray) -> np.ndarray:
    """``rng.choice(len(p), size=k, replace=False, p=p)``, step for step (numpy's draws: a batch of
    uniforms for the picks still missing, the picked ones zeroed, duplicates dropped)."""
    p = np.array(p, dtype=float)
    found = np.zeros(k, dtype=np.int64)
    n_uniq = 0
    while n_uniq < k:
        x = rng.random((k - n_uniq,))
        if n_uniq > 0:
            p[found[0:n_uniq]] = 0
        cdf = np.cumsum(p)
        cdf /= cdf[-1]
        new = cdf.searchsorted(x, side="right")
        _, first = np.unique(new, return_index=True)
        first.sort()
        new = new.take(first)
        found[n_uniq:n_uniq + new.size] = new
        n_uniq += new.size
    return found


class _Moves:
    """The neighbourhood: each move returns a new plan, or None where it does not apply."""

    def __init__(self, instance: Instance, cm: CostModel, rng: np.random.Generator):
        self.instance = instance
        self.cm = cm
        self.rng = rng
        self.model = instance.model
        self.allowed_ranks = [None, *instance.constraints.codec.ranks]
        self.speed = {d.name: d.effective_bytes_per_s(max(cm.expert_bytes, 1.0)) for d in instance.devices}
        self.capacity = {d.name: d.memory_bytes for d in instance.devices}

    # helpers
    def _pick(self, seq):
        return seq[int(self.rng.integers(len(seq)))]

    def applicable(self, plan: Plan, pi: int) -> list[str]:
        pipe = plan.pipelines[pi]
        cuts = len(pipe.stages) - 1
        spare = bool(unused_devices(self.instance, plan))
        out = []
        if cuts:
            out += ["shift", "merge"]
            if len(self.allowed_ranks) > 1:
                out.append("codec")
        if spare or cuts:
            out.append("device")
        if spare and any(s.end_layer - s.first_layer >= 2 for s in pipe.stages):
            out.append("split")
        if self.model.num_experts and self.model.num_moe_layers and len(self.instance.devices) > 1:
            out.append("expert")
        out.append("batch")
        if len(plan.pipelines) > 1:
            out.append("share")
        return out

    def apply(self, kind: str, plan: Plan, pi: int, mem: dict) -> Plan | None:
        return getattr(self, "_" + kind)(plan, pi, mem)

    def _shift(self, plan, pi, mem):
        pipe = plan.pipelines[pi]
        st = list(pipe.stages)
        c = int(self.rng.integers(len(st) - 1))
        delta = int(self._pick([-3, -2, -1, 1, 2, 3]))
        cut = st[c].end_layer + delta
        if not st[c].first_layer < cut < st[c + 1].end_layer:
            return None
        st[c] = Stage(st[c].device, st[c].first_layer, cut)
        st[c + 1] = Stage(st[c + 1].device, cut, st[c + 1].end_layer)
        return with_pipeline(plan, pi, make_pipeline(st, ranks_of(pipe), pipe.expert_placement, pipe.micro_batch_size,
                                                     pipe.num_micro_batches, pipe.request_share, pipe.group_gate))

    def _device(self, plan, pi, mem):
        pipe = plan.pipelines[pi]
        st = list(pipe.stages)
        spare = unused_devices(self.instance, plan)
        if spare and (len(st) == 1 or self.rng.random() < 0.6):
            i = int(self.rng.integers(len(st)))
            st[i] = Stage(self._pick(spare), st[i].first_layer, st[i].end_layer)
        elif len(st) > 1:
            i, j = (int(x) for x in self.rng.choice(len(st), size=2, replace=False))
            di, dj = st[i].device, st[j].device
            st[i] = Stage(dj, st[i].first_layer, st[i].end_layer)
            st[j] = Stage(di, st[j].first_layer, st[j].end_layer)
        else:
            return None
        return with_pipeline(plan, pi, make_pipeline(st, ranks_of(pipe), pipe.expert_placement, pipe.micro_batch_size,
                                                     pipe.num_micro_batches, pipe.request_share, pipe.group_gate))

    def _merge(self, plan, pi, mem):
        pipe = plan.pipelines[pi]
        st = list(pipe.stages)
        c = int(self.rng.integers(len(st) - 1))
        keep = st[c].device if self.rng.random() < 0.5 else st[c + 1].device
        merged = Stage(keep, st[c].first_layer, st[c + 1].end_layer)
        ranks = ranks_of(pipe)
        del ranks[c]
        st[c: c + 2] = [merged]
        return with_pipeline(plan, pi, make_pipeline(st, ranks, pipe.expert_placement, pipe.micro_batch_size,
                                                     pipe.num_micro_batches, pipe.request_share, pipe.group_gate))

    def _split(self, plan, pi, mem):
        pipe = plan.pipelines[pi]
        st = list(pipe.stages)
        spare = unused_devices(self.instance, plan)
        wide = [i for i, s in enumerate(st) if s.end_layer - s.first_layer >= 2]
        if not spare or not wide:
            return None
        i = self._pick(wide)
        s = st[i]
        cut = int(self.rng.integers(s.first_layer + 1, s.end_layer))
        new = self._pick(spare)
        if self.rng.random() < 0.5:
            parts = [Stage(s.device, s.first_layer, cut), Stage(new, cut, s.end_layer)]
        else:
            parts = [Stage(new, s.first_layer, cut), Stage(s.device, cut, s.end_layer)]
        ranks = ranks_of(pipe)
        ranks.insert(i, None)
        st[i: i + 1] = parts
        return with_pipeline(plan, pi, make_pipeline(st, ranks, pipe.expert_placement, pipe.micro_batch_size,
                                                     pipe.num_micro_batches, pipe.request_share, pipe.group_gate))

    def _codec(self, plan, pi, mem):
        pipe = plan.pipelines[pi]
        ranks = ranks_of(pipe)
        c = int(self.rng.integers(len(ranks)))
        options = [r for r in self.allowed_ranks if r != ranks[c]]
        ranks[c] = self._pick(options)
        codec = self.instance.constraints.codec
        if sum(codec.loss(r) for r in ranks if r is not None) > self.instance.constraints.accuracy_loss_budget + 1e-12:
            return None
        return with_pipeline(plan, pi, make_pipeline(pipe.stages, ranks, pipe.expert_placement, pipe.micro_batch_size,
                                                     pipe.num_micro_batches, pipe.request_share, pipe.group_gate))

    def _targets(self, plan, pipe, exclude: set, need: float, mem: dict) -> list[str]:
        cands = [d for d in pipe.devices if d not in exclude]
        cands += [d for d in sorted(pipe.expert_devices()) if d not in exclude and d not in cands]
        cands += [d for d in unused_devices(self.instance, plan) if d not in exclude]
        return [d for d in cands if mem.get(d, 0.0) + need <= self.capacity[d]]

    def _by_speed(self, targets: list[str]) -> str:
        w = np.array([self.speed[d] for d in targets], dtype=float)
        return targets[weighted_index(self.rng, w / w.sum())]

    def _expert(self, plan, pi, mem):
        pipe = plan.pipelines[pi]
        placement = list(pipe.expert_placement)
        r = self.rng.random()
        if placement and r < 0.3:  # bring one back home
            del placement[int(self.rng.integers(len(placement)))]
        elif placement and r < 0.45:  # move a placed expert to another device
            j = int(self.rng.integers(len(placement)))
            e = placement[j]
            home = home_device(pipe.stages, e.layer)
            targets = self._targets(plan, pipe, {home, *e.devices}, self.cm.expert_bytes, mem)
            if not targets:
                return None
            placement[j] = ExpertPlacement(e.layer, e.expert, (self._by_speed(targets),), (1.0,))
        else:  # send popular experts of one layer away, to a fast device
            placed = {(e.layer, e.expert) for e in placement}
            layers = [l for s in pipe.stages for l in s.layers if self.model.is_moe_layer(l)]
            if not layers:
                return None
            layer = self._pick(layers)
            home = home_device(pipe.stages, layer)
            q = np.array(self.cm.Q[layer, : self.model.num_experts], dtype=float)
            free = np.array([(layer, e) not in placed for e in range(self.model.num_experts)])
            w = np.where(free, q + 1e-12, 0.0)
            if not free.any():
                return None
            k = 1 if self.rng.random() < 0.7 else int(self.rng.integers(2, 5))
            k = min(k, int(free.sum()))
            experts = weighted_sample(self.rng, k, w / w.sum())
            targets = self._targets(plan, pipe, {home}, k * self.cm.expert_bytes, mem)
            if not targets:
                return None
            to = self._by_speed(targets)
            placement += [ExpertPlacement(layer, int(e), (to,), (1.0,)) for e in sorted(experts)]
        return with_pipeline(plan, pi, make_pipeline(pipe.stages, ranks_of(pipe), placement, pipe.micro_batch_size,
                                                     pipe.num_micro_batches, pipe.request_share, pipe.group_gate))

    def _batch(self, plan, pi, mem):
        pipe = plan.pipelines[pi]
        B = self.instance.workload.max_batch
        b, m = pipe.micro_batch_size, pipe.num_micro_batches
        grid = set(batch_grid(B, len(pipe.stages)))
        grid |= {(b * 2, m), (max(1, b // 2), m), (b, m + 1), (b, max(1, m - 1)), (max(1, b // 2), m * 2),
                 (b * 2, max(1, m // 2))}
        options = sorted((x, y) for x, y in grid if x >= 1 and y >= 1 and x * y <= B and (x, y) != (b, m))
        if not options:
            return None
        nb, nm = self._pick(options)
        return with_pipeline(plan, pi, replace(pipe, micro_batch_size=int(nb), num_micro_batches=int(nm)))

    def _share(self, plan, pi, mem):
        n = len(plan.pipelines)
        j = int(self.rng.integers(n - 1))
        j = j + 1 if j >= pi else j
        give = plan.pipelines[pi].request_share * float(self.rng.uniform(0.02, 0.25))
        if give <= 0:
            return None
        pipes = list(plan.pipelines)
        pipes[pi] = replace(pipes[pi], request_share=pipes[pi].request_share - give)
        pipes[j] = replace(pipes[j], request_share=pipes[j].request_share + give)
        return replace(plan, pipelines=tuple(pipes))


def _halve_batches(plan: Plan) -> Plan | None:
    """The repair step: halve every micro-batch (less KV cache, shorter steps); None when all are 1."""
    if all(p.micro_batch_size == 1 and p.num_micro_batches == 1 for p in plan.pipelines):
        return None
    pipes = tuple(replace(p, micro_batch_size=max(1, p.micro_batch_size // 2))
                  if p.micro_batch_size > 1 else replace(p, num_micro_batches=max(1, p.num_micro_batches // 2))
                  for p in plan.pipelines)
    return replace(plan, pipelines=pipes)


def improve(instance: Instance, start: Plan, *, cost_model: CostModel | None = None, time_budget_s: float | None = None,
            max_moves: int | None = None, seed: int = 0, accept: Callable[[Plan], bool] | None = None,
            scorer: Scorer | None = None) -> SearchOutcome:
    """Improve the valid plan ``start``: large-neighbourhood search (see the module docstring).

    Stops after ``max_moves`` moves or ``time_budget_s`` seconds, whichever comes first; with
    neither, after :data:`DEFAULT_TIME_BUDGET_S`. Under a time budget a move is not started when
    the mean time of the moves so far (before the first: of the scorer's evaluations) would take it
    past the deadline. ``accept`` (optional) vetoes improving plans (the
    re-planner uses it to keep migration within budget). ``scorer`` (optional) shares its cache of
    scored plans with the caller. Raises ``ValueError`` if ``start`` is not valid on ``instance``.
    """
    t0 = time.perf_counter()
    if max_moves is None and time_budget_s is None:
        time_budget_s = DEFAULT_TIME_BUDGET_S
    if max_moves is not None and max_moves < 0:
        raise ValueError(f"max_moves must be >= 0, got {max_moves}")
    if time_budget_s is not None and not time_budget_s >= 0:
        raise ValueError(f"time_budget_s must be >= 0, got {time_budget_s}")
    deadline = math.inf if time_budget_s is None else t0 + time_budget_s
    cm = scorer.cm if scorer is not None else (cost_model or CostModel(instance))
    scorer = scorer or Scorer(instance, cm)
    evaluations0 = scorer.evaluations
    v0, _ = scorer.score(start)
    if v0 is None:
        found = validate(instance, start, cm)
        raise ValueError("the start plan is not valid on this instance: " + "; ".join(map(str, found[:5])))
    kind = instance.objective
    rng = np.random.default_rng(seed)
    moves = _Moves(instance, cm, rng)
    best, best_v = start, v0
    mem = cm.memory_bytes(best)
    tried = accepted = 0
    stop = "max_moves"
    # A move is not started when it would likely end past the deadline: it takes as long as the
    # moves so far did on average (before the first, as long as the scorer's evaluations).
    moves_t0 = time.perf_counter()
    while True:
        if max_moves is not None and tried >= max_moves:
            stop = "max_moves"
            break
        now = time.perf_counter()
        if time_budget_s is not None and now + ((now - moves_t0) / tried if tried else scorer.mean_evaluation_s) >= deadline:
            stop = "time budget"
            break
        tried += 1
        # Destroy: one to three moves in sequence (the large neighbourhood).
        depth = 1 + int(rng.random() < 0.3) + int(rng.random() < 0.1)
        cand = best
        for _ in range(depth):
            pi = int(rng.integers(len(cand.pipelines)))
            kinds = moves.applicable(cand, pi)
            nxt = moves.apply(kinds[int(rng.integers(len(kinds)))], cand, pi, mem)
            if nxt is not None:
                cand = nxt
        if cand is best or cand == best:
            continue
        v, why = scorer.score(cand)
        if v is None and why in ("memory", "slo"):
            # Repair: smaller micro-batches need less KV cache and finish steps sooner.
            fixed = _halve_batches(cand)
            if fixed is not None:
                cand = fixed
                v, why = scorer.score(cand)
        if v is None or not improves(kind, v, best_v):
            continue
        if accept is not None and not accept(cand):
            continue
        best, best_v = cand, v
        mem = cm.memory_bytes(best)
        accepted += 1
    return SearchOutcome(best, best_v, v0, tried, accepted, scorer.evaluations - evaluations0, stop)
