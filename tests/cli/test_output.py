"""Progress on stderr: work past ``MOEPLAN_PROGRESS_AFTER_S`` (default 3 s) says so there, and
``--json``'s stdout stays one JSON object."""

from __future__ import annotations

import json
import time

from planner.cli.main import main
from planner.cli.output import progress_while
from tests.helpers import REPO


def test_a_long_block_reports_on_stderr_and_a_short_one_does_not(monkeypatch, capsys):
    monkeypatch.setenv("MOEPLAN_PROGRESS_AFTER_S", "0.05")
    with progress_while("thinking"):
        time.sleep(0.3)
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("thinking ... ")
    monkeypatch.setenv("MOEPLAN_PROGRESS_AFTER_S", "5")
    with progress_while("quick"):
        pass
    assert capsys.readouterr() == ("", "")


def test_a_long_solve_prints_progress_on_stderr_only(monkeypatch, capsys):
    monkeypatch.setenv("MOEPLAN_PROGRESS_AFTER_S", "0.05")
    code = main(["solve", str(REPO / "instances" / "deepseek-v3-edge-cloud-40.toml"), "--json"])
    out, err = capsys.readouterr()
    assert code == 0
    assert json.loads(out)["status"] == "feasible"
    assert "solving deepseek-v3-edge-cloud-40 (40 devices) with route-aware ... " in err
