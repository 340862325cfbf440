"""The device a runtime process stands for: one computation at a time, its busy time, its speed.

A process serves a stage and/or experts held for other stages, each from its own thread;
:class:`DeviceClock` makes them take turns (a lock), as the cost model's device serves one hold at
a time, and counts busy seconds two ways: on the holding thread's CPU clock (``time.thread_time``:
what the computation cost, whatever else the machine's cores were running) and on the wall clock.
A stage that waits for remote experts releases the device meanwhile (:meth:`DeviceClock.released`).

Device speed emulation: with ``slowdown`` s > 1, every stretch of computation that took ``c``
seconds of CPU is followed by ``(s - 1) c`` seconds of sleep while the device stays held, so the
process behaves like a device s times slower than this machine (busy time counts ``s c``). A
device can be emulated slower than the machine, never faster.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class Busy:
    """Seconds of one hold: device time on the CPU clock and the wall clock (both including the
    emulated slowdown), and seconds spent waiting with the device released."""

    cpu_s: float = 0.0
    wall_s: float = 0.0
    wait_s: float = 0.0


class DeviceClock:
    def __init__(self, slowdown: float = 1.0):
        if not slowdown >= 1.0:
            raise ValueError(f"a device can be emulated slower than this machine only: slowdown must be >= 1, got {slowdown!r}")
        self.slowdown = float(slowdown)
        self._lock = threading.Lock()
        self._busy: Busy | None = None
        self._wall = self._cpu = 0.0

    def _begin(self, busy: Busy) -> None:
        self._busy = busy
        self._wall, self._cpu = time.perf_counter(), time.thread_time()

    def _end(self) -> None:
        cpu = time.thread_time() - self._cpu
        if self.slowdown > 1.0:
            time.sleep((self.slowdown - 1.0) * cpu)
        wall = time.perf_counter() - self._wall
        b = self._busy
        b.cpu_s += self.slowdown * cpu
        b.wall_s += wall

    @contextmanager
    def hold(self):
        """Hold the device for a computation; yields its :class:`Busy`, complete on exit."""
        busy = Busy()
        with self._lock:
            self._begin(busy)
            try:
                yield busy
            finally:
                self._end()

    @contextmanager
    def released(self):
        """Inside :meth:`hold`: wait (for a remote answer) with the device free for other work."""
        busy = self._busy
        self._end()
        self._lock.release()
        t = time.perf_counter()
        try:
            yield
        finally:
            self._lock.acquire()
            busy.wait_s += time.perf_counter() - t
            self._begin(busy)
