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
