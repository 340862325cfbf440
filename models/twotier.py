"""Two-tier split with offloadable items: a prefix of layers on a "near" machine, the rest on a
"far" one, each near layer's items (experts) either kept near or served far, and one option
(codec) chosen for the cut. Generic data; no MoE words.

Shapes: ``L`` layers, ``E`` items per layer, ``K`` cut options, ``J`` links on the near-far route,
``P`` phases (e.g. prefill and decode; latency is taken per phase because the near/far race of a
layer is a max inside each phase).

Decisions
    a[l]    1 if layer l is near; the near layers form a prefix: a[l] >= a[l+1]
    x[l,e]  1 if item e of layer l is served near (only possible when a[l] = 1 and allowed[l,e])
    u[l]    1 if near layer l sends some item far (u >= a - x for every item that exists)
    z[k]    the cut option (sum z = 1); y[k] = z[k] AND cut, where cut = a[0] - a[L-1]
Latency of phase p
    lat_p = sum_l [ a ne_near + (1-a)(ne_far + sum_e far_lat) + m_lp ] + embedding/head terms
            + sum_k y[k] cut_lat[k,p] + (1-a[0]) entry_lat[p] + (1-a[L-1]) exit_lat[p]
    m_lp >= sum_e x near_lat[l,e,p];  m_lp >= u fixed_lat[p] + sum_e (a - x)(far_lat + link_lat)[l,e,p]
Request latency R = sum_p lat_weight[p] lat_p.
Busy time per request of each resource (near, far, every link): linear in a, x, y (coefficients
already weighted by phase multiplicity).
Objectives
    "throughput": minimise T with T >= busy_r for every resource and concurrency * T >= R
                  (requests/s = 1 / T)
    "latency":    minimise R
    "energy":     minimise sum_d idle_w[d] used_d T + sum_d (power_w[d] - idle_w[d]) busy_d with T as above
                  (``used_d``: near is used iff a[0] = 1, far iff a[L-1] = 0; the solver fixes these by cases)
Constraints: memory of near and far, accuracy sum_k loss[k] y[k] <= budget, optional caps on R,
lat_p, and T.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

OBJECTIVES = ("throughput", "latency", "energy")
NEAR, FAR = 0, 1


@dataclass(frozen=True)
class TwoTierProblem:
    """Coefficients (seconds, bytes, watts). Index ``r`` of busy arrays: 0 near, 1 far, 2.. links.

    ne_lat:        [2, L, P]     non-item latency of layer l near (0) / far (1)
    ne_busy:       [2, L]        non-item busy time per request near / far
    item_lat:      [2, L, E, P]  latency of item e of layer l when served near (0) / far (1)
    item_busy:     [2, L, E]     busy time per request of the item near / far
    item_link_lat: [L, E, P]     extra latency of sending the item's tokens far and back
    item_link_busy:[J, L, E]     link busy per request of that traffic
    fixed_lat:     [P]           round-trip propagation when a near layer uses any far item
    allowed:       [L, E]        item may be served near (False: absent items have zero coefficients)
    exists:        [L, E]        the item exists (layers without items have none)
    ends_lat:      [2, 2, P]     [first/last, near/far]: embedding (with layer 0) / head (with layer L-1)
    ends_busy:     [2, 2]        same, busy per request
    cut_lat:       [K, P]; cut_busy: [2 + J, K]; cut_loss: [K]; cut_mem: [2, K]
    entry_lat/exit_lat: [P]; entry_busy/exit_busy: [J]   (origin <-> far, when layer 0 / L-1 is far)
    ne_mem:        [2, L]; item_mem: [L, E]; ends_mem: [2, 2] ([first/last, near/far]);
    head_tied_mem: float         memory not needed when one machine holds both ends (tied embeddings)
    workspace_mem: [2]; capacity: [2]
    lat_weight:    [P]           request latency = sum_p lat_weight[p] * lat_p
    concurrency:   float         requests in flight
    power_w, idle_w: [2]
    """

    ne_lat: np.ndarray
    ne_busy: np.ndarray
    item_lat: np.ndarray
    item_busy: np.ndarray
    item_link_lat: np.ndarray
    item_link_busy: np.ndarray
    fixed_lat: np.ndarray
    allowed: np.ndarray
    exists: np.ndarray
    ends_lat: np.ndarray
    ends_busy: np.ndarray
    cut_lat: np.ndarray
    cut_busy: np.ndarray
    cut_loss: np.ndarray
    cut_mem: np.ndarray
    entry_lat: np.ndarray
    exit_lat: np.ndarray
    entry_busy: np.ndarray
    exit_busy: np.ndarray
    ne_mem: np.ndarray
    item_mem: np.ndarray
    ends_mem: np.ndarray
    head_tied_mem: float
    workspace_mem: np.ndarray
    capacity: np.ndarray
    lat_weight: np.ndarray
    concurrency: float
    power_w: np.ndarray
    idle_w: np.ndarray
    loss_budget: float = 0.0
    objective: str = "throughput"
    max_request_latency: float | None = None
    max_phase_latency: tuple = ()  # per phase: float or None
    max_period: float | None = None  # cap on T (a throughput floor)

    @property
    def num_layers(self) -> int:
        return self.ne_busy.shape[1]

    @property
    def num_items(self) -> int:
        return self.item_mem.shape[1]

    @property
    def num_links(self) -> int:
        return self.entry_busy.shape[0]

    @property
    def num_options(self) -> int:
        return self.cut_loss.shape[0]


@dataclass(frozen=True)
class TwoTierSolution:
    """near_layers: how many leading layers are near (0..L); near_items [L, E] bool; option: cut option index."""

    near_layers: int
    near_items: np.ndarray
    option: int


@dataclass(frozen=True)
class TwoTierValue:
    period: float          # T: seconds per request at saturation (requests/s = 1 / T)
    request_latency: float
    phase_latency: np.ndarray
    busy: np.ndarray       # [2 + J]
    memory: np.ndarray     # [2]
    loss: float
    energy: float

    def objective(self, kind: str) -> float:
        return {"throughput": self.period, "latency": self.request_latency, "energy": self.energy}[kind]


def evaluate(p: TwoTierProblem, s: TwoTierSolution) -> TwoTierValue:
    """The exact value of a solution under the formulation's own equations (used to check solvers)."""
    L, E = p.num_layers, p.num_items
    a = (np.arange(L) < s.near_layers).astype(float)
    x = np.where(a[:, None] > 0, s.near_items & p.exists, False).astype(float)
    away = (a[:, None] - x) * p.exists
    u = (away.max(axis=1) > 0).astype(float) if E else np.zeros(L)
    cut = float(a[0] - a[L - 1])
    y = np.zeros(p.num_options)
    y[s.option] = cut
    first, last = a[0], a[L - 1]
    near_items = np.einsum("le,lep->lp", x, p.item_lat[NEAR])
    far_path = u[:, None] * p.fixed_lat[None, :] + np.einsum("le,lep->lp", away, p.item_lat[FAR] + p.item_link_lat)
    race = a[:, None] * np.maximum(near_items, far_path)
    far_all = np.einsum("le,lep->lp", p.exists.astype(float), p.item_lat[FAR])
    lat = (a[:, None] * p.ne_lat[NEAR] + (1 - a)[:, None] * (p.ne_lat[FAR] + far_all) + race).sum(axis=0)
    lat += first * p.ends_lat[0, NEAR] + (1 - first) * p.ends_lat[0, FAR]
    lat += last * p.ends_lat[1, NEAR] + (1 - last) * p.ends_lat[1, FAR]
    lat += y @ p.cut_lat + (1 - first) * p.entry_lat + (1 - last) * p.exit_lat
    R = float(p.lat_weight @ lat)
    J = p.num_links
    busy = np.zeros(2 + J)
    busy[NEAR] = a @ p.ne_busy[NEAR] + (x * p.item_busy[NEAR]).sum() + first * p.ends_busy[0, NEAR] + last * p.ends_busy[1, NEAR]
    far_items = (p.exists - x) * p.exists
    busy[FAR] = ((1 - a) @ p.ne_busy[FAR] + (far_items * p.item_busy[FAR]).sum()
                 + (1 - first) * p.ends_busy[0, FAR] + (1 - last) * p.ends_busy[1, FAR])
    busy[2:] = (away[None] * p.item_link_busy).sum(axis=(1, 2)) + (1 - first) * p.entry_busy + (1 - last) * p.exit_busy
    busy += p.cut_busy @ y
    period = max(float(busy.max()), R / p.concurrency)
    mem = np.zeros(2)
    mem[NEAR] = (a @ p.ne_mem[NEAR] + (x * p.item_mem).sum() + first * p.ends_mem[0, NEAR] + last * p.ends_mem[1, NEAR]
                 - last * p.head_tied_mem + first * p.workspace_mem[NEAR])
    mem[FAR] = ((1 - a) @ p.ne_mem[FAR] + (far_items * p.item_mem).sum() + (1 - first) * p.ends_mem[0, FAR]
                + (1 - last) * p.ends_mem[1, FAR] - (1 - first) * p.head_tied_mem + (1 - last) * p.workspace_mem[FAR])
    mem += p.cut_mem @ y
    loss = float(p.cut_loss @ y)
    used = np.array([first, 1 - last])
    energy = float(used @ p.idle_w * period + (p.power_w - p.idle_w) @ busy[:2])
    return TwoTierValue(period, R, lat, busy, mem, loss, energy)


