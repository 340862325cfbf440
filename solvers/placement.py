"""Expert placement with replication on bins of different speeds (``ReplicatedAssignment``, "bottleneck").

Items are experts, groups are layers, bins are devices (the problem itself has no MoE words).
Shapes: ``G`` groups, ``I`` items, ``B`` bins. A bin's time in a group is its load divided by its
speed; the objective adds up each group's slowest bin (plus optional traffic).

Step 1  replica counts, per group: start with one replica per item and hand the spare slots
        (``sum(slots) - I``: every slot is used, as in EPLB) out one at a time to the item with the
        largest speed-normalised load per replica, ``load / (sum of the speeds of its c fastest
        candidate bins)`` for ``c`` replicas (with identical speeds this is EPLB's
        ``load / logcnt``); never above ``max_replicas`` or the number of candidate bins, and
        never to an item without load.
Step 2  placement, per group, largest replica first (load / count): onto the candidate bin with a
        free slot and free memory, not yet holding the item, with the least
        ``(level + w + (free slots - 1) * fill) / speed``: its time after taking the replica plus
        what its other free slots will still receive, ``fill`` being the load left to place over
        the slots left. (With identical speeds and without that look-ahead this is EPLB's lightest
        pack; the look-ahead keeps the last, smallest replicas from piling onto slow bins, which
        fill their slots last.) A spare replica that fits nowhere is dropped; if an item would be
        left without a replica, the placement is redone with one replica of every item first
        (fewest candidate bins first), then the spares.
Step 3  shares: for a fixed placement the best split of each item over its replicas is an LP.
        Block coordinate descent solves it: water-fill one replicated item at a time (pour its
        load into its bins up to a common level, the other loads held; items of a group that
        share no bin are filled together, every group in lockstep). Each step minimises
        ``sum_b load_b**2 / speed_b`` over one item's shares; the reachable load vectors form a
        base polytope, on which that minimiser also minimises the largest ``load_b / speed_b``
        (Fujishige's lexicographically optimal base), so the sweeps converge to the LP optimum
        and no group's maximum ever rises. Sweeps stop when one lowers the summed maxima by less
        than a relative ``SHARE_TOL`` (the tests check the limit against scipy's ``linprog``).
        Traffic is not weighed here: shares balance time only.
Step 4  local search (``local-search-placement``): repeatedly take the group furthest above its
        lower bound and, at its slowest bin, try moving a replica to another bin, adding a replica
        elsewhere (when the item may have another and a slot is free), swapping it with a replica
        on another bin, or, failing those, dropping another item's spare replica to make room for
        one. A move may not raise the group's time plus traffic (shares held); the best drop wins,
        and where several bins tie at the maximum (water-filling makes them tie) the largest drop
        of ``sum_b load_b**2 / speed_b``, which re-water-filling the touched bins' replicated items
        then turns into a lower maximum. It stops at a local optimum, after ``max_moves`` or at
        the time budget. Moves are chosen deterministically; the seed only orders groups that tie.

Solvers (registered on problem type "assignment"): ``greedy-placement`` (Steps 1-3),
``local-search-placement`` (Steps 1-4) and ``eplb`` (DeepSeek's EPLB, speed-blind, on the slots
alone). Helpers: :func:`balancedness`, :func:`mean_balancedness`, :func:`to_eplb_maps`.
"""

from __future__ import annotations

import math
import time
from typing import NamedTuple

import numpy as np

from models.assignment import AssignmentSolution, ReplicatedAssignment, bin_loads, objective_value, violations
from solvers.eplb import eplb_rebalance
from solvers.registry import register
from solvers.result import Result, Status

SHARE_SWEEPS = 30           # Step 3: at most this many sweeps over the replicated items
SHARE_TOL = 1e-4            # Step 3: stop when a sweep lowers the summed group maxima by less (relative)
_EPS = 1e-12


class _NoPlacement(Exception):
    """The greedy found no placement (message says which item and why)."""


# ----- metrics ---------------------------------------------------------------------------------

def _normalised(loads_per_device, speed) -> np.ndarray:
    x = np.atleast_2d(np.asarray(loads_per_device, dtype=float))
    return x if speed is None else x / np.asarray(speed, dtype=float)[None, :]


def balancedness(loads_per_device, speed=None) -> float:
    """vLLM's EPLB balancedness of speed-normalised loads, in [0, 1] (1 = perfectly balanced).

    loads_per_device: [layers, devices] load (tokens); speed: [devices] relative speed (default 1).
    As vLLM logs it: ``sum over layers of mean_d(x) / sum over layers of max_d(x)`` with
    ``x = load / speed``, i.e. a ratio of sums, so heavy layers weigh more and no division by the
    number of layers is needed. 1.0 when there is no load at all (vLLM logs 0.0 then).
    """
    x = _normalised(loads_per_device, speed)
    top = x.max(axis=1).sum()
    return 1.0 if top <= 0 else float(x.mean(axis=1).sum() / top)


def mean_balancedness(loads_per_device, speed=None) -> float:
    """Average over layers of ``mean_d(x) / max_d(x)``, ``x = load / speed``: in [0, 1].

    Every layer counts the same; a layer without load counts as 1.0. The placement targets
    (EPLB within 0.005, mixed speeds >= 0.95) are stated in this measure.
    """
    x = _normalised(loads_per_device, speed)
    top = x.max(axis=1)
    per_layer = np.where(top > 0, x.mean(axis=1) / np.where(top > 0, top, 1.0), 1.0)
    return float(per_layer.mean())


def to_eplb_maps(problem: ReplicatedAssignment, solution: AssignmentSolution) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """EPLB's index maps of a placement.

    Physical slots are device-major: bin ``b`` owns slots ``offset[b] .. offset[b] + slots[b] - 1``
    with ``offset = cumsum([0] + slots)``; on a bin its items come in index order. Returns
    phy2log [G, sum(slots)] (item on each slot, -1 for a slot left empty, which EPLB never does),
    log2phy [G, I, max(logcnt)] (slots of each item in bin order, padded with -1) and
    logcnt [G, I] (replicas of each item). Shares are not in EPLB's maps (EPLB splits an expert's
    load evenly over its replicas); read them from ``solution.shares``.
    """
    y = np.asarray(solution.replicas, dtype=bool)
    G, I, B = problem.shape
    per_bin = y.sum(axis=1)
    if np.any(per_bin > problem.slots[None, :]):
        raise ValueError("the solution puts more replicas on a bin than it has slots")
    offset = np.concatenate([[0], np.cumsum(problem.slots)])
    slot_of = offset[:-1][None, None, :] + np.cumsum(y, axis=1) - 1   # [G, I, B] slot of replica (g, i, b)
    rank = np.cumsum(y, axis=2) - 1                                   # [G, I, B] replica rank in bin order
    g, i, b = np.nonzero(y)
    phy2log = np.full((G, int(offset[-1])), -1, dtype=np.int64)
    phy2log[g, slot_of[g, i, b]] = i
    logcnt = y.sum(axis=2).astype(np.int64)
    log2phy = np.full((G, I, max(int(logcnt.max(initial=0)), 1)), -1, dtype=np.int64)
    log2phy[g, i, rank[g, i, b]] = slot_of[g, i, b]
    return phy2log, log2phy, logcnt


