"""Expert placement of an instance, as expert parallelism sees it: the instance as a
:class:`models.assignment.ReplicatedAssignment` (objective "bottleneck").

:func:`placement_problem` builds it; :func:`lower_bound` bounds it; :func:`candidate_mask` and
:func:`layer_problems` restrict it around a reference placement (for exact solvers on large
problems, :mod:`planner.planners.placement`).

The problem (one decode step of a batch of ``tokens`` = ``workload.max_batch`` sequences):

* groups = the model's MoE layers (in MoE-layer order; option ``layers`` keeps some of them),
  items = the routed experts of a layer, bins = the chosen devices: ``devices=[names]``, by default
  every device of the ``cloud`` tier, or every device when the instance has none.
* ``load[g, i]`` = expected tokens routed to expert ``i`` of MoE layer ``g`` per decode step:
  selection probability (``CostModel.Q``, each row sums to top-k) x ``tokens``.
* ``speed[b]`` = relative expert throughput of device ``b``: ``1 / t_b`` with ``t_b`` the cost
  model's roofline time (:func:`planner.cost.compute.op_time_s`) of a representative expert operation
  on the device -- one expert serving the mean load ``tokens * top_k / experts`` tokens (FLOPs
  ``2 * expert_params`` per token) and reading its weights when touched (probability
  ``1 - (1 - top_k / experts) ** tokens``, as the cost model counts) -- normalised so that the
  fastest chosen device has speed 1. ``load / speed`` is then "tokens, in fastest-device
  equivalents"; the linear model is exact at the representative load and an approximation away
  from it (a memory-bound expert costs about the same for 1 or 8 tokens).
* ``weight[i, b]`` = the bytes of one expert replica (``CostModel.expert_bytes``) on every device.
* ``capacity[b]`` = what remains of the device's memory for routed experts (the rule):

      capacity[b] = (1 - headroom) * memory[b] - workspace - (memory[b] / M) * (KV + N)   ("sharded")
      capacity[b] = (1 - headroom) * memory[b] - workspace - (memory[b] / M) * KV - N     ("replicated")

  with ``M`` the summed memory of the chosen devices, ``N`` every non-expert weight of the model
  (attention, routers, shared experts, dense FFNs, embedding and LM head: ``CostModel.nonexpert_bytes``
  plus the embedding and head), ``KV`` the KV cache of ``tokens`` sequences of ``prompt + output``
  tokens over all layers, and ``workspace`` the cost model's prefill activation workspace
  (``CostModel.workspace_bytes``, every device). Option ``nonexpert="sharded"`` (default) spreads the non-expert weights over the chosen
  devices in proportion to their memory (tensor / pipeline parallel attention on the same devices);
  ``"replicated"`` puts a whole copy on every device (data-parallel attention, as DeepSeek serves
  V3); the KV cache follows the sequences, so it is spread in proportion to memory either way.
  Negative results become 0. ``headroom`` (default 0) keeps a fraction of every device free. With
  ``layers`` choosing some of the MoE layers, capacity is scaled by their share of the MoE layers.
* ``slots[b]`` (replicas per layer; option ``slots``, an int or one per device): by default
  ``min(experts, ceil(capacity[b] / (layers * expert_bytes)))``, the device's memory share of one
  layer rounded up; the memory constraint (over all layers) then decides how many layers may use
  the rounded-up slot.
* ``max_replicas`` (option, default 2) replicas per expert at most.
* traffic (optional, ``traffic_weight > 0``): ``traffic[g, i, b]`` = the round trip of one token's
  hidden state between ``traffic_origin`` (default the workload's origin) and device ``b`` (bytes /
  bandwidth over the route, both ways), divided by the per-token time of the representative op on
  the fastest device, i.e. in the same units as ``load / speed``.

Solving it, restricted on large problems: :mod:`planner.planners.placement`.
"""

from __future__ import annotations

import numpy as np

from models.assignment import AssignmentSolution, ReplicatedAssignment
from planner.cost.compute import op_time_s
from planner.cost.costmodel import CostModel
from planner.domain.instance import Instance
from solvers.placement import group_lower_bounds

PROBLEM = "assignment"
DEFAULT_MAX_REPLICAS = 2
FULL_MASK_LIMIT = 20_000      # candidate triples above which exact solvers get a restricted mask by default
DEFAULT_CANDIDATES = 2        # extra candidate devices per free expert in a restricted mask
MIN_LAYER_S = 1.0             # least time limit of one layer's solve when layers are solved apart
NONEXPERT_RULES = ("sharded", "replicated")
PROBLEM_OPTIONS = ("devices", "layers", "tokens", "max_replicas", "slots", "nonexpert", "headroom",
                   "traffic_weight", "traffic_origin", "cost_model")


# ----- the problem -----------------------------------------------------------------------------