def violations(p: TwoTierProblem, s: TwoTierSolution, tol: float = 1e-9, value: TwoTierValue | None = None) -> list[str]:
    """Every constraint ``s`` breaks; ``value`` (its :func:`evaluate`) may be passed to save the work."""
    out = []
    L = p.num_layers
    if not 0 <= s.near_layers <= L:
        return [f"near_layers must be in 0..{L}"]
    if not 0 <= s.option < p.num_options:
        return [f"option must be in 0..{p.num_options - 1}"]
    bad = s.near_items[: s.near_layers] & ~p.allowed[: s.near_layers] & p.exists[: s.near_layers]
    if bad.any():
        out.append(f"{int(bad.sum())} items are near but not allowed there")
    v = value if value is not None else evaluate(p, s)
    for side, name in ((NEAR, "near"), (FAR, "far")):
        if v.memory[side] > p.capacity[side] * (1 + tol) + tol:
            out.append(f"{name} memory {v.memory[side]:.6g} exceeds {p.capacity[side]:.6g}")
    if v.loss > p.loss_budget + tol:
        out.append(f"loss {v.loss:.6g} exceeds budget {p.loss_budget:.6g}")
    if p.max_request_latency is not None and v.request_latency > p.max_request_latency * (1 + tol):
        out.append(f"request latency {v.request_latency:.6g} exceeds {p.max_request_latency:.6g}")
    for ph, cap in enumerate(p.max_phase_latency):
        if cap is not None and v.phase_latency[ph] > cap * (1 + tol):
            out.append(f"phase {ph} latency {v.phase_latency[ph]:.6g} exceeds {cap:.6g}")
    if p.max_period is not None and v.period > p.max_period * (1 + tol):
        out.append(f"period {v.period:.6g} exceeds {p.max_period:.6g}")
    return out


