"""Expert placement heuristics (solvers.placement): feasible, never worse than greedy, deterministic, against EPLB and the LP optimum."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog

from models.assignment import AssignmentSolution, ReplicatedAssignment, bin_loads, objective_value, violations
from solvers import placement
from solvers.result import Status
from tests.helpers import assert_maps_agree, identical, random_loads, solve

HEURISTICS = ("greedy-placement", "local-search-placement")


def test_balancedness_by_hand():
    """Rows are layers. [[100, 200], [100, 200]]: each layer 150 / 200 = 0.75 (and vLLM's sums
    300 / 400). Twice the speed on device 1 makes both layers flat. [[1, 1], [0, 10]]: per layer
    1 and 0.5 (mean 0.75); vLLM's ratio of sums (1 + 5) / (1 + 10) = 6/11 weighs the heavy layer."""
    assert placement.balancedness([[100, 200], [100, 200]]) == pytest.approx(0.75)
    assert placement.mean_balancedness([[100, 200], [100, 200]]) == pytest.approx(0.75)
    assert placement.balancedness([[100, 200], [100, 200]], speed=[1, 2]) == pytest.approx(1.0)
    assert placement.balancedness([[1, 1], [0, 10]]) == pytest.approx(6 / 11)
    assert placement.mean_balancedness([[1, 1], [0, 10]]) == pytest.approx(0.75)
    assert placement.mean_balancedness([[0, 0], [1, 1]]) == 1.0 and placement.balancedness([[0, 0]]) == 1.0


def test_to_eplb_maps_is_device_major_and_consistent():
    rng = np.random.default_rng(3)
    problem = identical(random_loads(rng, 3, 12), devices=4, redundant=4)
    sol = solve("greedy-placement", problem).solution
    phy2log, log2phy, logcnt = placement.to_eplb_maps(problem, sol)
    assert phy2log.shape == (3, 16) and np.all(phy2log >= 0)   # every slot used here
    assert_maps_agree(phy2log, log2phy, logcnt)
    device = np.repeat(np.arange(4), 4)
    for g in range(3):
        for p, item in enumerate(phy2log[g]):
            assert sol.replicas[g, item, device[p]]
    assert np.array_equal(logcnt, sol.replicas.sum(axis=2))


