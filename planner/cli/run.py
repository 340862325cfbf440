"""``moeplan run``: run a plan as one process per device over emulated links; measured vs predicted.

    moeplan run INSTANCE PLAN.json [--model reference|card|DIR] [--requests N | --trace F] [--burst]
                [--compare] [--json] [--bandwidth-trace F [--link A,B]] [--no-link-emulation]
                [--threads N] [--slowdown DEVICE=F] [--fault-timeout S] [--kill DEVICE@S]
                [--drop-link A,B@S] [--max-restarts N] [--max-processes N] [--run-timeout S]

Before anything starts: the instance, the plan (it must pass the validator), the model (it must
match the instance's model card and the plan), the options and this machine's capacity are checked;
a problem exits 2 with a message naming the file, field or option. Then the launcher
(:mod:`planner.runtime.launch`) runs the requests; Ctrl-C ends every process and exits 130.
Exit codes: 0 every request finished, 1 some did not (each is reported with its reason), 2 bad
input, 130 interrupted. ``--json`` prints one object: ``instance``, ``plan``, ``requests``
(``total``, ``finished``, ``failed`` with reasons, ``retried``), ``measured`` (over every finished
request), ``runs`` (per run of a plan: devices, fault, re-plan, measured figures, and with
``--compare`` the fidelity report of :func:`planner.runtime.fidelity.compare`). See docs/runtime.md.
"""

from __future__ import annotations

import math
from pathlib import Path

from planner.cli.output import EXIT_NO_PLAN, EXIT_OK, emit_json, log
from planner.domain.errors import InputError, Problem

EXIT_INTERRUPTED = 130
DEFAULT_REQUESTS = 16
_COLUMN_KEYS = ("timestamp", "prompt", "output")


def add_parser(subparsers) -> None:
    """Register ``run`` on the ``moeplan`` sub-command parsers."""
    p = subparsers.add_parser("run", help="run a plan as one process per device over emulated links (torch.distributed); "
                                          "measured stage times, TTFT, TPOT, tokens/s beside the predictions")
    p.add_argument("instance")
    p.add_argument("plan", metavar="PLAN.json")
    p.add_argument("--model", default="reference", metavar="reference|card|DIR",
                   help="the shipped reference model (default), random weights in the card's shape, or a checkpoint folder")
    w = p.add_argument_group("workload")
    w.add_argument("--requests", type=int, default=None, metavar="N", help="Poisson arrivals at the instance's rate (default 16)")
    w.add_argument("--trace", metavar="F", help="request trace (CSV or .jsonl; columns as for simulate)")
    w.add_argument("--trace-columns", metavar="timestamp=C,prompt=C,output=C")
    w.add_argument("--burst", action="store_true", help="every request arrives at once (saturation)")
    w.add_argument("--seed", type=int, default=0, metavar="N", help="arrivals seed (default 0)")
    e = p.add_argument_group("emulation")
    e.add_argument("--bandwidth-trace", metavar="F", help="CSV with a mbps column, one row per second (cycled)")
    e.add_argument("--link", metavar="A,B", help="the link the bandwidth trace drives (default: every link)")
    e.add_argument("--no-link-emulation", action="store_true", help="send at loopback speed")
    e.add_argument("--threads", type=int, default=1, metavar="N", help="torch threads per process (default 1)")
    e.add_argument("--slowdown", action="append", default=[], metavar="DEVICE=F",
                   help="emulate DEVICE F times slower than this machine (F >= 1); repeatable")
    f = p.add_argument_group("faults")
    f.add_argument("--fault-timeout", type=float, default=10.0, metavar="S",
                   help="a channel silent this long, or a pass not back, is a fault (default 10)")
    f.add_argument("--kill", action="append", default=[], metavar="DEVICE@S", help="kill DEVICE's process at run second S")
    f.add_argument("--drop-link", action="append", default=[], metavar="A,B@S", help="the link A-B stops delivering at run second S")
    f.add_argument("--max-restarts", type=int, default=3, metavar="N", help="re-plans after faults before giving up (default 3)")
    p.add_argument("--max-processes", type=int, default=None, metavar="N", help="refuse plans needing more processes (default: 4 per core)")
    p.add_argument("--run-timeout", type=float, default=600.0, metavar="S", help="end the run after S seconds (default 600)")
    p.add_argument("--codec-steps", type=int, default=0, metavar="N", help="fine-tuning steps of each codec after PCA (default 0)")
    p.add_argument("--start-method", choices=("forkserver", "spawn"), default="forkserver",
                   help="how worker processes start (default forkserver: the model's code loaded once)")
    p.add_argument("--compare", action="store_true", help="the cost model's and the simulator's predictions beside the measured")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(func=cmd_run)


