"""Inputs of ``moeplan bench``: request streams and dynamic cellular bandwidth series.

Requests: the Azure LLM conversation trace excerpt bundled with the instances
(``instances/data/azure_llm_2023_conv_first2000.csv``, CC-BY-4.0) keeps its shape (bursty arrivals,
heavy-tailed prompt and output lengths) and is rescaled to a scenario: arrival gaps so that the mean
rate is the scenario's rate, token counts so that their means are the scenario's prompt and output
tokens (rounded, at least 1).

Cellular series: the measured 1 s uplink series of the mahimahi traces (Winstein et al., NSDI'13)
are GPL-3.0 and stay outside the project, in ``../shared/data/network/`` beside the repository.
When that file is there it is read (without its last 1 s bin, which covers only the fraction of a
second before the trace ends: 0.036 Mbit/s for TMobile-LTE-short.up, a spurious outage every time
the simulator cycles the series); when not, a seeded series is synthesised from the trace's
published summary (mean, p10, p90 Mbit/s, which are facts): log-normal marginals fitted to p10 and
p90, scaled to the mean, with AR(1) correlation from second to second so that drops last a few
seconds as they do in the traces. Every output names which one was used.
"""

from __future__ import annotations

import csv
import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from planner.domain.data_files import AZURE_COLUMNS, RequestTrace, read_request_trace
from planner.domain.errors import InputError, Problem
from planner.domain.files import open_text
from planner.domain.units import MBPS

ROOT = Path(__file__).resolve().parents[2]
AZURE_EXCERPT = ROOT / "instances" / "data" / "azure_llm_2023_conv_first2000.csv"
SHARED_SERIES = ROOT.parent / "shared" / "data" / "network" / "mahimahi_cellular_throughput_1s.csv"
Z90 = 1.2815515655446004  # standard normal quantile at 0.9
AR1 = 0.85  # second-to-second correlation of the synthetic log-throughput


@dataclass(frozen=True)
class CellularSummary:
    """Published summary of one mahimahi trace (Mbit/s; duration in s)."""

    mean_mbps: float
    p10_mbps: float
    p90_mbps: float
    duration_s: int


# From /work/shared/data/network/mahimahi_cellular_summary.csv (summary figures, not the traces).
CELLULAR = {
    "TMobile-LTE-short.up": CellularSummary(13.224, 3.324, 25.32, 141),
    "Verizon-LTE-short.up": CellularSummary(5.904, 2.292, 10.596, 141),
}


@dataclass(frozen=True)
class BandwidthSeries:
    """A 1 s bandwidth series: ``mbps[t]`` for second ``t``; ``source`` says where it came from."""

    trace: str
    mbps: np.ndarray
    source: str  # "mahimahi (../shared/data)" or "synthetic series (seed N)"

    @property
    def bytes_per_s(self) -> np.ndarray:
        return self.mbps * MBPS

    @property
    def synthetic(self) -> bool:
        return self.source.startswith("synthetic")


def cellular_series(trace: str, *, seed: int = 0, shared_file: Path | None = None) -> BandwidthSeries:
    """The 1 s series of ``trace`` (a key of :data:`CELLULAR`): measured if the shared data file is
    present, else synthesised (seeded) from the trace's summary."""
    if trace not in CELLULAR:
        raise ValueError(f"unknown cellular trace {trace!r}; known: {', '.join(sorted(CELLULAR))}")
    path = SHARED_SERIES if shared_file is None else shared_file
    if path.is_file():
        measured = _read_shared(path, trace)
        if measured.size:
            return BandwidthSeries(trace, measured, "mahimahi (../shared/data)")
    return BandwidthSeries(trace, synthetic_series(CELLULAR[trace], seed=seed), f"synthetic series (seed {seed})")


