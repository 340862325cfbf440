"""Measuring a machine and fitting its profile (:class:`planner.domain.profile.HardwareProfile`).

:func:`measure` times matrix multiplies, memory copies and an expert-FFN-shaped op with numpy or torch;
:func:`fit` fits the two saturating curves of a profile to such samples (see
:mod:`planner.domain.profile` for the curves); :func:`check_profile_against_expert_ffn` compares
the fitted roofline with the measured expert FFN. Units: FLOPs, FLOP/s, bytes, bytes/s, seconds.
"""

from __future__ import annotations

import math
import os
import platform
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from typing import Any, NamedTuple

import numpy as np
from scipy.optimize import nnls

from planner.domain.profile import FrameworkOverhead, HardwareProfile, ProfileError

# An expert-FFN sample enters the compute fit only when the fitted memory curve explains at most
# this fraction of its measured time: a memory-bound sample says nothing about compute.
COMPUTE_BOUND_MEMORY_SHARE = 0.5

# ----- fitting ---------------------------------------------------------------------------------

def fit_fixed_and_slope(work, seconds) -> tuple[float, float]:
    """``(a, b)`` of ``seconds = a + b * work`` with ``a, b >= 0``: non-negative least squares on
    relative residuals ``(a + b*work - t) / t`` (see :func:`_fit_overhead_and_rate`)."""
    w = np.asarray(work, dtype=float)
    t = np.asarray(seconds, dtype=float)
    coef, _ = nnls(np.column_stack([1.0 / t, w / t]), np.ones_like(t))
    return float(coef[0]), float(coef[1])


def fit_framework(samples: list[dict], library: str = "", model: str = "") -> FrameworkOverhead:
    """The framework's fixed costs fitted to timed passes of a tiny MoE model (``samples``: see
    :class:`~planner.domain.profile.FrameworkOverhead`).

    Per layer: ``layers_s / layers = layer_s + layer_s_per_flop x layer_flops``; per routed-experts
    call: ``experts_s / layers = expert_call_s + expert_s_per_flop x expert_flops``; per pass outside
    the layers: ``pass_s - layers_s``, its median (it does not grow with the tokens at these sizes).
    Each line is fitted with :func:`fit_fixed_and_slope` (``a, b >= 0``, relative residuals, so that
    the smallest passes, which show the fixed cost, weigh as much as the largest). Raises
    :class:`ProfileError` without samples of at least two sizes.
    """
    if len({s["layer_flops"] for s in samples}) < 2:
        raise ProfileError(f"cannot fit the framework overhead: need passes of at least two sizes, got {len(samples)}")
    per_layer = [s["layers_s"] / s["layers"] for s in samples]
    layer_s, layer_slope = fit_fixed_and_slope([s["layer_flops"] for s in samples], per_layer)
    per_call = [s["experts_s"] / s["layers"] for s in samples]
    expert_s, expert_slope = fit_fixed_and_slope([s["expert_flops"] for s in samples], per_call)
    outside = float(np.median([max(s["pass_s"] - s["layers_s"], 0.0) for s in samples]))
    return FrameworkOverhead(library=library, model=model, layer_s=layer_s, layer_s_per_flop=layer_slope,
                             expert_call_s=expert_s, expert_s_per_flop=expert_slope, pass_s=outside,
                             samples=list(samples))


def _fit_overhead_and_rate(work: list[float], seconds: list[float], what: str) -> tuple[float, float]:
    """Fit ``seconds = a + b * work`` with ``a, b >= 0``; return ``(peak, half) = (1/b, a/b)``.

    Non-negative least squares on relative residuals ``(a + b*work - t) / t``: timings span several
    orders of magnitude, and plain residuals would let the largest operations decide alone, leaving
    the fixed overhead ``a`` (which small operations reveal) unfitted.
    """
    w = np.asarray(work, dtype=float)
    t = np.asarray(seconds, dtype=float)
    if len(np.unique(w)) < 2:
        raise ProfileError(f"cannot fit the {what} curve: need samples of at least two sizes, got {len(w)}")
    coef, _ = nnls(np.column_stack([1.0 / t, w / t]), np.ones_like(t))
    a, b = float(coef[0]), float(coef[1])
    if b <= 0:
        raise ProfileError(
            f"cannot fit the {what} curve: the measured time does not grow with the work "
            f"({', '.join(f'{x:.3g} in {y:.3g} s' for x, y in zip(w, t))}); the machine was busy or the "
            "operations fit in its caches: measure again, without --quick")
    return 1.0 / b, a / b


