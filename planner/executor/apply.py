"""``apply_plan``: run a Hugging Face MoE model as one pipeline of a moeplan plan, in one process.

The returned :class:`~planner.executor.stages.PlannedModel` runs the pipeline's stages in order
(layer ranges and device labels as in the plan). Each MoE layer's experts are partitioned as the
plan places them: an expert lives on its layer's stage device unless an ``expert_placement`` entry
moves or replicates it (holders and token shares, see :mod:`planner.executor.placed`). At each cut
with a codec rank the hidden states cross through a low-rank codec; where a group gate is
configured, tokens routed to experts off the device are served from the device's local subset.

The original model is left unchanged: the planned model shares its non-expert weights (attention,
norms, routers, shared experts, embedding, LM head) and holds copies of the expert weights sliced
per holder. With no codec and no group gate the planned model reproduces the original's logits.

Group-gate configuration: ``group_gate={device: layers}`` (``None`` for every MoE layer of that
device's stage), merged over a plan's ``pipelines[i].group_gate`` entries ``{"device": ...,
"layers": [...]}`` when the plan carries them (the explicit argument wins for a device named in
both). ``gate_mode="fitted"`` fits each gate on ``calibration_ids``; ``"renormalise"`` serves the
tokens by plain renormalisation over the subset (the baseline the gate must beat).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from planner.domain.errors import Collector, InputError, Problem
from planner.domain.instance import Instance
from planner.domain.plan import Pipeline, Plan
from planner.executor.capture import capture
from planner.executor.codec import LowRankCodec, fine_tune_codec
from planner.executor.families import Family, MoEParts, decoder_layers, family_of, moe_parts
from planner.executor.group_gate import GateFit, GroupGate, fit_group_gate
from planner.executor.placed import ExpertShard, InProcessExperts, PlacedExperts, RemoteExperts, RouterTap, SlotRouting, Timings, _shell
from planner.executor.stages import PlannedModel, StageRunner

GATE_MODES = ("fitted", "renormalise")
SHARE_TOLERANCE = 1e-6


@dataclass(frozen=True)
class LayerHolders:
    """Who holds each expert of one MoE layer: ``holders[0]`` is the stage's device; ``of_expert[e]`` =
    (holder indices, shares)."""

    holders: tuple[str, ...]
    of_expert: dict[int, tuple[list[int], list[float]]]

    def experts_on(self, device: str) -> list[int]:
        if device not in self.holders:
            return []
        h = self.holders.index(device)
        return [e for e, (hs, _) in sorted(self.of_expert.items()) if h in hs]


def apply_plan(model: nn.Module, instance: Instance | None, plan: Plan, *, pipeline: int = 0,
               group_gate: Mapping[str, Iterable[int] | None] | None = None, gate_mode: str = "fitted",
               codecs: Mapping[int, LowRankCodec] | None = None, codec_steps: int = 0,
               fitted_gates: Mapping[int, GroupGate] | None = None, calibration_ids: torch.Tensor | None = None,
               remote: RemoteExperts | None = None, plan_file: str = "<plan>") -> PlannedModel:
    """The planned model of ``plan.pipelines[pipeline]`` over ``model`` (a supported ``...ForCausalLM``).

    ``instance`` (may be None) is checked against the model (layers, hidden size, experts, top-k)
    and the plan's devices against its fleet. ``codecs`` maps a cut's layer (the first layer of the
    next stage) to a fitted codec of the plan's rank; cuts with a rank and no codec are fitted on
    ``calibration_ids [B, S]`` (PCA, then ``codec_steps`` fine-tuning steps), as are group gates in
    ``"fitted"`` mode that ``fitted_gates`` (layer -> a gate fitted for the same local subset, e.g.
    by an earlier call) does not give. ``remote``
    serves experts held by other devices (default: :class:`InProcessExperts`, all in this process). Raises
    :class:`InputError` naming the plan (``plan_file``) or instance field for every mismatch.
    """
    family = family_of(model)
    parts = moe_parts(model)
    if gate_mode not in GATE_MODES:
        raise ValueError(f"gate_mode must be one of {', '.join(GATE_MODES)}, got {gate_mode!r}")
    if instance is not None:
        _check_instance(instance, model, parts)
    codecs, fitted_gates = dict(codecs or {}), dict(fitted_gates or {})
    pipe, ranks, holders, gated = _checked_plan(model, parts, instance, plan, pipeline, group_gate, codecs,
                                                fitted_gates, plan_file)
    hidden_size = int(model.config.hidden_size)
    cut_layers = [s.first_layer for s in pipe.stages[1:]]
    to_fit = [layer for layer, rank in zip(cut_layers, ranks) if rank is not None and layer not in codecs]
    gates_to_fit = [l for l in sorted(gated) if l not in fitted_gates] if gate_mode == "fitted" else []
    if (to_fit or gates_to_fit) and calibration_ids is None:
        what = ([f"codec at the cut before layer {c}" for c in to_fit] + [f"group gate of layer {l}" for l in gates_to_fit])
        raise ValueError(f"calibration_ids are needed to fit: {', '.join(what)} (or pass codecs= / gate_mode='renormalise')")
    captured = capture(model, calibration_ids, cut_layers=to_fit, moe_layers=gates_to_fit) if (to_fit or gates_to_fit) else None

    timings = Timings()
    remote_fn = remote if remote is not None else InProcessExperts()
    layer_of = decoder_layers(model)
    gate_fits: dict[int, GateFit] = {}
    stages = []
    for stage in pipe.stages:
        layers = []
        for i in stage.layers:
            if i not in parts:
                layers.append(layer_of[i])
                continue
            layer, placed = _placed_layer(layer_of[i], parts[i], family, holders[i], remote_fn, timings,
                                          gate=i in gated, hidden_size=hidden_size,
                                          fitted=fitted_gates.get(i) if gate_mode == "fitted" else None)
            if placed.group_gate is not None and i in gates_to_fit:
                cap = captured.moe[i]
                gate_fits[i] = fit_group_gate(placed.group_gate, placed.local, cap.hidden, cap.router_logits,
                                              cap.top_k_index, cap.top_k_weights, cap.output)
            layers.append(layer)
        stages.append(StageRunner(model, family, stage.device, stage.first_layer, stage.end_layer, layers, timings))
    for layer in to_fit:
        codecs[layer] = LowRankCodec.fit(captured.cuts[layer], ranks[cut_layers.index(layer)])
    codec_list = [codecs[layer] if rank is not None else None for layer, rank in zip(cut_layers, ranks)]
    planned = PlannedModel(stages, codec_list, timings, remote_fn if isinstance(remote_fn, nn.Module) else None, gate_fits)
    if codec_steps > 0 and to_fit:
        _fine_tune_codecs(model, planned, calibration_ids, captured, [cut_layers.index(l) for l in to_fit], codec_steps)
    planned.reset()
    return planned


def _fine_tune_codecs(model: nn.Module, planned: PlannedModel, calibration_ids: torch.Tensor, captured,
                      cuts: list[int], steps: int) -> None:
    """Fine-tune the codecs of ``cuts`` (PCA-initialised) on the calibration windows, first cut first,
    each through the stages after it (later cuts with their codecs as they stand); model weights stay frozen."""
    with torch.no_grad():
        target = torch.cat([torch.log_softmax(model(input_ids=b, use_cache=False).logits.float(), dim=-1)
                            for b in calibration_ids.split(8)])
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        for cut in cuts:
            layer = planned.stages[cut + 1].first_layer
            hidden = captured.cuts[layer].reshape(*calibration_ids.shape, -1)
            fine_tune_codec(planned.codecs[cut], hidden, lambda x, c=cut: planned.run_from(c + 1, x), target, steps=steps)
    finally:
        for p in frozen:
            p.requires_grad_(True)


def _checked_plan(model: nn.Module, parts: dict[int, MoEParts], instance: Instance | None, plan: Plan, pipeline: int,
                  group_gate, codecs: dict[int, LowRankCodec], fitted_gates: dict[int, GroupGate], plan_file: str
                  ) -> tuple[Pipeline, list[int | None], dict[int, LayerHolders], set[int]]:
    """The pipeline, its codec rank per cut, every MoE layer's holders and the gated layers, after
    checking the plan against the model (and the instance): an :class:`InputError` lists every problem."""
    if not 0 <= pipeline < len(plan.pipelines):
        raise InputError(Problem(plan_file, "pipelines", f"has {len(plan.pipelines)} pipeline(s); pipeline {pipeline} asked for"))
    pipe = plan.pipelines[pipeline]
    tp = f"pipelines[{pipeline}]"
    col = Collector(plan_file)
    _check_stages(pipe, int(model.config.num_hidden_layers), tp, col)
    ranks = _check_ranks(pipe, int(model.config.hidden_size), tp, col)
    if instance is not None:
        names = {d.name for d in instance.devices}
        for j, s in enumerate(pipe.stages):
            if s.device not in names:
                col.add(f"{tp}.stages[{j}].device", f"{s.device!r} is not a device of instance {instance.name!r}")
    col.raise_if_any()
    holders = _check_placement(pipe, parts, instance, tp, col)
    gated = _gated_layers(pipe, group_gate, parts, holders, tp, col)
    col.raise_if_any()
    for cut, (stage, rank) in enumerate(zip(pipe.stages[1:], ranks)):
        layer = stage.first_layer
        if rank is not None and layer in codecs and codecs[layer].rank != rank:
            col.add(f"{tp}.codec_ranks[{cut}]",
                    f"is {rank} but the codec given for the cut before layer {layer} has rank {codecs[layer].rank}")
    for layer, gate in fitted_gates.items():
        local = holders[layer].experts_on(holders[layer].holders[0]) if layer in holders else []
        if layer not in gated or sorted(gate.local.tolist()) != local:
            col.add(f"fitted_gates[{layer}]", f"a gate over experts {sorted(gate.local.tolist())} does not fit: layer {layer} "
                    + (f"keeps experts {local} on its stage device" if layer in gated else "runs no group gate in this plan"))
    col.raise_if_any()
    return pipe, ranks, holders, gated


def _placed_layer(layer: nn.Module, parts: MoEParts, family: Family, holders: LayerHolders, remote: RemoteExperts,
                  timings: Timings, *, gate: bool, hidden_size: int, fitted: GroupGate | None
                  ) -> tuple[nn.Module, PlacedExperts]:
    """A copy of decoder ``layer`` whose MoE block has its experts placed (and its router tapped when
    gated, with the ``fitted`` gate if given, else a new unfitted one)."""
    local_ids = holders.experts_on(holders.holders[0])
    local = ExpertShard(parts.experts, parts.layer, local_ids) if local_ids else None
    if isinstance(remote, InProcessExperts):
        for device in holders.holders[1:]:
            remote.add(device, ExpertShard(parts.experts, parts.layer, holders.experts_on(device)))
    block = _shell(parts.block)
    tap = None
    group_gate = None
    if gate:
        tap = RouterTap(parts.router)
        block._modules[family.router_attr] = tap
        router = parts.router
        group_gate = fitted if fitted is not None else GroupGate(
            local_ids, parts.num_experts, parts.top_k, hidden_size, lambda logits, r=router: family.selection_scores(r, logits))
    routing = SlotRouting(parts.num_experts, holders.of_expert)
    placed = PlacedExperts(parts.layer, list(holders.holders), local, remote, routing, timings, group_gate, tap)
    block._modules["experts"] = placed
    shell = _shell(layer)
    shell._modules["mlp"] = block
    return shell, placed


def _check_instance(instance: Instance, model: nn.Module, parts: dict[int, MoEParts]) -> None:
    card, cfg = instance.model, model.config
    col = Collector(instance.path or instance.name)
    first = next(iter(parts.values()), None)
    torch_figures = {
        "num_layers": int(cfg.num_hidden_layers),
        "hidden_size": int(cfg.hidden_size),
        "num_experts": first.num_experts if first else 0,
        "top_k": first.top_k if first else 0,
    }
    for key, value in torch_figures.items():
        if getattr(card, key) != value:
            col.add(f"model.{key}", f"the instance's card says {getattr(card, key)}, the torch model "
                                    f"({type(model).__name__}) has {value}")
    if sorted(parts) != card.moe_layers and not col.problems:
        col.add("model.first_dense_layers", f"the card's MoE layers {card.moe_layers} differ from the torch model's {sorted(parts)}")
    col.raise_if_any()


def _check_stages(pipe: Pipeline, num_layers: int, tp: str, col: Collector) -> None:
    expected = 0
    for j, s in enumerate(pipe.stages):
        if s.first_layer != expected:
            col.add(f"{tp}.stages[{j}].first_layer",
                    f"is {s.first_layer}; stages must cover the layers in order, this one should start at {expected}")
        if s.end_layer <= s.first_layer:
            col.add(f"{tp}.stages[{j}].end_layer", f"must be > first_layer ({s.first_layer}), got {s.end_layer}")
        expected = s.end_layer
    if pipe.stages and expected != num_layers:
        col.add(f"{tp}.stages[{len(pipe.stages) - 1}].end_layer",
                f"is {expected}, but the model has {num_layers} decoder layers (the last stage must end at {num_layers})")


def _check_ranks(pipe: Pipeline, hidden_size: int, tp: str, col: Collector) -> list[int | None]:
    cuts = len(pipe.stages) - 1
    ranks = list(pipe.codec_ranks) or [None] * cuts
    if len(ranks) != cuts:
        col.add(f"{tp}.codec_ranks", f"has {len(ranks)} entries; the pipeline has {cuts} cut(s)")
        return [None] * cuts
    for c, r in enumerate(ranks):
        if r is not None and not 1 <= r <= hidden_size:
            col.add(f"{tp}.codec_ranks[{c}]", f"must be between 1 and the hidden size {hidden_size}, got {r}")
    return ranks


def _check_placement(pipe: Pipeline, parts: dict[int, MoEParts], instance: Instance | None, tp: str,
                     col: Collector) -> dict[int, LayerHolders]:
    """Holders of every MoE layer's experts, from the stages and the placement entries."""
    placed: dict[tuple[int, int], tuple[tuple[str, ...], tuple[float, ...]]] = {}
    names = {d.name for d in instance.devices} if instance is not None else None
    for j, e in enumerate(pipe.expert_placement):
        ep = f"{tp}.expert_placement[{j}]"
        if e.layer not in parts:
            col.add(f"{ep}.layer", f"layer {e.layer} is not an MoE layer of the model (its MoE layers: {sorted(parts)})")
            continue
        if not 0 <= e.expert < parts[e.layer].num_experts:
            col.add(f"{ep}.expert", f"expert {e.expert} does not exist: layer {e.layer} has experts 0..{parts[e.layer].num_experts - 1}")
            continue
        if not e.devices or len(set(e.devices)) != len(e.devices):
            col.add(f"{ep}.devices", f"must name one or more distinct devices, got {list(e.devices)}")
            continue
        if names is not None and set(e.devices) - names:
            col.add(f"{ep}.devices", f"{sorted(set(e.devices) - names)} are not devices of the instance")
            continue
        if len(e.shares) != len(e.devices) or any(s < 0 for s in e.shares) or abs(sum(e.shares) - 1.0) > SHARE_TOLERANCE:
            col.add(f"{ep}.shares", f"must be one share >= 0 per device, summing to 1; got {list(e.shares)} for {list(e.devices)}")
            continue
        if (e.layer, e.expert) in placed:
            col.add(f"{ep}", f"expert {e.expert} of layer {e.layer} is placed twice")
            continue
        placed[(e.layer, e.expert)] = (e.devices, e.shares)
    out = {}
    for layer, p in parts.items():
        try:
            stage_device = pipe.stage_of_layer(layer).device
        except KeyError:
            continue
        holders = [stage_device]
        of_expert = {}
        for expert in range(p.num_experts):
            devices, shares = placed.get((layer, expert), ((stage_device,), (1.0,)))
            for d in devices:
                if d not in holders:
                    holders.append(d)
            of_expert[expert] = ([holders.index(d) for d in devices], list(shares))
        out[layer] = LayerHolders(tuple(holders), of_expert)
    return out


