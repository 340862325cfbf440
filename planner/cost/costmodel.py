"""Cost model: predicted time, throughput, latency, memory and energy of a plan on an instance.

Per-operator terms (roofline), summed along the plan:

* **Compute** of one operation on device ``d``: ``max(FLOPs / F_d(FLOPs), bytes / B_d(bytes))`` where
  ``F_d``, ``B_d`` are the device's effective FLOP/s and memory bandwidth (datasheet peak x
  efficiency, or a measured profile's fitted curve). Per layer: the non-expert block (attention
  projections, attention scores over the KV cache, router, shared experts or dense FFN) is one
  operation; each routed expert replica is one operation whose weights are read when at least one
  token of the micro-batch picks it (probability ``1 - (1 - q)^n`` for selection probability ``q``).
* **Transfer** of ``n`` bytes over a route of links: per hop ``rtt/2 + n / bandwidth`` (latency) and
  ``n / bandwidth`` of link busy time (throughput). At a pipeline cut a codec of rank ``r`` sends
  ``r`` instead of ``hidden_size`` elements per token and costs an encoder and a decoder GEMM.
  A routed expert placed away from its layer's stage costs a round trip of the token's hidden state.
* **Decode**: a micro-batch of ``b`` sequences, each at the mean context ``prompt + output/2``.
  TPOT (one token's trip around the pipeline and back to the origin) is the sum of stage critical
  times and transfers; the pipeline sustains ``min(b / max busy, b*m / TPOT)`` tokens/s (busy: the
  time each device and link is occupied per micro-batch step; ``m`` micro-batches in flight).
* **Prefill**: one request's ``prompt`` tokens through the pipeline (causal attention at mean
  context ``prompt/2``); TTFT adds the first token's way back to the origin.
* **Throughput** (output tokens/s): requests/s is the lower of ``1 / max_r busy_r`` (busy per
  request over devices and links, prefill plus decode) and ``b*m / latency``.
* **Memory** per device: weights (its layers' non-expert weights, the routed experts it holds,
  embedding / LM head, codec matrices) + KV cache for ``b*m`` sequences of ``prompt + output``
  tokens + a prefill activation workspace (:attr:`CostModel.workspace_bytes`).
* **Energy** per output token: busy time x (power - idle power) + idle power x wall time, summed
  over the plan's devices.

A pass is one walk over the pipeline: :meth:`CostModel.pass_steps` lists its steps (the resource
held, for how long, the propagation after it, remote experts as parallel branches), which the
simulator (:mod:`planner.sim`) replays; the pass's latency and busy times are their sums.

The parts: :mod:`~planner.cost.compute` (roofline times per hardware), :mod:`~planner.cost.network`
(routes and transfers), :mod:`~planner.cost.passes` (one pass, term by term),
:mod:`~planner.cost.memory` (bytes per device), :mod:`~planner.cost.evaluation` (the predicted
figures); this module puts them together for one instance.

Units: seconds, bytes, FLOPs, FLOP/s, bytes/s, watts, joules.
"""

from __future__ import annotations

import math

import numpy as np

from planner.cost.compute import LayerTimes
from planner.cost.evaluation import Evaluation, Fork, PhaseCost, PipelineMetrics, Step
from planner.cost.memory import memory_bytes
from planner.cost.network import network_of
from planner.cost.passes import gated_layers, walk
from planner.domain.instance import Instance
from planner.domain.memo import IdentityMemo
from planner.domain.plan import Pipeline, Plan

_PASS_CACHE_SIZE = 4096  # passes remembered by _pass_cached before the cache starts over


