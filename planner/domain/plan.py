"""Plans: where layers and experts run, how cuts are compressed, how requests are batched and routed.

A plan holds one or more pipelines (replicas of the whole model on disjoint devices); requests are
split over them by ``request_share``. Each pipeline is a list of stages (contiguous layer ranges on
one device each), an optional expert placement (routed experts that do not live with their layer's
stage), a codec rank per cut, and its micro-batching. JSON schema ``moeplan.plan/1``
(``docs/plan-format.md``); ``Plan.from_dict(plan.to_dict()) == plan`` holds exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from itertools import chain
from operator import attrgetter
from pathlib import Path
from typing import Any, NamedTuple

from planner.domain.errors import InputError, Problem
from planner.domain.files import read_json
from planner.domain.memo import IdentityMemo

SCHEMA = "moeplan.plan/1"


_EXPERT_DEVICES = IdentityMemo(64)  # placement -> the devices it names (Pipeline.expert_devices)
_COLUMNS = IdentityMemo(64)  # placement -> its PlacementColumns


class PlacementColumns(NamedTuple):
    """A placement's entries field by field, in entry order (lists; do not modify)."""

    layers: list
    experts: list
    devices: list
    shares: list


def placement_columns(placement) -> PlacementColumns:
    """The fields of every entry of ``placement`` as columns, remembered by the placement's identity:
    the validator, the memory count and the cost model each read a placement of 15,000 entries
    column by column, and read it once."""
    return _COLUMNS.get((placement,), lambda: PlacementColumns(
        list(map(attrgetter("layer"), placement)), list(map(attrgetter("expert"), placement)),
        list(map(attrgetter("devices"), placement)), list(map(attrgetter("shares"), placement))))


@dataclass(frozen=True)
class Stage:
    """Layers ``[first_layer, end_layer)`` on ``device``. The stage with layer 0 also runs the embedding,
    the one with the last layer runs the LM head."""

    device: str
    first_layer: int
    end_layer: int

    @property
    def layers(self) -> range:
        return range(self.first_layer, self.end_layer)


@dataclass(frozen=True)
class ExpertPlacement:
    """Routed expert ``expert`` of layer ``layer`` runs on ``devices``; ``shares`` (summing to 1) split its tokens."""

    layer: int
    expert: int
    devices: tuple[str, ...]
    shares: tuple[float, ...]


def placement_from_columns(layers: list, experts: list, devices: list, shares: list) -> tuple[ExpertPlacement, ...]:
    """``tuple(map(ExpertPlacement, layers, experts, devices, shares))``, built in bulk, its columns
    remembered for :func:`placement_columns` (the lists are kept: do not modify them).

    The entries are equal to (and hash like) the constructor's: a frozen dataclass's ``__init__``
    sets each field through ``object.__setattr__``, which costs half the time of building the 15,000
    entries of an expert-parallel DeepSeek-V3 pipeline; here each entry's ``__dict__`` is filled
    directly. ``ExpertPlacement`` has no ``__post_init__`` (``tests/domain/test_plan.py`` checks that
    both ways give the same entries). ``devices`` and ``shares`` should hold tuples (the frozen
    form)."""
    if not len(layers) == len(experts) == len(devices) == len(shares):
        raise ValueError("placement_from_columns: the four columns must have one item per entry")
    new = object.__new__
    out = []
    append = out.append
    for layer, expert, devs, share in zip(layers, experts, devices, shares):
        entry = new(ExpertPlacement)
        fields = entry.__dict__
        fields["layer"] = layer
        fields["expert"] = expert
        fields["devices"] = devs
        fields["shares"] = share
        append(entry)
    placement = tuple(out)
    columns = PlacementColumns(layers, experts, devices, shares)
    _COLUMNS.get((placement,), lambda: columns)
    return placement


