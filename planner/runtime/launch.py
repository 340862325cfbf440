"""The local launcher: one process per device with torch.multiprocessing, faults survived by re-planning.

:func:`run` starts the processes of a plan (:mod:`planner.runtime.worker`), watches them, and
keeps the ledger of requests: every finished request is reported to it as it finishes. When a
process dies, or a process reports a fault (a channel closed or silent for ``timeout_s``, a pass
or an expert call that did not come back), the launcher waits ``FAULT_GRACE_S`` for the rest of
the story (which process died, which peers noticed), ends every process of the run, and decides:

* a process that died: its device is lost (``changed_instance(drop_device=...)``);
* no process died, a channel went silent: the link between the two devices is lost (the instance
  without it, and without any device that no longer reaches the origin);
* anything else (an error in the code): the run ends, the unfinished requests are reported with it.

It asks :func:`planner.planners.replan.replan` for a plan over what is left and starts a new run of
it with every request that had not finished (in flight or queued: they start over, their KV
caches are gone), keeping their arrival times, so that their latency counts the outage. Every
request finishes or is reported with its reason (``RunResult.outcomes``). The processes of a run
never outlive it: they are ended on every way out (done, fault, timeout, Ctrl-C, an exception),
ignore Ctrl-C themselves, and end on their own if the launcher disappears.
"""

from __future__ import annotations

import math
import multiprocessing.connection as mpc
import os
import signal
import tempfile
import time
from dataclasses import dataclass, field

from planner.domain.changes import changed_instance, without_link
from planner.domain.instance import Instance
from planner.domain.plan import Plan
from planner.planners.replan import replan
from planner.runtime.scheduler import RequestSpec
from planner.runtime.topology import oversubscription, topology
from planner.runtime.worker import WorkerSpec, process_main

FAULT_GRACE_S = 0.5  # after the first sign of a fault, how long to collect the others
STARTUP_TIMEOUT_S = 180.0
PRELOAD = ["torch", "transformers", "planner.runtime.worker", "planner.runtime.stage", "planner.executor.apply"]


@dataclass
class RunOptions:
    """How to run (see ``moeplan run --help``). ``kill``: device -> run second at which the launcher
    kills its process (fault injection); ``link_down``: ``{(a, b): run second}`` links that stop
    delivering; ``series``: ``{(a, b): bytes/s per second}`` bandwidth series."""

    model: str = "reference"
    model_module: str | None = None  # the model class's module, preloaded by the fork server
    calibration: object = None  # token ids [N, S] for group gates (see WorkerSpec)
    threads: int = 1
    slowdown: dict = field(default_factory=dict)
    timeout_s: float = 10.0
    series: dict = field(default_factory=dict)
    link_down: dict = field(default_factory=dict)
    kill: dict = field(default_factory=dict)
    emulate_links: bool = True
    record_logits: bool = False
    codec_steps: int = 0
    run_timeout_s: float = 600.0
    max_restarts: int = 3
    start_method: str = "forkserver"


@dataclass
class Generation:
    """One run of one plan: its processes' devices and process ids, run second 0 (``t0``, monotonic), the
    measurements gathered at its end (``stats``, per rank; None if it did not end normally), the
    requests it finished, and the fault that ended it (None: it finished its requests)."""

    plan: Plan
    instance: Instance
    devices: tuple[str, ...]
    pids: list = field(default_factory=list)
    t0: float | None = None
    started_s: float = 0.0
    ended_s: float = 0.0
    stats: list | None = None
    done: list = field(default_factory=list)
    fault: dict | None = None
    replan: dict | None = None


@dataclass
class RunResult:
    """``outcomes[rid]``: ``{"status": "finished" | "failed", "reason", "record", "attempts"}``
    (``attempts``: runs that broke after the request had arrived, so that it started over);
    ``run_t0``: monotonic time of run second 0 (the first generation's)."""

    requests: list[RequestSpec]
    outcomes: dict
    generations: list[Generation]
    run_t0: float | None
    interrupted: bool = False

    @property
    def finished(self) -> list[dict]:
        return [o["record"] for o in self.outcomes.values() if o["status"] == "finished"]

    @property
    def failed(self) -> dict:
        return {rid: o["reason"] for rid, o in self.outcomes.items() if o["status"] != "finished"}


