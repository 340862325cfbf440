"""Continuous batching at the origin: requests into the plan's micro-batches, pipelined.

As in the simulator (:mod:`planner.sim.engine`): each pipeline has ``num_micro_batches`` slots of
``micro_batch_size`` seats; requests go to pipelines by ``request_share`` (smooth weighted round
robin, deterministic), wait in their pipeline's FIFO queue until a seat is free (the slot with the
most free seats, then the lowest index), run their prefill as a pass of their own (its sampled
token is the first: TTFT), join their slot at its next step boundary, get one token per decode
step of the slot, and leave after their last token. A slot's next step starts when its previous
one has returned to the origin; the slots of a pipeline, and the prefills, are in flight together,
so the stages work on several passes at once (pipelining).

The scheduler runs on a thread of the origin's process and does no device work: it sends
``PASS`` messages to each pipeline's first stage and takes the ``RESULT`` messages of the last.
"""

from __future__ import annotations

import itertools
import queue
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from planner.runtime.stage import RuntimeFault
from planner.runtime.transport import DelayQueue
from planner.runtime.wire import DECODE, PASS, PREFILL, RESULT, Message


@dataclass
class RequestSpec:
    """One request: ``prompt`` token ids, ``output_tokens`` to generate, ``arrival_s`` (run seconds)."""

    rid: int
    prompt: list[int]
    output_tokens: int
    arrival_s: float


@dataclass
class PipelineSpec:
    """Where a pipeline's passes go (``first_rank``), its batching and its share of the requests."""

    first_rank: int
    micro_batch_size: int
    num_micro_batches: int
    request_share: float


@dataclass
class _Slot:
    members: list = field(default_factory=list)  # request ids decoding in this slot
    joining: list = field(default_factory=list)  # prefilled, join at the next step
    prefilling: int = 0
    busy: bool = False  # a decode step in flight

    def taken(self) -> int:
        return len(self.members) + len(self.joining) + self.prefilling


@dataclass
class _State:
    spec: RequestSpec
    pipeline: int = -1
    slot: int = -1
    tokens: list = field(default_factory=list)
    admitted_s: float | None = None
    first_token_s: float | None = None
    finish_s: float | None = None


def weighted_round_robin(shares: Sequence[float]) -> Callable[[], int]:
    """The next pipeline for each request: smooth weighted round robin over ``shares`` (deterministic)."""
    current = [0.0] * len(shares)
    total = float(sum(shares))

    def pick() -> int:
        for i, s in enumerate(shares):
            current[i] += s
        best = max(range(len(shares)), key=lambda i: (current[i], -i))
        current[best] -= total
        return best

    return pick


