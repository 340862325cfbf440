"""Instances: model + fleet + workload + objective + constraints, read from one TOML file.

See ``docs/instance-format.md`` for the annotated format. :func:`load_instance` checks every field
and raises one :class:`~planner.domain.errors.InputError` listing every problem, each naming the file,
the table and the field. Paths inside an instance are relative to the instance file.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import networkx as nx
import numpy as np

from planner.domain import catalog
from planner.domain import fields as F
from planner.domain.accuracy_table import AccuracyTable, read_accuracy_table
from planner.domain.data_files import RequestTrace, read_bandwidth_series, read_popularity_counts, read_request_trace
from planner.domain.device import Device, device_fields
from planner.domain.errors import Collector, InputError
from planner.domain.files import read_toml
from planner.domain.moe_model import MoEModel, model_from_dict, read_dtype_bytes
from planner.domain.units import GBPS, MBPS

OBJECTIVES = ("throughput", "latency", "energy")
POPULARITY_KINDS = ("uniform", "zipf", "measured")
MAX_DEVICES = 4096


@dataclass(frozen=True)
class Link:
    """A bidirectional network link. ``bandwidth_series`` (bytes/s per second) overrides the mean when simulating."""

    a: str
    b: str
    bandwidth_bytes_per_s: float
    rtt_s: float
    bandwidth_series: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def one_way_s(self) -> float:
        return self.rtt_s / 2.0


@dataclass(frozen=True)
class Interconnect:
    """Links of one bandwidth and RTT between every device of ``a`` and every other device of ``b``,
    held as one object: a pair's :class:`Link` is made when asked for (:meth:`link`), never all of
    them. A device group's own interconnect (``[[devices]]`` with ``count`` and
    ``interconnect_gb_per_s``) has ``a == b`` (every pair of its members); a ``[[links]]`` entry
    between two groups has their members as ``a`` and ``b``. ``name``: the group, or ``"A<->B"``."""

    name: str
    a: tuple[str, ...]
    b: tuple[str, ...]
    bandwidth_bytes_per_s: float
    rtt_s: float
    bandwidth_series: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def is_mesh(self) -> bool:
        return self.a == self.b

    @cached_property
    def _sides(self) -> tuple[frozenset, frozenset]:
        return frozenset(self.a), frozenset(self.b)

    @property
    def members(self) -> frozenset:
        """Every device the interconnect joins to another."""
        a, b = self._sides
        return a | b

    def joins(self, x: str, y: str) -> bool:
        a, b = self._sides
        return x != y and ((x in a and y in b) or (x in b and y in a))

    def link(self, x: str, y: str) -> Link:
        """The link from ``x`` to ``y`` (the caller checks :meth:`joins`)."""
        return Link(x, y, self.bandwidth_bytes_per_s, self.rtt_s, self.bandwidth_series)

    @property
    def num_pairs(self) -> int:
        n = len(self.a)
        return n * (n - 1) // 2 if self.is_mesh else len(self.a) * len(self.b)

    def pairs(self):
        """Every joined pair ``(x, y)``, once: members in order (a mesh), or ``a`` by ``b`` (``O(num_pairs)``)."""
        if self.is_mesh:
            return ((x, y) for i, x in enumerate(self.a) for y in self.a[i + 1:])
        return ((x, y) for x in self.a for y in self.b)

    def without(self, names: set[str]) -> Interconnect:
        """The same interconnect without the devices ``names``."""
        return replace(self, a=tuple(x for x in self.a if x not in names), b=tuple(x for x in self.b if x not in names))


@dataclass(frozen=True)
class Workload:
    """Requests. ``popularity[m, e]`` is the probability that a token of MoE layer ``m`` picks expert ``e``
    (each row sums to top-k), indexed by MoE-layer order (see :attr:`MoEModel.moe_layers`)."""

    origin: str
    arrival_rate_per_s: float
    prompt_tokens: int
    output_tokens: int
    max_batch: int
    popularity: np.ndarray = field(repr=False)
    popularity_kind: str = "uniform"
    trace: RequestTrace | None = field(default=None, repr=False, compare=False)
    trace_path: str = ""


@dataclass(frozen=True)
class Codec:
    """Allowed low-rank codec ranks at a cut and the accuracy loss (fraction) each one costs."""

    ranks: tuple[int, ...] = ()
    accuracy_loss: tuple[float, ...] = ()

    def loss(self, rank: int | None) -> float:
        if rank is None:
            return 0.0
        return self.accuracy_loss[self.ranks.index(rank)]


@dataclass(frozen=True)
class GroupGateLoss:
    """The accuracy loss (fraction) of the group gate (:class:`planner.domain.plan.GroupGate`) as a
    function of the local subset's coverage of a layer's routing mass: ``loss`` at each of
    ``coverage`` (increasing, in (0, 1)) when every MoE layer is gated at that coverage, linear
    in between, the first point's loss below it, 0 at coverage 1. Per gated layer a plan pays that
    loss over the number of MoE layers (losses add up while they are small), or, with a measured
    accuracy table (``table``) and no typed points, the table's loss of that layer gated alone."""

    coverage: tuple[float, ...] = ()
    loss: tuple[float, ...] = ()
    table: AccuracyTable | None = field(default=None, compare=False, repr=False)

    @property
    def known(self) -> bool:
        return bool(self.coverage) or (self.table is not None and bool(self.table.group_gate))

    def layer_loss(self, coverage: float, layer: int, num_moe_layers: int) -> float:
        """The loss of gating layer ``layer`` at ``coverage``; ``ValueError`` when no loss is known."""
        if coverage >= 1.0 - 1e-12:
            return 0.0
        if not self.coverage and self.table is not None and self.table.group_gate:
            try:
                return self.table.group_gate_loss(coverage, layer=layer)
            except ValueError:  # not measured alone: the all-layers point, shared out
                return self.table.group_gate_loss(coverage) / max(num_moe_layers, 1)
        if not self.coverage:
            raise ValueError("no group-gate loss is known: give constraints.group_gate_coverage and "
                             "group_gate_loss, or an accuracy_table with group-gate points")
        points = list(zip(self.coverage, self.loss)) + [(1.0, 0.0)]
        if coverage <= points[0][0]:
            every = points[0][1]
        else:
            every = next(y0 + (y1 - y0) * (coverage - x0) / (x1 - x0)
                         for (x0, y0), (x1, y1) in zip(points, points[1:]) if x0 <= coverage <= x1)
        return every / max(num_moe_layers, 1)

    def least_coverage(self, budget: float, layer: int, num_moe_layers: int) -> float:
        """The least coverage ``c`` in [0, 1] at which gating ``layer`` alone costs at most ``budget``
        (:meth:`layer_loss`); 1.0 when no loss is known or none below 1 fits. The loss is linear
        between the coverages of its points (flat below the first, 0 at 1), so each piece's least
        fitting coverage is found exactly (less 1e-12, so that it stays a lower bound)."""
        if not self.known:
            return 1.0
        xs = self._marks()
        for x0, x1 in zip(xs, xs[1:]):
            y0, y1 = self.layer_loss(x0, layer, num_moe_layers), self.layer_loss(x1, layer, num_moe_layers)
            if y0 <= budget:
                return x0
            if y1 <= budget:
                return max(x0, x0 + (x1 - x0) * (y0 - budget) / (y0 - y1) - 1e-12)
        return 1.0

    def least_loss_up_to(self, coverage: float, layer: int, num_moe_layers: int) -> float:
        """The least loss of gating ``layer`` alone at any coverage up to ``coverage`` (the loss being
        linear between its points, the least of its value there and at the points below)."""
        xs = [x for x in self._marks() if x < coverage] + [coverage]
        return min(self.layer_loss(x, layer, num_moe_layers) for x in xs)

    def _marks(self) -> list[float]:
        """0, 1 and the coverages of the points: the ends of the loss's linear pieces (a superset
        with a measured table, whose layers have points of their own)."""
        marks = self.coverage or tuple(p.coverage for p in self.table.group_gate)
        return sorted({0.0, 1.0, *(float(x) for x in marks if 0.0 < x < 1.0)})


