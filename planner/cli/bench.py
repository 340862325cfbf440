"""``moeplan bench``: run a benchmark suite, write a CSV of every measurement and PNG plots, print a table.

    moeplan bench [--suite paper|scale|dynamic|all] [--out DIR] [--quick] [--seed N] [--json]

What each suite runs and how to read it: ``docs/bench.md`` (code in :mod:`planner.bench`).
Progress goes to stderr; the tables go to stdout at the end (with ``--json``: one object with
``status``, ``out`` and, per suite, its ``name``, ``notes`` and ``files``). Exit codes: 0 done, 2
bad input (an unwritable ``--out``).
"""

from __future__ import annotations

from planner.bench import plots as bench_plots
from planner.bench.run import DEFAULT_OUT, SUITES, prepare_out, run
from planner.cli.output import emit_json


def add_parser(subparsers) -> None:
    """Register ``bench`` on the ``moeplan`` sub-command parsers."""
    p = subparsers.add_parser("bench", help="benchmark suite: CSV of every measurement, PNG plots, a table")
    p.add_argument("--suite", choices=(*SUITES, "all"), default="all", help="which suite; default all")
    p.add_argument("--out", default=DEFAULT_OUT, metavar="DIR", help=f"output folder (created); default {DEFAULT_OUT}/")
    p.add_argument("--quick", action="store_true", help="a few scenarios and requests, no milp: seconds")
    p.add_argument("--seed", type=int, default=0, help="seed of solvers, request windows, synthetic series, simulator")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout (the files written) instead of the tables")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    out = prepare_out(args.out)
    suites = list(SUITES) if args.suite == "all" else [args.suite]
    results = run(suites, out, quick=args.quick, seed=args.seed)
    if args.json:
        emit_json({"status": "done", "out": str(out),
                   "suites": [{"name": r.name, "notes": r.notes, "files": sorted(str(f) for f in out.glob(f"{r.name}[._]*"))}
                              for r in results]})
        return 0
    for r in results:
        print(f"\n== {r.name} ==")
        print(r.table)
        for note in r.notes:
            print(f"  {note}")
    if not bench_plots.available():
        print(f"\nno plots written: {bench_plots.INSTALL_HINT}")
    print(f"\nCSV{' and plots' if bench_plots.available() else ''} in {out}/")
    return 0
