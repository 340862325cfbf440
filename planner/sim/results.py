"""What a simulation run produced: per-request arrays and the figures computed from them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _stats_ms(values: np.ndarray) -> dict:
    if values.size == 0:
        return {"mean": None, "p50": None, "p95": None, "p99": None}
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"mean": float(values.mean() * 1e3), "p50": float(p50 * 1e3), "p95": float(p95 * 1e3), "p99": float(p99 * 1e3)}


@dataclass
class SimResult:
    """What a run produced. Per-request arrays (length ``requests_total``, in arrival order):
    ``arrival_s``, ``first_token_s`` and ``finish_s`` (NaN when the request did not get there),
    ``prompt_tokens``, ``output_tokens``, ``dropped`` (the reason, "" if it finished), ``dropped_s``
    (when, NaN if it finished), ``retries``, ``pipeline`` and ``plan_index`` (the pipeline, and the
    plan in ``plans``, that admitted it last; -1 if none). ``busy_s``: seconds each device and link
    (``"a<->b"``) was held. ``timeline`` (with ``record_timeline``): ``(resource, start_s, end_s,
    what)`` tuples, at most the cap."""

    arrival_s: np.ndarray
    first_token_s: np.ndarray
    finish_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    dropped: np.ndarray
    retries: np.ndarray
    pipeline: np.ndarray
    sim_time_s: float
    wall_time_s: float
    events_processed: int
    busy_s: dict
    replan_log: list
    migration_bytes: float
    slo_s: dict  # "latency", "ttft", "tpot" -> seconds, only those the instance sets
    timeline: list | None
    plans: list  # every plan that ran, the first one first
    dropped_s: np.ndarray
    plan_index: np.ndarray

    @property
    def finished(self) -> np.ndarray:
        return ~np.isnan(self.finish_s)

    @property
    def ttft_s(self) -> np.ndarray:
        return self.first_token_s - self.arrival_s

    @property
    def latency_s(self) -> np.ndarray:
        return self.finish_s - self.arrival_s

    @property
    def tpot_s(self) -> np.ndarray:
        """Mean time per output token after the first (NaN for one-token requests and unfinished ones)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.output_tokens > 1, (self.finish_s - self.first_token_s) / (self.output_tokens - 1), np.nan)

    def throughput_between(self, t0: float, t1: float) -> float:
        """Output tokens/s of the requests that finished in ``[t0, t1)`` (a steady-state window)."""
        if not t1 > t0:
            raise ValueError(f"need t1 > t0, got [{t0}, {t1})")
        done = self.finished & (self.finish_s >= t0) & (self.finish_s < t1)
        return float(self.output_tokens[done].sum() / (t1 - t0))

    def slo_met(self) -> np.ndarray:
        """Per request: finished and within every SLO the instance sets."""
        ok = self.finished.copy()
        with np.errstate(invalid="ignore"):  # NaN (unfinished) compares False
            if "latency" in self.slo_s:
                ok &= self.latency_s <= self.slo_s["latency"]
            if "ttft" in self.slo_s:
                ok &= self.ttft_s <= self.slo_s["ttft"]
            if "tpot" in self.slo_s:
                ok &= (self.output_tokens <= 1) | (self.tpot_s <= self.slo_s["tpot"])
        return ok

    def metrics(self) -> dict:
        """The figures of the run, JSON-safe (times in ms where the key says so)."""
        fin = self.finished
        n = int(self.arrival_s.size)
        reasons, counts = np.unique(self.dropped[self.dropped != ""], return_counts=True)
        tokens = int(self.output_tokens[fin].sum())
        tpot = self.tpot_s[fin]

        def per_s(x: float) -> float:
            return float(x / self.sim_time_s) if self.sim_time_s > 0 else 0.0

        return {
            "requests_total": n,
            "requests_finished": int(fin.sum()),
            "requests_dropped": int((self.dropped != "").sum()),
            "drop_reasons": {str(r): int(c) for r, c in zip(reasons, counts)},
            "requests_retried": int((self.retries > 0).sum()),
            "output_tokens": tokens,
            "throughput_tokens_per_s": per_s(tokens),
            "requests_per_s": per_s(int(fin.sum())),
            "ttft_ms": _stats_ms(self.ttft_s[fin]),
            "tpot_ms": _stats_ms(tpot[~np.isnan(tpot)]),
            "latency_ms": _stats_ms(self.latency_s[fin]),
            "slo_attainment": float(self.slo_met().sum() / n) if self.slo_s and n else None,
            "utilisation": {k: per_s(v) for k, v in self.busy_s.items()},
            "replans": sum(1 for r in self.replan_log if r["outcome"] == "applied"),
            "migration_bytes": float(self.migration_bytes),
            "replan_log": self.replan_log,
            "sim_time_s": float(self.sim_time_s),
            "wall_time_s": float(self.wall_time_s),
            "events_processed": int(self.events_processed),
        }
