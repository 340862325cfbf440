"""`moeplan bench` in quick mode: files, tables, errors, its inputs and scenario files. No timing asserted."""

import contextlib
import csv
import io
import sys
from pathlib import Path

import numpy as np
import pytest

from planner import api
from planner.bench import inputs as bench_inputs
from planner.bench.common import instance_solvers
from planner.bench.dynamic import DYNAMIC
from planner.bench.paper import PAPER_DIR, PAPER_SERIES
from planner.cli import main as cli
from solvers import registry

ROOT = Path(__file__).resolve().parents[1]
BENCH_FILES = sorted((ROOT / "instances" / "bench").rglob("*.toml"))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(argv)
    return rc, out.getvalue(), err.getvalue()


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def quick_all(tmp_path_factory):
    pytest.importorskip("matplotlib")
    out = tmp_path_factory.mktemp("bench")
    rc, stdout, stderr = run_cli(["bench", "--suite", "all", "--quick", "--out", str(out)])
    return rc, stdout, stderr, out


def test_quick_run_writes_every_csv_and_plot(quick_all):
    rc, stdout, stderr, out = quick_all
    assert rc == 0, stderr
    for name in ("paper.csv", "scale.csv", "dynamic.csv", "paper_throughput.png", "scale_solve_time.png", "dynamic_slo.png"):
        assert (out / name).is_file(), name
    pngs = sorted(out.glob("*.png"))
    assert any(p.name.startswith("paper_latency_cdf_") for p in pngs)
    assert any(p.name.startswith("paper_timeline_") for p in pngs)
    assert any(p.name.startswith("dynamic_bandwidth_") for p in pngs)
    for p in pngs:
        assert p.read_bytes()[:8] == PNG_MAGIC, p.name


def test_progress_goes_to_stderr_one_line_per_scenario_and_solver(quick_all):
    _, stdout, stderr, _ = quick_all
    for solver in instance_solvers():
        assert f": {solver} " in stderr, solver
    assert "[paper" in stderr and "[scale" in stderr and "[dynamic" in stderr
    assert "[paper" not in stdout


def test_paper_csv_has_every_solver_and_both_runs(quick_all):
    _, stdout, _, out = quick_all
    rows = read_csv(out / "paper.csv")
    baselines = registry.available(problem="instance", kind="baseline")
    assert set(instance_solvers()) == {"route-aware", *baselines}
    for scenario in {r["scenario"] for r in rows}:
        mine = [r for r in rows if r["scenario"] == scenario]
        assert {r["solver"] for r in mine} == set(instance_solvers())
        for r in mine:
            if r["run"] == "none":  # no plan: the reason is recorded, nothing simulated
                assert r["status"] in ("infeasible", "time_limit", "error") and r["message"]
            else:
                assert r["run"] in ("load", "saturation")
                assert float(r["sim_throughput_tokens_per_s"]) > 0
                assert float(r["pred_throughput_tokens_per_s"]) > 0
                assert 0 <= float(r["sim_slo_attainment"]) <= 1
                assert float(r["sim_latency_p50_ms"]) <= float(r["sim_latency_p95_ms"]) <= float(r["sim_latency_p99_ms"])
        assert {r["run"] for r in mine if r["solver"] == "route-aware"} == {"load", "saturation"}
    assert "ratio" in stdout and "latency reduction" in stdout


def test_cellular_scenarios_name_their_series(quick_all):
    _, _, _, out = quick_all
    for r in read_csv(out / "paper.csv"):
        if r["scenario"] in PAPER_SERIES:
            assert PAPER_SERIES[r["scenario"]] in r["network"]
            assert "mahimahi" in r["network"] or "synthetic series" in r["network"]


def test_scale_and_dynamic_csvs(quick_all):
    _, stdout, _, out = quick_all
    scale = read_csv(out / "scale.csv")
    assert {"route-aware", "dp", "local-search"} <= {r["solver"] for r in scale}
    assert "milp" not in {r["solver"] for r in scale}  # quick mode
    assert all(int(r["size"]) == int(r["layers"]) * max(1, int(r["experts"])) * int(r["devices"]) for r in scale)
    dyn = read_csv(out / "dynamic.csv")
    for scenario in {r["scenario"] for r in dyn}:
        modes = {r["mode"] for r in dyn if r["scenario"] == scenario}
        assert {"static", "replan"} <= modes
    cellular = [r for r in dyn if r["scenario"] == "cellular series"]
    assert {r["mode"] for r in cellular} == {"static, nominal bandwidth", "static", "replan"}
    assert "SLO static" in stdout and "SLO re-plan" in stdout and "codec loss re-plan" in stdout
    static = next(r for r in cellular if r["mode"] == "static")
    assert float(static["sim_accuracy_loss_mean"]) == pytest.approx(0.006)  # rank 512 throughout


