"""Benchmark: the runtime's link emulation against its formula, and gloo's own overhead on loopback.

    python -m planner.runtime.bench_links [--repeats N] [--json]

Two processes and the runtime's own transport (:class:`planner.runtime.transport.Transport`).
Process 0 sends a message with a payload of ``N`` bytes to process 1, which answers with a
header-only message; the round trip over an emulated link of ``B`` bit/s and RTT ``t`` should take
``N * 8 / B + t`` (plus the two headers' bytes, counted in ``expected``). Each row is the median of
``--repeats`` round trips; ``error`` = measured / expected - 1. Then the same without emulation:
what gloo itself costs per message on loopback (half the round trip, the answer included), for the
tensor sizes of the shipped runtime plans (decode hidden states of 1 to 8 rows, a prefill's, a
rank-32 codec's latents) and larger ones. Figures are measured in one run on this machine; they
are not test assertions.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as tmp

from planner.domain.instance import Link
from planner.domain.units import MBPS
from planner.runtime.transport import DelayQueue, EmulatedLink, Hop, Transport
from planner.runtime.wire import HEADER_BYTES, PASS, RESULT, Message
from planner.sim.resources import LinkClock

HIDDEN = 128  # the reference model's hidden size (float32: 512 bytes per token)
SIZES = {  # payload bytes (float32 tensors) of the shipped plans' messages, then larger ones
    "decode, 1 row [1,1,128]": 512, "decode, 4 rows [4,1,128]": 2048, "decode, 8 rows [8,1,128]": 4096,
    "codec latents [1,32,32]": 4096, "prefill [1,32,128]": 16384, "prefill [1,256,128]": 131072, "[1024,256] 1 MiB": 1 << 20,
}
LINKS = {"LTE 20 Mbit/s, 50 ms": (20.0, 50.0), "Wi-Fi 100 Mbit/s, 8 ms": (100.0, 8.0), "fibre 1 Gbit/s, 1 ms": (1000.0, 1.0)}


def _link(mbps: float, rtt_ms: float) -> EmulatedLink:
    link = Link("a", "b", mbps * MBPS, rtt_ms / 1e3)
    return EmulatedLink([Hop(("a", "b"), LinkClock(link.bandwidth_bytes_per_s, None, []), link.one_way_s)])


def _worker(rank: int, port: int, plan: list, repeats: int, out) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))
    inbox = DelayQueue()
    tr = Transport(rank, 2, {}, timeout_s=60.0, heartbeat_s=30.0, deliver=lambda src, m, due: inbox.put(m, due),
                   on_fault=lambda *a: None, shared_clock=True)
    tr.create_groups()
    tr.start()
    results = []
    for label, nbytes, link in plan:
        tr.links[1 - rank] = link
        dist.barrier()
        times = []
        for _ in range(repeats + 1):  # the first round trip warms the channel up
            if rank == 0:
                t = time.perf_counter()
                tr.send(1, Message(PASS, floats=torch.zeros(nbytes // 4)))
                inbox.get()
                times.append(time.perf_counter() - t)
            else:
                inbox.get()
                tr.send(0, Message(RESULT))
        if rank == 0:
            results.append((label, nbytes, statistics.median(times[1:])))
    dist.barrier()
    if rank == 0:
        out.put(results)
    tr.close()
    dist.barrier()
    os._exit(0)


def _run(plan: list, repeats: int) -> list:
    """Run the two processes over ``plan`` (label, payload bytes, link or None) and return their rows."""
    ctx = tmp.get_context("spawn")
    out = ctx.Queue()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [ctx.Process(target=_worker, args=(r, port, plan, repeats, out)) for r in range(2)]
    for p in procs:
        p.start()
    try:
        return out.get(timeout=600)
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m planner.runtime.bench_links", description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    emulated = [(f"{name} | {size}", n, _link(*spec)) for name, spec in LINKS.items() for size, n in SIZES.items()
                if not (n > 200_000 and spec[0] < 50)] + [(f"LTE 20 Mbit/s, 50 ms | {size}", n, _link(20.0, 50.0))
                                                         for size, n in SIZES.items() if n > 200_000]
    rows = []
    for label, nbytes, secs in _run(emulated, args.repeats):
        name = label.split(" | ")[0]
        mbps, rtt_ms = LINKS[name]
        expected = (nbytes + 2 * HEADER_BYTES) * 8 / (mbps * 1e6) + rtt_ms / 1e3
        rows.append({"link": name, "payload": label.split(" | ")[1], "bytes": nbytes, "measured_ms": secs * 1e3,
                     "expected_ms": expected * 1e3, "formula_ms": (nbytes * 8 / (mbps * 1e6) + rtt_ms / 1e3) * 1e3,
                     "error": secs / expected - 1.0})
    gloo = [{"payload": label, "bytes": n, "one_way_ms": secs / 2 * 1e3}
            for label, n, secs in _run([(size, n, None) for size, n in SIZES.items()], max(args.repeats, 21))]
    if args.json:
        print(json.dumps({"emulated": rows, "gloo_loopback": gloo}, indent=2))
        return 0
    print("round trip over an emulated link: N bytes there, a header back; expected = (N + 2 headers) x 8 / B + RTT")
    print(f"{'link':<24} {'payload':<26} {'bytes':>8} {'N*8/B+t ms':>11} {'expected ms':>11} {'measured ms':>11} {'error':>7}")
    for r in rows:
        print(f"{r['link']:<24} {r['payload']:<26} {r['bytes']:>8} {r['formula_ms']:>11.2f} {r['expected_ms']:>11.2f} "
              f"{r['measured_ms']:>11.2f} {r['error']:>+7.1%}")
    print(f"worst error {max(abs(r['error']) for r in rows):.1%}")
    print("gloo on loopback, no emulation: one way (half a round trip whose answer is a header)")
    print(f"{'payload':<26} {'bytes':>8} {'one way ms':>10}")
    for r in gloo:
        print(f"{r['payload']:<26} {r['bytes']:>8} {r['one_way_ms']:>10.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