@dataclass(frozen=True)
class Constraints:
    latency_slo_s: float | None = None
    ttft_slo_s: float | None = None
    tpot_slo_s: float | None = None
    accuracy_loss_budget: float = 0.0
    codec: Codec = Codec()
    migration_budget_bytes: float | None = None
    # Share of the objective route-aware and the re-planner may give up for codec ranks with less
    # accuracy loss (0: the objective alone decides; see planner.spaces.codec_choice).
    accuracy_tradeoff: float = 0.0
    # The measured accuracy table (moeplan calibrate) named by constraints.accuracy_table, if any.
    accuracy_table: AccuracyTable | None = field(default=None, compare=False, repr=False)
    group_gate_loss: GroupGateLoss = GroupGateLoss()


@dataclass(frozen=True)
class Instance:
    name: str
    model: MoEModel
    devices: tuple[Device, ...]
    links: tuple[Link, ...]
    workload: Workload
    objective: str
    constraints: Constraints
    path: str = ""
    description: str = ""
    # Device groups' interconnects and [[links]] between two groups, each one object (not N^2 links).
    interconnects: tuple[Interconnect, ...] = ()

    def device(self, name: str) -> Device:
        return self.device_index[name]

    @cached_property
    def device_index(self) -> dict[str, Device]:
        return {d.name: d for d in self.devices}

    @cached_property
    def _link_index(self) -> dict[tuple[str, str], Link]:
        out = {}
        for l in self.links:  # the last listed wins
            out[(l.a, l.b)] = out[(l.b, l.a)] = l
        return out

    @cached_property
    def _interconnects_of(self) -> dict[str, list[Interconnect]]:
        """Per device, the interconnects that join it, the last listed first."""
        out: dict[str, list[Interconnect]] = {}
        for ic in reversed(self.interconnects):
            for name in ic.members:
                out.setdefault(name, []).append(ic)
        return out

    def link(self, a: str, b: str) -> Link | None:
        """The link between ``a`` and ``b`` (either order; ``a``'s end first for an interconnect's), or None.
        A link of :attr:`links` wins over an interconnect, a later interconnect over an earlier one. O(1)."""
        hit = self._link_index.get((a, b))
        if hit is not None:
            return hit
        for ic in self._interconnects_of.get(a, ()):
            if ic.joins(a, b):
                return ic.link(a, b)
        return None

    @property
    def num_links(self) -> int:
        """Links in all: :attr:`links` and every pair an interconnect joins."""
        return len(self.links) + sum(ic.num_pairs for ic in self.interconnects)

    def all_links(self):
        """Every link as a :class:`Link`: :attr:`links`, then each interconnect's pairs (``O(num_links)``;
        for reports of every link, not for routing)."""
        yield from self.links
        for ic in self.interconnects:
            for x, y in ic.pairs():
                yield ic.link(x, y)

    def link_names(self, sep: str = ",", limit: int = 64) -> str:
        """The links as ``a{sep}b``, sorted, for messages; with more than ``limit`` of them, the listed
        links and each interconnect by name and size instead of every pair."""
        if self.num_links <= limit:
            return ", ".join(sorted(f"{l.a}{sep}{l.b}" for l in self.all_links()))
        shown = sorted(f"{l.a}{sep}{l.b}" for l in self.links[:limit])
        more = [f"{len(self.links) - limit} more"] if len(self.links) > limit else []
        groups = [f"{ic.name}: {ic.num_pairs:,} pairs" for ic in self.interconnects if ic.num_pairs]
        return ", ".join(shown + more + groups)

    @cached_property
    def twins(self) -> dict[str, int]:
        """Devices that any plan may swap without changing a figure, as a class index per device (only
        devices with a twin are listed): members of one group's interconnect (so of one ``[[devices]]``
        entry, the same hardware) in the same interconnects, with the same links of :attr:`links`
        (same other end, bandwidth, RTT and series), none of them the origin. Swapping two maps the
        fleet onto itself, so routes between twins and the rest cost the same."""
        own: dict[str, list] = {}
        for l in self.links:
            for x, y in ((l.a, l.b), (l.b, l.a)):
                own.setdefault(x, []).append((y, l.bandwidth_bytes_per_s, l.rtt_s, id(l.bandwidth_series)))
        sides: dict[str, list] = {}
        for k, ic in enumerate(self.interconnects):
            for side, names in ((0, ic.a), (1, ic.b)):
                for n in names:
                    sides.setdefault(n, []).append((k, side))
        classes: dict[tuple, list[str]] = {}
        for k, ic in enumerate(self.interconnects):
            if not ic.is_mesh:
                continue
            for n in ic.a:
                if n != self.workload.origin and n in self.device_index:
                    key = (k, tuple(sorted(set(sides[n]))), tuple(sorted(own.get(n, ()))))
                    classes.setdefault(key, []).append(n)
        out: dict[str, int] = {}
        for label, names in enumerate(classes.values()):
            if len(names) > 1 and not any(n in out for n in names):  # a device in two groups' meshes: no twins
                out.update((n, label) for n in names)
        return out

    @cached_property
    def component_of(self) -> dict[str, int]:
        """Connected component of each device in the network, as a label (the same for two devices
        exactly when some path joins them), from :meth:`connectivity` (O(devices + links))."""
        return {n: k for k, part in enumerate(nx.connected_components(self.connectivity()))
                for n in part if isinstance(n, str)}

    def connectivity(self) -> nx.Graph:
        """:func:`connectivity_graph` of the instance."""
        return connectivity_graph([d.name for d in self.devices], self.links, self.interconnects)

    def graph(self) -> nx.Graph:
        """Every link as an edge (``link`` = the :class:`Link`): ``O(num_links)``, for the simulator's
        per-link resources; use :meth:`connectivity` or :meth:`link` otherwise."""
        g = nx.Graph()
        g.add_nodes_from(d.name for d in self.devices)
        for link in self.all_links():
            g.add_edge(link.a, link.b, link=link)
        return g

    def devices_of_tier(self, tier: str) -> list[Device]:
        return [d for d in self.devices if d.tier == tier]

    @property
    def total_memory_bytes(self) -> float:
        return sum(d.memory_bytes for d in self.devices)


