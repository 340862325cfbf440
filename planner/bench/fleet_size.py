"""Large fleets from the command line: ``python -m planner.bench.fleet_size [--sizes 100,1000,4095]``.

For each fleet size, the scale suite's instance (:func:`planner.bench.scale.scale_data`: one Jetson
AGX Orin, about a fifth L40S at an edge site, the rest H100 in a cloud region, each group one
interconnect) is written to ``--out`` as TOML, then ``moeplan validate``, ``moeplan solve`` (route-aware)
and ``moeplan solve --solver dp`` run on it as a user runs them, each in a fresh process: wall
seconds, peak resident memory (MB) and the objective, in one table, then whether route-aware's
objective is at least dp's. A command still running after ``--timeout`` seconds is stopped and
reported as such. Times depend on the machine; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import tomli_w

from planner.bench.scale import scale_data
from planner.cost import report

COMMANDS = {"validate": ["validate"], "route-aware": ["solve", "--json"], "dp": ["solve", "--solver", "dp", "--json"]}


def run_measured(argv: list[str], stdout: Path, timeout_s: float) -> tuple[float, float, int | None]:
    """Run ``argv`` with stdout into ``stdout`` (stderr passes through): (wall s, peak resident MB,
    exit code; None when stopped at ``timeout_s``)."""
    t0 = time.perf_counter()
    with open(stdout, "w") as out:
        proc = subprocess.Popen(argv, stdout=out)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                return time.perf_counter() - t0, usage.ru_maxrss / 1024.0, proc.returncode
            if time.perf_counter() - t0 > timeout_s:
                proc.send_signal(signal.SIGKILL)
                _, _, usage = os.wait4(proc.pid, 0)
                proc.returncode = -9
                return time.perf_counter() - t0, usage.ru_maxrss / 1024.0, None
            time.sleep(0.02)


def objective(path: Path) -> float | None:
    """The objective of a ``solve --json`` output file (None if the run left none)."""
    try:
        return json.loads(path.read_text()).get("objective")
    except (OSError, ValueError):
        return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m planner.bench.fleet_size", description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100,1000,4095", help="devices per fleet, comma-separated (2 to 4096)")
    ap.add_argument("--model", default="deepseek-v3", help="a catalog model (default deepseek-v3)")
    ap.add_argument("--commands", default=",".join(COMMANDS), help=f"any of {', '.join(COMMANDS)}")
    ap.add_argument("--timeout", type=float, default=600.0, metavar="S", help="stop a command after S seconds (default 600)")
    ap.add_argument("--out", default="fleet-size", metavar="DIR", help="instances and outputs go here (default ./fleet-size)")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    commands = [c.strip() for c in args.commands.split(",") if c.strip()]
    unknown = sorted(set(commands) - set(COMMANDS))
    if unknown:
        ap.error(f"--commands: unknown {', '.join(unknown)} (known: {', '.join(COMMANDS)})")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, verdicts = [], []
    for n in sizes:
        path = out / f"{args.model}-{n}dev.toml"
        path.write_text(tomli_w.dumps(scale_data(args.model, n)))
        found = {}
        for name in commands:
            print(f"{n} devices: {name} ...", file=sys.stderr, flush=True)
            stdout = out / f"{args.model}-{n}dev.{name}.out"
            wall, rss, rc = run_measured([sys.executable, "-m", "planner", *COMMANDS[name], str(path)], stdout, args.timeout)
            found[name] = objective(stdout) if name != "validate" else None
            status = f"stopped after {args.timeout:g} s" if rc is None else f"exit {rc}"
            value = "-" if found[name] is None else f"{found[name]:.4g}"
            rows.append([str(n), name, f"{wall:.2f}", f"{rss:.0f}", status, value])
        if found.get("route-aware") is not None and found.get("dp") is not None:
            ok = found["route-aware"] >= found["dp"] * (1 - 1e-9)
            verdicts.append(f"{n} devices: route-aware {found['route-aware']:.6g} {'>=' if ok else '<'} dp {found['dp']:.6g} tokens/s")
    print(report.table(["devices", "command", "wall s", "peak MB", "status", "objective"], rows))
    for line in verdicts:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
