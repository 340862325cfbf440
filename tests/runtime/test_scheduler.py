"""Continuous batching at the origin, against a fake pipeline that answers every pass at once."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from planner.runtime.device import DeviceClock
from planner.runtime.scheduler import PipelineSpec, RequestSpec, Scheduler, weighted_round_robin
from planner.runtime.stage import RuntimeFault
from planner.runtime.transport import DelayQueue
from planner.runtime.wire import DECODE, PASS, PREFILL, RESULT, Message


def serve(requests, pipes, *, answer=True):
    """Run a scheduler whose passes a fake last stage answers with token = 1000 x pass id + row."""
    inbox = DelayQueue()
    sent, done = [], []

    def send(rank, msg):
        assert msg.kind == PASS
        sent.append((rank, msg))
        if answer:
            tokens = torch.arange(msg.ints.shape[0]) + 1000 * msg.ident
            inbox.put((rank, Message(RESULT, msg.ident, msg.a, msg.b, ints=torch.stack([msg.ints[:, 0], tokens], 1))))

    sched = Scheduler(requests, pipes, send=send, inbox=inbox, on_done=done.append, t0=0.0, timeout_s=0.5)
    sched.run()
    return sched, sent, done


def test_every_request_gets_its_tokens_within_the_plans_seats():
    reqs = [RequestSpec(i, [1, 2, 3][: 1 + i % 3], 2 + i % 4, 0.0) for i in range(10)]
    sched, sent, done = serve(reqs, [PipelineSpec(first_rank=1, micro_batch_size=3, num_micro_batches=2, request_share=1.0)])
    assert sorted(r["rid"] for r in done) == list(range(10))
    for r in done:
        assert len(r["tokens"]) == r["output_tokens"] and r["first_token_s"] <= r["finish_s"]
    prefills = [m for _, m in sent if m.a == PREFILL]
    decodes = [m for _, m in sent if m.a == DECODE]
    assert len(prefills) == 10 and all(m.ints.shape[0] == 1 for m in prefills)
    assert all(1 <= m.ints.shape[0] <= 3 and m.b in (0, 1) for m in decodes)  # micro-batches of at most 3 seats, 2 slots
    steps = sum(r["output_tokens"] - 1 for r in done)
    assert sum(m.ints.shape[0] for m in decodes) == steps  # one row per token after the first
    # A decode row feeds the request's last token at its position (prompt + tokens so far - 1).
    first = decodes[0].ints[0].tolist()
    rec = next(r for r in done if r["rid"] == first[0])
    assert first[1] == rec["prompt_tokens"] and first[2] == rec["tokens"][0]


def test_requests_are_shared_over_pipelines_by_weighted_round_robin():
    pick = weighted_round_robin([0.75, 0.25])
    assert [pick() for _ in range(8)] == [0, 0, 1, 0, 0, 0, 1, 0]
    reqs = [RequestSpec(i, [5], 1, 0.0) for i in range(8)]
    _, sent, done = serve(reqs, [PipelineSpec(1, 2, 1, 0.75), PipelineSpec(2, 2, 1, 0.25)])
    assert sorted(rank for rank, _ in sent) == [1] * 6 + [2] * 2
    assert {r["pipeline"] for r in done} == {0, 1}


def test_a_pass_that_never_comes_back_is_a_fault():
    with pytest.raises(RuntimeFault, match="did not come back within 0.5 s"):
        serve([RequestSpec(0, [1], 3, 0.0)], [PipelineSpec(1, 1, 1, 1.0)], answer=False)


def test_a_slowed_down_device_is_held_that_many_times_its_computation():
    clock = DeviceClock(slowdown=3.0)
    t = time.perf_counter()
    with clock.hold() as busy:
        sum(i * i for i in range(300_000))
    held = time.perf_counter() - t
    assert busy.cpu_s > 0 and held >= 0.99 * busy.cpu_s  # cpu_s counts the computation 3 times
    assert busy.wall_s == pytest.approx(held, rel=0.2)
    with pytest.raises(ValueError, match="slower than this machine only"):
        DeviceClock(0.5)


def test_a_stage_waiting_for_remote_experts_lets_the_expert_server_use_the_device():
    clock = DeviceClock()
    order = []

    def other():
        with clock.hold():
            order.append("expert call served")

    with clock.hold() as busy:
        with clock.released():
            th = threading.Thread(target=other)
            th.start()
            th.join(2)
        order.append("stage resumed")
    assert order == ["expert call served", "stage resumed"] and busy.wait_s > 0