def _context(method: str, preload: list[str]):
    import torch.multiprocessing as tmp

    ctx = tmp.get_context(method)
    if method == "forkserver":
        # Processes fork from a server that imported torch, the runtime and the model's modeling
        # code once: a start then costs a fork instead of seconds of imports (the first run of a
        # launcher starts the server; later runs of the same launcher reuse it).
        ctx.set_forkserver_preload(PRELOAD + preload)
    return ctx


def _end(procs) -> None:
    """End every process still alive (SIGKILL: they hold nothing that needs cleaning up) and reap them."""
    for p in procs:
        if p.is_alive():
            p.kill()
    for p in procs:
        p.join(5.0)


def _generation(instance: Instance, plan: Plan, pending: list[RequestSpec], codecs: dict, run_t0: float | None,
                options: RunOptions, log, deadline: float) -> Generation:
    topo = topology(instance, plan)
    gen = Generation(plan, instance, topo.devices, started_s=time.monotonic())
    ctx = _context(options.start_method, [options.model_module] if options.model_module else [])
    # The processes meet through a file (no listening socket for the rendezvous) and gloo talks over
    # the loopback interface only.
    store = tempfile.TemporaryDirectory(prefix="moeplan-run-")
    init = f"file://{store.name}/store"
    procs, readers = [], {}
    try:
        for rank in range(topo.world):
            spec = WorkerSpec(rank, topo.devices, instance, plan.to_dict(), model=options.model, init_method=init,
                              threads=options.threads, slowdown=options.slowdown, timeout_s=options.timeout_s,
                              heartbeat_s=options.timeout_s / 4.0, codecs=codecs, calibration=options.calibration,
                              requests=pending if rank == 0 else [],
                              run_t0=run_t0, series=options.series, link_down=options.link_down,
                              emulate_links=options.emulate_links, record_logits=options.record_logits,
                              launcher_pid=os.getpid())
            reader, writer = ctx.Pipe(duplex=False)
            p = ctx.Process(target=process_main, args=(spec, writer), name=f"moeplan-{topo.devices[rank]}")
            p.start()
            writer.close()
            procs.append(p)
            gen.pids.append(p.pid)
            readers[reader] = rank
        _watch(gen, procs, readers, options, log, deadline)
    finally:
        _end(procs)
        for r in readers:
            r.close()
        store.cleanup()
    gen.ended_s = time.monotonic()
    return gen