def _n_candidates(problem: ReplicatedAssignment) -> np.ndarray:
    """[G, I]: the number of candidate bins of each item."""
    G, I, B = problem.shape
    return np.full((G, I), B) if problem.mask.all() else problem.mask.sum(axis=2)


def _reach(problem: ReplicatedAssignment) -> np.ndarray:
    """[G, I, B]: entry c is the summed speed of item i's c + 1 fastest candidate bins."""
    if problem.mask.all():
        fastest = np.cumsum(np.sort(problem.speed)[::-1])
        return np.broadcast_to(fastest, problem.mask.shape)
    cand = np.where(problem.mask, problem.speed[None, None, :], 0.0)
    return np.cumsum(-np.sort(-cand, axis=2), axis=2)


# ----- state -----------------------------------------------------------------------------------

class _State:
    """A placement being built: replicas y [G, I, B] bool, shares s [G, I, B], raw bin loads
    L [G, B] (sum of load * share), replicas per bin cnt [G, B], replicas per item rcount [G, I],
    memory in use mem [B] (bytes). ``cnt`` and ``rcount`` are computed from y unless given."""

    def __init__(self, problem: ReplicatedAssignment, y: np.ndarray, s: np.ndarray,
                 cnt: np.ndarray | None = None, rcount: np.ndarray | None = None):
        self.p = problem
        self.y = y
        self.s = s
        self.L = np.einsum("gi,gib->gb", problem.load, s)
        self.cnt = y.sum(axis=1) if cnt is None else cnt
        self.rcount = y.sum(axis=2) if rcount is None else rcount
        self.mem = ((problem.weight * np.count_nonzero(y, axis=0)).sum(axis=0) if problem.weight.any()
                    else np.zeros(y.shape[2]))

    def times(self, g) -> np.ndarray:
        return self.L[g] / self.p.speed

    def group_objective(self, g: int) -> float:
        p = self.p
        value = float(self.times(g).max())
        if p.traffic_weight > 0:
            value += p.traffic_weight * float(np.sum(p.traffic[g] * p.load[g][:, None] * self.s[g]))
        return value

    def solution(self) -> AssignmentSolution:
        return AssignmentSolution(self.y.copy(), self.s.copy())


class _FillBatch:
    """The fixed data :func:`_fill` needs for items ``items[k]`` of groups ``gs[k]`` (those with load):
    x [n, 1] their loads; per row, the item's replica bins first, then padding, as flat indices
    into ``L`` (``at_L`` [n, R]) and ``s`` (``at_s``), with speed ``sp`` (0 on padding), divisor
    ``div`` (speed, 1 on padding) and ``pad`` (0, +inf on padding); ``share`` [n, R] the shares
    the batch holds between fills (None: read and write ``s`` at every fill); ``at_L_on`` /
    ``on`` the flat indices and positions of the replica entries. Items of one group in a batch
    must have no bin in common."""

    def __init__(self, st: _State, gs: np.ndarray, items: np.ndarray, hold_shares: bool = False,
                 rows: tuple | None = None):
        p = st.p
        G, I, B = st.y.shape
        if rows is None:
            keep = p.load[gs, items] > 0
            gs, items = gs[keep], items[keep]
            y_rows = st.y[gs, items]
            order, count = _replicas_first(y_rows)
        else:  # the rows' replicas [n, B], their bins replicas first (a stable argsort of ~y) and counts
            y_rows, order, count = rows
        width = max(int(count.max(initial=1)), 1)
        bins = order[:, :width]
        on = np.take_along_axis(y_rows, bins, axis=1)
        self.n = gs.size
        self.x = p.load[gs, items][:, None]
        self.sp = np.where(on, p.speed[bins], 0.0)
        self.div = np.where(on, self.sp, 1.0)
        self.pad = np.where(on, 0.0, np.inf)
        self.at_L = gs[:, None] * B + bins
        self.at_s = (gs * I + items)[:, None] * B + bins
        self.on = np.flatnonzero(on)                      # write replica bins only: a row's padding may
        self.at_L_on = self.at_L.ravel()[self.on]         # be another row's replica bin
        self.x_on = np.repeat(self.x[:, 0], width)[self.on]
        self.first = np.arange(self.n) * width            # flat index of each row's first entry
        self.row_at = self.first[:, None]
        self.share = st.s.reshape(-1)[self.at_s] if hold_shares else None

    def store(self, st: _State) -> None:
        """Write the shares the batch holds back into ``st.s``."""
        if self.share is not None and self.n:
            st.s.reshape(-1)[self.at_s] = self.share


def _fill(st: _State, batch: _FillBatch) -> None:
    """Water-fill each item of a :class:`_FillBatch` over its replicas, the other loads held.

    The level lam solves ``sum_b speed_b * max(0, lam - t_b) = load`` where ``t_b`` is bin b's time
    without the item; bin b then serves ``speed_b * (lam - t_b)`` of it.
    """
    if batch.n == 0:
        return
    x, sp = batch.x, batch.sp
    L = st.L.reshape(-1)
    share = batch.share if batch.share is not None else st.s.reshape(-1)[batch.at_s]
    base = L[batch.at_L]
    base -= x * share                                      # [n, R] loads without the item
    t0 = base / batch.div
    t = t0 + batch.pad                                     # +inf on padding
    at = np.argsort(t, axis=1)
    at += batch.row_at
    ts, sps = t.take(at), sp.take(at)
    lam = np.cumsum(sps * t0.take(at), axis=1)             # padding: 0 * a finite time
    lam += x
    lam /= np.cumsum(sps, axis=1)
    k = (ts < lam).sum(axis=1)                             # the k lowest bins share the level
    k -= 1
    np.maximum(k, 0, out=k)
    k += batch.first
    alloc = np.subtract(lam.take(k)[:, None], t)
    np.maximum(alloc, 0.0, out=alloc)
    alloc *= sp
    alloc /= alloc.sum(axis=1, keepdims=True)
    if batch.share is not None:
        batch.share = alloc
    else:
        st.s.reshape(-1)[batch.at_s] = alloc
    on = batch.on
    L[batch.at_L_on] = base.take(on) + batch.x_on * alloc.take(on)


