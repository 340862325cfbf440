"""Experts placed as the plan says: replica shares, the remote-experts seam, timings, the original model untouched."""

from __future__ import annotations

import torch

from planner.executor import InProcessExperts, apply_plan

from .conftest import cached_tiny, plan_of


def _ids(rows=4, length=32, seed=2):
    return torch.randint(0, 128, (rows, length), generator=torch.Generator().manual_seed(seed))


def test_replica_shares_split_slots_deterministically():
    # Every expert of layer 1 replicated 25/75 on the stage's device and another one.
    placement = [(1, e, ["a", "b"], [0.25, 0.75]) for e in range(8)]
    plan = plan_of([("a", 0, 4)], placement)
    planned = apply_plan(cached_tiny("mixtral"), None, plan)
    with torch.no_grad():
        planned.prefill(_ids())
    counts = planned.placed_experts()[1].slot_counts.tolist()
    total = sum(counts)
    assert total == 4 * 32 * 2
    # The Weyl sequence keeps each expert's split within a slot or two of its share.
    assert abs(counts[0] - 0.25 * total) <= 8
    again = apply_plan(cached_tiny("mixtral"), None, plan)
    with torch.no_grad():
        again.prefill(_ids())
    assert again.placed_experts()[1].slot_counts.tolist() == counts


def test_remote_experts_go_through_the_pluggable_callable():
    model = cached_tiny("qwen2_moe")
    plan = plan_of([("end", 0, 2), ("cloud", 2, 4)], [(0, 1, ["cloud"], [1.0]), (3, 2, ["end"], [1.0])])
    calls = []
    backing = InProcessExperts()

    def remote(device, layer, hidden, expert_ids, weights):
        calls.append((device, layer, hidden.shape[0]))
        assert ((expert_ids == -1) | (expert_ids == (1 if layer == 0 else 2))).all()
        return backing(device, layer, hidden, expert_ids, weights)

    # The first apply fills `backing` with the remote shards; the second uses it through `remote`.
    apply_plan(model, None, plan, remote=backing)
    planned = apply_plan(model, None, plan, remote=remote)
    ids = _ids()
    with torch.no_grad():
        out = planned(ids)
        ref = model(input_ids=ids).logits
    assert float((out - ref).abs().max()) <= 1e-5
    assert {(d, l) for d, l, _ in calls} == {("cloud", 0), ("end", 3)}


def test_the_original_model_is_left_unchanged():
    model = cached_tiny("deepseek_v3")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = _ids()
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        planned = apply_plan(model, None, plan_of([("a", 0, 2), ("b", 2, 4)], [(2, 0, ["a"], [1.0])]))
        planned.prefill(ids)
        after = model(input_ids=ids).logits
    assert torch.equal(ref, after)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert type(model.model.layers[2].mlp.experts).__name__ == "DeepseekV3Experts"


def test_timings_split_layers_into_non_expert_and_routed_experts():
    planned = apply_plan(cached_tiny("olmoe"), None, plan_of([("a", 0, 2), ("b", 2, 4)]))
    planned.timings.enabled = True
    with torch.no_grad():
        planned.prefill(_ids())
    t = planned.timings
    assert sorted(t.layer_s) == [0, 1, 2, 3] and all(t.calls[i] == 1 for i in range(4))
    assert all(0 < t.routed_experts_s[i] < t.layer_s[i] for i in range(4))
    assert all(t.non_expert_s(i) > 0 for i in range(4))
