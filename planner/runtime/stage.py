"""The work of one runtime process: its stage of the pipeline and the experts it holds for others.

:class:`StageRole` runs one :class:`~planner.executor.stages.StageRunner` on the passes that reach
it (a request's prefill, or a decode step of a micro-batch): it decodes the codec latents that
arrive (if the cut before it has a codec), runs its layers with the pass's KV caches
(:mod:`planner.runtime.kv`), and encodes and sends the hidden states on, or, on the last stage,
samples the next tokens (greedy) and sends them to the origin. :class:`ExpertRole` serves the
expert calls other stages send to the experts this device holds. :class:`DistributedExperts` is the
executor's remote-experts seam made of messages: a call to another device's experts is an
``EXPERT_CALL`` whose reply the stage collects after running its local experts
(:class:`~planner.executor.placed.PendingExperts`), with the device released while it waits.
"""

from __future__ import annotations

import itertools
import queue
import time
from collections.abc import Callable

import torch
from transformers import DynamicCache

from planner.executor.codec import LowRankCodec
from planner.executor.placed import ExpertShard, InProcessExperts
from planner.executor.stages import StageRunner
from planner.runtime.device import DeviceClock
from planner.runtime.kv import SlotCache
from planner.runtime.transport import DelayQueue
from planner.runtime.wire import DECODE, EXPERT_CALL, EXPERT_REPLY, PASS, PREFILL, RESULT, STOP, Message


class RuntimeFault(RuntimeError):
    """Something another process should have sent did not come in time."""


class DistributedExperts(InProcessExperts):
    """Remote experts over the transport. Before :meth:`bind` (while the planned model is built and
    warmed up) it serves every holder in this process, like :class:`InProcessExperts`, whose shards
    it collects; :meth:`shards_of` then hands this device's own to its :class:`ExpertRole`."""

    def __init__(self):
        super().__init__()
        self._bound = False
        self.pass_id = 0

    def bind(self, rank_of: dict[str, int], send: Callable[[int, Message], None], replies: DelayQueue,
             device: DeviceClock, timeout_s: float) -> None:
        self._rank_of, self._send, self._replies, self._device, self._timeout = rank_of, send, replies, device, timeout_s
        self._calls = itertools.count(1)
        self._got: dict[int, torch.Tensor] = {}
        self.calls_sent = 0
        self._bound = True

    def shards_of(self, device: str) -> dict[int, ExpertShard]:
        """Layer -> the shard ``device`` holds for a stage on another device."""
        prefix = f"{device}|"
        return {shard.layer: shard for key, shard in self.shards.items() if key.startswith(prefix)}

    def __call__(self, device: str, layer: int, hidden: torch.Tensor, expert_ids: torch.Tensor, weights: torch.Tensor):
        if not self._bound:
            return super().__call__(device, layer, hidden, expert_ids, weights)
        call = next(self._calls)
        floats = torch.cat([hidden.float(), weights.float()], dim=1)
        self._send(self._rank_of[device], Message(EXPERT_CALL, call, layer, self.pass_id, floats=floats, ints=expert_ids.long()))
        self.calls_sent += 1
        return _Pending(self, call, device)

    def wait(self, call: int, device: str) -> torch.Tensor:
        with self._device.released():
            while call not in self._got:
                try:
                    _, msg = self._replies.get(timeout=self._timeout)
                except queue.Empty:
                    raise RuntimeFault(f"no answer from the experts on {device!r} within {self._timeout:g} s") from None
                self._got[msg.ident] = msg.floats
        return self._got.pop(call)


class _Pending:
    def __init__(self, owner: DistributedExperts, call: int, device: str):
        self.owner, self.call, self.device = owner, call, device

    def result(self) -> torch.Tensor:
        return self.owner.wait(self.call, self.device)