def _replicas_first(y_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of replicas [n, B]: the first ``max(1, most replicas of a row)`` bins of a stable
    argsort of ``~y_rows`` (its replica bins in bin order, then as many of its other bins as pad it
    to that width: all a :class:`_FillBatch` reads), and its replica count; from the nonzero cells,
    not a rank per cell."""
    n, B = y_rows.shape
    count = np.count_nonzero(y_rows, axis=1)
    width = min(max(int(count.max(initial=1)), 1), B)
    order = np.empty((n, width), dtype=np.intp)
    r, b = np.nonzero(y_rows)                                   # row by row, bins in order
    order[r, np.arange(r.size) - np.repeat(np.cumsum(count) - count, count)] = b
    short = np.flatnonzero(count < width)                       # padded with their first other bins
    if short.size:
        r, b = np.nonzero(~y_rows[short])
        per = B - count[short]
        at = np.arange(r.size) - np.repeat(np.cumsum(per) - per, per) + count[short][r]
        keep = at < width
        order[short[r[keep]], at[keep]] = b[keep]
    return order, count


def _disjoint_batches(st: _State, groups: np.ndarray, hold_shares: bool = False) -> list[_FillBatch]:
    """Step 3's batches: the replicated items of ``groups``, coloured greedily (heaviest first, all
    groups in lockstep) so that the items of one group in a batch share no bin; filling a batch at
    once then equals filling its items one after another."""
    p = st.p
    n = groups.size
    multi = (st.rcount[groups] > 1) & (p.load[groups] > 0)          # [n, I]
    if not multi.any():
        return []
    rows, items = np.nonzero(multi)
    by = np.lexsort((-p.load[groups[rows], items], rows))             # per group, heaviest first
    rows, items = rows[by], items[by]
    column = np.arange(rows.size) - np.searchsorted(rows, rows)       # rank within its group
    width = int(column.max()) + 1
    table = np.full((n, width), -1)
    table[rows, column] = items
    B = st.y.shape[2]
    colour = np.full((n, width), -1)
    everyone = np.arange(n)
    colours = 0  # colours in use: colour ``colours`` is free in every group, so the search stops there
    if B <= 64:  # bins as the bits of one word: the search on [n, colours] words, not [n, colours, B]
        packed = np.packbits(st.y[groups], axis=2, bitorder="little")                       # bin b: bit b % 8 of byte b // 8
        words = np.zeros((*packed.shape[:2], 8), dtype=np.uint8)
        words[:, :, :packed.shape[2]] = packed
        masks = words.view("<u8")[:, :, 0].astype(np.uint64)                                  # [n, I]: bit b = bin b
    else:
        masks = st.y[groups]                                                                  # [n, I, B]
    extra = (1,) * (masks.ndim - 2)  # the bins axis of the bool masks
    used = np.zeros((n, width, *masks.shape[2:]), dtype=masks.dtype)                          # bins taken by each colour
    here = table >= 0
    # Column j's bins of every group, column-major; a group without a j-th item has none (so it
    # takes colour 0 and changes nothing there), and every column has some group's item.
    bins_at = np.ascontiguousarray(np.moveaxis(np.where(here.reshape(*here.shape, *extra),
                                                        masks[everyone[:, None], np.maximum(table, 0)], 0).astype(masks.dtype), 1, 0))
    picked = np.empty((width, n), dtype=np.intp)
    for j in range(width):
        bins = bins_at[j]
        shared = used[:, :colours + 1] & bins[:, None]
        c = np.argmin(shared.any(axis=2) if masks.ndim > 2 else shared != 0, axis=1)  # first colour without a shared bin
        used[everyone, c] |= bins
        picked[j] = c
        colours = max(colours, int(c.max()) + 1)
    colour[here] = picked.T[here]
    # Every row's replicas and bins at once (each batch then takes its rows): one sort, not one a batch.
    position = np.full((n, width), -1)
    position[rows, column] = np.arange(rows.size)
    y_all = st.y[groups[rows], items]
    order_all, count_all = _replicas_first(y_all)
    out = []
    for c in range(int(colour.max()) + 1):
        at = colour == c
        mine = position[at]
        out.append(_FillBatch(st, groups[np.nonzero(at)[0]], table[at], hold_shares,
                              rows=(y_all[mine], order_all[mine], count_all[mine])))
    return out


def _balance_shares(st: _State, groups: np.ndarray, max_sweeps: int = SHARE_SWEEPS, tol: float = SHARE_TOL) -> None:
    """Step 3 on ``groups``: sweep the replicated items, water-filling each, until the groups'
    summed maximum times improve by less than a relative ``tol`` in a sweep."""
    batches = _disjoint_batches(st, groups, hold_shares=True)
    if not batches:
        return
    speed = st.p.speed
    worst = (st.L[groups] / speed).max(axis=1).sum()
    for _ in range(max_sweeps):
        for batch in batches:
            _fill(st, batch)
        now = (st.L[groups] / speed).max(axis=1).sum()
        if worst - now <= tol * now:
            break
        worst = now
    for batch in batches:
        batch.store(st)


# ----- Step 1 and Step 2 -----------------------------------------------------------------------

def _replica_counts(problem: ReplicatedAssignment, reach: np.ndarray, limit: np.ndarray) -> np.ndarray:
    """Step 1: replicas per item, count [G, I] (>= 1), at most sum(slots) per group."""
    G, I, B = problem.shape
    spare = int(problem.slots.sum()) - I
    if spare < 0:
        raise _NoPlacement(f"{I} items need a slot each but the bins have {int(problem.slots.sum())} in all")
    if spare == 0 or G * I == 0:
        return np.ones((G, I), dtype=np.int64)
    count = np.ones(G * I, dtype=np.int64)            # flat [G * I] views of the [G, I] arrays
    load, limit = problem.load.ravel(), limit.ravel()
    if problem.mask.all():                             # then every item has the same reach
        fastest = reach[0, 0]
        def reach_at(fi, c):
            return fastest[c - 1]
    else:
        reach_flat = reach.reshape(G * I, B)
        def reach_at(fi, c):
            return reach_flat[fi, c - 1]

    def key(fi):
        c = count[fi]
        return np.where(c < limit[fi], load[fi] / reach_at(fi, c), -np.inf)

    per_replica = key(np.arange(G * I)).reshape(G, I)
    flat = per_replica.ravel()
    row_start = np.arange(G) * I
    for _ in range(spare):
        fi = per_replica.argmax(axis=1)
        fi += row_start
        go = flat[fi] > 0
        if not go.all():
            if not go.any():
                break
            fi = fi[go]
        count[fi] += 1
        flat[fi] = key(fi)
    return count.reshape(G, I)


def _replica_order(problem: ReplicatedAssignment, count: np.ndarray, per_replica: np.ndarray,
                   mandatory_first: bool) -> np.ndarray:
    """[G, R] items in placing order, one entry per replica, padded with -1: heaviest replica first;
    with ``mandatory_first``, first one replica of every item (fewest candidate bins, then
    heaviest), then the spare replicas, heaviest first. Ties keep item order."""
    G, I, _ = problem.shape
    per_group = count.sum(axis=1)
    order = np.full((G, int(per_group.max())), -1, dtype=np.int64)
    if not mandatory_first:     # an item's replicas weigh the same: sort the items, repeat each
        by = np.argsort(-per_replica, axis=1, kind="stable")             # [G, I] heaviest first, ties in item order
        reps = np.take_along_axis(count, by, axis=1).ravel()
        group = np.repeat(np.arange(G), per_group)
        starts = np.concatenate([[0], np.cumsum(per_group)[:-1]])
        order[group, np.arange(group.size) - starts[group]] = np.repeat(by.ravel(), reps)
        return order
    flat = count.ravel()
    group = np.repeat(np.repeat(np.arange(G), I), flat)                  # one entry per replica
    item = np.repeat(np.tile(np.arange(I), G), flat)
    first = np.ones(group.size, dtype=bool)
    first[1:] = (item[1:] != item[:-1]) | (group[1:] != group[:-1])
    heavy = -per_replica[group, item]
    n_cand = np.where(first, _n_candidates(problem)[group, item], 0)
    by = np.lexsort((heavy, n_cand, ~first, group))
    starts = np.concatenate([[0], np.cumsum(per_group)[:-1]])
    order[group[by], np.arange(group.size) - starts[group[by]]] = item[by]
    return order


class _Steps(NamedTuple):
    """Step 2's placing order as per-step terms: step k places the k-th replica of every group
    (``R`` steps, the most replicas of a group). Step-major arrays ([R, ...]) give step k's terms
    as one row; [R, G, 1] ones broadcast over the bins."""

    item_at: np.ndarray       # [G, R] item of each group's k-th replica (0 past its last)
    active: np.ndarray        # [G, R] the group has a k-th replica
    item_k: np.ndarray        # [R, G] item_at, step-major
    w_k: np.ndarray           # [R, G] the replica's load (0 where inactive)
    w_kb: np.ndarray | None   # [R, G, 1] w_k to broadcast; None with equal speeds (w then leaves the argmin unchanged)
    fill_k: np.ndarray        # [R, G, 1] the load left after step k over the slots left
    inv_speed: np.ndarray     # [B]
    barred_row: np.ndarray    # [R, G] row (g, item) of ``barred`` [G * I, B]
    barred_at: np.ndarray     # [R, G] barred's flat index of (g, item, b) less the flat index g * B + b
    everyone: np.ndarray      # [R] bool: every group places a replica
    set_barred: np.ndarray    # [R] bool: some item has other replicas: bar the bin it takes
    use_barred: np.ndarray    # [R] bool: some bin may be barred (a mask, or an item's later replica)
    check: np.ndarray         # [R] bool: some group may find no bin (see :func:`_run_steps`)
    memory_binds: bool        # some capacity is finite and some item has weight


def _step_terms(problem: ReplicatedAssignment, count: np.ndarray, mandatory_first: bool) -> _Steps:
    """The per-step terms of :func:`_run_steps` for replica counts ``count`` [G, I]."""
    G, I, B = problem.shape
    per_replica = problem.load / count
    order = _replica_order(problem, count, per_replica, mandatory_first)   # [G, R]
    R = order.shape[1]
    rows = np.arange(G)
    active = order >= 0
    item_at = np.where(active, order, 0)
    w_at = np.where(active, per_replica[rows[:, None], item_at], 0.0)    # [G, R]
    left = w_at[:, ::-1].cumsum(axis=1)[:, ::-1] - w_at                   # load placed after step k
    fill_at = left / np.maximum(problem.slots.sum() - 1 - np.arange(R), 1)
    same_speed = bool(np.all(problem.speed == problem.speed[0]))  # then w and speed do not change the argmin
    any_mask = not problem.mask.all()
    memory_binds = bool(np.isfinite(problem.capacity).any() and problem.weight.any())
    fill_k = np.ascontiguousarray(fill_at.T)[:, :, None]                  # [R, G, 1]
    w_k = np.ascontiguousarray(w_at.T)                                    # [R, G]
    w_kb = None if same_speed else w_k[:, :, None]
    item_k = np.ascontiguousarray(item_at.T)                              # [R, G]
    barred_row = item_k + rows[None, :] * I                               # [R, G] row (g, item at step k) of barred
    barred_at = barred_row * B - rows[None, :] * B                        # + flat index (g, b): barred's (g, i, b)
    several = active & (count[rows[:, None], item_at] > 1)               # [G, R] the item has other replicas
    if mandatory_first:
        again = several                                                   # (a superset of the later replicas)
    else:                                                                 # an item's replicas are consecutive
        again = several & np.concatenate([np.zeros((G, 1), dtype=bool), order[:, 1:] == order[:, :-1]], axis=1)
    everyone = active.all(axis=0)
    use_barred = again.any(axis=0) | any_mask
    return _Steps(item_at, active, item_k, w_k, w_kb, fill_k, 1.0 / problem.speed, barred_row, barred_at, everyone,
                  several.any(axis=0), use_barred, use_barred | ~everyone | memory_binds, memory_binds)


def _empty_bins(problem: ReplicatedAssignment) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The bins before Step 2: barred [G * I, B] (+inf where bin b is no candidate of (g, i), 0
    elsewhere), level [G, B] (load placed; +inf on a bin without slots: full from the start) and
    spare [G, B] (free slots - 1)."""
    G, I, B = problem.shape
    barred = np.where(problem.mask, 0.0, np.inf).reshape(G * I, B)
    level = np.zeros((G, B))
    level[:, problem.slots < 1] = np.inf
    spare = np.broadcast_to(problem.slots - 1.0, (G, B)).copy()
    return barred, level, spare