def _watch(gen: Generation, procs, readers: dict, options: RunOptions, log, deadline: float) -> None:
    """Follow one generation's processes until it finishes or breaks (fills ``gen``)."""
    names = gen.devices
    ready, killed, faults, deaths = set(), {}, [], []
    first_sign = stats_at = None
    startup_end = time.monotonic() + STARTUP_TIMEOUT_S
    open_readers = dict(readers)
    while True:
        now = time.monotonic()
        if gen.t0 is not None:
            for dev, at in options.kill.items():
                if dev in names and dev not in killed and now >= gen.t0 + at:
                    p = procs[names.index(dev)]
                    if p.is_alive():
                        os.kill(p.pid, signal.SIGKILL)
                        killed[dev] = now
                        log(f"fault injection: killed the process of {dev} (pid {p.pid}) at run second {now - gen.t0:.2f}")
        for conn in mpc.wait(list(open_readers) + [p.sentinel for p in procs], timeout=0.05):
            if conn not in open_readers:
                continue
            try:
                kind, rank, payload = conn.recv()
            except (EOFError, OSError):
                del open_readers[conn]
                continue
            if kind == "ready":
                ready.add(rank)
                if rank == 0:
                    gen.t0 = payload["t0"]
                if len(ready) == len(procs):
                    log("processes ready: " + ", ".join(f"{d} (pid {p.pid})" for d, p in zip(names, procs)))
            elif kind == "done":
                gen.done.append(payload)
            elif kind == "stats":
                gen.stats = payload
            elif kind in ("fault", "error"):
                info = payload if kind == "fault" else {"device": names[rank], "kind": "error", "detail": payload, "peer": None}
                faults.append(info)
                first_sign = first_sign or time.monotonic()
        for rank, p in enumerate(procs):
            if p.exitcode is not None and p.exitcode != 0 and names[rank] not in [d for d, _ in deaths]:
                deaths.append((names[rank], p.exitcode))
                first_sign = first_sign or time.monotonic()
        now = time.monotonic()
        if gen.stats is not None:
            # Done: the processes exit on their own after the gathering (ended anyway after a while).
            stats_at = stats_at or now
            if all(p.exitcode is not None for p in procs) or now - stats_at > 5.0:
                return
            continue
        if first_sign is not None and now - first_sign >= FAULT_GRACE_S:
            gen.fault = _classify(deaths, faults, killed, names, gen)
            return
        if now > deadline:
            gen.fault = {"kind": "timeout", "reason": "the run did not finish within --run-timeout", "replan": False}
            return
        if len(ready) < len(procs) and now > startup_end:
            gen.fault = {"kind": "error", "reason": f"processes {sorted(set(range(len(procs))) - ready)} did not start "
                                                    f"within {STARTUP_TIMEOUT_S:g} s", "replan": False}
            return


def _classify(deaths, faults, killed, names, gen: Generation) -> dict:
    """What broke the generation: an error (in the code, or at start: not re-planned), a lost
    device, or a lost link."""
    at = [f.get("at_s") for f in faults if f.get("at_s")] + list(killed.values())
    when = (min(at) - gen.t0) if at and gen.t0 is not None else None
    errors = [f for f in faults if f["kind"] == "error"]
    if errors:
        return {"kind": "error", "replan": False, "at_run_s": when, "reason": f"error on {errors[0]['device']}: "
                + errors[0]["detail"].strip().splitlines()[-1], "detail": errors[0]["detail"], "reports": faults}
    if gen.t0 is None:
        what = f"the process of {deaths[0][0]} exited with code {deaths[0][1]}" if deaths else "a process failed"
        return {"kind": "error", "replan": False, "at_run_s": None, "reason": f"{what} before the run started", "reports": faults}
    if deaths:
        dev, code = deaths[0]
        how = "was killed (fault injection)" if dev in killed else f"exited with code {code}"
        return {"kind": "device", "device": dev, "replan": True, "at_run_s": when,
                "reason": f"the process of {dev} {how}", "reports": faults}
    link = next((f for f in faults if f.get("peer")), None)
    if link is not None:
        return {"kind": "link", "link": (link["device"], link["peer"]), "replan": True, "at_run_s": when,
                "reason": f"the link {link['device']}<->{link['peer']} went silent ({link['kind']}: {link['detail']})",
                "reports": faults}
    return {"kind": "error", "replan": False, "at_run_s": when, "reason": faults[0]["detail"] if faults else "unknown fault",
            "reports": faults}


def _without(instance: Instance, fault: dict) -> Instance:
    """The instance after ``fault``: a device or a link gone (and whatever no longer reaches the origin)."""
    if fault["kind"] == "device":
        return changed_instance(instance, drop_device=fault["device"])
    return without_link(instance, *fault["link"])


