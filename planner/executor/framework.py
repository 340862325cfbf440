"""The framework's fixed cost per decoder layer, expert call and pass, timed on a tiny MoE model.

:func:`framework_samples` runs a tiny Mixtral-shaped model (hidden 64, 8 experts, top-2, 4 layers,
random weights) as one planned stage (:func:`planner.executor.apply.apply_plan`, the code the
runtime runs), times prefills and decode steps of a few sizes with the executor's per-layer
timings, and returns the samples that :func:`planner.cost.profiling.fit_framework` fits
(``moeplan profile --backend torch`` stores the fit in the profile, see
:class:`planner.domain.profile.FrameworkOverhead`). At these sizes the roofline time of a layer is
a few microseconds, so the timings are almost all framework: Python, module calls, dispatch.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from planner.domain.plan import Pipeline, Plan, Stage
from planner.executor.apply import apply_plan
from planner.executor.models import tiny_model

SIZES = dict(hidden=64, heads=4, kv_heads=2, head_dim=16, vocab=256, experts=8, top_k=2, expert_ffn=128, max_positions=512)
LAYERS = 4
DECODE_ROWS = (1, 2, 4, 8)
PREFILL_TOKENS = (1, 2, 8, 32)
DECODE_CONTEXT = 16


def model_description() -> str:
    s = SIZES
    return (f"mixtral, {LAYERS} layers, hidden {s['hidden']}, {s['heads']} heads x {s['head_dim']} ({s['kv_heads']} KV), "
            f"{s['experts']} experts top-{s['top_k']} of width {s['expert_ffn']}, float32, random weights")


def library_description() -> str:
    import transformers

    return f"transformers {transformers.__version__}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), executor stage"


def _flops(tokens: int, context: float) -> tuple[float, float]:
    """FLOPs per layer of one pass (the whole layer, its routed experts) as the cost model counts them."""
    s = SIZES
    h, q, kv = s["hidden"], s["heads"] * s["head_dim"], s["kv_heads"] * s["head_dim"]
    attention = h * q + 2 * h * kv + q * h
    router = h * s["experts"]
    experts = s["top_k"] * 3 * h * s["expert_ffn"]
    scores = 4.0 * s["heads"] * s["head_dim"] * context
    return tokens * (2.0 * (attention + router + experts) + scores), tokens * 2.0 * experts


@torch.no_grad()
def framework_samples(repeats: int = 15, progress: Callable[[str], None] | None = None) -> list[dict]:
    """Timed passes of the tiny model: decode steps of 1-8 rows at context 16, prefills of 1-32
    tokens; per size the median of ``repeats`` passes (after warm-up) of the whole pass, its layers
    and their routed experts (CPU seconds per pass, this thread's; torch runs with the threads it
    was given: one, as the runtime's processes, under ``OMP_NUM_THREADS=1``)."""
    say = progress or (lambda line: None)
    model = tiny_model("mixtral", num_layers=LAYERS, seed=0, **SIZES)
    planned = apply_plan(model, None, Plan((Pipeline((Stage("cpu", 0, LAYERS),)),)))
    gen = torch.Generator().manual_seed(0)
    vocab = SIZES["vocab"]
    timings = planned.timings
    out = []

    def timed(run: Callable[[], None]) -> tuple[float, float, float]:
        # CPU seconds of this thread (what the runtime counts as device time: waits for a core on a
        # busy machine left out); the layers' wall-clock shares scaled to it.
        timings.clear()
        timings.enabled = True
        c0, t0 = time.thread_time(), time.perf_counter()
        run()
        cpu, wall = time.thread_time() - c0, time.perf_counter() - t0
        timings.enabled = False
        scale = cpu / wall if wall > 0 else 1.0
        return cpu, sum(timings.layer_s.values()) * scale, sum(timings.routed_experts_s.values()) * scale

    cases = [("decode", rows) for rows in DECODE_ROWS] + [("prefill", tokens) for tokens in PREFILL_TOKENS]
    for phase, n in cases:
        recs = []
        for k in range(repeats + 3):  # the first passes warm up
            if phase == "decode":
                planned.prefill(torch.randint(0, vocab, (n, DECODE_CONTEXT), generator=gen))
                step = torch.randint(0, vocab, (n, 1), generator=gen)
                rec = timed(lambda step=step: planned.decode_step(step))
            else:
                ids = torch.randint(0, vocab, (1, n), generator=gen)
                rec = timed(lambda ids=ids: planned.prefill(ids))
            if k >= 3:
                recs.append(rec)
        whole, layers_s, experts_s = (float(np.median(col)) for col in zip(*recs))
        context = float(DECODE_CONTEXT) if phase == "decode" else n / 2.0
        layer_flops, expert_flops = _flops(n, context)
        out.append({"tokens": n, "context": context, "layers": LAYERS, "layer_flops": layer_flops,
                    "expert_flops": expert_flops, "pass_s": whole, "layers_s": layers_s, "experts_s": experts_s})
        say(f"tiny MoE {phase} of {n} token(s): {whole * 1e3:.3f} ms per pass, {layers_s / LAYERS * 1e3:.3f} ms per layer "
            f"({experts_s / LAYERS * 1e3:.3f} ms in its routed experts)")
    return out


_PROBE = """
import sys
import torch
torch.set_num_threads(1)
from planner.executor.framework import _probe_passes
rank, window, rounds = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
print(" ".join(map(str, _probe_passes(rank, window, rounds))), flush=True)
"""


@torch.no_grad()
def _probe_passes(rank: int, window: float, rounds: int) -> list[float]:
    """Median CPU seconds of a decode step of 2 rows of the tiny model in each of ``2 x rounds``
    windows of ``window`` seconds: after printing ``ready`` it reads the wall-clock start time from
    stdin; in even windows only rank 0 runs (the others sleep), in odd ones every rank does.
    Returns one median per window (rank 0's alone and together; other ranks' alone windows are nan)."""
    import sys

    model = tiny_model("mixtral", num_layers=LAYERS, seed=0, **SIZES)
    planned = apply_plan(model, None, Plan((Pipeline((Stage("cpu", 0, LAYERS),)),)))
    ids = torch.randint(0, SIZES["vocab"], (2, DECODE_CONTEXT))
    step = torch.randint(0, SIZES["vocab"], (2, 1))
    for _ in range(5):  # warm up
        planned.prefill(ids)
        planned.decode_step(step)
    print("ready", flush=True)
    start_at = float(sys.stdin.readline())
    out = []
    for w in range(2 * rounds):
        begin, end = start_at + w * window, start_at + (w + 1) * window
        busy = rank == 0 or w % 2 == 1
        times = []
        while (now := time.time()) < end:
            if not busy or now < begin - 0.2:
                time.sleep(min(0.05, max(end - now, 0.0)))
                continue
            planned.prefill(ids)
            c0 = time.thread_time()
            planned.decode_step(step)
            if now >= begin:
                times.append(time.thread_time() - c0)
        out.append(float(np.median(times)) if times else float("nan"))
    return out


def contention_slowdown(processes: int, window: float = 2.0, rounds: int = 3) -> dict:
    """How much slower (CPU time per pass) the tiny model's decode step runs when ``processes``
    processes run it at once on this machine than when one does: the slowdown of a run of that many
    busy processes here. Starts the processes (``python -c``, one torch thread each); after their
    imports, windows of ``window`` seconds alternate between rank 0 alone and every rank busy,
    ``rounds`` times each, so that a change of the machine's other load hits both alike. Returns
    ``{"processes", "alone_s", "together_s", "slowdown"}``: the medians of rank 0's windows and the
    median of the ratios of adjacent windows.
    """
    import os
    import subprocess
    import sys

    if processes <= 1:
        return {"processes": processes, "alone_s": None, "together_s": None, "slowdown": 1.0}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", _PROBE, str(rank), str(window), str(rounds)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env) for rank in range(processes)]
    try:
        for p in procs:  # every process imported, built and warmed up its model
            while p.stdout.readline().strip() != "ready":
                if p.poll() is not None:
                    raise RuntimeError(f"the contention probe process {p.pid} ended with code {p.returncode}")
        start_at = time.time() + 0.5
        for p in procs:
            p.stdin.write(f"{start_at}\n")
            p.stdin.flush()
        outs = [p.communicate(timeout=60 + 2 * rounds * window)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    rank0 = [float(x) for x in outs[0].split()[-2 * rounds:]]
    alone, together = rank0[0::2], rank0[1::2]
    ratios = [t / a for a, t in zip(alone, together)]
    return {"processes": processes, "alone_s": float(np.median(alone)), "together_s": float(np.median(together)),
            "slowdown": float(np.median(ratios))}