def _chosen_devices(instance: Instance, devices) -> list[str]:
    if devices is not None:
        names = list(devices)
        known = instance.device_index
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"unknown device(s) {', '.join(map(repr, unknown))}; the instance has "
                             f"{', '.join(known)}")
        if not names or len(set(names)) != len(names):
            raise ValueError(f"devices must be a non-empty list of distinct names, got {names!r}")
        return names
    cloud = [d.name for d in instance.devices_of_tier("cloud")]
    return cloud or [d.name for d in instance.devices]


def _chosen_layers(num_moe_layers: int, layers) -> np.ndarray:
    if layers is None:
        return np.arange(num_moe_layers)
    if isinstance(layers, (int, np.integer)):
        if not 1 <= layers <= num_moe_layers:
            raise ValueError(f"layers must be between 1 and {num_moe_layers} (MoE layers), got {layers}")
        return np.arange(int(layers))
    picked = np.asarray(list(layers), dtype=int)
    if (picked.size == 0 or picked.min() < 0 or picked.max() >= num_moe_layers
            or len(set(picked.tolist())) != picked.size):
        raise ValueError(f"layers must be distinct MoE-layer indices in 0..{num_moe_layers - 1}, got {list(layers)}")
    return picked


def representative_expert_time_s(cm: CostModel, device: str, tokens: float) -> float:
    """Cost-model time (s) of one routed expert serving the mean load of ``tokens`` tokens' step."""
    m = cm.model
    per_expert = tokens * m.top_k / m.num_experts
    touched = 1.0 - (1.0 - min(m.top_k / m.num_experts, 1.0)) ** tokens
    return float(op_time_s(cm.devices[device], per_expert * cm.expert_flops_per_token, touched * cm.expert_bytes,
                           cm.db))


def reserved_bytes(cm: CostModel, names: list[str], tokens: float, nonexpert: str = "sharded") -> np.ndarray:
    """Bytes of each chosen device kept from routed experts (see the module docstring's rule)."""
    if nonexpert not in NONEXPERT_RULES:
        raise ValueError(f"nonexpert must be one of {NONEXPERT_RULES}, got {nonexpert!r}")
    m, db = cm.model, cm.db
    memory = np.array([cm.devices[n].memory_bytes for n in names], dtype=float)
    head = 0 if m.tie_word_embeddings else m.lm_head_params
    weights = float(cm.nonexpert_bytes.sum() + (m.embedding_params + head) * db)
    kv = tokens * (cm.prompt + cm.output) * m.kv_bytes_per_token_per_layer * m.num_layers
    share = memory / memory.sum()
    if nonexpert == "sharded":
        return cm.workspace_bytes + share * (kv + weights)
    return cm.workspace_bytes + share * kv + weights


def placement_problem(instance: Instance, *, devices=None, layers=None, tokens: float | None = None,
                      max_replicas: int = DEFAULT_MAX_REPLICAS, slots=None, nonexpert: str = "sharded",
                      headroom: float = 0.0, traffic_weight: float = 0.0, traffic_origin: str | None = None,
                      cost_model: CostModel | None = None) -> tuple[ReplicatedAssignment, list[str]]:
    """The expert-placement problem of ``instance`` and the names of its bins (devices), in bin order.

    Options: see the module docstring. ``layers``: a number (the first MoE layers) or MoE-layer
    indices; ``tokens``: tokens per decode step (default ``workload.max_batch``).
    """
    m = instance.model
    if m.num_experts <= 0 or m.num_moe_layers == 0:
        raise ValueError(f"model {m.name!r} has no routed experts: there is nothing to place")
    if not 0.0 <= headroom < 1.0:
        raise ValueError(f"headroom must be a fraction in [0, 1), got {headroom!r}")
    if int(max_replicas) < 1:
        raise ValueError(f"max_replicas must be >= 1, got {max_replicas!r}")
    cm = cost_model or CostModel(instance)
    names = _chosen_devices(instance, devices)
    picked = _chosen_layers(m.num_moe_layers, layers)
    tokens = float(instance.workload.max_batch if tokens is None else tokens)
    if not tokens > 0:
        raise ValueError(f"tokens must be > 0, got {tokens!r}")
    G, I, B = picked.size, m.num_experts, len(names)

    load = np.asarray(cm.q, dtype=float)[picked] * tokens
    t = np.array([representative_expert_time_s(cm, n, tokens) for n in names])
    speed = t.min() / t

    memory = np.array([cm.devices[n].memory_bytes for n in names], dtype=float)
    capacity = np.maximum((1.0 - headroom) * memory - reserved_bytes(cm, names, tokens, nonexpert), 0.0)
    capacity *= G / m.num_moe_layers      # a subset of the layers gets its share of the expert memory
    w = float(cm.expert_bytes)
    if slots is None:
        slot_count = np.minimum(I, np.ceil(capacity / (G * w) - 1e-9)).astype(int) if w > 0 else np.full(B, I)
    else:
        slot_count = np.broadcast_to(np.asarray(slots, dtype=int), (B,)).copy()

    traffic = None
    if traffic_weight > 0:
        origin = traffic_origin or instance.workload.origin
        per_token_s = t.min() / (tokens * m.top_k / m.num_experts)
        hb = m.hidden_bytes_per_token
        trip = np.array([2.0 * sum(hb / link.bandwidth_bytes_per_s for _, _, link in cm.network.route(origin, n))
                         for n in names])
        traffic = np.broadcast_to(trip / per_token_s, (G, I, B))

    problem = ReplicatedAssignment.build(
        load, speed, slots=slot_count, weight=w, capacity=capacity, max_replicas=int(max_replicas),
        traffic=traffic, traffic_weight=traffic_weight,
        names={"bins": names, "groups": [int(m.moe_layers[k]) for k in picked], "items": list(range(I))})
    return problem, names