def connectivity_graph(names, links, interconnects) -> nx.Graph:
    """Devices ``names`` joined as ``links`` and ``interconnects`` join them: an edge per link and one
    hub node ``("interconnect", k)`` per interconnect joined to its members (``O(devices + links)``
    edges, not one per pair); only the string nodes are devices."""
    g = nx.Graph()
    g.add_nodes_from(names)
    g.add_edges_from((l.a, l.b) for l in links)
    for k, ic in enumerate(interconnects):
        if ic.num_pairs:
            g.add_edges_from((("interconnect", k), name) for name in ic.members)
    return g


# ----------------------------------------------------------------------------------------------
# loading

_TOP = {"name", "description", "model", "devices", "links", "workload", "objective", "constraints"}
_DEVICE_KEYS = {
    "name", "catalog", "count", "profile", "interconnect_gb_per_s", "interconnect_rtt_ms",
    "tier", "display_name", "memory_gb", "memory_bandwidth_gb_per_s", "power_w", "idle_power_w",
    "compute_efficiency", "bandwidth_efficiency", "peak_tflops",
}
_LINK_KEYS = {"a", "b", "bandwidth_mbps", "bandwidth_gbps", "rtt_ms", "bandwidth_trace"}
_WORKLOAD_KEYS = {
    "origin", "arrival_rate_per_s", "trace", "trace_columns", "prompt_tokens", "output_tokens",
    "max_batch", "popularity",
}
_POP_KEYS = {"kind", "zipf_exponent", "file", "seed"}
_CONSTRAINT_KEYS = {
    "latency_slo_ms", "ttft_slo_ms", "tpot_slo_ms", "accuracy_loss_budget", "codec_ranks",
    "codec_accuracy_loss", "migration_budget_gb", "accuracy_tradeoff", "accuracy_table",
    "group_gate_coverage", "group_gate_loss",
}