class CostModel:
    """Predicts a plan's figures on one instance. Build once per instance; :meth:`evaluate` is cheap.

    Figures of the instance it prices with: ``prompt`` and ``output`` tokens, ``decode_context``
    (``prompt + output / 2``), ``q[moe layer, expert]`` and ``Q[layer, expert]`` (selection
    probability per token; zero rows for dense layers), ``expert_bytes`` and
    ``expert_flops_per_token`` of one routed expert, ``nonexpert_bytes[layer]``,
    ``experts_per_layer[layer]``, ``workspace_bytes``. Its parts: ``network`` (routes,
    :class:`~planner.cost.network.Network`) and ``times`` (roofline tables,
    :class:`~planner.cost.compute.LayerTimes`). ``instance_cache`` holds tables derived from this
    instance that other modules compute once (route matrices of a path, expert shares of a placement).
    """

    def __init__(self, instance: Instance, *, weighted_remote_calls: bool = True):
        self.instance = instance
        # Remote experts' round trips charged P x RTT (P: the chance that a pass calls the device,
        # planner.cost.passes.remote_call_probability); False: one full round trip per layer and pass,
        # the pricing of the two-tier formulation (planner.spaces.twotier), an upper bound of this one.
        self.weighted_remote_calls = weighted_remote_calls
        m = instance.model
        self.model = m
        self.db = m.dtype_bytes
        self.devices = instance.device_index
        w = instance.workload
        self.prompt = float(w.prompt_tokens)
        self.output = float(w.output_tokens)
        self.decode_context = self.prompt + self.output / 2.0
        self.moe_index = {layer: k for k, layer in enumerate(m.moe_layers)}
        self.q = w.popularity  # [moe layer, expert] selection probability per token
        # Prefill activation workspace (bytes) every stage device holds on top of its weights and KV
        # cache: the prompt's hidden state twice plus the widest FFN's intermediate twice.
        self.workspace_bytes = self.prompt * self.db * (
            2 * m.hidden_size + 2 * max(m.expert_intermediate_size, m.dense_intermediate_size,
                                        m.shared_expert_intermediate_size))
        # Selection probability of every expert of every layer [L, E]; zero rows for dense layers.
        self.Q = np.zeros((m.num_layers, max(m.num_experts, 1)))
        for layer, k in self.moe_index.items():
            self.Q[layer] = self.q[k]
        self.experts_per_layer = np.array([m.num_experts if m.is_moe_layer(i) else 0 for i in range(m.num_layers)])  # [L] routed experts
        self.network = network_of(instance)
        self.times = LayerTimes(instance, self.Q, self.prompt, self.output)
        self.expert_flops_per_token = self.times.expert_flops_per_token
        self.expert_bytes = self.times.expert_bytes
        self.nonexpert_bytes = self.times.nonexpert_bytes
        self._passes = IdentityMemo(_PASS_CACHE_SIZE)
        self._memory_of: tuple = (None, {})  # (the last plan, its memory): plans are frozen
        self.stage_bodies: dict = {}  # a pass's steps of a stage with no moved or gated layer (planner.cost.passes.walk)
        self.instance_cache: dict = {}

    # ----- one pass ---------------------------------------------------------------------------
    def pass_cost(self, pipe: Pipeline, tokens: float, context: float, prefill: bool) -> PhaseCost:
        """One pass of ``tokens`` tokens (micro-batch in decode, prompt in prefill) through ``pipe``:
        its latency and the busy time of every device and link."""
        cost = PhaseCost()
        terms, items = walk(self, pipe, tokens, context, prefill, steps=False)
        for t in terms:
            cost.latency_s += t
        for item in items:
            if isinstance(item, Step):
                cost.add_busy(item.key, item.hold_s)
            else:
                cost.add_busy(*item)
        return cost

    def pass_steps(self, pipe: Pipeline, tokens: float, context: float, prefill: bool) -> list[Step | Fork]:
        """The steps of one pass of :meth:`pass_cost`, in order: what a discrete-event simulator replays.

        Their latencies (a :class:`Fork` counts its slowest branch) add up to the pass's latency and
        their holds per key to its busy times, up to float rounding. The list has the same shape (keys,
        forks, branches) for every ``tokens`` and ``context`` of one pipeline; only the times change.
        Their order: :mod:`planner.cost.passes`.
        """
        return walk(self, pipe, tokens, context, prefill)[1]

    def memory_bytes(self, plan: Plan) -> dict[str, float]:
        """Bytes each device of the plan holds (weights + KV cache + activation workspace). The last
        plan's figures are remembered (a search checks a plan's memory, then evaluates it); a copy
        is returned."""
        if plan is not self._memory_of[0]:
            self._memory_of = (plan, memory_bytes(self, plan))
        return dict(self._memory_of[1])

    # ----- whole plan -------------------------------------------------------------------------
    def _pass_cached(self, pipe: Pipeline, tokens: float, context: float, prefill: bool) -> PhaseCost:
        """:meth:`pass_cost`, remembered per structure (stages, codec ranks, expert placement, group
        gates) and tokens: plans that differ only in batching share their prefill pass and, per
        micro-batch size, their decode pass (a batching sweep of 9 points runs 6 passes, not 18). Do
        not modify the result."""
        # By the identity of the (immutable) parts, which batching variants made with
        # dataclasses.replace share: hashing a placement of 14,000 entries on every call would cost
        # more than the pass (planner.domain.memo).
        parts = (pipe.stages, pipe.codec_ranks, pipe.expert_placement, pipe.group_gate, tokens, context, prefill)
        return self._passes.get(parts, lambda: self.pass_cost(pipe, tokens, context, prefill))

    def pipeline_metrics(self, pipe: Pipeline) -> PipelineMetrics:
        b = float(pipe.micro_batch_size)
        concurrency = b * pipe.num_micro_batches
        decode = self._pass_cached(pipe, b, self.decode_context, prefill=False)
        prefill = self._pass_cached(pipe, self.prompt, self.prompt / 2.0, prefill=True)
        tpot, ttft = decode.latency_s, prefill.latency_s
        latency = ttft + (self.output - 1.0) * tpot
        step_busy = max(decode.busy_s.values())
        decode_tps = min(b / step_busy, concurrency / tpot)
        # In the order the passes hold them (not a set's: the bottleneck and the energy's last digits
        # must not depend on Python's string-hash seed).
        keys = list(prefill.busy_s) + [key for key in decode.busy_s if key not in prefill.busy_s]
        per_request = {key: prefill.busy_s.get(key, 0.0) + (self.output - 1.0) * decode.busy_s.get(key, 0.0) / b
                       for key in keys}
        bottleneck_key = max(per_request, key=per_request.get)
        rps_busy = 1.0 / per_request[bottleneck_key]
        rps_loop = concurrency / latency
        if rps_loop < rps_busy:
            rps, bottleneck = rps_loop, f"latency loop ({int(concurrency)} sequences in flight)"
        else:
            rps = rps_busy
            bottleneck = bottleneck_key if isinstance(bottleneck_key, str) else f"link {bottleneck_key[0]}<->{bottleneck_key[1]}"
        accuracy = sum(self.instance.constraints.codec.loss(r) for r in pipe.codec_ranks if r is not None)
        gates = gated_layers(self, pipe)
        if gates:
            gate_loss, moe = self.instance.constraints.group_gate_loss, self.model.num_moe_layers
            # Without a loss table a gate's cost is unknown: infinite, so that no budget admits it.
            accuracy += (sum(gate_loss.layer_loss(g.coverage, layer, moe) for layer, g in gates.items())
                         if gate_loss.known else math.inf)
        energy = 0.0
        for key, busy in per_request.items():
            if isinstance(key, str):
                d = self.devices[key]
                energy += d.idle_power_w / rps + (d.power_w - d.idle_power_w) * busy
        return PipelineMetrics(tpot, ttft, latency, decode_tps, rps, rps * self.output, bottleneck, accuracy,
                               energy / self.output, decode.busy_s, prefill.busy_s, per_request)

    def evaluate(self, plan: Plan) -> Evaluation:
        """Predicted figures of ``plan`` (assumes a structurally valid plan: see :mod:`planner.cost.validator`)."""
        pms = [self.pipeline_metrics(p) for p in plan.pipelines]
        if len(pms) == 1:
            return self._one_pipeline(plan, pms[0])
        shares = np.array([p.request_share for p in plan.pipelines], dtype=float)
        shares = shares / shares.sum() if shares.sum() > 0 else np.full(len(pms), 1.0 / len(pms))
        # Requests split by share: the whole serves rps until the first pipeline saturates, or a link
        # that several pipelines cross (the origin's uplink, say) is busy all the time.
        rps = min(pm.requests_per_s / s for pm, s in zip(pms, shares) if s > 0)
        limiting = int(np.argmin([pm.requests_per_s / s if s > 0 else np.inf for pm, s in zip(pms, shares)]))
        bottleneck = pms[limiting].bottleneck if len(pms) == 1 else f"pipeline {limiting}: {pms[limiting].bottleneck}"
        if len(pms) > 1:
            shared: dict = {}
            for p, (pm, s) in enumerate(zip(pms, shares)):
                for key, busy in pm.request_busy_s.items():
                    if s > 0:
                        users, total = shared.get(key, ([], 0.0))
                        shared[key] = (users + [p], total + s * busy)
            for key, (users, total) in shared.items():
                if len(users) > 1 and total > 0 and 1.0 / total < rps:
                    rps = 1.0 / total
                    name = key if isinstance(key, str) else f"link {key[0]}<->{key[1]}"
                    bottleneck = f"{name}, shared by pipelines {', '.join(map(str, users))}"
        memory = self.memory_bytes(plan)
        bytes_per_token = self._bytes_per_token(zip(plan.pipelines, pms, shares))
        return Evaluation(
            throughput_tokens_per_s=float(rps * self.output),
            requests_per_s=float(rps),
            latency_s=float(np.dot(shares, [pm.latency_s for pm in pms])),
            ttft_s=float(np.dot(shares, [pm.ttft_s for pm in pms])),
            tpot_s=float(np.dot(shares, [pm.tpot_s for pm in pms])),
            decode_tokens_per_s=sum(pm.decode_tokens_per_s for pm in pms),
            energy_j_per_token=float(np.dot(shares, [pm.energy_j_per_token for pm in pms])),
            accuracy_loss=max(pm.accuracy_loss for pm in pms),
            memory_bytes=memory,
            memory_capacity_bytes={d: self.devices[d].memory_bytes for d in memory},
            bytes_per_token=bytes_per_token,
            bottleneck=bottleneck,
            pipelines=pms,
        )

    def _one_pipeline(self, plan: Plan, pm: PipelineMetrics) -> Evaluation:
        """:meth:`evaluate` of a one-pipeline plan (its share is the whole): the same figures, without
        the arrays that weigh several pipelines."""
        memory = self.memory_bytes(plan)
        bytes_per_token = self._bytes_per_token([(plan.pipelines[0], pm, 1.0)])
        rps = pm.requests_per_s
        return Evaluation(
            throughput_tokens_per_s=float(rps * self.output),
            requests_per_s=float(rps),
            latency_s=float(pm.latency_s),
            ttft_s=float(pm.ttft_s),
            tpot_s=float(pm.tpot_s),
            decode_tokens_per_s=pm.decode_tokens_per_s,
            energy_j_per_token=float(pm.energy_j_per_token),
            accuracy_loss=pm.accuracy_loss,
            memory_bytes=memory,
            memory_capacity_bytes={d: self.devices[d].memory_bytes for d in memory},
            bytes_per_token=bytes_per_token,
            bottleneck=pm.bottleneck,
            pipelines=[pm],
        )

    def _bytes_per_token(self, weighted) -> dict[str, float]:
        """Decode bytes per output token on each link ``"a<->b"``, over (pipeline, its metrics, its
        request share) triples."""
        out: dict[str, float] = {}
        for pipe, pm, s in weighted:
            for key, busy in pm.decode_busy_s.items():
                if isinstance(key, tuple):
                    bw = self.network.link(*key).bandwidth_bytes_per_s
                    name = f"{key[0]}<->{key[1]}"
                    out[name] = out.get(name, 0.0) + s * busy * bw / pipe.micro_batch_size
        return out

