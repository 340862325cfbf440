"""The validator finds each kind of violation, and lists all of them."""

from __future__ import annotations

import copy
from dataclasses import replace

from planner.cost.validator import validate
from planner.domain.plan import ExpertPlacement, GroupGate, Pipeline, Plan, Stage
from tests.helpers import LINE, build


def kinds(instance, plan):
    return sorted({v.kind for v in validate(instance, plan)})


def test_a_good_plan_is_clean(line):
    plan = Plan((Pipeline((Stage("gpu", 0, 4),), micro_batch_size=2, num_micro_batches=2),))
    assert validate(line, plan) == []


def test_coverage_and_contiguity(line):
    gap = Plan((Pipeline((Stage("edge", 0, 1), Stage("gpu", 2, 4))),))
    assert "coverage" in kinds(line, gap)
    short = Plan((Pipeline((Stage("gpu", 0, 3),)),))
    assert "coverage" in kinds(line, short)
    overlap = Plan((Pipeline((Stage("edge", 0, 2), Stage("gpu", 1, 4))),))
    assert "contiguity" in kinds(line, overlap)
    empty = Plan((Pipeline((Stage("edge", 0, 0), Stage("gpu", 0, 4))),))
    assert "contiguity" in kinds(line, empty)


def test_unknown_device_and_shared_devices(line):
    assert "structure" in kinds(line, Plan((Pipeline((Stage("tpu", 0, 4),)),)))
    twice = Plan((Pipeline((Stage("gpu", 0, 2), Stage("edge", 2, 3), Stage("gpu", 3, 4))),))
    assert "structure" in kinds(line, twice)
    shared = Plan((Pipeline((Stage("gpu", 0, 4),), request_share=0.5), Pipeline((Stage("gpu", 0, 4),), request_share=0.5)))
    assert any("disjoint" in v.message for v in validate(line, shared))


def test_ranks_and_accuracy_budget(line):
    stages = (Stage("edge", 0, 2), Stage("gpu", 2, 4))
    assert "rank" in kinds(line, Plan((Pipeline(stages, codec_ranks=(32,)),)))
    # rank 16 is allowed but costs 0.02 > budget 0.01
    assert kinds(line, Plan((Pipeline(stages, codec_ranks=(16,)),))) == ["accuracy"]
    assert kinds(line, Plan((Pipeline(stages, codec_ranks=(64,)),))) == []


def test_batch_limit(line):
    assert "batch" in kinds(line, Plan((Pipeline((Stage("gpu", 0, 4),), micro_batch_size=4, num_micro_batches=3),)))


def test_memory_names_device_and_numbers(line):
    plan = Plan((Pipeline((Stage("phone", 0, 4),)),))
    msgs = [v.message for v in validate(line, plan) if v.kind == "memory"]
    assert msgs and "'phone'" in msgs[0] and "GB" in msgs[0]


def test_slo(line):
    inst = build(LINE, constraints={"latency_slo_ms": 0.001})
    assert "slo" in kinds(inst, Plan((Pipeline((Stage("gpu", 0, 4),)),)))


def test_placement_errors(line):
    bad = (
        ExpertPlacement(0, 9, ("gpu",), (1.0,)),           # expert out of range
        ExpertPlacement(1, 0, ("gpu", "edge"), (0.7, 0.7)),  # shares do not sum to 1
        ExpertPlacement(2, 0, ("moon",), (1.0,)),          # unknown device
    )
    vs = validate(line, Plan((Pipeline((Stage("gpu", 0, 4),), expert_placement=bad),)))
    assert len([v for v in vs if v.kind == "placement"]) == 3


def test_every_violation_is_listed(line):
    """A plan broken in three ways reports three violations, not the first one only."""
    plan = Plan((Pipeline((Stage("edge", 0, 2), Stage("gpu", 3, 4)), codec_ranks=(7,), micro_batch_size=9),))
    assert {"coverage", "rank", "batch"} <= set(kinds(line, plan))


