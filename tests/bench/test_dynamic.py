"""The dynamic suite: its scenarios exist; the bandwidth figure shows the codec rank in use."""

import numpy as np

from planner import api
from planner.bench import inputs as bench_inputs
from planner.bench.dynamic import DYNAMIC
from tests.helpers import REPO


def test_dynamic_scenarios_point_at_existing_files():
    for sc in DYNAMIC:
        assert (REPO / "instances" / "bench" / sc.file).is_file(), sc.file


def test_bandwidth_figure_shows_the_rank_in_use_and_the_first_periods_of_a_series():
    from dataclasses import replace

    from planner.bench.dynamic import CELLULAR_PLOT_CYCLES, bandwidth_figure

    sc = next(d for d in DYNAMIC if d.change == "cellular")
    inst = api.load_instance(REPO / "instances" / "bench" / sc.file)
    plan = api.solve(inst, "route-aware").solution
    plans = [replace(plan, pipelines=(replace(plan.pipelines[0], codec_ranks=(r,)),)) for r in (512, 256, 1024)]
    series = bench_inputs.BandwidthSeries("TMobile-LTE-short.up", np.full(100, 10.0), "synthetic series (seed 0)")
    log = [{"time_s": 4.0, "outcome": "applied", "effective_s": 5.0}, {"time_s": 6.0, "outcome": "kept"},
           {"time_s": 8.9, "outcome": "applied", "effective_s": 9.0},
           {"time_s": 250.0, "outcome": "applied", "effective_s": 250.1}]
    plans.append(plans[0])
    fig = bandwidth_figure(sc, inst, series, [], log, 1000.0, plans)
    assert fig["mbps"].size == CELLULAR_PLOT_CYCLES * 100 and "first 200 s of 1000 s" in fig["title"]
    assert fig["rank_steps"] == [(0.0, 512), (5.0, 256), (9.0, 1024)]  # the step at 250 s is past the window
    assert fig["applied_s"] == [4.0, 8.9] and fig["kept_s"] == [6.0]
    # Without codec ranks there are no rank steps.
    bare = [replace(p, pipelines=(replace(p.pipelines[0], codec_ranks=(None,)),)) for p in plans]
    assert bandwidth_figure(sc, inst, series, [], log, 1000.0, bare)["rank_steps"] == []
