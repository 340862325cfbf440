"""Expert-parallel pipelines: one pipeline over a group of devices whose routed experts are spread
(and replicated) over the whole group, the non-expert blocks split into contiguous stages.

* Experts: every MoE layer's routed experts are placed over the group by a placement solver on the
  instance's expert-placement problem (:mod:`planner.spaces.placement`): ``"eplb"`` is DeepSeek's
  EPLB on identical devices with equal slots (``ceil(E / B)`` plus ``redundant`` per device, the
  loads being the selection probabilities), as deployed by vLLM and SGLang; ``"greedy-placement"``
  is speed- and memory-aware (:func:`solvers.placement.solve_greedy_placement`: slots from each
  device's memory share, load over speed balanced).
* Layers: the non-expert blocks are split into contiguous stages over the group in its order, in
  proportion to the memory each device has left after its experts
  (:func:`planner.spaces.batching.split_by_weights`); a device whose share rounds to no layer holds
  experts only.
* An expert that is not solely on its layer's stage device gets an
  :class:`~planner.domain.plan.ExpertPlacement` with its devices and token shares.

:func:`expert_parallel_pipeline` builds the pipeline (micro-batching left to the caller); the
``eplb`` baseline and route-aware use it with their placement solver.
"""

from __future__ import annotations

import math

import numpy as np

from models.assignment import ReplicatedAssignment
from planner.cost.costmodel import CostModel
from planner.cost.passes import remote_call_probabilities
from planner.domain.instance import Instance
from planner.domain.plan import Pipeline, placement_from_columns
from planner.domain.units import GB
from planner.spaces.batching import pipeline_from_ranges, split_by_weights
from planner.spaces.placement import placement_problem
from solvers.eplb import eplb_rebalance
from solvers.placement import solve_eplb
from solvers.registry import get

PLACEMENTS = ("eplb", "greedy-placement")


def _home_bins(m, group: list[str], stages) -> np.ndarray:
    """[G] the position in ``group`` of each MoE layer's stage device."""
    home_of = {layer: group.index(s.device) for s in stages for layer in s.layers}
    return np.array([home_of[layer] for layer in m.moe_layers], dtype=np.intp)


def _placement_entries(instance: Instance, group: list[str], stages, replicas: np.ndarray, shares: np.ndarray):
    """Placement entries [G, I, B] -> ExpertPlacement for every expert not solely at its layer's stage device."""
    m = instance.model
    home = _home_bins(m, group, stages)
    count = np.count_nonzero(replicas, axis=2)
    solely_home = (count == 1) & replicas[np.arange(len(home)), :, home]  # [G, I]
    g_idx, i_idx, b_idx = np.nonzero(replicas & ~solely_home[:, :, None])  # sorted by (g, i), then b
    if g_idx.size == 0:
        return ()
    # One entry per run of equal (g, i); plain lists from here (numpy scalars cost ~10x in the loop).
    key = g_idx * replicas.shape[1] + i_idx
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]).tolist()
    ends = [*starts[1:], int(key.size)]
    bins = b_idx.tolist()
    names = [group[b] for b in bins]
    share = shares[g_idx, i_idx, b_idx].tolist()
    gs, items = g_idx[starts].tolist(), i_idx[starts].tolist()
    layers = m.moe_layers
    # Most experts sit whole on one device: those entries share their (immutable) tuples.
    alone, whole = [(name,) for name in group], (1.0,)
    single = [z - a == 1 and share[a] == 1.0 for a, z in zip(starts, ends, strict=True)]
    devices = [alone[bins[a]] if one else tuple(names[a:z]) for one, a, z in zip(single, starts, ends)]
    fractions = [whole if one else tuple(share[a:z]) for one, a, z in zip(single, starts, ends)]
    return placement_from_columns([layers[g] for g in gs], items, devices, fractions)


def layout_round_trip_floor(instance: Instance, cm: CostModel, group: list[str], stages, replicas: np.ndarray,
                            shares: np.ndarray, tokens: float = 1.0) -> float:
    """:func:`planner.cost.passes.round_trip_floor` of the pipeline the layout (``stages``, and
    ``replicas`` / ``shares`` [G, I, B] over ``group``) makes, from the arrays: per MoE layer the
    largest call probability x round-trip propagation over the devices other than its stage's that
    hold a copy of one of its experts (the same terms, summed in another order)."""
    m = instance.model
    home = _home_bins(m, group, stages)                                                      # [G]
    B = len(group)
    remote = replicas.any(axis=1)                                                            # [G, B]
    remote[np.arange(home.size), home] = False
    if not remote.any():
        return 0.0
    mass = np.einsum("gi,gib->gb", np.asarray(cm.q, dtype=float), shares)
    calls = (remote_call_probabilities(mass, tokens, m.top_k, m.num_experts) if cm.weighted_remote_calls
             else np.ones_like(mass))
    net = cm.network
    latency = np.zeros((B, B))
    for h in np.unique(home).tolist():
        for b in range(B):
            if b != h:
                latency[h, b] = net.route_terms(group[h], group[b])[0] + net.route_terms(group[b], group[h])[0]
    return float(np.where(remote, calls * latency[home], 0.0).max(axis=1).sum())