def _plan_gate_entries(pipe: Pipeline) -> list[tuple[str, Any]]:
    """``(device, layers or None)`` of the plan's ``group_gate`` field (absent before it lands)."""
    entries = []
    for entry in getattr(pipe, "group_gate", ()) or ():
        if isinstance(entry, Mapping):
            entries.append((entry.get("device"), entry.get("layers")))
        else:
            entries.append((getattr(entry, "device", None), getattr(entry, "layers", None)))
    return entries


def _gated_layers(pipe: Pipeline, explicit: Mapping[str, Iterable[int] | None] | None, parts: dict[int, MoEParts],
                  holders: dict[int, LayerHolders], tp: str, col: Collector) -> set[int]:
    """MoE layers whose stage device runs the group gate."""
    config = {device: (layers, f"{tp}.group_gate[{j}]") for j, (device, layers) in enumerate(_plan_gate_entries(pipe))}
    for device, layers in (explicit or {}).items():
        config[device] = (layers, f"group_gate[{device!r}]")
    stage_of_device = {s.device: s for s in pipe.stages}
    gated: set[int] = set()
    for device, (layers, where) in config.items():
        stage = stage_of_device.get(device)
        if stage is None:
            col.add(where, f"device {device!r} runs no stage of this pipeline (stages: {', '.join(stage_of_device)})")
            continue
        stage_moe = [l for l in stage.layers if l in parts]
        wanted = stage_moe if layers is None else list(layers)
        bad = [l for l in wanted if l not in stage_moe]
        if bad:
            col.add(where, f"layers {bad} are not MoE layers of {device!r}'s stage (its MoE layers: {stage_moe})")
            continue
        for l in wanted:
            if not holders[l].experts_on(device):
                col.add(where, f"{device!r} holds no expert of layer {l}: the group gate needs a local subset")
            gated.add(l)
    return gated