GATED = dict(LINE, constraints=dict(LINE["constraints"], group_gate_coverage=[0.6, 0.9], group_gate_loss=[0.05, 0.01],
                                    accuracy_loss_budget=0.5))


def gated_plan(gates, placement=(), stages=(("edge", 0, 2), ("gpu", 2, 4))):
    return Plan((Pipeline(tuple(Stage(*s) for s in stages), micro_batch_size=1, expert_placement=tuple(placement),
                          group_gate=tuple(gates)),))


def test_group_gates_are_checked_against_the_pipeline():
    inst = build(GATED)
    drop = (ExpertPlacement(0, 7, (), ()),)
    assert validate(inst, gated_plan([GroupGate("edge", (0,))], drop)) == []
    messages = lambda plan: " / ".join(str(v) for v in validate(inst, plan))  # noqa: E731
    assert "runs no stage of this pipeline" in messages(gated_plan([GroupGate("phone")]))
    assert "not an MoE layer of its stage [0, 2)" in messages(gated_plan([GroupGate("edge", (3,))]))
    assert "two group gates" in messages(gated_plan([GroupGate("edge", (0,)), GroupGate("edge", (1,))]))
    # Experts away from a gated layer are never called there; dropping needs a gate.
    away = (ExpertPlacement(0, 7, ("gpu",), (1.0,)),)
    assert "never called elsewhere; drop it" in messages(gated_plan([GroupGate("edge", (0,))], away))
    assert "only a group-gated layer may drop experts" in messages(gated_plan([], drop))
    everything = tuple(ExpertPlacement(0, e, (), ()) for e in range(8))
    assert "keeps no expert of layer 0" in messages(gated_plan([GroupGate("edge", (0,))], everything))


def test_a_group_gate_needs_a_loss_table(line):
    plan = gated_plan([GroupGate("edge", (0,))], (ExpertPlacement(0, 7, (), ()),))
    assert any(v.kind == "gate" and "accuracy cost" in v.message for v in validate(line, plan))


def test_the_group_gate_loss_counts_in_the_accuracy_budget():
    tight = dict(GATED, constraints=dict(GATED["constraints"], accuracy_loss_budget=1e-6))
    plan = gated_plan([GroupGate("edge", (0,))], (ExpertPlacement(0, 7, (), ()),))
    assert "accuracy" in kinds(build(tight), plan)


def test_every_hop_a_plan_uses_needs_a_network_path():
    """Stages, the way back to the origin and each layer's experts must be reachable; devices of
    another connected component are not (the check of a plan inside one component is short). A
    loaded instance is connected (and a changed one drops what it cuts off): built here by hand."""
    data = copy.deepcopy(LINE)
    data["devices"].append({**data["devices"][2], "name": "island"})
    data["links"].append({"a": "gpu", "b": "island", "bandwidth_gbps": 10, "rtt_ms": 1})
    linked = build(data)
    inst = replace(linked, links=tuple(link for link in linked.links if "island" not in (link.a, link.b)))
    assert len(set(inst.component_of.values())) == 2
    connected = (ExpertPlacement(1, 0, ("edge",), (1.0,)), ExpertPlacement(2, 3, ("gpu", "edge"), (0.5, 0.5)))
    assert validate(inst, Plan((Pipeline((Stage("gpu", 0, 4),), expert_placement=connected),))) == []
    stage = [v for v in validate(inst, Plan((Pipeline((Stage("edge", 0, 2), Stage("island", 2, 4))),))) if v.kind == "link"]
    assert {v.message for v in stage} == {"pipeline 0: no network path from 'edge' to 'island'",
                                          "pipeline 0: no network path from 'island' to 'phone'"}
    far = (*connected, ExpertPlacement(3, 1, ("gpu", "island"), (0.5, 0.5)))
    vs = validate(inst, Plan((Pipeline((Stage("gpu", 0, 4),), expert_placement=far),)))
    assert [v.message for v in vs] == ["pipeline 0: no network path from 'gpu' to 'island'"]
