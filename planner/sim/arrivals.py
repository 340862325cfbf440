"""Arrivals of a simulation: a request trace (repeated back to back when more requests are asked
for than it holds) or a seeded Poisson process, warped in time by arrival-rate events."""

from __future__ import annotations

import math

import numpy as np

from planner.domain.data_files import RequestTrace
from planner.domain.instance import Instance

DEFAULT_REQUESTS = 1000  # Poisson arrivals when neither num_requests nor duration_s is given
MAX_REQUESTS = 10_000_000  # a run of more requests (about 25 min at 100k per 15 s) is refused


class Warp:
    """Arrival-rate factors over time: real time <-> base time (``base(t) = integral of the factor``)."""

    def __init__(self, changes: list[tuple[float, float]]):
        times, factors = [0.0], [1.0]
        for t, f in changes:
            if t == times[-1]:
                factors[-1] = f
            else:
                times.append(t)
                factors.append(f)
        self.t = np.array(times)
        self.f = np.array(factors)
        self.w = np.concatenate([[0.0], np.cumsum(np.diff(self.t) * self.f[:-1])])

    def base(self, t: float) -> float:
        k = int(np.searchsorted(self.t, t, side="right") - 1)
        return float(self.w[k] + (t - self.t[k]) * self.f[k])

    def real(self, tau: np.ndarray) -> np.ndarray:
        k = np.searchsorted(self.w, tau, side="right") - 1
        return self.t[k] + (tau - self.w[k]) / self.f[k]


def arrivals(instance: Instance, trace: RequestTrace | None, num_requests: int | None, duration_s: float | None,
              seed: int, warp: Warp) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Arrival times (s), prompt and output tokens of every request of the run."""
    horizon = math.inf if duration_s is None else warp.base(duration_s)
    w = instance.workload

    def too_many(expected: float) -> None:
        if num_requests is None and duration_s is not None and expected > MAX_REQUESTS:
            raise ValueError(f"duration_s = {duration_s:g} s brings about {expected:.3g} requests; "
                             f"at most {MAX_REQUESTS:,} are simulated")

    if trace is None:
        too_many(horizon * w.arrival_rate_per_s)
        count = DEFAULT_REQUESTS if num_requests is None and duration_s is None else num_requests
        rng = np.random.default_rng(seed)
        gaps = []
        total, drawn = 0.0, 0
        while (count is None or drawn < count) and total <= horizon:
            k = count - drawn if count is not None else max(1024, int((horizon - total) * w.arrival_rate_per_s * 1.1) + 16)
            g = rng.exponential(1.0 / w.arrival_rate_per_s, size=k)
            gaps.append(g)
            drawn += k
            total += float(g.sum())
        base = np.cumsum(np.concatenate(gaps)) if gaps else np.zeros(0)
        base = base[base < horizon][:count]
        return warp.real(base), np.full(base.size, w.prompt_tokens), np.full(base.size, w.output_tokens)
    order = np.argsort(trace.arrival_s, kind="stable")
    t0 = trace.arrival_s[order]
    size = t0.size
    span = float(t0[-1] - t0[0])
    period = span + (span / (size - 1) if size > 1 and span > 0 else 1.0)
    if num_requests is not None:
        reps = math.ceil(num_requests / size)
    elif duration_s is not None:
        too_many((horizon - float(t0[0])) / period * size)
        reps = max(1, math.ceil((horizon - float(t0[0])) / period) + 1)
    else:
        reps = 1
    base = np.concatenate([t0 + k * period for k in range(reps)])
    idx = np.tile(order, reps)
    keep = base < horizon
    base, idx = base[keep], idx[keep]
    if num_requests is not None:
        base, idx = base[:num_requests], idx[:num_requests]
    return warp.real(base), trace.prompt_tokens[idx], trace.output_tokens[idx]
