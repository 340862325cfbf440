"""Chain partition: the model (evaluate, violations), the exact DP, the MILP, CP-SAT and brute force.

Random problems use times on a grid of 1/4 s and integer memory, so sums are exact in floating
point, ties are frequent (caps equal to a stage time, equal bottlenecks) and every solver's optimum
can be compared exactly; CP-SAT is held to its documented tolerance of twice its scaling error.
"""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.chain import ChainPartition, Stage, evaluate, stages_from_devices, violations
from solvers import chain, dp, registry
from solvers.result import Status

EXACT = ["dp", "brute", "milp", "cpsat"]
NEEDS = {"milp": "highspy", "cpsat": "ortools"}


def installed(name: str) -> bool:
    return name not in NEEDS or importlib.util.find_spec(NEEDS[name]) is not None


SOLVERS = [pytest.param(n, marks=pytest.mark.skipif(not installed(n), reason=f"{NEEDS.get(n)} missing")) for n in EXACT]


def solve(name: str, problem: ChainPartition, **kw):
    return registry.get(name, problem="chain").func(problem, **kw)


def tolerance(result) -> float:
    """How far from the true optimum a solver may be: 0 for the exact ones, CP-SAT's rounding."""
    return 2 * result.extra.get("scaling_error_s", 0.0) + 1e-9


@st.composite
def problems(draw, max_items: int = 6, max_devices: int = 4):
    # Sizes drawn uniformly (hypothesis favours small integers), so most cases have real choices.
    D = draw(st.sampled_from(range(1, max_devices + 1)))
    L = draw(st.sampled_from(range(1, max_items + 1)))
    grid = lambda shape, hi: np.array(draw(st.lists(st.integers(0, hi), min_size=int(np.prod(shape)),  # noqa: E731
                                                    max_size=int(np.prod(shape))))).reshape(shape)
    capacity = [draw(st.sampled_from([math.inf, math.inf, *range(0, 13)])) for _ in range(D)]
    return dict(compute=grid((D, L), 16) / 4, memory=grid((D, L), 4), capacity=capacity,
                transfer_busy=grid((D, D, L), 12) / 4, transfer_latency=grid((D, D, L), 12) / 4,
                entry_busy=grid((D,), 8) / 4, entry_latency=grid((D,), 8) / 4,
                exit_busy=grid((D,), 8) / 4, exit_latency=grid((D,), 8) / 4)


def check_agreement(problem: ChainPartition):
    results = {n: solve(n, problem) for n in EXACT if installed(n)}
    reference = results["brute"]
    for name, r in results.items():
        assert r.status == reference.status, (name, r.status, r.message, reference.message)
        if r.status is Status.INFEASIBLE:
            assert r.message and not r.has_solution
            continue
        assert r.status is Status.OPTIMAL and r.sense == "min"
        assert violations(problem, r.solution) == [], name
        bottleneck, latency = evaluate(problem, r.solution)
        assert r.objective == (bottleneck if problem.objective == "bottleneck" else latency)
        assert abs(r.objective - reference.objective) <= tolerance(r), (name, r.objective, reference.objective)
        assert r.bound <= r.objective and r.bound >= reference.objective - tolerance(r), (name, r.bound)
    return results


@settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(data=problems(), objective=st.sampled_from(["bottleneck", "latency"]),
       cap=st.one_of(st.none(), st.just("tight"), st.integers(0, 24).map(lambda v: v / 4)))
def test_exact_solvers_agree(data, objective, cap):
    """dp, brute, milp and cpsat find the same optimum (or all prove infeasibility), with and without
    the cap; "tight" sets the cap to the least bottleneck, so it binds with equality."""
    if cap == "tight":
        best = dp.best_bottleneck(ChainPartition.build(**data))
        cap = best if math.isfinite(best) else None
    problem = ChainPartition.build(**data, objective=objective, max_bottleneck=cap)
    results = check_agreement(problem)
    if problem.objective == "bottleneck" and results["dp"].has_solution:
        # dp breaks bottleneck ties by latency: no optimal partition has a smaller latency.
        capped = ChainPartition.build(**data, objective="latency", max_bottleneck=results["dp"].objective)
        assert results["dp"].extra["latency_s"] == solve("brute", capped).objective


