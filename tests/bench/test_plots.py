"""What the bench plots show: read back from the figures (texts, scales, panels), not from pixels."""

from __future__ import annotations

import numpy as np
import pytest

from planner.bench import plots

pytest.importorskip("matplotlib")


@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions draw, kept open instead of saved."""
    drawn = []
    monkeypatch.setattr(plots, "_save", lambda fig, path, rect=None: drawn.append(fig) or path)
    yield drawn
    plt = plots._pyplot()
    for fig in drawn:
        plt.close(fig)


def _texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def test_throughput_bars_are_linear_ratios_with_latency_on_its_own_panel(figures, tmp_path):
    solvers = ["route-aware", "cloud-only", "single-cut"]
    scenarios = [{"scenario": "a", "objective": "throughput", "sat": {"route-aware": 112.0, "cloud-only": 100.0}},
                 {"scenario": "b", "objective": "latency", "sat": {"route-aware": 5.0},
                  "latency_p50": {"route-aware": 850.0, "cloud-only": 1000.0, "single-cut": 1200.0}}]
    plots.throughput_bars(scenarios, solvers, tmp_path / "t.png")
    [fig] = figures
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert len(panels) == 2 and all(ax.get_yscale() == "linear" for ax in panels)
    assert "Latency-objective" in panels[1].get_title()
    texts = _texts(fig)
    assert "1.12x" in texts and "1.00x" in texts and "no plan" in texts  # single-cut has no plan in a
    assert "0.85x" in texts and "1.20x" in texts  # latency over the best (lowest) baseline's


def test_latency_cdfs_one_panel_per_scenario_with_the_slo(figures, tmp_path):
    lat = np.sort(np.array([100.0, 200.0, 300.0]))
    cdf = {"a": {"route-aware": lat, "cloud-only": lat}, "b": {"route-aware": lat * 2}, "c": {"route-aware": lat}}
    slos = {"a": {"latency": 250.0}, "b": {"ttft": 1000.0, "tpot": 100.0, "mean_output_tokens": 11}, "c": {}}
    plots.latency_cdfs(cdf, slos, ["route-aware", "cloud-only"], tmp_path / "c.png")
    [fig] = figures
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["a", "b", "c"]
    slo_x = [[line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() == "--"] for ax in panels]
    assert slo_x == [[250.0], [1000.0 + 10 * 100.0], []]
    texts = _texts(fig)
    assert "latency SLO 0.25 s" in texts and "no latency SLO" in texts and "same plan: route-aware=cloud-only" in texts


def test_slo_line_of_a_scenario():
    assert plots._slo_line_ms({"latency": 6000.0})[0] == 6000.0
    bound, text = plots._slo_line_ms({"ttft": 5000.0, "tpot": 250.0, "mean_output_tokens": 128})
    assert bound == 5000.0 + 127 * 250.0 and "mean request: 36.8 s" in text
    assert plots._slo_line_ms({}) == (None, "no latency SLO")


def test_the_timeline_names_its_plan(figures, tmp_path):
    timeline = [("phone", 0.0, 0.1, "prefill r0"), ("l4", 0.1, 0.2, "decode slot 0"), ("l4", 0.2, 0.3, "decode slot 1")]
    plots.pipeline_gantt("s", timeline, tmp_path / "g.png", plan="phone layers 0-6 -> codec rank 256 -> l4 layers 7-26")
    [fig] = figures
    assert "phone layers 0-6 -> codec rank 256 -> l4 layers 7-26" in fig.axes[0].get_title()
    legend = fig.axes[0].get_legend()
    assert legend.get_bbox_to_anchor().x0 > fig.axes[0].get_window_extent().x1 - 1  # beside the axes, not under


def test_scale_plot_marks_optimal_and_timed_out_and_shows_quality(figures, tmp_path):
    rows = [{"instance": "x", "size": 10, "solver": "route-aware", "status": "feasible", "objective_value": 90.0,
             "wall_time_s": 0.01, "stop_reason": ""},
            {"instance": "x", "size": 10, "solver": "milp", "status": "time_limit", "objective_value": 100.0,
             "wall_time_s": 5.0, "stop_reason": "time limit"},
            {"instance": "y", "size": 10, "solver": "route-aware", "status": "optimal", "objective_value": 50.0,
             "wall_time_s": 0.02, "stop_reason": ""},
            {"instance": "y", "size": 10, "solver": "milp", "status": "infeasible", "objective_value": None,
             "wall_time_s": 1.0, "stop_reason": ""}]
    plots.solve_time_scatter(rows, ["route-aware", "milp"], tmp_path / "s.png")
    [fig] = figures
    time_ax, quality_ax = [ax for ax in fig.axes if ax.get_title()]
    assert [t.get_text() for t in quality_ax.get_xticklabels()] == ["x\n10", "y\n10"]  # equal sizes, two slots
    offsets = np.concatenate([c.get_offsets() for c in quality_ax.collections])
    assert 0.9 in np.round(offsets[:, 1], 3) and 1.0 in np.round(offsets[:, 1], 3)  # quality relative to the best
    labels = [t.get_text() for t in time_ax.get_legend().get_texts()]
    assert "proven optimal in its space (black ring)" in labels and "stopped by its time limit (x)" in labels
