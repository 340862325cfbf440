"""Expert placement: the EPLB port, the placement heuristics, the balancedness metrics, ``moeplan place``."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog

from models.assignment import AssignmentSolution, ReplicatedAssignment, bin_loads, objective_value, violations
from planner.cli import main as cli
from planner.cli import place
from solvers import placement
from solvers.eplb import balanced_packing, eplb_rebalance, replicate_experts
from solvers.registry import get
from solvers.result import Status

HEURISTICS = ("greedy-placement", "local-search-placement")


def solve(name: str, problem: ReplicatedAssignment, **options):
    return get(name, problem="assignment").func(problem, **options)


def random_loads(rng, layers: int, experts: int) -> np.ndarray:
    """Zipf-like loads, ranking permuted per layer."""
    popularity = 1.0 / np.arange(1, experts + 1)
    return np.stack([rng.multinomial(200 * experts, popularity[rng.permutation(experts)] / popularity.sum())
                     for _ in range(layers)]).astype(float)


def identical(load, devices: int, redundant: int, speed=None) -> ReplicatedAssignment:
    speed = np.ones(devices) if speed is None else np.asarray(speed, dtype=float)
    return ReplicatedAssignment.build(load, speed, slots=(load.shape[1] + redundant) // devices, max_replicas=devices)


# ----- the EPLB port ---------------------------------------------------------------------------

def test_replicate_experts_by_hand():
    """weight [6, 2, 3], 5 physical experts. Spare 1: loads per replica [6, 2, 3] -> expert 0
    (count 2). Spare 2: [3, 2, 3] -> the first maximum, expert 0 again (count 3)."""
    phy2log, rank, logcnt = replicate_experts(np.array([[6.0, 2.0, 3.0]]), 5)
    assert phy2log.tolist() == [[0, 1, 2, 0, 0]]
    assert rank.tolist() == [[0, 0, 0, 1, 2]]
    assert logcnt.tolist() == [[3, 1, 1]]


def test_balanced_packing_by_hand():
    """weight [4, 3, 2, 1] into 2 packs of 2: 4 -> pack 0; 3 -> pack 1 (lighter); 2 -> pack 1
    (3 < 4), now full; 1 -> pack 0, the only one with room. Both packs weigh 5."""
    pack, rank = balanced_packing(np.array([[4.0, 3.0, 2.0, 1.0]]), 2)
    assert pack.tolist() == [[0, 1, 1, 0]]
    assert rank.tolist() == [[0, 0, 1, 1]]


def test_eplb_global_by_hand():
    """1 layer, loads [10, 1, 1, 1], 6 physical experts on 2 GPUs (3 slots each).

    Step 2 (replicate): expert 0 gets both spares (10 > 1, then 5 > 1): logcnt [3, 1, 1, 1];
    physical experts p0..p5 = experts [0, 1, 2, 3, 0, 0] weighing [10/3, 1, 1, 1, 10/3, 10/3].
    Step 3 (pack, heaviest first, ties in index order): p0 -> GPU0; p4 -> GPU1; p5 -> GPU0 (tie,
    lower index); p1 -> GPU1 (4.33 < 6.67); p2 -> GPU1 (now full); p3 -> GPU0. So GPU0 holds
    p0, p5, p3 = experts 0, 0, 3 (slots 0, 1, 2) and GPU1 holds p4, p1, p2 = experts 0, 1, 2
    (slots 3, 4, 5): phy2log [0, 0, 3, 0, 1, 2]. Expert 0's replica ranks 0, 1, 2 (p0, p4, p5)
    sit in slots 0, 3, 1. EPLB puts two replicas of expert 0 on GPU0: GPU loads 7.67 and 5.33.
    """
    phy2log, log2phy, logcnt = eplb_rebalance(np.array([[10.0, 1.0, 1.0, 1.0]]), 6, 2)
    assert phy2log.tolist() == [[0, 0, 3, 0, 1, 2]]
    assert log2phy.tolist() == [[[0, 3, 1], [4, -1, -1], [5, -1, -1], [2, -1, -1]]]
    assert logcnt.tolist() == [[3, 1, 1, 1]]


def test_eplb_hierarchical_matches_the_readme_example():
    """deepseek-ai/EPLB README: 2 layers x 12 experts, 16 replicas, 4 groups, 2 nodes, 8 GPUs."""
    weight = np.array([[90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86],
                       [20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27]])
    phy2log, _, _ = eplb_rebalance(weight, 16, 8, num_groups=4, num_nodes=2)
    assert phy2log.tolist() == [[5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1],
                                [7, 10, 6, 8, 6, 11, 8, 9, 2, 4, 5, 1, 5, 0, 3, 1]]


def assert_maps_agree(phy2log, log2phy, logcnt):
    layers, experts = logcnt.shape
    assert np.all(logcnt >= 1)
    for layer in range(layers):
        for e in range(experts):
            slots = np.flatnonzero(phy2log[layer] == e)
            row = log2phy[layer, e]
            assert sorted(row[:logcnt[layer, e]].tolist()) == slots.tolist()
            assert np.all(row[logcnt[layer, e]:] == -1)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 8), st.integers(0, 3), st.integers(0, 10_000),
       st.booleans())
def test_eplb_maps_are_consistent(layers, gpus, experts, spare_rows, seed, hierarchical):
    rng = np.random.default_rng(seed)
    weight = rng.integers(0, 20, size=(layers, experts)).astype(float)
    replicas = gpus * (-(-experts // gpus) + spare_rows)
    groups, nodes = (experts, 1) if not hierarchical else (experts, gpus if experts % gpus == 0 else 1)
    phy2log, log2phy, logcnt = eplb_rebalance(weight, replicas, gpus, num_groups=groups, num_nodes=nodes)
    assert phy2log.shape == (layers, replicas) and logcnt.sum(axis=1).tolist() == [replicas] * layers
    assert log2phy.shape == (layers, experts, logcnt.max())
    assert_maps_agree(phy2log, log2phy, logcnt)


# ----- metrics ---------------------------------------------------------------------------------

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


# ----- heuristics ------------------------------------------------------------------------------

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


def test_eplb_merges_replicas_that_share_a_bin():
    """The hand case above: EPLB puts two replicas of expert 0 on bin 0; they become one with 2/3."""
    problem = identical(np.array([[10.0, 1.0, 1.0, 1.0]]), devices=2, redundant=2)
    res = solve("eplb", problem)
    assert res.status is Status.FEASIBLE and res.extra["merged_duplicates"] == 1
    assert res.solution.shares[0, 0].tolist() == pytest.approx([2 / 3, 1 / 3])
    assert bin_loads(problem, res.solution)[0].tolist() == pytest.approx([23 / 3, 16 / 3])
    greedy = solve("greedy-placement", problem)
    assert greedy.objective < res.objective   # one replica per bin, shares water-filled


def test_eplb_reports_what_it_cannot_do():
    load = np.array([[5.0, 1.0, 1.0]])
    uneven = ReplicatedAssignment.build(load, np.ones(2), slots=[2, 3], max_replicas=2)
    assert solve("eplb", uneven).status is Status.INFEASIBLE
    mask = np.ones((1, 3, 2), dtype=bool)
    mask[0, 0, 1] = False
    masked = ReplicatedAssignment.build(load, np.ones(2), slots=2, mask=mask, max_replicas=2)
    res = solve("eplb", masked)
    assert res.status is Status.INFEASIBLE and "not a candidate" in res.message
    assert solve("greedy-placement", masked).status is Status.FEASIBLE


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
    """Step 2 (no memory) one group and one replica at a time, in plain Python; None where a
    replica fits nowhere (the solver then drops it or starts over with one replica of each item)."""
    G, I, B = problem.shape
    speed = problem.speed.tolist()
    same_speed = len(set(speed)) == 1
    y = np.zeros((G, I, B), dtype=bool)
    for g in range(G):
        per_replica = problem.load[g] / count[g]
        items = [i for i in sorted(range(I), key=lambda i: -per_replica[i]) for _ in range(count[g, i])]
        w = [float(per_replica[i]) for i in items]
        left = [0.0] * len(w)
        total = 0.0
        for k in range(len(w) - 1, -1, -1):
            total += w[k]
            left[k] = total - w[k]
        level, free = [0.0] * B, problem.slots.tolist()
        for k, i in enumerate(items):
            fill = left[k] / max(int(problem.slots.sum()) - 1 - k, 1)
            best, pick = np.inf, None
            for b in range(B):
                if free[b] < 1 or y[g, i, b] or not problem.mask[g, i, b]:
                    continue
                score = (free[b] - 1) * fill + level[b]
                if not same_speed:
                    score = (score + w[k]) * (1.0 / speed[b])
                if score < best:
                    best, pick = score, b
            if pick is None:
                return None
            y[g, i, pick] = True
            level[pick] += w[k]
            free[pick] -= 1
    return y


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_problems(), st.booleans())
def test_steps_1_and_2_match_plain_python(problem, ties):
    """The vectorised Steps 1 and 2 (all groups in lockstep, blocked bins kept in the scores,
    checks skipped where nothing can be blocked) place exactly what the rules say."""
    if ties:  # many equal keys and scores
        problem = ReplicatedAssignment.build(np.round(problem.load / 10.0), problem.speed, slots=problem.slots,
                                             mask=problem.mask, max_replicas=problem.max_replicas)
    count = reference_counts(problem) if problem.slots.sum() >= problem.shape[1] else None
    if count is None:
        return
    limit = np.minimum(problem.max_replicas, problem.mask.sum(axis=2))
    assert np.array_equal(placement._replica_counts(problem, placement._reach(problem), limit), count)
    expected = reference_place(problem, count)
    if expected is None or problem.weight.any():
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


# ----- moeplan place ---------------------------------------------------------------------------

def run(capsys, monkeypatch, *argv):
    """``moeplan`` with ``place`` registered (whether or not cli.py wires it in yet)."""
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if "place" not in sub.choices:
        place.add_parser(sub)
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def loads_file(tmp_path):
    path = tmp_path / "loads.json"
    path.write_text(json.dumps(random_loads(np.random.default_rng(0), 3, 8).tolist()))
    return path


@pytest.mark.parametrize("solver", ["greedy-placement", "local-search-placement", "eplb"])
def test_place_json(capsys, monkeypatch, loads_file, solver):
    code, out, _ = run(capsys, monkeypatch, "place", loads_file, "--devices", "4", "--replicas", "4",
                       "--solver", solver, "--json")
    assert code == 0
    obj = json.loads(out)
    for key in ("phy2log", "log2phy", "logcnt", "device_load", "balancedness", "mean_balancedness", "solver",
                "solve_time_s", "replica_share"):
        assert key in obj
    assert obj["solver"] == solver and np.array(obj["phy2log"]).shape == (3, 12)
    assert np.array(obj["device_load"]).shape == (3, 4)
    assert_maps_agree(np.array(obj["phy2log"]), np.array(obj["log2phy"]), np.array(obj["logcnt"]))
    assert 0 < obj["mean_balancedness"] <= 1


def test_place_eplb_prints_eplbs_own_maps(capsys, monkeypatch, tmp_path):
    path = tmp_path / "loads.json"
    path.write_text("[[10, 1, 1, 1]]")
    code, out, _ = run(capsys, monkeypatch, "place", path, "--devices", "2", "--replicas", "2", "--solver", "eplb", "--json")
    obj = json.loads(out)
    assert code == 0 and obj["phy2log"] == [[0, 0, 3, 0, 1, 2]] and obj["logcnt"] == [[3, 1, 1, 1]]
    assert obj["replica_share"][0] == pytest.approx([1 / 3, 1 / 3, 1, 1 / 3, 1, 1])
    assert obj["device_load"][0] == pytest.approx([23 / 3, 16 / 3])


def test_place_checks_memory(capsys, monkeypatch, loads_file, tmp_path):
    """3 layers x 8 experts, 12 slots: 36 replicas need 3.6 GB at 0.1 GB each."""
    devices = tmp_path / "fleet.json"
    devices.write_text(json.dumps([{"speed": 1, "memory_gb": 1.0}, {"speed": 1, "memory_gb": 1.0},
                                   {"speed": 1, "memory_gb": 1.0}, {"speed": 1, "memory_gb": 1.0}]))
    code, out, _ = run(capsys, monkeypatch, "place", loads_file, "--devices", devices, "--replicas", "4",
                       "--expert-gb", "0.1", "--json")
    obj = json.loads(out)
    assert code == 0 and max(np.sum(np.array(obj["phy2log"]).reshape(3, 4, 3) >= 0, axis=(0, 2))) <= 10
    code, out, err = run(capsys, monkeypatch, "place", loads_file, "--devices", devices, "--expert-gb", "0.5")
    assert code == 1 and "no placement" in err


def test_place_table_and_device_file(capsys, monkeypatch, loads_file, tmp_path):
    devices = tmp_path / "fleet.toml"
    devices.write_text('[[devices]]\nname = "big"\nspeed = 2.0\nslots = 6\n\n[[devices]]\nname = "small"\nspeed = 0.5\nslots = 4\n')
    code, out, _ = run(capsys, monkeypatch, "place", loads_file, "--devices", devices)
    assert code == 0 and "big" in out and "balancedness" in out


BAD_LOADS = [
    ("[[1, 2], [3]]", "[1]"),
    ("[[1, -2], [3, 4]]", "[0][1]"),
    ('[[1, "x"], [3, 4]]', "[0][1]"),
    ("[[1, 2], [3, NaN]]", "[1][1]"),
    ("{not json", "not valid JSON"),
    ("{}", "must hold"),
    ("[[true, 1]]", "[0][0]"),
]


@pytest.mark.parametrize("text,where", BAD_LOADS)
def test_place_rejects_bad_loads(capsys, monkeypatch, tmp_path, text, where):
    path = tmp_path / "loads.json"
    path.write_text(text)
    code, out, err = run(capsys, monkeypatch, "place", path, "--devices", "2", "--json")
    assert code == 2 and out == ""
    assert str(path) in err and where in err and "Traceback" not in err


@pytest.mark.parametrize("spec,where", [("0", "--devices"), ("-1", "--devices"), ("2.5", "--devices"),
                                        ("nofile.json", "file not found")])
def test_place_rejects_bad_device_count(capsys, monkeypatch, loads_file, spec, where):
    code, _, err = run(capsys, monkeypatch, "place", loads_file, f"--devices={spec}")
    assert code == 2 and where in err and "Traceback" not in err


@pytest.mark.parametrize("body,field", [
    ('[{"speed": 0, "slots": 4}, {"speed": 1, "slots": 4}]', "devices[0].speed"),
    ('{"devices": [{"speed": 1, "slots": 2.5}, {"speed": 1, "slots": 4}]}', "devices[0].slots"),
    ('[{"speed": 1, "slots": 8}, {"speed": 1}]', "devices[1].slots"),
    ('[{"speed": 1, "slots": 3}, {"speed": 1, "slots": 3}]', "devices[].slots"),
    ('[{"speed": 1, "slot": 4}]', "devices[0].slot"),
    ('[]', "devices"),
])
def test_place_rejects_bad_device_files(capsys, monkeypatch, loads_file, tmp_path, body, field):
    path = tmp_path / "fleet.json"
    path.write_text(body)
    code, _, err = run(capsys, monkeypatch, "place", loads_file, "--devices", path)
    assert code == 2 and str(path) in err and field in err and "Traceback" not in err


def test_place_says_when_slots_do_not_split(capsys, monkeypatch, loads_file):
    code, _, err = run(capsys, monkeypatch, "place", loads_file, "--devices", "3", "--replicas", "2")
    assert code == 2 and "--replicas" in err and "evenly" in err and "--replicas 1" in err
