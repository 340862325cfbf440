"""The paper suite: its scenarios load with SLOs and codecs, cover the models, end devices and networks, and simulate each plan once."""

import pytest

from planner import api
from planner.bench.paper import PAPER_DIR, PAPER_SERIES
from tests.helpers import REPO

BENCH_FILES = sorted((REPO / "instances" / "bench").rglob("*.toml"))


@pytest.mark.parametrize("path", BENCH_FILES, ids=[p.stem for p in BENCH_FILES])
def test_bench_instances_load_with_slos_and_codecs(path):
    inst = api.load_instance(path)
    c = inst.constraints
    assert c.latency_slo_s or c.ttft_slo_s or c.tpot_slo_s
    assert c.codec.ranks and len(c.codec.ranks) == len(c.codec.accuracy_loss)


def test_paper_matrix_covers_models_end_devices_and_networks():
    insts = [api.load_instance(p) for p in sorted(PAPER_DIR.glob("*.toml"))]
    assert 10 <= len(insts) <= 14
    models = [i.model.name for i in insts]
    for m in ("mixtral-8x7b", "qwen3-30b-a3b", "deepseek-v2-lite", "olmoe-1b-7b"):
        assert models.count(m) >= 2, m
    ends = [i.device(i.workload.origin).kind for i in insts]
    for kinds in (("jetson",), ("snapdragon", "a17"), ("laptop", "m2")):
        assert sum(any(k in e for k in kinds) for e in ends) >= 2, kinds
    # The model does not fit the end device alone (quantised where the end device runs it so).
    for i in insts:
        assert i.model.total_params * i.model.dtype_bytes > i.device(i.workload.origin).memory_bytes, i.name
    assert sum(i.name in PAPER_SERIES for i in insts) >= 2


def test_paper_suite_simulates_each_distinct_plan_once_per_run(monkeypatch):
    from planner.bench import paper
    from planner.bench.common import Settings

    calls = []
    real = paper.simulate

    def counting(instance, plan, trace, **kw):
        calls.append((instance.name, plan.pipelines, trace.rate_per_s, kw.get("timeline", False)))
        return real(instance, plan, trace, **kw)

    monkeypatch.setattr(paper, "simulate", counting)
    out = paper.run_paper(Settings(quick=True), lambda _: None)
    runs = [c for c in calls if not c[3]]
    assert len(runs) == len(set(runs))  # no (scenario, plan, run) simulated twice
    simulated = [r for r in out.rows if r["run"] in ("load", "saturation")]
    assert len(simulated) > len(runs)  # some solvers share a plan, and each still has its rows


def test_the_group_gate_is_priced_for_moeplan_from_the_measured_table():
    from planner.bench.paper import GATE_TABLE, with_group_gate
    from planner.domain.accuracy_table import read_accuracy_table

    inst = api.load_instance(sorted(PAPER_DIR.glob("*.toml"))[0])
    assert not inst.constraints.group_gate_loss.known
    gated = with_group_gate(inst)
    loss = gated.constraints.group_gate_loss
    table = read_accuracy_table(GATE_TABLE)
    # Every point of the table's all-layers group-gate curve, loss = 1 - top-1 agreement, shared out per layer.
    assert loss.coverage and list(loss.coverage) == sorted(loss.coverage)
    for c, v in zip(loss.coverage, loss.loss, strict=True):
        assert abs(table.group_gate_loss(c) - v) < 1e-12
    n = inst.model.num_moe_layers
    assert abs(loss.layer_loss(loss.coverage[-1], 3, n) - loss.loss[-1] / n) < 1e-15
    assert with_group_gate(gated) is gated  # an instance that prices the gate keeps its own points
    assert gated.constraints.accuracy_loss_budget == inst.constraints.accuracy_loss_budget


def test_the_paper_table_reports_the_gated_plan_beside_moeplan_and_the_baselines():
    from planner.bench.paper import paper_table

    scenario = {"scenario": "s", "accuracy_budget": 0.01, "accuracy_loss": 0.003,
                "sat": {"route-aware": 120.0, "eplb": 100.0, "single-cut": 80.0},
                "latency_p50": {"route-aware": 900.0, "eplb": 1000.0}, "slo": {"route-aware": 1.0, "eplb": 0.9},
                "gated": {"sat": 150.0, "latency_p50": 800.0, "accuracy_loss": 0.009, "group_gates": 1}}
    table, notes = paper_table([scenario])
    row = table.splitlines()[2]
    assert "1.20x" in row and "1.50x" in row  # without and with the gate, over the best baseline (eplb)
    assert "+10.0 %" in row and "+20.0 %" in row
    assert "0.0030 / 0.0090 of 0.01" in row
    assert any("gates layers in 1 of 1 scenarios" in n for n in notes)