def _admit_memory(problem: ReplicatedAssignment, mem: np.ndarray, items: np.ndarray, flat: np.ndarray,
                  row_start: np.ndarray, groups) -> np.ndarray:
    """Admit the chosen bins' replicas in group order while memory lasts: groups of one step may pick
    the same bin, each seeing only its own replica. ``items`` [G] the step's items, ``flat`` [G] the
    flat (g, b) picked; ``mem`` [B] (bytes) gains the admitted weights. Returns retry [G]: the groups
    turned away, which choose again."""
    retry = np.zeros(row_start.size, dtype=bool)
    groups = np.asarray(groups, dtype=np.int64)
    bins = flat[groups] - row_start[groups]
    weight = problem.weight[items[groups], bins]
    # A bin whose every pick fits takes them all (the same sums, added in the same order); only the
    # groups of an overflowing bin are admitted one after another.
    total = mem.copy()
    np.add.at(total, bins, weight)
    fits = total <= problem.capacity
    mem[fits] = total[fits]
    for g, b, w in zip(groups[~fits[bins]].tolist(), bins[~fits[bins]].tolist(), weight[~fits[bins]].tolist(), strict=True):
        if mem[b] + w <= problem.capacity[b]:
            mem[b] += w
        else:
            retry[g] = True
    return retry


