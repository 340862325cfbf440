"""Same input, same bytes out: every command on deepseek-v3-edge-cloud-40 (40 devices, so sets and
dicts of names are large enough for Python's string-hash seed to reorder them) run under two
PYTHONHASHSEED values gives the same output once wall-clock fields are taken out."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from tests.helpers import REPO

INSTANCE = str(REPO / "instances" / "deepseek-v3-edge-cloud-40.toml")
CLOCK_KEYS = {"solve_time_s", "wall_time_s"}
# Commands whose output is checked; a plan each solver writes is simulated and validated too.
COMMANDS = [
    ["solve", INSTANCE, "--json", "-o", "ra.json"],
    ["solve", INSTANCE, "--solver", "dp", "--json", "-o", "dp.json"],
    ["solve", INSTANCE, "--solver", "eplb", "--json"],
    ["validate", INSTANCE, "ra.json", "--json"],
    ["simulate", INSTANCE, "ra.json", "--requests", "4", "--json"],
    ["compare", INSTANCE, "--solvers", "route-aware,dp,edgeshard,proportional", "--json"],
    ["solve", INSTANCE],
]


def _scrub(value):
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items() if k not in CLOCK_KEYS}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


def _run_all(seed: int, cwd) -> list[str]:
    env = {**os.environ, "PYTHONHASHSEED": str(seed), "PYTHONPATH": str(REPO)}
    outputs = []
    for args in COMMANDS:
        done = subprocess.run([sys.executable, "-m", "planner", *args], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, (args, done.stderr[-2000:])
        if "--json" in args:
            outputs.append(json.dumps(_scrub(json.loads(done.stdout)), sort_keys=True))
        else:
            outputs.append(re.sub(r"in \d+\.\d+ s", "in T s", done.stdout))
    return outputs


def test_every_command_gives_the_same_bytes_under_any_hash_seed(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    one, two = _run_all(1, first), _run_all(2, second)
    for args, a, b in zip(COMMANDS, one, two, strict=True):
        assert a == b, f"moeplan {' '.join(args[:1] + args[2:])} differs between PYTHONHASHSEED 1 and 2"
    for plan in ("ra.json", "dp.json"):  # the plan files, their provenance's solve time aside
        a, b = (json.loads((folder / plan).read_text()) for folder in (first, second))
        assert _scrub(a) == _scrub(b), plan