def test_without_matplotlib_the_csv_and_table_are_still_written(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    rc, stdout, stderr = run_cli(["bench", "--suite", "scale", "--quick", "--out", str(tmp_path)])
    assert rc == 0, stderr
    assert (tmp_path / "scale.csv").is_file()
    assert not list(tmp_path.glob("*.png"))
    assert "pip install 'moeplan[bench]'" in stdout
    assert "tokens/s (wall time) per solver" in stdout


def test_unknown_suite_is_exit_2_listing_the_suites(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "--suite", "nope"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert all(name in err for name in ("paper", "scale", "dynamic", "all"))


def test_blank_out_is_exit_2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, _, stderr = run_cli(["bench", "--suite", "scale", "--quick", "--out", " "])
    assert rc == 2 and "--out" in stderr and "must name a folder" in stderr
    assert list(tmp_path.iterdir()) == []


def test_unwritable_out_is_exit_2_naming_it(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    target = blocker / "out"
    rc, _, stderr = run_cli(["bench", "--suite", "scale", "--quick", "--out", str(target)])
    assert rc == 2
    assert str(target) in stderr


# ----- inputs ------------------------------------------------------------------------------------

def test_synthetic_series_matches_the_published_summary_and_its_seed(tmp_path):
    missing = tmp_path / "no-such-file.csv"
    a = bench_inputs.cellular_series("TMobile-LTE-short.up", seed=3, shared_file=missing)
    b = bench_inputs.cellular_series("TMobile-LTE-short.up", seed=3, shared_file=missing)
    c = bench_inputs.cellular_series("TMobile-LTE-short.up", seed=4, shared_file=missing)
    summary = bench_inputs.CELLULAR["TMobile-LTE-short.up"]
    assert a.synthetic and a.source == "synthetic series (seed 3)"
    assert np.array_equal(a.mbps, b.mbps) and not np.array_equal(a.mbps, c.mbps)
    assert a.mbps.size == summary.duration_s - 1
    assert a.mbps.mean() == pytest.approx(summary.mean_mbps, rel=1e-9)
    assert (a.mbps > 0).all()
    p10, p90 = np.percentile(a.mbps, [10, 90])
    assert summary.p10_mbps / 3 < p10 < summary.mean_mbps < p90 < 3 * summary.p90_mbps
    assert np.allclose(a.bytes_per_s, a.mbps * 1e6 / 8)


def test_unknown_cellular_trace_names_the_known_ones():
    with pytest.raises(ValueError, match="TMobile-LTE-short.up"):
        bench_inputs.cellular_series("nope")


@pytest.mark.skipif(not bench_inputs.SHARED_SERIES.is_file(), reason="../shared/data is not beside this repository")
def test_measured_series_is_read_from_shared_data_without_its_partial_last_second():
    s = bench_inputs.cellular_series("TMobile-LTE-short.up")
    summary = bench_inputs.CELLULAR["TMobile-LTE-short.up"]
    assert not s.synthetic and "mahimahi" in s.source
    assert s.mbps.size == summary.duration_s - 1
    assert s.mbps.mean() == pytest.approx(summary.mean_mbps, rel=0.02)


@pytest.mark.parametrize("text, where", [
    ("trace,second\nx,1\n", "header"),
    ("trace,second,mbps\nTMobile-LTE-short.up,1,fast\n", "line 2"),
    ("trace,second,mbps\nTMobile-LTE-short.up,1,-3\n", "line 2"),
])
def test_a_malformed_shared_series_is_an_input_error_naming_file_and_line(tmp_path, text, where):
    from planner.domain.errors import InputError

    bad = tmp_path / "series.csv"
    bad.write_text(text)
    with pytest.raises(InputError) as err:
        bench_inputs.cellular_series("TMobile-LTE-short.up", shared_file=bad)
    assert str(bad) in str(err.value) and where in str(err.value)
    # A file that does not hold the trace falls back to the synthetic series.
    other = tmp_path / "other.csv"
    other.write_text("trace,second,mbps\nVerizon-LTE-short.up,1,3.0\n")
    assert bench_inputs.cellular_series("TMobile-LTE-short.up", shared_file=other).synthetic


def test_azure_requests_are_rescaled_to_rate_and_token_means():
    t = bench_inputs.azure_requests(200, 0.5, 512, 128, seed=1)
    assert len(t.arrival_s) == 200 and t.arrival_s[0] == 0 and np.all(np.diff(t.arrival_s) >= 0)
    assert t.rate_per_s == pytest.approx(0.5)
    assert t.prompt_tokens.mean() == pytest.approx(512, rel=0.01)
    assert t.output_tokens.mean() == pytest.approx(128, rel=0.01)
    assert t.prompt_tokens.min() >= 1 and t.output_tokens.min() >= 1
    same = bench_inputs.azure_requests(200, 0.5, 512, 128, seed=1)
    assert np.array_equal(t.arrival_s, same.arrival_s)


# ----- scenario files ----------------------------------------------------------------------------

@pytest.mark.parametrize("path", BENCH_FILES, ids=[p.stem for p in BENCH_FILES])
def test_bench_instances_load_with_slos_and_codecs(path):
    inst = api.load_instance(path)
    c = inst.constraints
    assert c.latency_slo_s or c.ttft_slo_s or c.tpot_slo_s
    assert c.codec.ranks and len(c.codec.ranks) == len(c.codec.accuracy_loss)


def test_paper_matrix_covers_models_end_devices_and_networks():
    insts = [api.load_instance(p) for p in sorted(PAPER_DIR.glob("*.toml"))]
    assert 10 <= len(insts) <= 14
    models = [i.model.name for i in insts]
    for m in ("mixtral-8x7b", "qwen3-30b-a3b", "deepseek-v2-lite", "olmoe-1b-7b"):
        assert models.count(m) >= 2, m
    ends = [i.device(i.workload.origin).kind for i in insts]
    for kinds in (("jetson",), ("snapdragon", "a17"), ("laptop", "m2")):
        assert sum(any(k in e for k in kinds) for e in ends) >= 2, kinds
    # The model does not fit the end device alone (quantised where the end device runs it so).
    for i in insts:
        assert i.model.total_params * i.model.dtype_bytes > i.device(i.workload.origin).memory_bytes, i.name
    assert sum(i.name in PAPER_SERIES for i in insts) >= 2


def test_dynamic_scenarios_point_at_existing_files():
    for sc in DYNAMIC:
        assert (ROOT / "instances" / "bench" / sc.file).is_file(), sc.file


def test_served_accuracy_loss_follows_the_plan_that_served_each_request():
    from dataclasses import replace

    from planner.bench.common import served_accuracy_loss
    from planner.sim import simulate

    inst = api.load_instance(Path(__file__).resolve().parents[1] / "instances" / "bench" / "dynamic"
                             / "mixtral-orin-h100-cellular-slo.toml")
    plan = api.solve(inst, "route-aware").solution
    for rank, loss in zip(inst.constraints.codec.ranks, inst.constraints.codec.accuracy_loss):
        ranked = replace(plan, pipelines=(replace(plan.pipelines[0], codec_ranks=(rank,)),))
        res = simulate(inst, ranked, num_requests=5, seed=0)
        assert served_accuracy_loss(res, inst) == pytest.approx(loss)


def test_bandwidth_figure_shows_the_rank_in_use_and_the_first_periods_of_a_series():
    from dataclasses import replace

    from planner.bench.dynamic import CELLULAR_PLOT_CYCLES, bandwidth_figure

    sc = next(d for d in DYNAMIC if d.change == "cellular")
    inst = api.load_instance(Path(__file__).resolve().parents[1] / "instances" / "bench" / sc.file)
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


def test_paper_suite_simulates_each_distinct_plan_once_per_run(monkeypatch):
    from planner.bench import paper
    from planner.bench.common import Settings

    calls = []
    real = paper.simulate

    def counting(instance, plan, trace, **kw):
        calls.append((instance.name, plan.pipelines, trace.rate_per_s, kw.get("timeline", False)))
        return real(instance, plan, trace, **kw)

    monkeypatch.setattr(paper, "simulate", counting)
    out = paper.run_paper(Settings(quick=True), lambda _: None)
    runs = [c for c in calls if not c[3]]
    assert len(runs) == len(set(runs))  # no (scenario, plan, run) simulated twice
    simulated = [r for r in out.rows if r["run"] in ("load", "saturation")]
    assert len(simulated) > len(runs)  # some solvers share a plan, and each still has its rows