def _at(text: str, option: str) -> tuple[str, float]:
    what, sep, when = text.rpartition("@")
    try:
        t = float(when)
    except ValueError:
        t = math.nan
    if not sep or not what or not (t >= 0 and math.isfinite(t)):
        raise InputError(Problem(option, text, "give NAME@SECONDS (run seconds >= 0)"))
    return what, t


def _pair(text: str, option: str, instance) -> tuple[str, str]:
    ends = tuple(x.strip() for x in text.split(","))
    if len(ends) != 2 or instance.link(*ends) is None:
        raise InputError(Problem(option, text, f"names no link of the instance (links: {instance.link_names()})"))
    return ends


def _options(args, instance, plan_devices):
    from planner.runtime.launch import RunOptions

    names = {d.name for d in instance.devices}
    for value, option in ((args.fault_timeout, "--fault-timeout"), (args.run_timeout, "--run-timeout")):
        if not (value > 0 and math.isfinite(value)):
            raise InputError(Problem(option, "", f"must be a positive number of seconds, got {value}"))
    for value, option in ((args.threads, "--threads"), (args.max_processes, "--max-processes")):
        if value is not None and value < 1:
            raise InputError(Problem(option, "", f"must be an integer >= 1, got {value}"))
    if args.max_restarts < 0 or args.codec_steps < 0 or args.seed < 0:
        raise InputError(Problem("--max-restarts / --codec-steps / --seed", "", "must be integers >= 0"))
    slowdown = {}
    for item in args.slowdown:
        dev, sep, factor = item.partition("=")
        try:
            f = float(factor)
        except ValueError:
            f = math.nan
        if not sep or dev not in names or not (f >= 1 and math.isfinite(f)):
            raise InputError(Problem("--slowdown", item, f"give DEVICE=F with a device of the instance ({', '.join(sorted(names))}) "
                                                         "and F >= 1 (a device can be emulated slower than this machine, not faster)"))
        slowdown[dev] = f
    kill = {}
    for item in args.kill:
        dev, t = _at(item, "--kill")
        if dev not in plan_devices:
            raise InputError(Problem("--kill", item, f"{dev!r} runs no process of the plan ({', '.join(sorted(plan_devices))})"))
        kill[dev] = t
    down = {}
    for item in args.drop_link:
        pair, t = _at(item, "--drop-link")
        down[_pair(pair, "--drop-link", instance)] = t
    series = {}
    if args.bandwidth_trace is not None:
        from planner.domain.data_files import read_bandwidth_series

        values = read_bandwidth_series(Path(args.bandwidth_trace), label=args.bandwidth_trace)
        pairs = [_pair(args.link, "--link", instance)] if args.link else [(l.a, l.b) for l in instance.all_links()]
        series = {pair: values for pair in pairs}
    elif args.link is not None:
        raise InputError(Problem("--link", args.link, "needs --bandwidth-trace"))
    return RunOptions(model=args.model, threads=args.threads, slowdown=slowdown, timeout_s=args.fault_timeout, series=series,
                      link_down=down, kill=kill, emulate_links=not args.no_link_emulation, codec_steps=args.codec_steps,
                      run_timeout_s=args.run_timeout, max_restarts=args.max_restarts, start_method=args.start_method)


def _trace(args):
    if args.trace is None:
        if args.trace_columns is not None:
            raise InputError(Problem("--trace-columns", "", "needs --trace"))
        return None
    if args.requests is not None:
        raise InputError(Problem("--requests", "", "give --requests or --trace, not both"))
    from planner.domain.data_files import read_request_trace

    columns = {}
    for part in (args.trace_columns or "").split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep or key.strip() not in _COLUMN_KEYS or not value.strip():
            raise InputError(Problem("--trace-columns", part.strip(), "give timestamp=COLUMN, prompt=COLUMN and/or output=COLUMN"))
        columns[key.strip()] = value.strip()
    return read_request_trace(Path(args.trace), columns=columns, label=args.trace)


def cmd_run(args) -> int:
    try:
        return _run(args)
    except KeyboardInterrupt:  # before the processes start (the launcher handles it once they run)
        log("interrupted before the run started")
        return EXIT_INTERRUPTED


