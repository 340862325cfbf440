"""The port of DeepSeek's EPLB (solvers.eplb): by-hand cases, the README example, consistent maps, what it cannot do."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.assignment import ReplicatedAssignment, bin_loads
from solvers.eplb import balanced_packing, eplb_rebalance, replicate_experts
from solvers.result import Status
from tests.helpers import assert_maps_agree, identical, solve


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


def _packing_row_by_row(weight: np.ndarray, num_packs: int):
    """EPLB's balanced_packing as the original writes it: one row at a time, one item at a time (one
    item per pack: item i in pack i)."""
    weight = np.asarray(weight, dtype=np.float32)
    rows, n = weight.shape
    per_pack = n // num_packs
    if per_pack == 1:
        return np.tile(np.arange(n), (rows, 1)), np.zeros((rows, n), dtype=np.int64)
    pack_index = np.full((rows, n), -1, dtype=np.int64)
    rank_in_pack = np.full((rows, n), -1, dtype=np.int64)
    for r in range(rows):
        pack_weight = [np.float32(0.0)] * num_packs
        items = [0] * num_packs
        for i in np.argsort(-weight[r], kind="stable"):
            pack = min((p for p in range(num_packs) if items[p] < per_pack), key=lambda p: (pack_weight[p], p))
            pack_index[r, i], rank_in_pack[r, i] = pack, items[pack]
            pack_weight[pack] = np.float32(pack_weight[pack] + weight[r, i])
            items[pack] += 1
    return pack_index, rank_in_pack


def _replication_row_by_row(weight: np.ndarray, num_phy: int):
    """EPLB's replicate_experts as the original writes it: each spare replica to the largest load per replica."""
    weight = np.asarray(weight, dtype=np.float32)
    rows, num_log = weight.shape
    phy2log = np.tile(np.arange(num_phy), (rows, 1))
    rank = np.zeros((rows, num_phy), dtype=np.int64)
    logcnt = np.ones((rows, num_log), dtype=np.int64)
    for r in range(rows):
        for p in range(num_log, num_phy):
            hottest = int(np.argmax(weight[r] / logcnt[r]))
            phy2log[r, p], rank[r, p] = hottest, logcnt[r, hottest]
            logcnt[r, hottest] += 1
    return phy2log, rank, logcnt


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 5), st.integers(1, 6), st.integers(1, 4), st.integers(0, 3), st.integers(0, 10_000),
       st.booleans())
def test_the_lockstep_loops_equal_the_row_by_row_ones(rows, packs, per_pack, spare, seed, ties):
    """Packing and replication in lockstep over the rows (with the packs' weights kept masked and the
    loads per replica kept up to date) give the original's row-by-row maps, ties included."""
    rng = np.random.default_rng(seed)
    n = packs * per_pack
    weight = (rng.integers(0, 4, size=(rows, n)) if ties else rng.random((rows, n)) * 100).astype(float)
    for got, want in zip(balanced_packing(weight, packs), _packing_row_by_row(weight, packs)):
        assert got.tolist() == want.tolist()
    for got, want in zip(replicate_experts(weight, n + spare * packs), _replication_row_by_row(weight, n + spare * packs)):
        assert got.tolist() == want.tolist()