class StageRole:
    """Stage ``index`` of a pipeline on this process. ``send(rank, message)``; ``next_rank`` is the
    next stage's process (None on the last stage, which sends its results to ``origin_rank``).

    ``records``: one dict per pass: ``pass_id``, ``phase`` (``prefill``/``decode``), ``slot``, ``rows``,
    ``tokens`` (per row), ``context`` (mean cached tokens per row before the pass), ``cpu_s``,
    ``wall_s`` (device time, see :class:`~planner.runtime.device.DeviceClock`), ``wait_s`` (for remote
    experts), ``layers_s`` and ``experts_s`` (wall seconds in the decoder layers and in their routed
    experts, waits for remote experts included, as the executor's ``Timings`` split them; without
    the slowdown), ``start_s``/``end_s`` (monotonic). ``logits`` (with ``record_logits``): request id ->
    logits [V] of every token it sampled here, in order.
    """

    def __init__(self, runner: StageRunner, *, codec_in: LowRankCodec | None, codec_out: LowRankCodec | None,
                 next_rank: int | None, origin_rank: int, send: Callable[[int, Message], None], device: DeviceClock,
                 remote: DistributedExperts | None, inbox: DelayQueue, record_logits: bool = False):
        self.runner = runner
        self.first = runner.embed is not None
        self.last = runner.lm_head is not None
        self.layers = range(runner.first_layer, runner.end_layer)
        self.codec_in, self.codec_out = codec_in, codec_out
        self.next_rank, self.origin_rank = next_rank, origin_rank
        self.send, self.device, self.remote, self.inbox = send, device, remote, inbox
        self.slots: dict[int, SlotCache] = {}
        self.joining: dict[int, DynamicCache] = {}  # request id -> prefill cache not yet in its slot
        self.records: list[dict] = []
        self.logits: dict[int, list] = {} if record_logits else None

    def run(self) -> None:
        while True:
            _, msg = self.inbox.get()
            if msg.kind == STOP:
                return
            self.handle(msg)

    @torch.no_grad()
    def forward(self, phase: int, slot: int, ints: torch.Tensor, floats: torch.Tensor | None) -> tuple[torch.Tensor, float]:
        """The stage's output for one pass (hidden states [n, S, H], or logits on the last stage) and
        the mean context of its rows."""
        rows = ints[:, 0].tolist()
        if self.first:
            x = ints[:, 2:]
        else:
            x = self.codec_in.decode(floats) if self.codec_in is not None else floats
        if phase == PREFILL:
            if len(rows) != 1:
                raise ValueError(f"a prefill pass carries one request, got {len(rows)}")
            cache = DynamicCache(config=self.runner.config)
            self.runner.cache = cache
            positions = torch.arange(x.shape[1]).unsqueeze(0) + int(ints[0, 1])
            y = self.runner(x, None, positions, True)
            self.joining[rows[0]] = cache
            return y, 0.0
        kv = self.slots.get(slot)
        if kv is None:
            kv = self.slots[slot] = SlotCache(self.runner.config, self.layers)
        kv.arrange(rows, self.joining)
        positions = kv.positions()
        if not torch.equal(positions.squeeze(1), ints[:, 1]):
            raise RuntimeError(f"slot {slot}: the scheduler's positions {ints[:, 1].tolist()} are not the cached "
                               f"lengths {positions.squeeze(1).tolist()}")
        context = float(kv.lengths.float().mean())
        self.runner.cache = kv.cache
        y = self.runner(x, kv.mask(), positions, True)
        kv.advance()
        return y, context

    def handle(self, msg: Message) -> None:
        if msg.kind != PASS:
            raise ValueError(f"stage got a message of kind {msg.kind}")
        start = time.monotonic()
        timings = self.runner._timings  # the executor's per-layer split (the worker enables it)
        before = (sum(timings.layer_s.values()), sum(timings.routed_experts_s.values()))
        with self.device.hold() as busy:
            if self.remote is not None:
                self.remote.pass_id = msg.ident
            y, context = self.forward(msg.a, msg.b, msg.ints, msg.floats)
            if self.last:
                logits = y[:, -1].float()
                tokens = logits.argmax(dim=-1)
                out = Message(RESULT, msg.ident, msg.a, msg.b, ints=torch.stack([msg.ints[:, 0], tokens], dim=1))
                if self.logits is not None:
                    for r, row in zip(msg.ints[:, 0].tolist(), logits):
                        self.logits.setdefault(r, []).append(row.clone())
            else:
                z = self.codec_out.encode(y) if self.codec_out is not None else y
                out = Message(PASS, msg.ident, msg.a, msg.b, floats=z.float().contiguous(), ints=msg.ints[:, :2].contiguous())
        self.send(self.origin_rank if self.last else self.next_rank, out)
        n, s = msg.ints.shape[0], (msg.floats.shape[1] if msg.floats is not None else msg.ints.shape[1] - 2)
        self.records.append({"pass_id": msg.ident, "phase": "prefill" if msg.a == PREFILL else "decode", "slot": msg.b,
                             "rows": n, "tokens": s, "context": context if msg.a == DECODE else s / 2.0,
                             "cpu_s": busy.cpu_s, "wall_s": busy.wall_s, "wait_s": busy.wait_s,
                             "layers_s": sum(timings.layer_s.values()) - before[0],
                             "experts_s": sum(timings.routed_experts_s.values()) - before[1],
                             "start_s": start, "end_s": time.monotonic()})


class ExpertRole:
    """Serves ``EXPERT_CALL`` messages with ``shards`` (layer -> this device's shard of that layer),
    replying to the caller. ``records``: per call ``pass_id``, ``layer``, ``rows``, ``cpu_s``, ``wall_s``."""

    def __init__(self, shards: dict[int, ExpertShard], *, send: Callable[[int, Message], None], device: DeviceClock,
                 inbox: DelayQueue):
        self.shards, self.send, self.device, self.inbox = shards, send, device, inbox
        self.records: list[dict] = []

    def run(self) -> None:
        while True:
            src, msg = self.inbox.get()
            if msg.kind == STOP:
                return
            if msg.kind != EXPERT_CALL:
                raise ValueError(f"expert server got a message of kind {msg.kind}")
            k = msg.ints.shape[1]
            hidden, weights = msg.floats[:, :-k], msg.floats[:, -k:]
            with torch.no_grad(), self.device.hold() as busy:
                out = self.shards[msg.a](hidden, msg.ints, weights)
            self.send(src, Message(EXPERT_REPLY, msg.ident, msg.a, msg.b, floats=out.float().contiguous()))
            self.records.append({"pass_id": msg.b, "layer": msg.a, "rows": int(hidden.shape[0]),
                                 "cpu_s": busy.cpu_s, "wall_s": busy.wall_s})