class Scheduler:
    """Serves ``requests`` over ``pipelines``. ``send(rank, message)`` sends a pass; ``inbox`` gets
    ``(src, RESULT message)``; ``on_done(record)`` is called as each request finishes (``record``: its
    id, ``arrival_s``, ``admitted_s``, ``first_token_s``, ``finish_s`` on the monotonic clock,
    ``tokens``, ``pipeline``). ``t0``: monotonic time of run second 0 (arrivals are ``t0 + arrival_s``).
    ``passes``: one dict per pass (``pass_id``, ``phase``, ``pipeline``, ``slot``, ``rows``,
    ``sent_s``, ``returned_s``). Raises :class:`RuntimeFault` when a pass in flight has not come back
    within ``timeout_s``."""

    def __init__(self, requests: Sequence[RequestSpec], pipelines: Sequence[PipelineSpec], *, send: Callable[[int, Message], None],
                 inbox: DelayQueue, on_done: Callable[[dict], None], t0: float, timeout_s: float):
        self.pipes = list(pipelines)
        self.send, self.inbox, self.on_done = send, inbox, on_done
        self.t0, self.timeout_s = t0, timeout_s
        self.states = {r.rid: _State(r) for r in requests}
        self.order = sorted(self.states, key=lambda rid: (self.states[rid].spec.arrival_s, rid))
        self.slots = [[_Slot() for _ in range(p.num_micro_batches)] for p in self.pipes]
        self.queues = [[] for _ in self.pipes]
        self.pick = weighted_round_robin([p.request_share for p in self.pipes])
        self.passes: dict[int, dict] = {}
        self._ids = itertools.count(1)
        self._next = 0
        self._left = len(self.states)

    def run(self) -> None:
        last_progress = time.monotonic()
        while self._left:
            now = time.monotonic()
            self._arrive(now)
            self._admit(now)
            self._step(now)
            wait = self.timeout_s
            if self._next < len(self.order):
                wait = min(wait, max(0.0, self.t0 + self.states[self.order[self._next]].spec.arrival_s - now))
            try:
                _, msg = self.inbox.get(timeout=wait)
            except queue.Empty:
                if any(p["returned_s"] is None for p in self.passes.values()) and time.monotonic() - last_progress > self.timeout_s:
                    late = [p["pass_id"] for p in self.passes.values() if p["returned_s"] is None]
                    raise RuntimeFault(f"passes {late[:5]} did not come back within {self.timeout_s:g} s") from None
                continue
            last_progress = time.monotonic()
            self._result(msg, last_progress)

    def _arrive(self, now: float) -> None:
        while self._next < len(self.order):
            st = self.states[self.order[self._next]]
            if self.t0 + st.spec.arrival_s > now:
                break
            st.pipeline = self.pick()
            self.queues[st.pipeline].append(st.spec.rid)
            self._next += 1

    def _admit(self, now: float) -> None:
        for p, pipe in enumerate(self.pipes):
            q = self.queues[p]
            while q:
                slot = max(range(len(self.slots[p])), key=lambda s: (pipe.micro_batch_size - self.slots[p][s].taken(), -s))
                if self.slots[p][slot].taken() >= pipe.micro_batch_size:
                    break
                st = self.states[q.pop(0)]
                st.slot, st.admitted_s = slot, now
                self.slots[p][slot].prefilling += 1
                prompt = torch.tensor(st.spec.prompt, dtype=torch.long)
                ints = torch.cat([torch.tensor([st.spec.rid, 0]), prompt]).unsqueeze(0)
                self._send_pass(p, slot, PREFILL, ints, now)

    def _step(self, now: float) -> None:
        for p in range(len(self.pipes)):
            for s, slot in enumerate(self.slots[p]):
                if slot.busy or not (slot.members or slot.joining):
                    continue
                slot.members += slot.joining
                slot.joining = []
                rows = []
                for rid in slot.members:
                    st = self.states[rid]
                    rows.append([rid, len(st.spec.prompt) + len(st.tokens) - 1, st.tokens[-1]])
                slot.busy = True
                self._send_pass(p, s, DECODE, torch.tensor(rows, dtype=torch.long), now)

    def _send_pass(self, p: int, slot: int, phase: int, ints: torch.Tensor, now: float) -> None:
        pid = next(self._ids)
        self.passes[pid] = {"pass_id": pid, "phase": "prefill" if phase == PREFILL else "decode", "pipeline": p, "slot": slot,
                            "rows": int(ints.shape[0]), "sent_s": now, "returned_s": None}
        self.send(self.pipes[p].first_rank, Message(PASS, pid, phase, slot, ints=ints))

    def _result(self, msg: Message, now: float) -> None:
        if msg.kind != RESULT:
            raise ValueError(f"the scheduler got a message of kind {msg.kind}")
        record = self.passes[msg.ident]
        record["returned_s"] = now
        slot = self.slots[record["pipeline"]][msg.b]
        for rid, token in msg.ints.tolist():
            st = self.states[rid]
            st.tokens.append(int(token))
            if msg.a == PREFILL:
                st.first_token_s = now
                slot.prefilling -= 1
                if len(st.tokens) < st.spec.output_tokens:
                    slot.joining.append(rid)
            if len(st.tokens) >= st.spec.output_tokens:
                if rid in slot.members:
                    slot.members.remove(rid)
                self._finish(st, now)
        if msg.a == DECODE:
            slot.busy = False

    def _finish(self, st: _State, now: float) -> None:
        st.finish_s = now
        self._left -= 1
        self.on_done({"rid": st.spec.rid, "arrival_s": self.t0 + st.spec.arrival_s, "admitted_s": st.admitted_s,
                      "first_token_s": st.first_token_s, "finish_s": now, "tokens": list(st.tokens),
                      "prompt_tokens": len(st.spec.prompt), "output_tokens": st.spec.output_tokens, "pipeline": st.pipeline})
