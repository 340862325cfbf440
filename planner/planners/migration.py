"""Weight migration between two plans: which device holds which weights, and what must be copied.

A plan's *memory map* (:func:`weight_map`) lists which device holds which weights: every layer's
non-expert block (on its stage device), every routed expert (on its stage device, or where the
expert placement puts it), the embedding (first stage) and LM head (last stage; for tied
embeddings the head is the embedding matrix), and codec matrices (encoder on the sending side,
decoder on the receiving side of a cut, keyed by the cut's layer and rank, ``hidden_size x rank``
each). :func:`migration` is every (weights, device) pair of the new map absent from the current
one, at the cost model's byte sizes, as :class:`MigrationStep` copies from a device that still
exists and holds those weights, or from ``None`` (the model store) when none does. KV caches and
activations are not weights and are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.cost.costmodel import CostModel
from planner.domain.instance import Instance
from planner.domain.plan import Plan, ranks_of


@dataclass(frozen=True)
class MigrationStep:
    """Copy weights ``what`` (``layer``: a layer's non-expert block; ``expert``; ``embedding``; ``head``;
    ``codec-encoder`` / ``codec-decoder``: layer = first layer after the cut, ``rank``) to ``to_device``.
    ``from_device`` None: no device that is still there holds them (load from the model store)."""

    what: str
    layer: int | None
    expert: int | None
    from_device: str | None
    to_device: str
    bytes: float
    rank: int | None = None


_WHAT_ORDER = {"embedding": 0, "layer": 1, "expert": 2, "head": 3, "codec-encoder": 4, "codec-decoder": 5}


def weight_map(plan: Plan, instance: Instance, cost_model: CostModel | None = None) -> dict[tuple, tuple[str, float]]:
    """The plan's memory map: ``(device, key) -> (what, bytes)`` for every weight a device holds.

    Keys: ``("layer", l)``, ``("expert", l, e)``, ``("embedding",)``, ``("head",)`` (``("embedding",)``
    again for tied embeddings: the same matrix), ``("codec-encoder", l, r)``, ``("codec-decoder", l, r)``.
    """
    cm = cost_model or CostModel(instance)
    m = instance.model
    db = m.dtype_bytes
    out: dict[tuple, tuple[str, float]] = {}
    for pipe in plan.pipelines:
        placed = {(e.layer, e.expert): e.devices for e in pipe.expert_placement}
        ranks = ranks_of(pipe)
        for si, s in enumerate(pipe.stages):
            for layer in s.layers:
                out[(s.device, ("layer", layer))] = ("layer", float(cm.nonexpert_bytes[layer]))
                if m.is_moe_layer(layer):
                    for e in range(m.num_experts):
                        for d in placed.get((layer, e), (s.device,)):
                            out[(d, ("expert", layer, e))] = ("expert", float(cm.expert_bytes))
            if s.first_layer == 0:
                out[(s.device, ("embedding",))] = ("embedding", float(m.embedding_params * db))
            if s.end_layer == m.num_layers and not (m.tie_word_embeddings and s.first_layer == 0):
                key = ("embedding",) if m.tie_word_embeddings else ("head",)
                out[(s.device, key)] = ("head", float(m.lm_head_params * db))
            if si < len(ranks) and ranks[si] is not None:
                r, nxt = ranks[si], pipe.stages[si + 1]
                size = float(m.hidden_size * r * db)
                out[(s.device, ("codec-encoder", s.end_layer, r))] = ("codec-encoder", size)
                out[(nxt.device, ("codec-decoder", s.end_layer, r))] = ("codec-decoder", size)
    return out


def migration(current: Plan, new: Plan, instance: Instance, cost_model: CostModel | None = None,
              *, current_map: dict | None = None) -> tuple[float, list[MigrationStep]]:
    """Bytes to copy to turn ``current`` into ``new`` on ``instance``, and the copy steps."""
    cm = cost_model or CostModel(instance)
    old = current_map if current_map is not None else weight_map(current, instance, cm)
    new_map = weight_map(new, instance, cm)
    holders: dict[tuple, list[str]] = {}
    alive = instance.device_index
    for dev, key in old:
        if dev in alive:
            holders.setdefault(key, []).append(dev)
    steps = []
    for (dev, key), (what, size) in new_map.items():
        if (dev, key) in old:
            continue
        src = sorted(holders.get(key, []))
        layer = key[1] if len(key) > 1 else None
        expert = key[2] if key[0] == "expert" else None
        rank = key[2] if key[0].startswith("codec") else None
        steps.append(MigrationStep(what, layer, expert, src[0] if src else None, dev, size, rank))
    steps.sort(key=lambda s: (s.to_device, _WHAT_ORDER[s.what], -1 if s.layer is None else s.layer,
                              -1 if s.expert is None else s.expert, s.rank or 0))
    return float(sum(s.bytes for s in steps)), steps


def migration_bytes(current: Plan, new: Plan, instance: Instance, cost_model: CostModel | None = None) -> float:
    return migration(current, new, instance, cost_model)[0]