def run(instance: Instance, plan: Plan, requests: list[RequestSpec], options: RunOptions, codecs: dict,
        *, prepare_for=None, log=lambda _msg: None) -> RunResult:
    """Serve ``requests`` with ``plan`` on processes of this machine, surviving faults by re-planning.

    ``codecs``: :func:`planner.runtime.inputs.prepare` arrays of ``plan``; ``prepare_for(instance,
    plan)`` gives those of a re-planned plan (None: each process fits the codecs a re-planned plan
    needs itself, on the same calibration text). Ctrl-C ends every process and reports the
    unfinished requests as interrupted.
    """
    outcomes = {r.rid: {"status": "pending", "reason": "", "record": None, "attempts": 0} for r in requests}
    by_id = {r.rid: r for r in requests}
    gens: list[Generation] = []
    run_t0 = None
    deadline = time.monotonic() + options.run_timeout_s
    interrupted = False
    current_plan, current_inst = plan, instance
    try:
        while True:
            pending = [by_id[rid] for rid, o in outcomes.items() if o["status"] == "pending"]
            topo = topology(current_inst, current_plan)
            log(f"run {len(gens) + 1}: {len(pending)} request(s) on {', '.join(topo.devices)}")
            note = oversubscription(len(topo.devices), options.threads)
            if note is not None:
                log(note)
            gen = _generation(current_inst, current_plan, pending, codecs, run_t0, options, log, deadline)
            gens.append(gen)
            if run_t0 is None and gen.t0 is not None:
                run_t0 = gen.t0
            for rec in gen.done:
                o = outcomes[rec["rid"]]
                o["status"], o["record"] = "finished", rec
            left = [rid for rid, o in outcomes.items() if o["status"] == "pending"]
            if gen.fault is None or not left:
                if left:
                    _fail(outcomes, left, "the run ended without finishing it")
                break
            log(f"fault: {gen.fault['reason']}" + (f" (run second {gen.fault['at_run_s']:.2f})" if gen.fault.get("at_run_s") else ""))
            if not gen.fault.get("replan") or len(gens) > options.max_restarts:
                _fail(outcomes, left, gen.fault["reason"] if gen.fault.get("replan") is False
                      else f"{gen.fault['reason']}; no restarts left (--max-restarts {options.max_restarts})")
                break
            nxt = _replanned(current_inst, current_plan, gen, codecs, prepare_for, log)
            if nxt is None:
                _fail(outcomes, left, f"{gen.fault['reason']}; {gen.replan['reason']}")
                break
            current_inst, current_plan, codecs = nxt
            at = gen.fault.get("at_run_s")
            for rid in left:  # those that had arrived were in flight or queued: they start over
                if at is None or by_id[rid].arrival_s <= at:
                    outcomes[rid]["attempts"] += 1
    except KeyboardInterrupt:
        interrupted = True
        _fail(outcomes, [rid for rid, o in outcomes.items() if o["status"] == "pending"], "interrupted (Ctrl-C)")
    return RunResult(requests, outcomes, gens, run_t0, interrupted)


def _replanned(instance: Instance, plan: Plan, gen: Generation, codecs: dict, prepare_for, log):
    """(instance, plan, codecs) to run next after ``gen``'s fault, or None (``gen.replan`` says why)."""
    try:
        changed = _without(instance, gen.fault)
    except ValueError as exc:
        gen.replan = {"reason": f"cannot re-plan: {exc}"}
        return None
    t = time.perf_counter()
    res = replan(plan, changed)
    gen.replan = {"status": res.status.value, "reason": res.reason, "objective_before": res.objective_before,
                  "objective_after": res.objective_after, "migration_bytes": res.migration_bytes,
                  "solve_time_s": time.perf_counter() - t, "plan": res.plan.to_dict() if res.plan is not None else None,
                  "devices_left": [d.name for d in changed.devices]}
    if res.plan is None:
        gen.replan["reason"] = f"no plan over the remaining devices ({res.reason})"
        return None
    log(f"re-planned over {', '.join(d.name for d in changed.devices)}: {res.reason}; predicted "
        f"{res.objective_after:.4g} ({changed.objective})" if math.isfinite(res.objective_after) else "re-planned")
    new_codecs = prepare_for(changed, res.plan) if prepare_for is not None else {}
    return changed, res.plan, new_codecs


def _fail(outcomes: dict, rids, reason: str) -> None:
    for rid in rids:
        outcomes[rid]["status"], outcomes[rid]["reason"] = "failed", reason
