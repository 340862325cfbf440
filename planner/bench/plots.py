"""Plots of ``moeplan bench`` (PNG, matplotlib with the Agg backend).

matplotlib is optional (``pip install 'moeplan[bench]'``): it is imported inside the functions
here only, so the planner imports without it; :func:`available` says whether it is installed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from planner.api import DEFAULT_SOLVER as MOEPLAN

INSTALL_HINT = "the plots need matplotlib: pip install 'moeplan[bench]'"


def available() -> bool:
    """Whether matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colours(names: list[str]) -> dict[str, tuple]:
    """One colour per solver, moeplan's always the same strong blue."""
    plt = _pyplot()
    cmap = plt.get_cmap("tab10")
    others = [n for n in names if n != MOEPLAN]
    out = {n: cmap((i + 1) % 10) for i, n in enumerate(others)}
    out[MOEPLAN] = cmap(0)
    return out


def _label(solver: str) -> str:
    return f"moeplan ({solver})" if solver == MOEPLAN else solver


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return path


def throughput_bars(scenarios: list[dict], solvers: list[str], path: Path) -> Path:
    """Simulated saturation throughput per scenario, one bar per solver (log scale); a solver
    without a plan has no bar and is marked 'x' at the axis."""
    plt = _pyplot()
    names = [s["scenario"] for s in scenarios]
    fig, ax = plt.subplots(figsize=(max(8.0, 1.1 * len(names) + 3), 5.2))
    width = 0.8 / len(solvers)
    colours = _colours(solvers)
    x = np.arange(len(names))
    values = [v for s in scenarios for v in s["sat"].values() if v]
    floor = min(values) / 3 if values else 1.0
    for j, solver in enumerate(solvers):
        ys = [s["sat"].get(solver) for s in scenarios]
        pos = x - 0.4 + width * (j + 0.5)
        have = [(p, y) for p, y in zip(pos, ys) if y]
        ax.bar([p for p, _ in have], [y for _, y in have], width, color=colours[solver],
               edgecolor="black" if solver == MOEPLAN else None, linewidth=0.8)
        missing = [p for p, y in zip(pos, ys) if not y]
        ax.plot(missing, [floor * 1.15] * len(missing), "x", color=colours[solver], markersize=5)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[s], ec="black" if s == MOEPLAN else "none") for s in solvers]
    labels = [_label(s) + ("" if any(sc["sat"].get(s) for sc in scenarios) else " (no plan anywhere)") for s in solvers]
    ax.set_yscale("log")
    ax.set_ylim(bottom=floor)
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("simulated throughput at saturation (tokens/s, log)")
    ax.set_xlabel("scenario (x at the axis: no valid plan)")
    ax.set_title("Paper suite: throughput of moeplan and the baselines")
    ax.grid(axis="y", which="both", alpha=0.3)
    ax.legend(handles, labels, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="solver", title_fontsize=8)
    return _save(fig, path)


