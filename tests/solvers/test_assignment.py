"""Exact solvers of ReplicatedAssignment: milp, cpsat and brute agree, optima derived by hand,
infeasibility explained with numbers, warm starts never lost, a 32 x 8 x 4 instance proven optimal."""

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.assignment import AssignmentSolution, ReplicatedAssignment, objective_value, violations
from solvers import assignment
from solvers.bench_assignment import bench_instance
from solvers.registry import available, get
from solvers.result import Status

EXACT = ("milp", "cpsat", "brute")


def solve(name, problem, **kwargs):
    return get(name, problem="assignment").func(problem, **kwargs)


def check_result(problem, result):
    """A returned solution is feasible and its objective is what Result reports."""
    if result.solution is None:
        return
    assert violations(problem, result.solution) == []
    assert result.objective == objective_value(problem, result.solution)


def test_registered():
    assert set(EXACT) <= set(available(problem="assignment"))


# -- known optima ---------------------------------------------------------------------------------


@pytest.mark.parametrize("max_replicas", [1, 2])
@pytest.mark.parametrize("name", EXACT)
def test_four_loads_on_two_equal_bins(name, max_replicas):
    """Loads 3, 1, 1, 1 on two bins of speed 1. Any bin holding the 3 takes at least 3 unless the 3 is
    split; the total is 6, so the bottleneck is at least 6 / 2 = 3. {3} | {1, 1, 1} reaches 3 without
    splitting, so the optimum is 3.0 with one replica allowed and with two."""
    p = ReplicatedAssignment.build([[3, 1, 1, 1]], [1, 1], max_replicas=max_replicas)
    r = solve(name, p)
    check_result(p, r)
    assert r.status == Status.OPTIMAL
    assert r.objective == pytest.approx(3.0, abs=1e-6)
    assert r.bound <= r.objective + 1e-6


@pytest.mark.parametrize("name", EXACT)
def test_splitting_pays_on_a_fast_bin(name):
    """Loads 4 and 2 on bins of speed 1 and 2 (time = load / speed).
    One replica each: {4} on the fast bin and {2} on the slow one gives max(4/2, 2/1) = 2; the other
    placements give 4 or more. With two replicas the fluid bound total / total speed = 6 / 3 = 2 is
    the same, so splitting cannot beat 2: optimum 2.0 both ways.
    Loads 5 and 1: one replica each gives at best max(5/2, 1/1) = 2.5; splitting the 5 (share 4/5 on
    the fast bin, 1/5 with the 1 on the slow bin) gives 4/2 = 2 = (5 + 1) / 3, the fluid bound."""
    unsplit = ReplicatedAssignment.build([[4, 2]], [1, 2], max_replicas=2)
    r = solve(name, unsplit)
    check_result(unsplit, r)
    assert r.objective == pytest.approx(2.0, abs=1e-6)
    for max_replicas, expected in ((1, 2.5), (2, 2.0)):
        p = ReplicatedAssignment.build([[5, 1]], [1, 2], max_replicas=max_replicas)
        r = solve(name, p)
        check_result(p, r)
        tolerance = r.extra.get("tolerance", 0.0) + 1e-6
        assert expected - 1e-6 <= r.objective <= expected + tolerance


@pytest.mark.parametrize("name", EXACT)
def test_groups_add_and_traffic_counts(name):
    """Two groups, each one item of load 2 on bins of speed 1 and 2; bin 1 costs traffic 1 per unit.
    Per group, share f on bin 1: time max((1 - f) * 2, f * 2 / 2) = max(2 - 2f, f), traffic 0.5 * 2f.
    For f <= 2/3 the objective is 2 - 2f + f = 2 - f, falling; for f >= 2/3 it is f + f = 2f, rising:
    f = 2/3, objective 4/3 per group, 8/3 in all. With one replica: bin 0 gives 2, bin 1 gives 1 + 1 = 2."""
    p = ReplicatedAssignment.build([[2], [2]], [1, 2], max_replicas=2, traffic=[[[0, 1]], [[0, 1]]],
                                   traffic_weight=0.5)
    r = solve(name, p)
    check_result(p, r)
    assert 8 / 3 - 1e-6 <= r.objective <= 8 / 3 + r.extra.get("tolerance", 0.0) + 1e-6


