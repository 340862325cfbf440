"""The command line: JSON contract, exit codes, atomic outputs."""

from __future__ import annotations

import json

import pytest
import tomli_w

from planner.cli.main import main
from planner.domain.plan import Plan
from tests.helpers import LINE, TINY


@pytest.fixture
def line_file(tmp_path):
    p = tmp_path / "line.toml"
    p.write_bytes(tomli_w.dumps(LINE).encode())
    return p


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_solve_json_contract(capsys, line_file, tmp_path):
    plan_path = tmp_path / "plan.json"
    code, out, err = run(capsys, "solve", line_file, "--solver", "cloud-only", "--json", "-o", plan_path)
    assert code == 0
    obj = json.loads(out)  # stdout holds exactly one JSON object
    for key in ("status", "solver", "objective", "bound", "gap", "solve_time_s", "plan", "metrics"):
        assert key in obj
    assert obj["status"] == "feasible" and obj["solver"] == "cloud-only"
    for key in ("throughput_tokens_per_s", "latency_ms", "memory_bytes", "bytes_per_token"):
        assert key in obj["metrics"]
    assert obj["metrics"]["throughput_tokens_per_s"] == pytest.approx(obj["objective"])
    assert Plan.load(plan_path).to_dict()["pipelines"] == obj["plan"]["pipelines"]


def test_validate_accepts_the_written_plan(capsys, line_file, tmp_path):
    plan_path = tmp_path / "plan.json"
    assert run(capsys, "solve", line_file, "-o", plan_path)[0] == 0
    code, out, _ = run(capsys, "validate", line_file, plan_path)
    assert code == 0 and "valid" in out


def test_validate_reports_a_broken_plan_with_exit_1(capsys, line_file, tmp_path):
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(json.dumps({"schema": "moeplan.plan/1", "pipelines": [
        {"stages": [{"device": "phone", "first_layer": 0, "end_layer": 4}]}]}))
    code, out, _ = run(capsys, "validate", line_file, plan_path, "--json")
    assert code == 1
    obj = json.loads(out)
    assert obj["plan_ok"] is False and obj["violations"][0]["kind"] == "memory"


def test_compare_prints_every_solver(capsys, line_file):
    code, out, _ = run(capsys, "compare", line_file)
    assert code == 0
    for name in ("cloud-only", "end-only", "single-cut", "proportional"):
        assert name in out
    code, out, _ = run(capsys, "compare", line_file, "--solvers", "end-only,cloud-only", "--json")
    assert [r["solver"] for r in json.loads(out)["results"]] == ["end-only", "cloud-only"]


def test_unknown_solver_is_bad_input(capsys, line_file):
    code, out, err = run(capsys, "solve", line_file, "--solver", "magic")
    assert code == 2 and out == "" and "unknown solver 'magic'" in err and "single-cut" in err


def test_infeasible_names_the_binding_resource(capsys, tmp_path):
    """Mixtral-8x7B (93.4 GB of bf16 weights) on the two 1 GB tiny devices."""
    data = dict(TINY, model={"catalog": "mixtral-8x7b"})
    p = tmp_path / "big.toml"
    p.write_bytes(tomli_w.dumps(data).encode())
    code, out, err = run(capsys, "solve", p, "--json", "-o", tmp_path / "plan.json")
    assert code == 1
    obj = json.loads(out)
    assert obj["status"] == "infeasible" and obj["plan"] is None
    assert "93.4 GB" in obj["message"] and "2.0 GB" in obj["message"]
    assert not (tmp_path / "plan.json").exists()


def test_output_into_a_missing_folder_is_bad_input(capsys, line_file, tmp_path):
    code, _, err = run(capsys, "solve", line_file, "-o", tmp_path / "no" / "plan.json")
    assert code == 2 and "does not exist" in err


def test_python_dash_m_entry_point(line_file):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "planner", "validate", str(line_file)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "instance OK" in proc.stdout
