"""Routes: the scipy shortest paths have the length of networkx's Dijkstra paths."""

from __future__ import annotations

import networkx as nx
import pytest

from planner.cost import network
from planner.cost.costmodel import CostModel
from tests.helpers import load


@pytest.mark.parametrize("name", ["a100-l4-t4-cluster.toml", "deepseek-v3-mixed-cloud.toml", "mixtral-orin-edge-cloud.toml"])
def test_routes_are_shortest_paths(name):
    """The cost model's scipy routes have the length of networkx's Dijkstra paths (same weights)."""
    inst = load(name)
    cm = CostModel(inst)
    g = inst.graph()
    w = lambda u, v, d: d["link"].one_way_s + network._ROUTE_REFERENCE_BYTES / d["link"].bandwidth_bytes_per_s  # noqa: E731
    names = [d.name for d in inst.devices][:12]
    for a in names:
        lengths = nx.single_source_dijkstra_path_length(g, a, weight=w)
        for b in names:
            ours = sum(w(u, v, {"link": link}) for u, v, link in cm.network.route(a, b))
            assert ours == pytest.approx(lengths[b], rel=1e-12, abs=1e-15)
