"""Compute times of one model's layers and experts on each kind of hardware (the roofline terms).

:func:`op_time_s` is the roofline time of operations on a device: ``max(FLOPs / F_d(FLOPs), bytes /
B_d(bytes))`` with ``F_d``, ``B_d`` the device's effective FLOP/s and memory bandwidth (datasheet peak
x efficiency, or a measured profile's fitted curve). :class:`LayerTimes` tabulates, per hardware
signature and pass size, the time of every layer's non-expert block and of every routed expert:
devices of the same hardware share their tables (a fleet of 16 H100 is one), and so do cost models
of instances with the same model, popularity and request sizes (a re-planner's changed
instances), through a small module-level cache.

A device whose measured profile carries a framework term (``profile.framework``,
:class:`~planner.domain.profile.FrameworkOverhead`) adds its fixed ``layer_s`` to every decoder
layer's non-expert block (the layer module's own fixed cost, its local routed-experts call
included); the pass and remote-expert-call terms are added in :mod:`planner.cost.passes`. Without
it (a datasheet card, or a profile measured before the term existed) nothing is added.

Units: seconds, FLOPs, bytes.
"""

from __future__ import annotations

import hashlib

import numpy as np

from planner.domain.device import Device
from planner.domain.instance import Instance
from planner.domain.memo import Identity

# Time tables of the most recent (model, popularity, request sizes) combinations, shared by cost models.
_TABLES: dict = {}
_TABLES_KEPT = 8
_LAYERS: dict = {}  # model -> per-layer parameter arrays (layer_arrays)


def layer_arrays(m) -> tuple[np.ndarray, np.ndarray]:
    """Per layer [L]: non-expert parameters, and parameters active per token outside the routed
    experts. Cached per model (read-only arrays: cost models of one model share them)."""
    hit = _LAYERS.get(m)
    if hit is None:
        params = np.array([float(m.layer_nonexpert_params(i)) for i in range(m.num_layers)])
        active = np.array([float(m.layer_active_params(i) - (m.top_k * m.expert_params if m.is_moe_layer(i) else 0))
                           for i in range(m.num_layers)])
        params.flags.writeable = active.flags.writeable = False
        if len(_LAYERS) >= _TABLES_KEPT:
            _LAYERS.pop(next(iter(_LAYERS)))
        hit = _LAYERS[m] = (params, active)
    return hit


def framework(dev: Device):
    """The device's measured framework overhead (:class:`~planner.domain.profile.FrameworkOverhead`),
    or None (no profile, or a profile without the term)."""
    return getattr(dev.profile, "framework", None) if dev.profile is not None else None


def layer_overhead_s(dev: Device) -> float:
    """Fixed seconds per decoder layer per pass on ``dev`` (0 without a measured framework term)."""
    fw = framework(dev)
    return float(fw.layer_s) if fw is not None else 0.0


def pass_overhead_s(dev: Device) -> float:
    """Fixed seconds per pass through one stage on ``dev``, outside its layers (0 without the term)."""
    fw = framework(dev)
    return float(fw.pass_s) if fw is not None else 0.0


def expert_call_overhead_s(dev: Device) -> float:
    """Fixed seconds per call of a layer's routed experts on ``dev`` (0 without the term)."""
    fw = framework(dev)
    return float(fw.expert_call_s) if fw is not None else 0.0


def _hardware_signature(dev: Device) -> tuple:
    """What a device's operation times depend on. A device with a measured profile is its own
    hardware (the profile object is kept in the signature, so its identity cannot be reused)."""
    return (dev.kind, dev.memory_bandwidth_bytes_per_s, tuple(sorted(dev.peak_flops_per_s.items())),
            dev.compute_efficiency, dev.bandwidth_efficiency, Identity(dev.profile) if dev.profile is not None else None)


