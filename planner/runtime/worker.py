"""One runtime process: the device ``devices[rank]`` of a plan (see :mod:`planner.runtime.topology`).

Steps: join the process group (gloo on the CPU, the ``init_method`` given, or ``env://`` under
torchrun); build the planned model of the device's pipeline (:func:`planner.executor.apply_plan`
with this process's :class:`~planner.runtime.stage.DistributedExperts`) and keep what the device
runs: its stage, the experts it holds for other stages; open the channels
(:class:`~planner.runtime.transport.Transport`, one process group per direction); warm up (every
computation once, locally); wait for every process (a barrier: run second 0); serve (the stage and
expert threads, and on the origin the scheduler) until the scheduler has every request and sends
``STOP``; gather every process's measurements on rank 0; exit.

A fault (a channel that breaks or goes silent, a pass or an expert call that does not come back)
is reported to the launcher (``report("fault", ...)``) and the process then waits to be ended:
the launcher ends every process of the run, re-plans and starts a new run. Under torchrun, where
no launcher holds the requests, the process prints the fault and exits with code 3.

Under torchrun: ``torchrun --nproc-per-node N -m planner.runtime.worker INSTANCE PLAN [options]``
(see docs/runtime.md; ``python -m planner.runtime.worker --help``).
"""

from __future__ import annotations

import datetime
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

from planner.domain.instance import Instance
from planner.domain.plan import Plan
from planner.runtime.scheduler import PipelineSpec, RequestSpec, Scheduler
from planner.runtime.topology import Topology, topology
from planner.runtime.transport import DelayQueue, Transport, emulated_links
from planner.runtime.wire import DECODE, EXPERT_CALL, EXPERT_REPLY, PASS, PREFILL, RESULT, STOP, Message

FAULT_EXIT_CODE = 3


@dataclass
class WorkerSpec:
    """Everything one process needs (picklable: the launcher hands it to each process).

    ``codecs``: :func:`planner.runtime.inputs.prepare` arrays (None: rank 0 fits them and sends
    them to the others). ``requests`` and ``run_t0`` (monotonic time of run second 0, None: this
    run's own start) matter on rank 0 only. ``slowdown``: device -> factor (see
    :mod:`planner.runtime.device`). ``series``: ``{(a, b): bytes/s per second}`` overriding links'
    bandwidth series; ``link_down``: ``{(a, b): run seconds}`` injected link drops.
    """

    rank: int
    devices: tuple[str, ...]
    instance: Instance
    plan: dict
    model: str = "reference"
    init_method: str = "env://"
    threads: int = 1
    slowdown: dict = field(default_factory=dict)
    timeout_s: float = 10.0
    heartbeat_s: float = 1.0
    codecs: dict | None = None
    codec_steps: int = 0
    calibration: object = None  # token ids [N, S] to fit group gates on (None: this process reads them if it needs them)
    requests: list = field(default_factory=list)
    run_t0: float | None = None
    series: dict = field(default_factory=dict)
    link_down: dict = field(default_factory=dict)
    emulate_links: bool = True
    shared_clock: bool = True
    record_logits: bool = False
    launcher_pid: int | None = None


class _Broken(Exception):
    pass


def _watch_launcher(pid: int) -> None:
    """End this process when the launcher is gone (so that no process outlives it)."""
    while True:
        time.sleep(0.5)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            os._exit(FAULT_EXIT_CODE)
        except PermissionError:
            pass


