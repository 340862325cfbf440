"""Checks a plan against its instance, independently of the solver that made it.

:func:`validate` lists every violation (it never stops at the first): unknown devices, layer
coverage and contiguity, devices shared between pipelines, expert placement (range, shares,
devices), codec ranks not allowed, batch limits, request shares, routes, memory per device,
latency SLOs and the accuracy-loss budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain, compress, repeat

import numpy as np

from planner.cost.costmodel import CostModel
from planner.cost.evaluation import Evaluation
from planner.domain.instance import Instance
from planner.domain.memo import IdentityMemo
from planner.domain.plan import Pipeline, Plan, placement_columns
from planner.domain.units import GB

SHARE_TOL = 1e-6
# Placement and route checks by the identity of the parts they read: a solver's moves re-validate
# plans whose expert placement (15,000 entries on DeepSeek-V3) did not change.
_PLACEMENT_CHECKS = IdentityMemo(64)
_ROUTE_CHECKS = IdentityMemo(64)


@dataclass(frozen=True)
class Violation:
    kind: str  # structure, memory, coverage, contiguity, link, rank, batch, slo, accuracy, placement, gate
    message: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


def validate(instance: Instance, plan: Plan, cost_model: CostModel | None = None, evaluation=None) -> list[Violation]:
    """Every violation of ``plan`` on ``instance`` (empty list: the plan is valid).

    ``evaluation``: the cost model's :class:`~planner.cost.evaluation.Evaluation` of this plan, when the
    caller has it already (it is recomputed otherwise)."""
    out = structure_violations(instance, plan)
    if out:
        # Figures are meaningless for a plan whose shape is broken.
        return out
    cm = cost_model or CostModel(instance)
    return limit_violations(instance, evaluation if evaluation is not None else cm.evaluate(plan))


def limit_violations(instance: Instance, ev: Evaluation) -> list[Violation]:
    """Violations of memory, SLOs and the accuracy budget by a structurally valid plan's figures ``ev``
    (callers that vary only a checked plan's batching within ``max_batch`` need not check its shape again)."""
    out: list[Violation] = []
    for dev, used in sorted(ev.memory_bytes.items()):
        cap = instance.device(dev).memory_bytes
        if used > cap * (1 + 1e-9):
            out.append(Violation("memory", f"device {dev!r} needs {used / GB:.2f} GB, has {cap / GB:.2f} GB"))
    c = instance.constraints
    worst_latency = max(pm.latency_s for pm in ev.pipelines)
    worst_ttft = max(pm.ttft_s for pm in ev.pipelines)
    worst_tpot = max(pm.tpot_s for pm in ev.pipelines)
    for name, value, slo in (("latency", worst_latency, c.latency_slo_s), ("TTFT", worst_ttft, c.ttft_slo_s),
                             ("TPOT", worst_tpot, c.tpot_slo_s)):
        if slo is not None and value > slo * (1 + 1e-9):
            out.append(Violation("slo", f"predicted {name} {value * 1e3:.1f} ms exceeds the SLO of {slo * 1e3:.1f} ms"))
    if ev.accuracy_loss > c.accuracy_loss_budget + 1e-12:
        out.append(Violation("accuracy", f"accuracy loss {ev.accuracy_loss:.4f} (codecs and group gates) exceeds the "
                                         f"budget {c.accuracy_loss_budget:.4f}"))
    return out


def evaluate_checked(instance: Instance, plan: Plan, cost_model: CostModel) -> tuple[Evaluation | None, list[Violation]]:
    """The plan's evaluation (None when its shape is broken) and its violations, evaluating it once."""
    shape = structure_violations(instance, plan)
    if shape:
        return None, shape
    ev = cost_model.evaluate(plan)
    return ev, limit_violations(instance, ev)


class _Tag:
    """``pipeline i expert (layer, expert)`` for a message, formatted only when one is written."""

    __slots__ = ("where", "entry")

    def __init__(self, where: str, entry):
        self.where, self.entry = where, entry

    def __str__(self) -> str:
        return f"{self.where} expert ({self.entry.layer}, {self.entry.expert})"


def _share_violations(plan: Plan) -> list[Violation]:
    """Request shares: each >= 0, all summing to 1."""
    total_share = sum(p.request_share for p in plan.pipelines)
    if any(p.request_share < 0 for p in plan.pipelines) or abs(total_share - 1.0) > SHARE_TOL:
        return [Violation("structure", f"request shares must be >= 0 and sum to 1, got {[p.request_share for p in plan.pipelines]}")]
    return []


def _stage_violations(instance: Instance, where: str, pipe: Pipeline) -> list[Violation]:
    """Stages on known devices, each a non-empty layer range, together covering the model's layers
    once, in order."""
    out: list[Violation] = []
    m = instance.model
    known = instance.device_index
    expected = 0
    for si, s in enumerate(pipe.stages):
        if s.device not in known:
            out.append(Violation("structure", f"{where} stage {si}: unknown device {s.device!r}"))
        if s.end_layer <= s.first_layer:
            out.append(Violation("contiguity", f"{where} stage {si} on {s.device!r} is empty or reversed: "
                                               f"layers [{s.first_layer}, {s.end_layer})"))
        if s.first_layer != expected:
            kind = "coverage" if s.first_layer > expected else "contiguity"
            out.append(Violation(kind, f"{where} stage {si} starts at layer {s.first_layer}, expected {expected}"))
        expected = max(expected, s.end_layer)
    if expected != m.num_layers:
        out.append(Violation("coverage", f"{where} ends at layer {expected}; the model has {m.num_layers} layers"))
    return out


def _device_violations(where: str, pi: int, pipe: Pipeline, used_by: dict[str, int]) -> list[Violation]:
    """A device holds at most one stage of the pipeline, and no device (stage or expert) serves two
    pipelines; ``used_by`` (device -> first pipeline using it) gains this pipeline's devices."""
    out: list[Violation] = []
    devs = pipe.devices
    for d in set(devs):
        if devs.count(d) > 1:
            out.append(Violation("structure", f"{where}: device {d!r} holds {devs.count(d)} stages; merge them"))
    for d in set(devs) | pipe.expert_devices():
        if d in used_by and used_by[d] != pi:
            out.append(Violation("structure", f"device {d!r} is used by pipelines {used_by[d]} and {pi}; "
                                              "pipelines need disjoint devices"))
        used_by.setdefault(d, pi)
    return out


def _rank_violations(instance: Instance, where: str, pipe: Pipeline) -> list[Violation]:
    """At most one codec rank per cut, each one the constraints allow (None: no codec)."""
    out: list[Violation] = []
    if len(pipe.codec_ranks) > max(0, len(pipe.stages) - 1):
        out.append(Violation("rank", f"{where} has {len(pipe.codec_ranks)} codec ranks for {len(pipe.stages) - 1} cuts"))
    allowed = instance.constraints.codec.ranks
    for ci, r in enumerate(pipe.codec_ranks):
        if r is not None and r not in allowed:
            shown = ", ".join(map(str, allowed)) if allowed else "none (no codec ranks in constraints)"
            out.append(Violation("rank", f"{where} cut {ci}: rank {r} is not allowed (allowed: {shown})"))
    return out


def _batch_violations(instance: Instance, where: str, pipe: Pipeline) -> list[Violation]:
    """Micro-batch size and count >= 1, and no more sequences in flight than ``max_batch``."""
    seqs = pipe.micro_batch_size * pipe.num_micro_batches
    if pipe.micro_batch_size < 1 or pipe.num_micro_batches < 1:
        return [Violation("batch", f"{where}: micro-batch size and count must be >= 1")]
    if seqs > instance.workload.max_batch:
        return [Violation("batch", f"{where}: {pipe.micro_batch_size} x {pipe.num_micro_batches} = {seqs} sequences in "
                                   f"flight exceed max_batch {instance.workload.max_batch}")]
    return []


def _group_gate_violations(instance: Instance, pipe: Pipeline, where: str, out: list[Violation]) -> dict[int, str]:
    """Check ``pipe``'s group gates (appending to ``out``); return its gated layers (layer -> device)."""
    m = instance.model
    if not pipe.group_gate:
        return {}
    if not instance.constraints.group_gate_loss.known:
        out.append(Violation("gate", f"{where}: a group gate needs its accuracy cost: give constraints.group_gate_coverage "
                                     "and group_gate_loss, or an accuracy_table with group-gate points"))
    stage_of = {s.device: s for s in pipe.stages}
    seen: set[str] = set()
    for gate in pipe.group_gate:
        if gate.device in seen:
            out.append(Violation("gate", f"{where}: device {gate.device!r} has two group gates; merge their layers"))
        seen.add(gate.device)
        stage = stage_of.get(gate.device)
        if stage is None:
            out.append(Violation("gate", f"{where}: group gate on {gate.device!r}, which runs no stage of this pipeline"))
            continue
        for layer in gate.layers:
            if not (stage.first_layer <= layer < stage.end_layer) or not m.is_moe_layer(layer):
                out.append(Violation("gate", f"{where}: group gate on {gate.device!r} lists layer {layer}, not an MoE layer "
                                             f"of its stage [{stage.first_layer}, {stage.end_layer})"))
    return {layer: d for layer, d in pipe.gated_layers(m.is_moe_layer).items() if d in stage_of}


def _placement_violations(instance: Instance, where: str, pipe: Pipeline) -> list[Violation]:
    """:func:`_check_placement`, remembered while the pipeline's parts are unchanged."""
    parts = (instance, where, pipe.stages, pipe.group_gate, pipe.expert_placement)
    return list(_PLACEMENT_CHECKS.get(parts, lambda: tuple(_check_placement(instance, where, pipe))))


def _check_placement(instance: Instance, where: str, pipe: Pipeline) -> list[Violation]:
    """The group gates (:func:`_group_gate_violations`), then each placed expert: a routed expert of
    an MoE layer, placed once, on distinct known devices with one share each, the shares >= 0 and
    summing to 1. In a group-gated layer an expert is kept on the gate's device or dropped (no
    devices, no shares), and at least one is kept. An entry found sound once is not checked again
    (``_SOUND``): a move changes a few entries of a placement and keeps the others."""
    out: list[Violation] = []
    m = instance.model
    gated = _group_gate_violations(instance, pipe, where, out)
    sound = _SOUND.get((instance,), dict)
    if not gated and not out and _SOUND_PLACEMENTS.get((instance, pipe.expert_placement),
                                                      lambda: _all_sound(instance, pipe.expert_placement, sound)):
        return out
    seen, dropped = set(), {}
    for e in pipe.expert_placement:
        key = (e.layer, e.expert)
        if key in seen:
            out.append(Violation("placement", f"{_Tag(where, e)} is placed twice"))
        seen.add(key)
        if e.layer in gated:
            if e.devices and tuple(e.devices) != (gated[e.layer],):
                out.append(Violation("placement", f"{_Tag(where, e)}: layer {e.layer} is group-gated on "
                                                  f"{gated[e.layer]!r}, so this expert is never called elsewhere; "
                                                  "drop it (devices: [])"))
            elif not e.devices and e.shares:
                out.append(Violation("placement", f"{_Tag(where, e)}: a dropped expert has no shares"))
            elif not e.devices:
                dropped[e.layer] = dropped.get(e.layer, 0) + 1
            continue
        if sound.get(id(e)) is e:
            continue
        found = _entry_violations(instance, where, e)
        if found:
            out += found
        elif isinstance(e.devices, tuple) and isinstance(e.shares, tuple):  # frozen all the way down
            if len(sound) >= _SOUND_ENTRIES_SIZE:
                sound.clear()
            sound[id(e)] = e
    for layer, count in sorted(dropped.items()):
        if count >= m.num_experts:
            out.append(Violation("gate", f"{where}: the group gate on {gated[layer]!r} keeps no expert of layer {layer}"))
    return out


def _all_sound(instance: Instance, placement, sound: dict) -> bool:
    """Whether every entry of an ungated ``placement`` is sound and no (layer, expert) comes twice:
    :func:`_check_placement`'s verdict without its messages, each test over all entries at once (a
    placement of 15,000 entries is checked in a few ms). The entries found sound join ``sound``."""
    if not placement:
        return True
    columns = placement_columns(placement)
    if len(set(zip(columns.layers, columns.experts))) != len(placement):
        return False
    # A placement just built (an expert-parallel layout) shares no entry with the sound ones: three
    # probes say so without looking every entry up (a move's placement shares almost all of them).
    probes = (placement[0], placement[len(placement) // 2], placement[-1])
    seen = list(map(sound.get, map(id, placement))) if any(sound.get(id(e)) is e for e in probes) else None
    if seen and any(seen):
        fresh = [i for i, (e, hit) in enumerate(zip(placement, seen)) if hit is not e]
        if not fresh:
            return True
        unknown = [placement[i] for i in fresh]
        layers, experts, devices, shares = ([column[i] for i in fresh] for column in columns)
    else:
        unknown = placement
        layers, experts, devices, shares = columns
    m, known = instance.model, instance.device_index
    counts = list(map(len, devices))
    if not (set(layers) <= frozenset(m.moe_layers) and 0 <= min(experts) and max(experts) < m.num_experts
            and counts == list(map(len, shares)) and min(counts) > 0 and set(chain.from_iterable(devices)) <= known.keys()
            and _distinct(compress(devices, map((1).__lt__, counts)))):
        return False
    flat = np.fromiter(chain.from_iterable(shares), dtype=float, count=sum(counts))
    sums = np.add.reduceat(flat, np.concatenate(([0], np.cumsum(counts[:-1]))).astype(np.intp))
    if not (flat.min() >= 0 and np.abs(sums - 1.0).max() <= SHARE_TOL):  # NaN fails both
        return False
    if len(sound) + len(unknown) >= _SOUND_ENTRIES_SIZE:
        sound.clear()
    if set(map(type, devices)) | set(map(type, shares)) == {tuple}:  # frozen all the way down
        sound.update(zip(map(id, unknown), unknown))
    else:
        sound.update((id(e), e) for e, d, sh in zip(unknown, devices, shares) if type(d) is tuple and type(sh) is tuple)
    return True


def _distinct(groups) -> bool:
    """Whether no group (of device names) names a device twice."""
    groups = list(groups)
    return list(map(len, map(set, groups))) == list(map(len, groups))


def _entry_is_sound(m, known, e) -> bool:
    """:func:`_entry_violations` finds nothing (a quick test, no messages built)."""
    devices, shares = e.devices, e.shares
    return (0 <= e.layer < m.num_layers and m.is_moe_layer(e.layer) and 0 <= e.expert < m.num_experts
            and 0 < len(devices) == len(shares) and len(set(devices)) == len(devices)
            and min(shares) >= 0 and abs(sum(shares) - 1.0) <= SHARE_TOL and all(d in known for d in devices))


def _entry_violations(instance: Instance, where: str, e) -> list[Violation]:
    """What is wrong with one placed expert of an ungated layer, on its own."""
    m = instance.model
    known = instance.device_index
    if _entry_is_sound(m, known, e):
        return []
    out: list[Violation] = []
    tag = _Tag(where, e)
    if not (0 <= e.layer < m.num_layers) or not m.is_moe_layer(e.layer):
        out.append(Violation("placement", f"{tag}: layer {e.layer} is not an MoE layer"))
    if not (0 <= e.expert < m.num_experts):
        out.append(Violation("placement", f"{tag}: expert {e.expert} out of range 0..{m.num_experts - 1}"))
    if not e.devices:
        out.append(Violation("placement", f"{tag}: has no devices, but only a group-gated layer may drop experts"))
    elif len(e.devices) != len(e.shares) or len(set(e.devices)) != len(e.devices):
        out.append(Violation("placement", f"{tag}: needs distinct devices with one share each"))
    elif any(s < 0 for s in e.shares) or abs(sum(e.shares) - 1.0) > SHARE_TOL:
        out.append(Violation("placement", f"{tag}: shares must be >= 0 and sum to 1, got {list(e.shares)}"))
    for d in e.devices:
        if d not in known:
            out.append(Violation("placement", f"{tag}: unknown device {d!r}"))
    return out


_SOUND_ENTRIES_SIZE = 1 << 18  # entries remembered as sound per instance before starting over
# Per instance (the last few), id(entry) -> entry for the placement entries found sound on their
# own; a frozen ExpertPlacement is kept alive there, so its id is not reused meanwhile.
_SOUND = IdentityMemo(8)
# (instance, placement) -> whether _all_sound holds: the same placement under other stages, batchings
# or pipeline positions (a replicated plan, a moved boundary) is not walked again.
_SOUND_PLACEMENTS = IdentityMemo(64)


def _route_violations(instance: Instance, plan: Plan) -> list[Violation]:
    """Every hop the plan uses must exist (the fleet may be connected through other devices): origin
    to the first stage and the last stage back, stage to stage, and each layer's stage to its
    experts' devices (but group-gated layers'). Needs a plan whose other structure is valid (stages,
    devices, layers). Remembered per pipeline while its parts are unchanged."""
    out: list[Violation] = []
    for pi, pipe in enumerate(plan.pipelines):
        parts = (instance, pi, pipe.stages, pipe.group_gate, pipe.expert_placement)
        out += _ROUTE_CHECKS.get(parts, lambda pi=pi, pipe=pipe: tuple(_pipeline_routes(instance, pi, pipe)))
    return out


def _pipeline_routes(instance: Instance, pi: int, pipe: Pipeline) -> list[Violation]:
    """The missing hops of one pipeline (:func:`_route_violations`)."""
    origin = instance.workload.origin
    component = instance.component_of
    if len({component.get(d) for d in (pipe.expert_devices() | set(pipe.devices) | {origin})}) == 1:
        return []  # every device it names in one connected component: no hop can be missing
    hops = {(origin, pipe.stages[0].device), (pipe.stages[-1].device, origin)} | set(zip(pipe.devices, pipe.devices[1:]))
    home = {layer: s.device for s in pipe.stages for layer in s.layers}
    gated = pipe.gated_layers(instance.model.is_moe_layer)
    # Each layer's stage device to the devices its experts are on (a gated layer's experts are on
    # its own device), every pair at once.
    columns = placement_columns(pipe.expert_placement)
    if gated:
        kept = [i for i, layer in enumerate(columns.layers) if layer not in gated]
        layers, devices = [columns.layers[i] for i in kept], [columns.devices[i] for i in kept]
    else:
        layers, devices = columns.layers, columns.devices
    homes = map(home.__getitem__, layers)
    hops.update(zip(chain.from_iterable(map(repeat, homes, map(len, devices))), chain.from_iterable(devices)))
    return [Violation("link", f"pipeline {pi}: no network path from {a!r} to {b!r}")
            for a, b in sorted(hops) if component.get(a) != component.get(b)]


def structure_violations(instance: Instance, plan: Plan) -> list[Violation]:
    """Violations of the plan's shape: coverage, contiguity, devices, ranks, batching, placement, routes."""
    if not plan.pipelines:
        return [Violation("structure", "the plan has no pipeline")]
    out = _share_violations(plan)
    used_by: dict[str, int] = {}
    for pi, pipe in enumerate(plan.pipelines):
        where = f"pipeline {pi}"
        if not pipe.stages:
            out.append(Violation("structure", f"{where} has no stage"))
            continue
        out += _stage_violations(instance, where, pipe)
        out += _device_violations(where, pi, pipe, used_by)
        out += _rank_violations(instance, where, pipe)
        out += _batch_violations(instance, where, pipe)
        out += _placement_violations(instance, where, pipe)
    if out:
        # Routes are read off the stages and placements: only once those are sound.
        return out
    return _route_violations(instance, plan)
