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


def _save(fig, path: Path, rect=None) -> Path:
    fig.tight_layout(**({"rect": rect} if rect else {}))
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return path


def _grouped_ratio_panel(ax, plt, scenarios: list[dict], solvers: list[str], colours: dict, *, key: str,
                         higher_is_better: bool, unit: str) -> None:
    """One panel of bars: per scenario, each solver's ``key`` figure over the best baseline's
    (linear axis, 1 = the best baseline), the ratio written on each bar, "no plan" written where a
    solver has none."""
    width = 0.8 / len(solvers)
    x = np.arange(len(scenarios))
    ticks, top = [], 1.0
    for i, sc in enumerate(scenarios):
        values = sc.get(key, {})
        base = [v for n, v in values.items() if n != MOEPLAN and v]
        ref = (max(base) if higher_is_better else min(base)) if base else values.get(MOEPLAN)
        shown = f"{ref:,.0f} {unit}" if ref else "-"
        ticks.append(f"{sc['scenario']}\nbest baseline: {shown}" if base else f"{sc['scenario']}\n(no baseline plan; 1 = moeplan)")
        for j, solver in enumerate(solvers):
            pos = x[i] - 0.4 + width * (j + 0.5)
            v = values.get(solver)
            if not v or not ref:
                ax.text(pos, 0.02, "no plan", rotation=90, ha="center", va="bottom", fontsize=6.5, color="#444444")
                continue
            ratio = v / ref
            top = max(top, ratio)
            ax.bar(pos, ratio, width, color=colours[solver], edgecolor="black" if solver == MOEPLAN else "none", linewidth=0.8)
            ax.text(pos, ratio + 0.01, f"{ratio:.2f}x", rotation=90, ha="center", va="bottom", fontsize=6.5,
                    fontweight="bold" if solver == MOEPLAN else "normal")
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_xticks(x)
    ax.set_xticklabels(ticks, rotation=30, ha="right", fontsize=7)
    ax.set_xlim(-0.6, len(scenarios) - 0.4)
    ax.set_ylim(0, top * 1.3)
    ax.grid(axis="y", alpha=0.3)


def throughput_bars(scenarios: list[dict], solvers: list[str], path: Path) -> Path:
    """Paper suite, per scenario, every solver against the best baseline (linear axis, 1 = the best
    baseline, the ratio on each bar, "no plan" written out): throughput-objective scenarios by
    simulated saturation throughput (higher is better), latency-objective scenarios on their own
    panel by simulated p50 latency at the scenario's rate (lower is better)."""
    plt = _pyplot()
    groups = [(g, [s for s in scenarios if (s.get("objective") == "latency") == (g == "latency")])
              for g in ("throughput", "latency")]
    groups = [(g, scs) for g, scs in groups if scs]
    colours = _colours(solvers)
    fig, axes = plt.subplots(len(groups), 1, squeeze=False,
                             figsize=(max(9.0, 1.25 * max(len(scs) for _, scs in groups) + 4), 4.6 * len(groups)))
    for ax, (group, scs) in zip(axes[:, 0], groups):
        if group == "throughput":
            _grouped_ratio_panel(ax, plt, scs, solvers, colours, key="sat", higher_is_better=True, unit="tok/s")
            ax.set_ylabel("saturation throughput\n/ best baseline's (higher is better)")
            ax.set_title("Throughput-objective scenarios: simulated throughput at saturation", fontsize=10)
        else:
            _grouped_ratio_panel(ax, plt, scs, solvers, colours, key="latency_p50", higher_is_better=False, unit="ms p50")
            ax.set_ylabel("p50 latency at the scenario's rate\n/ best baseline's (lower is better)")
            ax.set_title("Latency-objective scenarios: simulated p50 end-to-end latency", fontsize=10)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[s], ec="black" if s == MOEPLAN else "none") for s in solvers]
    handles.append(plt.Line2D([], [], color="black", linestyle="--", linewidth=0.8))
    axes[0, 0].legend(handles, [_label(s) for s in solvers] + ["1 = the best baseline"], fontsize=8, loc="upper left",
                      bbox_to_anchor=(1.01, 1.0), title="solver", title_fontsize=8)
    fig.suptitle("Paper suite: moeplan and the baselines, relative to the best baseline of each scenario", fontsize=11)
    return _save(fig, path)