# Known optima, derived by hand --------------------------------------------------------------------

def two_equal_devices(**kw) -> ChainPartition:
    """Four items of 1 s on either of two devices; a cut costs 1 s of latency and 0.5 s of link time."""
    return ChainPartition.build(np.ones((2, 4)), transfer_busy=0.5, transfer_latency=1.0, **kw)


@pytest.mark.parametrize("name", SOLVERS)
def test_even_split_minimises_the_bottleneck(name):
    """Bottleneck: a split 2 + 2 gives max(2, 2, 0.5) = 2; one device gives 4, a split 1 + 3 gives 3.
    So the optimum is 2 with stages (0, 0, 2), (1, 2, 4), and its latency is 4 + 1 = 5."""
    r = solve(name, two_equal_devices())
    assert r.status is Status.OPTIMAL
    assert r.objective == pytest.approx(2.0, abs=tolerance(r))
    assert r.solution == [Stage(0, 0, 2), Stage(1, 2, 4)]
    assert r.extra["latency_s"] == 5.0


@pytest.mark.parametrize("name", SOLVERS)
@pytest.mark.parametrize("cap, latency, stages", [(None, 4.0, 1), (3.0, 5.0, 2), (2.0, 5.0, 2)])
def test_throughput_floor_trades_latency(name, cap, latency, stages):
    """Latency: one device costs 4 s (no cut), any split 4 + 1 = 5 s. A cap of 3 s on the bottleneck
    rules out the single device (bottleneck 4), so the optimum becomes 5 s with two stages; a cap of
    2 s leaves only the even split, still 5 s."""
    r = solve(name, two_equal_devices(objective="latency", max_bottleneck=cap))
    assert r.status is Status.OPTIMAL
    assert r.objective == pytest.approx(latency, abs=tolerance(r))
    assert len(r.solution) == stages
    assert r.extra["bottleneck_s"] <= (cap or math.inf)


def memory_bound_pair(**kw) -> ChainPartition:
    """Device 0: 1 s per item, holds 2 items; device 1: 3 s per item, unlimited. Cut: busy 0.5, latency 0.5."""
    return ChainPartition.build([[1, 1, 1, 1], [3, 3, 3, 3]], memory=1, capacity=[2, math.inf],
                                transfer_busy=0.5, transfer_latency=0.5, **kw)


@pytest.mark.parametrize("name", SOLVERS)
def test_memory_decides_the_split(name):
    """Device 0 takes at most two items. Bottleneck: 2 items on 0 gives max(2, 6, 0.5) = 6, one item
    gives 9, none gives 12. Latency: 2 + 6 + 0.5 = 8.5 beats 1 + 9 + 0.5 = 10.5 and 12."""
    r = solve(name, memory_bound_pair())
    assert r.objective == pytest.approx(6.0, abs=tolerance(r)) and r.solution == [Stage(0, 0, 2), Stage(1, 2, 4)]
    r = solve(name, memory_bound_pair(objective="latency"))
    assert r.objective == pytest.approx(8.5, abs=tolerance(r)) and r.solution == [Stage(0, 0, 2), Stage(1, 2, 4)]


@pytest.mark.parametrize("name", SOLVERS)
def test_a_slow_device_on_the_path_is_skipped(name):
    """Devices 0 and 2 take 1 s per item and hold two items each; device 1 takes 10 s per item. The
    only partition with bottleneck 2 is (0, 0, 2), (2, 2, 4), skipping device 1; its cut 0 -> 2 after
    item 1 is busy 1.5 s, below 2."""
    busy = np.full((3, 3, 4), 9.0)
    busy[0, 2, 1] = 1.5
    p = ChainPartition.build([[1] * 4, [10] * 4, [1] * 4], memory=1, capacity=[2, math.inf, 2], transfer_busy=busy)
    r = solve(name, p)
    assert r.objective == pytest.approx(2.0, abs=tolerance(r))
    assert r.solution == [Stage(0, 0, 2), Stage(2, 2, 4)]


