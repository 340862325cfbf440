"""A plan with no codec and no group gate reproduces the unmodified model's logits (max abs difference
<= 1e-5, float32) for prefill and 8 decode steps with the KV cache, for every supported family, for
1, 2 and 3 stages, with experts placed off their stage and replicated."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from planner.executor import FAMILIES, apply_plan

from .conftest import cached_tiny, plan_of

TOLERANCE = 1e-5
DECODE_STEPS = 8

PLANS = {
    "1-stage": plan_of([("a", 0, 4)]),
    # Layer 2's expert 3 lives on the first stage's device; layer 3's expert 5 is split over a third
    # device and the first stage's.
    "2-stage": plan_of([("a", 0, 2), ("b", 2, 4)],
                       [(2, 3, ["a"], [1.0]), (3, 5, ["a", "c"], [0.3, 0.7]), (3, 0, ["c"], [1.0])]),
    "3-stage": plan_of([("a", 0, 1), ("b", 1, 3), ("c", 3, 4)],
                       [(1, 0, ["c"], [1.0]), (1, 4, ["a", "b"], [0.5, 0.5]), (3, 1, ["a", "b", "c"], [0.2, 0.3, 0.5])]),
}


def _prompt():
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 128, (2, 9), generator=gen)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, :3] = 0  # left padding in the second row
    return ids, mask


@torch.no_grad()
def _reference(model, ids, mask):
    """Logits of prefill and each greedy decode step through the HF model itself, and the decoded tokens."""
    out = model(input_ids=ids, attention_mask=mask, cache=DynamicCache(config=model.config), use_cache=True)
    logits, tokens, cache = [out.logits], [], out.cache
    for _ in range(DECODE_STEPS):
        nxt = out.logits[:, -1:].argmax(-1)
        tokens.append(nxt)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        out = model(input_ids=nxt, attention_mask=mask, cache=cache, use_cache=True)
        logits.append(out.logits)
        cache = out.cache
    return logits, tokens


@pytest.fixture(scope="module")
def references():
    return {}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_planned_logits_match_the_model(family, references):
    model = cached_tiny(family)
    ids, mask = _prompt()
    ref, tokens = _reference(model, ids, mask)
    for name, plan in PLANS.items():
        planned = apply_plan(model, None, plan)
        with torch.no_grad():
            got = [planned.prefill(ids, mask)]
            m = mask
            for t in tokens:
                m = torch.cat([m, m.new_ones(m.shape[0], 1)], dim=1)
                got.append(planned.decode_step(t, m))
            no_cache = planned(ids, mask)
        for step, (a, b) in enumerate(zip(ref, got)):
            diff = float((a - b).abs().max())
            assert diff <= TOLERANCE, f"{family} {name}: step {step} differs by {diff:.2e}"
        assert float((no_cache - ref[0]).abs().max()) <= TOLERANCE
        assert planned.devices == [s.device for s in plan.pipelines[0].stages]


@pytest.mark.parametrize("family", ["mixtral", "gpt_oss", "deepseek_v3"])
def test_off_stage_experts_are_really_served_off_stage(family):
    """The 3-stage plan sends slots to the other holders (so exactness is not vacuous)."""
    planned = apply_plan(cached_tiny(family), None, PLANS["3-stage"])
    ids, mask = _prompt()
    with torch.no_grad():
        planned.prefill(ids, mask)
    counts = {layer: p.slot_counts.tolist() for layer, p in planned.placed_experts().items()}
    assert sum(counts[1][1:]) > 0 and sum(counts[3][1:]) > 0


def test_generate_matches_hf_greedy():
    model = cached_tiny("qwen3_moe")
    ids, _ = _prompt()
    planned = apply_plan(model, None, PLANS["2-stage"])
    ours = planned.generate(ids, max_new_tokens=6)
    theirs = model.generate(input_ids=ids, max_new_tokens=6, do_sample=False, attention_mask=torch.ones_like(ids))
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("family", ["gpt_oss", "mixtral"])
def test_exact_under_every_experts_implementation(family):
    """Shards skip other holders' slots under eager (gpt-oss's eager path has no sentinel), batched_mm
    and grouped_mm alike."""
    from planner.executor import tiny_model
    model = tiny_model(family)
    ids, mask = _prompt()
    for implementation in ("eager", "batched_mm", "grouped_mm"):
        model.set_experts_implementation(implementation)
        planned = apply_plan(model, None, PLANS["3-stage"])
        with torch.no_grad():
            diff = float((planned(ids, mask) - model(input_ids=ids, attention_mask=mask).logits).abs().max())
        assert diff <= TOLERANCE, f"{family} under {implementation}: {diff:.2e}"
