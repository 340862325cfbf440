"""Malformed instances: every file in tests/data/bad_instances/*.toml must be rejected cleanly.

For each file: ``load_instance`` raises :class:`InputError` (never anything else); every problem
names a real file (the instance or a data file it references) and a field (unless the whole file
is at fault); the problem that is wrong in that file is the one reported (``EXPECT``, written by
hand); ``moeplan validate`` and ``moeplan solve`` exit 2 without a traceback, print nothing on
stdout and write no plan.

Files named ``bug_*.toml`` are regressions: inputs that once crashed the loader (huge integers,
deep nesting, overflowing counts) or slipped through it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import pytest

from planner.cli.main import main
from planner.domain.errors import InputError, Problem
from planner.domain.instance import load_instance
from tests.helpers import REPO

DATA = REPO / "tests" / "data" / "bad_instances"
FILES = sorted(DATA.glob("*.toml"))


class Expect(NamedTuple):
    """The problem a file must produce: in ``file`` (None: the instance itself), at ``field``
    (exact; None: any field), with ``message`` a substring of the problem's message."""

    file: str | None
    field: str | None
    message: str


E = Expect
EXPECT: dict[str, Expect] = {
    # missing required fields
    "missing_model.toml": E(None, "model", "is required"),
    "missing_devices.toml": E(None, "devices", "is required"),
    "missing_workload.toml": E(None, "workload", "is required"),
    "missing_device_memory.toml": E(None, "devices[0].memory_gb", "is required"),
    "missing_device_name.toml": E(None, "devices[1].name", "is required"),
    "missing_link_rtt.toml": E(None, "links[0].rtt_ms", "is required"),
    "missing_link_bandwidth.toml": E(None, "links[0].bandwidth_mbps", "exactly one of bandwidth_mbps"),
    "missing_model_hidden_size.toml": E(None, "model.hidden_size", "is required"),
    # wrong types
    "type_memory_string.toml": E(None, "devices[0].memory_gb", "must be a number"),
    "type_model_number.toml": E(None, "model", "must be a table"),
    "type_bool_power.toml": E(None, "devices[1].power_w", "bool"),
    "type_peak_tflops_number.toml": E(None, "devices[0].peak_tflops", "must be a table"),
    "type_devices_single_table.toml": E(None, "devices", "array of tables"),
    "type_num_layers_fraction.toml": E(None, "model.num_layers", "must be an integer"),
    "type_links_number.toml": E(None, "links", "array of tables"),
    "type_popularity_string.toml": E(None, "workload.popularity", "must be a table"),
    # wrong units, unknown keys
    "unit_memory_mb.toml": E(None, "devices[0].memory_mb", "not a known field"),
    "unit_bandwidth_kbps.toml": E(None, "links[0].bandwidth_kbps", "not a known field"),
    "unit_latency_slo_s.toml": E(None, "constraints.latency_slo_s", "not a known field"),
    "unknown_top_level_key.toml": E(None, "solver", "not a known field"),
    "unknown_dtype.toml": E(None, "devices[1].peak_tflops.fp64", "not a known field"),
    # zero / negative values
    "zero_memory.toml": E(None, "devices[0].memory_gb", "must be > 0"),
    "negative_bandwidth.toml": E(None, "links[0].bandwidth_mbps", "must be > 0"),
    "negative_power.toml": E(None, "devices[1].power_w", "must be > 0"),
    "negative_rtt.toml": E(None, "links[0].rtt_ms", "must be >= 0"),
    "zero_max_batch.toml": E(None, "workload.max_batch", "must be > 0"),
    "zero_count.toml": E(None, "devices[1].count", "must be > 0"),
    "idle_above_power.toml": E(None, "devices[0].idle_power_w", "power_w"),
    "bad_tier.toml": E(None, "devices[1].tier", "fog"),
    # catalog names and referenced cards
    "unknown_device_catalog.toml": E(None, "devices[1].catalog", "no-such-gpu-9000"),
    "unknown_model_catalog.toml": E(None, "model.catalog", "no-such-moe-1x1b"),
    "model_catalog_with_fields.toml": E(None, "model", "num_layers"),
    # a referenced file that cannot be opened: the instance and the field that names it
    "model_file_missing.toml": E(None, "model.file", "names 'no_such_model_card.toml' (looked for at"),
    "profile_missing.toml": E(None, "devices[0].profile", "names 'no_such_profile.json'"),
    "pop_missing_file.toml": E(None, "workload.popularity.file", "names 'no_such_popularity.json'"),
    "dtype_bytes_3.toml": E(None, "model.dtype_bytes", "must be the bytes of one weight"),
    # links and fleet
    "link_missing_device.toml": E(None, "links[0].b", "names no device: 'h100'"),
    "link_self.toml": E(None, "links[1].b", "two different devices"),
    "disconnected_fleet.toml": E(None, "links", "not connected"),
    "count_without_interconnect.toml": E(None, "devices[1].interconnect_gb_per_s", "count > 1"),
    "duplicate_device_names.toml": E(None, "devices[2].name", "'a100' is used twice"),
    "duplicate_via_count.toml": E(None, "devices[2].name", "'gpu-1' is used twice"),
    "origin_missing_device.toml": E(None, "workload.origin", "names no device: 'phone'"),
    # request traces
    "trace_is_directory.toml": E(None, "workload.trace", "names 'trace_dir.csv' (looked for at"),
    "trace_missing_file.toml": E(None, "workload.trace", "names 'no_such_trace.csv' (looked for at"),
    "trace_bad_csv.toml": E("trace_bad_csv.csv", "line 2", "bad value"),
    "trace_missing_columns.toml": E("trace_missing_columns.csv", "header", "GeneratedTokens"),
    "trace_negative_tokens.toml": E("trace_negative_tokens.csv", "line 3", "-396"),
    "trace_non_numeric.toml": E("trace_non_numeric.csv", "line 2", "lots"),
    "trace_nan_tokens.toml": E("trace_nan_tokens.csv", "line 3", "nan"),
    "trace_bad_timestamp.toml": E("trace_bad_timestamp.csv", "line 2", "bad value"),
    "trace_empty.toml": E("trace_empty.csv", "header", "missing column"),
    "trace_header_only.toml": E("trace_header_only.csv", "", "no requests"),
    "trace_bad_jsonl.toml": E("trace_bad_json.jsonl", "line 2", "not valid JSON"),
    "trace_jsonl_not_objects.toml": E("trace_not_objects.jsonl", "line 1", "JSON object"),
    "trace_jsonl_missing_field.toml": E("trace_missing_field.jsonl", "line 2", "GeneratedTokens"),
    "trace_columns_unknown.toml": E(None, "workload.trace_columns", "timestamp/prompt/output"),
    # bandwidth series
    "bw_no_mbps_column.toml": E("bw_no_mbps.csv", "header", "mbps"),
    "bw_negative.toml": E("bw_negative.csv", "line 3", "-20"),
    "bw_all_zero.toml": E("bw_all_zero.csv", "mbps", "zero everywhere"),
    "bw_non_numeric.toml": E("bw_non_numeric.csv", "line 2", "fast"),
    "bw_missing_file.toml": E(None, "links[0].bandwidth_trace", "names 'no_such_bandwidth.csv' (looked for at"),
    # popularity
    "pop_wrong_shape.toml": E("pop_31x8.json", "", "[31][8]"),
    "pop_ragged.toml": E("pop_ragged.json", "", "[32][7, 8]"),
    "pop_non_numbers.toml": E("pop_non_numbers.json", "expert_popularity[0][0]", "must be a number"),
    "pop_zero_row.toml": E("pop_zero_row.json", "counts[5]", "sum to zero"),
    "pop_not_json.toml": E("pop_not_json.json", "", "not valid JSON"),
    "pop_negative.toml": E("pop_negative.json", "counts[2][2]", "between 0"),
    "pop_wrong_key.toml": E("pop_wrong_key.json", "", "expert_popularity"),
    "pop_measured_without_file.toml": E(None, "workload.popularity.file", "is required"),
    "pop_zipf_without_exponent.toml": E(None, "workload.popularity.zipf_exponent", "is required"),
    "pop_unknown_kind.toml": E(None, "workload.popularity.kind", "gaussian"),
    # absurdly large numbers
    "absurd_memory.toml": E(None, "devices[0].memory_gb", "absurdly large (1e+30 > 1e+07); check the unit in the field name"),
    "absurd_top_k.toml": E(None, "model.top_k", "num_experts"),
    "absurd_num_layers.toml": E(None, "model.num_layers", "absurdly large (1000000000 > 10000)"),
    "absurd_arrival_rate.toml": E(None, "workload.arrival_rate_per_s", "absurdly large"),
    # codec constraints
    "codec_ranks_without_loss.toml": E(None, "constraints.codec_accuracy_loss", "go together"),
    "codec_rank_too_large.toml": E(None, "constraints.codec_ranks", "hidden_size"),
    "codec_length_mismatch.toml": E(None, "constraints.codec_accuracy_loss", "has 2 entries"),
    "gate_loss_without_coverage.toml": E(None, "constraints.group_gate_loss", "go together"),
    "gate_length_mismatch.toml": E(None, "constraints.group_gate_loss", "has 1 entries; group_gate_coverage has 2"),
    "gate_coverage_not_increasing.toml": E(None, "constraints.group_gate_coverage", "increasing fractions"),
    "gate_loss_above_one.toml": E(None, "constraints.group_gate_loss", "losses are fractions"),
    "codec_loss_above_one.toml": E(None, "constraints.codec_accuracy_loss", "between 0 and 1"),
    "accuracy_budget_above_one.toml": E(None, "constraints.accuracy_loss_budget", "2"),
    # whole-file problems
    "invalid_syntax.toml": E(None, "", "not valid TOML"),
    "non_utf8.toml": E(None, "", "UTF-8"),
    "empty.toml": E(None, "model", "is required"),
    # NaN / inf
    "nan_memory.toml": E(None, "devices[0].memory_gb", "finite"),
    "inf_bandwidth.toml": E(None, "links[0].bandwidth_mbps", "finite"),
    "inf_zipf_exponent.toml": E(None, "workload.popularity.zipf_exponent", "finite"),
    "nan_count.toml": E(None, "devices[1].count", "nan"),
    # objective
    "objective_speed.toml": E(None, "objective", "speed"),
    # several problems at once (see also test_many_problems_reported_at_once)
    "many_problems.toml": E(None, "links[0].rtt_ms", "is required"),
    # regressions: inputs that once crashed the loader or slipped through
    "bug_huge_integer.toml": E(None, "devices[0].memory_gb", ""),
    "bug_integer_too_many_digits.toml": E(None, None, ""),
    "bug_deep_nesting.toml": E(None, None, ""),
    "bug_pop_huge_int.toml": E("pop_huge_int.json", None, ""),
    "bug_pop_deep_nesting.toml": E("pop_deep.json", None, ""),
    "bug_pop_sum_overflow.toml": E("pop_sum_overflow.json", None, ""),
    "bug_pop_numeric_strings.toml": E("pop_numeric_strings.json", None, "number"),
    "bug_trace_huge_int.toml": E("trace_huge_int.jsonl", "line 2", ""),
    "bug_zipf_no_moe_layers.toml": E(None, None, ""),
}

