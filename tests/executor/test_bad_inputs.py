"""Plans and instances that do not match the model are errors naming the field (or the class) to fix."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers

from planner.domain.errors import InputError
from planner.executor import UnsupportedModelError, apply_plan, family_of, model_from_card, moe_parts
from tests.helpers import TINY, build

from .conftest import cached_tiny, plan_of


def _problems(exc: InputError) -> list[str]:
    return [f"{p.field}: {p.message}" for p in exc.problems]


def test_stages_must_cover_the_model_layers():
    with pytest.raises(InputError) as err:
        apply_plan(cached_tiny("mixtral"), None, plan_of([("a", 0, 2), ("b", 2, 6)]), plan_file="p.json")
    assert err.value.problems[0].file == "p.json"
    assert any("stages[1].end_layer" in p and "4 decoder layers" in p for p in _problems(err.value))
    with pytest.raises(InputError, match=r"stages\[1\].first_layer"):
        apply_plan(cached_tiny("mixtral"), None, plan_of([("a", 0, 2), ("b", 3, 4)]))


def test_placement_must_name_moe_layers_and_existing_experts():
    plan = plan_of([("a", 0, 4)], [(1, 8, ["b"], [1.0]), (0, 1, ["b"], [1.0]), (2, 1, ["b", "c"], [0.5, 0.4])])
    with pytest.raises(InputError) as err:
        apply_plan(cached_tiny("deepseek_v3"), None, plan)
    text = "\n".join(_problems(err.value))
    assert "expert_placement[0].expert: expert 8 does not exist: layer 1 has experts 0..7" in text
    assert "expert_placement[1].layer: layer 0 is not an MoE layer" in text
    assert "expert_placement[2].shares" in text


def test_codec_ranks_must_fit_the_cuts_and_the_hidden_size():
    with pytest.raises(InputError, match=r"codec_ranks: has 2 entries; the pipeline has 1 cut"):
        apply_plan(cached_tiny("olmoe"), None, plan_of([("a", 0, 2), ("b", 2, 4)], ranks=[8, 8]))
    with pytest.raises(InputError, match=r"codec_ranks\[0\]: must be between 1 and the hidden size 64"):
        apply_plan(cached_tiny("olmoe"), None, plan_of([("a", 0, 2), ("b", 2, 4)], ranks=[65]))
    with pytest.raises(ValueError, match="calibration_ids are needed"):
        apply_plan(cached_tiny("olmoe"), None, plan_of([("a", 0, 2), ("b", 2, 4)], ranks=[8]))


def test_group_gate_must_name_a_stage_device_and_its_moe_layers():
    model = cached_tiny("mixtral")
    plan = plan_of([("end", 0, 2), ("cloud", 2, 4)])
    with pytest.raises(InputError, match=r"group_gate\['phone'\]: device 'phone' runs no stage"):
        apply_plan(model, None, plan, group_gate={"phone": None}, gate_mode="renormalise")
    with pytest.raises(InputError, match=r"layers \[3\] are not MoE layers of 'end'"):
        apply_plan(model, None, plan, group_gate={"end": [3]}, gate_mode="renormalise")
    moved = plan_of([("end", 0, 2), ("cloud", 2, 4)], [(0, e, ["cloud"], [1.0]) for e in range(8)])
    with pytest.raises(InputError, match="holds no expert of layer 0"):
        apply_plan(model, None, moved, group_gate={"end": [0]}, gate_mode="renormalise")


def test_instance_card_must_describe_the_model():
    data = copy.deepcopy(TINY)
    data["devices"][0]["name"], data["devices"][1]["name"] = "a", "b"
    data["links"][0].update(a="a", b="b")
    data["workload"]["origin"] = "a"
    instance = build(data)  # one layer, 4 experts, top-1, hidden 64
    with pytest.raises(InputError) as err:
        apply_plan(cached_tiny("mixtral"), instance, plan_of([("a", 0, 4)]))
    text = "\n".join(_problems(err.value))
    assert "model.num_layers: the instance's card says 1, the torch model (MixtralForCausalLM) has 4" in text
    assert "model.num_experts" in text and "model.top_k" in text


@pytest.fixture(scope="module")
def line_model():
    from tests.helpers import LINE
    return model_from_card(build(LINE, model={"family": "mixtral"}).model)


def test_plan_devices_must_be_instance_devices(line, line_model):
    model = line_model
    with pytest.raises(InputError, match=r"stages\[1\].device: 'laptop' is not a device of instance 'line'"):
        apply_plan(model, line, plan_of([("phone", 0, 2), ("laptop", 2, 4)]))


def test_an_unknown_family_names_its_class():
    cfg = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1)
    llama = transformers.LlamaForCausalLM(cfg)
    with pytest.raises(UnsupportedModelError, match="model class LlamaForCausalLM is not a supported MoE family"):
        family_of(llama)
    with pytest.raises(UnsupportedModelError, match="LlamaForCausalLM"):
        apply_plan(llama, None, plan_of([("a", 0, 1)]))


def test_a_missing_checkpoint_folder_is_an_input_error(tmp_path):
    from planner.executor import load_local
    with pytest.raises(InputError, match="config.json"):
        load_local(tmp_path)


def test_model_from_card_builds_the_card_shape(line_model):
    model = line_model
    parts = moe_parts(model)
    assert len(model.model.layers) == 4 and parts[0].num_experts == 8 and parts[0].top_k == 2
    with torch.no_grad():
        assert model(input_ids=torch.zeros(1, 3, dtype=torch.long)).logits.shape == (1, 3, 1000)


def test_model_from_card_needs_a_supported_family(line):
    with pytest.raises(InputError, match="model.family: family '' has no executor adapter"):
        model_from_card(line.model)


def test_one_pipeline_of_several_is_applied():
    from planner.domain.plan import Pipeline, Plan, Stage
    model = cached_tiny("qwen3_moe")
    plan = Plan((Pipeline((Stage("a", 0, 4),), request_share=0.5),
                 Pipeline((Stage("b", 0, 1), Stage("c", 1, 4)), request_share=0.5)))
    planned = apply_plan(model, None, plan, pipeline=1)
    assert planned.devices == ["b", "c"]
    ids = torch.zeros(1, 5, dtype=torch.long)
    with torch.no_grad():
        assert float((planned(ids) - model(input_ids=ids).logits).abs().max()) <= 1e-5
    with pytest.raises(InputError, match=r"pipelines: has 2 pipeline\(s\); pipeline 2 asked for"):
        apply_plan(model, None, plan, pipeline=2)
