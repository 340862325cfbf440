"""The executor: apply a moeplan plan to a real PyTorch / Hugging Face ``transformers`` MoE model.

Needs the ``torch`` extra (``pip install 'moeplan[torch]'``: torch 2.13.0, transformers 5.24.0,
safetensors). The planner never imports this package. See ``docs/executor.md``.

    from planner.executor import apply_plan, load_reference
    planned = apply_plan(load_reference(), instance, plan, calibration_ids=ids)
    tokens = planned.generate(prompt_ids, max_new_tokens=32)
"""

from planner.executor.apply import apply_plan
from planner.executor.codec import LowRankCodec, load_codecs, save_codecs
from planner.executor.families import FAMILIES, UnsupportedModelError, family_of, moe_parts
from planner.executor.group_gate import GroupGate, fit_group_gate
from planner.executor.models import load_local, load_reference, model_from_card, tiny_model
from planner.executor.placed import ExpertShard, InProcessExperts, PlacedExperts, RemoteExperts, Timings
from planner.executor.stages import PlannedModel, StageRunner

__all__ = [
    "apply_plan", "PlannedModel", "StageRunner", "LowRankCodec", "save_codecs", "load_codecs", "GroupGate",
    "fit_group_gate", "FAMILIES", "UnsupportedModelError", "family_of", "moe_parts", "tiny_model", "model_from_card",
    "load_local", "load_reference", "ExpertShard", "InProcessExperts", "PlacedExperts", "RemoteExperts", "Timings",
]