# ----- bounds and candidate masks --------------------------------------------------------------


def lower_bound(problem: ReplicatedAssignment) -> float:
    """A lower bound on the optimum of ``problem`` ("bottleneck", traffic ignored, so it stays valid):
    per group the larger of total load / total candidate speed and each item's load over the speed
    of its ``max_replicas`` fastest candidate bins, summed over groups
    (:func:`solvers.placement.group_lower_bounds`)."""
    return float(group_lower_bounds(problem).sum())


def candidate_mask(problem: ReplicatedAssignment, reference: AssignmentSolution, k: int, *,
                   free_items: int = 16, hot_bins: int = 2, random_candidates: int = 1,
                   seed: int = 0) -> np.ndarray:
    """[G, I, B] restricted candidates built around a reference placement.

    Every item keeps the bins of its replicas in ``reference`` (so the reference stays feasible,
    and an item may still drop a spare replica or change its shares). The *free* items of a group
    -- its ``free_items`` heaviest items and every item with a replica on one of the group's
    ``hot_bins`` most loaded bins (by load / speed in ``reference``) -- may also go on the ``k``
    least-loaded bins of their group and on ``random_candidates`` bins drawn at random (``seed``).
    The result lies within the problem's own mask.
    """
    G, I, B = problem.shape
    k = int(k)
    if k < 0 or free_items < 0 or hot_bins < 0 or random_candidates < 0:
        raise ValueError("candidates, free_items, hot_bins and random_candidates must be >= 0")
    y = np.asarray(reference.replicas, dtype=bool)
    mask = y.copy()
    times = np.einsum("gi,gib->gb", problem.load, reference.shares) / problem.speed[None, :]
    rows = np.arange(G)[:, None]
    order = np.argsort(times, axis=1, kind="stable")                 # [G, B] least-loaded first
    hot = order[:, B - min(hot_bins, B):] if hot_bins else np.zeros((G, 0), dtype=int)
    free = y[rows, :, hot].any(axis=1) if hot.shape[1] else np.zeros((G, I), dtype=bool)
    heavy = np.argsort(-problem.load, axis=1, kind="stable")[:, :min(free_items, I)]
    free[rows, heavy] = True
    extra = np.zeros((G, B), dtype=bool)
    extra[rows, order[:, :min(k, B)]] = True
    mask |= free[:, :, None] & extra[:, None, :]
    if random_candidates > 0 and B > 1:
        rng = np.random.default_rng(seed)
        picks = rng.integers(0, B, size=(G, I, int(random_candidates)))
        g_idx, i_idx = np.indices((G, I))
        for r in range(int(random_candidates)):
            mask[g_idx, i_idx, picks[:, :, r]] |= free
    return mask & problem.mask


def layer_problems(problem: ReplicatedAssignment, reference: AssignmentSolution) -> list[ReplicatedAssignment]:
    """One problem per group (G = 1) whose memory is the reference's use in that group plus an even
    part of what the reference leaves free on each bin: solutions of the groups put together then
    meet the memory limits of ``problem`` (its other data, the mask included, are kept)."""
    G, I, B = problem.shape
    used = np.einsum("ib,gib->gb", problem.weight, np.asarray(reference.replicas, dtype=float))
    with np.errstate(invalid="ignore"):
        spare = np.where(np.isfinite(problem.capacity), np.maximum(problem.capacity - used.sum(axis=0), 0.0), np.inf)
    out = []
    for g in range(G):
        capacity = np.where(np.isfinite(problem.capacity), used[g] + spare / G, np.inf)
        out.append(ReplicatedAssignment.build(
            problem.load[g:g + 1], problem.speed, slots=problem.slots, weight=problem.weight, capacity=capacity,
            mask=problem.mask[g:g + 1], max_replicas=problem.max_replicas[g:g + 1], traffic=problem.traffic[g:g + 1],
            traffic_weight=problem.traffic_weight, objective=problem.objective))
    return out
