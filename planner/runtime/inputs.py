"""What a run starts from: the torch model, the requests (prompts and arrival times), the codecs.

* Models (``--model``): ``reference`` (the shipped byte-level reference model), ``card`` (random
  weights in the shape of the instance's model card, seeded: every process builds the same
  weights), or a local checkpoint folder. Always float32 on the CPU.
* Requests: arrival times as the simulator draws them (:func:`planner.sim.arrivals.arrivals`:
  Poisson at the instance's rate, or a trace), or all at once (``burst``). Prompts: for a byte-level
  model (vocabulary 256, the reference model) windows of held-out text (the standard library's
  sources, :mod:`planner.executor.reference.corpus`), else seeded random token ids.
* Codecs at the plan's compressed cuts: fitted once (PCA on calibration text, then
  ``codec_steps`` fine-tuning steps) and handed to every process, so that a cut's encoder and
  decoder come from one fit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from planner.domain.data_files import RequestTrace
from planner.domain.errors import InputError, Problem
from planner.domain.instance import Instance
from planner.domain.plan import Plan
from planner.runtime.scheduler import RequestSpec
from planner.sim.arrivals import Warp, arrivals

MODELS = ("reference", "card")
BYTE_VOCAB = 256


def load_model(spec: str, instance: Instance):
    """The torch model ``spec`` names (see the module docstring), float32, eval mode."""
    from planner.executor.models import load_local, load_reference, model_from_card

    if spec == "reference":
        return load_reference()
    if spec == "card":
        return model_from_card(instance.model)
    if not Path(spec).is_dir():
        raise InputError(Problem("--model", spec, f"is neither {' nor '.join(MODELS)} nor a checkpoint folder"))
    return load_local(spec)


def text_windows(split: str, count: int, length: int, seed: int) -> np.ndarray:
    """``count`` windows of ``length`` bytes of the reference corpus split ``split``, [count, length] int64."""
    from planner.executor.reference import corpus

    return corpus.windows(corpus.read_bytes(split), count, length, seed=seed)


def make_requests(instance: Instance, vocab_size: int, max_positions: int, *, num_requests: int | None = None,
                  trace: RequestTrace | None = None, burst: bool = False, seed: int = 0) -> list[RequestSpec]:
    """The requests of a run: arrivals and token counts as :func:`planner.sim.arrivals.arrivals` gives
    them (``num_requests`` Poisson arrivals, or the trace; ``burst``: every arrival at 0), prompts as
    the module docstring says. Raises :class:`InputError` when a request does not fit the model's
    ``max_positions``."""
    t, prompt_tokens, output_tokens = arrivals(instance, trace, num_requests, None, seed, Warp([]))
    if t.size == 0:
        raise InputError(Problem("--requests", "", "no requests to run"))
    t = np.zeros_like(t) if burst else t - t[0]
    prompt_tokens = np.maximum(1, prompt_tokens.astype(int))
    output_tokens = np.maximum(1, output_tokens.astype(int))
    longest = int((prompt_tokens + output_tokens).max())
    if longest > max_positions:
        raise InputError(Problem("--trace" if trace is not None else "workload", "prompt_tokens + output_tokens",
                                 f"reaches {longest} tokens; the model holds at most {max_positions} positions"))
    rng = np.random.default_rng(seed)
    if vocab_size == BYTE_VOCAB:
        texts = text_windows("held-out", len(t), int(prompt_tokens.max()), seed)
        prompts = [texts[i, :n].tolist() for i, n in enumerate(prompt_tokens)]
    else:
        prompts = [rng.integers(0, vocab_size, size=int(n)).tolist() for n in prompt_tokens]
    return [RequestSpec(i, prompts[i], int(output_tokens[i]), float(t[i])) for i in range(len(t))]


def calibration_ids(vocab_size: int, count: int = 32, length: int = 128, seed: int = 0) -> np.ndarray:
    """Token ids [count, length] to fit codecs and group gates on: calibration text for a byte-level
    model, else seeded random ids (then the fit is good for timing runs only)."""
    if vocab_size == BYTE_VOCAB:
        return text_windows("calibration", count, length, seed)
    return np.random.default_rng(seed).integers(0, vocab_size, size=(count, length))


def prepare(model, instance: Instance, plan: Plan, calibration: np.ndarray, codec_steps: int = 0) -> dict:
    """Check ``model`` against the instance's card and the plan (every pipeline through
    :func:`planner.executor.apply_plan`, which raises :class:`InputError` naming the field), and fit
    the codecs of the plan's compressed cuts: ``{pipeline: {cut layer: {"mean", "encoder", "decoder",
    "bias": ndarray}}}`` (empty where a pipeline compresses no cut)."""
    import torch

    from planner.executor.apply import apply_plan
    from planner.executor.codec import LowRankCodec

    out = {}
    ids = torch.from_numpy(np.asarray(calibration, dtype=np.int64))
    for p, pipe in enumerate(plan.pipelines):
        out[p] = {}
        planned = apply_plan(model, instance, plan, pipeline=p, calibration_ids=ids, codec_steps=codec_steps, gate_mode="renormalise")
        for cut, codec in enumerate(planned.codecs):
            if isinstance(codec, LowRankCodec):
                layer = pipe.stages[cut + 1].first_layer
                out[p][layer] = {name: getattr(codec, name).detach().numpy().copy() for name in ("mean", "encoder", "decoder", "bias")}
    return out


def codecs_from_arrays(arrays: dict) -> dict:
    """:class:`~planner.executor.codec.LowRankCodec` s from :func:`prepare` arrays of one pipeline."""
    import torch

    from planner.executor.codec import LowRankCodec

    return {int(layer): LowRankCodec(*(torch.from_numpy(a[name]) for name in ("mean", "encoder", "decoder", "bias")))
            for layer, a in arrays.items()}