@pytest.mark.parametrize("name", EXACT)
def test_generalized_assignment_cost(name):
    """Cost objective (every item once): items 0, 1, 2 cost [4, 1], [2, 3], [3, 1] on bins 0, 1.
    Unconstrained, each takes its cheaper bin: 1 + 2 + 1 = 4 with items 0 and 2 on bin 1. Bin 1 has
    memory for one of them (weights 5, capacity 6), so one moves to bin 0: item 0 costs +3, item 2
    costs +2, so item 2 moves: 1 + 2 + 3 = 6."""
    cost = np.array([[[4, 1], [2, 3], [3, 1]]], dtype=float)
    p = ReplicatedAssignment.build(np.ones((1, 3)), [1, 1], weight=5, capacity=[np.inf, 6], cost=cost,
                                   objective="cost")
    r = solve(name, p)
    check_result(p, r)
    assert r.status == Status.OPTIMAL and r.objective == 6.0 and r.bound == pytest.approx(6.0)
    assert r.solution.replicas[0, :, 1].tolist() == [True, False, False]


# -- infeasibility explained ----------------------------------------------------------------------


@pytest.mark.parametrize("name", EXACT)
def test_memory_infeasible_names_memory_with_numbers(name):
    """Four items of 5 bytes, two bins of 9 bytes: each bin holds one item, four need 20 bytes."""
    p = ReplicatedAssignment.build([[3, 1, 1, 1]], [1, 1], weight=5, capacity=[9, 9])
    r = solve(name, p)
    assert r.status == Status.INFEASIBLE and r.solution is None and math.isnan(r.objective)
    assert r.message.startswith("memory binds") and "20 bytes" in r.message and "hold 18" in r.message


@pytest.mark.parametrize("name", EXACT)
def test_slot_infeasible_names_slots_with_numbers(name):
    """Four items, two bins with one slot each: at most 2 of the 4 items get a replica."""
    p = ReplicatedAssignment.build([[3, 1, 1, 1]], [1, 1], slots=1)
    r = solve(name, p)
    assert r.status == Status.INFEASIBLE
    assert r.message.startswith("slots bind") and "at most 2 of the 4 items" in r.message


def test_mask_infeasible_names_the_item():
    mask = np.ones((2, 2, 2), dtype=bool)
    mask[1, 0] = False
    p = ReplicatedAssignment.build([[1, 1], [1, 1]], [1, 1], mask=mask)
    for name in EXACT:
        r = solve(name, p)
        assert r.status == Status.INFEASIBLE and r.message == "candidate masks leave item(s) (1, 0) no bin"


def test_families_are_checked_in_turn():
    """Three items, one slot per bin, 4 bytes each on bins of 4 bytes: slots alone (3 items, 2 slots)
    and memory alone (12 bytes, 8 held) each rule every solution out: both are named.
    Two items on a 1-slot bin of 10 bytes and a 2-slot bin of 0 bytes: dropping memory (one item on
    each bin) or dropping slots (both on bin 0) would each do; memory is checked first."""
    both = ReplicatedAssignment.build([[1, 1, 1]], [1, 1], slots=1, weight=4, capacity=[4, 4])
    text = assignment.explain_infeasible(both)
    assert text.startswith("slots and memory both bind") and "at most 2 of the 3 items" in text and "12 bytes" in text
    either = ReplicatedAssignment.build([[1, 1]], [1, 1], slots=[1, 2], weight=4, capacity=[10, 0])
    assert assignment.explain_infeasible(either).startswith("memory binds")


# -- warm starts ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["milp", "cpsat"])
def test_warm_start_is_never_lost(name):
    """Under a tiny time limit on the 32 x 8 x 4 instance the solver returns something no worse than a
    greedy warm start."""
    p = bench_instance()
    start = _feasible_greedy(p)
    r = solve(name, p, time_limit=0.2, initial_solution=start)
    check_result(p, r)
    assert r.objective <= objective_value(p, start)
    assert r.status in (Status.OPTIMAL, Status.TIME_LIMIT)


def _feasible_greedy(p):
    """One replica per item, on the candidate bin with the most memory left (slots respected)."""
    G, I, B = p.shape
    y = np.zeros((G, I, B), dtype=bool)
    left = p.capacity.astype(float).copy()
    for g in range(G):
        used = np.zeros(B, dtype=int)
        for i in np.argsort(-p.load[g]):
            options = [b for b in range(B) if p.mask[g, i, b] and used[b] < p.slots[b] and left[b] >= p.weight[i, b]]
            b = max(options, key=lambda b: (left[b], p.speed[b]))
            y[g, i, b] = True
            used[b] += 1
            left[b] -= p.weight[i, b]
    return AssignmentSolution(y, y.astype(float))


