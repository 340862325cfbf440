"""The validator finds each kind of violation, and lists all of them."""

from __future__ import annotations

from planner.cost.validator import validate
from planner.domain.plan import ExpertPlacement, Pipeline, Plan, Stage
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