def op_time_s(device: Device, flops, nbytes, dtype_bytes: float):
    """Vectorised roofline time (s) of operations of ``flops`` FLOPs moving ``nbytes`` bytes."""
    if isinstance(flops, (float, int)) and isinstance(nbytes, (float, int)):
        # One operation: the same formula without numpy's per-call overhead (a pass prices dozens).
        f, n = float(flops), float(nbytes)
        tc = f / device.effective_flops_per_s(max(f, 1.0), dtype_bytes) if f > 0 else 0.0
        tm = n / device.effective_bytes_per_s(max(n, 1.0)) if n > 0 else 0.0
        return np.float64(max(tc, tm))
    flops = np.asarray(flops, dtype=float)
    nbytes = np.asarray(nbytes, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        tc = np.where(flops > 0, flops / device.effective_flops_per_s(np.maximum(flops, 1.0), dtype_bytes), 0.0)
        tm = np.where(nbytes > 0, nbytes / device.effective_bytes_per_s(np.maximum(nbytes, 1.0)), 0.0)
    return np.maximum(tc, tm)


class LayerTimes:
    """Per-layer and per-expert times (s) of ``instance``'s model on its devices, cached per hardware.

    ``Q[l, e]``: the selection probability of expert ``e`` of layer ``l`` per token (rows of dense
    layers are zero); ``nonexpert_bytes[l]`` and ``nonexpert_flops_per_token[l]`` the non-expert
    block of layer ``l``; ``expert_bytes`` and ``expert_flops_per_token`` one routed expert.
    """

    def __init__(self, instance: Instance, Q: np.ndarray, prompt: float, output: float):
        m = instance.model
        self.model = m
        self.db = m.dtype_bytes
        self.devices = instance.device_index
        self.Q = Q
        self.expert_flops_per_token = 2.0 * m.expert_params
        self.expert_bytes = m.expert_params * self.db
        nonexpert_params, nonexpert_active = layer_arrays(m)
        self.nonexpert_bytes = nonexpert_params * self.db
        self.nonexpert_flops_per_token = 2.0 * nonexpert_active
        self._hw = {name: _hardware_signature(dev) for name, dev in self.devices.items()}
        key = (m, hashlib.blake2b(Q.tobytes(), digest_size=16).digest(), Q.shape, prompt, output)
        self._cache = _TABLES.pop(key, None) or {}
        _TABLES[key] = self._cache
        while len(_TABLES) > _TABLES_KEPT:
            _TABLES.pop(next(iter(_TABLES)))

    def hardware_of(self, device: str) -> tuple:
        """The hardware signature of ``device``: devices with equal signatures have equal time tables."""
        return self._hw[device]

    def layer_times(self, device: str, tokens: float, context: float, prefill: bool) -> tuple[np.ndarray, np.ndarray]:
        """Per-layer times (s) on ``device`` for ``tokens`` tokens: the non-expert block of every layer,
        and all routed experts of every layer kept on that device (zero for dense layers). Cached."""
        key = (self._hw[device], tokens, context, prefill)
        hit = self._cache.get(key)
        if hit is None:
            m, dev = self.model, self.devices[device]
            kv = m.kv_bytes_per_token_per_layer * tokens * (1.0 if prefill else context)
            flops = tokens * (self.nonexpert_flops_per_token + m.attention_score_flops_per_token(1.0) * context)
            ne = op_time_s(dev, flops, self.nonexpert_bytes + kv, self.db)
            overhead = layer_overhead_s(dev)
            if overhead:
                ne = ne + overhead
            touched = 1.0 - np.power(1.0 - np.clip(self.Q, 0.0, 1.0), tokens)
            ex = op_time_s(dev, self.Q * tokens * self.expert_flops_per_token, touched * self.expert_bytes, self.db).sum(axis=1)
            hit = self._cache[key] = (ne, ex)
        return hit

    def expert_matrix(self, device: str, tokens: float) -> np.ndarray:
        """Time (s) of every routed expert [L, E] on ``device`` serving its whole share of ``tokens`` tokens (cached)."""
        key = ("experts", self._hw[device], tokens)
        hit = self._cache.get(key)
        if hit is None:
            touched = 1.0 - np.power(1.0 - np.clip(self.Q, 0.0, 1.0), tokens)
            hit = self._cache[key] = op_time_s(self.devices[device], self.Q * tokens * self.expert_flops_per_token,
                                               touched * self.expert_bytes, self.db)
        return hit
