"""Baseline planners (cloud-only, end-only, single-cut, proportional, and edgeshard and eplb through
the CLI): valid plans, their own search spaces, honest infeasibility."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from planner import api
from planner.cli.main import main
from planner.cost.costmodel import CostModel
from planner.cost.validator import evaluate_checked
from planner.planners.baselines import BASELINES
from planner.spaces.batching import batch_grid, split_by_weights
from solvers.registry import get
from solvers.result import Status
from tests.helpers import LINE, REPO, build


@given(st.integers(1, 200), st.lists(st.floats(0.01, 1000), min_size=1, max_size=12))
def test_split_by_weights_covers_every_layer_in_order(n, weights):
    ranges = split_by_weights(n, weights)
    assert len(ranges) == len(weights)
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    assert all(a <= b for a, b in ranges)
    assert all(r[1] == s[0] for r, s in zip(ranges, ranges[1:]))


def test_batch_grid_respects_the_limit():
    for b, m in batch_grid(12, 3):
        assert 1 <= b * m <= 12


@pytest.mark.parametrize("solver", BASELINES)
def test_each_baseline_plan_is_valid(line, solver):
    res = api.solve(line, solver)
    if res.solution is None:
        assert res.status.value == "infeasible" and res.message
    else:
        assert api.validate(line, res.solution) == []
        assert res.objective == pytest.approx(res.solution.metrics["throughput_tokens_per_s"])


def test_end_only_is_infeasible_on_a_small_phone(line):
    res = api.solve(line, "end-only")
    assert res.status.value == "infeasible"
    assert "'phone'" in res.message and "GB" in res.message


def test_single_cut_is_never_worse_than_end_or_cloud_only(line):
    """Single-cut searches every split k in 0..L with each partner: it contains cloud-only on one
    device (k = 0) and end-only (k = L), so it is at least as good as both when they fit."""
    cut = api.solve(line, "single-cut").objective
    cloud = api.solve(line, "cloud-only").objective
    assert cut >= cloud - 1e-9


def test_latency_objective_is_minimised(line):
    inst = build(LINE, objective="latency")
    res = api.solve(inst, "single-cut")
    assert res.sense == "min"
    assert res.objective == pytest.approx(res.solution.metrics["latency_ms"])


INSTANCES = sorted((REPO / "instances").glob("*.toml"))


SOLVERS = ("edgeshard", "eplb")


@pytest.mark.parametrize("path", INSTANCES, ids=[p.stem for p in INSTANCES])
@pytest.mark.parametrize("solver", SOLVERS)
def test_valid_plan_or_explained_infeasibility_and_the_same_plan_twice(solver, path):
    inst = api.load_instance(path)
    cm = CostModel(inst)
    func = get(solver, problem="instance").func
    first = func(inst, cost_model=cm)
    if first.solution is None:
        assert first.status is Status.INFEASIBLE
        assert first.message.startswith("infeasible: ") and "GB" in first.message
    else:
        assert first.status is Status.FEASIBLE
        ev, broken = evaluate_checked(inst, first.solution, cm)
        assert broken == []
        assert first.objective == pytest.approx(ev.objective(inst.objective))
        pipe = first.solution.pipelines[0]
        assert len(first.solution.pipelines) == 1 and pipe.codec_ranks == ()
        if solver == "edgeshard":
            assert pipe.stages[0].device == inst.workload.origin and pipe.expert_placement == ()
    second = func(inst, cost_model=cm)
    assert (second.status, second.message, second.solution) == (first.status, first.message, first.solution)


def test_compare_lists_both(capsys):
    code = main(["compare", str(REPO / "instances" / "default.toml"), "--solvers", "edgeshard,eplb", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert [r["solver"] for r in out["results"]] == ["edgeshard", "eplb"]
