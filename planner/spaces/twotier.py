"""The two-tier space: the origin keeps a prefix of layers and chooses, per MoE layer, which experts
stay local; one partner device runs the rest; one codec rank (or none) at the cut; micro-batching
from the shared grid (:func:`planner.spaces.batching.batch_grid`).

:func:`two_tier_problem` turns an instance, a partner and a batching into a
:class:`models.twotier.TwoTierProblem` whose coefficients are the cost model's own terms, so that the
problem's objective equals :class:`planner.cost.costmodel.CostModel`'s evaluation of the plan
:func:`plan_from_solution` builds (tests check this) when the cost model charges a near layer's far
experts one full round trip per pass (``CostModel(instance, weighted_remote_calls=False)``). The
cost model's default weights that round trip by the probability that a pass calls the far device
(:func:`planner.cost.passes.remote_call_probability`), which is not linear in the expert choice: for
it the problem's latency is an upper bound (a plan with far experts is never slower than the
problem says), so exact solvers over this space prove optimality for the full-round-trip pricing.
Nor does the problem carry a measured framework overhead's per-pass and per-remote-call terms
(its per-layer term is in the layer times it takes from the cost model).
:func:`solution_from_plan` maps a plan of this
space back (a warm start). The exact solvers (:mod:`planner.planners.exact`) and route-aware's Steps
1-4 (:mod:`planner.planners.route_aware`) search it.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from models.twotier import FAR, NEAR, TwoTierProblem, TwoTierSolution
from planner.cost.compute import op_time_s
from planner.cost.costmodel import CostModel
from planner.cost.passes import TOKEN_ID_BYTES
from planner.domain.instance import Instance
from planner.domain.plan import ExpertPlacement, Pipeline, Plan, Stage


def partner_candidates(instance: Instance, cm: CostModel) -> list[tuple[str, float, float]]:
    """Devices the origin could share the model with, one per (card, route from the origin)
    signature, in fleet order: (name, bottleneck bandwidth bytes/s, round-trip time s) of the route."""
    origin = instance.workload.origin
    seen, out = set(), []
    for d in instance.devices:
        if d.name == origin:
            continue
        route = cm.network.route(origin, d.name)
        sig = (d.kind, d.memory_bytes, tuple((link.bandwidth_bytes_per_s, link.rtt_s) for _, _, link in route))
        if sig not in seen:
            seen.add(sig)
            out.append((d.name, min(link.bandwidth_bytes_per_s for _, _, link in route), sum(link.rtt_s for _, _, link in route)))
    return out


def _route_terms(cm: CostModel, a: str, b: str) -> tuple[float, np.ndarray]:
    """(sum of one-way latencies, 1 / bandwidth of each hop) of the route from ``a`` to ``b``."""
    hops = cm.network.route_hops(a, b)
    return sum(one_way for _, _, one_way in hops), np.array([1.0 / bw for _, bw, _ in hops])


class _Phase(NamedTuple):
    """One pass through the model, as the cost model times it."""

    tokens: float      # tokens each layer processes
    context: float     # attention context (tokens)
    prefill: bool
    out_tokens: float  # tokens the pass samples (the head runs on them; their ids go back to the origin)


def _phases(cm: CostModel, micro_batch: int) -> tuple[list[_Phase], np.ndarray, np.ndarray]:
    """(phases, busy_w [P], lat_w [P]). Phase 0: prefill of one request; phase 1: one decode step of
    a micro-batch. busy_w: passes per request for busy times (a decode step serves the micro-batch's
    ``micro_batch`` requests at once); lat_w: passes a request waits for (its latency)."""
    b = float(micro_batch)
    o = cm.output
    phases = [_Phase(cm.prompt, cm.prompt / 2.0, True, 1.0), _Phase(b, cm.decode_context, False, b)]
    return phases, np.array([1.0, (o - 1.0) / b]), np.array([1.0, o - 1.0])


def _compute_terms(cm: CostModel, devs: tuple[str, str], phases: list[_Phase], busy_w: np.ndarray) -> dict:
    """Latency (s) and busy time per request (s) of each layer's non-expert block ([2, L, P], [2, L])
    and of each expert ([2, L, E, P], [2, L, E]) on the near and the far device."""
    m = cm.model
    L, E, P = m.num_layers, max(m.num_experts, 1), len(phases)
    ne_lat = np.zeros((2, L, P))
    item_lat = np.zeros((2, L, E, P))
    for ph, (tokens, ctx, prefill, _) in enumerate(phases):
        for side in (NEAR, FAR):
            # The cost model's own (cached) tables: the non-expert block of each layer, each expert.
            ne_lat[side, :, ph] = cm.times.layer_times(devs[side], tokens, ctx, prefill)[0]
            item_lat[side, :, :, ph] = cm.times.expert_matrix(devs[side], tokens)
    return dict(ne_lat=ne_lat, item_lat=item_lat, ne_busy=np.einsum("slp,p->sl", ne_lat, busy_w),
                item_busy=np.einsum("slep,p->sle", item_lat, busy_w))


def _expert_traffic_terms(cm: CostModel, phases: list[_Phase], busy_w: np.ndarray, inv_bw: np.ndarray) -> dict:
    """An expert served far: its tokens' hidden states go there and back, weighted by how often the
    expert is selected. Latency [L, E, P] (s) and each link's busy time per request [J, L, E] (s)."""
    hb = cm.model.hidden_bytes_per_token
    Q = cm.Q  # selection probability of each expert [L, E]; zero rows for dense layers
    sent = Q[:, :, None] * np.array([ph.tokens for ph in phases])[None, None, :] * hb  # [L, E, P] bytes each way
    return dict(item_link_lat=2.0 * sent * inv_bw.sum(),
                item_link_busy=2.0 * inv_bw[:, None, None] * np.einsum("lep,p->le", sent, busy_w)[None])


