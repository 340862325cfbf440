"""Turn a Hugging Face MoE ``config.json`` into a moeplan model card (see :mod:`planner.domain.moe_model`).

:func:`card_from_hf_config` maps the config's keys to the fields of
:class:`~planner.domain.moe_model.MoEModel` and returns ``{"model": {...}, "source": {...}}``;
:func:`write_card` writes that card as TOML. Sizes are in elements (matrix dimensions),
``dtype_bytes`` in bytes per weight.

The family is read from ``model_type`` (else from the class name in ``architectures``). A nested
``text_config`` (multimodal layouts) is read as if its keys were at the top level. Supported
families and their mapping (HF key -> card field):

* every family: ``num_hidden_layers`` -> num_layers, ``hidden_size`` -> hidden_size,
  ``num_attention_heads`` -> num_attention_heads, ``num_key_value_heads`` -> num_kv_heads (default:
  the attention heads), ``head_dim`` -> head_dim (default hidden_size / heads), ``vocab_size``,
  ``tie_word_embeddings`` (default false), ``torch_dtype``/``dtype`` -> dtype_bytes (bfloat16 and
  float16: 2, float32: 4, absent: 2). Every layer is MoE unless said otherwise below.
* ``mixtral``, ``phimoe``: ``num_local_experts`` -> num_experts, ``num_experts_per_tok`` -> top_k,
  ``intermediate_size`` -> expert_intermediate_size; SwiGLU experts (ffn_matrices 3).
* ``olmoe``: ``num_experts``, ``num_experts_per_tok``, ``intermediate_size`` (the expert width).
* ``gpt_oss``: ``num_local_experts``, ``num_experts_per_tok`` or ``experts_per_token``,
  ``intermediate_size`` (the expert width); GQA with an explicit ``head_dim``.
* ``qwen2_moe``, ``qwen3_moe``: ``num_experts``, ``num_experts_per_tok``, ``moe_intermediate_size``;
  ``intermediate_size`` -> dense_intermediate_size; ``shared_expert_intermediate_size`` > 0 -> one
  shared expert of that width (Qwen1.5/Qwen2-MoE). Layer i is MoE iff i is not in ``mlp_only_layers``
  and (i + 1) % ``decoder_sparse_step`` == 0.
* ``deepseek_v2``, ``deepseek_v3``: ``n_routed_experts``, ``num_experts_per_tok``,
  ``moe_intermediate_size`` (routed and each of ``n_shared_experts`` shared experts),
  ``intermediate_size`` -> dense_intermediate_size; layer i is MoE iff i >= ``first_k_dense_replace``
  and i % ``moe_layer_freq`` == 0. Multi-head latent attention: ``q_lora_rank`` (null -> 0),
  ``kv_lora_rank``, ``qk_nope_head_dim``, ``qk_rope_head_dim``, ``v_head_dim``; head_dim is set to
  qk_nope_head_dim + qk_rope_head_dim. The multi-token-prediction module
  (``num_nextn_predict_layers``) is not part of the card.
* ``switch_transformers`` (encoder-decoder T5): approximated as one stack of ``num_layers`` encoder
  + ``num_decoder_layers`` decoder layers (decoder cross-attention not counted); ``d_model``,
  ``num_heads`` (also the KV heads), ``d_kv`` -> head_dim, ``d_ff`` for experts and dense FFNs,
  ``num_experts``, top_k = ``num_selected_experts`` (default 1: Switch routes to one expert);
  encoder layer i is MoE iff i % ``encoder_sparse_step`` == 1 (or the step is 1), likewise the
  decoder with ``decoder_sparse_step``; classic 2-matrix ReLU MLP unless ``is_gated_act``;
  tie_word_embeddings defaults to true (T5).
* any other ``model_type`` (generic mapping): the usual names, first one found wins —
  layers ``num_hidden_layers``/``n_layer``/``num_layers``; hidden ``hidden_size``/``d_model``/``n_embd``;
  heads ``num_attention_heads``/``n_head``/``num_heads``; experts ``num_local_experts``/
  ``num_experts``/``n_routed_experts``/``moe_num_experts``; top_k ``num_experts_per_tok``/
  ``experts_per_token``/``moe_topk``/``num_selected_experts``/``moe_k``; expert width
  ``moe_intermediate_size``/``expert_intermediate_size``/``intermediate_size``; dense width
  ``dense_intermediate_size``/``intermediate_size``; shared experts ``n_shared_experts``/
  ``num_shared_experts`` (width ``shared_expert_intermediate_size``, else the expert width);
  ``first_k_dense_replace``, ``decoder_sparse_step`` and ``mlp_only_layers`` as above.

The per-layer MoE pattern is rewritten into the card's ``first_dense_layers``/``moe_layer_step``/
``dense_layers``. Any missing or malformed key raises :class:`~planner.domain.errors.InputError` listing
every one of them; the card is then checked with :func:`~planner.domain.moe_model.model_from_dict`.

Command line: ``python -m planner.domain.hf_import CONFIG.json OUT.toml [--name NAME]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tomli_w

from planner.domain.errors import Collector, InputError, Problem
from planner.domain.files import write_atomic
from planner.domain.moe_model import OPTIONAL_INT_DEFAULTS, model_from_dict

_REQUIRED = object()

# Keys shared by decoder-only families (first one found wins).
_LAYERS = ("num_hidden_layers", "n_layer", "num_layers")
_HIDDEN = ("hidden_size", "d_model", "n_embd")
_HEADS = ("num_attention_heads", "n_head", "num_heads")
_KV_HEADS = ("num_key_value_heads", "num_kv_heads")
_HEAD_DIM = ("head_dim",)
_VOCAB = ("vocab_size",)
_DTYPE = ("torch_dtype", "dtype")

_DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "half": 2, "bf16": 2, "fp16": 2, "float32": 4, "float": 4, "fp32": 4}

# Class-name prefixes in ``architectures`` -> family, for configs without a usable ``model_type``.
_ARCHITECTURE_PREFIXES = (
    ("Mixtral", "mixtral"), ("PhiMoE", "phimoe"), ("Qwen2Moe", "qwen2_moe"), ("Qwen3Moe", "qwen3_moe"),
    ("DeepseekV2", "deepseek_v2"), ("DeepseekV3", "deepseek_v3"), ("Olmoe", "olmoe"),
    ("SwitchTransformers", "switch_transformers"), ("GptOss", "gpt_oss"),
)

# Order of the keys in a written ``[model]`` table.
_CARD_ORDER = (
    "name", "family", "hf_id", "num_layers", "hidden_size", "num_attention_heads", "num_kv_heads",
    "head_dim", "vocab_size", "num_experts", "top_k", "expert_intermediate_size", "dtype_bytes",
    "dense_intermediate_size", "first_dense_layers", "moe_layer_step", "dense_layers",
    "num_shared_experts", "shared_expert_intermediate_size", "ffn_matrices", "attention",
    "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
    "tie_word_embeddings",
)


class _Reader:
    """Reads HF keys for card fields and records a problem for every missing or malformed one."""

    def __init__(self, config: dict, col: Collector):
        self.config = config
        self.col = col
        self.notes: list[str] = []

    def get(self, card_field: str, keys: tuple[str, ...], *, default: Any = _REQUIRED, kind: type = int) -> Any:
        """The first non-null value among ``keys`` (a null counts as absent).

        Without a ``default`` the value is required. Returns None after recording a problem.
        """
        for key in keys:
            value = self.config.get(key)
            if value is not None:
                return self._check(card_field, key, value, kind)
        if default is _REQUIRED:
            self.col.add(
                " | ".join(keys),
                f"missing: needed for the card field {card_field}; tried the key(s) {', '.join(keys)}",
            )
            return None
        return default

    def _check(self, card_field: str, key: str, value: Any, kind: type) -> Any:
        if kind is int:
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                return value
            self.col.add(key, f"must be an integer >= 0 (card field {card_field}), got {value!r}")
            return None
        if kind is list:
            if isinstance(value, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in value):
                return value
            self.col.add(key, f"must be a list of layer indices (card field {card_field}), got {value!r}")
            return None
        if not isinstance(value, kind):
            self.col.add(key, f"must be {kind.__name__} (card field {card_field}), got {value!r}")
            return None
        return value

    def positive_step(self, card_field: str, key: str, value: int | None) -> int | None:
        """A layer step read from ``key`` that must be >= 1."""
        if value is not None and value < 1:
            self.col.add(key, f"must be >= 1 (card field {card_field}), got {value!r}")
            return None
        return value


# ----- family readers: each returns the card fields and the per-layer MoE mask (None if unknown) -----
Fields = dict[str, Any]


def _decoder_attention(r: _Reader) -> Fields:
    """Layers, widths, GQA heads and vocabulary of a decoder-only config."""
    hidden = r.get("hidden_size", _HIDDEN)
    heads = r.get("num_attention_heads", _HEADS)
    derived = hidden // heads if hidden and heads else None
    if derived is not None and hidden % heads and all(r.config.get(k) is None for k in _HEAD_DIM):
        r.col.add("head_dim", f"is needed: hidden_size {hidden} is not a multiple of num_attention_heads {heads}, "
                              "so the head width cannot be derived (card field head_dim)")
    return {
        "num_layers": r.get("num_layers", _LAYERS),
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "num_kv_heads": r.get("num_kv_heads", _KV_HEADS, default=heads),
        "head_dim": r.get("head_dim", _HEAD_DIM, default=derived),
        "vocab_size": r.get("vocab_size", _VOCAB),
        "attention": "gqa",
        "tie_word_embeddings": r.get("tie_word_embeddings", ("tie_word_embeddings",), default=False, kind=bool),
    }


def _all_moe(fields: Fields) -> list[bool] | None:
    n = fields["num_layers"]
    return None if n is None else [True] * n


def _routed(r: _Reader, experts: tuple[str, ...], top_k: tuple[str, ...], width: tuple[str, ...]) -> Fields:
    return {
        "num_experts": r.get("num_experts", experts),
        "top_k": r.get("top_k", top_k),
        "expert_intermediate_size": r.get("expert_intermediate_size", width),
    }


def _dense_width(r: _Reader, keys: tuple[str, ...], mask: list[bool] | None) -> int:
    """Dense FFN width: required only when the layer mask has dense layers."""
    needed = mask is not None and not all(mask)
    return r.get("dense_intermediate_size", keys, default=_REQUIRED if needed else 0) or 0


def _mixtral(r: _Reader) -> tuple[Fields, list[bool] | None]:
    f = _decoder_attention(r) | _routed(r, ("num_local_experts",), ("num_experts_per_tok",), ("intermediate_size",))
    return f, _all_moe(f)


def _olmoe(r: _Reader) -> tuple[Fields, list[bool] | None]:
    f = _decoder_attention(r) | _routed(r, ("num_experts",), ("num_experts_per_tok",), ("intermediate_size",))
    return f, _all_moe(f)


def _gpt_oss(r: _Reader) -> tuple[Fields, list[bool] | None]:
    f = _decoder_attention(r) | _routed(
        r, ("num_local_experts",), ("num_experts_per_tok", "experts_per_token"), ("intermediate_size",))
    r.notes.append("attention sinks and biases not counted; sliding-window layers modeled as full attention")
    return f, _all_moe(f)


def _qwen_moe(r: _Reader) -> tuple[Fields, list[bool] | None]:
    f = _decoder_attention(r) | _routed(r, ("num_experts",), ("num_experts_per_tok",), ("moe_intermediate_size",))
    step = r.positive_step("moe_layer_step", "decoder_sparse_step",
                           r.get("moe_layer_step", ("decoder_sparse_step",), default=1))
    mlp_only = r.get("dense_layers", ("mlp_only_layers",), default=[], kind=list)
    n = f["num_layers"]
    mask = None
    if n is not None and step is not None and mlp_only is not None:
        mask = [i not in mlp_only and (i + 1) % step == 0 for i in range(n)]
    shared = r.get("shared_expert_intermediate_size", ("shared_expert_intermediate_size",), default=0) or 0
    f |= {
        "dense_intermediate_size": _dense_width(r, ("intermediate_size",), mask),
        "num_shared_experts": 1 if shared > 0 else 0,
        "shared_expert_intermediate_size": shared,
    }
    if shared:
        r.notes.append("shared-expert sigmoid gate (hidden_size weights per layer) not counted")
    return f, mask


def _deepseek(r: _Reader) -> tuple[Fields, list[bool] | None]:
    f = _decoder_attention(r) | _routed(r, ("n_routed_experts",), ("num_experts_per_tok",), ("moe_intermediate_size",))
    first = r.get("first_dense_layers", ("first_k_dense_replace",), default=0)
    freq = r.positive_step("moe_layer_step", "moe_layer_freq", r.get("moe_layer_step", ("moe_layer_freq",), default=1))
    n = f["num_layers"]
    mask = None
    if n is not None and first is not None and freq is not None:
        mask = [i >= first and i % freq == 0 for i in range(n)]
    nope = r.get("qk_nope_head_dim", ("qk_nope_head_dim",))
    rope = r.get("qk_rope_head_dim", ("qk_rope_head_dim",))
    n_shared = r.get("num_shared_experts", ("n_shared_experts",), default=0)
    f |= {
        "dense_intermediate_size": _dense_width(r, ("intermediate_size",), mask),
        "num_shared_experts": n_shared,
        "shared_expert_intermediate_size": f["expert_intermediate_size"] if n_shared else 0,
        "attention": "mla",
        "head_dim": nope + rope if nope is not None and rope is not None else None,
        "q_lora_rank": r.get("q_lora_rank", ("q_lora_rank",), default=0),
        "kv_lora_rank": r.get("kv_lora_rank", ("kv_lora_rank",)),
        "qk_nope_head_dim": nope,
        "qk_rope_head_dim": rope,
        "v_head_dim": r.get("v_head_dim", ("v_head_dim",)),
    }
    if not f["q_lora_rank"]:
        r.notes.append("q_lora_rank null: queries use a full-rank projection (q_lora_rank = 0)")
    mtp = r.get("num_nextn_predict_layers", ("num_nextn_predict_layers",), default=0)
    if mtp:
        r.notes.append(f"multi-token-prediction module ({mtp} extra layer(s), num_nextn_predict_layers) not counted")
    r.notes.append("head_dim = qk_nope_head_dim + qk_rope_head_dim (unused by the MLA cost terms)")
    return f, mask


def _switch(r: _Reader) -> tuple[Fields, list[bool] | None]:
    enc = r.get("num_layers", ("num_layers",))
    dec = r.get("num_layers", ("num_decoder_layers",), default=enc)
    heads = r.get("num_attention_heads", ("num_heads",))
    d_ff = r.get("expert_intermediate_size", ("d_ff",))
    enc_step = r.get("moe_layer_step", ("encoder_sparse_step",))
    dec_step = r.get("moe_layer_step", ("decoder_sparse_step",))
    gated = r.get("ffn_matrices", ("is_gated_act",), default=False, kind=bool)
    proj = r.get("ffn_matrices", ("feed_forward_proj",), default="relu", kind=str)
    f = {
        "num_layers": enc + dec if enc is not None and dec is not None else None,
        "hidden_size": r.get("hidden_size", ("d_model",)),
        "num_attention_heads": heads,
        "num_kv_heads": heads,
        "head_dim": r.get("head_dim", ("d_kv",)),
        "vocab_size": r.get("vocab_size", _VOCAB),
        "num_experts": r.get("num_experts", ("num_experts",)),
        "top_k": r.get("top_k", ("num_selected_experts",), default=1),
        "expert_intermediate_size": d_ff,
        "dense_intermediate_size": d_ff,
        "ffn_matrices": 3 if gated or (proj or "").startswith("gated") else 2,
        "attention": "gqa",
        "tie_word_embeddings": r.get("tie_word_embeddings", ("tie_word_embeddings",), default=True, kind=bool),
    }

    def sparse(step: int, count: int) -> list[bool]:
        # transformers' SwitchTransformersStack: layer i is sparse iff i % step == 1 or step == 1.
        return [step > 0 and (i % step == 1 or step == 1) for i in range(count)]

    mask = None
    if None not in (enc, dec, enc_step, dec_step):
        mask = sparse(enc_step, enc) + sparse(dec_step, dec)
    r.notes.append(
        f"encoder-decoder approximated as one stack of {enc} encoder + {dec} decoder layers; "
        "decoder cross-attention, relative position biases and norms not counted"
    )
    return f, mask


def _generic(r: _Reader) -> tuple[Fields, list[bool] | None]:
    f = _decoder_attention(r) | {
        "num_experts": r.get("num_experts", ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")),
        "top_k": r.get("top_k", ("num_experts_per_tok", "experts_per_token", "moe_topk", "num_selected_experts", "moe_k")),
        "expert_intermediate_size": r.get(
            "expert_intermediate_size", ("moe_intermediate_size", "expert_intermediate_size", "intermediate_size")),
    }
    first = r.get("first_dense_layers", ("first_k_dense_replace",), default=0)
    step = r.positive_step("moe_layer_step", "decoder_sparse_step",
                           r.get("moe_layer_step", ("decoder_sparse_step",), default=1))
    mlp_only = r.get("dense_layers", ("mlp_only_layers",), default=[], kind=list)
    n = f["num_layers"]
    mask = None
    if None not in (n, first, step, mlp_only):
        mask = [i >= first and (i + 1) % step == 0 and i not in mlp_only for i in range(n)]
    shared_width = r.get("shared_expert_intermediate_size", ("shared_expert_intermediate_size",), default=0) or 0
    n_shared = r.get("num_shared_experts", ("n_shared_experts", "num_shared_experts"), default=1 if shared_width else 0)
    f |= {
        "dense_intermediate_size": _dense_width(r, ("dense_intermediate_size", "intermediate_size"), mask),
        "num_shared_experts": n_shared,
        "shared_expert_intermediate_size": shared_width or (f["expert_intermediate_size"] if n_shared else 0),
    }
    r.notes.append("generic mapping (family not recognised): check the card by hand")
    return f, mask


_FAMILIES: dict[str, Callable[[_Reader], tuple[Fields, list[bool] | None]]] = {
    "mixtral": _mixtral,
    "phimoe": _mixtral,
    "olmoe": _olmoe,
    "gpt_oss": _gpt_oss,
    "qwen2_moe": _qwen_moe,
    "qwen3_moe": _qwen_moe,
    "deepseek_v2": _deepseek,
    "deepseek_v3": _deepseek,
    "switch_transformers": _switch,
}
SUPPORTED_FAMILIES = tuple(_FAMILIES)


def _flatten(config: dict) -> dict:
    """The config with a nested ``text_config`` lifted to the top level (its keys win)."""
    text = config.get("text_config")
    if not isinstance(text, dict):
        return config
    flat = {k: v for k, v in config.items() if k != "text_config"}
    flat.update(text)
    return flat


def detect_family(config: dict) -> str:
    """The family name of a (flattened) config: its ``model_type`` if supported, else the family of
    its ``architectures`` class name, else the raw ``model_type`` (or ``"generic"``)."""
    model_type = config.get("model_type")
    model_type = model_type.strip().lower().replace("-", "_") if isinstance(model_type, str) else ""
    if model_type in _FAMILIES:
        return model_type
    architectures = config.get("architectures")
    for arch in architectures if isinstance(architectures, list) else []:
        for prefix, family in _ARCHITECTURE_PREFIXES:
            if isinstance(arch, str) and arch.startswith(prefix):
                return family
    return model_type or "generic"


def _encode_layers(mask: list[bool]) -> tuple[int, int, list[int]]:
    """Express a per-layer MoE mask as (first_dense_layers, moe_layer_step, dense_layers).

    Layer i is MoE iff i >= first and (i + 1) % step == 0 and i not in dense_layers
    (:meth:`MoEModel.is_moe_layer`); the most compact exact encoding is returned.
    """
    n = len(mask)
    moe = [i for i, m in enumerate(mask) if m]
    best = None
    for step in range(1, n + 1):
        if any((i + 1) % step for i in moe):
            continue
        exceptions = [i for i in range(n) if (i + 1) % step == 0 and not mask[i]]
        leading = [i for i in exceptions if not moe or i < moe[0]]
        first = leading[-1] + 1 if leading else 0
        dense = [i for i in exceptions if i >= first]
        key = (len(dense), first, step)
        if best is None or key < best[0]:
            best = (key, (first, step, dense))
    return best[1] if best else (0, 1, [])


def _dtype_bytes(r: _Reader) -> int | None:
    name = r.get("dtype_bytes", _DTYPE, default="bfloat16", kind=str)
    if name is None:
        return None
    key = name.lower().removeprefix("torch.")
    if key not in _DTYPE_BYTES:
        r.col.add("torch_dtype", f"unsupported dtype {name!r} (card field dtype_bytes); known: {', '.join(_DTYPE_BYTES)}")
        return None
    return _DTYPE_BYTES[key]


def _default_name(config: dict, family: str) -> str:
    path = config.get("_name_or_path")
    if isinstance(path, str) and path.strip("/"):
        return path.strip("/").rsplit("/", 1)[-1].lower()
    return family


def _hf_id(config: dict) -> str:
    """``_name_or_path`` when it looks like a hub id ("org/name"), else empty."""
    path = config.get("_name_or_path")
    if isinstance(path, str) and path.count("/") == 1 and not path.startswith((".", "/")):
        return path
    return ""


def card_from_hf_config(config: dict, *, name: str | None = None, file: str = "<config>") -> dict:
    """Build a model card ``{"model": {...}, "source": {...}}`` from a Hugging Face config dict.

    ``name`` defaults to the last part of ``_name_or_path`` (else the family); ``file`` names the
    config in problems and in ``source.reference``. Raises :class:`InputError` listing every
    missing or malformed key, or every problem :func:`model_from_dict` finds in the result.
    """
    if not isinstance(config, dict):
        raise InputError(Problem(file, "", f"a config.json must be a JSON object, got {type(config).__name__}"))
    flat = _flatten(config)
    family = detect_family(flat)
    col = Collector(file)
    r = _Reader(flat, col)
    if flat is not config:
        r.notes.append("read from the nested text_config; other towers (vision, audio) not counted")
    read = _FAMILIES.get(family, _generic)
    fields, mask = read(r)
    dtype_bytes = _dtype_bytes(r)
    if col.problems:
        if family not in _FAMILIES:
            col.problems.insert(0, Problem(
                file, "model_type",
                f"family {family!r} is not one of {', '.join(SUPPORTED_FAMILIES)}; the generic mapping "
                "was tried and needs the keys below"))
        raise InputError(col.problems)

    first, step, dense = _encode_layers(mask)
    model = OPTIONAL_INT_DEFAULTS | {
        "name": name or _default_name(flat, family),
        "family": family,
        "hf_id": _hf_id(flat),
        "dtype_bytes": dtype_bytes,
        "first_dense_layers": first,
        "moe_layer_step": step,
        "dense_layers": dense,
    } | fields
    model = {k: model[k] for k in _CARD_ORDER}

    quant = flat.get("quantization_config")
    if isinstance(quant, dict):
        r.notes.append(f"checkpoint is quantized ({quant.get('quant_method', 'quantization_config')}); "
                       "dtype_bytes follows torch_dtype")
    window = flat.get("sliding_window")
    if window and flat.get("use_sliding_window", True) and family != "gpt_oss":
        r.notes.append(f"sliding_window = {window} ignored: KV cache modeled as full attention")
    if flat.get("attention_bias") is True:
        r.notes.append("attention biases not counted")
    source = {
        "reference": file,
        "license": "not stated in config.json: see the model repository",
        "notes": "; ".join([f"generated by planner.domain.hf_import (family {family})", *r.notes]),
    }

    check = Collector(file)
    model_from_dict(model, "model", check, source)
    check.raise_if_any()
    return {"model": model, "source": source}


def write_card(card: dict, path: str | os.PathLike) -> None:
    """Write ``card`` as TOML to ``path`` atomically (:func:`planner.domain.files.write_atomic`), so
    a reader never sees half a card; :class:`InputError` naming ``path`` when it cannot be written."""
    text = "# Model card (moeplan): see planner/domain/moe_model.py for the fields.\n" + tomli_w.dumps(card)
    write_atomic(path, text, what="the model card")


def main(argv: list[str] | None = None) -> int:
    """``python -m planner.domain.hf_import CONFIG.json OUT.toml [--name NAME]``; exit 2 on bad input."""
    parser = argparse.ArgumentParser(description="Convert a Hugging Face MoE config.json into a moeplan model card.")
    parser.add_argument("config", help="path of config.json")
    parser.add_argument("out", help="path of the .toml card to write")
    parser.add_argument("--name", help="card name (default: the output file stem)")
    args = parser.parse_args(argv)
    try:
        try:
            config = json.loads(Path(args.config).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(Problem(args.config, "", f"cannot read a JSON config: {exc}")) from exc
        card = card_from_hf_config(config, name=args.name or Path(args.out).stem, file=args.config)
        write_card(card, args.out)
    except InputError as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