def _run_steps(problem: ReplicatedAssignment, steps: _Steps, barred: np.ndarray, level: np.ndarray,
               spare: np.ndarray) -> np.ndarray:
    """Step 2's lockstep loop; returns placed [R, G], the flat (g, b) of step k's replica (-1: none),
    and leaves ``barred``, ``level`` and ``spare`` (see :func:`_empty_bins`) as the placement does.

    A step is a few whole-array operations on [G, B]: what blocks a bin lives in the score's own
    terms (a full bin's level is +inf; ``barred`` is +inf where a bin may not take the item, being no
    candidate or holding it already, and 0 elsewhere, so adding it leaves the formula's value
    unchanged), and the work a step cannot need is skipped: ``barred`` only for items with several
    replicas or with a candidate mask, the check for a group with no bin left only where one can
    arise (masks, memory, an item's second or later replica, groups done). Memory is checked only
    in the steps where it could bind: while every bin has room for a replica of its heaviest item
    from every group at once (with a margin for rounding), no pick can overflow one, and the step
    only adds its weights (the same additions, in the same order, as the admission would).
    """
    # Locals, not attributes: this loop is the hot path of the greedy.
    (_, active, item_k, w_k, w_kb, fill_k, inv_speed, barred_row, barred_at, everyone, set_barred, use_barred, check,
     memory_binds) = steps
    G, _, B = problem.shape
    R = item_k.shape[0]
    barred_flat, level_flat, spare_flat = barred.ravel(), level.ravel(), spare.ravel()
    placed = np.full((R, G), -1, dtype=np.int64)
    mem = np.zeros(B)
    row_start = np.arange(G) * B
    ones = np.ones(G)
    score = np.empty((G, B))
    score_flat = score.ravel()
    if memory_binds:
        check_free = use_barred | ~everyone                 # ``check`` in a step where memory cannot bind
        every_group = G * problem.weight.max(axis=0)      # [B] a replica of the heaviest item from every group
        roomy = problem.capacity * (1.0 - 1e-9)           # the margin covers the additions' rounding
    for k in range(R):
        todo = None if everyone[k] else active[:, k]      # None: every group places a replica
        while True:
            binds = memory_binds and not (mem + every_group <= roomy).all()
            np.multiply(spare, fill_k[k], out=score)
            score += level
            if w_kb is not None:
                score += w_kb[k]
                score *= inv_speed
            if use_barred[k]:
                score += barred[barred_row[k]]
            if binds:
                score[mem + problem.weight[item_k[k]] > problem.capacity] = np.inf
            if todo is not None:
                score[~todo] = np.inf
            flat = score.argmin(axis=1)
            flat += row_start
            w, r, retry = w_k[k], None, None
            if (check[k] if binds or not memory_binds else check_free[k]) and not score_flat[flat].dot(ones) < np.inf:
                take = score_flat[flat] < np.inf       # some group has no bin left: its replica is dropped
                if binds:
                    retry = _admit_memory(problem, mem, item_k[k], flat, row_start, np.flatnonzero(take))
                    take[retry] = False
                r = np.flatnonzero(take)
                flat, w = flat[r], w[r]
                if memory_binds and not binds:
                    np.add.at(mem, flat - row_start[r], problem.weight[item_k[k, r], flat - row_start[r]])
            elif binds:
                retry = _admit_memory(problem, mem, item_k[k], flat, row_start, range(G))
                if retry.any():
                    r = np.flatnonzero(~retry)
                    flat, w = flat[r], w[r]
            elif memory_binds:
                bins = flat - row_start
                np.add.at(mem, bins, problem.weight[item_k[k], bins])
            if r is None:
                placed[k] = flat
                if set_barred[k]:
                    barred_flat[barred_at[k] + flat] = np.inf
            else:
                placed[k, r] = flat
                if set_barred[k]:
                    barred_flat[barred_at[k, r] + flat] = np.inf
            level_flat[flat] += w
            free = spare_flat[flat]
            spare_flat[flat] = free - 1.0
            if np.count_nonzero(free) < free.size:       # a bin took its last free slot
                level_flat[flat[free < 1.0]] = np.inf
            if retry is None or not retry.any():
                break
            todo = retry
    return placed


def _replicas(problem: ReplicatedAssignment, item_at: np.ndarray, placed: np.ndarray, spare: np.ndarray) -> tuple:
    """Step 2's result from placed [R, G] (see :func:`_run_steps`): (y [G, I, B]; g, i, b of the
    replicas placed; rcount [G, I]); raises :class:`_NoPlacement` if an item has no replica."""
    G, I, B = problem.shape
    k, g = np.nonzero(placed >= 0)
    i, b = item_at[g, k], placed[k, g] - g * B
    y = np.zeros((G, I, B), dtype=bool)
    y[g, i, b] = True
    if np.count_nonzero(y) != k.size or spare.min(initial=0.0) < -1:
        raise AssertionError("Step 2 put a replica on a bin that could not take it")
    rcount = np.bincount(g * I + i, minlength=G * I).reshape(G, I)
    missing = np.argwhere(rcount == 0)
    if missing.size:
        g, i = missing[0]
        raise _NoPlacement(f"item ({g}, {i}) fits on no candidate bin (slots or memory are used up); "
                           f"{len(missing)} item(s) without a replica")
    return y, g, i, b, rcount


def _place(problem: ReplicatedAssignment, count: np.ndarray, mandatory_first: bool) -> tuple:
    """Step 2: (y [G, I, B] replicas; g, i, b the groups, items and bins of the replicas placed;
    rcount [G, I] replicas per item); raises :class:`_NoPlacement` if an item gets none.

    A bin's score for a replica of load w is ``(level + w + (free - 1) * fill) / speed``: its time
    after taking the replica, plus the load its other free slots will still receive, estimated as
    the load left to place spread evenly over the slots left (``fill``). Without that look-ahead
    the last, smallest replicas are forced onto the slow bins' free slots and overload them.
    Groups are placed in lockstep (the k-th replica of every group at once); only memory couples
    them, and groups that pick the same bin in one step are then admitted in group order.
    """
    steps = _step_terms(problem, count, mandatory_first)
    barred, level, spare = _empty_bins(problem)
    placed = _run_steps(problem, steps, barred, level, spare)
    return _replicas(problem, steps.item_at, placed, spare)