class Worker:
    def __init__(self, spec: WorkerSpec, report: Callable[[str, object], None]):
        import torch

        self.spec = spec
        self.report = report
        self.rank = spec.rank
        self.topo: Topology = topology(spec.instance, Plan.from_dict(spec.plan), list(spec.devices))
        self.me = self.topo.devices[self.rank]
        self.plan = Plan.from_dict(spec.plan)
        self.broken = threading.Event()
        self.fault_info: dict | None = None
        self._fault_lock = threading.Lock()
        self.stage_inbox, self.expert_inbox, self.replies, self.sched_inbox = DelayQueue(), DelayQueue(), DelayQueue(), DelayQueue()
        torch.set_num_threads(spec.threads)

    # ----- faults -----------------------------------------------------------------------------
    def fault(self, kind: str, detail: str, peer: int | None = None) -> None:
        with self._fault_lock:
            if self.fault_info is not None:
                return
            self.fault_info = {"device": self.me, "kind": kind, "detail": detail,
                               "peer": self.topo.devices[peer] if peer is not None else None, "at_s": time.monotonic()}
        self.report("fault", self.fault_info)
        self.broken.set()

    def _thread(self, fn: Callable[[], None], name: str) -> threading.Thread:
        from planner.runtime.stage import RuntimeFault

        def body():
            try:
                fn()
            except RuntimeFault as exc:
                self.fault("timeout", str(exc))
            except Exception:
                self.fault("error", traceback.format_exc())

        t = threading.Thread(target=body, name=name, daemon=True)
        t.start()
        return t

    # ----- building ---------------------------------------------------------------------------
    def build(self) -> None:
        import torch
        from transformers.utils import logging as hf_logging

        from planner.executor.apply import apply_plan
        from planner.executor.codec import LowRankCodec
        from planner.runtime.device import DeviceClock
        from planner.runtime.inputs import calibration_ids, codecs_from_arrays, load_model, prepare
        from planner.runtime.kv import check_batchable
        from planner.runtime.stage import DistributedExperts

        hf_logging.disable_progress_bar()
        spec, inst = self.spec, self.spec.instance
        model = load_model(spec.model, inst)
        vocab = int(model.config.vocab_size)
        codecs = spec.codecs
        if codecs is None:
            # One fit for every process: rank 0 fits, the others receive its arrays.
            import torch.distributed as dist

            box = [prepare(model, inst, self.plan, calibration_ids(vocab), spec.codec_steps) if self.rank == 0 else None]
            dist.broadcast_object_list(box, src=0)
            codecs = box[0]
        self.device = DeviceClock(float(spec.slowdown.get(self.me, 1.0)))
        self.remote = DistributedExperts()
        self.stage = self.experts = None
        p = self.topo.pipeline_of.get(self.me)
        if p is not None:
            # Calibration text is read only for what the codecs handed over leave to fit: group gates.
            calibration = spec.calibration
            if calibration is None and any(getattr(self.plan.pipelines[p], "group_gate", ()) or ()):
                calibration = calibration_ids(vocab)
            planned = apply_plan(model, inst, self.plan, pipeline=p, codecs=codecs_from_arrays(codecs.get(p, {})),
                                 remote=self.remote, calibration_ids=None if calibration is None else torch.from_numpy(calibration))
            if self.me in self.topo.stages:
                from planner.runtime.stage import StageRole

                _, i = self.topo.stages[self.me]
                runner = planned.stages[i]
                check_batchable(model.config, range(runner.first_layer, runner.end_layer))
                pipe = self.plan.pipelines[p]
                last = i == len(pipe.stages) - 1
                codec_in = planned.codecs[i - 1] if i > 0 and isinstance(planned.codecs[i - 1], LowRankCodec) else None
                codec_out = planned.codecs[i] if not last and isinstance(planned.codecs[i], LowRankCodec) else None
                self.stage = StageRole(runner, codec_in=codec_in, codec_out=codec_out,
                                       next_rank=None if last else self.topo.rank(pipe.stages[i + 1].device), origin_rank=0,
                                       send=self.send, device=self.device, remote=self.remote, inbox=self.stage_inbox,
                                       record_logits=spec.record_logits)
            shards = self.remote.shards_of(self.me)
            if shards:
                from planner.runtime.stage import ExpertRole

                self.experts = ExpertRole(shards, send=self.send, device=self.device, inbox=self.expert_inbox)
        self.hidden_size = int(model.config.hidden_size)
        self.vocab = vocab

    def warm_up(self) -> None:
        """Every computation of this device once, locally (the first calls of a process are slow)."""
        import torch

        w = self.spec.instance.workload
        if self.stage is not None:
            st = self.stage
            b = max(p.micro_batch_size for p in self.plan.pipelines)
            p_len = max(1, min(w.prompt_tokens, 64))
            for r in range(1, b + 1):
                ints = torch.tensor([[-r, 0] + [1] * p_len]) if st.first else torch.tensor([[-r, 0]])
                width = st.codec_in.rank if st.codec_in is not None else self.hidden_size
                floats = None if st.first else torch.zeros(1, p_len, width)
                st.forward(PREFILL, -1, ints, floats)
            rows = list(range(-1, -b - 1, -1))
            for step in range(2):
                ints = torch.tensor([[r, p_len + step] + ([1] if st.first else []) for r in rows])
                width = st.codec_in.rank if st.codec_in is not None else self.hidden_size
                floats = None if st.first else torch.zeros(b, 1, width)
                y, _ = st.forward(DECODE, -1, ints, floats)
                if st.codec_out is not None:
                    st.codec_out.encode(y)
            st.slots.clear()
            st.joining.clear()
            st.runner._timings.enabled = True
        if self.experts is not None:
            with torch.no_grad():
                for shard in self.experts.shards.values():
                    ids = torch.tensor([[shard.expert_ids[0], -1]] * 4)
                    shard(torch.zeros(4, self.hidden_size), ids, torch.ones(4, 2))

    # ----- messages ---------------------------------------------------------------------------
    def send(self, dst: int, msg: Message) -> None:
        if dst == self.rank:
            self.deliver(self.rank, msg, time.monotonic())
        else:
            self.transport.send(dst, msg)

    def deliver(self, src: int, msg: Message, due: float) -> None:
        if msg.kind == PASS:
            self.stage_inbox.put((src, msg), due)
        elif msg.kind == EXPERT_CALL:
            self.expert_inbox.put((src, msg), due)
        elif msg.kind == EXPERT_REPLY:
            self.replies.put((src, msg), due)
        elif msg.kind == RESULT:
            self.sched_inbox.put((src, msg), due)
        elif msg.kind == STOP:
            self.stage_inbox.put((src, msg), due)
            self.expert_inbox.put((src, msg), due)

    # ----- running ----------------------------------------------------------------------------
    def run(self) -> dict | None:
        """Serve until done; returns every process's measurements on rank 0 (None elsewhere).
        Raises :class:`_Broken` after a fault."""
        import torch.distributed as dist

        spec = self.spec
        self.build()
        links = {}
        if spec.emulate_links:
            from planner.cost.network import Network

            pairs = emulated_links(self.topo.devices, Network(spec.instance).route,
                                   series={frozenset(k): v for k, v in spec.series.items()},
                                   down={frozenset(k): v for k, v in spec.link_down.items()})
            links = {j: link for (i, j), link in pairs.items() if i == self.rank}
        self.transport = Transport(self.rank, self.topo.world, links, timeout_s=spec.timeout_s, heartbeat_s=spec.heartbeat_s,
                                   deliver=self.deliver, on_fault=lambda peer, kind, detail: self.fault(kind, detail, peer),
                                   shared_clock=spec.shared_clock)
        self.transport.create_groups()
        self.warm_up()
        # Answers and passes get twice the channel timeout: a silent channel is reported first, by
        # its receiver, which names the link.
        self.remote.bind({d: r for r, d in enumerate(self.topo.devices)}, self.send, self.replies, self.device, 2 * spec.timeout_s)
        dist.barrier()
        t0 = time.monotonic()
        self.transport.start(t0)
        self.report("ready", {"t0": t0, "device": self.me})
        threads = []
        if self.stage is not None:
            threads.append(self._thread(self.stage.run, "stage"))
        if self.experts is not None:
            threads.append(self._thread(self.experts.run, "experts"))
        done: list[dict] = []
        self.scheduler = None
        if self.rank == 0:
            pipes = [PipelineSpec(self.topo.rank(p.stages[0].device), p.micro_batch_size, p.num_micro_batches, p.request_share)
                     for p in self.plan.pipelines]
            base = spec.run_t0 if spec.run_t0 is not None else t0
            self.scheduler = Scheduler([RequestSpec(**r) if isinstance(r, dict) else r for r in spec.requests], pipes,
                                       send=self.send, inbox=self.sched_inbox, t0=base, timeout_s=2 * spec.timeout_s,
                                       on_done=lambda rec: (done.append(rec), self.report("done", rec)))

            def serve():
                self.scheduler.run()
                for r in range(self.topo.world):
                    self.send(r, Message(STOP))

            threads.append(self._thread(serve, "scheduler"))
        while any(t.is_alive() for t in threads):
            if self.broken.wait(0.05):
                raise _Broken
        if self.broken.is_set():
            raise _Broken
        stats = self.stats(t0, done)
        gathered = [None] * self.topo.world if self.rank == 0 else None
        dist.gather_object(stats, gathered, dst=0)
        dist.barrier()
        self.transport.close()
        return gathered

    def stats(self, t0: float, done: list[dict]) -> dict:
        import torch

        logits = None
        if self.stage is not None and self.stage.logits is not None:
            logits = {r: torch.stack(rows).numpy() for r, rows in self.stage.logits.items()}
        names = self.topo.devices
        return {
            "rank": self.rank, "device": self.me, "t0": t0, "slowdown": self.device.slowdown,
            "stage": self.stage.records if self.stage is not None else [],
            "stage_index": self.topo.stages.get(self.me),
            "experts": self.experts.records if self.experts is not None else [],
            "channels": {names[p]: {"messages": c.messages, "bytes": c.bytes, "hold_s": c.hold_s, "transfer_s": c.transfer_s,
                                    "heartbeats": c.heartbeats, "samples": c.samples}
                         for p, c in self.transport.stats.items()},
            "link_busy_s": {f"{a}<->{b}": s for (a, b), s in self.transport.link_busy_s.items()},
            "passes": list(self.scheduler.passes.values()) if self.scheduler is not None else [],
            "requests": done,
            "logits": logits,
        }


