"""Accuracy of planned models against the unmodified one, on held-out tokens: the measurements behind
``moeplan calibrate`` (the table format is :mod:`planner.domain.accuracy_table`).

For every position of the held-out windows: KL divergence ``KL(p_model || p_planned)`` of the
next-token distributions (nats), whether the most likely next token is the same (top-1
agreement), and the held-out perplexity of the planned model against the model's. The loss the
planner budgets is ``1 - top1_agreement``: a fraction in [0, 1] like the instance's
``codec_accuracy_loss``, read directly as "share of next-token choices changed", and
comparable across models and vocabularies (KL in nats is unbounded and scales with the entropy of
the text; perplexity change hides offsetting errors). All three are recorded.

Sweeps:

* codec: for each cut layer ``c`` and rank ``r``, the two-stage plan ``[0, c) | [c, N)`` with a
  rank-``r`` codec fitted on the calibration tokens' activations at that cut (PCA, then
  ``codec_steps`` fine-tuning steps, as ``apply_plan`` fits it);
* group gate: for each subset size ``n``, every MoE layer (then each MoE layer alone) keeps its
  ``n`` most popular experts (measured on the calibration tokens) on the one stage device and
  moves the rest to a second device; tokens routed outside the subset are served by plain
  renormalisation over the subset and by the fitted group gate. ``coverage`` is the share of
  held-out top-k selections that land in the subsets (mean over the gated layers).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass

import torch
import transformers
from torch import nn

from planner.domain.accuracy_table import SCHEMA
from planner.domain.plan import ExpertPlacement, Pipeline, Plan, Stage
from planner.executor.apply import apply_plan
from planner.executor.capture import capture
from planner.executor.families import family_of, moe_parts
from planner.executor.stages import PlannedModel

LOSS_MEASURE = "1 - top1_agreement"


@dataclass
class Reference:
    """The unmodified model on the held-out windows: log-probabilities [B, S, V], targets [B, S - 1]."""

    ids: torch.Tensor
    log_probs: torch.Tensor
    nll_nats: float

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll_nats)


@torch.no_grad()
def logits_of(run: nn.Module, ids: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """Logits [B, S, V] of ``run(input_ids)`` (an HF model or a planned model), ``batch_size`` rows at a time."""
    outs = []
    for batch in ids.split(batch_size):
        outs.append((run(batch) if isinstance(run, PlannedModel) else run(input_ids=batch).logits).float())
    return torch.cat(outs)


def _nll(log_probs: torch.Tensor, ids: torch.Tensor) -> float:
    picked = log_probs[:, :-1].gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return float(-picked.mean())


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def reference(model: nn.Module, ids: torch.Tensor) -> Reference:
    lp = torch.log_softmax(logits_of(model, ids), dim=-1)
    return Reference(ids, lp, _nll(lp, ids))


def compare(ref: Reference, logits: torch.Tensor) -> dict:
    """The three measures and the loss of ``logits [B, S, V]`` against the reference."""
    lq = torch.log_softmax(logits.float(), dim=-1)
    kl = float((ref.log_probs.exp() * (ref.log_probs - lq)).sum(-1).mean())
    agree = float((ref.log_probs.argmax(-1) == lq.argmax(-1)).float().mean())
    ppl = math.exp(_nll(lq, ref.ids))
    return {"kl_nats": round(max(kl, 0.0), 6), "top1_agreement": round(agree, 6), "perplexity": round(ppl, 5),
            "perplexity_change": round(ppl / ref.perplexity - 1.0, 6), "loss": round(1.0 - agree, 6)}


def codec_sweep(model: nn.Module, calibration_ids: torch.Tensor, ref: Reference, cut_layers: list[int],
                ranks: list[int], codec_steps: int) -> list[dict]:
    n = model.config.num_hidden_layers
    rows = []
    for cut in cut_layers:
        for rank in ranks:
            plan = Plan((Pipeline((Stage("end", 0, cut), Stage("cloud", cut, n)), (rank,)),))
            planned = apply_plan(model, None, plan, calibration_ids=calibration_ids, codec_steps=codec_steps)
            rows.append({"cut_layer": cut, "rank": rank, **compare(ref, logits_of(planned, ref.ids))})
            _log(f"codec at the cut before layer {cut}, rank {rank}: {rows[-1]}")
    return rows


def selection_counts(model: nn.Module, ids: torch.Tensor) -> dict[int, torch.Tensor]:
    """Per MoE layer, how often each expert is among a token's top-k on ``ids``: layer -> [E] counts."""
    parts = moe_parts(model)
    cap = capture(model, ids, moe_layers=list(parts)).moe
    return {l: torch.bincount(c.top_k_index.reshape(-1), minlength=parts[l].num_experts) for l, c in cap.items()}


