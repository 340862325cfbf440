"""Plan JSON: lossless round trip (property-based) and clear errors on malformed plans."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from planner.domain.errors import InputError
from planner.domain.plan import SCHEMA, ExpertPlacement, GroupGate, Pipeline, Plan, Stage, placement_columns, placement_from_columns

names = st.sampled_from(["phone", "edge", "gpu-0", "gpu-1"])


@st.composite
def plans(draw):
    pipes = []
    for _ in range(draw(st.integers(1, 3))):
        cuts = sorted(draw(st.sets(st.integers(1, 30), max_size=4)))
        bounds = [0, *cuts, 31]
        stages = tuple(Stage(draw(names), a, b) for a, b in zip(bounds, bounds[1:]))
        ranks = tuple(draw(st.one_of(st.none(), st.integers(1, 512))) for _ in range(len(stages) - 1))
        placement = tuple(
            ExpertPlacement(draw(st.integers(0, 30)), draw(st.integers(0, 7)), (draw(names),), (1.0,))
            for _ in range(draw(st.integers(0, 3)))
        )
        pipes.append(Pipeline(stages, ranks, draw(st.integers(1, 64)), draw(st.integers(1, 8)),
                              draw(st.floats(0, 1)), placement))
    return Plan(tuple(pipes), "inst", "solver", {"throughput_tokens_per_s": 1.5}, {"gap": 0.0})


columns = st.lists(st.tuples(st.integers(0, 60), st.integers(0, 255), st.lists(names, max_size=3, unique=True).map(tuple),
                             st.lists(st.floats(0, 1), max_size=3).map(tuple)), max_size=20)


@given(columns)
def test_placement_from_columns_equals_the_constructor(rows):
    layers, experts, devices, shares = (list(c) for c in zip(*rows)) if rows else ([], [], [], [])
    bulk = placement_from_columns(layers, experts, devices, shares)
    one_by_one = tuple(ExpertPlacement(*row) for row in rows)
    assert bulk == one_by_one
    assert list(map(hash, bulk)) == list(map(hash, one_by_one))
    assert [vars(e) for e in bulk] == [vars(e) for e in one_by_one]
    assert all(type(e) is ExpertPlacement for e in bulk)
    assert tuple(placement_columns(bulk)) == (layers, experts, devices, shares)
    if bulk:
        with pytest.raises(AttributeError):  # still frozen
            bulk[0].layer = 1


def test_placement_from_columns_relies_on_a_plain_init():
    # The bulk constructor skips __init__: sound only while it sets the four fields and nothing else.
    assert not hasattr(ExpertPlacement, "__post_init__")
    assert [f for f in ExpertPlacement.__dataclass_fields__] == ["layer", "expert", "devices", "shares"]
    with pytest.raises(ValueError, match="one item per entry"):
        placement_from_columns([0], [1], [("a",)], [])


@given(plans())
def test_round_trip_is_lossless(plan):
    again = Plan.from_dict(json.loads(plan.to_json()))
    assert again == plan
    assert again.to_dict() == plan.to_dict()


def test_load_names_file_and_field(tmp_path):
    p = tmp_path / "plan.json"
    p.write_text(json.dumps({"schema": SCHEMA, "pipelines": [{"stages": [{"device": "x", "first_layer": "0", "end_layer": 2}]}]}))
    with pytest.raises(InputError) as err:
        Plan.load(p)
    assert str(p) in str(err.value) and "pipelines[0].stages[0]" in str(err.value)


@pytest.mark.parametrize("text, field", [
    ("not json", ""),
    ('{"schema": "other/9", "pipelines": []}', "schema"),
    (f'{{"schema": "{SCHEMA}", "pipelines": []}}', "pipelines"),
    (f'{{"schema": "{SCHEMA}", "pipelines": [{{"stages": [], "micro_batch_size": 0}}]}}', "pipelines[0].stages"),
])
def test_malformed_plans(tmp_path, text, field):
    p = tmp_path / "plan.json"
    p.write_text(text)
    with pytest.raises(InputError) as err:
        Plan.load(p)
    assert err.value.problems[0].field.startswith(field)


def test_deeply_nested_plan_json_is_an_input_error(tmp_path):
    p = tmp_path / "deep.json"
    p.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(InputError) as err:
        Plan.load(p)
    assert str(p) in str(err.value)


def test_missing_plan_file(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        Plan.load(tmp_path / "nope.json")


def test_group_gates_and_dropped_experts_round_trip():
    pipe = Pipeline((Stage("phone", 0, 2), Stage("gpu", 2, 4)), (None,), 2, 1, 1.0,
                    (ExpertPlacement(1, 3, (), ()),), (GroupGate("phone", (1,)), GroupGate("gpu")))
    plan = Plan((pipe,))
    data = plan.to_dict()
    assert data["pipelines"][0]["group_gate"] == [{"device": "phone", "layers": [1]}, {"device": "gpu", "layers": []}]
    assert Plan.from_dict(json.loads(plan.to_json())) == plan
    # A pipeline without gates writes no group_gate key (plans from before the field read the same).
    assert "group_gate" not in Plan((Pipeline((Stage("gpu", 0, 4),)),)).to_dict()["pipelines"][0]


@pytest.mark.parametrize("gate", [{"layers": [1]}, {"device": "phone", "layers": [1.5]}, "phone"])
def test_bad_group_gates_name_the_field(gate):
    data = {"schema": SCHEMA, "pipelines": [{"stages": [{"device": "phone", "first_layer": 0, "end_layer": 2}],
                                             "group_gate": [gate]}]}
    with pytest.raises(InputError) as err:
        Plan.from_dict(data, "p.json")
    assert "pipelines[0].group_gate[0]" in str(err.value)
