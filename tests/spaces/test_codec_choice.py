"""Codec ranks traded against the objective (constraints.accuracy_tradeoff): route-aware prefers the
most accurate ranks within the trade-off, the re-planner makes the ranks follow the bandwidth."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import pytest

from planner import api
from planner.cost.costmodel import CostModel
from planner.cost.evaluation import is_within
from planner.cost.validator import validate
from planner.domain.changes import changed_instance
from planner.domain.errors import InputError
from planner.domain.instance import Codec
from planner.planners.replan import replan
from planner.spaces.codec_choice import MAX_COMBINATIONS, codec_variants, plan_accuracy_loss, prefer_accuracy
from tests.helpers import REPO

CELLULAR = REPO / "instances" / "bench" / "dynamic" / "mixtral-orin-h100-cellular-slo.toml"
NOMINAL_MBPS = 13.224


@pytest.fixture(scope="module")
def cellular():
    return api.load_instance(CELLULAR)


def with_tradeoff(inst, t):
    return replace(inst, constraints=replace(inst.constraints, accuracy_tradeoff=t))


def at_mbps(inst, mbps):
    return changed_instance(inst, bandwidth_factor=mbps / NOMINAL_MBPS)


def ranks(plan):
    return [p.codec_ranks for p in plan.pipelines]


def scorer(inst):
    cm = CostModel(inst)

    def score(plan):
        return None if validate(inst, plan, cm) else cm.evaluate(plan).objective(inst.objective)
    return score


# ----- the helpers -----------------------------------------------------------------------------

def test_within_is_relative_to_the_reference_and_the_objective_sense():
    assert is_within("throughput", 95.0, 100.0, 0.05) and not is_within("throughput", 94.9, 100.0, 0.05)
    assert is_within("throughput", 120.0, 100.0, 0.0)  # better is always within
    assert is_within("latency", 1.05, 1.0, 0.05) and not is_within("latency", 1.051, 1.0, 0.05)
    assert is_within("energy", 0.5, 1.0, 0.0)
    assert not is_within("throughput", math.nan, 100.0, 0.5) and not is_within("latency", 1.0, math.inf, 0.5)


def test_accuracy_loss_sums_the_cuts_and_takes_the_worst_pipeline(cellular):
    plan = api.solve(cellular, "route-aware").solution
    pipe = plan.pipelines[0]
    one = replace(plan, pipelines=(replace(pipe, codec_ranks=(256,)),))
    assert plan_accuracy_loss(one, cellular) == pytest.approx(0.012)
    none = replace(plan, pipelines=(replace(pipe, codec_ranks=(None,)),))
    assert plan_accuracy_loss(none, cellular) == 0.0
    two = replace(plan, pipelines=(replace(pipe, codec_ranks=(256,), request_share=0.5),
                                   replace(pipe, codec_ranks=(1024,), request_share=0.5)))
    assert plan_accuracy_loss(two, cellular) == pytest.approx(0.012)


def test_variants_change_only_ranked_cuts_to_allowed_ranks(cellular):
    plan = api.solve(cellular, "route-aware").solution
    variants = codec_variants(plan, cellular)
    assert sorted(ranks(v)[0] for v in variants) == sorted((r,) for r in cellular.constraints.codec.ranks
                                                            if (r,) != plan.pipelines[0].codec_ranks)
    for v in variants:
        assert replace(v.pipelines[0], codec_ranks=plan.pipelines[0].codec_ranks) == plan.pipelines[0]
    # A cut without a codec stays without, and no codec ranks means no variants.
    bare = replace(plan, pipelines=(replace(plan.pipelines[0], codec_ranks=(None,)),))
    assert codec_variants(bare, cellular) == []
    no_codec = replace(cellular, constraints=replace(cellular.constraints, codec=Codec()))
    assert codec_variants(plan, no_codec) == []


def test_many_cuts_vary_one_cut_at_a_time(cellular):
    plan = api.solve(cellular, "route-aware").solution
    pipe = plan.pipelines[0]
    allowed = cellular.constraints.codec.ranks
    cuts = 1
    while len(allowed) ** cuts <= MAX_COMBINATIONS:
        cuts += 1
    many = replace(plan, pipelines=(replace(pipe, codec_ranks=(allowed[0],) * cuts),))  # shape only
    variants = codec_variants(many, cellular)
    assert len(variants) == cuts * (len(allowed) - 1)
    assert all(sum(a != b for a, b in zip(ranks(v)[0], ranks(many)[0])) == 1 for v in variants)
    few = replace(plan, pipelines=(replace(pipe, codec_ranks=(allowed[0],) * (cuts - 1)),))
    assert len(codec_variants(few, cellular)) == len(allowed) ** (cuts - 1) - 1
    assert {ranks(v)[0] for v in codec_variants(few, cellular)} == \
        set(itertools.product(allowed, repeat=cuts - 1)) - {ranks(few)[0]}


def test_prefer_accuracy_without_a_tradeoff_returns_the_plan(cellular):
    inst = with_tradeoff(cellular, 0.0)
    plan = api.solve(inst, "route-aware").solution
    score = scorer(inst)
    assert prefer_accuracy(plan, inst, score) == (plan, score(plan))


def test_prefer_accuracy_takes_the_least_loss_within_the_tradeoff_and_stays_valid(cellular):
    inst = with_tradeoff(cellular, 0.0)
    plan = api.solve(inst, "route-aware").solution
    assert ranks(plan) == [(256,)]  # the objective alone: the smallest rank the budget allows
    score = scorer(inst)
    by_rank = {r: score(replace(plan, pipelines=(replace(plan.pipelines[0], codec_ranks=(r,)),))) for r in (256, 512, 1024)}
    for t in (0.01, 0.03, 0.05, 0.2):
        inst_t = with_tradeoff(cellular, t)
        chosen, value = prefer_accuracy(plan, inst_t, scorer(inst_t))
        ok = [r for r, v in by_rank.items() if v is not None and v >= (1 - t) * by_rank[256]]
        assert ranks(chosen) == [(max(ok),)]  # larger rank = less loss here
        assert value == pytest.approx(by_rank[max(ok)])
        assert validate(inst_t, chosen) == []


def test_prefer_accuracy_refuses_an_invalid_plan(cellular):
    plan = api.solve(cellular, "route-aware").solution
    with pytest.raises(ValueError, match="valid plan"):
        prefer_accuracy(plan, cellular, lambda p: None)


# ----- the instance field ------------------------------------------------------------------------

def test_tradeoff_is_read_and_checked(tmp_path):
    text = CELLULAR.read_text().replace("../../data/", str(REPO / "instances" / "data") + "/")
    good = tmp_path / "good.toml"
    good.write_text(text)
    assert api.load_instance(good).constraints.accuracy_tradeoff == 0.05
    assert api.load_instance(REPO / "instances" / "default.toml").constraints.accuracy_tradeoff == 0.0
    for bad, msg in (("-0.1", ">= 0"), ("0.9", "0.5"), ('"lots"', "must be a number")):
        path = tmp_path / "bad.toml"
        path.write_text(text.replace("accuracy_tradeoff = 0.05", f"accuracy_tradeoff = {bad}"))
        with pytest.raises(InputError) as err:
            api.load_instance(path)
        assert "constraints.accuracy_tradeoff" in str(err.value) and msg in str(err.value)


# ----- route-aware and the re-planner ------------------------------------------------------------

def test_route_aware_prefers_larger_ranks_on_a_faster_link(cellular):
    assert ranks(api.solve(with_tradeoff(cellular, 0.0), "route-aware").solution) == [(256,)]
    assert ranks(api.solve(cellular, "route-aware").solution) == [(512,)]
    fast = api.solve(at_mbps(cellular, 25.0), "route-aware")
    assert ranks(fast.solution) == [(1024,)]
    assert validate(at_mbps(cellular, 25.0), fast.solution) == []


def test_replanned_ranks_follow_the_bandwidth_down_and_up(cellular):
    current = api.solve(cellular, "route-aware").solution
    seen = []
    for mbps in (25.0, 5.0, 25.0):
        inst = at_mbps(cellular, mbps)
        r = replan(current, inst, max_moves=8)
        assert r.status.value == "feasible" and validate(inst, r.plan) == []
        assert r.migration_bytes <= inst.constraints.migration_budget_bytes
        # Only codec matrices move (hidden x rank each side of the cut).
        assert {s.what for s in r.steps} <= {"codec-encoder", "codec-decoder"}
        assert all("accuracy_loss" in c for c in r.candidates)
        seen.append(ranks(r.plan)[0][0])
        current = r.plan
    assert seen[0] == 1024 and seen[1] < 1024 and seen[2] == 1024


def test_without_a_tradeoff_the_replanner_keeps_the_smallest_rank(cellular):
    inst = with_tradeoff(cellular, 0.0)
    current = api.solve(inst, "route-aware").solution
    fast = at_mbps(inst, 25.0)
    r = replan(current, fast, max_moves=8)
    assert r.plan is current and r.reason.startswith("no change needed")