def gate_sweep(model: nn.Module, calibration_ids: torch.Tensor, ref: Reference, subset_sizes: list[int]) -> list[dict]:
    n = model.config.num_hidden_layers
    calib_counts = selection_counts(model, calibration_ids)
    held_counts = selection_counts(model, ref.ids)
    moe_layers = sorted(calib_counts)
    rows = []

    def plan_moving(keep: dict[int, set[int]], layers: list[int]) -> Plan:
        moved = tuple(ExpertPlacement(l, e, ("cloud",), (1.0,)) for l in layers
                      for e in range(len(calib_counts[l])) if e not in keep[l])
        return Plan((Pipeline((Stage("end", 0, n),), expert_placement=moved),))

    def coverage(keep: dict[int, set[int]], layers: list[int]) -> float:
        return sum(float(held_counts[l][sorted(keep[l])].sum() / held_counts[l].sum()) for l in layers) / len(layers)

    for size in subset_sizes:
        keep = {l: set(torch.argsort(c, descending=True, stable=True)[:size].tolist()) for l, c in calib_counts.items()}
        fitted: dict = {}
        # All MoE layers at once (fitting every gate), then each layer alone (reusing its fitted gate).
        for layers in [moe_layers] + [[l] for l in moe_layers]:
            plan = plan_moving(keep, layers)
            for method, mode in (("renormalise", "renormalise"), ("group_gate", "fitted")):
                planned = apply_plan(model, None, plan, group_gate={"end": layers}, gate_mode=mode,
                                     fitted_gates={l: fitted[l] for l in layers if l in fitted} if mode == "fitted" else None,
                                     calibration_ids=calibration_ids if mode == "fitted" else None)
                if mode == "fitted":
                    fitted.update({l: p.group_gate for l, p in planned.placed_experts().items() if p.group_gate is not None})
                rows.append({"local_experts": size, "layers": layers, "coverage": round(coverage(keep, layers), 6),
                             "method": method, **compare(ref, logits_of(planned, ref.ids))})
                _log(f"{size} local experts on layers {layers}, {method}: {rows[-1]}")
    return rows


def measure_table(model: nn.Module, calibration_ids: torch.Tensor, held_out_ids: torch.Tensor, *, name: str,
                  cut_layers: list[int], ranks: list[int], subset_sizes: list[int], measured_on: dict,
                  codec_steps: int = 0) -> dict:
    """The whole accuracy table (JSON-ready, schema ``moeplan.accuracy/1``)."""
    t0 = time.perf_counter()
    parts = moe_parts(model)
    first = next(iter(parts.values()))
    ref = reference(model, held_out_ids)
    table = {
        "schema": SCHEMA,
        "model": {"name": name, "family": family_of(model).name, "num_layers": int(model.config.num_hidden_layers),
                  "hidden_size": int(model.config.hidden_size), "num_experts": first.num_experts, "top_k": first.top_k},
        "measured_on": measured_on | {
            "calibration_tokens": int(calibration_ids.numel()), "held_out_tokens": int(held_out_ids.numel()),
            "torch": torch.__version__, "transformers": transformers.__version__},
        "loss_measure": LOSS_MEASURE,
        "baseline": {"perplexity": round(ref.perplexity, 5), "nll_nats": round(ref.nll_nats, 6)},
        "codec_fit": {"method": "pca", "fine_tuning_steps": codec_steps},
        "codec": codec_sweep(model, calibration_ids, ref, cut_layers, ranks, codec_steps),
        "group_gate": gate_sweep(model, calibration_ids, ref, subset_sizes),
    }
    table["measured_on"]["seconds"] = round(time.perf_counter() - t0, 1)
    return table


def popularity_file(model: nn.Module, ids: torch.Tensor) -> dict:
    """Measured expert selection counts in the layout of ``read_popularity_counts``
    (``expert_popularity`` [MoE layers][experts], ``total_input_tokens``)."""
    counts = selection_counts(model, ids)
    return {"total_input_tokens": int(ids.numel()), "expert_popularity": [counts[l].tolist() for l in sorted(counts)]}
