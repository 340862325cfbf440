"""One adapter per Hugging Face MoE family: where each decoder layer keeps its router, experts and shared experts.

Checked against transformers 5.24.0. In every supported family a decoder layer's MoE block
(``layer.mlp``) holds

* the router (attribute ``gate``, or ``router`` for gpt-oss and PhiMoE), called with the flattened
  hidden states ``[T, H]`` and returning ``(logits [T, E], top_k_weights [T, k], top_k_index [T, k])``;
* the routed experts, one fused module with 3-D weights whose first dimension is the expert
  (``gate_up_proj [E, 2I, H]``, ``down_proj [E, H, I]``; gpt-oss transposed, interleaved and with
  biases), called as ``experts(hidden [T, H], top_k_index [T, k], top_k_weights [T, k]) -> [T, H]``;
* shared experts beside them in Qwen2-MoE (``shared_expert`` scaled by ``shared_expert_gate``) and
  DeepSeek-V2/V3 (``shared_experts``). DeepSeek layers below ``first_k_dense_replace`` are dense.

The experts module is where the executor places, splits and substitutes experts
(:mod:`planner.executor.placed`): replacing it keeps each family's router, shared experts and
return conventions untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from planner.domain.errors import MoeplanError


class UnsupportedModelError(MoeplanError, ValueError):
    """A model class, or a layer inside it, that no family adapter knows."""


def _softmax(router: nn.Module, logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits.float(), dim=-1)


def _sigmoid_with_bias(router: nn.Module, logits: torch.Tensor) -> torch.Tensor:
    # DeepSeek-V3 chooses experts by sigmoid score + e_score_correction_bias (V2: softmax; see below).
    scores = logits.float().sigmoid()
    bias = getattr(router, "e_score_correction_bias", None)
    return scores + bias if bias is not None else scores


def _uniform_kind(config, layer: int) -> str:
    """Families whose model forward uses one mask kind for every layer, from ``config.sliding_window``."""
    return "full_attention" if getattr(config, "sliding_window", None) is None else "sliding_attention"


def _per_layer_kind(config, layer: int) -> str:
    """Families whose model forward picks each layer's mask from ``config.layer_types``."""
    return config.layer_types[layer]


def _full_kind(config, layer: int) -> str:
    return "full_attention"


@dataclass(frozen=True)
class Family:
    """How to find the MoE parts of one family's decoder layers.

    ``selection_scores(router, logits)`` turns router logits ``[T, E]`` into the per-expert scores the
    router ranks experts by (probabilities for softmax routers), float32 ``[T, E]``; the group gate
    mixes over them. ``mask_kind(config, layer)`` is the attention-mask kind (``"full_attention"`` or
    ``"sliding_attention"``) the family's model forward gives that layer.
    """

    name: str
    causal_lm_class: str
    config_class: str
    router_attr: str
    shared_attrs: tuple[str, ...]
    selection_scores: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    mask_kind: Callable[[object, int], str]


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("mixtral", "MixtralForCausalLM", "MixtralConfig", "gate", (), _softmax, _uniform_kind),
        Family("qwen2_moe", "Qwen2MoeForCausalLM", "Qwen2MoeConfig", "gate", ("shared_expert", "shared_expert_gate"),
               _softmax, _per_layer_kind),
        Family("qwen3_moe", "Qwen3MoeForCausalLM", "Qwen3MoeConfig", "gate", (), _softmax, _uniform_kind),
        Family("olmoe", "OlmoeForCausalLM", "OlmoeConfig", "gate", (), _softmax, _full_kind),
        Family("deepseek_v2", "DeepseekV2ForCausalLM", "DeepseekV2Config", "gate", ("shared_experts",), _softmax, _full_kind),
        Family("deepseek_v3", "DeepseekV3ForCausalLM", "DeepseekV3Config", "gate", ("shared_experts",),
               _sigmoid_with_bias, _full_kind),
        Family("gpt_oss", "GptOssForCausalLM", "GptOssConfig", "router", (), _softmax, _per_layer_kind),
        Family("phimoe", "PhimoeForCausalLM", "PhimoeConfig", "router", (), _softmax, _uniform_kind),
    )
}
_BY_CLASS = {f.causal_lm_class: f for f in FAMILIES.values()}


@dataclass(frozen=True)
class MoEParts:
    """The MoE pieces of decoder layer ``layer``: its block (``layer.mlp``), router, fused experts and
    shared-expert modules (empty tuple when the family has none)."""

    layer: int
    block: nn.Module
    router: nn.Module
    experts: nn.Module
    shared: tuple[nn.Module, ...]

    @property
    def num_experts(self) -> int:
        return int(self.experts.num_experts)

    @property
    def top_k(self) -> int:
        return int(self.router.top_k)


def family_of(model: nn.Module) -> Family:
    """The adapter of ``model`` (a ``...ForCausalLM``); an unknown class is an :class:`UnsupportedModelError`."""
    name = type(model).__name__
    family = _BY_CLASS.get(name)
    if family is None:
        known = ", ".join(sorted(_BY_CLASS))
        raise UnsupportedModelError(
            f"model class {name} is not a supported MoE family; the executor knows {known} "
            "(a ...ForCausalLM of transformers 5.24)")
    return family


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    return model.model.layers


def moe_parts(model: nn.Module) -> dict[int, MoEParts]:
    """Every MoE decoder layer of ``model``: layer index -> its parts; dense layers are left out."""
    family = family_of(model)
    out: dict[int, MoEParts] = {}
    for i, layer in enumerate(decoder_layers(model)):
        block = getattr(layer, "mlp", None)
        experts = getattr(block, "experts", None)
        if experts is None:
            continue
        router = getattr(block, family.router_attr, None)
        if router is None or not hasattr(experts, "num_experts"):
            raise UnsupportedModelError(
                f"layer {i} of {type(model).__name__}: its MoE block {type(block).__name__} has no "
                f"'{family.router_attr}' router or no fused experts with num_experts (transformers other than 5.24?)")
        shared = tuple(getattr(block, a) for a in family.shared_attrs)
        out[i] = MoEParts(i, block, router, experts, shared)
    return out
