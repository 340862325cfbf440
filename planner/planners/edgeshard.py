"""EdgeShard baseline (solver ``edgeshard``): layer shards on a sequence of devices, by dynamic programming.

EdgeShard (Zhang et al. 2024, "EdgeShard: Efficient LLM Inference via Collaborative Edge
Computing") cuts a dense LLM into contiguous shards and places them on a sequence of devices,
chosen jointly with the cut points by dynamic programming: the source device (the origin, where
the prompt is) holds the first shard, every other device holds at most one shard, devices may be
taken in any order, and each device's shard must fit its memory. It minimises the latency of one
request, or maximises throughput as the pipeline's bottleneck (slowest stage or transfer).

What this baseline sees, and what it does not:

* **No expert awareness.** An MoE layer is one block: all its routed experts stay on the layer's
  device, and the DP prices every layer as if routing were uniform (every expert picked with
  probability ``top_k / experts``, the instance's measured or Zipf popularity ignored). The plan
  it picks is then evaluated with the real cost model (the instance's popularity).
* **No compression.** Every cut sends the hidden state uncompressed (``codec_ranks`` empty), no
  local-expert selection, no placement of experts off their layer.

Pricing (the DP's own model). For a batching ``(b, m)``, :func:`planner.spaces.chain.chain_terms` on
a copy of the instance with uniform popularity gives the cost model's terms per request (s, bytes):
per layer and device a busy time and a latency (prefill plus ``output - 1`` decode steps, the
embedding on layer 0 and the LM head on the last layer), a memory row (weights of the layer with
all its experts, the KV cache of ``b x m`` sequences; a model with tied embeddings is charged its LM
head even on a single shard holding every layer, which is conservative) and each device's capacity
(memory less the prefill workspace); per ordered pair of devices the busy time and latency of a cut
(the hidden state over the cost model's route); the exit (the sampled token back to the origin). A plan of
stages ``(d_1 = origin, [0, k_1)), (d_2, [k_1, k_2)), ...`` then has

    bottleneck B = max(stage busy times, cut busy times, exit busy time)      (s per request)
    latency    R = sum(stage latencies) + sum(cut latencies) + exit latency     (s per request)

The throughput objective minimises ``B`` and, among plans with the least ``B``, ``R`` (EdgeShard's
pipeline bottleneck; the latency loop of a pipeline with few sequences in flight is not in its
model). The latency objective minimises ``R``; so does the energy objective (EdgeShard has only
latency and throughput; latency is its default).

DP state (``search="subsets"``): ``(k, S, d)``, "layers ``0 .. k - 1`` are placed, ``S`` is the set
of non-origin devices used so far, the last shard is on ``d`` and ends at layer ``k``"; ``f[k, S, d]``
is the best value (``B`` with ``max``, ``R`` with ``+``). Two half-steps per boundary ``k``:

    arrive[k, S, e] = min over d in S - {e} + {origin} of f[k, S - {e}, d] (+) cut(d, e)   (e in S)
    f[k', S, e]     = min over k < k' of arrive[k, S, e] (+) stage(e, [k, k'))            (fits memory)

with ``arrive[0, {}, origin] = 0`` (the origin holds the first shard, so it is never entered again)
and the optimum ``min over S, d of f[L, S, d] (+) exit(d)``. ``B`` first, then ``R`` by the same
recursion with every busy term capped at the least ``B`` (exact: stage times are prefix-sum
differences in both passes). With ``D`` devices, ``L`` layers: ``O(L 2^(D-1) D)`` states and
``O(2^(D-1) (L^2 D + L D^2))`` time, ``O(L 2^(D-1) D)`` memory; this is exact for the model above.

Large fleets (``search="ordered"``, chosen by ``search="auto"`` when the subset DP's work
``(L + 1)^2 2^(D-1) D / 2`` exceeds ``SUBSET_WORK_LIMIT``): the set is replaced by a fixed device
sequence ordered by capability -- the origin, then the other devices by the time they take for every
layer of one decode step of ``max_batch`` sequences under uniform routing (fastest first), then
memory (largest first), then name -- and a shard on ``d`` may be followed only by one on a later
device of the sequence (any may be skipped). State ``(k, d)``, ``O(L D)`` states, ``O(L^2 D + L D^2)``
time; exact over that restricted space (DeepSeek-V3 on 32 devices: ``2^31`` subsets otherwise).

Batching. Memory and the per-request terms depend on the batching, so the DP runs once per point
``(b, m)`` of ``batch_grid(max_batch, D)``; every distinct shard plan found is then given its best
batching by :func:`planner.planners.baselines.best_batching` (the real cost model, the validator with every
SLO), and the best valid plan is returned. EdgeShard does not know SLOs: when none of its plans
meets them the result is infeasible, with the violations.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

import numpy as np

from planner.cost.costmodel import CostModel
from planner.cost.evaluation import is_better
from planner.domain.instance import Instance
from planner.domain.plan import Stage
from planner.domain.units import GB
from planner.planners.outcome import baseline_result
from planner.spaces.batching import batch_grid, best_batching
from planner.spaces.chain import ChainTerms, chain_terms
from planner.spaces.infeasibility import explain_violations
from solvers.registry import register
from solvers.result import Result

SEARCHES = ("auto", "subsets", "ordered")
SUBSET_WORK_LIMIT = 2_000_000  # (L + 1)^2 2^(D - 1) D / 2 above which "auto" takes the ordered search


def uniform_instance(instance: Instance) -> Instance:
    """``instance`` with uniform routing: every routed expert picked with probability ``top_k / experts``."""
    m = instance.model
    pop = instance.workload.popularity
    uniform = np.full(pop.shape, m.top_k / m.num_experts) if m.num_experts else pop
    return replace(instance, workload=replace(instance.workload, popularity=uniform, popularity_kind="uniform"))


@dataclass(frozen=True)
class _Tables:
    f: np.ndarray            # [L + 1, S, D] best value with the last shard on d ending at k, used set S
    from_item: np.ndarray    # [L + 1, S, D] first layer of that shard
    from_device: np.ndarray  # [L, S, D]     device before a shard starting at k on d (used set S, d in S)
    value: float             # optimum (inf: infeasible)
    last: tuple[int, int]    # (S, d) of the last shard of an optimum


def _forward(terms: ChainTerms, objective: str, cap: float, ordered: bool) -> _Tables:
    """Fill the DP tables for ``objective`` ("bottleneck" or "latency") with every busy term <= ``cap`` (s)."""
    D, L = terms.busy.shape
    S = 1 if ordered else 1 << (D - 1)
    bottleneck = objective == "bottleneck"
    combine = np.maximum if bottleneck else np.add
    zero = np.zeros((D, 1))
    value_prefix = np.concatenate([zero, np.cumsum(terms.busy if bottleneck else terms.latency, axis=1)], axis=1)
    busy_prefix = np.concatenate([zero, np.cumsum(terms.busy, axis=1)], axis=1)
    memory_prefix = np.concatenate([zero, np.cumsum(terms.memory, axis=1)], axis=1)
    allowed = (terms.cut_busy <= cap) & ~np.eye(D, dtype=bool)
    if ordered:
        allowed &= np.triu(np.ones((D, D), dtype=bool), k=1)
    cut = np.where(allowed, terms.cut_busy if bottleneck else terms.cut_latency, np.inf)  # [d, e]
    exit_ = terms.exit_busy if bottleneck else terms.exit_latency
    entry = terms.entry_busy[0] if bottleneck else terms.entry_latency[0]
    # Used sets containing device e (bit e - 1), for e = 1 .. D - 1.
    with_device = [np.nonzero(np.arange(S) & (1 << (e - 1)))[0] for e in range(1, D)] if not ordered else []

    arrive = np.full((L, S, D), np.inf)
    if terms.entry_busy[0] <= cap:
        arrive[0, 0, 0] = entry
    f = np.full((L + 1, S, D), np.inf)
    from_item = np.zeros((L + 1, S, D), dtype=np.int64)
    from_device = np.zeros((L, S, D), dtype=np.int64)
    for k in range(1, L + 1):
        # Step 1: the best shard on each device ending at layer k, over its first layer j < k.
        t = (value_prefix[:, k:k + 1] - value_prefix[:, :k]).T                              # [k, D]
        fits = ((memory_prefix[:, k:k + 1] - memory_prefix[:, :k] <= terms.capacity[:, None])
                & (busy_prefix[:, k:k + 1] - busy_prefix[:, :k] <= cap)).T                   # [k, D]
        vals = np.where(fits[:, None, :], combine(arrive[:k], t[:, None, :]), np.inf)        # [k, S, D]
        from_item[k] = np.argmin(vals, axis=0)
        f[k] = np.take_along_axis(vals, from_item[k][None], axis=0)[0]
        if k == L:
            break
        # Step 2: the cut after layer k - 1 from the last device d to a new device e.
        if ordered:
            vals = combine(f[k, 0][:, None], cut)                                              # [d, e]
            from_device[k, 0] = np.argmin(vals, axis=0)
            arrive[k, 0] = vals[from_device[k, 0], np.arange(D)]
        else:
            for e in range(1, D):
                sets = with_device[e - 1]
                vals = combine(f[k, sets ^ (1 << (e - 1))], cut[:, e][None, :])               # [sets, d]
                best = np.argmin(vals, axis=1)
                from_device[k, sets, e] = best
                arrive[k, sets, e] = vals[np.arange(sets.size), best]
    final = np.where(terms.exit_busy <= cap, combine(f[L], exit_[None, :]), np.inf)          # [S, D]
    s, d = np.unravel_index(int(np.argmin(final)), final.shape)
    return _Tables(f, from_item, from_device, float(final[s, d]), (int(s), int(d)))


def _backtrack(t: _Tables, ordered: bool) -> list[tuple[int, int, int]]:
    """Shards ``(device index, first layer, end layer)`` of the optimum, in layer order."""
    (s, d), k = t.last, t.f.shape[0] - 1
    shards = []
    while True:
        j = int(t.from_item[k, s, d])
        shards.append((d, j, k))
        if j == 0:
            return shards[::-1]
        p = int(t.from_device[j, s, d])
        if not ordered:
            s ^= 1 << (d - 1)
        k, d = j, p


@dataclass(frozen=True)
class ShardPlan:
    """The DP's optimum: shards ``(device index, first layer, end layer)`` and its bottleneck ``B`` and
    latency ``R`` (s per request) in the DP's own model."""

    shards: tuple[tuple[int, int, int], ...]
    bottleneck_s: float
    latency_s: float


