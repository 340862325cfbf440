"""Shared fixtures (the builders behind them live in tests/helpers.py)."""

from __future__ import annotations

import pytest

from planner import api
from tests.helpers import CLUSTER, DEEPSEEK, LINE, TINY, build


@pytest.fixture
def tiny():
    return build(TINY)


@pytest.fixture
def line():
    return build(LINE)


@pytest.fixture(scope="module")
def cluster():
    return api.load_instance(CLUSTER)


@pytest.fixture(scope="module")
def deepseek():
    return api.load_instance(DEEPSEEK)
