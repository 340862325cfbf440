"""``moeplan simulate``: run a plan on its instance in the discrete-event simulator.

    moeplan simulate INSTANCE PLAN.json [--trace F] [--trace-columns timestamp=C,prompt=C,output=C]
                     [--bandwidth-trace F [--link A,B]] [--duration S] [--requests N] [--seed N]
                     [--replan-every S] [--timeout S] [--progress] [--json]

Arrivals: ``--trace`` (a CSV or ``.jsonl``; its timestamp, prompt and output columns are
recognised by their common names, as the Azure LLM trace's ``TIMESTAMP``, ``ContextTokens``,
``GeneratedTokens`` or ``arrival_time``, ``input_tokens``, ``output_tokens``, and the command says
which it used; ``--trace-columns`` names them), else the instance's own trace, else Poisson arrivals at the instance's
``arrival_rate_per_s`` (seeded by ``--seed``). ``--bandwidth-trace``: a CSV with a ``mbps``
column, one row per simulated second (cycled), for the link ``--link A,B`` or, without it, for
every link. ``--replan-every S``: every S simulated seconds the re-planner
(:func:`planner.planners.replan.replan`) may replace the plan; its migration is charged.

Output: a table, or with ``--json`` one object ``{"instance", "plan", "arrivals", "seed",
"predicted", "metrics"}`` (``metrics``: :meth:`planner.sim.results.SimResult.metrics`;
``predicted``: the cost model's figures of the plan). Exit codes: 0 simulated, 1 the plan is not
valid for the instance (every violation is listed), 2 bad input (the message names the file or
option and the field; nothing is written).
"""

from __future__ import annotations

import math
from pathlib import Path

from planner import api
from planner.cli.output import EXIT_NO_PLAN, EXIT_OK, emit_json, log
from planner.cost.costmodel import CostModel
from planner.cost.validator import evaluate_checked
from planner.domain.data_files import read_bandwidth_series, read_request_trace
from planner.domain.errors import InputError, Problem
from planner.domain.plan import Plan
from planner.domain.units import GB
from planner.sim import ReplanHook, simulate
from planner.sim.arrivals import MAX_REQUESTS

_COLUMN_KEYS = ("timestamp", "prompt", "output")


def add_parser(subparsers) -> None:
    """Register ``simulate`` on the ``moeplan`` sub-command parsers."""
    p = subparsers.add_parser("simulate", help="discrete-event run of a plan: throughput, TTFT/TPOT/latency "
                                               "percentiles, utilisation, drops, SLO attainment")
    p.add_argument("instance")
    p.add_argument("plan", metavar="PLAN.json")
    arrivals = p.add_argument_group("arrivals")
    arrivals.add_argument("--trace", metavar="F", help="request trace (CSV or .jsonl); default: the instance's trace, "
                                                       "else Poisson arrivals at its rate")
    arrivals.add_argument("--trace-columns", metavar="timestamp=C,prompt=C,output=C",
                          help="column names of the trace (default: recognised by their common names, "
                               "e.g. TIMESTAMP / arrival_time, ContextTokens / input_tokens, GeneratedTokens / output_tokens)")
    arrivals.add_argument("--requests", type=int, default=None, metavar="N", help="requests to simulate")
    arrivals.add_argument("--duration", type=float, default=None, metavar="S",
                          help="arrivals during the first S seconds (with --requests: whichever ends first)")
    arrivals.add_argument("--seed", type=int, default=0, help="Poisson arrivals")
    net = p.add_argument_group("network")
    net.add_argument("--bandwidth-trace", metavar="F", help="CSV with a mbps column, one row per second (cycled)")
    net.add_argument("--link", metavar="A,B", help="the link the bandwidth trace drives (default: every link)")
    p.add_argument("--replan-every", type=float, default=None, metavar="S", help="re-plan every S simulated seconds")
    p.add_argument("--timeout", type=float, default=None, metavar="S", help="drop requests queued longer than S seconds")
    p.add_argument("--progress", action="store_true", help="progress lines on stderr")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(func=cmd_simulate)


def _columns(text: str | None) -> dict[str, str]:
    if text is None:
        return {}
    out = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or key not in _COLUMN_KEYS or not value:
            raise InputError(Problem("--trace-columns", part.strip(),
                                     "give timestamp=COLUMN, prompt=COLUMN and/or output=COLUMN, separated by commas"))
        out[key] = value
    return out


def _positive(value, option: str, integer: bool = False):
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise InputError(Problem(option, "", f"must be a positive {'integer' if integer else 'number'}, got {value}"))
    return value