def evaluate_many(p: TwoTierProblem, near_layers: np.ndarray, near_items: np.ndarray, options: np.ndarray,
                  tol: float = 1e-9) -> np.ndarray:
    """Objective of N solutions at once (inf where a constraint breaks): the same equations as
    :func:`evaluate` and :func:`violations`, vectorised over a leading axis.

    near_layers: [N] ints; near_items: [N, L, E] bools; options: [N] ints. Returns [N] floats.
    """
    N, L = len(near_layers), p.num_layers
    a = (np.arange(L)[None, :] < np.asarray(near_layers)[:, None]).astype(float)           # [N, L]
    x = (near_items & p.exists[None] & (a[:, :, None] > 0)).astype(float)                   # [N, L, E]
    away = (a[:, :, None] - x) * p.exists[None]
    u = away.max(axis=2) if p.num_items else np.zeros((N, L))
    first, last = a[:, 0], a[:, L - 1]
    cut = first - last
    y = np.zeros((N, p.num_options))
    y[np.arange(N), options] = cut
    near_lat = np.einsum("nle,lep->nlp", x, p.item_lat[NEAR])
    far_path = u[:, :, None] * p.fixed_lat[None, None, :] + np.einsum("nle,lep->nlp", away, p.item_lat[FAR] + p.item_link_lat)
    race = a[:, :, None] * np.maximum(near_lat, far_path)
    far_all = np.einsum("le,lep->lp", p.exists.astype(float), p.item_lat[FAR])
    lat = (a[:, :, None] * p.ne_lat[NEAR][None] + (1 - a)[:, :, None] * (p.ne_lat[FAR] + far_all)[None] + race).sum(axis=1)
    lat += first[:, None] * p.ends_lat[0, NEAR] + (1 - first)[:, None] * p.ends_lat[0, FAR]
    lat += last[:, None] * p.ends_lat[1, NEAR] + (1 - last)[:, None] * p.ends_lat[1, FAR]
    lat += y @ p.cut_lat + (1 - first)[:, None] * p.entry_lat + (1 - last)[:, None] * p.exit_lat
    R = lat @ p.lat_weight
    far_items = (p.exists[None] - x) * p.exists[None]
    busy = np.zeros((N, 2 + p.num_links))
    busy[:, NEAR] = (a @ p.ne_busy[NEAR] + np.einsum("nle,le->n", x, p.item_busy[NEAR])
                     + first * p.ends_busy[0, NEAR] + last * p.ends_busy[1, NEAR])
    busy[:, FAR] = ((1 - a) @ p.ne_busy[FAR] + np.einsum("nle,le->n", far_items, p.item_busy[FAR])
                    + (1 - first) * p.ends_busy[0, FAR] + (1 - last) * p.ends_busy[1, FAR])
    busy[:, 2:] = (np.einsum("nle,jle->nj", away, p.item_link_busy) + (1 - first)[:, None] * p.entry_busy[None]
                   + (1 - last)[:, None] * p.exit_busy[None])
    busy += y @ p.cut_busy.T
    period = np.maximum(busy.max(axis=1), R / p.concurrency)
    mem_near = (a @ p.ne_mem[NEAR] + np.einsum("nle,le->n", x, p.item_mem) + first * p.ends_mem[0, NEAR]
                + last * p.ends_mem[1, NEAR] - last * p.head_tied_mem + first * p.workspace_mem[NEAR] + y @ p.cut_mem[NEAR])
    mem_far = ((1 - a) @ p.ne_mem[FAR] + np.einsum("nle,le->n", far_items, p.item_mem) + (1 - first) * p.ends_mem[0, FAR]
               + (1 - last) * p.ends_mem[1, FAR] - (1 - first) * p.head_tied_mem + (1 - last) * p.workspace_mem[FAR]
               + y @ p.cut_mem[FAR])
    if p.objective == "throughput":
        obj = period
    elif p.objective == "latency":
        obj = R
    else:
        obj = (first * p.idle_w[NEAR] + (1 - last) * p.idle_w[FAR]) * period + busy[:, :2] @ (p.power_w - p.idle_w)
    ok = (mem_near <= p.capacity[NEAR] * (1 + tol) + tol) & (mem_far <= p.capacity[FAR] * (1 + tol) + tol)
    ok &= y @ p.cut_loss <= p.loss_budget + tol
    ok &= ~((near_items & ~p.allowed[None] & p.exists[None] & (a[:, :, None] > 0)).any(axis=(1, 2)))
    if p.max_request_latency is not None:
        ok &= R <= p.max_request_latency * (1 + tol)
    for ph, capv in enumerate(p.max_phase_latency):
        if capv is not None:
            ok &= lat[:, ph] <= capv * (1 + tol)
    if p.max_period is not None:
        ok &= period <= p.max_period * (1 + tol)
    return np.where(ok, obj, np.inf)
