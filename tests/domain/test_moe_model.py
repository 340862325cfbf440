"""Model cards: parameter counts and layer structure against hand-computed figures."""

from __future__ import annotations

import pytest

from planner.domain import catalog
from planner.domain.errors import Collector
from planner.domain.moe_model import model_from_dict

MIXTRAL = dict(name="mixtral", num_layers=32, hidden_size=4096, num_attention_heads=32, num_kv_heads=8,
               head_dim=128, vocab_size=32000, num_experts=8, top_k=2, expert_intermediate_size=14336)


def make(**kw):
    col = Collector("<test>")
    m = model_from_dict({**MIXTRAL, **kw}, "model", col)
    return m, col.problems


def test_mixtral_8x7b_parameters_by_hand():
    """Per layer: attention 4096*4096*2 (q, o) + 2*4096*1024 (k, v) = 41,943,040; 8 experts of
    3*4096*14336 = 176,160,768 each; router 4096*8. Embedding and LM head 32000*4096 each.
    Total = 32 * (41,943,040 + 8*176,160,768 + 32,768) + 2*131,072,000 = 46,702,526,464 (~46.7 B).
    Active = 32 * (41,943,040 + 2*176,160,768 + 32,768) + 262,144,000 = 12,879,659,008 (~12.9 B)."""
    m, problems = make()
    assert not problems
    assert m.total_params == 46_702_526_464
    assert m.active_params == 12_879_659_008


def test_catalog_mixtral_card_matches():
    m = catalog.model("mixtral-8x7b")
    assert m.total_params == pytest.approx(46.7e9, rel=0.005)
    assert m.active_params == pytest.approx(12.9e9, rel=0.01)


def test_layer_rules_first_dense_and_step():
    """DeepSeek-style first dense layers and Qwen2/Switch-style every-other-layer MoE."""
    m, _ = make(num_layers=6, first_dense_layers=1, dense_intermediate_size=100)
    assert m.moe_layers == [1, 2, 3, 4, 5]
    m, _ = make(num_layers=6, moe_layer_step=2, dense_intermediate_size=100)
    assert m.moe_layers == [1, 3, 5]
    m, _ = make(num_layers=6, dense_layers=[2], dense_intermediate_size=100)
    assert m.moe_layers == [0, 1, 3, 4, 5]


def test_dense_layers_need_a_dense_ffn_size():
    _, problems = make(first_dense_layers=2)
    assert any("dense_intermediate_size" in p.field for p in problems)


@pytest.mark.parametrize("change, field", [
    (dict(top_k=9), "model.top_k"),
    (dict(num_kv_heads=64), "model.num_kv_heads"),
    (dict(ffn_matrices=4), "model.ffn_matrices"),
    (dict(hidden_size=0), "model.hidden_size"),
    (dict(num_layers="32"), "model.num_layers"),
    (dict(attention="mla"), "model.kv_lora_rank"),
    (dict(dtype_bytes=-2), "model.dtype_bytes"),
    (dict(dtype_bytes=3), "model.dtype_bytes"),  # no format has 3-byte weights
])
def test_bad_fields_are_named(change, field):
    _, problems = make(**change)
    assert field in [p.field for p in problems], problems


def test_mla_kv_cache_is_the_latent():
    """MLA caches kv_lora_rank + rope dims per token: DeepSeek-V3 (512 + 64) x 2 B = 1,152 B per layer."""
    m = catalog.model("deepseek-v3")
    assert m.attention == "mla"
    assert m.kv_bytes_per_token_per_layer == (512 + 64) * 2