def shard_figures(terms: ChainTerms, shards) -> tuple[float, float]:
    """(bottleneck B, latency R) in s per request of ``shards`` under ``terms`` (module docstring)."""
    busy = [terms.entry_busy[shards[0][0]]]
    latency = terms.entry_latency[shards[0][0]]
    for n, (d, a, b) in enumerate(shards):
        busy.append(terms.busy[d, a:b].sum())
        latency += terms.latency[d, a:b].sum()
        if n + 1 < len(shards):
            e = shards[n + 1][0]
            busy.append(terms.cut_busy[d, e])
            latency += terms.cut_latency[d, e]
    d = shards[-1][0]
    busy.append(terms.exit_busy[d])
    return float(max(busy)), float(latency + terms.exit_latency[d])


def shard_dp(terms: ChainTerms, objective: str, ordered: bool) -> ShardPlan | None:
    """EdgeShard's optimum over ``terms`` (device 0 is the origin and holds the first shard), or None
    when no plan fits memory. ``objective`` "throughput": least ``B``, then least ``R``; otherwise
    least ``R``. ``ordered``: devices in index order only (else any order, each at most once)."""
    cap = math.inf
    if objective == "throughput":
        first = _forward(terms, "bottleneck", cap, ordered)
        if not math.isfinite(first.value):
            return None
        cap = first.value
    t = _forward(terms, "latency", cap, ordered)
    if not math.isfinite(t.value):
        return None
    shards = tuple(_backtrack(t, ordered))
    return ShardPlan(shards, *shard_figures(terms, shards))


