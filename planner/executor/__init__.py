"""The executor: apply a moeplan plan to a real PyTorch / Hugging Face ``transformers`` MoE model.

Needs the ``torch`` extra (``pip install 'moeplan[torch]'``: torch 2.13.0, transformers 5.24.0,
safetensors). The planner never imports this package; its names load lazily, so that the torch-free
:mod:`planner.executor.calibrate` command parser can be registered without torch. See
``docs/executor.md``.

    from planner.executor import apply_plan, load_reference
    planned = apply_plan(load_reference(), instance, plan, calibration_ids=ids)
    tokens = planned.generate(prompt_ids, max_new_tokens=32)
"""

import importlib

_EXPORTS = {
    "apply_plan": "apply", "LowRankCodec": "codec", "load_codecs": "codec", "save_codecs": "codec",
    "FAMILIES": "families", "UnsupportedModelError": "families", "family_of": "families", "moe_parts": "families",
    "GroupGate": "group_gate", "fit_group_gate": "group_gate", "load_local": "models", "load_reference": "models",
    "model_from_card": "models", "tiny_model": "models", "ExpertShard": "placed", "InProcessExperts": "placed",
    "PlacedExperts": "placed", "RemoteExperts": "placed", "Timings": "placed", "PlannedModel": "stages",
    "StageRunner": "stages",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'planner.executor' has no attribute {name!r}")
    return getattr(importlib.import_module(f"planner.executor.{_EXPORTS[name]}"), name)
