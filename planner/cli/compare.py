"""``moeplan compare``: every solver (or a chosen few) on one instance, one table."""

from __future__ import annotations

from planner import api
from planner.cli.output import EXIT_NO_PLAN, EXIT_OK, emit_json, log, progress_while, result_json
from planner.cost import report
from planner.domain.errors import option_error


def add_parser(subparsers) -> None:
    """Register ``compare`` on the ``moeplan`` sub-command parsers."""
    c = subparsers.add_parser("compare", help="every solver (or --solvers) on one instance, one table")
    c.add_argument("instance")
    c.add_argument("--solvers", default=None, help="comma-separated names; default: all")
    c.add_argument("--time-limit", type=float, default=None, metavar="S")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_compare)


def solver_names(text: str | None) -> list[str]:
    """The names of ``--solvers A,B,...``: every solver when the option is not given; an empty list
    (``--solvers ''``, ``--solvers ,,``) is bad input, not "all"."""
    if text is None:
        return api.available_solvers()
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise option_error("--solvers", f"names no solver ({text!r}); give names separated by commas, e.g. "
                                        f"--solvers route-aware,dp, or leave the option out for all: "
                                        f"{', '.join(api.available_solvers())}")
    return names


def cmd_compare(args) -> int:
    with progress_while(f"loading {args.instance}"):
        instance = api.load_instance(args.instance)
    names = solver_names(args.solvers)
    with progress_while(f"comparing solvers on {instance.name}"):
        results = api.compare(instance, names, time_limit=args.time_limit, seed=args.seed,
                              progress=lambda name: log(f"solving with {name} ..."))
    if args.json:
        best = report.best_result(results)
        emit_json({"status": best.status.value if best is not None else "infeasible", "stop_reason": None,
                   "message": f"best: {best.solver}" if best is not None else "no solver found a plan",
                   "best": best.solver if best is not None else None,
                   "instance": instance.name, "objective": instance.objective, "results": [result_json(r) for r in results]})
    else:
        print(report.instance_summary(instance))
        print(report.compare_table(results))
    return EXIT_OK if any(r.solution is not None for r in results) else EXIT_NO_PLAN