def fit(matmul: list[dict], memory: list[dict], expert_ffn: list[dict] = ()) -> dict[str, float]:
    """Fit the throughput curves to samples; returns the four curve fields of :class:`HardwareProfile`.

    The bandwidth curve is fitted to ``memory`` samples (``bytes``, ``seconds``); the compute curve to
    ``matmul`` samples (``flops``, ``seconds``) plus those ``expert_ffn`` samples that are
    compute-bound: where the fitted bandwidth curve explains at most half of the measured time (an
    expert at one token mostly streams its weights, which says nothing about compute speed).
    Each curve comes from a linear fit ``seconds = a + b * work`` (``a, b >= 0``, relative
    residuals): ``peak = 1 / b`` and ``half = a / b``. Raises :class:`ProfileError` when the samples
    cannot give a curve.
    """
    peak_bytes, half_bytes = _fit_overhead_and_rate(
        [s["bytes"] for s in memory], [s["seconds"] for s in memory], "memory bandwidth")
    compute = list(matmul)
    for s in expert_ffn:
        memory_s = (s["bytes"] + half_bytes) / peak_bytes  # = bytes / effective_bytes_per_s(bytes)
        if memory_s <= COMPUTE_BOUND_MEMORY_SHARE * s["seconds"]:
            compute.append(s)
    peak_flops, half_flops = _fit_overhead_and_rate(
        [s["flops"] for s in compute], [s["seconds"] for s in compute], "compute")
    return {"peak_flops_per_s": peak_flops, "half_flops": half_flops,
            "peak_bytes_per_s": peak_bytes, "half_bytes": half_bytes}


class ExpertCheck(NamedTuple):
    """How well a profile's curves predict one measured expert-FFN sample (times in seconds)."""

    tokens: int
    measured_s: float
    predicted_s: float

    @property
    def ratio(self) -> float:
        """predicted / measured: 1 is perfect, below 1 the curves are optimistic."""
        return self.predicted_s / self.measured_s


def check_profile_against_expert_ffn(profile: HardwareProfile) -> list[ExpertCheck]:
    """Predict each expert-FFN sample of ``profile`` with the roofline the planner uses.

    predicted seconds = max(flops / effective_flops_per_s(flops), bytes / effective_bytes_per_s(bytes)).
    """
    out = []
    for s in profile.expert_ffn:
        predicted = max(s["flops"] / profile.effective_flops_per_s(s["flops"]),
                        s["bytes"] / profile.effective_bytes_per_s(s["bytes"]))
        out.append(ExpertCheck(s["tokens"], s["seconds"], predicted))
    return out


# ----- measuring -------------------------------------------------------------------------------

