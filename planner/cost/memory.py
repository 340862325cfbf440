"""Memory of a plan: the bytes each device holds.

Weights (its layers' non-expert weights, the routed experts it holds, embedding / LM head, codec
matrices) + KV cache for ``b*m`` sequences of ``prompt + output`` tokens + a prefill activation
workspace (:attr:`planner.cost.costmodel.CostModel.workspace_bytes`).
"""

from __future__ import annotations

from collections import Counter
from itertools import chain
from typing import TYPE_CHECKING

import numpy as np

from planner.domain.memo import IdentityMemo
from planner.domain.plan import Pipeline, Plan, placement_columns

if TYPE_CHECKING:
    from planner.cost.costmodel import CostModel


def memory_bytes(cm: CostModel, plan: Plan) -> dict[str, float]:
    """Bytes each device of the plan holds (weights + KV cache + activation workspace)."""
    m, db = cm.model, cm.db
    mem: dict[str, float] = {}

    def add(d, v):
        mem[d] = mem.get(d, 0.0) + float(v)

    ctx = cm.prompt + cm.output
    stage_bytes = cm.instance_cache.get(_STAGE_KEY)
    if stage_bytes is None:
        stage_bytes = cm.instance_cache[_STAGE_KEY] = {}
    workspace = cm.workspace_bytes
    experts_per_layer = cm.experts_per_layer
    for pipe in plan.pipelines:
        seqs = pipe.micro_batch_size * pipe.num_micro_batches
        for si, stage in enumerate(pipe.stages):
            a, b = stage.first_layer, stage.end_layer
            # The weights of the stage's layers, remembered per layer range (a batching sweep prices
            # one structure's memory dozens of times): the same sum, in the same order, as inline.
            weights = stage_bytes.get((a, b))
            if weights is None:
                weights = stage_bytes[(a, b)] = (workspace + cm.nonexpert_bytes[a:b].sum(),
                                                 experts_per_layer[a:b].sum() * cm.expert_bytes)
            add(stage.device, weights[0] + (b - a) * seqs * ctx * m.kv_bytes_per_token_per_layer + weights[1])
            if stage.first_layer == 0:
                add(stage.device, m.embedding_params * db)
            if stage.end_layer == m.num_layers and not (m.tie_word_embeddings and stage.first_layer == 0):
                add(stage.device, m.lm_head_params * db)
            rank = pipe.codec_ranks[si] if si < len(pipe.codec_ranks) else None
            if rank is not None and si + 1 < len(pipe.stages):
                add(stage.device, m.hidden_size * rank * db)
                add(pipe.stages[si + 1].device, m.hidden_size * rank * db)
        # Placed experts leave their layer's stage device for the listed devices.
        if pipe.expert_placement:
            for d, n in _moved(cm, pipe).items():
                add(d, n * cm.expert_bytes)
    return mem


def _moved(cm: CostModel, pipe: Pipeline) -> dict[str, int]:
    """Device -> expert replicas gained by the pipeline's placement (negative: lost by a layer's
    stage device), remembered while its stages and placement are unchanged (batching variants of
    one structure share them)."""
    def count() -> dict[str, int]:
        m = cm.model
        experts_per_layer = cm.experts_per_layer
        home = [None] * m.num_layers
        for stage in pipe.stages:
            home[stage.first_layer:stage.end_layer] = [stage.device] * (stage.end_layer - stage.first_layer)
        columns = placement_columns(pipe.expert_placement)
        L = m.num_layers
        if all(0 <= layer < L and experts_per_layer[layer] for layer in set(columns.layers)):
            homes = list(map(home.__getitem__, columns.layers))
            devices = columns.devices
        else:
            kept = [i for i, layer in enumerate(columns.layers) if 0 <= layer < L and experts_per_layer[layer]]
            homes = [home[columns.layers[i]] for i in kept]
            devices = [columns.devices[i] for i in kept]
        names = list(chain.from_iterable(devices))
        gained = Counter(names)
        lost = Counter(homes)
        # Devices in the order the entries name them (each entry: its home, then its devices): by
        # each name's first position in that sequence (entry j's home at j + the devices before it,
        # device i of the flat list at i + its entry + 1), found without building the sequence.
        counts = np.fromiter(map(len, devices), dtype=np.intp, count=len(devices))
        before = np.cumsum(counts) - counts
        entry = np.repeat(np.arange(len(devices)), counts)
        first_home = dict(zip(reversed(homes), range(len(homes) - 1, -1, -1)))
        first_name = dict(zip(reversed(names), range(len(names) - 1, -1, -1)))
        first = {d: int(j + before[j]) for d, j in first_home.items()}
        for d, i in first_name.items():
            at = int(i + entry[i] + 1)
            if at < first.get(d, at + 1):
                first[d] = at
        order = sorted(first, key=first.__getitem__)
        return {d: gained.get(d, 0) - lost.get(d, 0) for d in order}

    memo = cm.instance_cache.get(_MEMO_KEY)
    if memo is None:
        memo = cm.instance_cache[_MEMO_KEY] = IdentityMemo(64)
    return memo.get((pipe.stages, pipe.expert_placement), count)


_MEMO_KEY = ("memory", "moved")
_STAGE_KEY = ("memory", "stage weights")