def _run(args) -> int:
    from planner import api
    from planner.domain.plan import Plan

    instance = api.load_instance(args.instance)
    plan = Plan.load(args.plan)
    violations = api.validate(instance, plan)
    if violations:
        raise InputError([Problem(args.plan, v.kind, f"does not validate against {args.instance}: {v.message}") for v in violations])
    if args.requests is not None and args.requests < 1:
        raise InputError(Problem("--requests", "", f"must be an integer >= 1, got {args.requests}"))
    trace = _trace(args)
    try:
        import torch  # noqa: F401
    except ImportError:
        raise InputError(Problem("moeplan run", "", "needs the torch extra: pip install 'moeplan[torch]'")) from None
    from transformers.utils import logging as hf_logging

    from planner.runtime import fidelity, inputs, launch, report
    from planner.runtime.topology import check_capacity, topology

    topo = topology(instance, plan)
    options = _options(args, instance, set(topo.devices))
    hf_logging.disable_progress_bar()
    model = inputs.load_model(args.model, instance)
    check_capacity(topo.world, sum(p.numel() * p.element_size() for p in model.parameters()), args.max_processes)
    calibration = inputs.calibration_ids(int(model.config.vocab_size))
    options.model_module, options.calibration = type(model).__module__, calibration
    codecs = inputs.prepare(model, instance, plan, calibration, args.codec_steps)
    requests = inputs.make_requests(instance, int(model.config.vocab_size), int(model.config.max_position_embeddings),
                                    num_requests=None if trace is not None else (args.requests or DEFAULT_REQUESTS), trace=trace,
                                    burst=args.burst, seed=args.seed)
    arrivals = (f"trace {args.trace}" if trace is not None else "burst" if args.burst
                else f"Poisson {instance.workload.arrival_rate_per_s:g}/s, seed {args.seed}")
    log(f"{instance.name}: plan {args.plan} on {topo.world} processes ({', '.join(topo.devices)}), "
        f"{len(requests)} requests ({arrivals})")
    result = launch.run(instance, plan, requests, options, codecs, log=log,
                        prepare_for=lambda inst, p: inputs.prepare(model, inst, p, calibration, args.codec_steps))
    runs = []
    for gen in result.generations:
        entry = {"devices": list(gen.devices), "plan": gen.plan.to_dict(), "fault": _public(gen.fault), "replan": gen.replan,
                 "requests_finished": len(gen.done)}
        if gen.stats is not None:
            measured = report.RunMeasurement(gen.stats, gen.instance, gen.plan, gen.done)
            entry["measured"] = measured.summary()
            entry["table"] = report.measured_table(measured)
            if args.compare:
                entry["fidelity"] = fidelity.compare(measured, requests)
                entry["fidelity_table"] = fidelity.fidelity_table(entry["fidelity"])
        elif gen.done:
            entry["measured"] = report.request_figures(gen.done, since=gen.t0)
        runs.append(entry)
    failed = result.failed
    summary = {"instance": instance.name, "plan": args.plan, "model": args.model, "arrivals": arrivals,
               "requests": {"total": len(requests), "finished": len(result.finished), "failed": {str(k): v for k, v in failed.items()},
                            "retried": sum(1 for o in result.outcomes.values() if o["attempts"] > 0)},
               "measured": report.request_figures(result.finished), "runs": runs, "interrupted": result.interrupted}
    if args.json:
        emit_json({**summary, "runs": [{k: v for k, v in r.items() if not k.endswith("table")} for r in runs]})
    else:
        print(_text(summary))
    if result.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_OK if not failed else EXIT_NO_PLAN


def _public(fault: dict | None) -> dict | None:
    return None if fault is None else {k: v for k, v in fault.items() if k != "reports"}


def _text(s: dict) -> str:
    lines = [f"{s['instance']}: {s['plan']}, {s['requests']['total']} requests ({s['arrivals']}): "
             f"{s['requests']['finished']} finished, {len(s['requests']['failed'])} failed, {s['requests']['retried']} retried"]
    for i, r in enumerate(s["runs"], 1):
        lines.append(f"--- run {i}: {', '.join(r['devices'])}; {r['requests_finished']} requests finished")
        if "table" in r:
            lines.append(r["table"])
        if "fidelity_table" in r:
            lines.append(r["fidelity_table"])
        if r["fault"]:
            at = r["fault"].get("at_run_s")
            lines.append(f"fault: {r['fault']['reason']}" + (f" at run second {at:.2f}" if at is not None else ""))
        if r["replan"]:
            lines.append(f"re-plan: {r['replan']['reason']}")
    m = s["measured"]
    if m["requests"]:
        lines.append(f"all runs: {m['output_tokens']} tokens in {m['span_s']:.2f} s ({m['tokens_per_s']:.1f} tokens/s), "
                     f"TTFT mean {m['ttft_ms']['mean']:.1f} ms, latency p95 {m['latency_ms']['p95']:.1f} ms")
    reasons: dict = {}
    for reason in s["requests"]["failed"].values():
        reasons[reason] = reasons.get(reason, 0) + 1
    for reason, n in reasons.items():
        lines.append(f"{n} request(s) failed: {reason}")
    return "\n".join(lines)

