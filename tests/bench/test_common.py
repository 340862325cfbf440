"""What the suites share: the accuracy loss each served request paid."""

import pytest

from planner import api
from tests.helpers import REPO


def test_served_accuracy_loss_follows_the_plan_that_served_each_request():
    from dataclasses import replace

    from planner.bench.common import served_accuracy_loss
    from planner.sim import simulate

    inst = api.load_instance(REPO / "instances" / "bench" / "dynamic"
                             / "mixtral-orin-h100-cellular-slo.toml")
    plan = api.solve(inst, "route-aware").solution
    for rank, loss in zip(inst.constraints.codec.ranks, inst.constraints.codec.accuracy_loss):
        ranked = replace(plan, pipelines=(replace(plan.pipelines[0], codec_ranks=(rank,)),))
        res = simulate(inst, ranked, num_requests=5, seed=0)
        assert served_accuracy_loss(res, inst) == pytest.approx(loss)
