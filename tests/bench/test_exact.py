"""planner.bench.exact says, before it starts, what it needs and the most it can take."""

from planner.bench import exact


def test_the_worst_case_time_counts_every_solve_to_its_limit():
    instances = sum(1 for p in exact.INSTANCES.glob("*.toml") if "deepseek-v3" not in p.name)
    assert exact.worst_case_s("abcd", 60, 120) == 4 * 120 + 240 + 60 + instances * 120
    assert exact.worst_case_s("c", 10, 30) == 10


def test_it_prints_what_it_needs_and_how_long_it_may_take(capsys, monkeypatch):
    for part in ("part_a", "part_b", "part_c", "part_d"):
        monkeypatch.setattr(exact, part, lambda *args: None)
    exact.main(["--quick"])
    out = capsys.readouterr().out
    minutes = round(exact.worst_case_s("abcd", 10, 30) / 60)
    assert f"needs only this repository; runs at most {minutes:.0f} min" in out