@st.composite
def small_problems(draw):
    G, I, B = draw(st.integers(1, 3)), draw(st.integers(1, 6)), draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    load = rng.integers(0, 30, size=(G, I)).astype(float)
    speed = rng.choice([0.4, 1.0, 2.5], size=B)
    mask = rng.random((G, I, B)) < draw(st.sampled_from([1.0, 0.7]))
    mask[np.arange(G)[:, None], np.arange(I)[None, :], rng.integers(0, B, size=(G, I))] = True
    slots = rng.integers(-(-I // B), I + 1, size=B)
    kw = {}
    if draw(st.booleans()):  # memory: room for every replica the slots allow, or less
        kw["weight"] = rng.integers(1, 4, size=(I, B)).astype(float)
        kw["capacity"] = G * slots * 3.0 * draw(st.sampled_from([1.0, 0.6]))
    if draw(st.booleans()):
        kw["traffic"] = rng.random((G, I, B))
        kw["traffic_weight"] = 0.5
    return ReplicatedAssignment.build(load, speed, slots=slots, mask=mask, max_replicas=rng.integers(1, B + 1, size=(G, I)),
                                      **kw)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_problems())
def test_every_heuristic_solution_is_feasible(problem):
    for name in (*HEURISTICS, "eplb"):
        res = solve(name, problem, **({"time_budget_s": 0.02} if name == "local-search-placement" else {}))
        assert res.status in (Status.FEASIBLE, Status.INFEASIBLE), res.message
        if res.status is Status.FEASIBLE:
            assert violations(problem, res.solution) == []
            assert res.objective == pytest.approx(objective_value(problem, res.solution))
            assert res.bound <= res.objective * (1 + 1e-9) + 1e-9
        else:
            assert res.solution is None and res.message
    if problem.mask.all() and (not problem.weight.any() or np.isinf(problem.capacity).all()):
        assert solve("greedy-placement", problem).status is Status.FEASIBLE  # only masks and memory can block it


@settings(max_examples=30, deadline=None)
@given(small_problems())
def test_local_search_never_worse_than_greedy(problem):
    greedy = solve("greedy-placement", problem)
    ls = solve("local-search-placement", problem, time_budget_s=5.0)
    assert ls.status is greedy.status
    if greedy.status is Status.FEASIBLE:
        assert ls.objective <= greedy.objective * (1 + 1e-9) + 1e-9


def test_same_seed_same_result():
    rng = np.random.default_rng(11)
    problem = identical(random_loads(rng, 3, 16), devices=4, redundant=4, speed=[1, 1, 0.4, 0.4])
    for name in HEURISTICS:
        a = solve(name, problem, seed=5, **({"time_budget_s": 10.0} if name != "greedy-placement" else {}))
        b = solve(name, problem, seed=5, **({"time_budget_s": 10.0} if name != "greedy-placement" else {}))
        assert a.stop_reason != "time budget"  # else the search stopped on the clock, not at a local optimum
        assert np.array_equal(a.solution.replicas, b.solution.replicas)
        assert np.array_equal(a.solution.shares, b.solution.shares)


@pytest.mark.parametrize("seed", range(4))
def test_greedy_matches_eplb_on_identical_devices(seed):
    rng = np.random.default_rng(seed)
    problem = identical(random_loads(rng, 4, 16), devices=4, redundant=4)
    eplb = solve("eplb", problem)
    greedy = solve("greedy-placement", problem)
    assert greedy.extra["mean_balancedness"] >= eplb.extra["mean_balancedness"] - 0.005


@pytest.mark.parametrize("seed", range(3))
def test_greedy_beats_eplb_on_mixed_speeds(seed):
    rng = np.random.default_rng(seed)
    problem = identical(random_loads(rng, 4, 16), devices=4, redundant=4, speed=[1, 1, 0.4, 0.4])
    eplb = solve("eplb", problem)
    greedy = solve("greedy-placement", problem)
    assert greedy.objective < eplb.objective
    assert greedy.extra["mean_balancedness"] > eplb.extra["mean_balancedness"]


def lp_optimum(problem: ReplicatedAssignment, replicas: np.ndarray, g: int) -> float:
    """Best max time of group g for fixed replicas: min T, sum_b s_ib = 1, load s / speed <= T."""
    I, B = replicas.shape[1:]
    on = [(i, b) for i in range(I) for b in range(B) if replicas[g, i, b]]
    n = len(on)
    c = np.zeros(n + 1)
    c[-1] = 1.0
    a_eq = np.zeros((I, n + 1))
    a_ub = np.zeros((B, n + 1))
    for k, (i, b) in enumerate(on):
        a_eq[i, k] = 1.0
        a_ub[b, k] = problem.load[g, i] / problem.speed[b]
    a_ub[:, -1] = -1.0
    res = linprog(c, A_ub=a_ub, b_ub=np.zeros(B), A_eq=a_eq, b_eq=np.ones(I), bounds=[(0, None)] * (n + 1))
    return res.fun


@pytest.mark.parametrize("seed", range(5))
def test_water_filling_reaches_the_lp_optimum(seed):
    rng = np.random.default_rng(seed)
    G, I, B = 3, 10, 5
    problem = ReplicatedAssignment.build(random_loads(rng, G, I), rng.choice([0.4, 1.0, 2.0], size=B),
                                         slots=4, max_replicas=3)
    y = rng.random((G, I, B)) < 0.3
    y[np.arange(G)[:, None], np.arange(I)[None, :], rng.integers(0, B, size=(G, I))] = True
    state = placement._State(problem, y, y / y.sum(axis=2, keepdims=True))
    placement._balance_shares(state, np.arange(G), max_sweeps=2000, tol=1e-12)
    times = bin_loads(problem, state.solution())
    for g in range(G):
        assert times[g].max() == pytest.approx(lp_optimum(problem, y, g), rel=1e-6)


def test_greedy_reports_no_placement():
    problem = ReplicatedAssignment.build(np.ones((1, 3)), np.ones(2), slots=1)
    res = solve("greedy-placement", problem)
    assert res.status is Status.INFEASIBLE and "slot" in res.message


def test_greedy_leaves_bins_without_slots_alone():
    """A bin with 0 slots takes no replica (Step 2 once let it take one, and the result was an ERROR)."""
    problem = ReplicatedAssignment.build(np.array([[5.0, 3.0, 2.0, 1.0], [1.0, 1.0, 4.0, 2.0]]),
                                         np.array([1.0, 2.0, 0.4]), slots=[3, 0, 3], max_replicas=2)
    for name in HEURISTICS:
        res = solve(name, problem)
        assert res.status is Status.FEASIBLE, res.message
        assert not res.solution.replicas[:, :, 1].any()


def reference_counts(problem: ReplicatedAssignment) -> np.ndarray:
    """Step 1 one spare at a time, per group, in plain Python."""
    G, I, B = problem.shape
    count = np.ones((G, I), dtype=int)
    for g in range(G):
        reach = [np.cumsum(np.sort(problem.speed[problem.mask[g, i]])[::-1]) for i in range(I)]
        limit = np.minimum(problem.max_replicas[g], problem.mask[g].sum(axis=1))
        for _ in range(int(problem.slots.sum()) - I):
            keys = [problem.load[g, i] / reach[i][count[g, i] - 1] if count[g, i] < limit[i] else -np.inf
                    for i in range(I)]
            i = int(np.argmax(keys))
            if keys[i] <= 0:
                break
            count[g, i] += 1
    return count


def reference_place(problem: ReplicatedAssignment, count: np.ndarray) -> np.ndarray | None:
    """Step 2 in plain Python: step k places every group's k-th replica (heaviest first) on its best
    bin; None where a replica fits nowhere (the solver then drops it or starts over with one replica
    of each item). Memory couples the groups: a bin takes a step's picks whole when they all fit,
    else one by one in group order; the groups turned away choose again with what is left."""
    G, I, B = problem.shape
    speed = problem.speed.tolist()
    same_speed = len(set(speed)) == 1
    cap, weight = problem.capacity.tolist(), problem.weight
    memory = bool(np.isfinite(problem.capacity).any() and weight.any())
    y = np.zeros((G, I, B), dtype=bool)
    items, w, left = [], [], []
    for g in range(G):
        per_replica = problem.load[g] / count[g]
        items.append([i for i in sorted(range(I), key=lambda i: -per_replica[i]) for _ in range(count[g, i])])
        w.append([float(per_replica[i]) for i in items[g]])
        after, total = [0.0] * len(w[g]), 0.0  # the load placed after step k (the solver's sums, in its order)
        for k in range(len(w[g]) - 1, -1, -1):
            total += w[g][k]
            after[k] = total - w[g][k]
        left.append(after)
    level, free, mem = [[0.0] * B for _ in range(G)], [problem.slots.tolist() for _ in range(G)], [0.0] * B
    for k in range(max(map(len, items))):
        todo = [g for g in range(G) if k < len(items[g])]
        while todo:
            picks = []
            for g in todo:
                i = items[g][k]
                fill = left[g][k] / max(int(problem.slots.sum()) - 1 - k, 1)
                best, pick = np.inf, None
                for b in range(B):
                    if free[g][b] < 1 or y[g, i, b] or not problem.mask[g, i, b]:
                        continue
                    if memory and mem[b] + weight[i, b] > cap[b]:
                        continue
                    score = (free[g][b] - 1) * fill + level[g][b]
                    if not same_speed:
                        score = (score + w[g][k]) * (1.0 / speed[b])
                    if score < best:
                        best, pick = score, b
                if pick is None:
                    return None
                picks.append((g, pick))
            retry = []
            for b in sorted({b for _, b in picks}):
                mine = [g for g, pb in picks if pb == b]
                total = mem[b]
                for g in mine:
                    total += weight[items[g][k], b] if memory else 0.0
                if total <= cap[b] or not memory:
                    mem[b] = total
                    admitted = mine
                else:
                    admitted = []
                    for g in mine:
                        if mem[b] + weight[items[g][k], b] <= cap[b]:
                            mem[b] += weight[items[g][k], b]
                            admitted.append(g)
                        else:
                            retry.append(g)
                for g in admitted:
                    y[g, items[g][k], b] = True
                    level[g][b] += w[g][k]
                    free[g][b] -= 1
            todo = sorted(retry)
    return y


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_problems(), st.booleans())
def test_steps_1_and_2_match_plain_python(problem, ties):
    """The vectorised Steps 1 and 2 (all groups in lockstep, blocked bins kept in the scores,
    checks skipped where nothing can be blocked, memory checked only in steps where it could bind)
    place exactly what the rules say, memory included."""
    if ties:  # many equal keys and scores
        problem = ReplicatedAssignment.build(np.round(problem.load / 10.0), problem.speed, slots=problem.slots,
                                             mask=problem.mask, max_replicas=problem.max_replicas)
    count = reference_counts(problem) if problem.slots.sum() >= problem.shape[1] else None
    if count is None:
        return
    limit = np.minimum(problem.max_replicas, problem.mask.sum(axis=2))
    assert np.array_equal(placement._replica_counts(problem, placement._reach(problem), limit), count)
    expected = reference_place(problem, count)
    if expected is None:
        return
    y, g, i, b, rcount = placement._place(problem, count, mandatory_first=False)
    assert np.array_equal(y, expected)
    assert np.array_equal(rcount, count) and y[g, i, b].all() and g.size == y.sum()