def _ends_terms(cm: CostModel, devs: tuple[str, str], phases: list[_Phase], busy_w: np.ndarray) -> dict:
    """The embedding (with layer 0) and the head (with layer L-1) near or far: latency [2, 2, P] and
    busy time per request [2, 2] (s), indexed [first/last, near/far]."""
    m = cm.model
    hb = m.hidden_bytes_per_token
    ends_lat = np.zeros((2, 2, len(phases)))
    for ph, (tokens, _, _, out_tokens) in enumerate(phases):
        for side in (NEAR, FAR):
            dev = cm.devices[devs[side]]
            ends_lat[0, side, ph] = float(op_time_s(dev, 0.0, tokens * hb, cm.db))
            ends_lat[1, side, ph] = float(op_time_s(dev, out_tokens * 2.0 * m.lm_head_params, m.lm_head_params * cm.db, cm.db))
    return dict(ends_lat=ends_lat, ends_busy=np.einsum("esp,p->es", ends_lat, busy_w))


def _cut_terms(cm: CostModel, devs: tuple[str, str], phases: list[_Phase], busy_w: np.ndarray, one_way: float,
               inv_bw: np.ndarray) -> dict:
    """Each option at the cut (no codec, then every allowed rank): latency [K, P] (s; the hop, the
    bytes over the route, encoding near and decoding far), busy time per request [2 + J, K] (s; near,
    far, each link), codec memory [2, K] (bytes) and accuracy loss [K]."""
    m = cm.model
    near, far = devs
    codec = cm.instance.constraints.codec
    ranks: list[int | None] = [None, *codec.ranks]
    K = len(ranks)
    cut_lat = np.zeros((K, len(phases)))
    cut_busy = np.zeros((2 + len(inv_bw), K))
    cut_mem = np.zeros((2, K))
    for k, r in enumerate(ranks):
        per_token = m.hidden_bytes_per_token if r is None else r * cm.db
        for ph, (tokens, _, _, _) in enumerate(phases):
            nbytes = tokens * per_token
            t_enc = t_dec = 0.0
            if r is not None:
                flops = tokens * 2.0 * m.hidden_size * r
                t_enc = float(op_time_s(cm.devices[near], flops, m.hidden_size * r * cm.db, cm.db))
                t_dec = float(op_time_s(cm.devices[far], flops, m.hidden_size * r * cm.db, cm.db))
            cut_lat[k, ph] = one_way + nbytes * inv_bw.sum() + t_enc + t_dec
            cut_busy[NEAR, k] += busy_w[ph] * t_enc
            cut_busy[FAR, k] += busy_w[ph] * t_dec
            cut_busy[2:, k] += busy_w[ph] * nbytes * inv_bw
        if r is not None:
            cut_mem[:, k] = m.hidden_size * r * cm.db
    return dict(cut_lat=cut_lat, cut_busy=cut_busy, cut_mem=cut_mem, cut_loss=np.array([codec.loss(r) for r in ranks]))


def _origin_terms(phases: list[_Phase], busy_w: np.ndarray, one_way: float, inv_bw: np.ndarray) -> dict:
    """Token ids from the origin to a far first layer and sampled ids back from a far last layer:
    latency [P] (s) and each link's busy time per request [J] (s)."""
    P = len(phases)
    entry_busy = sum(busy_w[ph] * phases[ph].tokens * TOKEN_ID_BYTES * inv_bw for ph in range(P))
    exit_busy = sum(busy_w[ph] * phases[ph].out_tokens * TOKEN_ID_BYTES * inv_bw for ph in range(P))
    return dict(entry_lat=np.array([one_way + ph.tokens * TOKEN_ID_BYTES * inv_bw.sum() for ph in phases]),
                exit_lat=np.array([one_way + ph.out_tokens * TOKEN_ID_BYTES * inv_bw.sum() for ph in phases]),
                entry_busy=np.asarray(entry_busy), exit_busy=np.asarray(exit_busy))


