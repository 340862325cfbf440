"""A plan's pipelines as the simulator runs them: each pass compiled to resource steps, its slots
(micro-batches) of seats, its admission queue and the passes in flight.

A pass (the cost model's steps, :meth:`planner.cost.costmodel.CostModel.pass_steps`) is compiled
once per pipeline into a :class:`Path`; each pass size (a prefill of ``p`` tokens, a decode step of
``n`` sequences) is a *variant* of it: the seconds each step holds its resource and the bytes it
sends, and the propagation after it. Prompts up to ``EXACT_PROMPT_MAX`` tokens and the instance's own prompt are priced exactly;
longer ones are interpolated between points of a geometric grid (ratio ``PROMPT_GRID_RATIO``).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable

from planner.cost.costmodel import CostModel
from planner.cost.evaluation import Step
from planner.sim.resources import Resources

EXACT_PROMPT_MAX = 256  # prompts up to this many tokens are priced exactly
PROMPT_GRID_RATIO = 1.0 + 1.0 / 64.0


class Path:
    """One pipeline's pass, compiled for the engine.

    ``segments``: a list of forks, each a tuple of branches (a plain run of steps is a fork of one
    branch); a branch is a list of ``(resource id, delay s, column)``. A *variant* (one pass size)
    is ``(holds, nbytes, delays)``: lists indexed by column (seconds held at nominal bandwidth, bytes
    sent, the propagation after it: a remote expert's route is delayed only as often as a pass of
    that size calls it, so delays depend on the size too)."""

    def __init__(self, items: list, resource_id: Callable):
        self.segments: list[tuple] = []
        self.columns: list[list[int]] = []  # column -> indices of the flat steps merged into it
        self.keys: list = []  # flat step keys, to check every variant has the same shape
        run: list = []
        flat = 0

        def add(branch: list, s: Step) -> None:
            nonlocal flat
            r = resource_id(s.key)
            self.keys.append(s.key)
            # Consecutive holds of one device (no delay between) are one hold.
            if branch and branch[-1][0] == r and isinstance(s.key, str) and branch[-1][1] == 0.0:
                self.columns[branch[-1][2]].append(flat)
                branch[-1][1] = s.delay_s
            else:
                self.columns.append([flat])
                branch.append([r, s.delay_s, len(self.columns) - 1])
            flat += 1

        for item in items:
            if isinstance(item, Step):
                add(run, item)
                continue
            if run:
                self.segments.append((run,))
                run = []
            branches = []
            for steps in item.branches:
                branch: list = []
                for s in steps:
                    add(branch, s)
                branches.append(branch)
            self.segments.append(tuple(branches))
        if run:
            self.segments.append((run,))
        self.segments = [tuple([tuple(x) for x in b] for b in seg) for seg in self.segments]
        self.resources = sorted({r for seg in self.segments for b in seg for r, _, _ in b})

    def variant(self, items: list) -> tuple[list[float], list[float]]:
        flat = []
        for item in items:
            flat.extend((item,) if isinstance(item, Step) else (s for b in item.branches for s in b))
        if [s.key for s in flat] != self.keys:
            raise RuntimeError("pass steps changed shape between pass sizes")
        holds = [sum(flat[i].hold_s for i in col) for col in self.columns]
        nbytes = [sum(flat[i].nbytes for i in col) for col in self.columns]
        delays = [flat[col[-1]].delay_s for col in self.columns]
        return holds, nbytes, delays


class Slot:
    __slots__ = ("index", "seats", "active", "k", "fin", "joining", "running")

    def __init__(self, index: int):
        self.index = index
        self.seats = 0  # requests holding a seat: prefilling, joining or decoding
        self.active = 0  # sequences in the decode steps
        self.k = 0  # decode steps done
        self.fin: dict[int, list[int]] = {}  # step count -> requests whose last token that step gives
        self.joining: list[int] = []
        self.running = False


class Pipe:
    """A pipeline of a plan that runs (or drains) in the simulation."""

    def __init__(self, cm: CostModel, resources: Resources, down: set[str], pipe, index: int, generation: int):
        self.cm = cm
        self.pipe = pipe
        self.index = index
        self.generation = generation
        items = cm.pass_steps(pipe, 1.0, cm.decode_context, False)
        self.path = Path(items, resources.id)
        b = pipe.micro_batch_size
        self.decode = [None] + [self.path.variant(cm.pass_steps(pipe, float(n), cm.decode_context, False))
                                for n in range(1, b + 1)]
        self.prefill: dict[int, tuple] = {}
        self.slots = [Slot(k) for k in range(pipe.num_micro_batches)]
        self.free = b * pipe.num_micro_batches
        self.queue: deque[int] = deque()
        self.live: dict[int, list] = {}  # pass id -> pass
        self.devices = set()
        for r in self.path.resources:
            key = resources.keys[r]
            self.devices.update((key,) if isinstance(key, str) else key)
        self.up = not (self.devices & down)
        self.draining = False

    def prefill_variant(self, prompt: int) -> tuple:
        hit = self.prefill.get(prompt)
        if hit is None:
            cm = self.cm
            if prompt <= EXACT_PROMPT_MAX or prompt == int(cm.prompt):
                hit = self.path.variant(cm.pass_steps(self.pipe, float(prompt), prompt / 2.0, True))
            else:
                k = int(math.floor(math.log(prompt / EXACT_PROMPT_MAX) / math.log(PROMPT_GRID_RATIO)))
                lo, hi = grid(k), grid(k + 1)
                while lo > prompt:
                    k -= 1
                    lo, hi = grid(k), lo
                while hi < prompt:
                    k += 1
                    lo, hi = hi, grid(k + 1)
                if prompt in (lo, hi):
                    hit = self.path.variant(cm.pass_steps(self.pipe, float(prompt), prompt / 2.0, True))
                else:
                    v0, v1 = self.prefill_variant(lo), self.prefill_variant(hi)
                    w = (prompt - lo) / (hi - lo)
                    hit = tuple([x + w * (y - x) for x, y in zip(a, b)] for a, b in zip(v0, v1))
            self.prefill[prompt] = hit
        return hit


def grid(k: int) -> int:
    """Prompt length of grid point ``k`` >= 0 (k = 0 is EXACT_PROMPT_MAX; whole, strictly increasing:
    neighbours differ by 4 tokens or more)."""
    return int(round(EXACT_PROMPT_MAX * PROMPT_GRID_RATIO ** k))
