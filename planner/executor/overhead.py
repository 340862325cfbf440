"""Executor overhead: a planned single-process forward against the unmodified model, same tokens.

    python -m planner.executor.overhead [--model reference|FOLDER] [--repeats 7]

Times (best of ``repeats`` after a warm-up: on a shared 2-core machine the best is the stable figure) of a prefill of [batch,
tokens] and of decode steps
with the KV cache, for the unmodified HF model and for planned models: one stage; two stages; two
stages with experts placed off their stage (a quarter of each layer's experts on the other
device, in-process); and with a rank-hidden/4 codec at the cut. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from transformers import DynamicCache

from planner.domain.plan import ExpertPlacement, Pipeline, Plan, Stage
from planner.executor.apply import apply_plan
from planner.executor.families import moe_parts
from planner.executor.models import REFERENCE_DIR, load_local


def _best_s(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _plans(model) -> dict[str, Plan]:
    n = model.config.num_hidden_layers
    cut = n // 2
    parts = moe_parts(model)
    moved = tuple(ExpertPlacement(l, e, ("b" if l < cut else "a",), (1.0,)) for l, p in parts.items()
                  for e in range(p.num_experts) if e % 4 == 3)
    two = (Stage("a", 0, cut), Stage("b", cut, n))
    return {
        "1 stage": Plan((Pipeline((Stage("a", 0, n),)),)),
        "2 stages": Plan((Pipeline(two),)),
        "2 stages, 1/4 experts off-stage": Plan((Pipeline(two, expert_placement=moved),)),
        "2 stages + codec": Plan((Pipeline(two, (int(model.config.hidden_size) // 4,)),)),
    }


@torch.no_grad()
def measure(model, *, batch: int = 4, tokens: int = 128, decode_steps: int = 16, repeats: int = 21, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, int(model.config.vocab_size), (batch, tokens), generator=gen)
    steps = torch.randint(0, int(model.config.vocab_size), (decode_steps, batch, 1), generator=gen)

    def hf_prefill():
        model(input_ids=ids, cache=DynamicCache(config=model.config), use_cache=True)

    def hf_decode():
        cache = model(input_ids=ids, cache=DynamicCache(config=model.config), use_cache=True).cache
        for s in steps:
            cache = model(input_ids=s, cache=cache, use_cache=True).cache

    rows = {"unmodified": {"prefill_s": _best_s(hf_prefill, repeats), "prefill_and_decode_s": _best_s(hf_decode, repeats)}}
    for name, plan in _plans(model).items():
        planned = apply_plan(model, None, plan, calibration_ids=ids)

        def run_prefill(planned=planned):
            planned.prefill(ids)

        def run_decode(planned=planned):
            planned.prefill(ids)
            for s in steps:
                planned.decode_step(s)

        rows[name] = {"prefill_s": _best_s(run_prefill, repeats), "prefill_and_decode_s": _best_s(run_decode, repeats)}
    base = rows["unmodified"]
    for row in rows.values():
        row["prefill_ratio"] = round(row["prefill_s"] / base["prefill_s"], 3)
        row["prefill_and_decode_ratio"] = round(row["prefill_and_decode_s"] / base["prefill_and_decode_s"], 3)
        row["prefill_s"] = round(row["prefill_s"], 5)
        row["prefill_and_decode_s"] = round(row["prefill_and_decode_s"], 5)
    return {"batch": batch, "tokens": tokens, "decode_steps": decode_steps, "repeats": repeats,
            "threads": torch.get_num_threads(), "experts_implementation": model.config._experts_implementation,
            "times": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="reference", help="'reference' or a local checkpoint folder")
    parser.add_argument("--experts-implementation", default=None, choices=["eager", "grouped_mm", "batched_mm"])
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_local(REFERENCE_DIR if args.model == "reference" else args.model)
    if args.experts_implementation:
        model.set_experts_implementation(args.experts_implementation)
    print(json.dumps(measure(model, repeats=args.repeats), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