def test_infeasible_warm_start_is_rejected():
    p = ReplicatedAssignment.build([[1, 1]], [1, 1])
    bad = AssignmentSolution(np.zeros((1, 2, 2), dtype=bool), np.zeros((1, 2, 2)))
    with pytest.raises(ValueError, match="initial_solution is not feasible"):
        solve("milp", p, initial_solution=bad)


# -- limits and options ---------------------------------------------------------------------------


def test_brute_refuses_large_instances():
    p = ReplicatedAssignment.build(np.ones((1, 8)), np.ones(6), max_replicas=3)
    with pytest.raises(ValueError, match="limit 200000"):
        solve("brute", p)


def test_milp_backend_not_installed():
    p = ReplicatedAssignment.build([[1, 1]], [1, 1])
    from solvers.milp import installed_solvers

    if "cbc" in installed_solvers():
        pytest.skip("cbc is installed here")
    with pytest.raises(ValueError, match="solver 'cbc' is not installed; available: highs"):
        solve("milp", p, solver_backend="cbc")


def test_32_groups_8_items_4_bins_proven_optimal():
    """Different speeds, memory that binds on the slow bins, 2 candidate bins per item, traffic."""
    p = bench_instance()
    r = solve("milp", p, time_limit=60)
    check_result(p, r)
    assert r.status == Status.OPTIMAL and r.gap <= 1e-6


# -- property: the three exact solvers agree ------------------------------------------------------


@st.composite
def small_problems(draw):
    """G <= 2, I <= 4, B <= 3, up to 2 replicas; random masks, slots, integer memory; a third each of
    plain bottleneck, bottleneck with traffic (I <= 3, to keep brute's share LPs few) and cost."""
    kind = draw(st.sampled_from(["bottleneck", "traffic", "cost"]))
    G, B = draw(st.integers(1, 2)), draw(st.integers(2, 3))
    I = draw(st.integers(1, 3 if kind == "traffic" else 4))

    def ints(lo, hi, shape):
        return np.array(draw(st.lists(st.integers(lo, hi), min_size=math.prod(shape), max_size=math.prod(shape))),
                        dtype=float).reshape(shape)

    load = ints(0, 9, (G, I))
    speed = np.array(draw(st.lists(st.sampled_from([1.0, 1.5, 2.0, 3.0]), min_size=B, max_size=B)))
    slots = ints(-(-I // B), I, (B,)).astype(int)
    weight = ints(0, 3, (I, B))
    capacity = np.array([draw(st.one_of(st.just(np.inf), st.integers(G * I // 2, 3 * G * I).map(float))) for _ in range(B)])
    mask = np.array(draw(st.lists(st.booleans(), min_size=G * I * B, max_size=G * I * B))).reshape(G, I, B)
    mask[:, :, 0] |= ~mask.any(axis=2)  # every item keeps a candidate: mask infeasibility is tested above
    max_replicas = ints(1, 2, (G, I)).astype(int)
    traffic = ints(0, 2, (G, I, B)) if kind == "traffic" else None
    cost = ints(-3, 9, (G, I, B)) if kind == "cost" else None
    return ReplicatedAssignment.build(load, speed, slots=slots, weight=weight, capacity=capacity, mask=mask,
                                      max_replicas=max_replicas, traffic=traffic, cost=cost,
                                      traffic_weight=0.5 if kind == "traffic" else 0.0,
                                      objective="cost" if kind == "cost" else "bottleneck")


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(small_problems())
def test_exact_solvers_agree(p):
    results = {name: solve(name, p) for name in EXACT}
    for r in results.values():
        check_result(p, r)
    statuses = {r.status for r in results.values()}
    assert len(statuses) == 1 and statuses <= {Status.OPTIMAL, Status.INFEASIBLE}, {n: r.status for n, r in results.items()}
    if Status.INFEASIBLE in statuses:
        return
    best = results["brute"].objective
    scale = 1.0 + abs(best)
    assert results["milp"].objective == pytest.approx(best, abs=1e-6 * scale)
    tolerance = results["cpsat"].extra["tolerance"]
    assert best - 1e-6 * scale <= results["cpsat"].objective <= best + tolerance + 1e-6 * scale
    for r in results.values():
        assert r.bound <= best + 1e-6 * scale
