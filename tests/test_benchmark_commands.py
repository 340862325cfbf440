"""The benchmark commands the README lists start as a user starts them: ``python -m MODULE --help``
in a fresh interpreter (no test has imported the planner and registered its solvers for them).
``tests/solvers/test_placement.py`` runs ``solvers.bench_placement`` as a module in full."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import REPO

MODULES = ["planner.bench.exact", "planner.bench.replan", "solvers.bench_placement", "planner.cost.calibration",
           "planner.bench.check_heuristics", "planner.bench.fleet_size"]


@pytest.mark.parametrize("module", MODULES)
def test_help(module):
    proc = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
