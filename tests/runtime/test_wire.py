"""Messages survive the wire format: header, the packed payload, the shapes."""

from __future__ import annotations

import torch

from planner.runtime.wire import EXPERT_CALL, HEADER_BYTES, HEADER_LEN, PASS, STOP, Message


def roundtrip(msg: Message) -> Message:
    header = msg.header()
    assert header.shape == (HEADER_LEN,) and header.dtype == torch.int64
    payload = msg.payload()
    n = Message.payload_bytes(header)
    assert (payload is None and n == 0) or payload.numel() == n
    return Message.from_parts(header, None if payload is None else payload.clone())


def test_a_pass_with_hidden_states_and_ids_comes_back_equal():
    floats = torch.randn(3, 1, 128)
    ints = torch.tensor([[7, 40], [8, 12], [9, 3]])
    msg = Message(PASS, 42, 1, 2, floats=floats, ints=ints, delay_s=0.025, due_s=1234.5)
    back = roundtrip(msg)
    assert (back.kind, back.ident, back.a, back.b) == (PASS, 42, 1, 2)
    assert torch.equal(back.floats, floats) and torch.equal(back.ints, ints)
    assert abs(back.delay_s - 0.025) < 1e-6 and abs(back.due_s - 1234.5) < 1e-6
    assert msg.nbytes == HEADER_BYTES + 3 * 128 * 4 + 6 * 8


def test_ints_only_floats_only_and_header_only_messages():
    ids = torch.tensor([[1, 0, 5, 6, 7]])
    assert torch.equal(roundtrip(Message(PASS, 1, 0, 0, ints=ids)).ints, ids)
    f = torch.randn(4, 130)
    back = roundtrip(Message(EXPERT_CALL, 3, 2, 9, floats=f))
    assert torch.equal(back.floats, f) and back.ints is None
    stop = roundtrip(Message(STOP))
    assert stop.kind == STOP and stop.floats is None and stop.ints is None and Message(STOP).nbytes == HEADER_BYTES
