"""What the cost model predicts: the busy times of one pass, its steps (for the simulator), the
figures of a pipeline and of a whole plan, and how objective values compare.

Units: seconds, bytes, tokens/s, joules per token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np


@dataclass
class PhaseCost:
    """One pass (a decode step of a micro-batch, or one request's prefill) through a pipeline."""

    latency_s: float = 0.0
    busy_s: dict = field(default_factory=dict)  # device name or (a, b) link -> busy seconds

    def add_busy(self, key, seconds: float) -> None:
        self.busy_s[key] = self.busy_s.get(key, 0.0) + float(seconds)


class Step(NamedTuple):
    """One resource held during a pass: ``key`` is a device name or a link ``(a, b)`` (names sorted,
    as in :attr:`PhaseCost.busy_s`), busy for ``hold_s`` seconds; ``delay_s`` seconds of propagation
    (a link hop's one-way latency, RTT/2) follow before the next step can start. ``nbytes``: bytes a
    link step sends (``hold_s = nbytes / bandwidth``; 0 for devices). A named tuple: a pass makes
    thousands of them, and a frozen dataclass costs four times as much to build."""

    key: str | tuple[str, str]
    hold_s: float
    delay_s: float = 0.0
    nbytes: float = 0.0

    @property
    def latency_s(self) -> float:
        return self.hold_s + self.delay_s


@dataclass(frozen=True)
class Fork:
    """Branches that run in parallel: the routed experts of one layer, the home device's share in the
    first branch and, per remote device, the route there, the device and the route back. The fork
    ends when its slowest branch does."""

    branches: tuple[tuple[Step, ...], ...]

    @property
    def latency_s(self) -> float:
        return max(sum(s.latency_s for s in branch) for branch in self.branches)


@dataclass
class PipelineMetrics:
    tpot_s: float
    ttft_s: float
    latency_s: float
    decode_tokens_per_s: float
    requests_per_s: float
    throughput_tokens_per_s: float
    bottleneck: str
    accuracy_loss: float
    energy_j_per_token: float
    decode_busy_s: dict
    prefill_busy_s: dict
    request_busy_s: dict  # device name or (a, b) link -> busy seconds per request (prefill + decode)


@dataclass
class Evaluation:
    """Predicted figures of a plan. ``memory_bytes`` and ``memory_capacity_bytes`` per device;
    ``bytes_per_token`` per link ``"a->b"`` (decode, averaged per output token)."""

    throughput_tokens_per_s: float
    requests_per_s: float
    latency_s: float
    ttft_s: float
    tpot_s: float
    decode_tokens_per_s: float
    energy_j_per_token: float
    accuracy_loss: float
    memory_bytes: dict
    memory_capacity_bytes: dict
    bytes_per_token: dict
    bottleneck: str
    pipelines: list

    def objective(self, kind: str) -> float:
        """The instance objective's value: tokens/s (maximise), latency ms or J/token (minimise)."""
        if kind == "throughput":
            return self.throughput_tokens_per_s
        if kind == "latency":
            return self.latency_s * 1e3
        return self.energy_j_per_token

    def metrics(self) -> dict:
        """The ``metrics`` object of the JSON contract."""
        return {
            "throughput_tokens_per_s": float(self.throughput_tokens_per_s),
            "requests_per_s": float(self.requests_per_s),
            "latency_ms": float(self.latency_s * 1e3),
            "ttft_ms": float(self.ttft_s * 1e3),
            "tpot_ms": float(self.tpot_s * 1e3),
            "decode_tokens_per_s": float(self.decode_tokens_per_s),
            "energy_j_per_token": float(self.energy_j_per_token),
            "accuracy_loss": float(self.accuracy_loss),
            "bottleneck": self.bottleneck,
            "memory_bytes": {k: float(v) for k, v in self.memory_bytes.items()},
            "memory_capacity_bytes": {k: float(v) for k, v in self.memory_capacity_bytes.items()},
            "bytes_per_token": {k: float(v) for k, v in self.bytes_per_token.items()},
        }


def is_better(kind: str, a: float, b: float) -> bool:
    """Whether objective value ``a`` beats ``b`` for objective ``kind``."""
    return a > b if kind == "throughput" else a < b


def is_within(kind: str, value: float, reference: float, share: float) -> bool:
    """Whether objective ``value`` is better than ``reference`` or within ``share`` of it:
    ``value >= (1 - share) * reference`` for throughput, ``value <= (1 + share) * reference`` for
    latency and energy (False when either is not finite)."""
    if not (np.isfinite(value) and np.isfinite(reference)):
        return False
    if kind == "throughput":
        return value >= (1.0 - share) * reference - 1e-12 * abs(reference)
    return value <= (1.0 + share) * reference + 1e-12 * abs(reference)