# An empty field is right only for problems with the file as a whole.
WHOLE_FILE_MESSAGES = (
    "not found", "directory", "UTF-8", "not valid TOML", "not valid JSON", "not valid CSV", "cannot read",
    "cannot be read", "holds no", "needs a key", "has shape", "nested too deeply", "not usable TOML",
    "not usable JSON",
)


PARAMS = [pytest.param(path, id=path.name) for path in FILES]


def _load_problems(path: Path) -> list[Problem]:
    with pytest.raises(InputError) as info:
        load_instance(str(path))
    problems = info.value.problems
    assert problems, "InputError without problems"
    return problems


def _expected_file(path: Path, exp: Expect) -> Path:
    return path if exp.file is None else DATA / exp.file


# ----- the fixture set itself -------------------------------------------------------------------

def test_all_files_found():
    assert len(FILES) >= 35, f"only {len(FILES)} bad instances under {DATA}"


def test_every_file_has_an_expectation_and_a_comment():
    names = {p.name for p in FILES}
    assert sorted(names - set(EXPECT)) == [], "bad instances without an entry in EXPECT"
    assert sorted(set(EXPECT) - names) == [], "EXPECT entries without a file"
    for path in FILES:
        first = path.read_bytes().split(b"\n", 1)[0]
        assert first.startswith(b"# BAD: ") and len(first) > 12, f"{path.name}: first line must say what is wrong"


