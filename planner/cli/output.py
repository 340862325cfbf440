"""What every ``moeplan`` command shares: exit codes, JSON on stdout, logs on stderr.

``--json`` prints exactly one JSON object on stdout (:func:`emit_json`), whatever happens: every
object has a ``status``; a run that fails prints ``{"status": "error", "error": {"kind", "file",
"field", "message", "problems"}}`` (:func:`error_json`). Logs and progress go to stderr
(:func:`log`); work that runs longer than a few seconds says so there (:func:`progress_while`).
Files are written atomically with :func:`planner.domain.files.write_atomic`.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
from contextlib import contextmanager

# 0 success, 1 infeasible / no plan / invalid plan, 2 bad input, 3 an internal error (a bug in moeplan).
EXIT_OK, EXIT_NO_PLAN, EXIT_BAD_INPUT, EXIT_INTERNAL = 0, 1, 2, 3

# The kinds of ``error.kind`` in a failed run's JSON.
ERROR_KINDS = ("bad_input", "no_plan", "internal")


def json_safe(x):
    """JSON-safe copy: NaN and infinities become null, numpy scalars plain numbers, keys strings."""
    if isinstance(x, float):
        return None if not math.isfinite(x) else x
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if hasattr(x, "item") and callable(x.item):
        return json_safe(x.item())
    return x


def emit_json(obj) -> None:
    """Print ``obj`` as the one JSON object of a ``--json`` run."""
    sys.stdout.write(json.dumps(json_safe(obj), indent=2) + "\n")


def log(msg: str) -> None:
    """A line for the user on stderr."""
    print(msg, file=sys.stderr, flush=True)


PROGRESS_AFTER_S = 3.0  # the first progress line after this many seconds (env MOEPLAN_PROGRESS_AFTER_S overrides)
PROGRESS_EVERY_S = 10.0  # then one line every this many seconds


@contextmanager
def progress_while(what: str):
    """Run the ``with`` block; while it runs past ``MOEPLAN_PROGRESS_AFTER_S`` (default 3 s), a line
    ``{what} ... N s`` on stderr, then one every 10 s, so a long solve is never silent (stdout,
    where ``--json`` prints, is left alone)."""
    after = max(0.05, float(os.environ.get("MOEPLAN_PROGRESS_AFTER_S", PROGRESS_AFTER_S)))
    start = time.perf_counter()
    done = threading.Event()

    def beat():
        wait = after
        while not done.wait(wait):
            log(f"{what} ... {time.perf_counter() - start:.1f} s")
            wait = max(after, PROGRESS_EVERY_S)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def error_json(kind: str, message: str, problems=()) -> dict:
    """The JSON object of a failed run: ``kind`` one of :data:`ERROR_KINDS`; ``file``, ``field`` and
    ``message`` of the first problem (``file`` null for a command-line option, ``field`` null for a
    whole file), every problem under ``problems``."""
    listed = [{"file": p.file or None, "field": p.field or None, "message": p.message} for p in problems]
    first = listed[0] if listed else {"file": None, "field": None, "message": message}
    return {"status": "error", "error": {"kind": kind, **first, "problems": listed}}


def result_json(result) -> dict:
    """The JSON object of a :class:`solvers.result.Result` (the ``solve --json`` contract)."""
    plan = result.solution
    return {
        "status": result.status.value,
        "solver": result.solver,
        "objective": result.objective,
        "bound": result.bound,
        "gap": result.gap,
        "solve_time_s": result.solve_time_s,
        "sense": result.sense,
        "stop_reason": result.stop_reason,
        "message": result.message,
        "plan": plan.to_dict() if plan is not None else None,
        "metrics": plan.metrics if plan is not None else None,
    }