@dataclass(frozen=True)
class GroupGate:
    """EC2MoE's group gate on ``device`` at ``layers`` (MoE layers of that device's stage; empty: every
    MoE layer of it). There every token is served by the experts of the layer that the device holds
    (its local subset), the group gate mixing the local and global routing over them, instead of
    sending the tokens whose top-k falls outside the subset to a remote holder: no remote round
    trips, at an accuracy cost that depends on the subset's coverage of the routing mass
    (``constraints.group_gate_loss``). The layer's other experts need not be deployed anywhere (an
    :class:`ExpertPlacement` with no devices)."""

    device: str
    layers: tuple[int, ...] = ()


@dataclass(frozen=True)
class Pipeline:
    stages: tuple[Stage, ...]
    # rank of the low-rank codec at cut i (between stage i and i+1); None = uncompressed
    codec_ranks: tuple[int | None, ...] = ()
    micro_batch_size: int = 1
    num_micro_batches: int = 1
    request_share: float = 1.0
    expert_placement: tuple[ExpertPlacement, ...] = ()
    group_gate: tuple[GroupGate, ...] = ()

    @property
    def devices(self) -> list[str]:
        return [s.device for s in self.stages]

    def gated_layers(self, is_moe_layer) -> dict[int, str]:
        """Layer -> device of every group-gated layer (``is_moe_layer(layer)`` says which layers count
        when a gate lists none: every MoE layer of its device's stage)."""
        out: dict[int, str] = {}
        for gate in self.group_gate:
            stage = next((s for s in self.stages if s.device == gate.device), None)
            layers = gate.layers if gate.layers else ([] if stage is None else [l for l in stage.layers if is_moe_layer(l)])
            for layer in layers:
                out[layer] = gate.device
        return out

    def stage_of_layer(self, layer: int) -> Stage:
        for s in self.stages:
            if s.first_layer <= layer < s.end_layer:
                return s
        raise KeyError(layer)

    def expert_devices(self) -> set[str]:
        """The devices its placed experts are on (a new set; remembered per placement, which may hold
        15,000 entries)."""
        return set(_EXPERT_DEVICES.get((self.expert_placement,), lambda: frozenset(
            chain.from_iterable(placement_columns(self.expert_placement).devices))))

    def local_experts(self, device: str) -> dict[int, list[int]]:
        """Routed experts that run on ``device``: layer -> experts (the local candidates of an end device)."""
        placed = {(p.layer, p.expert): p.devices for p in self.expert_placement}
        out: dict[int, list[int]] = {}
        for (layer, expert), devs in sorted(placed.items()):
            if device in devs:
                out.setdefault(layer, []).append(expert)
        return out