def capability_order(instance: Instance, cm: CostModel) -> list[str]:
    """The origin, then the other devices by the time (s) they take for every layer of one decode step
    of ``max_batch`` sequences in ``cm`` (fastest first), then memory (largest first), then name."""
    names = [d.name for d in instance.devices]
    step_s = chain_terms(cm, names, instance.workload.max_batch, 1).busy.sum(axis=1)
    origin = instance.workload.origin
    rest = sorted((i for i, n in enumerate(names) if n != origin),
                  key=lambda i: (step_s[i], -instance.devices[i].memory_bytes, names[i]))
    return [origin] + [names[i] for i in rest]


def _why_infeasible(terms: ChainTerms) -> str:
    """The binding memory limit at the smallest batching, with numbers (GB)."""
    origin, ws = terms.path[0], terms.workspace_bytes / GB
    need_first, have_origin = terms.memory[0, 0] / GB, terms.capacity[0] / GB
    if need_first > have_origin:
        return (f"infeasible: EdgeShard keeps the first shard on the origin {origin!r}: layer 0 with the embedding "
                f"and the KV cache of one sequence needs {need_first:.4g} GB, the origin has {have_origin:.4g} GB "
                f"after the {ws:.3g} GB prefill workspace")
    need, have = terms.memory[0].sum() / GB, terms.capacity.sum() / GB
    if need > have:
        return (f"infeasible: the model needs {need:.4g} GB (weights and the KV cache of one sequence), the devices "
                f"hold {have:.4g} GB after the {ws:.3g} GB prefill workspace each")
    return (f"infeasible: the layers do not split into contiguous shards that fit the devices' memory, the first on "
            f"the origin {origin!r} (the model needs {need:.4g} GB, the devices hold {have:.4g} GB after the "
            f"{ws:.3g} GB prefill workspace each)")