def _greedy(problem: ReplicatedAssignment) -> _State:
    """Steps 1-3."""
    G, I, B = problem.shape
    n_cand = _n_candidates(problem)
    if np.any(n_cand == 0):
        g, i = np.argwhere(n_cand == 0)[0]
        raise _NoPlacement(f"item ({g}, {i}) has no candidate bin")
    reach = _reach(problem)
    limit = np.minimum(problem.max_replicas, n_cand)
    count = _replica_counts(problem, reach, limit)
    try:
        y, g, i, b, rcount = _place(problem, count, mandatory_first=False)
    except _NoPlacement:
        y, g, i, b, rcount = _place(problem, count, mandatory_first=True)
    s = np.zeros((G, I, B))
    s[g, i, b] = 1.0 / rcount[g, i]                    # equal shares to start
    cnt = np.bincount(g * B + b, minlength=G * B).reshape(G, B)
    st = _State(problem, y, s, cnt=cnt, rcount=rcount)
    _balance_shares(st, np.arange(G))
    return st


# ----- Step 4 ----------------------------------------------------------------------------------

class _Search:
    """Step 4 on a :class:`_State`."""

    def __init__(self, st: _State, lower: np.ndarray):
        self.st = st
        self.p = st.p
        self.lower = lower
        self.rcount = st.rcount
        self.moves = 0

    def _others_max(self, t: np.ndarray, first: int) -> np.ndarray:
        """[B]: the largest time among bins other than ``first`` and b."""
        rest = t.copy()
        rest[first] = -np.inf
        second = int(np.argmax(rest))
        top2 = rest[second]
        rest[second] = -np.inf
        out = np.full(t.shape, top2)
        out[second] = rest.max()
        out[first] = top2
        return out

    def _memory_ok(self, b, add_items, drop_items) -> np.ndarray:
        p = self.p
        return self.st.mem[b] + p.weight[add_items, b] - p.weight[drop_items, b] <= p.capacity[b]

    def best_move(self, g: int):
        """The best move at group g's slowest bin as (kind, data), or None.

        A move must not raise the group's time plus traffic (shares held). Best is the largest
        drop of that objective; among moves that leave it unchanged (several bins tie at the
        maximum, as water-filling makes them), the largest drop of ``sum_b load_b**2 / speed_b``,
        which the next water-filling turns into a lower maximum. Both must exceed a relative 1e-9.
        """
        st, p = self.st, self.p
        sp = p.speed
        t = st.times(g)
        top = int(np.argmax(t))
        tmax = t[top]
        items = np.flatnonzero(st.y[g, :, top] & (st.s[g, :, top] > 0))
        if items.size == 0:
            return None
        a = p.load[g, items] * st.s[g, items, top]                                     # [n] amounts on top
        others = self._others_max(t, top)                                               # [B]
        tw = p.traffic_weight
        tol_obj = 1e-9 * tmax
        tol_quad = 1e-9 * float(np.sum(st.L[g] * t))
        best_key, best = (False, 0.0), None

        def consider(moved, to_bins, cost, ok, describe):
            """moved [n, m]: net amount leaving top for bins to_bins [m]; describe(index) -> (kind, data)."""
            nonlocal best_key, best
            new_max = np.maximum.reduce([tmax - moved / sp[top], t[to_bins] + moved / sp[to_bins],
                                         np.broadcast_to(others[to_bins], moved.shape)])
            gain = np.where(ok, tmax - new_max - cost, -np.inf)
            quad = ((st.L[g, top] ** 2 - (st.L[g, top] - moved) ** 2) / sp[top]
                    + (st.L[g, to_bins] ** 2 - (st.L[g, to_bins] + moved) ** 2) / sp[to_bins])
            if gain.max() > tol_obj:
                idx = np.unravel_index(int(np.argmax(gain)), gain.shape)
                key = (True, float(gain[idx]))
            else:
                flat = np.where(gain >= 0, quad, -np.inf)
                idx = np.unravel_index(int(np.argmax(flat)), flat.shape)
                if flat[idx] <= tol_quad:
                    return
                key = (False, float(flat[idx]))
            if key > best_key:
                best_key, best = key, describe(idx)

        # move item i's replica from top to bin b (or add one there, when the item may have another)
        free = (st.cnt[g] < p.slots) & (np.arange(t.size) != top)
        fits = p.mask[g, items] & ~st.y[g, items] & free[None, :]
        fits &= st.mem[None, :] + p.weight[items] <= p.capacity[None, :]
        if fits.any():
            bins = np.arange(t.size)
            room = np.maximum(tmax - t, 0.0) / (1 / sp[top] + 1 / sp)                   # [B] amount that levels
            can_add = (self.rcount[g, items] < p.max_replicas[g, items])[:, None]
            amount = np.where(can_add, np.minimum(a[:, None], room[None, :]), a[:, None])
            cost = tw * (p.traffic[g, items, :] - p.traffic[g, items, top][:, None]) * amount if tw > 0 else 0.0

            def move_data(idx):
                n, b = idx
                kind = "add" if amount[n, b] < a[n] * (1 - 1e-12) else "move"
                return kind, (int(items[n]), int(b), float(amount[n, b]))

            consider(amount, bins, cost, fits, move_data)

        # swap item i on top with item j on bin b
        j_idx, b_idx = np.nonzero(st.y[g] & ~st.y[g, :, top][:, None])
        if j_idx.size:
            c = p.load[g, j_idx] * st.s[g, j_idx, b_idx]                                 # [m]
            d = a[:, None] - c[None, :]                                                 # [n, m] net amount moved
            ok = (d > 0) & p.mask[g, items][:, b_idx] & ~st.y[g, items][:, b_idx] & p.mask[g, j_idx, top][None, :]
            if p.weight.any():
                ok &= self._memory_ok(top, j_idx[None, :], items[:, None])
                ok &= self._memory_ok(b_idx[None, :], items[:, None], j_idx[None, :])
            cost = 0.0
            if tw > 0:
                cost = tw * ((p.traffic[g, items][:, b_idx] - p.traffic[g, items, top][:, None]) * a[:, None]
                             + (p.traffic[g, j_idx, top] - p.traffic[g, j_idx, b_idx])[None, :] * c[None, :])
            consider(d, b_idx, cost, ok, lambda idx: ("swap", (int(items[idx[0]]), int(j_idx[idx[1]]), int(b_idx[idx[1]]))))
        return best

    def apply(self, g: int, kind: str, data) -> tuple[int, ...]:
        """Apply a move; returns the bins it touched."""
        st, p = self.st, self.p
        top = int(np.argmax(st.times(g)))
        if kind in ("move", "add"):
            i, b, amount = data
            share = amount / p.load[g, i]
            self._set(g, i, b, True)
            st.s[g, i, b] = share
            st.s[g, i, top] -= share
            if kind == "move":
                st.s[g, i, top] = 0.0
                self._set(g, i, top, False)
            st.L[g, b] += amount
            st.L[g, top] -= amount
            return top, b
        i, j, b = data
        si, sj = st.s[g, i, top], st.s[g, j, b]
        self._set(g, i, top, False)
        self._set(g, j, b, False)
        self._set(g, i, b, True)
        self._set(g, j, top, True)
        st.s[g, i, top], st.s[g, j, b], st.s[g, i, b], st.s[g, j, top] = 0.0, 0.0, si, sj
        delta = p.load[g, i] * si - p.load[g, j] * sj
        st.L[g, top] -= delta
        st.L[g, b] += delta
        return top, b

    def _set(self, g: int, i: int, b: int, on: bool) -> None:
        st, sign = self.st, (1 if on else -1)
        st.y[g, i, b] = on
        st.cnt[g, b] += sign
        st.mem[b] += sign * self.p.weight[i, b]
        self.rcount[g, i] += sign

    def relocate(self, g: int) -> bool:
        """Free a slot near the slowest bin by dropping another item's spare replica, then add a
        replica of an item from the slowest bin there; kept only if the group improves."""
        st, p = self.st, self.p
        t = st.times(g)
        top = int(np.argmax(t))
        items = np.flatnonzero(st.y[g, :, top] & (self.rcount[g] < p.max_replicas[g]) & (p.load[g] > 0))
        if items.size == 0:
            return False
        before = st.group_objective(g)
        spare = st.y[g] & (self.rcount[g] > 1)[:, None]
        spare[:, top] = False
        for b in np.argsort(t, kind="stable")[:4]:
            donors = np.flatnonzero(spare[:, b])
            takers = items[p.mask[g, items, b] & ~st.y[g, items, b]]
            if donors.size == 0 or takers.size == 0:
                continue
            j = int(donors[np.argmin(st.s[g, donors, b] * p.load[g, donors])])
            i = int(takers[np.argmax(st.s[g, takers, top] * p.load[g, takers])])
            if not self._memory_ok(b, i, j):
                continue
            saved = (st.y[g].copy(), st.s[g].copy(), st.L[g].copy(), st.cnt[g].copy(), st.mem.copy(),
                     self.rcount[g].copy())
            self._set(g, j, b, False)
            st.s[g, j, b] = 0.0
            rest = st.s[g, j].sum()
            st.s[g, j] = st.s[g, j] / rest if rest > 0 else st.y[g, j] / st.y[g, j].sum()
            self._set(g, i, b, True)
            st.L[g] = p.load[g] @ st.s[g]
            gi = np.array([g])
            _fill(st, _FillBatch(st, gi, np.array([j])))
            _fill(st, _FillBatch(st, gi, np.array([i])))
            if st.group_objective(g) < before - _EPS * max(before, 1.0):
                return True
            st.y[g], st.s[g], st.L[g], st.cnt[g], st.mem[:], self.rcount[g] = saved
        return False

    def refill(self, g: int, bins) -> None:
        """Re-water-fill the replicated items on ``bins`` (kept only if the group does not get worse)."""
        st = self.st
        touched = np.flatnonzero(st.y[g][:, list(bins)].any(axis=1) & (self.rcount[g] > 1))
        if touched.size == 0:
            return
        before = st.group_objective(g)
        saved = (st.s[g].copy(), st.L[g].copy())
        gi = np.array([g])
        for i in touched:
            _fill(st, _FillBatch(st, gi, np.array([i])))
        if st.group_objective(g) > before:
            st.s[g], st.L[g] = saved

    def run(self, deadline: float, max_moves: int, rng: np.random.Generator) -> str:
        st = self.st
        G = st.y.shape[0]
        stuck = np.zeros(G, dtype=bool)
        tiebreak = rng.permutation(G)
        while self.moves < max_moves:
            if time.perf_counter() >= deadline:
                return "time budget"
            excess = (st.L / self.p.speed).max(axis=1) - self.lower
            excess[stuck | (excess <= _EPS * np.maximum(self.lower, 1.0))] = -np.inf
            if not np.isfinite(excess).any():
                return "local optimum"
            g = int(tiebreak[np.argmax(excess[tiebreak])])
            move = self.best_move(g)
            if move is not None:
                bins = self.apply(g, *move)
                self.refill(g, bins)
            elif not self.relocate(g):
                stuck[g] = True
                continue
            self.moves += 1
            if self.p.weight.any():
                stuck[:] = False  # memory moved: other groups may have new moves
            else:
                stuck[g] = False
        return "move limit"