@dataclass(frozen=True)
class Plan:
    pipelines: tuple[Pipeline, ...]
    instance: str = ""
    solver: str = ""
    metrics: dict[str, Any] = field(default_factory=dict, compare=False)
    certificate: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def devices(self) -> set[str]:
        out: set[str] = set()
        for p in self.pipelines:
            out.update(p.devices)
            out.update(p.expert_devices())
        return out

    # ----- JSON -------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "schema": SCHEMA,
            "instance": self.instance,
            "solver": self.solver,
            "pipelines": [
                {
                    "stages": [{"device": s.device, "first_layer": s.first_layer, "end_layer": s.end_layer} for s in p.stages],
                    "codec_ranks": list(p.codec_ranks),
                    "micro_batch_size": p.micro_batch_size,
                    "num_micro_batches": p.num_micro_batches,
                    "request_share": p.request_share,
                    "expert_placement": [
                        {"layer": e.layer, "expert": e.expert, "devices": list(e.devices), "shares": list(e.shares)}
                        for e in p.expert_placement
                    ],
                    **({"group_gate": [{"device": g.device, "layers": list(g.layers)} for g in p.group_gate]}
                       if p.group_gate else {}),
                }
                for p in self.pipelines
            ],
            "metrics": self.metrics,
            "certificate": self.certificate,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, data: Any, file: str = "<plan>") -> Plan:
        """Build a plan from its JSON form; raises :class:`InputError` naming the field on any shape error."""
        problems: list[Problem] = []

        def bad(field_: str, msg: str):
            problems.append(Problem(file, field_, msg))

        if not isinstance(data, dict):
            raise InputError(Problem(file, "", "a plan must be a JSON object"))
        _unknown_keys(data, _PLAN_KEYS, "", bad)
        if data.get("schema") != SCHEMA:
            raise InputError(Problem(file, "schema", f"must be {SCHEMA!r}, got {data.get('schema')!r}"))
        pipes = data.get("pipelines")
        if not isinstance(pipes, list) or not pipes:
            raise InputError(Problem(file, "pipelines", "must be a non-empty list"))
        pipelines = []
        for i, p in enumerate(pipes):
            tp = f"pipelines[{i}]"
            if not isinstance(p, dict):
                bad(tp, "must be an object")
                continue
            _unknown_keys(p, _PIPELINE_KEYS, tp, bad)
            stages = []
            for j, s in enumerate(p.get("stages") or []):
                sp = f"{tp}.stages[{j}]"
                if not (isinstance(s, dict) and isinstance(s.get("device"), str)
                        and _is_int(s.get("first_layer")) and _is_int(s.get("end_layer"))):
                    bad(sp, "must be {device: string, first_layer: int, end_layer: int}")
                    continue
                _unknown_keys(s, _STAGE_KEYS, sp, bad)
                stages.append(Stage(s["device"], s["first_layer"], s["end_layer"]))
            if not stages:
                bad(f"{tp}.stages", "must be a non-empty list")
            ranks = p.get("codec_ranks", [])
            if not isinstance(ranks, list) or not all(r is None or _is_int(r) for r in ranks):
                bad(f"{tp}.codec_ranks", "must be a list of integers or null")
                ranks = []
            mbs, nmb = p.get("micro_batch_size", 1), p.get("num_micro_batches", 1)
            if not _is_int(mbs) or mbs < 1:
                bad(f"{tp}.micro_batch_size", "must be an integer >= 1")
                mbs = 1
            if not _is_int(nmb) or nmb < 1:
                bad(f"{tp}.num_micro_batches", "must be an integer >= 1")
                nmb = 1
            share = p.get("request_share", 1.0)
            if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
                bad(f"{tp}.request_share", f"must be a number from 0 to 1, got {share!r}")
                share = 1.0
            placement = []
            for j, e in enumerate(p.get("expert_placement") or []):
                ep = f"{tp}.expert_placement[{j}]"
                ok = (isinstance(e, dict) and _is_int(e.get("layer")) and _is_int(e.get("expert"))
                      and isinstance(e.get("devices"), list) and all(isinstance(d, str) for d in e["devices"])
                      and isinstance(e.get("shares"), list)
                      and all(isinstance(x, (int, float)) and not isinstance(x, bool) and 0 <= x <= 1 for x in e["shares"]))
                if not ok:
                    bad(ep, "must be {layer: int, expert: int, devices: [string], shares: [number from 0 to 1]}")
                    continue
                _unknown_keys(e, _PLACEMENT_KEYS, ep, bad)
                placement.append(ExpertPlacement(e["layer"], e["expert"], tuple(e["devices"]), tuple(float(x) for x in e["shares"])))
            gates = []
            raw_gates = p.get("group_gate", [])
            if not isinstance(raw_gates, list):
                bad(f"{tp}.group_gate", "must be a list of {device: string, layers: [int]}")
                raw_gates = []
            for j, g in enumerate(raw_gates):
                layers = g.get("layers", []) if isinstance(g, dict) else None
                if not (isinstance(g, dict) and isinstance(g.get("device"), str) and isinstance(layers, list)
                        and all(_is_int(x) for x in layers)):
                    bad(f"{tp}.group_gate[{j}]", "must be {device: string, layers: [int]} (layers optional)")
                    continue
                gates.append(GroupGate(g["device"], tuple(layers)))
            pipelines.append(Pipeline(tuple(stages), tuple(ranks), mbs, nmb, float(share), tuple(placement), tuple(gates)))
        if problems:
            raise InputError(problems)
        metrics = data.get("metrics", {}) if isinstance(data.get("metrics", {}), dict) else {}
        cert = data.get("certificate", {}) if isinstance(data.get("certificate", {}), dict) else {}
        return cls(tuple(pipelines), str(data.get("instance", "")), str(data.get("solver", "")), metrics, cert)

    @classmethod
    def load(cls, path) -> Plan:
        label = str(path)
        return cls.from_dict(read_json(Path(path), label), label)


