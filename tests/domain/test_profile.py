"""Hardware profiles as data: lossless save and load, every malformed field named, devices use the
fitted curves, instances and device cards may reference a profile."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import tomli_w

from planner import api
from planner.cost.costmodel import CostModel
from planner.domain import catalog
from planner.domain.device import Device
from planner.domain.errors import InputError
from planner.domain.plan import Pipeline, Plan, Stage
from planner.domain.profile import HardwareProfile
from tests.helpers import REPO, TINY, synthetic_profile


def test_save_load_round_trip_is_lossless(tmp_path):
    prof = synthetic_profile()
    path = tmp_path / "p.json"
    prof.save(path)
    again = HardwareProfile.load(path)
    assert again == prof
    assert again.to_dict() == prof.to_dict()
    assert list(json.loads(path.read_text()))[0] == "schema"
    assert os.listdir(tmp_path) == ["p.json"]  # the temporary file was renamed, not left behind
    prof.save(path)  # overwriting works too
    assert HardwareProfile.load(path) == prof


def test_save_to_missing_folder_names_the_path(tmp_path):
    target = tmp_path / "nope" / "p.json"
    with pytest.raises(InputError) as exc:
        synthetic_profile().save(target)
    assert str(target) in str(exc.value)


def _write(tmp_path, data) -> str:
    path = tmp_path / "bad.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def _good() -> dict:
    return synthetic_profile().to_dict()


def _without(key):
    d = _good()
    del d[key]
    return d


def _with(**changes):
    d = _good()
    d.update(changes)
    return d


def _bad_sample():
    d = _good()
    d["matmul"][2]["seconds"] = "fast"
    return d


@pytest.mark.parametrize("content, field, words", [
    ("{not json", "", "not valid JSON"),
    ("", "", "not valid JSON"),
    ([1, 2], "", "JSON object"),
    (_without("peak_bytes_per_s"), "peak_bytes_per_s", "required"),
    (_without("matmul"), "matmul", "required"),
    (_with(peak_flops_per_s=-5.0), "peak_flops_per_s", "> 0"),
    (_with(peak_bytes_per_s=0), "peak_bytes_per_s", "> 0"),
    (_with(half_flops=-1.0), "half_flops", ">= 0"),
    (_with(schema="moeplan.profile/2"), "schema", "unknown schema version"),
    (_with(host=3), "host", "string"),
    (_with(peak_flops_per_s="fast"), "peak_flops_per_s", "number"),
    (_with(memory={"bytes": 1}), "memory", "list"),
    (_bad_sample(), "matmul[2].seconds", "number"),
    (_with(backend="cuda"), "backend", "one of"),
    (_with(created="yesterday"), "created", "ISO"),
    (_with(extra=1), "extra", "not a known field"),
])
def test_load_rejects_malformed_files(tmp_path, content, field, words):
    path = _write(tmp_path, content)
    with pytest.raises(InputError) as exc:
        HardwareProfile.load(path)
    message = str(exc.value)
    assert path in message and field in message and words in message
    assert all(p.file == path for p in exc.value.problems)


def test_load_reports_every_problem_at_once(tmp_path):
    d = _with(peak_flops_per_s=-1.0, half_bytes=-2.0, schema="other")
    del d["host"]
    with pytest.raises(InputError) as exc:
        HardwareProfile.load(_write(tmp_path, d))
    assert sorted(p.field for p in exc.value.problems) == ["half_bytes", "host", "peak_flops_per_s", "schema"]


def test_load_missing_file(tmp_path):
    path = str(tmp_path / "absent.json")
    with pytest.raises(InputError, match="cannot read"):
        HardwareProfile.load(path)


def test_device_with_profile_uses_the_fitted_curves():
    prof = synthetic_profile()
    datasheet = Device(name="box", kind="box", tier="edge", memory_bytes=64e9,
                       memory_bandwidth_bytes_per_s=100e9, peak_flops_per_s={"fp32": 1e12}, power_w=100.0)
    profiled = datasheet.renamed("box", profile=prof)
    flops, nbytes = 6.0 * 16 * 1024 * 2816, 4.0 * 3 * 1024 * 2816
    assert datasheet.effective_flops_per_s(flops, 4) == pytest.approx(1e12 * datasheet.compute_efficiency)
    assert profiled.effective_flops_per_s(flops, 4) == pytest.approx(prof.effective_flops_per_s(flops))
    assert profiled.effective_bytes_per_s(nbytes) == pytest.approx(prof.effective_bytes_per_s(nbytes))
    expected = max(flops / prof.effective_flops_per_s(flops), nbytes / prof.effective_bytes_per_s(nbytes))
    assert profiled.op_time_s(flops, nbytes, 4) == pytest.approx(expected)
    # The synthetic device is far slower than the datasheet: the profile must show.
    assert profiled.op_time_s(flops, nbytes, 4) > 5 * datasheet.op_time_s(flops, nbytes, 4)


PROFILE = REPO / "instances" / "profiles" / "ci-2core-x86-numpy.json"


def write_instance(tmp_path, **device_changes):
    data = {**TINY, "devices": [dict(TINY["devices"][0], **device_changes), TINY["devices"][1]]}
    path = tmp_path / "inst.toml"
    path.write_bytes(tomli_w.dumps(data).encode())
    return path


def test_instance_profile_changes_the_prediction(tmp_path):
    shutil.copy(PROFILE, tmp_path / "p.json")
    plain = api.load_instance(write_instance(tmp_path))
    measured = api.load_instance(write_instance(tmp_path, profile="p.json"))
    assert measured.device("end").profile is not None
    plan = Plan((Pipeline((Stage("end", 0, 1),)),))
    t_plain = CostModel(plain).evaluate(plan).tpot_s
    t_measured = CostModel(measured).evaluate(plan).tpot_s
    prof = measured.device("end").profile
    # The step moves ~82 kB: memory-bound on the measured curve too.
    assert t_measured != pytest.approx(t_plain)
    assert t_measured > 0 and prof.peak_bytes_per_s > 0


def test_missing_profile_is_bad_input_naming_the_field(tmp_path):
    path = write_instance(tmp_path, profile="nope.json")
    with pytest.raises(InputError) as err:
        api.load_instance(path)
    assert "nope.json" in str(err.value)


def test_device_card_may_reference_a_profile(tmp_path, monkeypatch):
    root = tmp_path / "catalog"
    (root / "devices").mkdir(parents=True)
    (root / "models").mkdir()
    shutil.copy(PROFILE, root / "devices" / "me.json")
    card = {"device": {"name": "me", "tier": "end", "memory_gb": 16, "memory_bandwidth_gb_per_s": 50,
                       "power_w": 30, "peak_tflops": {"fp32": 1}, "profile": "me.json"},
            "source": {"reference": "measured here", "verified": "yes"}}
    (root / "devices" / "me.toml").write_bytes(tomli_w.dumps(card).encode())
    monkeypatch.setenv("MOEPLAN_CATALOG", str(root))
    dev = catalog.device("me")
    assert dev.profile is not None
    assert dev.effective_bytes_per_s(1e9) == pytest.approx(dev.profile.effective_bytes_per_s(1e9))