def test_every_data_file_is_used():
    texts = "\n".join(p.read_bytes().decode("utf-8", "replace") for p in FILES)
    for data in DATA.iterdir():
        if data.suffix != ".toml" and data.name != "README.md":
            assert f'"{data.name}"' in texts, f"{data.name} is referenced by no instance"


# ----- per file ---------------------------------------------------------------------------------

@pytest.mark.parametrize("path", PARAMS)
def test_load_raises_input_error(path):
    _load_problems(path)


@pytest.mark.parametrize("path", PARAMS)
def test_problems_name_file_and_field(path):
    for p in _load_problems(path):
        assert isinstance(p.file, str) and p.file, p
        f = Path(p.file).resolve()
        assert f == path.resolve() or f.parent == DATA, f"problem names a file outside the instance: {p}"
        assert f.exists() or "not found" in p.message or "No such file" in p.message, p
        if not p.field:
            assert any(m in p.message for m in WHOLE_FILE_MESSAGES), f"no field for a field-level problem: {p}"
        assert p.message.strip(), p


@pytest.mark.parametrize("path", PARAMS)
def test_the_right_problem_is_reported(path):
    exp = EXPECT[path.name]
    want_file = _expected_file(path, exp).resolve()
    problems = _load_problems(path)
    hits = [
        p for p in problems
        if Path(p.file).resolve() == want_file
        and (exp.field is None or p.field == exp.field)
        and exp.message in p.message
    ]
    shown = "\n".join(f"  {p.file} | {p.field!r} | {p.message}" for p in problems)
    assert hits, f"expected a problem in {want_file.name} at {exp.field!r} containing {exp.message!r}; got:\n{shown}"


