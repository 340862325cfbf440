"""EPLB baseline on instances (solver ``eplb``): DeepSeek's expert-parallel load balancer, blind to speed.

What a user of DeepSeek's EPLB (expert parallelism as vLLM and SGLang deploy it) does with this fleet,
treating every GPU as identical:

* **Expert devices**: every device of the ``edge`` and ``cloud`` tiers, ``B`` in all (the servers
  where expert parallelism is deployed; ``end`` devices -- phones, laptops, Jetsons -- only send
  requests), ordered as :func:`planner.spaces.chain.default_path` orders them (the origin first when
  it is one of them, then edge before cloud, memory descending, name).
* **Experts**: every MoE layer's routed experts go through EPLB's global policy
  (:func:`solvers.placement.solve_eplb`, i.e. :func:`solvers.eplb.eplb_rebalance` with one node and
  one group) on ``B`` identical GPUs with ``s`` slots each, the loads being the instance's expert
  popularity (selection probability per token, [MoE layers, experts]): replicas handed out by load
  per replica, then balanced packing. Every device gets the same slots, as EPLB assumes:
  ``s = ceil(E / B) + 1`` (one redundant expert per device, as DeepSeek-V3's prefill deployment has
  32 redundant experts on 32 GPUs), or ``ceil(E / B)`` when that does not fit in memory or
  ``B = 1``. Two copies of one expert that EPLB puts on one device become one replica with both
  shares; an expert's tokens are split evenly over its replicas (EPLB's routing), so a device's
  share of an expert is its copies over the expert's replica count (``logcnt``).
* **Layers**: the non-expert blocks (attention, router, shared experts) are split into contiguous
  stages over the ``B`` devices in that order, in proportion to the memory each device has left
  after its expert slots (:func:`planner.planners.baselines.split_by_weights`); a device whose share rounds
  to no layer holds experts only.
* **Plan**: one pipeline; every expert that is not solely on its layer's stage device gets an
  :class:`~planner.domain.plan.ExpertPlacement` (its devices and shares); no codec, no local experts on an
  end device; micro-batching from :func:`planner.planners.baselines.best_batching`.

Infeasible, with the binding resource named: no edge or cloud device; a model without routed
experts (nothing for EPLB to place); weights beyond the expert devices' memory; a device whose
expert slots alone exceed its memory; or no batching that passes the validator (memory with the KV
cache, an SLO: the violations are listed).

Cost: EPLB's ``O(G (B s) log(B s))`` per layer (``G`` MoE layers) plus one cost-model evaluation per
batching of a plan with up to ``G E`` placement entries.
"""

from __future__ import annotations

import time

from planner.cost.costmodel import CostModel
from planner.domain.instance import Instance
from planner.domain.units import GB
from planner.planners.outcome import baseline_result
from planner.spaces.batching import best_batching
from planner.spaces.chain import default_path
from planner.spaces.expert_parallel import expert_parallel_pipeline
from planner.spaces.infeasibility import explain_violations
from solvers.registry import register
from solvers.result import Result


def expert_devices(instance: Instance) -> list[str]:
    """The devices EPLB spreads experts over: the edge and cloud tiers, in ``default_path`` order."""
    return [n for n in default_path(instance) if instance.device(n).tier != "end"]


@register("eplb", kind="baseline", problem="instance")
def eplb(instance: Instance, *, time_limit=None, seed=0, cost_model: CostModel | None = None, **_) -> Result:
    """DeepSeek EPLB over the edge and cloud devices as if identical; layers split by memory left."""
    t0 = time.perf_counter()
    cm = cost_model or CostModel(instance)
    m = instance.model

    def infeasible(message: str) -> Result:
        return baseline_result("eplb", instance, None, None, t0, message)

    group = expert_devices(instance)
    if not group:
        return infeasible("infeasible: the fleet has no edge or cloud device to host experts")
    if m.num_experts == 0 or m.num_moe_layers == 0:
        return infeasible(f"infeasible: model {m.name!r} has no routed experts for EPLB to place")
    need = m.total_params * m.dtype_bytes
    first_why = ""
    while group:
        memory = sum(instance.device(n).memory_bytes for n in group)
        if need > memory:
            why = (f"infeasible: the model's weights need {need / GB:.3g} GB, the edge and cloud devices "
                   f"({', '.join(group)}) have {memory / GB:.3g} GB")
            break
        result, why = _plan_on(instance, cm, group, t0)
        if result is not None:
            return result
        first_why = first_why or why
        # A device too small for its equal share of expert slots is left out, the smallest first.
        smallest = min(range(len(group)), key=lambda b: (instance.device(group[b]).memory_bytes, -b))
        group = group[:smallest] + group[smallest + 1:]
    if first_why and first_why != why:
        why = f"{first_why}; with the smallest devices left out: {why.removeprefix('infeasible: ')}"
    return infeasible(why)


def _plan_on(instance: Instance, cm: CostModel, group: list[str], t0: float) -> tuple[Result | None, str]:
    """EPLB's plan with experts over ``group`` (one redundant slot per device if it fits, else none),
    or None and why not."""
    why = ""
    for redundant in ((1, 0) if len(group) > 1 else (0,)):
        pipe, why, details = expert_parallel_pipeline(instance, cm, group, placement="eplb", redundant=redundant)
        if pipe is None:
            continue
        plan, obj, last = best_batching(instance, cm, pipe.stages, "eplb", pipe.expert_placement)
        if plan is not None:
            result = baseline_result("eplb", instance, plan, obj, t0, "")
            result.extra = {"expert_devices": group, **details}
            return result, ""
        why = explain_violations(last, f"infeasible: EPLB with {details['slots_per_device']} expert slots on each of the "
                                       f"{len(group)} edge and cloud devices breaks a limit at every batching")
    return None, why