def _slo_line_ms(slo: dict) -> tuple[float | None, str]:
    """Where an end-to-end latency CDF meets the scenario's SLO: its latency SLO, else the most a
    request of the mean output length may take under its TTFT and TPOT SLOs."""
    if "latency" in slo:
        return slo["latency"], f"latency SLO {slo['latency'] / 1e3:g} s"
    if "ttft" in slo and "tpot" in slo:
        bound = slo["ttft"] + (slo.get("mean_output_tokens", 1) - 1) * slo["tpot"]
        return bound, f"TTFT {slo['ttft'] / 1e3:g} s + TPOT {slo['tpot']:g} ms SLOs, mean request: {bound / 1e3:.1f} s"
    return None, "no latency SLO"


def latency_cdfs(cdf: dict[str, dict[str, np.ndarray]], slos: dict[str, dict], solvers: list[str], path: Path) -> Path:
    """Empirical CDFs of end-to-end request latency at each scenario's own rate, one small panel per
    scenario, one line per solver (solvers whose requests got the same latencies, the same plan,
    share a line, named in the panel), the scenario's SLO as a vertical red line."""
    plt = _pyplot()
    names = list(cdf)
    cols = min(4, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, squeeze=False, figsize=(3.6 * cols + 2.2, 2.9 * rows + 0.8))
    colours = _colours(solvers)
    for ax, name in zip(axes.flat, names):
        groups: list[tuple[list[str], np.ndarray]] = []
        for solver in solvers:
            lat = cdf[name].get(solver)
            if lat is None or lat.size == 0:
                continue
            same = next((g for g in groups if np.array_equal(g[1], lat)), None)
            if same is None:
                groups.append(([solver], lat))
            else:
                same[0].append(solver)
        for members, lat in groups:
            y = np.arange(1, lat.size + 1) / lat.size
            ax.step(lat, y, where="post", color=colours[members[0]], linewidth=2.2 if MOEPLAN in members else 1.2)
        merged = ["=".join(m) for m, _ in groups if len(m) > 1]
        if merged:
            ax.text(0.02, 0.89, "same plan: " + "; ".join(merged), transform=ax.transAxes, ha="left", va="top", fontsize=5.5,
                    color="#333333")
        line, text = _slo_line_ms(slos.get(name, {}))
        if line is not None:
            ax.axvline(line, color="#d62728", linestyle="--", linewidth=1.2)
        ax.text(0.02, 0.96, text, transform=ax.transAxes, ha="left", va="top", fontsize=6, color="#d62728")
        ax.set_xscale("log")
        ax.set_ylim(0, 1.02)
        ax.set_title(name, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3, which="both")
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("fraction of requests", fontsize=8)
    for ax in axes[-1, :]:
        ax.set_xlabel("end-to-end latency (ms, log)", fontsize=8)
    handles = [plt.Line2D([], [], color=colours[s], linewidth=2.2 if s == MOEPLAN else 1.2) for s in solvers]
    handles.append(plt.Line2D([], [], color="#d62728", linestyle="--"))
    fig.legend(handles, [_label(s) for s in solvers] + ["the scenario's SLO"], fontsize=8, loc="upper left",
               bbox_to_anchor=(0.995 - 2.0 / (3.6 * cols + 2.2), 0.97), title="solver", title_fontsize=8)
    fig.suptitle("Paper suite: latency CDFs at each scenario's own arrival rate", fontsize=11)
    return _save(fig, path, rect=(0, 0, 1 - 2.1 / (3.6 * cols + 2.2), 0.96))


