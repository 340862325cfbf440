"""Devices: datasheet figures from a device card, optionally overridden by a measured profile.

A device card is a TOML file under ``instances/catalog/devices/`` with a ``[device]`` table::

    [device]
    name = "a100-80gb"                      # catalog name (file stem)
    display_name = "NVIDIA A100 SXM 80GB"
    tier = "cloud"                          # default tier: end, edge or cloud
    memory_gb = 80                          # usable memory, GB (1e9 bytes)
    memory_bandwidth_gb_per_s = 2039        # GB/s (1e9 bytes/s)
    power_w = 400                           # power at full load, W
    idle_power_w = 60                       # optional, W
    compute_efficiency = 0.6                # optional: fraction of peak FLOP/s reached by GEMMs
    bandwidth_efficiency = 0.8              # optional: fraction of peak bandwidth reached
    [device.peak_tflops]                    # dense peak per dtype, TFLOP/s (1e12 FLOP/s)
    fp16 = 312
    fp32 = 19.5
    int8 = 624
    [source]
    reference = "..."                       # where the figures come from
    verified = "yes"                        # yes / partial / no
    notes = "..."

Units inside moeplan are bytes, bytes/s, FLOP/s, seconds and watts.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from planner.domain import fields as F
from planner.domain.errors import Collector
from planner.domain.units import TFLOPS

TIERS = ("end", "edge", "cloud")
DTYPES = ("fp32", "fp16", "bf16", "fp8", "int8", "int4")
# Bytes per element -> the compute dtype used for that width.
DTYPE_OF_BYTES = {4.0: "fp32", 2.0: "fp16", 1.0: "int8", 0.5: "int4"}
# Where a card lacks a dtype, the nearest wider dtype that is listed runs the op (a CPU without fp16
# units computes fp16 weights in fp32, say): tried in this order.
_FALLBACK = {
    "int4": ("int4", "int8", "fp16", "bf16", "fp32"),
    "int8": ("int8", "fp16", "bf16", "fp32"),
    "fp8": ("fp8", "fp16", "bf16", "fp32"),
    "bf16": ("bf16", "fp16", "fp32"),
    "fp16": ("fp16", "bf16", "fp32"),
    "fp32": ("fp32", "fp16", "bf16"),
}
DEFAULT_COMPUTE_EFFICIENCY = 0.5
DEFAULT_BANDWIDTH_EFFICIENCY = 0.7


@dataclass(frozen=True)
class Device:
    """One device of a fleet.

    ``peak_flops_per_s`` maps dtype -> dense peak FLOP/s. Without a ``profile`` the effective
    throughput is peak x efficiency; with one, the profile's fitted curves replace both.
    """

    name: str
    kind: str
    tier: str
    memory_bytes: float
    memory_bandwidth_bytes_per_s: float
    peak_flops_per_s: dict[str, float]
    power_w: float
    idle_power_w: float = 0.0
    compute_efficiency: float = DEFAULT_COMPUTE_EFFICIENCY
    bandwidth_efficiency: float = DEFAULT_BANDWIDTH_EFFICIENCY
    profile: Any = field(default=None, compare=False)  # planner.domain.profile.HardwareProfile | None
    display_name: str = ""
    source: dict = field(default_factory=dict, compare=False)

    def flops_per_s(self, dtype_bytes: float) -> float:
        """Peak dense FLOP/s for weights of ``dtype_bytes`` bytes per element."""
        dtype = DTYPE_OF_BYTES.get(float(dtype_bytes), "fp16")
        for candidate in _FALLBACK[dtype]:
            if candidate in self.peak_flops_per_s:
                return self.peak_flops_per_s[candidate]
        return max(self.peak_flops_per_s.values())

    def effective_flops_per_s(self, flops: float, dtype_bytes: float) -> float:
        """FLOP/s reached by one operation of ``flops`` FLOPs."""
        if self.profile is not None:
            return self.profile.effective_flops_per_s(flops)
        return self.flops_per_s(dtype_bytes) * self.compute_efficiency

    def effective_bytes_per_s(self, nbytes: float) -> float:
        """Memory bandwidth (bytes/s) reached by one operation moving ``nbytes`` bytes."""
        if self.profile is not None:
            return self.profile.effective_bytes_per_s(nbytes)
        return self.memory_bandwidth_bytes_per_s * self.bandwidth_efficiency

    def op_time_s(self, flops: float, nbytes: float, dtype_bytes: float) -> float:
        """Roofline time (s) of one operation: the slower of compute and memory traffic."""
        t_compute = flops / self.effective_flops_per_s(flops, dtype_bytes) if flops > 0 else 0.0
        t_memory = nbytes / self.effective_bytes_per_s(nbytes) if nbytes > 0 else 0.0
        return max(t_compute, t_memory)

    def renamed(self, name: str, **changes) -> Device:
        return replace(self, name=name, **changes)


CARD_FIELDS = {
    "name", "display_name", "tier", "memory_gb", "memory_bandwidth_gb_per_s", "power_w",
    "idle_power_w", "compute_efficiency", "bandwidth_efficiency", "peak_tflops", "profile",
}


def parse_peak_tflops(table: dict, table_path: str, col: Collector) -> dict[str, float] | None:
    """``peak_tflops`` table (dtype -> TFLOP/s) to FLOP/s."""
    before = len(col.problems)
    F.unknown_keys(table, DTYPES, table_path, col)
    out = {}
    for dtype in DTYPES:
        if dtype in table:
            v = F.number(table, dtype, table_path, col, positive=True, maximum=1e6)
            if v is not None:
                out[dtype] = v * TFLOPS
    if not out and len(col.problems) == before:
        col.add(table_path, f"must list at least one dtype ({', '.join(DTYPES)}) in TFLOP/s")
    return out if len(col.problems) == before else None


def device_fields(table: dict, table_path: str, col: Collector, *, base: Device | None) -> dict | None:
    """Read the device fields of a card or an instance entry; fields absent here come from ``base``.

    Returns keyword arguments for :class:`Device` (without ``name``/``kind``), or None on a problem.
    """
    before = len(col.problems)
    required = base is None
    out: dict[str, Any] = {}

    tier = F.string(table, "tier", table_path, col, required=required, choices=TIERS)
    out["tier"] = tier if tier is not None else (base.tier if base else None)

    mem = F.number(table, "memory_gb", table_path, col, required=required, positive=True, maximum=1e7)
    out["memory_bytes"] = mem * 1e9 if mem is not None else (base.memory_bytes if base else None)

    bw = F.number(table, "memory_bandwidth_gb_per_s", table_path, col, required=required, positive=True, maximum=1e7)
    out["memory_bandwidth_bytes_per_s"] = bw * 1e9 if bw is not None else (base.memory_bandwidth_bytes_per_s if base else None)

    power = F.number(table, "power_w", table_path, col, required=required, positive=True, maximum=1e6)
    out["power_w"] = power if power is not None else (base.power_w if base else None)

    idle = F.number(table, "idle_power_w", table_path, col, required=False, nonnegative=True, maximum=1e6)
    out["idle_power_w"] = idle if idle is not None else (base.idle_power_w if base else 0.0)

    for key, default in (("compute_efficiency", DEFAULT_COMPUTE_EFFICIENCY),
                         ("bandwidth_efficiency", DEFAULT_BANDWIDTH_EFFICIENCY)):
        v = F.number(table, key, table_path, col, required=False, positive=True, maximum=1.0)
        out[key] = v if v is not None else (getattr(base, key) if base else default)

    peaks = F.table(table, "peak_tflops", table_path, col, required=required)
    if peaks is not None:
        parsed = parse_peak_tflops(peaks, f"{table_path}.peak_tflops", col)
        out["peak_flops_per_s"] = parsed
    else:
        out["peak_flops_per_s"] = dict(base.peak_flops_per_s) if base else None

    if "display_name" in table and not isinstance(table["display_name"], str):
        col.add(f"{table_path}.display_name", f"must be a string, got {type(table['display_name']).__name__}")
    elif isinstance(table.get("display_name"), str):
        out["display_name"] = table["display_name"]
    elif base is not None:
        out["display_name"] = base.display_name

    if len(col.problems) > before:
        return None
    if out["idle_power_w"] > out["power_w"]:
        col.add(f"{table_path}.idle_power_w", f"must be <= power_w ({out['power_w']:g} W)")
        return None
    return out
