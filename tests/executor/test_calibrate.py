"""`moeplan calibrate` on a tiny byte-vocabulary model: a table the planner reads, exit 2 on bad input."""

from __future__ import annotations

import json

import pytest

from planner.domain.accuracy_table import read_accuracy_table
from planner.executor import tiny_model
from planner.executor.calibrate import main


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-mixtral")
    tiny_model("mixtral", vocab=256).save_pretrained(path)
    return path


def test_calibrate_writes_a_readable_table_and_popularity(folder, tmp_path):
    out, pop = tmp_path / "t.json", tmp_path / "p.json"
    rc = main([str(folder), "-o", str(out), "--windows", "4", "--length", "24", "--ranks", "8,48",
               "--cuts", "2", "--subset-sizes", "4", "--codec-steps", "3", "--popularity", str(pop)])
    assert rc == 0
    table = read_accuracy_table(out)
    assert [(p.cut_layer, p.rank) for p in table.codec] == [(2, 8), (2, 48)]
    assert table.codec_fine_tuning_steps == 3
    assert table.codec[0].kl_nats > table.codec[1].kl_nats
    assert {p.method for p in table.group_gate} == {"group_gate", "renormalise"}
    assert [p.layers for p in table.group_gate[::2]] == [(0, 1, 2, 3), (0,), (1,), (2,), (3,)]
    assert 0 < table.group_gate[0].coverage < 1
    # Each layer alone reuses the gate fitted with all layers: it is never worse than renormalising there.
    assert table.group_gate_loss(table.group_gate[2].coverage, layer=0) >= 0
    counts = json.loads(pop.read_text())["expert_popularity"]
    assert len(counts) == 4 and all(len(r) == 8 and sum(r) == 4 * 24 * 2 for r in counts)


def test_calibrate_bad_inputs_exit_2(folder, tmp_path, capsys):
    assert main([str(tmp_path / "nowhere"), "-o", str(tmp_path / "t.json")]) == 2
    assert "config.json" in capsys.readouterr().err
    assert main([str(folder), "-o", str(tmp_path / "t.json"), "--ranks", "65"]) == 2
    assert "--ranks" in capsys.readouterr().err
    bad = tmp_path / "tokens.npz"
    bad.write_bytes(b"not an npz")
    assert main([str(folder), "-o", str(tmp_path / "t.json"), "--tokens", str(bad)]) == 2
    assert "tokens.npz" in capsys.readouterr().err
