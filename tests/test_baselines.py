"""Baseline planners: valid plans, their own search spaces, honest infeasibility."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from planner import api
from planner.solve.baselines import BASELINES
from planner.spaces.batching import batch_grid, split_by_weights
from tests.conftest import LINE, build


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