@pytest.mark.parametrize("name", SOLVERS)
def test_a_cut_is_not_a_detour(name):
    """Item 0 fits only on device 0, item 1 only on device 2 (memory). The cut 0 -> 2 costs 10 s of
    latency although 0 -> 1 and 1 -> 2 cost 1 s each: device 1 holds no item, so it cannot relay, and
    the optimum is 1 + 1 + 10 = 12 s, with no bound below it."""
    latency = np.zeros((3, 3, 2))
    latency[0, 2, 0], latency[0, 1, 0], latency[1, 2, 0] = 10, 1, 1
    p = ChainPartition.build(np.ones((3, 2)), memory=[[1, 9], [9, 9], [9, 1]], capacity=1,
                             transfer_latency=latency, objective="latency")
    r = solve(name, p)
    assert r.objective == pytest.approx(12.0, abs=tolerance(r)) and r.solution == [Stage(0, 0, 1), Stage(2, 1, 2)]
    assert r.bound >= 12.0 - tolerance(r)


@pytest.mark.parametrize("name", SOLVERS)
def test_entry_and_exit_costs_count(name):
    """Sending the input to device 0 keeps its link busy 5 s, to device 1 only 1 s; returning the
    output from either takes 3 s of latency. Items take 1 s anywhere. Bottleneck: starting on device 0
    costs 5 whatever follows; everything on device 1 costs max(1, 2, 0) = 2. Latency: 2 + entry
    latency (0 on both) + exit latency 3 = 5 on either single device."""
    p = ChainPartition.build(np.ones((2, 2)), entry_busy=[5, 1], exit_latency=3, transfer_busy=4)
    r = solve(name, p)
    assert r.objective == pytest.approx(2.0, abs=tolerance(r)) and r.solution == [Stage(1, 0, 2)]
    r = solve(name, ChainPartition.build(np.ones((2, 2)), entry_busy=[5, 1], exit_latency=3, transfer_busy=4,
                                         objective="latency"))
    assert r.objective == pytest.approx(5.0, abs=tolerance(r))


# Infeasible cases -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", SOLVERS)
@pytest.mark.parametrize("kw, words", [
    (dict(memory=[[30, 30, 33.4], [30, 30, 33.4]], capacity=[40, 40]),
     "memory binds: the items need 93.4 in all (each on its smallest-memory device), the devices hold 80"),
    (dict(memory=[[1, 9, 1], [1, 9, 1]], capacity=[8, 8]), "memory binds: item 1 needs at least 9, the largest capacity is 8"),
    (dict(max_bottleneck=1.5), "the throughput floor binds: the best bottleneck without it is 2 s > cap 1.5 s"),
])
def test_infeasible_names_the_binding_family(name, kw, words):
    """Three items of 1 s on two devices. (1) The items need 93.4 units, the devices hold 80. (2) Item 1
    needs 9 units, no device holds more than 8. (3) The best bottleneck is 2 (a split 2 + 1; one device
    gives 3), above the cap 1.5."""
    r = solve(name, ChainPartition.build(np.ones((2, 3)), **kw))
    assert r.status is Status.INFEASIBLE and not r.has_solution
    assert words in r.message


@pytest.mark.parametrize("name", SOLVERS)
def test_only_a_prefix_fits(name):
    """Each device holds 2 units. Item costs: device 0 [1, 1, 1], device 1 [1, 3, 3]. Device 0 can
    hold items 0-1, after which device 1 cannot hold item 2 (3 > 2); device 0 alone cannot hold all
    three (3 > 2); device 1 alone neither. So at most the first 2 items are placed."""
    p = ChainPartition.build(np.ones((2, 3)), memory=[[1, 1, 1], [1, 3, 3]], capacity=[2, 2])
    r = solve(name, p)
    assert r.status is Status.INFEASIBLE
    assert "memory binds: at most the first 2 of 3 items fit" in r.message


# Warm starts, options, determinism ----------------------------------------------------------------

