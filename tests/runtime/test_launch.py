"""Plans run as processes on loopback: the single-process executor's logits, a killed stage process and
a dropped link survived by re-planning with every request accounted for, no process left behind."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from planner.domain.plan import Pipeline, Plan
from planner.executor import apply_plan
from planner.runtime import inputs, launch
from planner.runtime.launch import RunOptions

from .conftest import alive, shipped_plan

TOLERANCE = 1e-5
RUN_TIMEOUT_S = 120.0  # the launcher ends every process of a run that takes longer


def run_plan(instance, plan, model, requests, **options):
    calibration = inputs.calibration_ids(256)
    codecs = inputs.prepare(model, instance, plan, calibration)
    defaults = {"timeout_s": 5.0, "run_timeout_s": RUN_TIMEOUT_S, "model_module": type(model).__module__, "calibration": calibration}
    result = launch.run(instance, plan, requests, RunOptions(**defaults | options), codecs,
                        prepare_for=lambda inst, p: inputs.prepare(model, inst, p, calibration))
    for gen in result.generations:
        assert gen.pids and not [pid for pid in gen.pids if alive(pid)], "a process outlived its run"
    return result


def batched(plan: Plan, b: int, m: int = 2) -> Plan:
    p = plan.pipelines[0]
    return Plan((Pipeline(p.stages, p.codec_ranks, b, m, 1.0, p.expert_placement),), plan.instance, plan.solver)


def single_process_logits(model, instance, plan, prompt, tokens) -> np.ndarray:
    """Logits [len(tokens), V] of the planned model in one process: prefill, then decode steps feeding ``tokens``."""
    planned = apply_plan(model, instance, plan)
    with torch.no_grad():
        logits = planned.prefill(torch.tensor([prompt]))
        rows = [logits[0, -1]]
        for t in tokens[:-1]:
            logits = planned.decode_step(torch.tensor([[t]]))
            rows.append(logits[0, -1])
    return torch.stack(rows).numpy()


@pytest.mark.parametrize("name, b, processes", [("phone-cloud", 2, 2), ("phone-edge-remote-experts", 1, 3)])
def test_the_distributed_run_gives_the_single_process_logits(loopback, reference_model, name, b, processes):
    plan = batched(shipped_plan(name), b)
    requests = inputs.make_requests(loopback, 256, 512, num_requests=4, burst=True, seed=3)
    result = run_plan(loopback, plan, reference_model, requests, record_logits=True)
    (gen,) = result.generations
    assert len(gen.devices) == processes and gen.fault is None and not result.failed
    logits = next(s["logits"] for s in gen.stats if s["logits"])
    worst = 0.0
    for r in requests:
        record = result.outcomes[r.rid]["record"]
        assert len(record["tokens"]) == r.output_tokens
        expected = single_process_logits(reference_model, loopback, plan, r.prompt, record["tokens"])
        worst = max(worst, float(np.abs(logits[r.rid] - expected).max()))
        assert record["tokens"] == expected.argmax(axis=1).tolist()  # greedy, as the executor would choose
    assert worst <= TOLERANCE
    if name == "phone-edge-remote-experts":
        assert any(s["experts"] for s in gen.stats)  # the remote experts were called


def test_a_stage_process_killed_mid_run_is_replanned_and_every_request_finishes(loopback, reference_model):
    plan = shipped_plan("phone-edge-cloud")
    requests = inputs.make_requests(loopback, 256, 512, num_requests=6, burst=True, seed=0)
    result = run_plan(loopback, plan, reference_model, requests, kill={"edge": 0.3})
    first, second = result.generations
    assert first.fault["kind"] == "device" and first.fault["device"] == "edge"
    assert first.fault["at_run_s"] == pytest.approx(0.3, abs=0.5)
    assert first.replan["plan"] is not None and "edge" not in second.devices and second.fault is None
    assert set(result.outcomes) == {r.rid for r in requests}
    assert all(o["status"] == "finished" for o in result.outcomes.values())  # nothing lost
    assert any(o["attempts"] == 1 for o in result.outcomes.values())  # in flight when edge died: re-queued
    for o in result.outcomes.values():
        assert len(o["record"]["tokens"]) == o["record"]["output_tokens"]
    from planner.runtime.report import RunMeasurement

    replanned = RunMeasurement(second.stats, second.instance, second.plan, second.done).summary()
    assert replanned["tokens_per_s"] > 0 and replanned["requests"] == len(second.done) > 0


def test_a_dropped_link_is_detected_within_the_fault_timeout(loopback, reference_model):
    plan = shipped_plan("phone-edge-cloud")
    requests = inputs.make_requests(loopback, 256, 512, num_requests=4, burst=True, seed=0)
    timeout = 1.5
    result = run_plan(loopback, plan, reference_model, requests, timeout_s=timeout, link_down={("edge", "cloud"): 0.2})
    first = result.generations[0]
    assert first.fault["kind"] == "link" and set(first.fault["link"]) == {"edge", "cloud"}
    assert 0.2 < first.fault["at_run_s"] <= 0.2 + timeout + 1.0  # silence of one timeout (heartbeats every timeout / 4)
    assert all(o["status"] == "finished" for o in result.outcomes.values())
    second = result.generations[1]  # re-planned on the fleet without the link (routes around it, if any)
    assert not [l for l in second.instance.links if {l.a, l.b} == {"edge", "cloud"}] and second.fault is None