def test_bad_options_and_initial_solution():
    problem = identical(np.array([[4.0, 2.0, 1.0, 1.0]]), devices=2, redundant=0)
    with pytest.raises(ValueError, match="unknown option"):
        solve("greedy-placement", problem, sweeps=3)
    bad = AssignmentSolution(np.zeros((1, 4, 2), dtype=bool), np.zeros((1, 4, 2)))
    with pytest.raises(ValueError, match="initial_solution"):
        solve("local-search-placement", problem, initial_solution=bad)
    start = solve("greedy-placement", problem).solution
    res = solve("local-search-placement", problem, initial_solution=start)
    assert res.status is Status.FEASIBLE and res.objective <= objective_value(problem, start) + 1e-12


def test_bench_runs_small():
    from solvers.bench_placement import main

    rows = main(["--layers", "2", "--experts", "16", "--devices", "4", "--redundant", "4", "--repeat", "1"])
    assert {r["solver"] for r in rows} == {"eplb", "greedy-placement", "local-search-placement"}


def test_bench_runs_as_a_module():
    """``python -m solvers.bench_placement`` in a fresh interpreter finds its solvers (it registers them)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "solvers.bench_placement", "--layers", "2", "--experts", "16",
                          "--devices", "4", "--redundant", "4", "--repeat", "1"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "greedy-placement under 50 ms" in out.stdout


def reference_colours(load: np.ndarray, y: np.ndarray) -> list[set]:
    """Step 3's batches in plain Python: per group, its items with several replicas (and load),
    heaviest first (ties in item order), each in the first batch where no item of its group shares
    a bin with it. Returns the batches as sets of (group, item)."""
    G, I, B = y.shape
    batches: list[set] = []
    taken: list[dict] = []  # per batch: group -> bins used
    for g in range(G):
        items = sorted((i for i in range(I) if y[g, i].sum() > 1 and load[g, i] > 0), key=lambda i: -load[g, i])
        for i in items:
            bins = set(np.flatnonzero(y[g, i]).tolist())
            c = next((c for c, used in enumerate(taken) if not used.get(g, set()) & bins), len(taken))
            if c == len(taken):
                batches.append(set())
                taken.append({})
            batches[c].add((g, i))
            taken[c].setdefault(g, set()).update(bins)
    return batches


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 4), st.integers(1, 12), st.sampled_from([2, 5, 63, 64, 65, 70]), st.integers(0, 2**32 - 1))
def test_share_batches_are_first_fit_colours(G, I, B, seed):
    """The lockstep colouring of Step 3 (bins as bits of one word up to 64 bins, bool masks above)
    gives each group's items the batches a first-fit colouring in load order gives them."""
    rng = np.random.default_rng(seed)
    load = rng.integers(0, 5, size=(G, I)).astype(float)
    y = rng.random((G, I, B)) < rng.choice([0.05, 0.3, 0.8])
    y[np.arange(G)[:, None], np.arange(I)[None, :], rng.integers(0, B, size=(G, I))] = True
    problem = ReplicatedAssignment.build(load, rng.choice([0.5, 1.0, 2.0], size=B), slots=I, max_replicas=B)
    st_ = placement._State(problem, y, y / y.sum(axis=2, keepdims=True))
    got = [{divmod(int(at) // B, I) for at in batch.at_s[:, 0]} for batch in placement._disjoint_batches(st_, np.arange(G))]
    assert got == reference_colours(load, y)
    for batch in placement._disjoint_batches(st_, np.arange(G)):  # each row: its replica bins first, in order
        for row, at in enumerate(batch.at_s[:, 0]):
            g, i = divmod(int(at) // B, I)
            bins = batch.at_L[row] - g * B
            held = np.flatnonzero(y[g, i])
            assert bins[:held.size].tolist() == held.tolist()
            assert not np.isin(bins[held.size:], held).any() and np.all(np.diff(bins[held.size:]) > 0)