def load_instance(path: str | Path) -> Instance:
    """Read and check an instance file; raises :class:`InputError` with every problem found."""
    path = Path(path)
    data = read_toml(path)
    return instance_from_dict(data, file=str(path), base_dir=path.parent)


def instance_from_dict(data: dict, *, file: str = "<instance>", base_dir: Path | None = None) -> Instance:
    base_dir = base_dir or Path.cwd()
    col = Collector(file)
    F.unknown_keys(data, _TOP, "", col)
    name = data.get("name", Path(file).stem)
    if not isinstance(name, str) or not name:
        col.add("name", f"must be a non-empty string, got {name!r}")
        name = Path(file).stem
    description = data.get("description", "")
    if not isinstance(description, str):
        col.add("description", f"must be a string, got {type(description).__name__}")
        description = ""

    model = _read_model(data, file, base_dir, col)
    devices, meshes, declared = _read_devices(data, file, base_dir, col)
    links, bundles = _read_links(data, {d.name for d in devices}, declared, base_dir, col)
    objective = F.string(data, "objective", "", col, required=False, default="throughput", choices=OBJECTIVES)
    constraints = _read_constraints(data, model, base_dir, col)
    workload = _read_workload(data, model, devices, declared, base_dir, col)
    col.raise_if_any()

    instance = Instance(name, model, tuple(devices), tuple(links), workload, objective, constraints, file, description,
                        tuple(meshes + bundles))
    _check_connected(instance, col)
    col.raise_if_any()
    return instance


