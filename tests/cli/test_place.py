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


def test_place_gives_status_and_stop_reason(capsys, monkeypatch, loads_file):
    code, out, _ = run(capsys, monkeypatch, "place", loads_file, "--devices", "2", "--json")
    obj = json.loads(out)
    assert code == 0 and obj["status"] == "feasible" and obj["stop_reason"] and "message" in obj and "bound" in obj


# ----- bounds that once crashed or exhausted memory ---------------------------------------------

def test_place_rejects_loads_whose_sums_overflow(capsys, monkeypatch, tmp_path):
    path = tmp_path / "loads.json"
    path.write_text(json.dumps([[1e308] * 8] * 3))  # finite, but a layer sums to inf
    code, _, err = run(capsys, monkeypatch, "place", path, "--devices", "4", "--replicas", "4")
    assert code == 2 and "Traceback" not in err
    assert f"{path}: [0][0]: must be at most 1e+15 (a count of tokens), got 1e+308" in err


def test_place_bounds_the_replicas(capsys, monkeypatch, tmp_path):
    path = tmp_path / "loads.json"
    path.write_text("[[1, 2, 3, 4]]")
    code, _, err = run(capsys, monkeypatch, "place", path, "--devices", "2", "--replicas", "1000000000")
    assert code == 2 and "--replicas: 1,000,000,004 physical experts (1,000,000,000 redundant) on 2 device(s): at most 8" in err


# ----- EPLB's conventions: num_replicas (physical experts in all), groups and nodes -----------------

EPLB_README_WEIGHT = [[90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86],
                      [20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27]]
# deepseek-ai/EPLB README: rebalance_experts(weight, num_replicas=16, num_groups=4, num_nodes=2, num_gpus=8)
EPLB_README_PHY2LOG = [[5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1],
                       [7, 10, 6, 8, 6, 11, 8, 9, 2, 4, 5, 1, 5, 0, 3, 1]]


def test_eplb_readme_example_through_num_replicas(capsys, monkeypatch, tmp_path):
    path = tmp_path / "weight.json"
    path.write_text(json.dumps(EPLB_README_WEIGHT))
    code, out, _ = run(capsys, monkeypatch, "place", path, "--solver", "eplb", "--num-replicas", "16",
                       "--num-groups", "4", "--num-nodes", "2", "--num-gpus", "8", "--json")
    obj = json.loads(out)
    assert code == 0 and obj["phy2log"] == EPLB_README_PHY2LOG
    # the same numbers under moeplan's convention: 16 physical = 12 experts + 4 redundant
    code, out, _ = run(capsys, monkeypatch, "place", path, "--solver", "eplb", "--replicas", "4",
                       "--num-groups", "4", "--num-nodes", "2", "--devices", "8", "--json")
    assert json.loads(out)["phy2log"] == EPLB_README_PHY2LOG


@pytest.mark.parametrize("argv,message", [
    (["--num-replicas", "8", "--devices", "8"], "--num-replicas: counts every physical expert, as EPLB's num_replicas does"),
    (["--num-replicas", "16", "--replicas", "4", "--devices", "8"], "not allowed with argument"),
    (["--num-replicas", "16", "--devices", "8", "--num-groups", "4"], "--num-groups: selects EPLB's hierarchical policy"),
    (["--num-replicas", "16", "--devices", "8", "--solver", "eplb", "--num-groups", "5"], "must be a divisor of the 12 experts"),
    (["--num-replicas", "16", "--devices", "8", "--solver", "eplb", "--num-nodes", "3"], "--num-nodes: must be a divisor of the 8 devices"),
    (["--num-replicas", "18", "--devices", "8"], "--num-replicas 16 or --num-replicas 24"),
])
def test_eplb_options_are_checked(capsys, monkeypatch, tmp_path, argv, message):
    path = tmp_path / "weight.json"
    path.write_text(json.dumps(EPLB_README_WEIGHT))
    code, _, err = run(capsys, monkeypatch, "place", path, *argv)
    assert code == 2 and message in err and "Traceback" not in err


# ----- SGLang: its expert distribution dump in, its --init-expert-location file out -------------------

def sglang_reads(path, num_logical: int, num_redundant: int, ep_size: int) -> list[list[set]]:
    """What SGLang's reader does with ``--init-expert-location PATH`` (sglang/srt/eplb/expert_location.py,
    compute_initial_expert_location_metadata -> init_by_mapping -> _compute_logical_to_all_physical_map,
    step by step, without torch): returns, per layer and EP rank, the logical experts the rank holds.
    Asserts what SGLang assumes and does not check (an id out of range indexes a wrong expert)."""
    assert str(path).endswith(".json")  # otherwise SGLang parses the argument itself as JSON text
    data = json.loads(path.read_text())
    assert set(data) == {"physical_to_logical_map"}  # init_by_mapping(model_config, **data): no other keyword
    phy2log = np.array(data["physical_to_logical_map"])  # torch.tensor(...): rectangular integers
    assert phy2log.ndim == 2 and phy2log.dtype.kind == "i"
    num_physical = num_logical + num_redundant  # _init_common
    assert phy2log.shape[1] == num_physical and num_physical % ep_size == 0
    assert ((phy2log >= 0) & (phy2log < num_logical)).all()  # list index: -1 would silently mean the last expert
    log2phy = [[[] for _ in range(num_logical)] for _ in phy2log]
    for layer, row in enumerate(phy2log):
        for physical, logical in enumerate(row):
            log2phy[layer][logical].append(physical)
    assert all(log2phy[l][e] for l in range(len(phy2log)) for e in range(num_logical))  # static dispatch needs one each
    per_rank = num_physical // ep_size  # _compute_gpu_id_of_physical_expert: physical // local experts
    return [[set(row[r * per_rank:(r + 1) * per_rank].tolist()) for r in range(ep_size)] for row in phy2log]