class _NumpyOps:
    """fp32 operations of the numpy backend on every core: BLAS matrix multiplies, and copies split
    into one slice per core (numpy copies on one thread, which one core cannot saturate memory with)."""

    def __init__(self):
        self.backend = "numpy"
        self.asynchronous = False
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        self.host = f"{_cpu_name()}, {cores} cores"
        self._rng = np.random.default_rng(0)
        self._pool = ThreadPoolExecutor(cores)
        self._cores = cores

    def close(self) -> None:
        self._pool.shutdown()

    def array(self, shape: tuple[int, ...], scale: float = 1.0):
        return ((self._rng.random(shape, dtype=np.float32) - 0.5) * scale).astype(np.float32, copy=False)

    def filled(self, n: int):
        return np.full(n, 1.0, dtype=np.float32)

    def copy(self, dst, src) -> None:
        bounds = np.linspace(0, src.size, self._cores + 1).astype(int)
        slices = [slice(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]
        list(self._pool.map(lambda s: np.copyto(dst[s], src[s]), slices))

    def matmul(self, a, b):
        return a @ b

    def swiglu(self, x, w1, w3, w2):
        gate = x @ w1
        return (gate / (1.0 + np.exp(-gate)) * (x @ w3)) @ w2

    def sync(self) -> None:
        """numpy calls return when done: nothing to wait for."""


class _TorchOps:
    """fp32 operations of torch on ``device`` (``cpu``, ``cuda`` or ``cuda:N``)."""

    def __init__(self, device: str):
        try:
            import torch
        except ImportError:
            raise ProfileError(
                "the torch backend needs PyTorch, which is not installed: pip install 'moeplan[torch]', "
                "or measure the CPU with --backend numpy") from None
        self._torch = torch
        self._device = torch.device(device)
        if self._device.type == "cuda":
            if not torch.cuda.is_available():
                raise ProfileError(
                    f"device {device!r}: CUDA is not available to this torch "
                    f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'})")
            self.host = torch.cuda.get_device_name(self._device)
        else:
            self.host = f"{_cpu_name()}, {torch.get_num_threads()} threads"
        self.backend = f"torch-{self._device.type}"
        self.asynchronous = self._device.type == "cuda"
        self._gen = torch.Generator(device=self._device).manual_seed(0)

    def array(self, shape: tuple[int, ...], scale: float = 1.0):
        t = self._torch.rand(shape, generator=self._gen, device=self._device, dtype=self._torch.float32)
        return (t - 0.5) * scale

    def filled(self, n: int):
        return self._torch.full((n,), 1.0, device=self._device, dtype=self._torch.float32)

    def copy(self, dst, src) -> None:
        dst.copy_(src)

    def matmul(self, a, b):
        return a @ b

    def swiglu(self, x, w1, w3, w2):
        return (self._torch.nn.functional.silu(x @ w1) * (x @ w3)) @ w2

    def sync(self) -> None:
        if self._device.type == "cuda":
            self._torch.cuda.synchronize(self._device)

    def close(self) -> None:
        """Nothing to release."""


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _best_seconds(fn: Callable[[], Any], ops, repeats: int, min_s: float) -> float:
    """Seconds of one call of ``fn``: the best of at least ``repeats`` timings, about
    ``repeats * min_s`` seconds of timings in all, after calls for about ``min_s`` seconds to warm
    up (threads started, caches and clocks settled).

    On the CPU each timing is one call, so that a stall of the machine (another process, a busy
    neighbour of a virtual machine) spoils that timing only. On an asynchronous device (CUDA) one
    timing queues calls back to back for about ``min_s`` seconds and divides, so that the
    synchronisation after a lone call is not counted.
    """
    warm_start = time.perf_counter()
    while True:
        ops.sync()
        start = time.perf_counter()
        fn()
        ops.sync()
        if start - warm_start >= min_s:
            break
    first = max(time.perf_counter() - start, 1e-9)
    if ops.asynchronous:
        inner, timings = max(1, min(10_000, math.ceil(min_s / first))), repeats
    else:
        inner, timings = 1, max(repeats, min(1_000, math.ceil(repeats * min_s / first)))
    best = math.inf
    for _ in range(timings):
        ops.sync()
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        ops.sync()
        best = min(best, (time.perf_counter() - start) / inner)
    return best


@dataclass(frozen=True)
class _Plan:
    """Sizes and repeats of one measurement run."""

    matmul_sizes: tuple[int, ...]
    memory_mib: tuple[int, ...]
    tokens: tuple[int, ...]
    hidden: int
    intermediate: int
    repeats: int
    min_s: float


FULL = _Plan(matmul_sizes=(64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048),
             memory_mib=(8, 16, 32, 64, 128, 256, 512), tokens=(1, 4, 16, 64, 256),
             hidden=1024, intermediate=2816, repeats=5, min_s=0.02)
QUICK = _Plan(matmul_sizes=(64, 128, 256, 512, 1024), memory_mib=(16, 64, 128),
              tokens=(1, 4, 16, 64, 256), hidden=1024, intermediate=1408, repeats=5, min_s=0.01)
# A GPU needs larger operations to approach its peak; they take milliseconds there.
FULL_GPU = replace(FULL, matmul_sizes=FULL.matmul_sizes + (3072, 4096, 6144, 8192),
                   memory_mib=FULL.memory_mib + (1024,), tokens=FULL.tokens + (1024, 4096))
QUICK_GPU = replace(QUICK, matmul_sizes=QUICK.matmul_sizes + (2048, 4096), memory_mib=QUICK.memory_mib + (512,),
                    tokens=QUICK.tokens + (1024, 4096))

_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")


def measure(backend: str = "numpy", device: str = "cpu", quick: bool = False,
            progress: Callable[[str], None] | None = None) -> HardwareProfile:
    """Measure this machine and fit a profile (fp32).

    ``backend``: ``"numpy"`` (CPU only) or ``"torch"`` (``device`` ``"cpu"``, ``"cuda"`` or
    ``"cuda:N"``). Measures square matrix multiplies, memory copies (bytes counted as read + write)
    and a SwiGLU expert FFN ``(silu(x @ W1) * (x @ W3)) @ W2`` at several token counts; each figure
    is the best of several timings after warm-up calls. ``quick`` uses fewer and smaller sizes (about
    2 s on two CPU cores instead of about 7 s); on a GPU the sizes reach further (matrices up to 8192,
    copies up to 1 GiB, 4096 tokens). ``progress`` receives one line per sample.
    Raises :class:`ProfileError` when the backend or device is not available.
    """
    if not _DEVICE.match(device):
        raise ProfileError(f"unknown device {device!r}: use cpu, cuda or cuda:N")
    if backend == "numpy":
        if device != "cpu":
            raise ProfileError(f"the numpy backend runs on the CPU only, not {device!r}: use --backend torch")
        ops = _NumpyOps()
    elif backend == "torch":
        ops = _TorchOps(device)
    else:
        raise ProfileError(f"unknown backend {backend!r}: use numpy or torch")
    if device == "cpu":
        plan = QUICK if quick else FULL
    else:
        plan = QUICK_GPU if quick else FULL_GPU
    try:
        matmul, memory, expert_ffn = _sample(ops, plan, progress or (lambda line: None))
    finally:
        ops.close()
    return HardwareProfile(
        host=ops.host, backend=ops.backend, dtype="fp32",
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        matmul=matmul, memory=memory, expert_ffn=expert_ffn,
        **fit(matmul, memory, expert_ffn),
    )


def _sample(ops, plan: _Plan, say: Callable[[str], None]) -> tuple[list, list, list]:
    """Time the copies, matrix multiplies and expert FFNs of ``plan``; returns matmul, memory and
    expert-FFN samples."""
    # Copies first: after a matrix multiply the BLAS threads spin a while, and would take the cores
    # from the copy threads.
    memory = []
    for mib in plan.memory_mib:
        src, dst = ops.filled(mib * 2**20 // 4), ops.filled(mib * 2**20 // 4)
        seconds = _best_seconds(partial(ops.copy, dst, src), ops, plan.repeats, plan.min_s)
        nbytes = 2.0 * mib * 2**20
        memory.append({"bytes": nbytes, "seconds": seconds})
        say(f"copy {mib} MiB: {seconds * 1e3:.3f} ms, {nbytes / seconds / 1e9:.1f} GB/s (read + write)")

    matmul = []
    for n in plan.matmul_sizes:
        a, b = ops.array((n, n)), ops.array((n, n))
        seconds = _best_seconds(partial(ops.matmul, a, b), ops, plan.repeats, plan.min_s)
        flops = 2.0 * n * n * n
        matmul.append({"m": n, "n": n, "k": n, "flops": flops, "seconds": seconds})
        say(f"matmul {n}x{n}x{n}: {seconds * 1e3:.3f} ms, {flops / seconds / 1e9:.1f} GFLOP/s")

    h, f = plan.hidden, plan.intermediate
    w1, w3 = ops.array((h, f), 1.0 / math.sqrt(h)), ops.array((h, f), 1.0 / math.sqrt(h))
    w2 = ops.array((f, h), 1.0 / math.sqrt(f))
    expert_ffn = []
    for tokens in plan.tokens:
        x = ops.array((tokens, h))
        seconds = _best_seconds(partial(ops.swiglu, x, w1, w3, w2), ops, plan.repeats, plan.min_s)
        flops = 6.0 * tokens * h * f
        nbytes = 4.0 * (3 * h * f + 2 * tokens * h)
        expert_ffn.append({"tokens": tokens, "hidden": h, "intermediate": f,
                           "flops": flops, "bytes": nbytes, "seconds": seconds})
        say(f"expert FFN {tokens} tokens (h={h}, f={f}): {seconds * 1e3:.3f} ms")
    return matmul, memory, expert_ffn