def _read_shared(path: Path, trace: str) -> np.ndarray:
    """Mbit/s per whole second of ``trace`` in the shared mahimahi file (columns trace, second,
    mbps), without its partial last second; a malformed file is an :class:`InputError` naming it."""
    label = str(path)
    rows = []
    try:
        with open_text(path, label) as fh:
            reader = csv.DictReader(fh)
            missing = {"trace", "second", "mbps"} - set(reader.fieldnames or [])
            if missing:
                raise InputError(Problem(label, "header", f"needs columns trace, second, mbps; missing {sorted(missing)}"))
            for line, row in enumerate(reader, start=2):
                if row["trace"] != trace:
                    continue
                try:
                    second, mbps = int(row["second"]), float(row["mbps"])
                except (TypeError, ValueError):
                    raise InputError(Problem(label, f"line {line}", f"second and mbps must be numbers, got "
                                                                    f"{row['second']!r}, {row['mbps']!r}")) from None
                if not (math.isfinite(mbps) and 0 <= mbps <= 1e7):
                    raise InputError(Problem(label, f"line {line}", f"mbps must be between 0 and 1e7, got {mbps}"))
                rows.append((second, mbps))
    except UnicodeDecodeError:
        raise InputError(Problem(label, "", "is not UTF-8 text")) from None
    except csv.Error as exc:
        raise InputError(Problem(label, "", f"is not valid CSV: {exc}")) from None
    rows.sort()
    return np.array([mbps for _, mbps in rows[:-1]], dtype=float)


def synthetic_series(summary: CellularSummary, *, seed: int = 0) -> np.ndarray:
    """Mbit/s per second, one value per whole second of the trace (``duration_s - 1``, as the
    measured series without its partial last bin): log-normal with the summary's p10 and p90, AR(1)
    in log space, rescaled so that its mean is the summary's mean exactly."""
    rng = np.random.default_rng(seed)
    sigma = math.log(summary.p90_mbps / summary.p10_mbps) / (2.0 * Z90)
    n = summary.duration_s - 1
    z = np.empty(n)
    z[0] = rng.standard_normal()
    shocks = rng.standard_normal(n) * math.sqrt(1.0 - AR1 * AR1)
    for t in range(1, n):
        z[t] = AR1 * z[t - 1] + shocks[t]
    series = np.exp(sigma * z)
    return series * (summary.mean_mbps / series.mean())


@functools.lru_cache(maxsize=1)
def _azure_excerpt() -> RequestTrace:
    """The shipped Azure excerpt, read once (callers slice it; its arrays are never written)."""
    return read_request_trace(AZURE_EXCERPT, columns=AZURE_COLUMNS)


def azure_requests(num_requests: int, rate_per_s: float, prompt_tokens: float, output_tokens: float,
                   *, seed: int = 0) -> RequestTrace:
    """``num_requests`` consecutive requests of the Azure excerpt (a seeded window), arrivals rescaled
    to mean rate ``rate_per_s``, token counts to means ``prompt_tokens`` and ``output_tokens``."""
    if num_requests < 2:
        raise ValueError(f"num_requests must be at least 2, got {num_requests}")
    if not (rate_per_s > 0 and math.isfinite(rate_per_s)):
        raise ValueError(f"rate_per_s must be a positive number, got {rate_per_s!r}")
    full = _azure_excerpt()
    n = min(num_requests, len(full.arrival_s))
    start = int(np.random.default_rng(seed).integers(0, len(full.arrival_s) - n + 1))
    window = slice(start, start + n)
    arrival = full.arrival_s[window] - full.arrival_s[start]
    span = float(arrival[-1])
    arrival = arrival * ((n - 1) / rate_per_s / span) if span > 0 else np.arange(n) / rate_per_s

    def rescale(tokens: np.ndarray, mean: float) -> np.ndarray:
        t = tokens[window].astype(float)
        return np.maximum(1, np.rint(t * (mean / t.mean()))).astype(int)

    return RequestTrace(arrival, rescale(full.prompt_tokens, prompt_tokens), rescale(full.output_tokens, output_tokens))
