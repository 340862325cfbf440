"""The command line: JSON contract, exit codes, atomic outputs."""

from __future__ import annotations

import copy
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


# ----- no traceback, ever: bad input named by file and field, one JSON error object --------------

def _cfg(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "mixtral", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                                "num_key_value_heads": 2, "vocab_size": 100, "num_local_experts": 4,
                                "num_experts_per_tok": 2, "intermediate_size": 32}))
    return path


@pytest.mark.parametrize("where,message", [
    ("nodir/m.toml", "folder '{tmp}/nodir' does not exist"),
    ("afile/m.toml", "'{tmp}/afile' is a file, not a folder"),
    ("adir", "it is a folder; give the name of a file"),
])
def test_import_hf_output_that_cannot_be_written(capsys, tmp_path, where, message):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    config = _cfg(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    code, out, err = run(capsys, "import-hf", config, "-o", tmp_path / where)
    assert code == 2 and out == "" and "Traceback" not in err
    assert f"{tmp_path / where}: --output: cannot write the model card: {message.format(tmp=tmp_path)}" in err
    assert sorted(tmp_path.rglob("*")) == before


def test_solve_checks_the_export_path_before_solving(capsys, line_file, monkeypatch):
    from planner import api

    monkeypatch.setattr(api, "solve", lambda *a, **k: pytest.fail("solved although the model cannot be written"))
    code, _, err = run(capsys, "solve", line_file, "--solver", "milp", "--export", "nodir/m.lp")
    assert code == 2 and "nodir/m.lp: --export: cannot write the model: folder 'nodir' does not exist" in err
    code, _, err = run(capsys, "solve", line_file, "-o", "nodir/plan.json")
    assert code == 2 and "nodir/plan.json: --output: cannot write the plan" in err


SEED_MESSAGE = "--seed: must be an integer from 0 to 2,147,483,647, got -5"


@pytest.mark.parametrize("argv", [
    ["solve", "{line}", "--solver", "local-search"], ["solve", "{line}", "--solver", "dp"], ["compare", "{line}"],
    ["simulate", "{line}", "{plan}"], ["place", "{loads}", "--devices", "2"], ["bench", "--suite", "scale", "--quick"],
])
def test_seed_is_checked_once_with_one_message_for_every_command(capsys, line_file, tmp_path, argv):
    loads = tmp_path / "loads.json"
    loads.write_text("[[1, 2, 3, 4]]")
    plan = tmp_path / "plan.json"
    plan.write_text("{}")
    argv = [a.format(line=line_file, plan=plan, loads=loads) for a in argv]
    code, out, err = run(capsys, *argv, "--seed", "-5", "--json")
    assert code == 2 and SEED_MESSAGE in err
    assert json.loads(out)["error"] | {"problems": None} == {"kind": "bad_input", "file": None, "field": "--seed",
                                                            "message": SEED_MESSAGE.removeprefix("--seed: "),
                                                            "problems": None}


def test_the_api_checks_the_seed_the_same_way(line_file):
    import planner

    with pytest.raises(ValueError, match="seed must be an integer from 0 to 2,147,483,647, got -5"):
        planner.solve(planner.load_instance(line_file), "local-search", seed=-5)


@pytest.mark.parametrize("solvers", [",,", "", " , "])
def test_compare_with_no_solver_named_is_bad_input(capsys, line_file, solvers):
    code, out, err = run(capsys, "compare", line_file, "--solvers", solvers)
    assert code == 2 and out == "" and "--solvers: names no solver" in err and "route-aware" in err


def _write_plan(tmp_path, **pipeline):
    plan = {"schema": "moeplan.plan/1", "pipelines": [{"stages": [{"device": "gpu", "first_layer": 0, "end_layer": 4}],
                                                       **pipeline}]}
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    return path


@pytest.mark.parametrize("pipeline,field,message", [
    ({"request_share": float("nan")}, "pipelines[0].request_share", "must be a number from 0 to 1, got nan"),
    ({"request_share": 1.5}, "pipelines[0].request_share", "must be a number from 0 to 1, got 1.5"),
    ({"request_shares": 1.0}, "pipelines[0].request_shares", "is not a field of a plan here"),
])
def test_a_plan_with_nan_or_an_unknown_key_is_bad_input(capsys, line_file, tmp_path, pipeline, field, message):
    path = _write_plan(tmp_path, **pipeline)
    for command in ("validate", "simulate"):
        code, out, err = run(capsys, command, line_file, path, "--json")
        assert code == 2 and f"{path}: {field}: {message}" in err
        assert json.loads(out)["error"]["field"] == field


def test_a_plan_may_carry_group_gates(capsys, line_file, tmp_path):
    """A group gate reads; it is valid once the instance prices it (its loss per coverage)."""
    path = _write_plan(tmp_path, group_gate=[{"device": "gpu", "layers": [1, 2]}])
    code, out, _ = run(capsys, "validate", line_file, path, "--json")
    assert code == 1 and json.loads(out)["plan_ok"] is False
    assert "a group gate needs its accuracy cost" in out
    priced = copy.deepcopy(LINE)
    priced["constraints"].update(group_gate_coverage=[0.25, 0.5], group_gate_loss=[0.004, 0.001])
    line_file.write_bytes(tomli_w.dumps(priced).encode())
    code, out, _ = run(capsys, "validate", line_file, path, "--json")
    assert code == 0 and json.loads(out)["plan_ok"] is True


BAD_INPUT_RUNS = [
    (["solve", "{missing}"], "{missing}", None),
    (["compare", "{line}", "--solvers", "magic"], None, None),
    (["validate", "{line}", "{missing}"], "{missing}", None),
    (["simulate", "{line}", "{missing}"], "{missing}", None),
    (["place", "{missing}", "--devices", "2"], "{missing}", None),
    (["import-hf", "{missing}", "-o", "{tmp}/card.toml"], "{missing}", None),
    (["solve", "{line}", "--time-limit", "x"], None, "--time-limit"),
    (["place", "{missing}"], None, None),  # --devices is required: argparse's own error
]


@pytest.mark.parametrize("argv,file,field", BAD_INPUT_RUNS)
def test_every_command_prints_one_json_error_object_for_bad_input(capsys, line_file, tmp_path, argv, file, field):
    subs = {"line": line_file, "missing": tmp_path / "missing.json", "tmp": tmp_path}
    code, out, err = run(capsys, *[a.format(**subs) for a in argv], "--json")
    assert code == 2 and "Traceback" not in err
    obj = json.loads(out)
    assert obj["status"] == "error" and set(obj["error"]) == {"kind", "file", "field", "message", "problems"}
    assert obj["error"]["kind"] == "bad_input" and obj["error"]["message"]
    if file is not None:
        assert obj["error"]["file"] == file.format(**subs)
    if field is not None:
        assert obj["error"]["field"] == field


def test_an_internal_error_is_reported_without_a_traceback(capsys, line_file, monkeypatch):
    from planner import api

    def broken(*args, **kwargs):
        raise ZeroDivisionError("float division by zero")

    monkeypatch.setattr(api, "solve", broken)
    code, out, err = run(capsys, "solve", line_file, "--json")
    assert code == 3 and "Traceback" not in err
    assert "internal error: ZeroDivisionError: float division by zero" in err and "MOEPLAN_DEBUG=1" in err
    assert json.loads(out)["error"]["kind"] == "internal"
    monkeypatch.setenv("MOEPLAN_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        main(["solve", str(line_file)])


def test_no_plan_errors_have_their_kind(capsys, line_file, monkeypatch):
    from planner import api
    from planner.domain.errors import MoeplanError

    def no_plan(*args, **kwargs):
        raise MoeplanError("nothing fits")

    monkeypatch.setattr(api, "solve", no_plan)
    code, out, _ = run(capsys, "solve", line_file, "--json")
    assert code == 1 and json.loads(out)["error"] | {"problems": []} == {
        "kind": "no_plan", "file": None, "field": None, "message": "nothing fits", "problems": []}


def test_validate_gives_status_and_stop_reason(capsys, line_file):
    code, out, _ = run(capsys, "validate", line_file, "--json")
    obj = json.loads(out)
    assert code == 0 and obj["status"] == "valid" and "stop_reason" in obj and "message" in obj


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.startswith("moeplan 0.")


def test_solve_help_lists_the_solvers(capsys):
    from planner import api

    with pytest.raises(SystemExit):
        main(["solve", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for name in api.available_solvers():
        assert name in out


def test_solve_says_why_the_solver_stopped(capsys, line_file):
    code, out, _ = run(capsys, "solve", line_file, "--solver", "dp")
    assert code == 0 and "solver dp: optimal in dp's space in " in out and "(stopped: " in out


def test_the_readme_commands_block_lists_every_option_of_every_command():
    """Each option --help shows appears in the README's Commands block, under its command."""
    import re

    from planner.cli.main import build_parser
    from tests.helpers import REPO

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = readme.split("## Commands", 1)[1].split("```", 2)[1]
    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, parser in sub.choices.items():
        lines = re.findall(rf"^moeplan {name} .*(?:\n {{10,}}.*)*", block, flags=re.M)
        assert lines, f"moeplan {name} is not in the README's Commands block"
        for action in parser._actions:
            option = max(action.option_strings, key=len, default=None)
            if option and option not in ("--help",):
                assert option in lines[0], f"README: moeplan {name} lacks {option}"