@settings(max_examples=15, deadline=None, derandomize=True)
@given(data=problems(), objective=st.sampled_from(["bottleneck", "latency"]), seed=st.integers(0, 2**16))
def test_warm_start_never_worse(data, objective, seed):
    """A feasible start (any random partition that happens to fit) is never beaten by the answer."""
    problem = ChainPartition.build(**data, objective=objective)
    D, L = problem.shape
    rng = np.random.default_rng(seed)
    devices = np.sort(rng.integers(0, D, L))
    start = stages_from_devices(devices)
    start_value = evaluate(problem, start)[0 if objective == "bottleneck" else 1]
    for name in EXACT:
        r = solve(name, problem, initial_solution=start)
        if violations(problem, start) == []:
            assert r.has_solution and r.objective <= start_value
            assert violations(problem, r.solution) == []


def test_warm_start_is_returned_when_the_solver_runs_out_of_time():
    """With a microsecond, CP-SAT finds at best its hint; the start comes back if it finds nothing."""
    rng = np.random.default_rng(3)
    p = ChainPartition.build(rng.integers(1, 9, (4, 30)) / 4, transfer_busy=0.5)
    start = [Stage(0, 0, 10), Stage(2, 10, 20), Stage(3, 20, 30)]
    r = solve("cpsat", p, initial_solution=start, time_limit=1e-6)
    assert r.has_solution and r.objective <= evaluate(p, start)[0]
    assert r.status in (Status.TIME_LIMIT, Status.OPTIMAL, Status.FEASIBLE)


@pytest.mark.parametrize("name", SOLVERS)
def test_bad_input_raises(name):
    p = two_equal_devices()
    with pytest.raises(ValueError, match="initial_solution"):
        solve(name, p, initial_solution=[(1, 0, 2), (0, 2, 4)])
    with pytest.raises(ValueError, match="unknown options"):
        solve(name, p, no_such_option=1)


def test_brute_refuses_large_cases():
    assert chain.count_candidates(6, 4) == 84  # 4 + 5*6 + 10*4 + 10*1
    with pytest.raises(ValueError, match="use the 'dp' solver"):
        solve("brute", ChainPartition.build(np.ones((8, 40))))


def test_registered_and_deterministic():
    assert set(EXACT) <= set(registry.available(problem="chain"))
    rng = np.random.default_rng(7)
    p = ChainPartition.build(rng.integers(1, 9, (3, 12)) / 4, transfer_busy=rng.integers(0, 9, (3, 3, 12)) / 4,
                             memory=1, capacity=6)
    for name in ("milp", "cpsat"):
        a, b = solve(name, p, seed=5), solve(name, p, seed=5)
        assert a.solution == b.solution and a.objective == b.objective
        assert 0 <= a.solve_time_s and a.solver_version


def test_evaluate_and_violations_by_hand():
    """Stages (0, 0, 1), (1, 1, 3) on two devices: compute 1 + (2 + 3), cut 0 -> 1 after item 0 busy
    0.5 / latency 0.25, entry busy 4 / latency 1, exit busy 0 / latency 2. Bottleneck max(1, 5, 0.5,
    4, 0) = 5; latency 1 + 5 + 0.25 + 1 + 2 = 9.25. Device 1 needs 2 + 2 = 4 > 3 memory."""
    p = ChainPartition.build([[1, 9, 9], [9, 2, 3]], memory=2, capacity=[10, 3], transfer_busy=0.5,
                             transfer_latency=0.25, entry_busy=[4, 0], entry_latency=1, exit_latency=2,
                             max_bottleneck=4.5)
    stages = [(0, 0, 1), (1, 1, 3)]
    assert evaluate(p, stages) == (5.0, 9.25)
    broken = violations(p, stages)
    assert len(broken) == 2 and "device 1 needs 4" in broken[0] and "exceeds the cap" in broken[1]
    assert "devices must increase" in violations(p, [(1, 0, 1), (0, 1, 3)])[0]
    assert "starts at item 2" in violations(p, [(0, 0, 1), (1, 2, 3)])[0]
    with pytest.raises(ValueError, match="transfer_busy"):
        ChainPartition.build(np.ones((2, 3)), transfer_busy=np.ones((2, 3, 3)))
