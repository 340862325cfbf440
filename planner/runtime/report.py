"""What a run measured: per device and per link, per pass and per token; TTFT, TPOT, latency, tokens/s.

:class:`RunMeasurement` reads the measurements every process gathered at the end of a run
(:meth:`planner.runtime.worker.Worker.stats`) and the requests that finished. Device time is the
CPU time of the computations a device held (its stage's passes, and the expert calls it served for
other stages, each counted in the pass that made it), times its emulated slowdown; the wall time
of the same holds is kept beside it. A link's time is what its emulation held it for (bytes over
bandwidth), per direction, summed over both; its bytes are everything sent (headers, ids and
tensors). Per-request figures follow the simulator's definitions (:mod:`planner.sim.results`):
TTFT = first token - arrival, TPOT = (finish - first token) / (output tokens - 1), latency =
finish - arrival, tokens/s = output tokens of the finished requests / (last finish - first arrival).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

PHASES = ("prefill", "decode")


def stats_ms(values_s) -> dict:
    """mean, p50, p95, p99 of seconds, in ms (None for an empty list)."""
    v = np.asarray(list(values_s), dtype=float)
    if v.size == 0:
        return {"mean": None, "p50": None, "p95": None, "p99": None}
    p50, p95, p99 = np.percentile(v, [50, 95, 99])
    return {"mean": float(v.mean() * 1e3), "p50": float(p50 * 1e3), "p95": float(p95 * 1e3), "p99": float(p99 * 1e3)}


def request_figures(records: list[dict], since: float | None = None) -> dict:
    """TTFT, TPOT and latency statistics (ms), tokens/s and counts of finished request ``records``;
    tokens/s over ``span_s``, from the first arrival (or ``since``, if later: a re-planned run's
    start) to the last finish."""
    if not records:
        return {"requests": 0, "output_tokens": 0, "tokens_per_s": 0.0, "span_s": 0.0,
                "ttft_ms": stats_ms([]), "tpot_ms": stats_ms([]), "latency_ms": stats_ms([])}
    ttft = [r["first_token_s"] - r["arrival_s"] for r in records]
    tpot = [(r["finish_s"] - r["first_token_s"]) / (r["output_tokens"] - 1) for r in records if r["output_tokens"] > 1]
    latency = [r["finish_s"] - r["arrival_s"] for r in records]
    tokens = sum(r["output_tokens"] for r in records)
    start = min(r["arrival_s"] for r in records)
    span = max(r["finish_s"] for r in records) - (max(start, since) if since is not None else start)
    return {"requests": len(records), "output_tokens": tokens, "tokens_per_s": tokens / span if span > 0 else 0.0,
            "span_s": span, "ttft_ms": stats_ms(ttft), "tpot_ms": stats_ms(tpot), "latency_ms": stats_ms(latency)}


class RunMeasurement:
    """One run of one plan, from its processes' gathered ``stats`` (one dict per rank).

    ``stage[device]``, ``experts[device]``: the records of :class:`~planner.runtime.stage.StageRole`
    and :class:`~planner.runtime.stage.ExpertRole`; ``passes``: the scheduler's pass records;
    ``requests``: finished requests; ``channels[(src, dst)]``: what each sender sent;
    ``link_busy_s[key]``: emulated seconds each instance link was held (both directions).
    """

    def __init__(self, stats: list[dict], instance, plan, requests: list[dict] | None = None):
        self.instance, self.plan = instance, plan
        self.devices = [s["device"] for s in stats]
        self.slowdown = {s["device"]: s["slowdown"] for s in stats}
        self.stage = {s["device"]: s["stage"] for s in stats if s["stage"]}
        self.stage_index = {s["device"]: tuple(s["stage_index"]) for s in stats if s["stage_index"] is not None}
        self.experts = {s["device"]: s["experts"] for s in stats if s["experts"]}
        self.passes = [p for s in stats for p in s["passes"]]
        self.requests = requests if requests is not None else [r for s in stats for r in s["requests"]]
        self.channels = {(s["device"], dst): c for s in stats for dst, c in s["channels"].items()}
        self.link_busy_s: dict[str, float] = defaultdict(float)
        for s in stats:
            for key, v in s["link_busy_s"].items():
                self.link_busy_s[key] += v
        self.t0 = stats[0]["t0"] if stats else None

    @classmethod
    def from_stats(cls, stats, instance, plan, requests=None) -> RunMeasurement:
        return cls(stats, instance, plan, requests)

    def pass_phase(self) -> dict[int, dict]:
        """pass id -> the scheduler's record of it."""
        return {p["pass_id"]: p for p in self.passes}

    def device_busy(self, which: str = "cpu_s") -> dict[tuple[str, int], float]:
        """(device, pass id) -> device seconds the pass held it (stage work and expert calls served)."""
        out: dict[tuple[str, int], float] = defaultdict(float)
        for dev, recs in self.stage.items():
            for r in recs:
                out[(dev, r["pass_id"])] += r[which]
        for dev, recs in self.experts.items():
            for r in recs:
                out[(dev, r["pass_id"])] += r[which]
        return out

    def devices_summary(self) -> dict:
        """Per device and phase: passes, mean rows, device ms per pass and per token (CPU and wall)."""
        phase_of = {p: r["phase"] for p, r in self.pass_phase().items()}
        rows_of = {p: r["rows"] for p, r in self.pass_phase().items()}
        tokens_of = {}
        for recs in self.stage.values():
            for r in recs:
                tokens_of[r["pass_id"]] = r["rows"] * r["tokens"]
        cpu, wall = self.device_busy("cpu_s"), self.device_busy("wall_s")
        out: dict = {}
        for (dev, pid), c in cpu.items():
            phase = phase_of.get(pid)
            if phase is None:
                continue
            d = out.setdefault(dev, {}).setdefault(phase, {"passes": 0, "rows": 0, "tokens": 0, "cpu_s": 0.0, "wall_s": 0.0})
            d["passes"] += 1
            d["rows"] += rows_of[pid]
            d["tokens"] += tokens_of.get(pid, rows_of[pid])
            d["cpu_s"] += c
            d["wall_s"] += wall[(dev, pid)]
        for phases in out.values():
            for d in phases.values():
                d["ms_per_pass"] = d["cpu_s"] / d["passes"] * 1e3
                d["ms_per_token"] = d["cpu_s"] / max(d["tokens"], 1) * 1e3
                d["wall_ms_per_pass"] = d["wall_s"] / d["passes"] * 1e3
                d["mean_rows"] = d["rows"] / d["passes"]
        return out

    def links_summary(self) -> dict:
        """Per direction ``"a->b"``: messages, bytes, bytes per output token, emulated hold s, and the
        transfers' own (gloo) ms per message; per instance link: emulated busy s."""
        tokens = max(1, sum(r["output_tokens"] for r in self.requests))
        directions = {}
        for (a, b), c in self.channels.items():
            if c["messages"] == 0:
                continue
            directions[f"{a}->{b}"] = {"messages": c["messages"], "bytes": c["bytes"], "bytes_per_token": c["bytes"] / tokens,
                                       "hold_s": c["hold_s"], "transfer_ms_mean": c["transfer_s"] / c["messages"] * 1e3}
        return {"directions": directions, "links_busy_s": dict(self.link_busy_s)}

    def pass_latencies(self) -> dict:
        """Origin to origin ms of each phase's passes (sent to the first stage -> result back)."""
        out = {}
        for phase in PHASES:
            lat = [p["returned_s"] - p["sent_s"] for p in self.passes if p["phase"] == phase and p["returned_s"] is not None]
            out[phase] = stats_ms(lat)
        return out

    def summary(self) -> dict:
        return {"devices": self.devices_summary(), "links": self.links_summary(), "pass_latency_ms": self.pass_latencies(),
                **request_figures(self.requests, since=self.t0)}