def _read_model(data: dict, file: str, base_dir: Path, col: Collector) -> MoEModel | None:
    table = F.table(data, "model", "", col)
    if table is None:
        return None
    given = [k for k in ("catalog", "file") if k in table]
    if len(given) > 1:
        col.add("model", "give either catalog or file, not both")
        return None
    try:
        if "catalog" in table:
            cat_name = F.string(table, "catalog", "model", col)
            extra = set(table) - {"catalog", "dtype_bytes"}
            if extra:
                col.add("model", f"with catalog, only dtype_bytes may be overridden (found {', '.join(sorted(extra))})")
            if not cat_name:
                return None
            card = catalog.model(cat_name, file=file, field="model.catalog")
            if "dtype_bytes" in table:
                # A quantized deployment of a catalog model: 1 = int8/fp8, 0.5 = int4.
                db = read_dtype_bytes(table, "model", col)
                return replace(card, dtype_bytes=db) if db is not None else None
            return card
        if "file" in table:
            ref = F.string(table, "file", "model", col)
            return catalog.load_model_card(base_dir / ref) if ref else None
    except InputError as exc:
        col.extend_referenced(exc.problems, "model.file", str(table.get("file", "")))
        return None
    return model_from_dict(table, "model", col)


def _read_devices(data: dict, file: str, base_dir: Path, col: Collector) -> tuple[list[Device], list[Interconnect], set[str]]:
    """Devices that passed every check, their groups' interconnects, and every declared device name
    (valid or not, so that links to a device with a problem are not reported twice)."""
    entries = data.get("devices")
    declared: set[str] = set()
    if entries is None:
        col.add("devices", "is required: an array of tables [[devices]]")
        return [], [], declared
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        col.add("devices", "must be a non-empty array of tables [[devices]]")
        return [], [], declared
    devices: list[Device] = []
    mesh: list[Interconnect] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        tp = f"devices[{i}]"
        before = len(col.problems)
        F.unknown_keys(entry, _DEVICE_KEYS, tp, col)
        name = F.string(entry, "name", tp, col)
        count = F.number(entry, "count", tp, col, required=False, default=1, integer=True, positive=True, maximum=MAX_DEVICES)
        if name is not None:
            declared.add(name)
            if isinstance(count, int) and count > 1:
                declared.update(f"{name}-{k}" for k in range(count))
        base = None
        if "catalog" in entry:
            cat = F.string(entry, "catalog", tp, col)
            if cat:
                try:
                    base = catalog.device(cat, file=file, field=f"{tp}.catalog")
                except InputError as exc:
                    col.extend(exc.problems)
                    continue
        kwargs = device_fields(entry, tp, col, base=base)
        # An entry's own profile wins over the card's.
        profile = catalog.load_profile_field(entry, tp, base_dir, col) if "profile" in entry else (base.profile if base else None)
        if len(col.problems) > before or kwargs is None or name is None:
            continue
        members = [name] if count == 1 else [f"{name}-{k}" for k in range(count)]
        for member in members:
            if member in seen:
                col.add(f"{tp}.name", f"device name {member!r} is used twice")
                continue
            seen.add(member)
            devices.append(Device(name=member, kind=base.kind if base else name, profile=profile,
                                  source=base.source if base else {}, **kwargs))
        if len(devices) > MAX_DEVICES:
            col.add("devices", f"more than {MAX_DEVICES} devices in all")
            return devices, mesh, declared
        has_mesh = "interconnect_gb_per_s" in entry
        if has_mesh:
            bw = F.number(entry, "interconnect_gb_per_s", tp, col, positive=True, maximum=1e6)
            rtt = F.number(entry, "interconnect_rtt_ms", tp, col, required=False, default=0.01, nonnegative=True, maximum=1e6)
            if bw is not None and rtt is not None:
                mesh.append(Interconnect(name, tuple(members), tuple(members), bw * 1e9, rtt / 1e3))
        elif count > 1:
            col.add(f"{tp}.interconnect_gb_per_s", f"is required when count > 1 (how the {count} devices are joined)")
    return devices, mesh, declared