# ----- solvers ---------------------------------------------------------------------------------

def _check_objective(problem: ReplicatedAssignment, name: str, t0: float) -> Result | None:
    if problem.objective != "bottleneck":
        return Result(Status.ERROR, name, sense="min", solve_time_s=time.perf_counter() - t0,
                      message=f"{name} handles objective 'bottleneck' only, got {problem.objective!r}")
    return None


SHARED_OPTIONS = ("threads", "rel_gap", "abs_gap")  # accepted for harnesses that pass them to every solver; unused


def _unknown_options(name: str, options: dict, known: tuple[str, ...]) -> None:
    extra = sorted(set(options) - set(known) - set(SHARED_OPTIONS))
    if extra:
        raise ValueError(f"unknown option(s) {', '.join(extra)} for {name}; known: {', '.join(known) or '(none)'} "
                         f"(and {', '.join(SHARED_OPTIONS)}, which these single-threaded heuristics ignore)")


def _finish(name: str, problem: ReplicatedAssignment, sol: AssignmentSolution, t0: float, bound: float,
            stop_reason: str, times: np.ndarray | None = None, extra: dict | None = None,
            checked: bool = False) -> Result:
    """A FEASIBLE result with balancedness in ``extra`` (from ``times`` [G, B], the bins' loads over
    their speeds, when the caller has them); ERROR if the solution breaks a constraint (not
    checked again when the caller has ``checked`` it)."""
    broken = [] if checked else violations(problem, sol)
    if broken:
        return Result(Status.ERROR, name, sense="min", solve_time_s=time.perf_counter() - t0,
                      message="the placement breaks constraints: " + "; ".join(broken[:5]))
    times = bin_loads(problem, sol) if times is None else times
    metrics = {"balancedness": balancedness(times), "mean_balancedness": mean_balancedness(times)}
    return Result(Status.FEASIBLE, name, objective=objective_value(problem, sol), bound=bound,
                  solve_time_s=time.perf_counter() - t0, solution=sol, sense="min", stop_reason=stop_reason,
                  extra={**metrics, **(extra or {})})