def cmd_simulate(args) -> int:
    instance = api.load_instance(args.instance)
    plan = Plan.load(args.plan)
    for value, option, integer in ((args.requests, "--requests", True), (args.duration, "--duration", False),
                                   (args.replan_every, "--replan-every", False), (args.timeout, "--timeout", False)):
        _positive(value, option, integer)
    if args.requests is not None and args.requests > MAX_REQUESTS:
        raise InputError(Problem("--requests", "", f"at most {MAX_REQUESTS:,} requests are simulated, got {args.requests:,}"))
    hook = None
    if args.replan_every:
        try:
            hook = ReplanHook(every_s=args.replan_every, on_bandwidth_change=None)
        except ValueError as exc:
            raise InputError(Problem("--replan-every", "", str(exc).replace("every_s ", "", 1))) from None
    if args.trace is not None:
        trace = read_request_trace(Path(args.trace), columns=_columns(args.trace_columns), label=args.trace)
        arrivals = f"trace {args.trace}"
        log(f"trace {args.trace}: {len(trace.arrival_s):,} requests; columns "
            + ", ".join(f"{k} = {v!r}" for k, v in trace.columns.items()))
    else:
        if args.trace_columns is not None:
            raise InputError(Problem("--trace-columns", "", "needs --trace"))
        trace = instance.workload.trace
        arrivals = (f"trace {instance.workload.trace_path}" if trace is not None
                    else f"Poisson {instance.workload.arrival_rate_per_s:g}/s")
    series = None
    if args.bandwidth_trace is not None:
        values = read_bandwidth_series(Path(args.bandwidth_trace), label=args.bandwidth_trace)
        series = values  # every link
        if args.link is not None:
            ends = tuple(x.strip() for x in args.link.split(","))
            if len(ends) != 2 or instance.link(*ends) is None:
                raise InputError(Problem("--link", args.link, f"names no link of {args.instance} (links: {instance.link_names()})"))
            series = {ends: values}
    elif args.link is not None:
        raise InputError(Problem("--link", args.link, "needs --bandwidth-trace"))

    ev, violations = evaluate_checked(instance, plan, CostModel(instance))
    if args.duration is not None and args.requests is None and trace is None \
            and args.duration * instance.workload.arrival_rate_per_s > MAX_REQUESTS:
        raise InputError(Problem("--duration", "", f"{args.duration:g} s at {instance.workload.arrival_rate_per_s:g} "
                                                   f"requests/s is more than {MAX_REQUESTS:,} requests"))
    if violations:
        if args.json:
            emit_json({"status": "invalid", "stop_reason": None, "message": f"{len(violations)} violation(s)",
                       "instance": instance.name, "plan": args.plan, "plan_ok": False,
                       "violations": [{"kind": v.kind, "message": v.message} for v in violations]})
        else:
            log(f"plan {args.plan} is not valid for {args.instance}: {len(violations)} violation(s)")
            for v in violations:
                log(f"  {v}")
        return EXIT_NO_PLAN

    res = simulate(instance, plan, trace=trace, num_requests=args.requests, duration_s=args.duration,
                   bandwidth_series=series, replan=hook, seed=args.seed, timeout_s=args.timeout,
                   progress=log if args.progress else None)
    predicted = {k: v for k, v in ev.metrics().items()
                 if k in ("throughput_tokens_per_s", "requests_per_s", "ttft_ms", "tpot_ms", "latency_ms", "bottleneck")}
    metrics = res.metrics()
    if args.json:
        emit_json({"status": "simulated", "stop_reason": None, "message": "",
                   "instance": instance.name, "plan": args.plan, "arrivals": arrivals, "seed": args.seed,
                   "predicted": predicted, "metrics": metrics})
    else:
        w = instance.workload
        offered = trace.rate_per_s * float(trace.output_tokens.mean()) if trace is not None else w.arrival_rate_per_s * w.output_tokens
        print(_table(instance.name, args.plan, arrivals, args.seed, predicted, metrics, offered))
    return EXIT_OK


def _fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _table(name: str, plan_file: str, arrivals: str, seed: int, predicted: dict, m: dict, offered_tokens_per_s: float) -> str:
    lines = [f"{name}: plan {plan_file}, {m['requests_total']:,} requests ({arrivals}, seed {seed}), "
             f"{m['sim_time_s']:,.1f} s simulated in {m['wall_time_s']:.2f} s ({m['events_processed']:,} events)",
             f"{'':<18} {'simulated':>12} {'predicted':>12}",
             f"{'tokens/s':<18} {m['throughput_tokens_per_s']:>12.2f} {predicted['throughput_tokens_per_s']:>12.2f}",
             f"  predicted tokens/s is the plan's capacity at saturation; these arrivals offer about "
             f"{offered_tokens_per_s:.4g} tokens/s, so below capacity the simulated figure follows the offered load",
             f"{'requests/s':<18} {m['requests_per_s']:>12.4f} {predicted['requests_per_s']:>12.4f}",
             f"{'':<18} {'mean':>10} {'p50':>10} {'p95':>10} {'p99':>10} {'predicted':>10}"]
    for key, label in (("ttft_ms", "TTFT ms"), ("tpot_ms", "TPOT ms"), ("latency_ms", "latency ms")):
        s = m[key]
        lines.append(f"{label:<18} " + " ".join(_fmt(s[k], ">10.1f") for k in ("mean", "p50", "p95", "p99"))
                     + f" {predicted[key]:>10.1f}")
    reasons = ", ".join(f"{k}: {v}" for k, v in sorted(m["drop_reasons"].items()))
    lines.append(f"finished {m['requests_finished']:,}, dropped {m['requests_dropped']:,}"
                 + (f" ({reasons})" if reasons else "") + f", retried {m['requests_retried']:,}")
    if m["slo_attainment"] is not None:
        lines.append(f"SLO attainment {m['slo_attainment']:.1%}")
    lines.append("utilisation " + ", ".join(f"{k} {v:.1%}" for k, v in sorted(m["utilisation"].items(), key=lambda kv: -kv[1])))
    lines.append(f"re-plans {m['replans']}, migration {m['migration_bytes'] / GB:.3g} GB")
    return "\n".join(lines)