def pipeline_gantt(scenario: str, timeline: list[tuple], path: Path, plan: str = "") -> Path:
    """The simulator's timeline of moeplan's plan ``plan`` (its one-line summary, named in the
    title): resources on the y axis, ms on x, one colour per phase or micro-batch (prefill; decode
    per micro-batch slot), the legend beside the axes. Shows the start of the run: the prefills and
    as long again of decoding after them."""
    plt = _pyplot()
    prefill_end = max((e for _, _, e, w in timeline if _phase(w) == "prefill"), default=max(e for _, _, e, _ in timeline))
    window = [(r, s, min(e, 2 * prefill_end), w) for r, s, e, w in timeline if s < 2 * prefill_end]
    resources = sorted({r for r, *_ in window}, key=lambda r: min(s for rr, s, *_ in window if rr == r))
    kinds = sorted({_phase(w) for *_, w in window})
    cmap = plt.get_cmap("tab10")
    colour = {k: cmap(i % 10) for i, k in enumerate(kinds)}
    fig, ax = plt.subplots(figsize=(12, 1.9 + 0.6 * len(resources)))
    for r, start, end, what in window:
        ax.barh(resources.index(r), (end - start) * 1e3, left=start * 1e3, height=0.6, color=colour[_phase(what)],
                edgecolor="white", linewidth=0.3)
    ax.set_yticks(range(len(resources)))
    ax.set_yticklabels(resources, fontsize=9)
    ax.invert_yaxis()
    ax.set_xlim(0, 2 * prefill_end * 1e3)
    ax.set_xlabel("simulated time (ms)")
    ax.set_ylabel("resource (device or link)")
    shown = f"moeplan's plan {plan}" if plan else "moeplan's plan"
    ax.set_title(f"Pipeline timeline, {scenario}: {shown}\n(first {2 * prefill_end * 1e3:.0f} ms: the prefills, then as long "
                 "again of decoding)", fontsize=10)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colour[k]) for k in kinds]
    ax.legend(handles, kinds, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="phase", title_fontsize=8)
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
    """Scale suite, two panels, one above the other, over the instances (x: one slot per instance, ordered by size =
    layers x experts x devices, so instances of equal size stand apart): solve wall time (log) and
    plan quality (objective / the best any solver found on the instance). Markers: filled, a plan;
    black ring, proven optimal (in the solver's space); a cross on it, stopped by its time limit;
    hollow, no plan (at the bottom of the quality panel). Instances the capacity check rejects at once are left out."""
    plt = _pyplot()
    shown = [r for r in rows if r.get("stop_reason") != "capacity check"]
    instances = sorted({r["instance"]: r["size"] for r in shown}.items(), key=lambda kv: (kv[1], kv[0]))
    index = {name: i for i, (name, _) in enumerate(instances)}
    best = {}
    for r in shown:
        v = r["objective_value"]
        if v is not None and np.isfinite(v):
            best[r["instance"]] = max(best.get(r["instance"], 0.0), v)
    fig, (ax_t, ax_q) = plt.subplots(2, 1, sharex=True, figsize=(min(26.0, max(11.0, 0.55 * len(instances) + 5)), 9.5))
    colours = _colours(solvers)
    markers = "osD^v<>ph*"
    width = 0.7 / max(1, len(solvers))
    for j, solver in enumerate(solvers):
        mine = [r for r in shown if r["solver"] == solver]
        for r in mine:
            x = index[r["instance"]] - 0.35 + width * (j + 0.5)
            v = r["objective_value"]
            found = v is not None and np.isfinite(v)
            optimal = r["status"] == "optimal"
            style = ({"color": colours[solver], "edgecolors": "black" if optimal else colours[solver],
                      "linewidths": 1.8 if optimal else 0.5}
                     if found else {"facecolors": "none", "edgecolors": colours[solver], "linewidths": 1.2})
            marker = markers[j % len(markers)]
            t = max(r["wall_time_s"], 1e-4)
            q = v / best[r["instance"]] if found and best.get(r["instance"]) else 0.02
            for ax, y in ((ax_t, t), (ax_q, q)):
                ax.scatter([x], [y], marker=marker, s=36, **style)
                if r["status"] == "time_limit":  # a cross on the marker: the time limit stopped it
                    ax.scatter([x], [y], marker="x", s=22, color="black", linewidths=1.0)
    for ax in (ax_t, ax_q):
        ax.set_xlim(-0.6, len(instances) - 0.4)
        ax.grid(alpha=0.3, which="both")
    ax_q.set_xticks(range(len(instances)))
    ax_q.set_xticklabels([f"{name}\n{size:,}" for name, size in instances], rotation=40, ha="right", fontsize=7)
    ax_q.set_xlabel("instance and its size (layers x experts x devices), by size")
    ax_t.set_yscale("log")
    ax_t.set_ylabel("solve time, wall clock (s, log)")
    ax_t.set_title("Solve time", fontsize=10)
    ax_q.set_ylim(0, 1.08)
    ax_q.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax_q.set_ylabel("tokens/s / the best found on the instance\n(no plan: at the bottom)")
    ax_q.set_title("Plan quality", fontsize=10)
    handles = [plt.Line2D([], [], marker=markers[j % len(markers)], linestyle="", color=colours[s], markersize=6)
               for j, s in enumerate(solvers)]
    labels = [_label(s) for s in solvers]
    handles += [plt.Line2D([], [], marker="o", linestyle="", color="#bbbbbb", markeredgecolor="black", markeredgewidth=1.8,
                           markersize=6),
                plt.Line2D([], [], marker="x", linestyle="", color="black", markersize=6),
                plt.Line2D([], [], marker="o", linestyle="", color="#777777", markerfacecolor="none", markersize=6)]
    labels += ["proven optimal in its space (black ring)", "stopped by its time limit (x)", "no plan (hollow)"]
    ax_t.legend(handles, labels, fontsize=7.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="solver", title_fontsize=8)
    fig.suptitle("Scale suite: solve time and plan quality by instance", fontsize=11)
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
