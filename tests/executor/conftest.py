"""Executor tests: tiny models (4 layers, hidden 64, 8 experts) of every supported family.

Skipped when the torch extra is absent; `make test` installs it, so they run in CI.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from planner.domain.plan import ExpertPlacement, Pipeline, Plan, Stage  # noqa: E402
from planner.executor import tiny_model  # noqa: E402

# Tiny models are dominated by per-op overhead: one thread is faster, and a second thread fights
# whatever else runs on a 2-core machine.
torch.set_num_threads(1)

_MODELS: dict = {}


def cached_tiny(family: str):
    """One tiny model per family for the whole session (seed 0); tests must not modify it."""
    if family not in _MODELS:
        _MODELS[family] = tiny_model(family)
    return _MODELS[family]


def plan_of(stages, placement=(), ranks=()) -> Plan:
    """A one-pipeline plan from (device, first, end) triples and (layer, expert, devices, shares) tuples."""
    return Plan((Pipeline(tuple(Stage(*s) for s in stages), tuple(ranks),
                          expert_placement=tuple(ExpertPlacement(l, e, tuple(d), tuple(sh)) for l, e, d, sh in placement)),))