def expert_parallel_pipeline(instance: Instance, cm: CostModel, group: list[str], *, placement: str = "eplb",
                             redundant: int = 1, screen=None) -> tuple[Pipeline | None, str, dict]:
    """(the pipeline, "" , details) of experts spread over ``group``, or (None, why not, details).

    ``placement``: ``"eplb"`` (``redundant`` spare slots per device when ``B > 1``) or
    ``"greedy-placement"``. The pipeline has micro-batch 1 x 1; its devices are ``group`` in order
    (those that get layers run stages). ``screen`` (optional): called with (stages, replicas,
    shares) once the layout is known; a reason it returns is returned instead of the pipeline,
    before its thousands of placement entries are built (route-aware's Step 7 screens by
    :func:`layout_round_trip_floor`).
    """
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    m = instance.model
    L, E, B = m.num_layers, m.num_experts, len(group)
    memory = np.array([instance.device(n).memory_bytes for n in group], dtype=float)
    if placement == "eplb":
        slots = math.ceil(E / B) + (redundant if B > 1 else 0)
        # EPLB gives every device ``slots`` physical experts per layer, of which at most the B x slots
        # - E extra copies can duplicate one another: a device holds at least the rest, whatever EPLB
        # decides. When that alone overflows the smallest device, say so without running EPLB.
        spares = {"slots_per_device": slots, "redundant_per_device": redundant if B > 1 else 0}

        def overflow(held: np.ndarray, at_least: bool) -> str:
            b = int(np.argmin(memory - held))
            return (f"infeasible: EPLB gives each of the {B} edge and cloud devices {slots} expert slots per MoE layer; "
                    f"device {group[b]!r} then holds {'at least ' if at_least else ''}{held[b] / GB:.2f} GB of experts "
                    f"and has {memory[b] / GB:.2f} GB")

        least = np.full(B, max(1, slots - (B * slots - E)) * m.num_moe_layers * cm.expert_bytes)
        if (least >= memory).any():
            return None, overflow(least, True), spares
        # Each device holds its slots' distinct experts: when that overflows one, say so before
        # building the solution (the rebalance is remembered for solve_eplb below; the solution's
        # replicas are these distinct experts, so no check after it is needed).
        phy2log = eplb_rebalance(np.asarray(cm.q, dtype=np.float32), B * slots, B)[0]
        blocks = np.sort(phy2log.reshape(phy2log.shape[0], B, slots), axis=2)
        distinct = 1 + (np.diff(blocks, axis=2) != 0).sum(axis=2)                     # [G, B]
        held = distinct.sum(axis=0) * cm.expert_bytes
        if (memory - held <= 0).any():
            return None, overflow(held, False), spares
        # EPLB's global policy on B identical bins (speed 1, no memory limit); its solution holds
        # every expert's devices (replicas) and equal shares per EPLB copy (copies / logcnt).
        placed = solve_eplb(ReplicatedAssignment.build(np.asarray(cm.q, dtype=float), np.ones(B), slots=slots,
                                                       max_replicas=B * slots))
        details = {**spares, "balancedness": placed.extra["balancedness"], "merged_duplicates": placed.extra["merged_duplicates"]}
    else:
        problem, _ = placement_problem(instance, devices=group, cost_model=cm)
        placed = get("greedy-placement", problem="assignment").func(problem)
        if placed.solution is None:
            return None, f"infeasible: the speed-aware placement over {', '.join(group)} found none: {placed.message}", {}
        details = {"balancedness": placed.extra.get("balancedness")}
    replicas, shares = placed.solution.replicas, placed.solution.shares
    experts_bytes = np.count_nonzero(replicas, axis=(0, 1)) * cm.expert_bytes
    free = memory - experts_bytes
    if (free <= 0).any():
        b = int(np.argmin(free))
        return None, (f"infeasible: the placement puts {experts_bytes[b] / GB:.2f} GB of experts on device {group[b]!r}, "
                      f"which has {memory[b] / GB:.2f} GB"), details
    stages = pipeline_from_ranges(group, split_by_weights(L, list(free))).stages
    why = screen(stages, replicas, shares) if screen is not None else None
    if why:
        return None, why, details
    return Pipeline(stages, expert_placement=_placement_entries(instance, group, stages, replicas, shares)), "", details
