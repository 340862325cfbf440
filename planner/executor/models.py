"""Build Hugging Face MoE models: tiny ones from their config classes, any size from a model card, or
from a local checkpoint folder. Never downloads: folders load with ``local_files_only=True``.

* :func:`tiny_model` ``(family)``: a few layers of hidden 64 with 8 experts (tests); routers and
  DeepSeek's ``e_score_correction_bias`` are re-initialised at random, because several families
  initialise routers to zero and every token would then tie.
* :func:`model_from_card` ``(card)``: random weights in the shape of a :class:`~planner.domain.moe_model.MoEModel`
  card of a supported family (``card.family``).
* :func:`load_local` ``(folder)``: ``from_pretrained`` of a folder with ``config.json`` and weights.
* :func:`load_reference`: the shipped reference model (``planner/data/reference-moe``).

Models come back in eval mode, float32 unless told otherwise.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import transformers
from torch import nn

from planner.domain.errors import InputError, Problem
from planner.domain.moe_model import MoEModel
from planner.executor.families import FAMILIES, UnsupportedModelError, moe_parts

REFERENCE_DIR = Path(__file__).resolve().parents[1] / "data" / "reference-moe"


def _family_config(family: str, *, layers: int, hidden: int, heads: int, kv_heads: int, head_dim: int, vocab: int,
                   experts: int, top_k: int, expert_ffn: int, dense_ffn: int, shared_ffn: int, first_dense: int,
                   max_positions: int) -> dict:
    """Keyword arguments of ``family``'s config class for these sizes."""
    common = dict(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                  num_key_value_heads=kv_heads, max_position_embeddings=max_positions, tie_word_embeddings=False,
                  pad_token_id=None, bos_token_id=None, eos_token_id=None)
    if family in ("mixtral", "phimoe"):
        return common | dict(head_dim=head_dim, num_local_experts=experts, num_experts_per_tok=top_k,
                             intermediate_size=expert_ffn, router_jitter_noise=0.0)
    if family == "olmoe":
        return common | dict(num_experts=experts, num_experts_per_tok=top_k, intermediate_size=expert_ffn)
    if family == "qwen3_moe":
        return common | dict(head_dim=head_dim, num_experts=experts, num_experts_per_tok=top_k,
                             moe_intermediate_size=expert_ffn, intermediate_size=dense_ffn or expert_ffn,
                             norm_topk_prob=True)
    if family == "qwen2_moe":
        return common | dict(num_experts=experts, num_experts_per_tok=top_k, moe_intermediate_size=expert_ffn,
                             shared_expert_intermediate_size=shared_ffn or expert_ffn,
                             intermediate_size=dense_ffn or expert_ffn)
    if family == "gpt_oss":
        return common | dict(head_dim=head_dim, num_local_experts=experts, num_experts_per_tok=top_k,
                             intermediate_size=expert_ffn, sliding_window=8,
                             rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                             layer_types=["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)])
    if family in ("deepseek_v2", "deepseek_v3"):
        # MLA; tiny configs need as many KV heads as attention heads.
        mla = dict(kv_lora_rank=16, q_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16,
                   num_key_value_heads=heads, n_shared_experts=1, moe_intermediate_size=expert_ffn,
                   intermediate_size=dense_ffn or 2 * expert_ffn, first_k_dense_replace=first_dense,
                   num_experts_per_tok=top_k, n_group=2, topk_group=2, n_routed_experts=experts)
        return common | mla
    raise UnsupportedModelError(f"family {family!r} is not one of {', '.join(FAMILIES)}")


def _instantiate(family: str, kwargs: dict, *, seed: int, dtype: torch.dtype) -> nn.Module:
    info = FAMILIES[family]
    config = getattr(transformers, info.config_class)(**kwargs)
    torch.manual_seed(seed)
    model = getattr(transformers, info.causal_lm_class)(config)
    reinit_routers(model, seed=seed)
    return model.to(dtype).eval()


def reinit_routers(model: nn.Module, *, seed: int = 0) -> None:
    """Give every router weight (and bias, and DeepSeek's correction bias) random values of scale
    1/sqrt(hidden), so that router logits have unit spread and tokens do not tie."""
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for parts in moe_parts(model).values():
            for _, tensor in list(parts.router.named_parameters()) + list(parts.router.named_buffers()):
                scale = 1.0 / math.sqrt(tensor.shape[-1]) if tensor.dim() == 2 else 0.1
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * scale)


def tiny_model(family: str, *, num_layers: int = 4, seed: int = 0, dtype: torch.dtype = torch.float32, **sizes) -> nn.Module:
    """A tiny model of ``family`` (hidden 64, 4 heads, 8 experts, top-2, vocabulary 128), random weights.

    DeepSeek models get one dense first layer (``first_k_dense_replace = 1``) so that dense layers
    are exercised; ``sizes`` overrides any of hidden, heads, kv_heads, head_dim, vocab, experts,
    top_k, expert_ffn, dense_ffn, shared_ffn, first_dense, max_positions.
    """
    if family not in FAMILIES:
        raise UnsupportedModelError(f"family {family!r} is not one of {', '.join(FAMILIES)}")
    defaults = dict(layers=num_layers, hidden=64, heads=4, kv_heads=2, head_dim=16, vocab=128, experts=8, top_k=2,
                    expert_ffn=32, dense_ffn=0, shared_ffn=0, first_dense=1 if family.startswith("deepseek") else 0,
                    max_positions=256)
    unknown = set(sizes) - set(defaults)
    if unknown:
        raise TypeError(f"unknown size(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(defaults))}")
    return _instantiate(family, _family_config(family, **(defaults | sizes)), seed=seed, dtype=dtype)


def model_from_card(card: MoEModel, *, seed: int = 0, dtype: torch.dtype = torch.float32, max_positions: int = 4096) -> nn.Module:
    """Random weights in the shape of ``card`` (its ``family`` must be supported); for cost and timing
    runs, not accuracy."""
    family = card.family
    where = card.source.get("reference", card.name) if card.source else card.name
    if family not in FAMILIES:
        raise InputError(Problem(str(where), "model.family",
                                 f"family {family!r} has no executor adapter; supported: {', '.join(FAMILIES)}"))
    if card.moe_layer_step != 1 or card.dense_layers:
        raise InputError(Problem(str(where), "model.moe_layer_step",
                                 "cards with interleaved dense layers are not built by model_from_card yet"))
    kwargs = _family_config(
        family, layers=card.num_layers, hidden=card.hidden_size, heads=card.num_attention_heads,
        kv_heads=card.num_kv_heads, head_dim=card.head_dim, vocab=card.vocab_size, experts=card.num_experts,
        top_k=card.top_k, expert_ffn=card.expert_intermediate_size, dense_ffn=card.dense_intermediate_size,
        shared_ffn=card.shared_expert_intermediate_size, first_dense=card.first_dense_layers, max_positions=max_positions)
    if family.startswith("deepseek"):
        kwargs |= dict(kv_lora_rank=card.kv_lora_rank, q_lora_rank=card.q_lora_rank or None,
                       qk_rope_head_dim=card.qk_rope_head_dim, qk_nope_head_dim=card.qk_nope_head_dim,
                       v_head_dim=card.v_head_dim, n_shared_experts=card.num_shared_experts)
    return _instantiate(family, kwargs, seed=seed, dtype=dtype)


def load_local(folder: str | Path, *, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A model saved with ``save_pretrained`` in ``folder`` (``config.json`` + weights); never downloads."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise InputError(Problem(str(folder), "config.json",
                                 "not found: a local checkpoint folder needs config.json and its weights (no hub downloads)"))
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=dtype)
    return model.eval()


def load_reference(*, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The shipped reference model (see ``planner/data/reference-moe/README.md``)."""
    return load_local(REFERENCE_DIR, dtype=dtype)