@pytest.mark.parametrize("path", PARAMS)
def test_cli_validate_exits_2(path, capsys):
    rc = main(["validate", str(path)])
    out, err = capsys.readouterr()
    assert rc == 2
    assert out == ""
    assert "Traceback" not in err
    assert _expected_file(path, EXPECT[path.name]).name in err, f"stderr does not name the file:\n{err}"


@pytest.mark.parametrize("path", PARAMS)
def test_cli_solve_exits_2_and_writes_nothing(path, tmp_path, capsys):
    plan = tmp_path / "plan.json"
    rc = main(["solve", str(path), "-o", str(plan)])
    out, err = capsys.readouterr()
    assert rc == 2
    assert "Traceback" not in err
    assert _expected_file(path, EXPECT[path.name]).name in err, f"stderr does not name the file:\n{err}"
    assert not plan.exists()
    assert list(tmp_path.iterdir()) == [], "solve left files behind"


# ----- several problems in one file ---------------------------------------------------------------

def test_many_problems_reported_at_once(capsys):
    path = DATA / "many_problems.toml"
    problems = _load_problems(path)
    fields = {p.field for p in problems}
    want = {"devices[1].memory_gb", "links[0].rtt_ms", "objective", "workload.max_batch", "model.top_k"}
    assert want <= fields, f"missing {sorted(want - fields)}; got {sorted(fields)}"
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{len(problems)} problem(s)" in err
    for field in want:
        assert field in err


# ----- instance paths that are not files ----------------------------------------------------------

@pytest.mark.parametrize("name", ["no_such_instance.toml", "trace_dir.csv"])
def test_instance_path_not_a_file(name, capsys):
    path = DATA / name
    problems = _load_problems(path)
    assert len(problems) == 1 and problems[0].field == "" and Path(problems[0].file) == path
    assert main(["validate", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err and name in err


# ----- checks that need a generated input or a cross-file look -------------------------------------

DEVICE_ONLY_DEFECTS = ["zero_memory.toml", "bad_tier.toml", "unknown_device_catalog.toml", "type_bool_power.toml",
                       "nan_memory.toml"]


@pytest.mark.parametrize("name", DEVICE_ONLY_DEFECTS)
def test_invalid_device_is_not_also_reported_missing(name):
    problems = _load_problems(DATA / name)
    assert not [p for p in problems if "names no device" in p.message], [str(p) for p in problems]


def test_a_unitless_field_gets_no_unit_hint():
    """num_layers has no unit to mix up: "check the unit in the field name" would send the user looking for one."""
    [problem] = [p for p in _load_problems(DATA / "absurd_num_layers.toml") if p.field == "model.num_layers"]
    assert "unit" not in problem.message


def test_a_missing_referenced_file_names_the_instance_the_field_and_the_path(capsys):
    path = DATA / "pop_missing_file.toml"
    [problem] = _load_problems(path)
    assert (Path(problem.file), problem.field) == (path, "workload.popularity.file")
    assert str(DATA / "no_such_popularity.json") in problem.message and problem.message.endswith("file not found")
    assert main(["validate", str(path), "--json"]) == 2
    error = json.loads(capsys.readouterr().out)["error"]
    assert (error["kind"], error["file"], error["field"]) == ("bad_input", str(path), "workload.popularity.file")


def test_bandwidth_series_with_huge_field(tmp_path):
    inst = (DATA / "bw_negative.toml").read_text(encoding="utf-8").replace("bw_negative.csv", "bw_huge.csv")
    (tmp_path / "inst.toml").write_text(inst, encoding="utf-8")
    (tmp_path / "bw_huge.csv").write_text("mbps\n" + "1" * 140_000 + "\n", encoding="utf-8")
    with pytest.raises(InputError) as info:
        load_instance(str(tmp_path / "inst.toml"))
    assert any(p.file.endswith("bw_huge.csv") for p in info.value.problems)
