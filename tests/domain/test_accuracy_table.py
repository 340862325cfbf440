"""The measured accuracy table, read without torch: checks, interpolation, and an instance that names it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from planner.domain.accuracy_table import SCHEMA, accuracy_table_from_dict, read_accuracy_table
from planner.domain.errors import InputError
from tests.helpers import LINE, REPO, build


def _point(**kw):
    return {"kl_nats": 0.01, "top1_agreement": 0.9, "perplexity_change": 0.01, "loss": 0.1} | kw


TABLE = {
    "schema": SCHEMA,
    "model": {"name": "line-moe", "hidden_size": 256, "num_experts": 8},
    "loss_measure": "1 - top1_agreement",
    "codec": [_point(cut_layer=1, rank=16, loss=0.2), _point(cut_layer=1, rank=64, loss=0.04),
              _point(cut_layer=2, rank=16, loss=0.3), _point(cut_layer=2, rank=64, loss=0.02)],
    "group_gate": [_point(local_experts=2, layers=[0, 1], coverage=0.3, method="group_gate", loss=0.3),
                   _point(local_experts=4, layers=[0, 1], coverage=0.6, method="group_gate", loss=0.1),
                   _point(local_experts=4, layers=[0, 1], coverage=0.6, method="renormalise", loss=0.2),
                   _point(local_experts=4, layers=[1], coverage=0.5, method="group_gate", loss=0.04)],
}


def test_codec_losses_take_the_worst_cut_and_interpolate():
    t = accuracy_table_from_dict(TABLE)
    assert t.codec_ranks == [16, 64]
    assert t.codec_loss(16) == 0.3
    assert t.codec_loss(64) == 0.04
    assert t.codec_loss(40, cut_layer=1) == pytest.approx(0.12)
    assert t.codec_loss(128) == 0.04 and t.codec_loss(256) == 0.0 and t.codec_loss(None) == 0.0
    with pytest.raises(ValueError, match="rank 8 at the cut before layer 1 is below the measured range"):
        t.codec_loss(8)


def test_group_gate_loss_is_a_function_of_coverage():
    t = accuracy_table_from_dict(TABLE)
    assert t.group_gate_loss(0.6) == pytest.approx(0.1)
    assert t.group_gate_loss(0.8) == pytest.approx(0.05)
    assert t.group_gate_loss(1.0) == 0.0
    assert t.group_gate_loss(0.1) == pytest.approx(0.3)
    assert t.group_gate_loss(0.6, "renormalise") == pytest.approx(0.2)
    assert t.group_gate_loss(0.75, layer=1) == pytest.approx(0.02)
    with pytest.raises(ValueError, match=r"for layers \[0\]"):
        t.group_gate_loss(0.5, layer=0)


def test_bad_tables_name_the_file_and_field(tmp_path):
    bad = json.loads(json.dumps(TABLE))
    bad["codec"][1]["loss"] = 1.5
    bad["group_gate"][0]["method"] = "magic"
    bad["group_gate"][1]["layers"] = "all"
    path = tmp_path / "t.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(InputError) as err:
        read_accuracy_table(path)
    where = {(p.file, p.field) for p in err.value.problems}
    assert (str(path), "codec[1].loss") in where and (str(path), "group_gate[0].method") in where
    assert (str(path), "group_gate[1].layers") in where
    path.write_text("{")
    with pytest.raises(InputError, match="is not valid JSON"):
        read_accuracy_table(path)
    with pytest.raises(InputError, match="schema"):
        accuracy_table_from_dict({"schema": "other"})


def _write(tmp_path, table=TABLE):
    (tmp_path / "acc.json").write_text(json.dumps(table))
    return tmp_path


def test_an_instance_takes_its_codec_losses_from_the_table(tmp_path):
    from planner.domain.instance import instance_from_dict
    data = json.loads(json.dumps(LINE))
    data["constraints"] = {"codec_ranks": [16, 64], "accuracy_table": "acc.json", "accuracy_loss_budget": 0.5}
    inst = instance_from_dict(data, file="<test>", base_dir=_write(tmp_path))
    assert inst.constraints.codec.ranks == (16, 64)
    assert inst.constraints.codec.accuracy_loss == (0.3, 0.04)
    assert inst.constraints.accuracy_table.group_gate_loss(0.6) == pytest.approx(0.1)
    # Without codec_ranks the measured ranks are allowed; typed losses still win over the table.
    data["constraints"] = {"accuracy_table": "acc.json"}
    assert instance_from_dict(data, file="<test>", base_dir=tmp_path).constraints.codec.ranks == (16, 64)
    data["constraints"] = {"codec_ranks": [16], "codec_accuracy_loss": [0.5], "accuracy_table": "acc.json"}
    assert instance_from_dict(data, file="<test>", base_dir=tmp_path).constraints.codec.accuracy_loss == (0.5,)
    assert build(LINE).constraints.accuracy_table is None


def test_an_instance_rejects_a_table_of_another_model(tmp_path):
    from planner.domain.instance import instance_from_dict
    other = json.loads(json.dumps(TABLE))
    other["model"]["hidden_size"] = 128
    data = json.loads(json.dumps(LINE))
    data["constraints"] = {"accuracy_table": "acc.json"}
    with pytest.raises(InputError, match=r"constraints.accuracy_table: acc.json was measured on 'line-moe' \(hidden 128"):
        instance_from_dict(data, file="<test>", base_dir=_write(tmp_path, other))
    data["constraints"] = {"accuracy_table": "missing.json"}
    missing = r"<test>: constraints.accuracy_table: names 'missing.json' \(looked for at .*missing.json\): file not found"
    with pytest.raises(InputError, match=missing):
        instance_from_dict(data, file="<test>", base_dir=tmp_path)


def test_the_calibrate_command_registers_and_fails_cleanly_without_torch():
    code = ("import sys, argparse; sys.modules['torch'] = None\n"
            "from planner.executor import calibrate\n"
            "p = argparse.ArgumentParser(); calibrate.add_parser(p.add_subparsers())\n"
            "a = p.parse_args(['calibrate', 'reference', '-o', 'x.json'])\n"
            "sys.exit(a.func(a))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "needs the torch extra" in proc.stderr


def test_the_shipped_table_reads(tmp_path):
    path = REPO / "instances" / "data" / "reference-moe-accuracy.json"
    table = read_accuracy_table(path)
    assert table.model == "reference-moe" and table.codec and table.group_gate
    assert Path(path).is_file()