def _f(x, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def measured_table(run: RunMeasurement) -> str:
    """The measured figures of one run as text."""
    s = run.summary()
    lines = [f"{s['requests']} requests, {s['output_tokens']} output tokens in {s['span_s']:.2f} s: {s['tokens_per_s']:.1f} tokens/s",
             f"{'':<12} {'mean':>9} {'p50':>9} {'p95':>9} {'p99':>9}"]
    for key, label in (("ttft_ms", "TTFT ms"), ("tpot_ms", "TPOT ms"), ("latency_ms", "latency ms")):
        lines.append(f"{label:<12} " + " ".join(f"{_f(s[key][k], '.1f'):>9}" for k in ("mean", "p50", "p95", "p99")))
    lines.append(f"{'device':<10} {'phase':<8} {'passes':>6} {'rows':>5} {'ms/pass':>8} {'ms/token':>9} {'wall ms/pass':>12}")
    for dev, phases in s["devices"].items():
        for phase in PHASES:
            d = phases.get(phase)
            if d:
                lines.append(f"{dev:<10} {phase:<8} {d['passes']:>6} {d['mean_rows']:>5.1f} {d['ms_per_pass']:>8.3f} "
                             f"{d['ms_per_token']:>9.4f} {d['wall_ms_per_pass']:>12.3f}")
    lines.append(f"{'link':<16} {'messages':>8} {'bytes':>10} {'bytes/token':>11} {'held s':>8} {'gloo ms/msg':>11}")
    for name, d in s["links"]["directions"].items():
        lines.append(f"{name:<16} {d['messages']:>8} {d['bytes']:>10} {d['bytes_per_token']:>11.1f} {d['hold_s']:>8.3f} "
                     f"{d['transfer_ms_mean']:>11.3f}")
    return "\n".join(lines)
