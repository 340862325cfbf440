"""``moeplan run``: bad input exits 2 with a message before anything starts; a run's JSON; Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from planner.cli.main import main
from planner.runtime import inputs, launch
from planner.runtime.launch import RunOptions

from .conftest import INSTANCE, PLANS, alive, shipped_plan


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def nothing_starts(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a process was started")

    monkeypatch.setattr(launch, "_generation", refuse)


def test_a_plan_that_does_not_validate_exits_2_naming_the_plan(capsys, tmp_path, nothing_starts):
    plan = json.loads((PLANS / "phone-cloud.json").read_text())
    plan["pipelines"][0]["stages"][1]["device"] = "mars"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(plan))
    code, out, err = run(capsys, "run", INSTANCE, path)
    assert code == 2 and out == ""
    assert str(path) in err and "mars" in err and "does not validate" in err


def test_a_model_that_does_not_match_the_card_exits_2(capsys, tmp_path, nothing_starts):
    from planner.executor import tiny_model

    tiny_model("mixtral").save_pretrained(tmp_path / "tiny")  # hidden 64, the card says 128
    code, _, err = run(capsys, "run", INSTANCE, PLANS / "phone-cloud.json", "--model", tmp_path / "tiny")
    assert code == 2 and "model.hidden_size" in err and "128" in err and "64" in err


def test_more_processes_than_the_machine_hosts_exits_2(capsys, nothing_starts):
    code, _, err = run(capsys, "run", INSTANCE, PLANS / "phone-edge-cloud.json", "--max-processes", "2")
    assert code == 2 and "needs 3 processes" in err


@pytest.mark.parametrize("option, value, message", [
    ("--kill", "mars@1", "runs no process of the plan"),
    ("--kill", "edge", "NAME@SECONDS"),
    ("--drop-link", "phone,mars@1", "names no link"),
    ("--slowdown", "phone=0.5", "F >= 1"),
    ("--fault-timeout", "0", "positive number of seconds"),
])
def test_bad_options_exit_2_naming_the_option(capsys, nothing_starts, option, value, message):
    code, _, err = run(capsys, "run", INSTANCE, PLANS / "phone-edge-cloud.json", option, value)
    assert code == 2 and option in err and message in err


def test_a_run_prints_one_json_object_with_the_measured_and_the_predicted(capsys):
    code, out, _ = run(capsys, "run", INSTANCE, PLANS / "phone-cloud-codec32.json", "--requests", "3", "--json", "--compare",
                       "--run-timeout", "120")
    assert code == 0
    obj = json.loads(out)
    assert obj["requests"] == {"total": 3, "finished": 3, "failed": {}, "retried": 0}
    (only,) = obj["runs"]
    assert only["devices"] == ["phone", "cloud"] and only["fault"] is None
    assert obj["measured"]["requests"] == 3 and obj["measured"]["tokens_per_s"] > 0
    rows = {(r["device"], r["phase"]): r for r in only["fidelity"]["stages"]}
    assert set(rows) == {("phone", "prefill"), ("phone", "decode"), ("cloud", "prefill"), ("cloud", "decode")}
    assert all(r["measured_ms"] > 0 and r["predicted_ms"] > 0 for r in rows.values())
    assert {f["figure"] for f in only["fidelity"]["figures"]} >= {"TTFT ms, mean", "TPOT ms, mean", "tokens/s"}
    assert only["measured"]["links"]["directions"]["phone->cloud"]["bytes"] > 0


def test_ctrl_c_ends_every_process_and_reports_the_requests_interrupted(loopback, reference_model):
    plan = shipped_plan("phone-edge-cloud")
    requests = inputs.make_requests(loopback, 256, 512, num_requests=12, burst=True, seed=0)
    pids = []

    def log(msg):
        if msg.startswith("processes ready"):
            pids.extend(int(part.split("pid ")[1].rstrip(")")) for part in msg.split(", "))
            for pid in pids:  # a terminal's Ctrl-C reaches every process of the group, which ignore it ...
                os.kill(pid, signal.SIGINT)
            time.sleep(0.2)
            assert all(alive(pid) for pid in pids)
            raise KeyboardInterrupt  # ... and the launcher's main thread as KeyboardInterrupt: it ends them

    options = RunOptions(timeout_s=5.0, run_timeout_s=120.0, model_module=type(reference_model).__module__)
    result = launch.run(loopback, plan, requests, options, {0: {}}, log=log)
    assert result.interrupted and len(pids) == 3
    assert set(result.failed) == {r.rid for r in requests} and set(result.failed.values()) == {"interrupted (Ctrl-C)"}
    assert not [pid for pid in pids if alive(pid)]