def latency_cdf(scenario: str, latencies_ms: dict[str, np.ndarray], path: Path) -> Path:
    """Empirical CDF of end-to-end request latency, one line per solver; solvers whose requests
    got exactly the same latencies (the same plan) share one line and one legend entry."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    colours = _colours(list(latencies_ms))
    groups: list[tuple[list[str], np.ndarray]] = []
    for solver, lat in latencies_ms.items():
        same = next((g for g in groups if np.array_equal(g[1], lat)), None)
        if same is None:
            groups.append(([solver], lat))
        else:
            same[0].append(solver)
    for names, lat in groups:
        if lat.size == 0:
            continue
        y = np.arange(1, lat.size + 1) / lat.size
        mine = MOEPLAN in names
        ax.step(lat, y, where="post", label=" = ".join(_label(n) for n in names), color=colours[names[0]],
                linewidth=2.4 if mine else 1.4)
    ax.set_xscale("log")
    ax.set_xlabel("end-to-end request latency (ms, log)")
    ax.set_ylabel("fraction of requests (CDF)")
    ax.set_ylim(0, 1.01)
    ax.set_title(f"Latency CDF at the scenario's load: {scenario}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, path)


def pipeline_gantt(scenario: str, timeline: list[tuple], path: Path) -> Path:
    """The simulator's timeline of moeplan's plan: resources on the y axis, ms on x, one colour per
    phase or micro-batch (prefill; decode per micro-batch slot). Shows the start of the run: the
    prefills and as long again of decoding after them."""
    plt = _pyplot()
    prefill_end = max((e for _, _, e, w in timeline if _phase(w) == "prefill"), default=max(e for _, _, e, _ in timeline))
    window = [(r, s, min(e, 2 * prefill_end), w) for r, s, e, w in timeline if s < 2 * prefill_end]
    resources = sorted({r for r, *_ in window}, key=lambda r: min(s for rr, s, *_ in window if rr == r))
    kinds = sorted({_phase(w) for *_, w in window})
    cmap = plt.get_cmap("tab10")
    colour = {k: cmap(i % 10) for i, k in enumerate(kinds)}
    fig, ax = plt.subplots(figsize=(11, 1.6 + 0.6 * len(resources)))
    for r, start, end, what in window:
        ax.barh(resources.index(r), (end - start) * 1e3, left=start * 1e3, height=0.6, color=colour[_phase(what)],
                edgecolor="white", linewidth=0.3)
    ax.set_yticks(range(len(resources)))
    ax.set_yticklabels(resources, fontsize=9)
    ax.invert_yaxis()
    ax.set_xlim(0, 2 * prefill_end * 1e3)
    ax.set_xlabel("simulated time (ms)")
    ax.set_ylabel("resource (device or link)")
    ax.set_title(f"Pipeline timeline of moeplan's plan: {scenario} (first {2 * prefill_end * 1e3:.0f} ms)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colour[k]) for k in kinds]
    ax.legend(handles, kinds, fontsize=8, ncol=min(6, len(kinds)), loc="upper center", bbox_to_anchor=(0.5, -0.3))
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def _phase(what: str) -> str:
    """Legend entry of a timeline hold: "prefill", "decode slot K" (one colour per micro-batch), or
    what the simulator called it (e.g. "migration")."""
    words = str(what).split()
    if "prefill" in words:
        return "prefill"
    if "decode" in words and "slot" in words:
        return f"decode slot {words[words.index('slot') + 1]}"
    return str(what) or "busy"


def solve_time_scatter(rows: list[dict], solvers: list[str], path: Path) -> Path:
    """Solve wall time against instance size (layers x experts x devices), log-log, per solver;
    hollow markers: no plan found (infeasible or time limit). Instances that the capacity check
    rejects at once (the model does not fit the fleet) are left out."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9.5, 5.2))
    colours = _colours(solvers)
    markers = "osD^v<>ph*"
    shown = [r for r in rows if r.get("stop_reason") != "capacity check"]
    for j, solver in enumerate(solvers):
        mine = [r for r in shown if r["solver"] == solver]
        if not mine:
            continue
        ok = [r["objective_value"] is not None and np.isfinite(r["objective_value"]) for r in mine]
        for found in (True, False):
            pts = [r for r, o in zip(mine, ok) if o == found]
            ax.scatter([r["size"] for r in pts], [max(r["wall_time_s"], 1e-4) for r in pts], marker=markers[j % len(markers)],
                       s=32, label=_label(solver) if found else None,
                       **({"color": colours[solver]} if found else {"facecolors": "none", "edgecolors": colours[solver]}))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("instance size: layers x experts x devices (log)")
    ax.set_ylabel("solve time, wall clock (s, log)")
    ax.set_title("Scale suite: solve time by instance size (hollow: no plan)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="solver", title_fontsize=8)
    return _save(fig, path)


def slo_bars(rows: list[dict], path: Path) -> Path:
    """SLO attainment of the static plan and of online re-planning, per dynamic scenario."""
    plt = _pyplot()
    names = list(dict.fromkeys(r["scenario"] for r in rows))
    fig, ax = plt.subplots(figsize=(max(6.5, 1.6 * len(names) + 2), 4.6))
    x = np.arange(len(names))
    for j, (mode, colour) in enumerate((("static", "#999999"), ("replan", "#1f77b4"))):
        ys = [next((r["sim_slo_attainment"] for r in rows if r["scenario"] == n and r["mode"] == mode), None) for n in names]
        ax.bar(x - 0.2 + 0.4 * j, [0 if y is None else y for y in ys], 0.4,
               label="static plan" if mode == "static" else "online re-planning", color=colour)
        for xi, y in zip(x - 0.2 + 0.4 * j, ys):
            ax.text(xi, (y or 0) + 0.01, "-" if y is None else f"{y:.2f}", ha="center", fontsize=8)
    ax.set_xticks(x)
    ax.set_xticklabels(names, fontsize=9)
    ax.set_ylim(0, 1.25)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("SLO attainment (fraction of requests)")
    ax.set_xlabel("dynamic scenario")
    ax.set_title("Dynamic suite: static plan vs online re-planning")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", ncol=2)
    return _save(fig, path)


def bandwidth_timeline(title: str, mbps: np.ndarray, nominal_mbps: float, applied_s: list[float], kept_s: list[float],
                       path: Path, rank_steps: list[tuple[float, int | None]] | None = None) -> Path:
    """Bandwidth (Mbit/s) per second, the nominal (planned) figure, and the re-planner's calls:
    kept (no better plan) as grey ticks at the bottom; applied (a new plan) as solid red lines, or,
    with ``rank_steps`` ((time s, codec rank) from each plan's start), as the steps of the codec
    rank in use on a second axis."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 4.2))
    t = np.arange(mbps.size)
    handles = ax.step(t, mbps, where="post", color="#1f77b4", linewidth=1.2, label="link bandwidth")
    handles.append(ax.axhline(nominal_mbps, color="black", linestyle="--", linewidth=1,
                              label=f"nominal (planned): {nominal_mbps:g} Mbit/s"))
    top = float(max(mbps.max(), nominal_mbps)) * 1.4  # headroom for the legend
    if rank_steps:
        ranks = ax.twinx()
        xs = [s for s, _ in rank_steps] + [mbps.size]
        ys = [0 if r is None else r for _, r in rank_steps]
        handles += ranks.step(xs, ys + ys[-1:], where="post", color="#d62728", linewidth=1.4,
                              label=f"codec rank in use ({len(applied_s)} re-plans applied)")
        levels = sorted(set(ys))
        ranks.set_yticks(levels)
        ranks.set_ylim(0, max(levels) * 1.25)
        ranks.set_ylabel("codec rank (numbers per token)")
    else:
        for k, s in enumerate(applied_s):
            line = ax.axvline(s, color="#d62728", alpha=0.7, linewidth=1.2, label=f"re-plan applied ({len(applied_s)})")
            if k == 0:
                handles.append(line)
    if kept_s:
        handles += ax.plot(kept_s, [top * 0.02] * len(kept_s), "|", color="#555555", markersize=10,
                           label=f"re-planner called, plan kept ({len(kept_s)})")
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("bandwidth (Mbit/s)")
    ax.set_ylim(0, top)
    ax.set_xlim(0, mbps.size)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, fontsize=8, loc="upper center", ncol=2)
    return _save(fig, path)
