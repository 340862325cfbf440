"""Runtime tests. Skipped when the torch extra is absent (`make test` installs it).

Multi-process tests run on loopback only, each bounded in time (the launcher's ``run_timeout_s``,
subprocess timeouts), and check that every process they started is gone afterwards.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from planner import api  # noqa: E402
from planner.domain.plan import Plan  # noqa: E402

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[2]
INSTANCE = ROOT / "instances" / "runtime-loopback.toml"
PLANS = ROOT / "instances" / "runtime-plans"


@pytest.fixture(scope="session")
def loopback():
    return api.load_instance(INSTANCE)


@pytest.fixture(scope="session")
def reference_model():
    from planner.executor import load_reference

    return load_reference()


def shipped_plan(name: str) -> Plan:
    return Plan.load(PLANS / f"{name}.json")


def alive(pid: int) -> bool:
    """Whether process ``pid`` still exists (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().split()[2] != "Z"
    except FileNotFoundError:
        return False
