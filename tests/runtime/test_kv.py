"""Continuous batching keeps each request's logits: requests joining and leaving a micro-batch at
step boundaries, left-padded in one batched cache, give the logits of each request run alone."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from planner.executor import apply_plan
from planner.runtime.kv import SlotCache, check_batchable

from .conftest import shipped_plan

# Batching itself moves float32 logits by a few 1e-6 (the unmodified model, batch 1 against batch 3:
# 7.6e-6 on the reference model, 1.05e-5 seen once under load): BLAS takes other paths for other
# batch sizes. Logits here reach |17|, where one float32 step is 1.9e-6: 2e-5 is about ten steps,
# while a wrong mask, position or cache row moves logits by whole units.
TOLERANCE = 2e-5
OUTPUT = 5


def test_joins_and_leaves_at_step_boundaries_keep_every_request_exact(loopback, reference_model):
    planned = apply_plan(reference_model, loopback, shipped_plan("phone-edge-cloud"))
    gen = torch.Generator().manual_seed(0)
    prompts = {r: torch.randint(0, 256, (1, n), generator=gen) for r, n in enumerate([5, 9, 3, 7])}
    alone = {}
    with torch.no_grad():
        for r, ids in prompts.items():
            logits = planned.prefill(ids)
            rows = [logits[0, -1]]
            for _ in range(OUTPUT):
                logits = planned.decode_step(logits[:, -1:].argmax(-1))
                rows.append(logits[0, -1])
            alone[r] = torch.stack(rows)
        stages = planned.stages
        slots = [SlotCache(reference_model.config, range(s.first_layer, s.end_layer)) for s in stages]
        joining = [{} for _ in stages]
        got = {r: [] for r in prompts}
        members: list[int] = []
        for step in range(12):
            for r in {0: [0, 1], 2: [2], 3: [3]}.get(step, []):  # arrivals between steps
                x = prompts[r]
                for i, st in enumerate(stages):
                    st.cache = DynamicCache(config=reference_model.config)
                    x = st(x, None, torch.arange(x.shape[1]).unsqueeze(0), True)
                    joining[i][r] = st.cache
                got[r].append(x[0, -1])
                members.append(r)
            members = [r for r in members if len(got[r]) <= OUTPUT]  # finished requests leave
            if not members:
                break
            x = torch.stack([got[r][-1].argmax() for r in members]).view(-1, 1)
            for i, st in enumerate(stages):
                kv = slots[i]
                kv.arrange(members, joining[i])
                st.cache = kv.cache
                assert kv.positions().squeeze(1).tolist() == [len(prompts[r][0]) + len(got[r]) - 1 for r in members]
                x = st(x, kv.mask(), kv.positions(), True)
                kv.advance()
            for row, r in enumerate(members):
                got[r].append(x[row, -1])
    for r in prompts:
        assert len(got[r]) == OUTPUT + 1
        assert (torch.stack(got[r]) - alone[r]).abs().max().item() <= TOLERANCE


def test_a_row_that_never_prefilled_is_named(reference_model):
    kv = SlotCache(reference_model.config, range(0, 2))
    with pytest.raises(KeyError, match="request 7 has no KV cache"):
        kv.arrange([7], {})


def test_sliding_window_caches_are_refused():
    from planner.executor import tiny_model

    model = tiny_model("gpt_oss")
    with pytest.raises(ValueError, match="full-attention caches only"):
        check_batchable(model.config, range(0, 4))
    check_batchable(tiny_model("mixtral").config, range(0, 4))