@pytest.mark.parametrize("solver", ["greedy-placement", "local-search-placement", "eplb"])
def test_sglang_output_loads_as_sglang_reads_it(capsys, monkeypatch, tmp_path, solver):
    loads = tmp_path / "loads.json"
    loads.write_text(json.dumps({"logical_count": EPLB_README_WEIGHT}))
    out_file = tmp_path / "expert_location.json"
    code, out, err = run(capsys, monkeypatch, "place", loads, "--solver", solver, "--num-replicas", "16", "--devices", "8",
                         "--format", "sglang", "-o", out_file, "--json")
    assert code == 0 and "--init-expert-location" in err and "--ep-num-redundant-experts 4" in err
    held = sglang_reads(out_file, num_logical=12, num_redundant=4, ep_size=8)
    phy2log = np.array(json.loads(out)["phy2log"])
    for layer in range(2):
        for rank in range(8):  # SGLang's rank r holds what moeplan put on device r
            mine = phy2log[layer, 2 * rank:2 * rank + 2]
            assert set(mine[mine >= 0].tolist()) <= held[layer][rank]


def test_sglang_fills_the_slots_a_solver_leaves_empty(capsys, monkeypatch, tmp_path):
    """4 experts on 2 devices of 3 slots, all the load on expert 3: greedy gives it a replica on each
    device and has no use for the last slot (an idle expert gains nothing from a second copy), so
    one slot stays empty; SGLang needs an expert in every slot."""
    loads = tmp_path / "loads.json"
    loads.write_text("[[0, 0, 0, 5]]")
    out_file = tmp_path / "loc.json"
    code, out, err = run(capsys, monkeypatch, "place", loads, "--replicas", "2", "--devices", "2",
                         "--format", "sglang", "-o", out_file, "--json")
    empty = int(np.sum(np.array(json.loads(out)["phy2log"]) < 0))
    held = sglang_reads(out_file, num_logical=4, num_redundant=2, ep_size=2)
    assert code == 0 and empty > 0 and f"note: {empty} empty slot(s)" in err
    phy2log = np.array(json.loads(out)["phy2log"])[0]
    for rank in range(2):  # a filled slot copies an expert its device already holds
        mine = phy2log[3 * rank:3 * rank + 3]
        assert held[0][rank] == set(mine[mine >= 0].tolist())


def test_sglang_dump_with_steps_is_summed(capsys, monkeypatch, tmp_path):
    steps = tmp_path / "dump.json"
    steps.write_text(json.dumps({"rank": 0, "logical_count": [[[1, 2, 3, 4]], [[9, 0, 0, 0]]]}))
    code, out, _ = run(capsys, monkeypatch, "place", steps, "--devices", "2", "--json")
    assert code == 0 and np.array(json.loads(out)["device_load"]).sum() == pytest.approx(19)


def test_sglang_pt_dump_is_read(capsys, monkeypatch, tmp_path):
    torch = pytest.importorskip("torch")
    dump = tmp_path / "expert_distribution_recorder_1.pt"
    torch.save({"rank": 0, "logical_count": torch.tensor([[[1, 2, 3, 4]], [[9, 0, 0, 0]]], dtype=torch.int32),
                "average_utilization_rate_over_window": None}, dump)
    code, out, _ = run(capsys, monkeypatch, "place", dump, "--devices", "2", "--json")
    assert code == 0 and np.array(json.loads(out)["device_load"]).sum() == pytest.approx(19)
    dump.write_text("not a torch file")
    code, _, err = run(capsys, monkeypatch, "place", dump, "--devices", "2")
    assert code == 2 and f"{dump}: is not a torch file of tensors" in err


@pytest.mark.parametrize("argv,message", [
    (["--format", "sglang"], "--format: sglang is a file format: give -o FILE.json"),
    (["--format", "sglang", "-o", "{tmp}/loc.txt"], "SGLang reads --init-expert-location as a file only when its name ends in .json"),
    (["--format", "sglang", "-o", "{tmp}/loc.json", "--devices", "{fleet}"], "SGLang gives every EP rank the same number"),
    (["-o", "{tmp}/no/loc.json"], "cannot write the placement: folder"),
    (["--num-replicas", "24", "--devices", "2", "-o", "{tmp}/loc.json"], "at most 16 (--num-replicas 16)"),
])
def test_sglang_format_needs_what_sglang_needs(capsys, monkeypatch, loads_file, tmp_path, argv, message):
    fleet = tmp_path / "fleet.json"
    fleet.write_text(json.dumps([{"speed": 1, "slots": 6}, {"speed": 1, "slots": 4}]))
    argv = [a.format(tmp=tmp_path, fleet=fleet) for a in argv]
    if "--devices" not in argv:
        argv += ["--devices", "2"]
    code, _, err = run(capsys, monkeypatch, "place", loads_file, *argv)
    assert code == 2 and message in err, err
    assert not (tmp_path / "loc.json").exists()


def test_moeplan_format_writes_the_json_object(capsys, monkeypatch, loads_file, tmp_path):
    out_file = tmp_path / "placement.json"
    code, out, _ = run(capsys, monkeypatch, "place", loads_file, "--devices", "2", "-o", out_file)
    assert code == 0 and f"placement written to {out_file} (moeplan)" in out
    assert json.loads(out_file.read_text())["status"] == "feasible"
