"""A measured profile named by an instance or a device card replaces the datasheet roofline."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import tomli_w

from planner import api
from planner.cost.costmodel import CostModel
from planner.domain import catalog
from planner.domain.errors import InputError
from planner.domain.plan import Pipeline, Plan, Stage
from tests.conftest import TINY

PROFILE = Path(__file__).resolve().parents[1] / "instances" / "profiles" / "ci-2core-x86-numpy.json"


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
