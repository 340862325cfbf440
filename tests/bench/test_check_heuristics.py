"""Heuristic plans on random instances pass the validator and repeat for a seed
(the 1,000-instance run is `python -m planner.bench.check_heuristics`)."""

import pytest

from planner.bench.check_heuristics import check_one, random_instance


@pytest.mark.parametrize("seed", range(30))
def test_random_instance_heuristics(seed):
    checked, failures = check_one(seed)
    assert failures == []


def test_random_instances_vary():
    shapes = {(random_instance(s).model.num_layers, random_instance(s).model.num_experts, len(random_instance(s).devices))
              for s in range(30)}
    assert len(shapes) > 10
