"""The ``moeplan`` command line (also ``python -m planner``): one sub-command per module of this package.

Exit codes: 0 success, 1 infeasible / no plan / invalid plan, 2 bad input (the message names the
file and field, or the option), 3 an internal error (a bug: the message says how to see the
traceback). No run shows a traceback unless ``MOEPLAN_DEBUG=1`` asks for it. ``--json`` prints
exactly one JSON object on stdout, an error object too (:func:`planner.cli.output.error_json`);
logs go to stderr.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from importlib import metadata

from planner.cli import bench, compare, import_hf, place, profile, run, simulate, solve, validate
from planner.cli.output import EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_NO_PLAN, emit_json, error_json, log
from planner.domain.errors import InputError, MoeplanError, Problem, option_error
from planner.domain.fields import seed_error
from planner.executor import calibrate  # the command parses without torch; running it needs the extra

COMMANDS = (solve, compare, validate, import_hf, profile, place, bench, simulate, calibrate, run)


class _UsageError(Exception):
    """A command line argparse rejects (an unknown option, a value of the wrong type)."""

    def __init__(self, parser: argparse.ArgumentParser, message: str):
        super().__init__(message)
        self.parser = parser


class _Parser(argparse.ArgumentParser):
    """An argparse parser that raises :class:`_UsageError` instead of exiting, so that ``--json``
    runs get their JSON error object too."""

    def error(self, message: str):
        raise _UsageError(self, message)


def version() -> str:
    try:
        return metadata.version("moeplan")
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="moeplan", description="Plan MoE inference across heterogeneous end, edge and cloud devices.")
    p.add_argument("--version", action="version", version=f"moeplan {version()}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for command in COMMANDS:
        command.add_parser(sub)
    return p


def _check_common_options(args) -> None:
    """Checks shared by every command: one check and one message for each option they share."""
    seed = getattr(args, "seed", None)
    if seed is not None and seed_error(seed):
        raise option_error("--seed", seed_error(seed))


def _usage_problem(message: str) -> Problem:
    option = re.match(r"argument ([^:]+):", message)
    return Problem("", option.group(1).split("/")[-1] if option else "", message)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    json_mode = "--json" in argv
    parser = build_parser()

    def fail(code: int, kind: str, message: str, problems=()) -> int:
        if json_mode:
            emit_json(error_json(kind, message, problems))
        return code

    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        exc.parser.print_usage(sys.stderr)
        log(f"{exc.parser.prog}: error: {exc}")
        return fail(EXIT_BAD_INPUT, "bad_input", str(exc), [_usage_problem(str(exc))])
    json_mode = bool(getattr(args, "json", False))
    try:
        _check_common_options(args)
        return args.func(args)
    except InputError as exc:
        log(f"error: {len(exc.problems)} problem(s) in the input:" if len(exc.problems) > 1 else "error: bad input:")
        for problem in exc.problems:
            log(f"  {problem}")
        return fail(EXIT_BAD_INPUT, "bad_input", str(exc), exc.problems)
    except ValueError as exc:  # unknown solver names, bad option values given to the API
        log(f"error: {exc}")
        return fail(EXIT_BAD_INPUT, "bad_input", str(exc), [Problem("", "", str(exc))])
    except MoeplanError as exc:
        log(f"error: {exc}")
        return fail(EXIT_NO_PLAN, "no_plan", str(exc))
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    except Exception as exc:
        if os.environ.get("MOEPLAN_DEBUG"):
            raise
        log(f"internal error: {type(exc).__name__}: {exc}")
        log("  this is a bug in moeplan, not in your input; run again with MOEPLAN_DEBUG=1 to see the traceback, "
            "and report it with that traceback")
        return fail(EXIT_INTERNAL, "internal", f"{type(exc).__name__}: {exc}")