def group_lower_bounds(problem: ReplicatedAssignment) -> np.ndarray:
    """Per group [G], a lower bound on its bottleneck time (traffic ignored, so it stays valid): no
    placement beats all load on all speed, nor item i's load over the speed of its ``max_replicas``
    fastest candidate bins (inf for an item without a candidate bin). Their sum bounds the objective."""
    limit = np.minimum(problem.max_replicas, np.maximum(_n_candidates(problem), 1))
    rows, items = np.indices(limit.shape)
    best = _reach(problem)[rows, items, limit - 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        best_item = np.where(best > 0, problem.load / best, np.inf)
    return np.maximum(problem.load.sum(axis=1) / problem.speed.sum(), best_item.max(axis=1, initial=0.0))


@register("greedy-placement", kind="heuristic", problem="assignment",
          description="replica counts, largest-first placement, water-filled shares (Steps 1-3)")
def solve_greedy_placement(problem: ReplicatedAssignment, *, time_limit=None, seed=0, initial_solution=None,
                           **options) -> Result:
    """Steps 1-3; deterministic (``seed``, ``time_limit`` and ``initial_solution`` are not used)."""
    name = "greedy-placement"
    _unknown_options(name, options, ())
    t0 = time.perf_counter()
    bad = _check_objective(problem, name, t0)
    if bad:
        return bad
    try:
        st = _greedy(problem)
    except _NoPlacement as why:
        return Result(Status.INFEASIBLE, name, sense="min", solve_time_s=time.perf_counter() - t0,
                      message=f"the greedy found no placement: {why}", stop_reason="no placement")
    return _finish(name, problem, AssignmentSolution(st.y, st.s), t0, float(group_lower_bounds(problem).sum()), "greedy done",
                   st.L / problem.speed)


@register("local-search-placement", kind="heuristic", problem="assignment",
          description="greedy placement improved by moves, swaps and replica changes (Steps 1-4)")
def solve_local_search_placement(problem: ReplicatedAssignment, *, time_limit=None, seed=0, initial_solution=None,
                                 **options) -> Result:
    """Steps 1-4 (or Step 4 from ``initial_solution``). Options: ``time_budget_s`` (default 0.05) for
    the search, capped by ``time_limit``; ``max_moves`` (default 100000). The result is the same for
    the same seed whenever the search ends at a local optimum or the move limit within its budget
    (``stop_reason`` says which)."""
    name = "local-search-placement"
    _unknown_options(name, options, ("time_budget_s", "max_moves"))
    budget = float(options.get("time_budget_s", 0.05))
    max_moves = int(options.get("max_moves", 100_000))
    if not (budget >= 0 and math.isfinite(budget)) or max_moves < 0:
        raise ValueError(f"time_budget_s must be a finite number >= 0 and max_moves >= 0, got {budget!r}, {max_moves!r}")
    t0 = time.perf_counter()
    bad = _check_objective(problem, name, t0)
    if bad:
        return bad
    if initial_solution is not None:
        broken = violations(problem, initial_solution)
        if broken:
            raise ValueError("initial_solution breaks constraints: " + "; ".join(broken[:5]))
        y = np.asarray(initial_solution.replicas, dtype=bool).copy()
        st = _State(problem, y, np.asarray(initial_solution.shares, dtype=float) * y)
    else:
        try:
            st = _greedy(problem)
        except _NoPlacement as why:
            return Result(Status.INFEASIBLE, name, sense="min", solve_time_s=time.perf_counter() - t0,
                          message=f"the greedy found no placement: {why}", stop_reason="no placement")
    lower = group_lower_bounds(problem)
    if time_limit is not None:
        budget = min(budget, max(0.0, float(time_limit) - (time.perf_counter() - t0)))
    search = _Search(st, lower)
    stop = search.run(time.perf_counter() + budget, max_moves, np.random.default_rng(seed))
    st.L = np.einsum("gi,gib->gb", problem.load, st.s)  # drop the rounding of many small updates
    return _finish(name, problem, st.solution(), t0, float(lower.sum()), stop, st.L / problem.speed,
                   extra={"moves": search.moves})


@register("eplb", kind="baseline", problem="assignment",
          description="DeepSeek EPLB (global policy) on the slots; blind to speed, memory and masks")
def solve_eplb(problem: ReplicatedAssignment, *, time_limit=None, seed=0, initial_solution=None, **options) -> Result:
    """EPLB with ``num_gpus = B`` and ``num_replicas = B * slots``; needs the same slots on every bin.

    EPLB knows only the slots: it treats bins as identical and ignores masks, memory and
    ``max_replicas``; a placement that breaks one of them is reported INFEASIBLE. Replicas get equal
    shares (EPLB's routing); two replicas of one item that EPLB puts on the same bin become one
    replica with their shares added (``extra["merged_duplicates"]`` counts them). EPLB's own maps,
    duplicates included, are in ``extra["phy2log"]``, ``extra["log2phy"]`` and ``extra["logcnt"]``.
    Options ``num_groups`` and ``num_nodes`` select EPLB's hierarchical policy.
    """
    name = "eplb"
    _unknown_options(name, options, ("num_groups", "num_nodes"))
    t0 = time.perf_counter()
    bad = _check_objective(problem, name, t0)
    if bad:
        return bad
    G, I, B = problem.shape

    def infeasible(message: str) -> Result:
        return Result(Status.INFEASIBLE, name, sense="min", message=message, stop_reason="no placement",
                      solve_time_s=time.perf_counter() - t0)

    per_bin = int(problem.slots[0])
    if np.any(problem.slots != per_bin):
        return infeasible(f"EPLB needs the same number of slots on every bin, got {problem.slots.tolist()}")
    if B * per_bin < I:
        return infeasible(f"EPLB needs a slot per item: {I} items, {B * per_bin} slots")
    phy2log, log2phy, logcnt = eplb_rebalance(problem.load, B * per_bin, B, num_groups=int(options.get("num_groups", 1)),
                                              num_nodes=int(options.get("num_nodes", 1)))
    g = np.repeat(np.arange(G), B * per_bin)
    items = phy2log.ravel()
    bins = np.tile(np.repeat(np.arange(B), per_bin), G)
    # Each copy's share 1 / logcnt, copies on one bin added (np.add.at's sums, in slot order).
    shares = np.bincount((g * I + items) * B + bins, weights=1.0 / logcnt[g, items], minlength=G * I * B).reshape(G, I, B)
    replicas = np.zeros((G, I, B), dtype=bool)
    replicas[g, items, bins] = True
    sol = AssignmentSolution(replicas, shares)
    broken = violations(problem, sol)
    if broken:
        return infeasible("EPLB's placement (it knows only the slots) breaks: " + "; ".join(broken[:5]))
    return _finish(name, problem, sol, t0, float(group_lower_bounds(problem).sum()), "eplb done",
                   extra={"merged_duplicates": int(G * B * per_bin - replicas.sum()),
                          "phy2log": phy2log, "log2phy": log2phy, "logcnt": logcnt}, checked=True)
