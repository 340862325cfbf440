"""moeplan bench: every CSV and plot of a quick run, progress on stderr, the tables, bad --out and --suite (exit 2)."""

import contextlib
import csv
import io
import sys

import pytest

from planner.bench.common import instance_solvers
from planner.bench.paper import PAPER_SERIES
from planner.cli import main as cli
from solvers import registry

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
    for name in ("paper.csv", "scale.csv", "dynamic.csv", "paper_throughput.png", "paper_latency_cdf.png", "scale_solve_time.png",
                 "dynamic_slo.png"):
        assert (out / name).is_file(), name
    pngs = sorted(out.glob("*.png"))
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
        # every solver, and moeplan again with the group gate available
        assert {r["solver"] for r in mine} == {*instance_solvers(), "route-aware + group gate"}
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
        assert {r["run"] for r in mine if r["solver"] == "route-aware + group gate"} == {"load", "saturation"}
    assert "ratio" in stdout and "ratio w/ gate" in stdout and "latency reduction" in stdout


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
    assert cli.main(["bench", "--suite", "nope"]) == 2
    err = capsys.readouterr().err
    assert all(name in err for name in ("paper", "scale", "dynamic", "all"))


def test_blank_out_is_exit_2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, _, stderr = run_cli(["bench", "--suite", "scale", "--quick", "--out", " "])
    assert rc == 2 and "--out" in stderr and "must name a folder" in stderr
    assert list(tmp_path.iterdir()) == []


def test_out_naming_a_file_is_exit_2_saying_so(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    rc, _, stderr = run_cli(["bench", "--suite", "scale", "--quick", "--out", str(blocker)])
    assert rc == 2 and f"{blocker}: --out: is a file; --out names a folder" in stderr and "File exists" not in stderr


def test_unwritable_out_is_exit_2_naming_it(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    target = blocker / "out"
    rc, _, stderr = run_cli(["bench", "--suite", "scale", "--quick", "--out", str(target)])
    assert rc == 2
    assert str(target) in stderr
