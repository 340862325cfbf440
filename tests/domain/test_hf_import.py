"""Tests of planner.domain.hf_import (Hugging Face config.json -> model card) and of the shipped catalog cards.

Inline configs copy the field sets of the real checkpoints' config.json by hand. Tests that read the
reference data in ``../shared/data`` skip when it is missing (a user's clone does not have it).
Parameter counts are MoEModel.total_params / active_params (elements; embedding and LM head included).
"""

from __future__ import annotations

import dataclasses
import json
import tomllib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from planner.domain.device import CARD_FIELDS, device_fields
from planner.domain.errors import Collector, InputError
from planner.domain.hf_import import _encode_layers, card_from_hf_config, write_card
from planner.domain.moe_model import MoEModel, model_from_dict
from tests.helpers import REPO, SHARED_DATA

CATALOG = REPO / "instances" / "catalog"
SHARED = SHARED_DATA
MOE_CONFIGS = SHARED / "moe_configs"
needs_shared = pytest.mark.skipif(not MOE_CONFIGS.is_dir(), reason=f"reference data not found at {SHARED}")

MODEL_FIELDS = {f.name for f in dataclasses.fields(MoEModel)} - {"source"}

# ----- realistic config.json field sets ---------------------------------------------------------
MIXTRAL_8X7B = {
    "architectures": ["MixtralForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": 2,
    "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336,
    "max_position_embeddings": 32768, "model_type": "mixtral", "num_attention_heads": 32,
    "num_experts_per_tok": 2, "num_hidden_layers": 32, "num_key_value_heads": 8, "num_local_experts": 8,
    "rms_norm_eps": 1e-05, "rope_theta": 1000000.0, "sliding_window": None, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "vocab_size": 32000,
}
PHI_3_5_MOE = {
    "architectures": ["PhiMoEForCausalLM"], "attention_bias": True, "hidden_act": "silu", "hidden_size": 4096,
    "intermediate_size": 6400, "lm_head_bias": True, "max_position_embeddings": 131072, "model_type": "phimoe",
    "num_attention_heads": 32, "num_experts_per_tok": 2, "num_hidden_layers": 32, "num_key_value_heads": 8,
    "num_local_experts": 16, "rms_norm_eps": 1e-05, "sliding_window": 131072, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "vocab_size": 32064,
}
QWEN1_5_MOE = {
    "architectures": ["Qwen2MoeForCausalLM"], "decoder_sparse_step": 1, "hidden_act": "silu", "hidden_size": 2048,
    "intermediate_size": 5632, "max_position_embeddings": 8192, "max_window_layers": 21, "model_type": "qwen2_moe",
    "moe_intermediate_size": 1408, "norm_topk_prob": False, "num_attention_heads": 16, "num_experts": 60,
    "num_experts_per_tok": 4, "num_hidden_layers": 24, "num_key_value_heads": 16,
    "shared_expert_intermediate_size": 5632, "sliding_window": 32768, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "use_sliding_window": False, "vocab_size": 151936,
}
QWEN3_30B_A3B = {
    "architectures": ["Qwen3MoeForCausalLM"], "attention_bias": False, "decoder_sparse_step": 1, "head_dim": 128,
    "hidden_act": "silu", "hidden_size": 2048, "intermediate_size": 6144, "max_position_embeddings": 40960,
    "mlp_only_layers": [], "model_type": "qwen3_moe", "moe_intermediate_size": 768, "norm_topk_prob": True,
    "num_attention_heads": 32, "num_experts": 128, "num_experts_per_tok": 8, "num_hidden_layers": 48,
    "num_key_value_heads": 4, "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "use_sliding_window": False, "vocab_size": 151936,
}
DEEPSEEK_V2_LITE = {
    "architectures": ["DeepseekV2ForCausalLM"], "first_k_dense_replace": 1, "hidden_act": "silu", "hidden_size": 2048,
    "intermediate_size": 10944, "kv_lora_rank": 512, "model_type": "deepseek_v2", "moe_intermediate_size": 1408,
    "moe_layer_freq": 1, "n_group": 1, "n_routed_experts": 64, "n_shared_experts": 2, "num_attention_heads": 16,
    "num_experts_per_tok": 6, "num_hidden_layers": 27, "num_key_value_heads": 16, "q_lora_rank": None,
    "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "v_head_dim": 128, "vocab_size": 102400,
}
DEEPSEEK_V3 = {
    "architectures": ["DeepseekV3ForCausalLM"], "first_k_dense_replace": 3, "hidden_act": "silu", "hidden_size": 7168,
    "intermediate_size": 18432, "kv_lora_rank": 512, "model_type": "deepseek_v3", "moe_intermediate_size": 2048,
    "moe_layer_freq": 1, "n_group": 8, "n_routed_experts": 256, "n_shared_experts": 1, "num_attention_heads": 128,
    "num_experts_per_tok": 8, "num_hidden_layers": 61, "num_key_value_heads": 128, "num_nextn_predict_layers": 1,
    "q_lora_rank": 1536, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
    "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                            "weight_block_size": [128, 128]},
    "tie_word_embeddings": False, "topk_group": 4, "torch_dtype": "bfloat16", "v_head_dim": 128, "vocab_size": 129280,
}
OLMOE_1B_7B = {
    "architectures": ["OlmoeForCausalLM"], "attention_bias": False, "clip_qkv": None, "hidden_act": "silu",
    "hidden_size": 2048, "intermediate_size": 1024, "max_position_embeddings": 4096, "model_type": "olmoe",
    "num_attention_heads": 16, "num_experts": 64, "num_experts_per_tok": 8, "num_hidden_layers": 16,
    "num_key_value_heads": 16, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "vocab_size": 50304,
}
SWITCH_BASE_8 = {
    "architectures": ["SwitchTransformersForConditionalGeneration"], "d_ff": 3072, "d_kv": 64, "d_model": 768,
    "decoder_sparse_step": 2, "dense_act_fn": "relu", "encoder_sparse_step": 2, "expert_capacity": 64,
    "feed_forward_proj": "relu", "is_encoder_decoder": True, "is_gated_act": False,
    "model_type": "switch_transformers", "num_decoder_layers": 12, "num_experts": 8, "num_heads": 12,
    "num_layers": 12, "num_selected_experts": 1, "torch_dtype": "float32", "vocab_size": 32128,
}
GPT_OSS_20B = {
    "architectures": ["GptOssForCausalLM"], "attention_bias": True, "experts_per_token": 4, "head_dim": 64,
    "hidden_act": "silu", "hidden_size": 2880, "intermediate_size": 2880, "model_type": "gpt_oss",
    "num_attention_heads": 64, "num_hidden_layers": 24, "num_key_value_heads": 8, "num_local_experts": 32,
    "quantization_config": {"quant_method": "mxfp4"}, "sliding_window": 128, "swiglu_limit": 7.0,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "vocab_size": 201088,
}


def build(config: dict, name: str = "m") -> MoEModel:
    card = card_from_hf_config(config, name=name)
    col = Collector("test")
    model = model_from_dict(card["model"], "model", col, card["source"])
    assert not col.problems, col.problems
    return model


def approx(value: float, expected: float, rel: float) -> bool:
    return abs(value - expected) <= rel * expected


# ----- families ----------------------------------------------------------------------------------
def test_mixtral_8x7b_totals():
    m = build(MIXTRAL_8X7B)
    assert abs(m.total_params - 46.7e9) <= 0.1e9
    assert abs(m.active_params - 12.9e9) <= 0.1e9
    assert (m.family, m.num_experts, m.top_k, m.expert_intermediate_size) == ("mixtral", 8, 2, 14336)
    assert (m.num_kv_heads, m.head_dim, m.ffn_matrices, m.num_moe_layers) == (8, 128, 3, 32)


def test_deepseek_v3_totals_exclude_mtp():
    # DeepSeek reports 671B total / 37B active for the main model; the HF checkpoint's ~685B adds the
    # 14B multi-token-prediction module, which MoEModel does not count.
    card = card_from_hf_config(DEEPSEEK_V3, name="deepseek-v3")
    m = build(DEEPSEEK_V3)
    assert approx(m.total_params, 671e9, 0.01)
    assert approx(m.active_params, 37e9, 0.03)
    assert (m.attention, m.q_lora_rank, m.kv_lora_rank, m.v_head_dim) == ("mla", 1536, 512, 128)
    assert (m.first_dense_layers, m.num_moe_layers, m.dense_intermediate_size) == (3, 58, 18432)
    assert (m.num_shared_experts, m.shared_expert_intermediate_size) == (1, 2048)
    assert "multi-token-prediction" in card["source"]["notes"]
    assert "fp8" in card["source"]["notes"]


def test_deepseek_v2_lite_has_no_query_lora():
    m = build(DEEPSEEK_V2_LITE)
    assert m.q_lora_rank == 0
    assert (m.first_dense_layers, m.num_moe_layers) == (1, 26)
    assert (m.num_shared_experts, m.shared_expert_intermediate_size) == (2, 1408)
    assert approx(m.total_params, 15.7e9, 0.01)


def test_deepseek_moe_layer_freq():
    # DeepSeek rule: layer i is MoE iff i >= first_k_dense_replace and i % moe_layer_freq == 0.
    m = build(DEEPSEEK_V2_LITE | {"moe_layer_freq": 2, "num_hidden_layers": 10})
    assert m.moe_layers == [2, 4, 6, 8]


def test_qwen1_5_moe_shared_expert():
    m = build(QWEN1_5_MOE)
    assert (m.num_shared_experts, m.shared_expert_intermediate_size) == (1, 5632)
    assert (m.num_experts, m.top_k, m.expert_intermediate_size) == (60, 4, 1408)
    assert approx(m.total_params, 14.3e9, 0.01)
    assert approx(m.active_params, 2.7e9, 0.02)


def test_qwen_sparse_step_and_mlp_only_layers():
    # Qwen rule: layer i is MoE iff i not in mlp_only_layers and (i + 1) % decoder_sparse_step == 0.
    m = build(QWEN1_5_MOE | {"decoder_sparse_step": 2, "mlp_only_layers": [5, 7]})
    assert m.moe_layers == [1, 3, 9, 11, 13, 15, 17, 19, 21, 23]
    assert m.dense_intermediate_size == 5632


def test_qwen3_moe():
    m = build(QWEN3_30B_A3B)
    assert (m.family, m.num_kv_heads, m.head_dim, m.num_shared_experts) == ("qwen3_moe", 4, 128, 0)
    assert approx(m.total_params, 30.5e9, 0.01)
    assert approx(m.active_params, 3.3e9, 0.03)


def test_olmoe_uses_checkpoint_widths():
    m = build(OLMOE_1B_7B)
    assert (m.num_experts, m.top_k, m.expert_intermediate_size) == (64, 8, 1024)
    assert approx(m.total_params, 6.9e9, 0.01)
    assert approx(m.active_params, 1.3e9, 0.03)


def test_switch_transformers_as_one_stack():
    card = card_from_hf_config(SWITCH_BASE_8, name="switch-base-8")
    m = build(SWITCH_BASE_8)
    assert (m.num_layers, m.moe_layer_step, m.first_dense_layers) == (24, 2, 0)
    assert m.moe_layers == list(range(1, 24, 2))
    assert (m.top_k, m.ffn_matrices, m.head_dim, m.dtype_bytes) == (1, 2, 64, 4)
    assert m.expert_intermediate_size == m.dense_intermediate_size == 3072
    assert m.tie_word_embeddings
    assert "encoder-decoder" in card["source"]["notes"]


def test_gpt_oss():
    m = build(GPT_OSS_20B)
    assert (m.num_experts, m.top_k, m.expert_intermediate_size, m.head_dim) == (32, 4, 2880, 64)
    assert approx(m.total_params, 20.9e9, 0.02)


def test_phimoe_like_mixtral():
    m = build(PHI_3_5_MOE)
    assert (m.family, m.num_experts, m.top_k) == ("phimoe", 16, 2)
    assert approx(m.total_params, 41.9e9, 0.01)
    assert approx(m.active_params, 6.6e9, 0.02)


def test_family_from_architectures_and_nested_text_config():
    no_type = {k: v for k, v in QWEN3_30B_A3B.items() if k != "model_type"}
    assert build(no_type).family == "qwen3_moe"
    nested = {"model_type": "some_vlm", "architectures": ["SomeVLM"], "torch_dtype": "float16",
              "vision_config": {"hidden_size": 1152}, "text_config": MIXTRAL_8X7B | {"torch_dtype": None}}
    card = card_from_hf_config(nested, name="vlm")
    assert card["model"]["family"] == "mixtral"
    assert card["model"]["dtype_bytes"] == 2
    assert "text_config" in card["source"]["notes"]


def test_generic_fallback():
    config = {
        "model_type": "my_moe", "num_hidden_layers": 6, "hidden_size": 1024, "num_attention_heads": 8,
        "num_key_value_heads": 2, "vocab_size": 32000, "n_routed_experts": 16, "moe_topk": 2,
        "moe_intermediate_size": 512, "intermediate_size": 4096, "first_k_dense_replace": 1, "n_shared_experts": 2,
    }
    card = card_from_hf_config(config)
    m = build(config)
    assert card["model"]["name"] == "my_moe"
    assert (m.family, m.head_dim, m.num_experts, m.top_k) == ("my_moe", 128, 16, 2)
    assert (m.expert_intermediate_size, m.dense_intermediate_size, m.first_dense_layers) == (512, 4096, 1)
    assert (m.num_shared_experts, m.shared_expert_intermediate_size) == (2, 512)
    assert "generic" in card["source"]["notes"]


def test_dtype_mapping():
    no_dtype = {k: v for k, v in OLMOE_1B_7B.items() if k != "torch_dtype"}
    assert build(no_dtype).dtype_bytes == 2
    assert build(OLMOE_1B_7B | {"torch_dtype": "float32"}).dtype_bytes == 4
    assert build(no_dtype | {"dtype": "float16"}).dtype_bytes == 2
    with pytest.raises(InputError) as err:
        card_from_hf_config(OLMOE_1B_7B | {"torch_dtype": "complex64"})
    assert [p.field for p in err.value.problems] == ["torch_dtype"]


# ----- errors ------------------------------------------------------------------------------------
def test_unknown_family_lists_every_missing_field():
    with pytest.raises(InputError) as err:
        card_from_hf_config({"model_type": "mystery", "hidden_size": 1024}, file="cfg.json")
    problems = err.value.problems
    assert all(p.file == "cfg.json" for p in problems)
    fields = [p.field for p in problems]
    assert fields[0] == "model_type"
    assert set(fields[1:]) == {
        "num_hidden_layers | n_layer | num_layers",
        "num_attention_heads | n_head | num_heads",
        "vocab_size",
        "num_local_experts | num_experts | n_routed_experts | moe_num_experts",
        "num_experts_per_tok | experts_per_token | moe_topk | num_selected_experts | moe_k",
        "moe_intermediate_size | expert_intermediate_size | intermediate_size",
    }
    by_field = {p.field: p.message for p in problems}
    assert "top_k" in by_field["num_experts_per_tok | experts_per_token | moe_topk | num_selected_experts | moe_k"]
    assert "n_routed_experts" in by_field["num_local_experts | num_experts | n_routed_experts | moe_num_experts"]


def test_known_family_missing_and_malformed_fields():
    config = {k: v for k, v in MIXTRAL_8X7B.items() if k not in ("num_local_experts", "vocab_size")}
    config["num_hidden_layers"] = "32"
    with pytest.raises(InputError) as err:
        card_from_hf_config(config)
    fields = {p.field for p in err.value.problems}
    assert fields == {"num_local_experts", "vocab_size", "num_hidden_layers"}


def test_dense_layers_need_a_dense_width():
    config = {k: v for k, v in DEEPSEEK_V3.items() if k != "intermediate_size"}
    with pytest.raises(InputError) as err:
        card_from_hf_config(config)
    [problem] = err.value.problems
    assert problem.field == "intermediate_size" and "dense_intermediate_size" in problem.message


def test_head_dim_is_not_guessed_from_an_uneven_split():
    """hidden 4097 over 32 heads has no whole head width: the config must give head_dim."""
    config = {k: v for k, v in MIXTRAL_8X7B.items() if k != "head_dim"} | {"hidden_size": 4097}
    with pytest.raises(InputError) as err:
        card_from_hf_config(config)
    [problem] = err.value.problems
    assert problem.field == "head_dim" and "4097 is not a multiple of num_attention_heads 32" in problem.message
    assert card_from_hf_config(config | {"head_dim": 128})["model"]["head_dim"] == 128


def test_invalid_card_is_reported():
    with pytest.raises(InputError) as err:
        card_from_hf_config(MIXTRAL_8X7B | {"num_experts_per_tok": 9})
    assert [p.field for p in err.value.problems] == ["model.top_k"]


@given(st.lists(st.booleans(), min_size=1, max_size=40))
def test_layer_pattern_encoding_is_exact(mask):
    first, step, dense = _encode_layers(mask)
    m = MoEModel(name="x", num_layers=len(mask), hidden_size=8, num_attention_heads=1, num_kv_heads=1, head_dim=8,
                 vocab_size=8, num_experts=2, top_k=1, expert_intermediate_size=8, first_dense_layers=first,
                 moe_layer_step=step, dense_layers=tuple(dense))
    assert [m.is_moe_layer(i) for i in range(len(mask))] == mask


# ----- files -------------------------------------------------------------------------------------
def test_round_trip_through_toml(tmp_path):
    card = card_from_hf_config(DEEPSEEK_V3, name="deepseek-v3")
    path = tmp_path / "deepseek-v3.toml"
    write_card(card, path)
    assert [p.name for p in tmp_path.iterdir()] == ["deepseek-v3.toml"]
    loaded = tomllib.loads(path.read_text(encoding="utf-8"))
    assert loaded == card
    col = Collector(str(path))
    again = model_from_dict(loaded["model"], "model", col)
    assert not col.problems
    assert again == build(DEEPSEEK_V3, name="deepseek-v3")


REQUIRED_MODELS = {"mixtral-8x7b", "mixtral-8x22b", "qwen1.5-moe-a2.7b", "qwen3-30b-a3b", "deepseek-v2-lite",
                   "deepseek-v3", "olmoe-1b-7b", "switch-base-8"}
REQUIRED_DEVICES = {"h100-sxm", "a100-80gb", "l40s", "l4", "t4", "rtx-4090", "rtx-4060-laptop", "apple-m2",
                    "jetson-agx-orin-64gb", "jetson-orin-nano-8gb", "raspberry-pi-5", "snapdragon-8-gen3"}
MODEL_CARDS = sorted((CATALOG / "models").glob("*.toml"))
DEVICE_CARDS = sorted((CATALOG / "devices").glob("*.toml"))


def test_catalog_has_the_required_cards():
    assert REQUIRED_MODELS <= {p.stem for p in MODEL_CARDS}
    assert REQUIRED_DEVICES <= {p.stem for p in DEVICE_CARDS}
    assert (CATALOG / "models" / "SOURCES.md").is_file() and (CATALOG / "devices" / "SOURCES.md").is_file()


@pytest.mark.parametrize("path", MODEL_CARDS, ids=lambda p: p.stem)
def test_model_card_parses(path):
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    assert set(data) == {"model", "source"}
    assert set(data["model"]) == MODEL_FIELDS
    col = Collector(str(path))
    model = model_from_dict(data["model"], "model", col, data["source"])
    assert not col.problems, col.problems
    assert model.name == path.stem
    assert all(isinstance(data["source"].get(k), str) and data["source"][k] for k in ("reference", "license", "notes"))


def test_mixtral_catalog_card_totals():
    data = tomllib.loads((CATALOG / "models" / "mixtral-8x7b.toml").read_text(encoding="utf-8"))
    model = model_from_dict(data["model"], "model", Collector("mixtral-8x7b.toml"))
    assert abs(model.total_params - 46.7e9) <= 0.1e9
    assert abs(model.active_params - 12.9e9) <= 0.1e9


@pytest.mark.parametrize("path", DEVICE_CARDS, ids=lambda p: p.stem)
def test_device_card_parses(path):
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    assert set(data) == {"device", "source"}
    table = data["device"]
    assert set(table) <= CARD_FIELDS
    assert table["name"] == path.stem
    col = Collector(str(path))
    assert device_fields(table, "device", col, base=None) is not None
    assert not col.problems, col.problems
    source = data["source"]
    assert isinstance(source.get("reference"), str) and source["reference"].strip()
    assert source.get("verified") in {"yes", "partial", "no"}


# ----- the shipped reference configs (../shared/data) --------------------------------------------
# The stored copy of DeepSeek-V2-Lite's config is partial: these keys come from the figures beside it.
PARTIAL_SUPPLEMENTS = {
    "deepseek_v2_lite.json": {"vocab_size": 102400, "v_head_dim": 128, "torch_dtype": "bfloat16"},
    "switch_base_8.json": {"torch_dtype": "float32"},
}
CATALOG_NAMES = {
    "mixtral_8x7b.json": "mixtral-8x7b", "mixtral_8x22b.json": "mixtral-8x22b",
    "qwen1_5_moe_a2_7b.json": "qwen1.5-moe-a2.7b", "qwen3_30b_a3b.json": "qwen3-30b-a3b",
    "deepseek_v2_lite.json": "deepseek-v2-lite", "deepseek_v3.json": "deepseek-v3",
    "olmoe_1b_7b.json": "olmoe-1b-7b", "switch_base_8.json": "switch-base-8",
}


@needs_shared
@pytest.mark.parametrize("fname", sorted(CATALOG_NAMES))
def test_shipped_config_matches_normalized_figures_and_catalog(fname):
    norm = json.loads((MOE_CONFIGS / fname).read_text(encoding="utf-8"))
    raw = norm.get("raw_config") or norm["raw_config_partial"]
    name = CATALOG_NAMES[fname]
    m = build(raw | PARTIAL_SUPPLEMENTS.get(fname, {}), name=name)
    assert m.num_layers == norm["num_layers"]
    assert m.num_moe_layers == norm["num_moe_layers"]
    for key in ("hidden_size", "num_experts", "top_k", "expert_intermediate_size", "num_shared_experts",
                "vocab_size", "num_attention_heads", "num_kv_heads"):
        assert getattr(m, key) == norm[key], key
    assert m.dense_intermediate_size == (norm["dense_intermediate_size"] or 0)
    # The normalized files give the summed width of all shared experts.
    assert m.num_shared_experts * m.shared_expert_intermediate_size == norm["shared_expert_intermediate_size"]

    data = tomllib.loads((CATALOG / "models" / f"{name}.toml").read_text(encoding="utf-8"))
    shipped = model_from_dict(data["model"], "model", Collector(name))
    assert dataclasses.replace(shipped, hf_id="") == m
    assert shipped.hf_id == norm["hf_id"]
