"""Expert-parallel pipelines: EPLB's memory checks (before it runs, and from its maps before its
solution is built) agree with running it."""

from __future__ import annotations

import pytest

from planner.cost.costmodel import CostModel
from planner.planners.route_aware import _expert_groups
from planner.spaces.expert_parallel import expert_parallel_pipeline
from tests.helpers import load


@pytest.mark.parametrize("name", ["mixtral-orin-edge-cloud.toml", "a100-l4-t4-cluster.toml", "deepseek-v3-edge-cloud-40.toml"])
def test_eplbs_memory_is_checked_before_it_runs_only_where_it_would_overflow(name):
    """Where the least EPLB can put on the smallest device (slots less the extra copies, per layer)
    overflows it, running EPLB overflows it too; with the check disabled the answers agree."""
    inst = load(name)
    cm = CostModel(inst)
    for group in _expert_groups(inst):
        for redundant in (1, 0):
            quick = expert_parallel_pipeline(inst, cm, group, placement="eplb", redundant=redundant)
            full = _without_check(inst, cm, group, redundant)
            assert (quick[0] is None) == (full[0] is None), (group, redundant, quick[1], full[1])
            if quick[0] is not None:
                assert quick[0] == full[0]
            elif "at least" in quick[1]:
                assert "infeasible" in full[1]


def _without_check(inst, cm, group, redundant):
    """expert_parallel_pipeline with the memory pre-check switched off (every device huge for it)."""
    import math

    from planner.domain.units import GB

    m = inst.model
    slots = math.ceil(m.num_experts / len(group)) + (redundant if len(group) > 1 else 0)
    least = max(1, slots - (len(group) * slots - m.num_experts)) * m.num_moe_layers * cm.expert_bytes
    smallest = min(inst.device(n).memory_bytes for n in group)
    if least < smallest:
        return expert_parallel_pipeline(inst, cm, group, placement="eplb", redundant=redundant)
    # The check would fire: run EPLB itself and check its placement overflows a device.
    import numpy as np

    from models.assignment import ReplicatedAssignment
    from solvers.placement import solve_eplb

    placed = solve_eplb(ReplicatedAssignment.build(np.asarray(cm.q, dtype=float), np.ones(len(group)), slots=slots,
                                                   max_replicas=len(group) * slots))
    held = placed.solution.replicas.sum(axis=(0, 1)) * cm.expert_bytes
    memory = np.array([inst.device(n).memory_bytes for n in group])
    assert (held >= memory).any(), f"EPLB fits, yet the check said no ({held.max() / GB:.1f} GB)"
    return None, "infeasible: EPLB overflows", {}


@pytest.mark.parametrize("name", ["a100-l4-t4-cluster.toml", "deepseek-v3-edge-cloud-40.toml", "deepseek-v3-mixed-cloud.toml"])
def test_eplbs_memory_read_from_its_maps_is_what_its_solution_holds(name):
    """The check on EPLB's maps (distinct experts per device's slots) says a device overflows exactly
    when the solution solve_eplb builds overflows one."""
    import math

    import numpy as np

    from models.assignment import ReplicatedAssignment
    from solvers.placement import solve_eplb

    inst = load(name)
    cm = CostModel(inst)
    checked = 0
    for group in _expert_groups(inst):
        for redundant in (1, 0):
            pipe, why, _ = expert_parallel_pipeline(inst, cm, group, placement="eplb", redundant=redundant)
            if pipe is None and "at least" in why:
                continue  # the check before EPLB runs (the test above)
            slots = math.ceil(inst.model.num_experts / len(group)) + (redundant if len(group) > 1 else 0)
            placed = solve_eplb(ReplicatedAssignment.build(np.asarray(cm.q, dtype=float), np.ones(len(group)), slots=slots,
                                                           max_replicas=len(group) * slots))
            held = placed.solution.replicas.sum(axis=(0, 1)) * cm.expert_bytes
            memory = np.array([inst.device(n).memory_bytes for n in group], dtype=float)
            assert (pipe is None) == bool((memory - held <= 0).any()), (group, redundant, why)
            checked += 1
    assert checked