def _expand(name: str, names: set[str]) -> list[str]:
    """A link end: a device name, or a group name (``count`` > 1) meaning every member."""
    if name in names:
        return [name]
    return sorted(n for n in names if n.rsplit("-", 1)[0] == name and n.rsplit("-", 1)[-1].isdigit())


def _read_links(data: dict, names: set[str], declared: set[str], base_dir: Path,
                col: Collector) -> tuple[list[Link], list[Interconnect]]:
    """The ``[[links]]`` entries: one :class:`Link` per pair, except an entry between two groups,
    which is one :class:`Interconnect` (its pairs are not listed one by one)."""
    entries = data.get("links", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        col.add("links", "must be an array of tables [[links]]")
        return [], []
    links, bundles = [], []
    for i, entry in enumerate(entries):
        tp = f"links[{i}]"
        before = len(col.problems)
        F.unknown_keys(entry, _LINK_KEYS, tp, col)
        a = F.string(entry, "a", tp, col)
        b = F.string(entry, "b", tp, col)
        ends = []
        for key, end in (("a", a), ("b", b)):
            members = _expand(end, names) if end else []
            if end and not members and not _expand(end, declared):
                col.add(f"{tp}.{key}", f"names no device: {end!r} (devices: {', '.join(sorted(declared))})")
            ends.append(members)
        if a and a == b:
            col.add(f"{tp}.b", "a link must join two different devices")
        units = [k for k in ("bandwidth_mbps", "bandwidth_gbps") if k in entry]
        bw = None
        if len(units) != 1:
            col.add(f"{tp}.bandwidth_mbps", "give exactly one of bandwidth_mbps (megabits/s) or bandwidth_gbps (gigabits/s)")
        else:
            v = F.number(entry, units[0], tp, col, positive=True, maximum=1e9)
            if v is not None:
                bw = v * (MBPS if units[0] == "bandwidth_mbps" else GBPS)
        rtt = F.number(entry, "rtt_ms", tp, col, nonnegative=True, maximum=1e6)
        series = None
        if "bandwidth_trace" in entry:
            ref = F.string(entry, "bandwidth_trace", tp, col)
            if ref:
                try:
                    series = read_bandwidth_series(base_dir / ref, label=str(base_dir / ref))
                except InputError as exc:
                    col.extend_referenced(exc.problems, f"{tp}.bandwidth_trace", ref)
        if len(col.problems) > before:
            continue
        if len(ends[0]) > 1 and len(ends[1]) > 1:
            bundles.append(Interconnect(f"{a}<->{b}", tuple(ends[0]), tuple(ends[1]), bw, rtt / 1e3, series))
            continue
        for x in ends[0]:
            for y in ends[1]:
                if x != y:
                    links.append(Link(x, y, bw, rtt / 1e3, series))
    return links, bundles


def _read_workload(data: dict, model: MoEModel | None, devices: list[Device], declared: set[str], base_dir: Path,
                   col: Collector) -> Workload | None:
    table = F.table(data, "workload", "", col)
    if table is None:
        return None
    tp = "workload"
    F.unknown_keys(table, _WORKLOAD_KEYS, tp, col)
    names = [d.name for d in devices]
    default_origin = next((d.name for d in devices if d.tier == "end"), names[0] if names else None)
    origin = F.string(table, "origin", tp, col, required=False, default=default_origin)
    if origin is not None and origin not in declared:
        col.add(f"{tp}.origin", f"names no device: {origin!r} (devices: {', '.join(sorted(declared))})")
    trace = None
    trace_path = ""
    if "trace" in table:
        ref = F.string(table, "trace", tp, col)
        cols = table.get("trace_columns", {})
        known = {"timestamp", "prompt", "output"}
        if not isinstance(cols, dict) or not all(isinstance(v, str) for v in cols.values()) or set(cols) - known:
            col.add(f"{tp}.trace_columns", "must map timestamp/prompt/output to column names (strings)")
            cols = {}
        if ref:
            trace_path = str(base_dir / ref)
            try:
                trace = read_request_trace(base_dir / ref, columns=cols, label=trace_path)
            except InputError as exc:
                col.extend_referenced(exc.problems, f"{tp}.trace", ref)
    rate = F.number(table, "arrival_rate_per_s", tp, col, required=trace is None and "trace" not in table,
                    positive=True, maximum=1e9)
    if rate is None and trace is not None:
        rate = trace.rate_per_s
    prompt = F.number(table, "prompt_tokens", tp, col, required=trace is None and "trace" not in table,
                      integer=True, positive=True, maximum=10_000_000)
    output = F.number(table, "output_tokens", tp, col, required=trace is None and "trace" not in table,
                      integer=True, positive=True, maximum=10_000_000)
    if trace is not None:
        prompt = prompt or max(1, int(round(float(np.mean(trace.prompt_tokens)))))
        output = output or max(1, int(round(float(np.mean(trace.output_tokens)))))
    max_batch = F.number(table, "max_batch", tp, col, required=False, default=1, integer=True, positive=True, maximum=1_000_000)
    popularity, kind = _read_popularity(table, model, base_dir, col)
    if any(v is None for v in (origin, rate, prompt, output, max_batch)) or popularity is None:
        return None
    return Workload(origin, rate, prompt, output, max_batch, popularity, kind, trace, trace_path)


def _read_popularity(table: dict, model: MoEModel | None, base_dir: Path, col: Collector) -> tuple[np.ndarray | None, str]:
    tp = "workload.popularity"
    pop = table.get("popularity", {"kind": "uniform"})
    if not isinstance(pop, dict):
        col.add(tp, "must be a table with kind = uniform, zipf or measured")
        return None, ""
    F.unknown_keys(pop, _POP_KEYS, tp, col)
    kind = F.string(pop, "kind", tp, col, required=False, default="uniform", choices=POPULARITY_KINDS)
    if model is None or kind is None:
        return None, ""
    layers, experts, k = model.num_moe_layers, model.num_experts, model.top_k
    if experts == 0 or layers == 0:
        return np.zeros((layers, experts)), kind
    if kind == "uniform":
        weights = np.ones((layers, experts))
    elif kind == "zipf":
        s = F.number(pop, "zipf_exponent", tp, col, nonnegative=True, maximum=10)
        seed = F.number(pop, "seed", tp, col, required=False, default=0, integer=True, nonnegative=True, maximum=2**32 - 1)
        if s is None or seed is None:
            return None, kind
        ranks = np.arange(1, experts + 1, dtype=float)
        base = ranks ** (-s)
        rng = np.random.default_rng(seed)
        # Each layer gets its own permutation: hot experts differ across layers.
        weights = np.stack([base[rng.permutation(experts)] for _ in range(layers)])
    else:
        ref = F.string(pop, "file", tp, col)
        if ref is None:
            return None, kind
        try:
            weights = read_popularity_counts(base_dir / ref, layers, experts, label=str(base_dir / ref))
        except InputError as exc:
            col.extend_referenced(exc.problems, f"{tp}.file", ref)
            return None, kind
    return routing_probabilities(weights, k), kind


def routing_probabilities(weights: np.ndarray, top_k: int) -> np.ndarray:
    """Per-token selection probabilities from weights [layers, experts]: rows sum to ``top_k`` and
    no entry exceeds 1 (an expert is picked at most once per token); excess mass is spread by water-filling."""
    p = weights / weights.sum(axis=1, keepdims=True) * top_k
    for row in p:
        for _ in range(row.size):
            over = row > 1.0
            if not over.any():
                break
            excess = float((row[over] - 1.0).sum())
            row[over] = 1.0
            free = row < 1.0
            row[free] += excess * row[free] / row[free].sum()
    return p


def _read_accuracy_table(table: dict, model: MoEModel | None, base_dir: Path, col: Collector) -> AccuracyTable | None:
    """The measured table named by ``constraints.accuracy_table``, checked against the model's widths."""
    ref = F.string(table, "accuracy_table", "constraints", col)
    if not ref:
        return None
    try:
        measured = read_accuracy_table(base_dir / ref)
    except InputError as exc:
        col.extend_referenced(exc.problems, "constraints.accuracy_table", ref)
        return None
    if model is not None and (measured.hidden_size, measured.num_experts) != (model.hidden_size, model.num_experts):
        col.add("constraints.accuracy_table", f"{ref} was measured on {measured.model!r} (hidden {measured.hidden_size}, "
                f"{measured.num_experts} experts); the model has hidden {model.hidden_size}, {model.num_experts} experts")
        return None
    return measured


def _read_constraints(data: dict, model: MoEModel | None, base_dir: Path, col: Collector) -> Constraints:
    table = F.table(data, "constraints", "", col, required=False) or {}
    tp = "constraints"
    F.unknown_keys(table, _CONSTRAINT_KEYS, tp, col)

    def ms(key):
        v = F.number(table, key, tp, col, required=False, positive=True, maximum=1e9)
        return v / 1e3 if v is not None else None

    budget = F.number(table, "accuracy_loss_budget", tp, col, required=False, default=0.0, nonnegative=True, maximum=1.0)
    ranks = F.number_list(table, "codec_ranks", tp, col, integer=True, positive=True)
    losses = F.number_list(table, "codec_accuracy_loss", tp, col, nonnegative=True)
    measured = _read_accuracy_table(table, model, base_dir, col) if "accuracy_table" in table else None
    if measured is not None and losses is None:
        # Measured losses replace typed ones; without codec_ranks, the measured ranks are allowed.
        if ranks is None:
            ranks = [r for r in measured.codec_ranks if model is None or r < model.hidden_size]
        try:
            losses = [measured.codec_loss(int(r)) for r in ranks]
        except ValueError as exc:
            col.add(f"{tp}.codec_ranks", str(exc))
            ranks = losses = None
    codec = Codec()
    if (ranks is None) != (losses is None):
        col.add(f"{tp}.codec_accuracy_loss", "codec_ranks and codec_accuracy_loss go together (one loss per rank)")
    elif ranks is not None:
        if len(ranks) != len(losses):
            col.add(f"{tp}.codec_accuracy_loss", f"has {len(losses)} entries; codec_ranks has {len(ranks)}")
        elif len(set(ranks)) != len(ranks):
            col.add(f"{tp}.codec_ranks", "has duplicate ranks")
        elif model is not None and max(ranks) >= model.hidden_size:
            col.add(f"{tp}.codec_ranks", f"ranks must be < hidden_size ({model.hidden_size}); got {max(ranks)}")
        elif any(x > 1 for x in losses):
            col.add(f"{tp}.codec_accuracy_loss", "losses are fractions between 0 and 1")
        else:
            codec = Codec(tuple(int(r) for r in ranks), tuple(float(x) for x in losses))
    gate = _read_group_gate_loss(table, measured, col)
    mig = F.number(table, "migration_budget_gb", tp, col, required=False, nonnegative=True, maximum=1e7)
    tradeoff = F.number(table, "accuracy_tradeoff", tp, col, required=False, default=0.0, nonnegative=True, maximum=0.5)
    return Constraints(ms("latency_slo_ms"), ms("ttft_slo_ms"), ms("tpot_slo_ms"), budget or 0.0, codec,
                       mig * 1e9 if mig is not None else None, float(tradeoff or 0.0), measured, gate)


def _read_group_gate_loss(table: dict, measured: AccuracyTable | None, col: Collector) -> GroupGateLoss:
    """``constraints.group_gate_coverage`` and ``group_gate_loss`` (typed), else the measured table's points."""
    tp = "constraints"
    coverage = F.number_list(table, "group_gate_coverage", tp, col, positive=True)
    loss = F.number_list(table, "group_gate_loss", tp, col, nonnegative=True)
    if coverage is None and loss is None:
        return GroupGateLoss(table=measured)
    if (coverage is None) != (loss is None):
        col.add(f"{tp}.group_gate_loss", "group_gate_coverage and group_gate_loss go together (one loss per coverage)")
        return GroupGateLoss()
    if len(coverage) != len(loss):
        col.add(f"{tp}.group_gate_loss", f"has {len(loss)} entries; group_gate_coverage has {len(coverage)}")
    elif any(not 0 < c < 1 for c in coverage) or any(b <= a for a, b in zip(coverage, coverage[1:])):
        col.add(f"{tp}.group_gate_coverage", "coverages are increasing fractions strictly between 0 and 1")
    elif any(x > 1 for x in loss):
        col.add(f"{tp}.group_gate_loss", "losses are fractions between 0 and 1")
    else:
        return GroupGateLoss(tuple(float(c) for c in coverage), tuple(float(x) for x in loss), measured)
    return GroupGateLoss()


def _check_connected(instance: Instance, col: Collector) -> None:
    g = instance.connectivity()
    if g.number_of_nodes() > 1 and not nx.is_connected(g):
        parts = sorted((sorted(n for n in c if isinstance(n, str)) for c in nx.connected_components(g)), key=len, reverse=True)
        shown = "; ".join("{" + ", ".join(p[:4]) + (", ..." if len(p) > 4 else "") + "}" for p in parts)
        col.add("links", f"the fleet is not connected: {len(parts)} separate groups {shown}; add a link between them")
