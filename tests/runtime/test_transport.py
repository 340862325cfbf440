"""Link emulation arithmetic (bandwidth, series, hops, drops) and the delivery queue, without processes."""

from __future__ import annotations

import queue
import threading
import time

import numpy as np
import pytest

from planner.cost.network import Network
from planner.runtime.transport import DelayQueue, emulated_links
from planner.sim.resources import LinkClock


def test_a_message_holds_each_hop_for_its_bytes_over_the_bandwidth(loopback):
    names = ("phone", "edge", "cloud")
    links = emulated_links(names, Network(loopback).route)
    lte = links[(0, 2)]  # phone -> cloud: the direct LTE link (20 Mbit/s, 50 ms)
    assert [h.key for h in lte.hops] == [("cloud", "phone")]
    assert lte.holds(25_000, 0.0) == pytest.approx([0.01])  # 25 kB at 2.5 MB/s
    assert lte.one_way_s == pytest.approx(0.025)
    assert links[(2, 0)].one_way_s == pytest.approx(0.025)  # both directions, one link each way
    wifi = links[(0, 1)]
    assert wifi.holds(12_500, 3.0) == pytest.approx([0.001]) and wifi.down_at_s is None


def test_a_bandwidth_series_is_read_per_second_of_the_run_and_cycled(loopback):
    series = np.array([2.5e6, 1.25e6])  # bytes/s in second 0, second 1, then again
    links = emulated_links(("phone", "edge", "cloud"), Network(loopback).route, series={frozenset(("phone", "cloud")): series},
                           down={frozenset(("phone", "edge")): 4.0})
    lte = links[(0, 2)]
    assert lte.holds(2.5e6, 0.5) == pytest.approx([0.5 + 1.0])  # half a second at 2.5 MB/s, then a second at 1.25 MB/s
    assert lte.holds(1.25e6, 2.0) == pytest.approx([0.5])  # second 2 is second 0 again
    assert links[(0, 1)].down_at_s == 4.0 and links[(1, 0)].down_at_s == 4.0 and lte.down_at_s is None
    clock = LinkClock(2.5e6, None, [])
    assert clock.finish(1.0, 2.5e6) == pytest.approx(2.0)


def test_routes_of_several_hops_are_charged_hop_after_hop(loopback):
    from dataclasses import replace

    no_lte = replace(loopback, links=tuple(l for l in loopback.links if {l.a, l.b} != {"phone", "cloud"}))
    link = emulated_links(("phone", "cloud"), Network(no_lte).route)[(0, 1)]
    assert [h.key for h in link.hops] == [("edge", "phone"), ("cloud", "edge")]
    assert link.holds(12_500, 0.0) == pytest.approx([0.001, 0.005])  # 100 Mbit/s, then 20 Mbit/s
    assert link.one_way_s == pytest.approx(0.004 + 0.015)


def test_the_delay_queue_hands_items_out_when_due_in_due_order():
    q = DelayQueue()
    now = time.monotonic()
    q.put("late", now + 0.05)
    q.put("now")
    q.put("soon", now + 0.02)
    assert q.get(timeout=1) == "now"
    assert q.get(timeout=1) == "soon" and time.monotonic() >= now + 0.02
    assert q.get(timeout=1) == "late" and time.monotonic() >= now + 0.05
    with pytest.raises(queue.Empty):
        q.get(timeout=0.01)


def test_a_waiting_getter_wakes_for_an_item_put_by_another_thread():
    q = DelayQueue()
    threading.Timer(0.02, lambda: q.put("x")).start()
    assert q.get(timeout=2) == "x"