def serve(spec: WorkerSpec, report: Callable[[str, object], None]) -> dict | None:
    """Join the process group and run ``spec``'s device (see the module docstring)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=spec.init_method, rank=spec.rank, world_size=len(spec.devices),
                            timeout=datetime.timedelta(seconds=max(30.0, 3 * spec.timeout_s)))
    return Worker(spec, report).run()


def process_main(spec: WorkerSpec, conn) -> None:
    """Entry of a process the local launcher starts: reports go to the launcher through ``conn``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the launcher's to handle: it ends every process
    if os.path.exists("/sys/class/net/lo"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # one machine: gloo on the loopback interface only
    if spec.launcher_pid is not None:
        threading.Thread(target=_watch_launcher, args=(spec.launcher_pid,), daemon=True).start()
    lock = threading.Lock()

    def report(kind: str, payload) -> None:
        with lock:
            conn.send((kind, spec.rank, payload))

    try:
        gathered = serve(spec, report)
        if spec.rank == 0:
            report("stats", gathered)
        conn.close()
        os._exit(0)
    except _Broken:
        # The launcher ends this process (and every other of the run) once it has decided.
        time.sleep(3600)
        os._exit(FAULT_EXIT_CODE)
    except BaseException:
        report("error", traceback.format_exc())
        os._exit(1)


def main(argv: list[str] | None = None) -> int:
    """``torchrun ... -m planner.runtime.worker INSTANCE PLAN``: one rank of a run (see the module docstring)."""
    import argparse
    import json

    from planner.runtime import report as rreport
    from planner.runtime.inputs import load_model, make_requests

    p = argparse.ArgumentParser(prog="python -m planner.runtime.worker",
                                description="one process of a moeplan run under torchrun (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT)")
    p.add_argument("instance")
    p.add_argument("plan")
    p.add_argument("--model", default="reference")
    p.add_argument("--requests", type=int, default=8)
    p.add_argument("--burst", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--fault-timeout", type=float, default=10.0)
    p.add_argument("--no-link-emulation", action="store_true", help="real links between hosts: emulate nothing")
    p.add_argument("--compare", action="store_true", help="the cost model's and the simulator's predictions beside the measured")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    from planner import api

    instance = api.load_instance(args.instance)
    plan = Plan.load(args.plan)
    order = os.environ.get("MOEPLAN_DEVICES")
    topo = topology(instance, plan, order.split(",") if order else None)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if world != topo.world:
        print(f"error: the plan needs {topo.world} processes ({', '.join(topo.devices)}), torchrun started {world}", file=sys.stderr)
        return 2
    requests = []
    if rank == 0:
        model = load_model(args.model, instance)
        requests = make_requests(instance, int(model.config.vocab_size), int(model.config.max_position_embeddings),
                                 num_requests=args.requests, burst=args.burst, seed=args.seed)
    spec = WorkerSpec(rank, topo.devices, instance, plan.to_dict(), model=args.model, threads=args.threads,
                      timeout_s=args.fault_timeout, heartbeat_s=args.fault_timeout / 4, requests=requests,
                      emulate_links=not args.no_link_emulation, shared_clock=os.environ.get("MOEPLAN_SHARED_CLOCK") == "1")

    def report(kind: str, payload) -> None:
        if kind in ("fault", "error"):
            print(f"rank {rank} ({topo.devices[rank]}): {kind}: {payload}", file=sys.stderr, flush=True)

    try:
        gathered = serve(spec, report)
    except _Broken:
        os._exit(FAULT_EXIT_CODE)
    if rank == 0:
        from planner.runtime import fidelity

        run = rreport.RunMeasurement.from_stats(gathered, instance, plan)
        compared = fidelity.compare(run, requests) if args.compare else None
        if args.json:
            print(json.dumps({"measured": run.summary(), "fidelity": compared}, indent=2, default=float))
        else:
            print(rreport.measured_table(run))
            if compared is not None:
                print(fidelity.fidelity_table(compared))
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
