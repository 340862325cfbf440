"""DeepSeek's Expert Parallelism Load Balancer (EPLB), re-implemented with numpy.

A faithful port of ``deepseek-ai/EPLB: eplb.py`` (torch) for identical GPUs, so that moeplan can
compare its own placement against EPLB without torch. Same steps, same tie-breaking:

* ``replicate_experts``: add redundant replicas one at a time, each to the logical expert whose
  load per replica (``weight / logcnt``) is largest (lowest index on ties).
* ``balanced_packing``: sort items by weight (descending) and put each on the lightest pack that
  still has room (lowest pack index on ties); every pack gets exactly ``n / num_packs`` items.
* ``eplb_rebalance``: the hierarchical policy (Step 1 pack expert groups to nodes, Step 2 replicate
  within nodes, Step 3 pack physical experts to GPUs) when ``num_groups % num_nodes == 0``, else
  the global policy, which is the hierarchical one with one group and one node.

As in EPLB, loads are compared in float32 (``weight.float()``), so near-ties break the same way.
Known deviation: EPLB sorts with torch's default sort, which for rows longer than 16 takes equal
weights in an implementation-defined order; here the sort is stable (equal weights in index
order). So with distinct loads ``phy2log`` and ``logcnt`` equal the original's and ``log2phy``
equals it up to the order of one expert's replicas (its copies weigh the same); where distinct
experts tie exactly, the maps may differ. The README example is reproduced exactly.

Like the original, ``balanced_packing`` may put two replicas of one logical expert on the same
GPU; callers that need one replica per GPU (``solvers.placement``) merge them.

Index maps (names as in EPLB; ``X`` = ``max(logcnt)``):
    phy2log [layers, num_replicas]          logical expert held by each physical slot; slot ``p``
                                            lies on GPU ``p // (num_replicas // num_gpus)``
    log2phy [layers, experts, X]            physical slots of each logical expert, replica rank
                                            order, padded with -1
    logcnt  [layers, experts]               replicas of each logical expert (>= 1)
"""

from __future__ import annotations

import numpy as np


def balanced_packing(weight: np.ndarray, num_packs: int) -> tuple[np.ndarray, np.ndarray]:
    """Pack the ``n`` items of each row into ``num_packs`` packs of exactly ``n / num_packs`` items.

    weight: [X, n] float. Returns pack_index [X, n] (pack of each item) and rank_in_pack [X, n]
    (position of the item in its pack, in the order items were packed). Rows are independent; they
    are processed in lockstep (item k of every row at once), which gives the same result as EPLB's
    row-by-row loop.
    """
    weight = np.asarray(weight, dtype=np.float32)
    num_layers, n = weight.shape
    if num_packs < 1 or n % num_packs:
        raise ValueError(f"{n} items do not split evenly into {num_packs} packs")
    per_pack = n // num_packs
    if per_pack == 1:
        return np.broadcast_to(np.arange(n), weight.shape).copy(), np.zeros(weight.shape, dtype=np.int64)
    order = np.argsort(-weight, axis=1, kind="stable")  # [X, n] items by weight, heaviest first
    # Flat indices, and the packs' weights with +inf once full (what the lightest-open-pack choice
    # compares): the same float32 sums as adding to the weights and masking full packs each step.
    row_items = np.arange(num_layers) * n
    row_packs = np.arange(num_layers) * num_packs
    pack_index = np.full(num_layers * n, -1, dtype=np.int64)
    rank_in_pack = np.full(num_layers * n, -1, dtype=np.int64)
    open_weight = np.zeros(num_layers * num_packs, dtype=np.float32)
    pack_items = np.zeros(num_layers * num_packs, dtype=np.int64)
    flat_weight = weight.reshape(-1)
    for k in range(n):
        item = order[:, k] + row_items
        pack = open_weight.reshape(num_layers, num_packs).argmin(axis=1)
        at = pack + row_packs
        pack_index[item] = pack
        count = pack_items[at]
        rank_in_pack[item] = count
        open_weight[at] += flat_weight[item]
        count += 1
        pack_items[at] = count
        open_weight[at[count >= per_pack]] = np.inf
    return pack_index.reshape(num_layers, n), rank_in_pack.reshape(num_layers, n)


