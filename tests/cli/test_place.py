"""moeplan place: JSON and table output, EPLB maps, memory checks, bad loads and device files (exit 2)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from planner.cli import main as cli
from planner.cli import place
from tests.helpers import assert_maps_agree, random_loads


def run(capsys, monkeypatch, *argv):
    """``moeplan`` with ``place`` registered (whether or not cli.py wires it in yet)."""
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if "place" not in sub.choices:
        place.add_parser(sub)
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def loads_file(tmp_path):
    path = tmp_path / "loads.json"
    path.write_text(json.dumps(random_loads(np.random.default_rng(0), 3, 8).tolist()))
    return path


@pytest.mark.parametrize("solver", ["greedy-placement", "local-search-placement", "eplb"])
def test_place_json(capsys, monkeypatch, loads_file, solver):
    code, out, _ = run(capsys, monkeypatch, "place", loads_file, "--devices", "4", "--replicas", "4",
                       "--solver", solver, "--json")
    assert code == 0
    obj = json.loads(out)
    for key in ("phy2log", "log2phy", "logcnt", "device_load", "balancedness", "mean_balancedness", "solver",
                "solve_time_s", "replica_share"):
        assert key in obj
    assert obj["solver"] == solver and np.array(obj["phy2log"]).shape == (3, 12)
    assert np.array(obj["device_load"]).shape == (3, 4)
    assert_maps_agree(np.array(obj["phy2log"]), np.array(obj["log2phy"]), np.array(obj["logcnt"]))
    assert 0 < obj["mean_balancedness"] <= 1


def test_place_eplb_prints_eplbs_own_maps(capsys, monkeypatch, tmp_path):
    path = tmp_path / "loads.json"
    path.write_text("[[10, 1, 1, 1]]")
    code, out, _ = run(capsys, monkeypatch, "place", path, "--devices", "2", "--replicas", "2", "--solver", "eplb", "--json")
    obj = json.loads(out)
    assert code == 0 and obj["phy2log"] == [[0, 0, 3, 0, 1, 2]] and obj["logcnt"] == [[3, 1, 1, 1]]
    assert obj["replica_share"][0] == pytest.approx([1 / 3, 1 / 3, 1, 1 / 3, 1, 1])
    assert obj["device_load"][0] == pytest.approx([23 / 3, 16 / 3])


def test_place_checks_memory(capsys, monkeypatch, loads_file, tmp_path):
    """3 layers x 8 experts, 12 slots: 36 replicas need 3.6 GB at 0.1 GB each."""
    devices = tmp_path / "fleet.json"
    devices.write_text(json.dumps([{"speed": 1, "memory_gb": 1.0}, {"speed": 1, "memory_gb": 1.0},
                                   {"speed": 1, "memory_gb": 1.0}, {"speed": 1, "memory_gb": 1.0}]))
    code, out, _ = run(capsys, monkeypatch, "place", loads_file, "--devices", devices, "--replicas", "4",
                       "--expert-gb", "0.1", "--json")
    obj = json.loads(out)
    assert code == 0 and max(np.sum(np.array(obj["phy2log"]).reshape(3, 4, 3) >= 0, axis=(0, 2))) <= 10
    code, out, err = run(capsys, monkeypatch, "place", loads_file, "--devices", devices, "--expert-gb", "0.5")
    assert code == 1 and "no placement" in err


def test_place_table_and_device_file(capsys, monkeypatch, loads_file, tmp_path):
    devices = tmp_path / "fleet.toml"
    devices.write_text('[[devices]]\nname = "big"\nspeed = 2.0\nslots = 6\n\n[[devices]]\nname = "small"\nspeed = 0.5\nslots = 4\n')
    code, out, _ = run(capsys, monkeypatch, "place", loads_file, "--devices", devices)
    assert code == 0 and "big" in out and "balancedness" in out


BAD_LOADS = [
    ("[[1, 2], [3]]", "[1]"),
    ("[[1, -2], [3, 4]]", "[0][1]"),
    ('[[1, "x"], [3, 4]]', "[0][1]"),
    ("[[1, 2], [3, NaN]]", "[1][1]"),
    ("{not json", "not valid JSON"),
    ("{}", "must hold"),
    ("[[true, 1]]", "[0][0]"),
]


@pytest.mark.parametrize("text,where", BAD_LOADS)
def test_place_rejects_bad_loads(capsys, monkeypatch, tmp_path, text, where):
    path = tmp_path / "loads.json"
    path.write_text(text)
    code, out, err = run(capsys, monkeypatch, "place", path, "--devices", "2", "--json")
    assert code == 2 and json.loads(out)["error"]["file"] == str(path)
    assert str(path) in err and where in err and "Traceback" not in err


@pytest.mark.parametrize("spec,where", [("0", "--devices"), ("-1", "--devices"), ("2.5", "--devices"),
                                        ("nofile.json", "file not found")])
def test_place_rejects_bad_device_count(capsys, monkeypatch, loads_file, spec, where):
    code, _, err = run(capsys, monkeypatch, "place", loads_file, f"--devices={spec}")
    assert code == 2 and where in err and "Traceback" not in err


@pytest.mark.parametrize("body,field", [
    ('[{"speed": 0, "slots": 4}, {"speed": 1, "slots": 4}]', "devices[0].speed"),
    ('{"devices": [{"speed": 1, "slots": 2.5}, {"speed": 1, "slots": 4}]}', "devices[0].slots"),
    ('[{"speed": 1, "slots": 8}, {"speed": 1}]', "devices[1].slots"),
    ('[{"speed": 1, "slots": 3}, {"speed": 1, "slots": 3}]', "devices[].slots"),
    ('[{"speed": 1, "slot": 4}]', "devices[0].slot"),
    ('[]', "devices"),
])
def test_place_rejects_bad_device_files(capsys, monkeypatch, loads_file, tmp_path, body, field):
    path = tmp_path / "fleet.json"
    path.write_text(body)
    code, _, err = run(capsys, monkeypatch, "place", loads_file, "--devices", path)
    assert code == 2 and str(path) in err and field in err and "Traceback" not in err


def test_place_says_when_slots_do_not_split(capsys, monkeypatch, loads_file):
    code, _, err = run(capsys, monkeypatch, "place", loads_file, "--devices", "3", "--replicas", "2")
    assert code == 2 and "--replicas" in err and "evenly" in err and "--replicas 1" in err
