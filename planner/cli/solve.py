"""``moeplan solve``: plan one instance with one solver."""

from __future__ import annotations

from pathlib import Path

from planner import api
from planner.cli.output import EXIT_NO_PLAN, EXIT_OK, emit_json, log, progress_while, result_json
from planner.cost import report
from planner.domain.errors import InputError, Problem, option_error
from planner.domain.files import check_writable, write_atomic


def add_parser(subparsers) -> None:
    """Register ``solve`` on the ``moeplan`` sub-command parsers."""
    s = subparsers.add_parser("solve", help="plan one instance")
    s.add_argument("instance")
    s.add_argument("--solver", default=api.DEFAULT_SOLVER, metavar="NAME",
                   help=f"one of {', '.join(api.available_solvers())} (README: what each does); default {api.DEFAULT_SOLVER}")
    stop = s.add_argument_group("stopping")
    stop.add_argument("--time-limit", type=float, default=None, metavar="S", help="seconds")
    s.add_argument("--seed", type=int, default=0, help="seed of the solver's random choices, 0 to 2**31 - 1 (default 0)")
    s.add_argument("--progress", action="store_true", help="exact solvers: incumbent and bound over time on stderr")
    s.add_argument("--export", metavar="MODEL.lp", help="milp: write the model of the best subproblem (.lp or .mps)")
    s.add_argument("-o", "--output", metavar="PLAN.json", help="write the plan here")
    s.add_argument("--json", action="store_true", help="one JSON object on stdout")
    s.set_defaults(func=cmd_solve)


def cmd_solve(args) -> int:
    with progress_while(f"loading {args.instance}"):
        instance = api.load_instance(args.instance)
    options = {}
    if args.progress:
        options["progress"] = log
    if args.export:
        if args.solver != "milp":
            raise option_error("--export", "writes the MILP (.lp or .mps): use --solver milp")
        if Path(args.export).suffix.lower() not in (".lp", ".mps"):
            raise InputError(Problem(args.export, "--export", "the file name must end in .lp or .mps"))
        check_writable(args.export, what="the model", option="--export")
        options["export"] = args.export
    if args.output:
        check_writable(args.output, what="the plan", option="--output")
    with progress_while(f"solving {instance.name} ({len(instance.devices):,} devices) with {args.solver}"):
        result = api.solve(instance, args.solver, time_limit=args.time_limit, seed=args.seed, **options)
    if args.output and result.solution is not None:
        write_atomic(args.output, result.solution.to_json() + "\n", what="the plan", option="--output")
    if args.json:
        emit_json(result_json(result))
    else:
        print(report.instance_summary(instance))
        stopped = f" (stopped: {result.stop_reason})" if result.stop_reason else ""
        print(f"solver {result.solver}: {report.status_text(result)} in {result.solve_time_s:.3f} s{stopped}")
        if result.solution is not None:
            print(report.plan_summary(instance, result.solution))
            if args.output:
                print(f"plan written to {args.output}")
            if args.export:
                print(f"model written to {args.export}")
        else:
            print(result.message)
    return EXIT_OK if result.solution is not None else EXIT_NO_PLAN
