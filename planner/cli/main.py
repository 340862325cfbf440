"""The ``moeplan`` command line (also ``python -m planner``): one sub-command per module of this package.

Exit codes: 0 success, 1 infeasible / no plan / invalid plan, 2 bad input (the message names the
file and field). ``--json`` prints exactly one JSON object on stdout; logs go to stderr.
"""

from __future__ import annotations

import argparse

from planner.cli import bench, compare, import_hf, place, profile, run, simulate, solve, validate
from planner.cli.output import EXIT_BAD_INPUT, EXIT_NO_PLAN, log
from planner.domain.errors import InputError, MoeplanError
from planner.executor import calibrate  # the command parses without torch; running it needs the extra

COMMANDS = (solve, compare, validate, import_hf, profile, place, bench, simulate, calibrate, run)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="moeplan", description="Plan MoE inference across heterogeneous end, edge and cloud devices.")
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except InputError as exc:
        log(f"error: {len(exc.problems)} problem(s) in the input:" if len(exc.problems) > 1 else "error: bad input:")
        for problem in exc.problems:
            log(f"  {problem}")
        return EXIT_BAD_INPUT
    except ValueError as exc:  # unknown solver names, bad option values
        log(f"error: {exc}")
        return EXIT_BAD_INPUT
    except MoeplanError as exc:
        log(f"error: {exc}")
        return EXIT_NO_PLAN
