"""planner.bench.quality: one row per instance, route-aware against every other solver and the bound."""

import csv

import pytest

from planner.bench import quality


def test_two_small_instances_give_a_row_each_with_the_bound_above_every_plan(tmp_path, capsys):
    assert quality.main(["--instances", "switch-nano-t4-wifi", "qwen3-phone-h100-5g", "--time-limit", "0.5",
                         "--out", str(tmp_path)]) == 0
    rows = list(csv.DictReader((tmp_path / "quality.csv").open()))
    assert [r["instance"] for r in rows] == ["switch-nano-t4-wifi", "qwen3-phone-h100-5g"]
    for r in rows:
        assert r["objective"] in ("energy", "latency")  # lower is better: the bound below every plan
        ra, best, bound = float(r["ra_objective"]), float(r["best_other_objective"]), float(r["bound"])
        assert bound <= min(ra, best) * (1 + 1e-9)
        assert 0 <= float(r["gap"]) < 1 and float(r["ratio"]) == pytest.approx(best / ra)
        assert r["best_other"] != "route-aware"
    solvers = {r["solver"] for r in csv.DictReader((tmp_path / "quality_solvers.csv").open())}
    assert {"route-aware", "dp", "local-search", "milp", "cpsat", "eplb", "edgeshard"} <= solvers
    md = (tmp_path / "quality.md").read_text()
    assert "| switch-nano-t4-wifi | energy (J/token) | 2 |" in md and "Median gap of route-aware to the bound" in md
    assert "Median gap" in capsys.readouterr().out


def test_gap_and_ratio_follow_the_objective():
    assert quality.gap_to_bound("throughput", 90.0, 100.0) == pytest.approx(0.1)
    assert quality.gap_to_bound("latency", 125.0, 100.0) == pytest.approx(0.2)
    assert quality.ratio_to("throughput", 99.0, 100.0) == pytest.approx(0.99)
    assert quality.ratio_to("energy", 2.0, 1.0) == pytest.approx(0.5)
    assert quality.gap_to_bound("throughput", None, 100.0) is None and quality.ratio_to("latency", 1.0, None) is None


def test_an_unknown_instance_is_refused_with_the_known_names(capsys):
    with pytest.raises(SystemExit) as exc:
        quality.main(["--instances", "no-such-instance"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "no-such-instance" in err and "deepseek-v3-mixed-cloud" in err and "olmoe-1b-7b-8dev" in err