# ----- editing plans: new plans in canonical form ------------------------------------------------

def ranks_of(pipe: Pipeline) -> list:
    """Codec rank of every cut (None where the plan lists none)."""
    cuts = max(0, len(pipe.stages) - 1)
    return [pipe.codec_ranks[i] if i < len(pipe.codec_ranks) else None for i in range(cuts)]


def home_device(stages, layer: int) -> str | None:
    for s in stages:
        if s.first_layer <= layer < s.end_layer:
            return s.device
    return None


def _canonical_placement(stages: tuple, placement) -> tuple:
    """The entries that do not name only their layer's home device, sorted by (layer, expert). The
    given tuple itself when nothing changes, so that checks remembered by identity still apply
    (:mod:`planner.domain.memo`)."""
    end = max((s.end_layer for s in stages), default=0)
    home: list[str | None] = [None] * max(end, 0)
    for s in stages:
        home[max(s.first_layer, 0):max(s.end_layer, 0)] = [s.device] * max(0, s.end_layer - max(s.first_layer, 0))

    def home_of(layer):
        return home[layer] if isinstance(layer, int) and 0 <= layer < len(home) else None

    kept = [e for e in placement if tuple(e.devices) != (home_of(e.layer),)]
    ordered = all((a.layer, a.expert) < (b.layer, b.expert) for a, b in zip(kept, kept[1:]))
    if ordered and len(kept) == len(placement) and isinstance(placement, tuple):
        return placement
    return tuple(kept) if ordered else tuple(sorted(kept, key=lambda e: (e.layer, e.expert)))


def make_pipeline(stages, ranks, placement, b: int, m: int, share: float, group_gate=()) -> Pipeline:
    """A pipeline in canonical form: one codec entry per cut, placements sorted, none that names only
    the home device, group gates only on stage devices and their stages' layers."""
    stages = tuple(stages)
    ranks = list(ranks)[: max(0, len(stages) - 1)]
    ranks += [None] * (max(0, len(stages) - 1) - len(ranks))
    keep = _canonical_placement(stages, placement)
    # Group gates stay on the devices that still run a stage, with the layers that stay in it.
    span = {s.device: s for s in stages}
    gates = []
    for g in group_gate:
        stage = span.get(g.device)
        if stage is None:
            continue
        layers = tuple(l for l in g.layers if stage.first_layer <= l < stage.end_layer)
        if layers or not g.layers:
            gates.append(GroupGate(g.device, layers))
    return Pipeline(stages, tuple(ranks), int(b), int(m), float(share), keep, tuple(gates))


def with_pipeline(plan: Plan, index: int, pipe: Pipeline) -> Plan:
    pipes = list(plan.pipelines)
    pipes[index] = pipe
    return replace(plan, pipelines=tuple(pipes))


_PLAN_KEYS = ("schema", "instance", "solver", "pipelines", "metrics", "certificate")
_PIPELINE_KEYS = ("stages", "codec_ranks", "micro_batch_size", "num_micro_batches", "request_share", "expert_placement",
                  "group_gate")
_STAGE_KEYS = ("device", "first_layer", "end_layer")
_PLACEMENT_KEYS = ("layer", "expert", "devices", "shares")


def _unknown_keys(obj: dict, known: tuple[str, ...], where: str, bad) -> None:
    """A key a plan does not define is most often a typo (``request_shares``): name it and the known ones."""
    for key in obj:
        if key not in known:
            bad(f"{where}.{key}" if where else str(key), f"is not a field of a plan here (known: {', '.join(known)})")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)
