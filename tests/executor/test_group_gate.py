"""The group gate: no change with the full expert set, nothing remote on gated layers, and a fitted
gate closer to the full model than plain renormalisation over the subset."""

from __future__ import annotations

import pytest
import torch

from planner.executor import apply_plan

from .conftest import cached_tiny, plan_of

MOVED = [(layer, e, ["cloud"], [1.0]) for layer in (0, 1) for e in range(4, 8)]  # experts 4..7 of layers 0, 1 off the end


def _ids(rows, seed, length=32):
    return torch.randint(0, 128, (rows, length), generator=torch.Generator().manual_seed(seed))


def test_group_gate_with_the_full_expert_set_changes_nothing():
    model = cached_tiny("mixtral")
    # Every expert of layers 0 and 1 has a replica on the end device as well as the cloud.
    placement = [(layer, e, ["end", "cloud"], [0.5, 0.5]) for layer in (0, 1) for e in range(8)]
    planned = apply_plan(model, None, plan_of([("end", 0, 2), ("cloud", 2, 4)], placement),
                         group_gate={"end": None}, calibration_ids=_ids(4, 1))
    ids = _ids(2, 2)
    with torch.no_grad():
        diff = float((planned(ids) - model(input_ids=ids).logits).abs().max())
    assert diff <= 1e-5
    assert all(p.regated_tokens == 0 and p.slot_counts[1] == 0 for l, p in planned.placed_experts().items() if l < 2)


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe", "deepseek_v3", "gpt_oss"])
def test_gated_layers_send_nothing_remote(family):
    model = cached_tiny(family)
    moved = [(l, e, d, s) for l, e, d, s in MOVED if l in (1, 2)] + [(2, e, ["cloud"], [1.0]) for e in range(4, 8)]
    plan = plan_of([("end", 0, 3), ("cloud", 3, 4)], moved)
    planned = apply_plan(model, None, plan, group_gate={"end": [1, 2]}, gate_mode="renormalise")
    with torch.no_grad():
        planned(_ids(2, 3))
    for layer in (1, 2):
        p = planned.placed_experts()[layer]
        assert p.slot_counts[1:].sum() == 0 and p.regated_tokens > 0


def test_fitted_gate_beats_renormalisation_on_its_calibration_tokens():
    model = cached_tiny("olmoe")
    plan = plan_of([("end", 0, 2), ("cloud", 2, 4)], MOVED)
    planned = apply_plan(model, None, plan, group_gate={"end": None}, calibration_ids=_ids(16, 4))
    fits = planned.gate_fits
    assert sorted(fits) == [0, 1]
    assert all(f.tokens > 0 and f.relative_error_fitted < f.relative_error_renormalise for f in fits.values())


def test_a_subset_smaller_than_top_k_pads_the_slots():
    model = cached_tiny("qwen3_moe")
    moved = [(0, e, ["cloud"], [1.0]) for e in range(1, 8)]  # one local expert, top-2 routing
    planned = apply_plan(model, None, plan_of([("end", 0, 2), ("cloud", 2, 4)], moved),
                         group_gate={"end": [0]}, gate_mode="renormalise")
    with torch.no_grad():
        out = planned(_ids(2, 5))
    assert torch.isfinite(out).all()
    assert planned.placed_experts()[0].slot_counts[1] == 0


def test_the_plan_field_is_read_when_present():
    from dataclasses import dataclass

    from planner.domain.plan import Pipeline

    @dataclass(frozen=True)
    class GatedPipeline(Pipeline):
        group_gate: tuple = ()

    base = plan_of([("end", 0, 2), ("cloud", 2, 4)], MOVED).pipelines[0]
    pipe = GatedPipeline(base.stages, base.codec_ranks, expert_placement=base.expert_placement,
                         group_gate=({"device": "end", "layers": [1]},))
    from planner.domain.plan import Plan
    planned = apply_plan(cached_tiny("mixtral"), None, Plan((pipe,)), gate_mode="renormalise")
    assert [l for l, p in planned.placed_experts().items() if p.group_gate is not None] == [1]


def test_fitted_gates_are_reused_only_for_the_same_subset():
    model = cached_tiny("olmoe")
    plan = plan_of([("end", 0, 2), ("cloud", 2, 4)], MOVED)
    first = apply_plan(model, None, plan, group_gate={"end": None}, calibration_ids=_ids(8, 6))
    gates = {l: p.group_gate for l, p in first.placed_experts().items() if p.group_gate is not None}
    again = apply_plan(model, None, plan, group_gate={"end": None}, fitted_gates=gates)
    ids = _ids(2, 7)
    with torch.no_grad():
        assert torch.equal(first(ids), again(ids))
    other = plan_of([("end", 0, 2), ("cloud", 2, 4)], [(0, e, ["cloud"], [1.0]) for e in range(2, 8)] + MOVED[4:])
    with pytest.raises(Exception, match=r"fitted_gates\[0\]: a gate over experts \[0, 1, 2, 3\] does not fit"):
        apply_plan(model, None, other, group_gate={"end": None}, fitted_gates=gates)