def _memory_terms(cm: CostModel, devs: tuple[str, str], seqs: int, exists: np.ndarray) -> dict:
    """Bytes: each layer's non-expert weights and KV cache for ``seqs`` sequences in flight [2, L],
    each expert [L, E], the embedding and head [2, 2] ([first/last, near/far]), the head's copy a
    device holding both ends of a tied model saves, the workspace [2] and the capacities [2]."""
    m = cm.model
    ctx = cm.prompt + cm.output
    kv = np.array([seqs * ctx * m.kv_bytes_per_token_per_layer] * m.num_layers)
    workspace = cm.workspace_bytes
    return dict(ne_mem=np.stack([cm.nonexpert_bytes + kv] * 2), item_mem=np.where(exists, cm.expert_bytes, 0.0),
                ends_mem=np.array([[m.embedding_params * cm.db] * 2, [m.lm_head_params * cm.db] * 2]),
                head_tied_mem=m.lm_head_params * cm.db if m.tie_word_embeddings else 0.0,
                workspace_mem=np.array([workspace, workspace]),
                capacity=np.array([cm.devices[devs[NEAR]].memory_bytes, cm.devices[devs[FAR]].memory_bytes]))


def two_tier_problem(cm: CostModel, near: str, far: str, micro_batch: int, micro_batches: int) -> TwoTierProblem:
    """The cost model's terms for a split of the model between ``near`` (the origin) and ``far``."""
    inst = cm.instance
    m = cm.model
    devs = (near, far)
    phases, busy_w, lat_w = _phases(cm, micro_batch)
    one_way, inv_bw = _route_terms(cm, near, far)
    exists = np.zeros((m.num_layers, max(m.num_experts, 1)), dtype=bool)
    exists[m.moe_layers] = True
    seqs = micro_batch * micro_batches
    c = inst.constraints
    return TwoTierProblem(
        **_compute_terms(cm, devs, phases, busy_w), **_expert_traffic_terms(cm, phases, busy_w, inv_bw),
        fixed_lat=np.full(len(phases), 2.0 * one_way), allowed=exists.copy(), exists=exists,
        **_ends_terms(cm, devs, phases, busy_w), **_cut_terms(cm, devs, phases, busy_w, one_way, inv_bw),
        **_origin_terms(phases, busy_w, one_way, inv_bw), **_memory_terms(cm, devs, seqs, exists),
        lat_weight=lat_w, concurrency=float(seqs),
        power_w=np.array([cm.devices[d].power_w for d in devs]), idle_w=np.array([cm.devices[d].idle_power_w for d in devs]),
        loss_budget=c.accuracy_loss_budget, objective=inst.objective,
        max_request_latency=c.latency_slo_s, max_phase_latency=(c.ttft_slo_s, c.tpot_slo_s),
    )


def plan_from_solution(instance: Instance, near: str, far: str, micro_batch: int, micro_batches: int,
                       sol: TwoTierSolution, solver: str) -> Plan:
    m = instance.model
    L, k = m.num_layers, sol.near_layers
    ranks = [None, *instance.constraints.codec.ranks]
    stages, codec = [], ()
    if k > 0:
        stages.append(Stage(near, 0, k))
    if k < L:
        stages.append(Stage(far, k, L))
    if len(stages) == 2:
        codec = (ranks[sol.option],)
    placement = tuple(
        ExpertPlacement(l, e, (far,), (1.0,))
        for l in range(min(k, L)) if m.is_moe_layer(l) for e in range(m.num_experts) if not sol.near_items[l, e]
    )
    return Plan((Pipeline(tuple(stages), codec, micro_batch, micro_batches, 1.0, placement),), instance.name, solver)


def instance_value(instance: Instance, value_period_latency_energy: float) -> float:
    """TwoTier objective (seconds per request, seconds, joules per request) -> instance objective units."""
    o = float(instance.workload.output_tokens)
    v = value_period_latency_energy
    if instance.objective == "throughput":
        return o / v if v > 0 else math.inf
    if instance.objective == "latency":
        return v * 1e3
    return v / o


def solution_from_plan(instance: Instance, plan: Plan) -> tuple[str, int, int, TwoTierSolution] | None:
    """(partner, micro-batch, micro-batches, solution) of a plan that lies in the joint space
    (one pipeline: the origin's prefix and/or one partner's suffix, experts of the origin's layers
    on the origin or the partner), or None; used as a warm start."""
    m, origin = instance.model, instance.workload.origin
    if len(plan.pipelines) != 1:
        return None
    pipe = plan.pipelines[0]
    devs = pipe.devices
    if not 1 <= len(devs) <= 2 or (len(devs) == 2 and devs[0] != origin):
        return None
    far = devs[-1] if devs[-1] != origin else None
    if far is None:
        others = [d.name for d in instance.devices if d.name != origin]
        if not others:
            return None
        far = others[0]
    k = pipe.stages[0].end_layer if devs[0] == origin else 0
    near = np.zeros((m.num_layers, max(m.num_experts, 1)), dtype=bool)
    for layer in m.moe_layers:
        if layer < k:
            near[layer, : m.num_experts] = True
    for e in pipe.expert_placement:
        if e.layer >= k or tuple(e.devices) != (far,):
            return None
        near[e.layer, e.expert] = False
    ranks = [None, *instance.constraints.codec.ranks]
    rank = pipe.codec_ranks[0] if pipe.codec_ranks else None
    if rank not in ranks:
        return None
    return far, pipe.micro_batch_size, pipe.num_micro_batches, TwoTierSolution(k, near, ranks.index(rank))
