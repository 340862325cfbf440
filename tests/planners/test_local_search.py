"""Large-neighbourhood search (solver ``local-search``): valid, never worse than its start, reproducible."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from planner import api
from planner.cost.validator import validate
from planner.domain.plan import ExpertPlacement, Pipeline, Plan, Stage
from planner.planners import local_search as lns
from tests.helpers import FLEET, REPO, build


@pytest.fixture(scope="module")
def fleet():
    return build(FLEET)


def test_local_search_is_registered():
    assert "local-search" in api.available_solvers()


@pytest.mark.parametrize("objective", ["throughput", "latency", "energy"])
@pytest.mark.parametrize("start", ["route-aware", "single-cut", "cloud-only", "proportional"])
def test_never_worse_than_its_start_and_valid(fleet, start, objective):
    inst = build(FLEET, objective=objective)
    first = api.solve(inst, start)
    assert first.solution is not None, first.message
    res = api.solve(inst, "local-search", initial_solution=first.solution, max_moves=60, seed=3)
    assert res.status.value == "feasible", res.message
    assert validate(inst, res.solution) == []
    if objective == "throughput":
        assert res.objective >= first.objective * (1 - 1e-12)
    else:
        assert res.objective <= first.objective * (1 + 1e-12)
    assert res.extra["moves_tried"] == 60


def test_improves_a_poor_start(fleet):
    poor = api.solve(fleet, "proportional")
    res = api.solve(fleet, "local-search", initial_solution=poor.solution, max_moves=150)
    assert res.objective > 2 * poor.objective


def test_default_start_is_the_route_aware_plan(fleet):
    ra = api.solve(fleet, "route-aware")
    res = api.solve(fleet, "local-search", max_moves=40)
    assert res.status.value == "feasible"
    assert res.objective >= ra.objective * (1 - 1e-12)
    assert res.solution.solver == "local-search"


def test_same_seed_and_max_moves_give_the_same_plan(fleet):
    start = api.solve(fleet, "single-cut").solution
    a = lns.improve(fleet, start, max_moves=80, seed=7)
    b = lns.improve(fleet, start, max_moves=80, seed=7)
    assert a.plan == b.plan and a.objective == b.objective
    assert (a.moves_tried, a.moves_accepted, a.evaluations) == (b.moves_tried, b.moves_accepted, b.evaluations)
    assert a.stop_reason == "max_moves"


def test_reproducible_across_processes():
    """Nothing iterates over a set of names: another hash seed gives the same plan."""
    code = ("import json, sys; sys.path.insert(0, '.')\n"
            "from tests.helpers import FLEET, build\n"
            "from planner import api\nfrom planner.planners import local_search\n"
            "inst = build(FLEET)\nstart = api.solve(inst, 'single-cut').solution\n"
            "print(json.dumps(local_search.improve(inst, start, max_moves=60, seed=11).plan.to_dict()['pipelines']))\n")
    outs = []
    for hash_seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed, PYTHONPATH=str(REPO))
        proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode == 0, proc.stderr
        outs.append(json.loads(proc.stdout))
    assert outs[0] == outs[1]


def test_no_improvement_returns_the_start_itself(fleet):
    start = api.solve(fleet, "route-aware").solution
    out = lns.improve(fleet, start, max_moves=0)
    assert out.plan is start and out.moves_tried == 0


def test_time_budget_stops_the_search(fleet):
    start = api.solve(fleet, "route-aware").solution
    out = lns.improve(fleet, start, time_budget_s=0.05)
    assert out.stop_reason == "time budget" and out.moves_tried > 0


def test_invalid_start_is_an_error_not_a_crash(fleet):
    bad = Plan((Pipeline((Stage("phone", 0, 4),)),))  # the whole model does not fit the phone
    res = api.solve(fleet, "local-search", initial_solution=bad, max_moves=5)
    assert res.status.value == "error"
    assert "memory" in res.message and "phone" in res.message
    with pytest.raises(ValueError, match="not valid"):
        lns.improve(fleet, bad, max_moves=5)


def test_multi_pipeline_plans_with_placement_stay_valid(fleet):
    """Start from two pipelines (one with an expert placed away): every move keeps the plan valid."""
    inst = build(FLEET, devices=FLEET["devices"] + [
        {"name": "gpu3", "tier": "cloud", "memory_gb": 0.05, "memory_bandwidth_gb_per_s": 1500, "power_w": 300,
         "peak_tflops": {"fp16": 200}}],
        links=FLEET["links"] + [{"a": "phone", "b": "gpu3", "bandwidth_mbps": 50, "rtt_ms": 10}])
    start = Plan((
        Pipeline((Stage("gpu", 0, 4),), (), 2, 1, 0.5, (ExpertPlacement(1, 0, ("gpu2",), (1.0,)),)),
        Pipeline((Stage("gpu3", 0, 4),), (), 2, 1, 0.5),
    ))
    assert validate(inst, start) == []
    out = lns.improve(inst, start, max_moves=120, seed=1)
    assert validate(inst, out.plan) == []
    assert out.objective >= out.initial_objective


def test_no_move_starts_when_a_mean_evaluation_would_overrun_the_budget(fleet):
    start = api.solve(fleet, "proportional").solution
    scorer = lns.Scorer(fleet, lns.CostModel(fleet))
    scorer.score(start)
    assert scorer.evaluations == 1 and scorer.mean_evaluation_s > 0
    scorer.evaluation_s = 10.0  # as if an evaluation took 10 s
    out = lns.improve(fleet, start, time_budget_s=1.0, scorer=scorer)
    assert out.moves_tried == 0 and out.stop_reason == "time budget" and out.plan is start
    # Without that history the same budget runs moves.
    assert lns.improve(fleet, start, time_budget_s=0.05, seed=0).moves_tried > 0


def test_the_weighted_picks_are_numpys_draw_for_draw():
    """neighbourhood.weighted_index / weighted_sample give numpy's Generator.choice results and leave
    the generator where it leaves it (so local-search's plans do not depend on which is used)."""
    import numpy as np

    from planner.planners.neighbourhood import weighted_index, weighted_sample

    for seed in range(400):
        setup = np.random.default_rng(seed)
        n = int(setup.integers(1, 60))
        w = setup.random(n) ** 3 + (0.0 if seed % 5 else 1e-12)
        if seed % 7 == 0 and n > 1:
            w[setup.integers(0, n, size=n // 2)] = 0.0
        if not w.any():
            continue
        p = w / w.sum()
        a, b = np.random.default_rng(seed + 1), np.random.default_rng(seed + 1)
        assert weighted_index(a, p) == int(b.choice(n, p=p))
        k = int(setup.integers(1, min(5, np.count_nonzero(p)) + 1))
        assert weighted_sample(a, k, p).tolist() == b.choice(n, size=k, replace=False, p=p).tolist()
        assert a.random() == b.random()
