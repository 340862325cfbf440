"""Check the cost model against measured decode speeds (``../shared/data/hardware/measured_decode_tps.csv``).

For each measured row whose device has a card and whose model has a card, predict batch-1 decode
tokens/s of the model alone on that device (weights at the quantization's bits per weight) and
report predicted / measured. These ratios check the model; they are not tuning targets.

Run: ``python -m planner.cost.calibration [--csv PATH] [--json]``. It needs the measured CSV: by
default ``../shared/data/hardware/measured_decode_tps.csv``, reference data kept beside the
repository (a clone does not have it; give any CSV with the same columns through ``--csv``). It
takes about a second.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from planner.cost.costmodel import CostModel
from planner.domain import catalog
from planner.domain.instance import Constraints, Instance, Workload
from planner.domain.plan import Pipeline, Plan, Stage

DEFAULT_CSV = catalog.REPO_ROOT.parent / "shared" / "data" / "hardware" / "measured_decode_tps.csv"

# Measured device label -> (device card, field overrides, note).
DEVICES = {
    "Jetson Orin Nano 8GB (original mode)": ("jetson-orin-nano-8gb", {}, ""),
    "Jetson Orin Nano 8GB Super (MAXN_SUPER)": ("jetson-orin-nano-8gb-super", {}, ""),
    "Jetson Orin NX 8GB (25W)": ("jetson-orin-nx-16gb", {"memory_bytes": 8e9}, "NX 16GB card, 8 GB memory"),
    "Apple M1/M2 (10-core GPU)": ("apple-m2", {}, "M2 card (100 GB/s)"),
    "Apple M2 Max (30-core GPU)": ("apple-m2", {"memory_bandwidth_bytes_per_s": 400e9, "memory_bytes": 32e9},
                                   "M2 card with the M2 Max's 400 GB/s"),
    "NVIDIA L4 (24GB)": ("l4", {}, ""),
}
# Measured model label -> model card.
MODELS = {
    "Llama 3.1 8B": "llama-3.1-8b", "Llama 3.2 3B": "llama-3.2-3b", "Llama 3.2 1B": "llama-3.2-1b",
    "Qwen2.5 7B": "qwen2.5-7b", "Qwen2.5 1.5B": "qwen2.5-1.5b", "Qwen2.5 0.5B": "qwen2.5-0.5b",
    "Gemma 2 2B": "gemma-2-2b", "Gemma 2 9B": "gemma-2-9b", "Phi 3.5 3B": "phi-3.5-mini",
    "SmolLM2": "smollm2-1.7b", "TinyLlama 1.1B": "tinyllama-1.1b", "Llama 2 7B": "llama-2-7b",
    "Mistral 7B": "mistral-7b", "Mistral-7B-Instruct v0.2": "mistral-7b", "LLaMA 7B": "llama-2-7b",
    "DeepSeek R1 distill 7B": "qwen2.5-7b", "DeepSeek R1 distill 1.5B": "qwen2.5-1.5b",
    "Mixtral-8x7B": "mixtral-8x7b",
}
# Bytes per weight of common quantizations (block scales included: e.g. Q4_0 = 4.5 bits).
BYTES_PER_WEIGHT = {
    "INT4": 4.5 / 8, "Q4_0": 4.5 / 8, "Q4_K_M": 4.85 / 8, "Q5_K_M": 5.69 / 8, "Q8_0": 8.5 / 8, "fp16": 2.0,
}


@dataclass
class Row:
    device: str
    model: str
    quantization: str
    measured_tokens_per_s: float
    predicted_tokens_per_s: float | None
    ratio: float | None
    note: str


def _measured(text: str) -> float:
    """A figure or a range like '15-17' (its midpoint)."""
    parts = [float(p) for p in text.split("-")]
    return sum(parts) / len(parts)


def predict_decode_tokens_per_s(device_card: str, overrides: dict, model_card: str, bytes_per_weight: float,
                                prompt_tokens: int = 32, output_tokens: int = 128) -> float:
    """Batch-1 decode tokens/s of ``model_card`` alone on ``device_card`` (1 / TPOT)."""
    dev = replace(catalog.device(device_card), name="dev", tier="end", **overrides)
    model = replace(catalog.model(model_card), dtype_bytes=bytes_per_weight)
    k = max(model.top_k, 1)
    popularity = np.full((model.num_moe_layers, model.num_experts), k / max(model.num_experts, 1))
    workload = Workload("dev", 1.0, prompt_tokens, output_tokens, 1, popularity)
    inst = Instance("calibration", model, (dev,), (), workload, "throughput", Constraints())
    ev = CostModel(inst).evaluate(Plan((Pipeline((Stage("dev", 0, model.num_layers),)),)))
    return 1.0 / ev.tpot_s


def compare(csv_path: Path = DEFAULT_CSV) -> list[Row]:
    rows = []
    with open(csv_path, newline="", encoding="utf-8") as fh:
        for rec in csv.DictReader(fh):
            measured = _measured(rec["decode_tokens_per_s"])
            dev, model, quant = rec["device"], rec["model"], rec["quantization"]
            note = ""
            if dev not in DEVICES:
                note = "no device card for this hardware"
            elif model not in MODELS:
                note = "no model card"
            elif quant.split()[0] not in BYTES_PER_WEIGHT or "offload" in quant:
                note = f"quantization/runtime not modelled ({quant})"
            if note:
                rows.append(Row(dev, model, quant, measured, None, None, note))
                continue
            card, overrides, dev_note = DEVICES[dev]
            pred = predict_decode_tokens_per_s(card, overrides, MODELS[model], BYTES_PER_WEIGHT[quant.split()[0]])
            rows.append(Row(dev, model, quant, measured, pred, pred / measured, dev_note))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m planner.cost.calibration",
                                description=__doc__.split("\n")[0] + " About a second.")
    p.add_argument("--csv", default=str(DEFAULT_CSV),
                   help="measured decode speeds (default: ../shared/data/hardware/measured_decode_tps.csv, beside the "
                        "repository, not in a clone)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if not Path(args.csv).is_file():
        print(f"error: {args.csv}: file not found: the measured figures are reference data kept beside the "
              "repository (../shared/data/hardware/), not in a clone; give a CSV with the same columns with --csv",
              file=sys.stderr)
        return 2
    rows = compare(Path(args.csv))
    ratios = [r.ratio for r in rows if r.ratio is not None]
    if args.json:
        print(json.dumps({"rows": [asdict(r) for r in rows], "median_ratio": statistics.median(ratios) if ratios else None}, indent=2))
        return 0
    for r in rows:
        pred = f"{r.predicted_tokens_per_s:7.1f}" if r.predicted_tokens_per_s else "      -"
        ratio = f"{r.ratio:5.2f}" if r.ratio else "    -"
        print(f"{r.device[:38]:38s} {r.model[:24]:24s} {r.quantization[:12]:12s} "
              f"measured {r.measured_tokens_per_s:6.1f} predicted {pred} ratio {ratio} {r.note}")
    if ratios:
        print(f"{len(ratios)} rows compared: predicted/measured median {statistics.median(ratios):.2f}, "
              f"min {min(ratios):.2f}, max {max(ratios):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