@register("edgeshard", kind="baseline", problem="instance")
def edgeshard(instance: Instance, *, time_limit=None, seed=0, cost_model: CostModel | None = None,
              search: str = "auto", **_) -> Result:
    """EdgeShard: DP over devices and contiguous shards, first shard on the origin, uniform routing, no codec."""
    t0 = time.perf_counter()
    if search not in SEARCHES:
        raise ValueError(f"search must be one of {SEARCHES}, got {search!r}")
    cm = cost_model or CostModel(instance)
    priced = CostModel(uniform_instance(instance))
    D, L = len(instance.devices), instance.model.num_layers
    if search == "auto":
        search = "subsets" if (L + 1) ** 2 * 2 ** (D - 1) * D / 2 <= SUBSET_WORK_LIMIT else "ordered"
    ordered = search == "ordered"
    if ordered:
        devices = capability_order(instance, priced)
    else:
        origin = instance.workload.origin
        devices = [origin] + [d.name for d in instance.devices if d.name != origin]
    objective = "throughput" if instance.objective == "throughput" else "latency"
    found: dict[tuple[Stage, ...], tuple[ShardPlan, tuple[int, int]]] = {}
    smallest = None
    for b, m in batch_grid(instance.workload.max_batch, D):
        terms = chain_terms(priced, devices, b, m, both_directions=not ordered)
        if smallest is None or b * m < smallest.concurrency:
            smallest = terms
        opt = shard_dp(terms, objective, ordered)
        if opt is not None:
            stages = tuple(Stage(devices[d], a, e) for d, a, e in opt.shards)
            found.setdefault(stages, (opt, (b, m)))
    if not found:
        return baseline_result("edgeshard", instance, None, None, t0, _why_infeasible(smallest))
    best, best_obj, best_key, last = None, None, None, []
    for stages in found:
        plan, obj, violations = best_batching(instance, cm, stages, "edgeshard")
        if plan is None:
            last = violations or last
        elif best is None or is_better(instance.objective, obj, best_obj):
            best, best_obj, best_key = plan, obj, stages
    result = baseline_result("edgeshard", instance, best, best_obj, t0, explain_violations(
        last, "infeasible: no EdgeShard plan meets the constraints at any batching"))
    if best is not None:
        opt, (b, m) = found[best_key]
        result.extra = {"search": search, "devices": devices, "dp_bottleneck_s": opt.bottleneck_s,
                        "dp_latency_s": opt.latency_s, "dp_batching": [b, m], "shard_plans": len(found)}
    return result
