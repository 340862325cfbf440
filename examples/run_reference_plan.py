"""Plan the shipped reference MoE for a Jetson + cloud fleet, apply the plan to the real model, generate.

Steps: solve ``instances/reference-moe-jetson-cloud.toml`` with route-aware; apply the plan to the
reference model (a byte-level Mixtral trained on the Python standard library) and compare it with
the unmodified model (exact unless the plan compresses a cut, as it does here: the instance's
measured table prices codec ranks); generate text through the planned stages; then keep only the
end device's most popular experts with the group gate serving the others locally, and compare it
with plain renormalisation; print the measured accuracy figures the planner traded.

Needs the torch extra. Run: python examples/run_reference_plan.py
"""

from pathlib import Path

import torch

from planner import api
from planner.domain.plan import ExpertPlacement, Pipeline, Plan
from planner.executor import apply_plan, load_reference
from planner.executor.accuracy import compare, logits_of, reference, selection_counts
from planner.executor.reference import corpus

ROOT = Path(__file__).resolve().parents[1]


def main(instance_path: Path = ROOT / "instances" / "reference-moe-jetson-cloud.toml", new_tokens: int = 48,
         local_experts: int = 4) -> dict:
    torch.set_num_threads(1)
    inst = api.load_instance(instance_path)
    result = api.solve(inst, "route-aware")
    plan = result.solution
    assert plan is not None and api.validate(inst, plan) == []
    pipe = plan.pipelines[0]
    print(f"plan: {' | '.join(f'{s.device} [{s.first_layer}, {s.end_layer})' for s in pipe.stages)}, "
          f"codec ranks {list(pipe.codec_ranks)}, {len(pipe.expert_placement)} experts placed off-stage, "
          f"predicted {plan.metrics['throughput_tokens_per_s']:.0f} tokens/s")

    model = load_reference()
    calib = torch.from_numpy(corpus.windows(corpus.read_bytes("calibration"), 8, 128, seed=0))
    held = torch.from_numpy(corpus.windows(corpus.read_bytes("held-out"), 8, 128))
    # Fit codecs as the measured table that priced them did (PCA, then fine-tuning steps).
    table = inst.constraints.accuracy_table
    planned = apply_plan(model, inst, plan, calibration_ids=calib, codec_steps=table.codec_fine_tuning_steps)
    ref = reference(model, held)
    exact = compare(ref, logits_of(planned, held))
    print(f"planned vs unmodified on held-out bytes: top-1 agreement {exact['top1_agreement']:.4f}, "
          f"KL {exact['kl_nats']:.2e} nats")
    if not any(r is not None for r in pipe.codec_ranks):
        assert exact["top1_agreement"] == 1.0 and exact["kl_nats"] < 1e-6

    prompt = b"def read_config(path):\n    "
    ids = torch.tensor([list(prompt)])
    out = planned.generate(ids, max_new_tokens=new_tokens)
    text = bytes(out[0].tolist()).decode("utf-8", errors="replace")
    print("generated through the planned stages:\n" + text)

    # The end device keeps its `local_experts` most popular experts per layer; the rest go to the
    # cloud, and the group gate serves tokens routed to them from the local subset instead.
    end, cloud = pipe.stages[0].device, pipe.stages[-1].device
    counts = selection_counts(model, calib)
    moved = tuple(ExpertPlacement(l, int(e), (cloud,), (1.0,)) for l in pipe.stages[0].layers
                  for e in torch.argsort(counts[l], descending=True, stable=True)[local_experts:])
    gated_plan = Plan((Pipeline(pipe.stages, pipe.codec_ranks, pipe.micro_batch_size, pipe.num_micro_batches,
                                pipe.request_share, moved),))
    figures = {}
    for mode in ("renormalise", "fitted"):
        gated = apply_plan(model, inst, gated_plan, group_gate={end: None}, gate_mode=mode, calibration_ids=calib)
        figures[mode] = compare(ref, logits_of(gated, held))
        remote = sum(int(p.slot_counts[1:].sum()) for p in gated.placed_experts().values())
        print(f"{local_experts} of 8 experts on {end}, {mode:11s}: top-1 agreement {figures[mode]['top1_agreement']:.4f}, "
              f"KL {figures[mode]['kl_nats']:.4f} nats, perplexity {figures[mode]['perplexity_change']:+.2%}, "
              f"remote slots {remote}")
        assert remote == 0

    print(f"measured accuracy table ({table.loss_measure}): codec loss by rank "
          + ", ".join(f"{r}: {table.codec_loss(r):.4f}" for r in inst.constraints.codec.ranks)
          + f"; group-gate loss at coverage 0.75: {table.group_gate_loss(0.75):.4f} "
          f"(renormalise {table.group_gate_loss(0.75, 'renormalise'):.4f})")
    assert len(out[0]) == len(prompt) + new_tokens
    assert figures["fitted"]["top1_agreement"] > 0.5
    return {"plan": plan, "text": text, "exact": exact, "group_gate": figures}


if __name__ == "__main__":
    main()
