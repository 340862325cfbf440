"""Run benchmark suites: write a CSV of every measurement and PNG plots (``moeplan bench``).

Suites (:mod:`planner.bench.paper`, :mod:`~planner.bench.scale`, :mod:`~planner.bench.dynamic`; what each runs and how to
read it: ``docs/bench.md``):

* ``paper``: EC2MoE-style end-cloud scenarios (``instances/bench/paper/*.toml``); moeplan's plan
  and every baseline's, predicted by the cost model and simulated on the same requests;
* ``scale``: growing models and fleets; solve time and objective of every solver;
* ``dynamic``: a load spike, a bandwidth drop, a device failure and a measured cellular bandwidth
  series; the static plan against online re-planning.

Progress (one line per scenario and solver, with the elapsed time) goes to ``progress``. Plots need
matplotlib (``pip install 'moeplan[bench]'``); without it the CSVs and tables are still written.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from planner.bench import dynamic, paper, scale
from planner.bench import plots as bench_plots
from planner.bench.common import Settings, instance_solvers, write_csv
from planner.domain.errors import InputError, Problem

SUITES = ("paper", "scale", "dynamic")
DEFAULT_OUT = "bench-out"


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def prepare_out(out: str) -> Path:
    """Create ``out`` and check that files can be written in it; :class:`InputError` naming it if not."""
    if not out.strip():
        raise InputError(Problem(out, "--out", "must name a folder"))
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise InputError(Problem(out, "--out", "is a file; --out names a folder (created if missing) for the CSVs and plots"))
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".moeplan-bench-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise InputError(Problem(out, "--out", f"cannot be written: {exc.strerror or exc}")) from None
    return path


def write_plots(out: Path, result) -> list[Path]:
    """The PNG files of a suite's output (:class:`planner.bench.common.SuiteOutput`) in ``out``."""
    figs = result.figures
    paths = []
    if result.name == "paper":
        if any(sc["sat"] for sc in figs["scenarios"]):
            paths.append(bench_plots.throughput_bars(figs["scenarios"], instance_solvers(), out / "paper_throughput.png"))
        if figs["cdf"]:
            slos = {sc["scenario"]: sc.get("slo_ms", {}) for sc in figs["scenarios"]}
            paths.append(bench_plots.latency_cdfs(figs["cdf"], slos, instance_solvers(), out / "paper_latency_cdf.png"))
        if figs["gantt"] and figs["gantt"]["timeline"]:
            g = figs["gantt"]
            paths.append(bench_plots.pipeline_gantt(g["scenario"], g["timeline"], out / f"paper_timeline_{g['scenario']}.png",
                                                    plan=g.get("plan", "")))
    elif result.name == "scale":
        paths.append(bench_plots.solve_time_scatter(result.rows, figs["solvers"], out / "scale_solve_time.png"))
    elif result.name == "dynamic":
        paths.append(bench_plots.slo_bars(result.rows, out / "dynamic_slo.png"))
        for b in figs["bandwidth"]:
            paths.append(bench_plots.bandwidth_timeline(b["title"], b["mbps"], b["nominal_mbps"], b["applied_s"], b["kept_s"],
                                                        out / f"dynamic_bandwidth_{b['slug']}.png",
                                                        rank_steps=b.get("rank_steps")))
    return paths


def run(suites: list[str], out: Path, *, quick: bool, seed: int, progress=log) -> list:
    """Run ``suites`` and write their CSVs and plots into ``out``; returns their
    :class:`planner.bench.common.SuiteOutput` s."""
    runners = {"paper": paper.run_paper, "scale": scale.run_scale, "dynamic": dynamic.run_dynamic}
    settings = Settings(quick=quick, seed=seed)
    plots = bench_plots.available()
    if not plots:
        progress(f"note: {bench_plots.INSTALL_HINT}; writing the CSVs and tables only")
    results = []
    for name in suites:
        t0 = time.perf_counter()
        progress(f"suite {name}{' (quick)' if quick else ''} ...")
        result = runners[name](settings, progress)
        for stale in out.glob(f"{name}_*.png"):  # plots of an earlier run of this suite
            stale.unlink()
        written = [write_csv(out / f"{name}.csv", result.rows)]
        if plots:
            written += write_plots(out, result)
        elapsed = time.perf_counter() - t0
        result.notes.append(f"suite {name}: {elapsed:.1f} s with its CSV{' and plots' if plots else ''}")
        progress(f"suite {name} done in {elapsed:.1f} s: " + ", ".join(str(p) for p in written))
        results.append(result)
    return results