def replicate_experts(weight: np.ndarray, num_phy: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Replicate ``num_log`` experts to ``num_phy`` physical experts, minimising the largest load per replica.

    weight: [X, num_log]. Returns phy2log [X, num_phy] (logical expert of each physical one; the
    first ``num_log`` are the experts themselves), rank [X, num_phy] (replica rank of each physical
    expert) and logcnt [X, num_log] (replicas of each logical expert).
    """
    weight = np.asarray(weight, dtype=np.float32)
    n, num_log = weight.shape
    if num_phy < num_log:
        raise ValueError(f"{num_phy} physical experts cannot hold {num_log} logical ones")
    rows = np.arange(n)
    phy2log = np.broadcast_to(np.arange(num_phy), (n, num_phy)).copy()
    rank = np.zeros((n, num_phy), dtype=np.int64)
    logcnt = np.ones((n, num_log), dtype=np.int64)
    per_replica = weight / logcnt  # kept up to date one entry per row (the same quotients)
    for p in range(num_log, num_phy):
        hottest = np.argmax(per_replica, axis=1)
        phy2log[:, p] = hottest
        rank[:, p] = logcnt[rows, hottest]
        logcnt[rows, hottest] += 1
        per_replica[rows, hottest] = weight[rows, hottest] / logcnt[rows, hottest]
    return phy2log, rank, logcnt


def _inverse(perm: np.ndarray) -> np.ndarray:
    """Row-wise inverse of a batch of permutations, [X, n] -> [X, n]."""
    inv = np.empty_like(perm)
    np.put_along_axis(inv, perm, np.broadcast_to(np.arange(perm.shape[1]), perm.shape), axis=1)
    return inv


def _rebalance_hierarchical(weight: np.ndarray, num_physical: int, num_groups: int, num_nodes: int,
                            num_gpus: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """EPLB's hierarchical policy. weight: [layers, experts] float32.

    Returns phy2log [layers, num_physical], phyrank [layers, num_physical], logcnt [layers, experts].
    Intermediate index spaces: ``mlog`` (logical experts renumbered so that each node's groups are
    contiguous), ``phy`` (physical experts of a node before packing) and ``pphy`` (after packing,
    GPU-major: the final physical slot).
    """
    num_layers, num_logical = weight.shape
    for what, a, b in (("experts", num_logical, num_groups), ("groups", num_groups, num_nodes),
                       ("GPUs", num_gpus, num_nodes), ("physical experts", num_physical, num_gpus)):
        if b < 1 or a % b:
            raise ValueError(f"{what} ({a}) must be a multiple of {b}")
    group_size = num_logical // num_groups
    groups_per_node = num_groups // num_nodes
    phy_per_gpu = num_physical // num_gpus
    log_per_node = num_logical // num_nodes

    # Step 1: pack expert groups onto nodes.
    tokens_per_group = weight.reshape(num_layers, num_groups, group_size).sum(-1)  # [layers, groups]
    group_pack, group_rank = balanced_packing(tokens_per_group, num_nodes)
    log2mlog = (((group_pack * groups_per_node + group_rank) * group_size)[:, :, None]
                + np.arange(group_size)).reshape(num_layers, num_logical)  # [layers, experts]
    mlog2log = _inverse(log2mlog)

    # Step 2: replicate experts within each node. [layers * nodes, experts per node]
    tokens_per_mlog = np.take_along_axis(weight, mlog2log, axis=1).reshape(-1, log_per_node)
    phy2mlog, phyrank, mlogcnt = replicate_experts(tokens_per_mlog, num_physical // num_nodes)

    # Step 3: pack the physical experts of each node onto its GPUs. [layers * nodes, physical per node]
    tokens_per_phy = np.take_along_axis(tokens_per_mlog / mlogcnt, phy2mlog, axis=1)
    pack_index, rank_in_pack = balanced_packing(tokens_per_phy, num_gpus // num_nodes)
    pphy2phy = _inverse(pack_index * phy_per_gpu + rank_in_pack)

    pphy2mlog = np.take_along_axis(phy2mlog, pphy2phy, axis=1)  # node-local mlog ids
    pphy2mlog = (pphy2mlog.reshape(num_layers, num_nodes, -1)
                 + np.arange(0, num_logical, log_per_node)[None, :, None]).reshape(num_layers, -1)
    pphy2log = np.take_along_axis(mlog2log, pphy2mlog, axis=1)
    pphyrank = np.take_along_axis(phyrank, pphy2phy, axis=1).reshape(num_layers, -1)
    logcnt = np.take_along_axis(mlogcnt.reshape(num_layers, -1), log2mlog, axis=1)
    return pphy2log, pphyrank, logcnt


def eplb_rebalance(weight, num_replicas: int, num_gpus: int, *, num_groups: int = 1,
                   num_nodes: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """EPLB's ``rebalance_experts``: replicate and place experts on identical GPUs.

    weight: [layers, experts] load of each logical expert (>= 0). ``num_replicas``: physical
    experts in all (experts + redundant), a multiple of ``num_gpus``. With the defaults
    (``num_groups = num_nodes = 1``) this is EPLB's global policy; otherwise the hierarchical one
    when ``num_groups % num_nodes == 0`` (experts in ``num_groups`` contiguous groups, GPUs split
    evenly over ``num_nodes`` nodes), else the global one, as in EPLB.

    Returns phy2log [layers, num_replicas], log2phy [layers, experts, max(logcnt)] (padded with -1)
    and logcnt [layers, experts]; physical slot ``p`` lies on GPU ``p // (num_replicas // num_gpus)``.
    """
    weight = np.atleast_2d(np.asarray(weight, dtype=np.float32))
    key = (weight.shape, weight.tobytes(), int(num_replicas), int(num_gpus), int(num_groups), int(num_nodes))
    hit = _RECENT.get(key)
    if hit is None:
        hit = _RECENT[key] = _rebalance(weight, num_replicas, num_gpus, num_groups, num_nodes)
        while len(_RECENT) > _RECENT_KEPT:
            _RECENT.pop(next(iter(_RECENT)))
    return tuple(a.copy() for a in hit)


_RECENT: dict = {}  # the last few rebalances (a pure function of its inputs): a caller that checks a
_RECENT_KEPT = 4    # placement before solving with it does not pay for EPLB twice


def _rebalance(weight: np.ndarray, num_replicas: int, num_gpus: int, num_groups: int, num_nodes: int):
    """:func:`eplb_rebalance` on a float32 ``weight`` (not remembered)."""
    num_layers, num_logical = weight.shape
    if num_groups % num_nodes == 0:
        phy2log, phyrank, logcnt = _rebalance_hierarchical(weight, num_replicas, num_groups, num_nodes, num_gpus)
    else:
        phy2log, phyrank, logcnt = _rebalance_hierarchical(weight, num_replicas, 1, 1, num_gpus)
    max_cnt = int(logcnt.max())
    log2phy = np.full((num_layers, num_logical * max_cnt), -1, dtype=np.int64)
    np.put_along_axis(log2phy, phy2log * max_cnt + phyrank,
                      np.broadcast_to(np.arange(num_replicas), (num_layers, num_replicas)), axis=1)
    return phy2log, log2phy.reshape(num_layers, num_logical, max_cnt), logcnt
