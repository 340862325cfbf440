"""IdentityMemo: computed once per distinct parts; objects by identity, scalars by value."""

from __future__ import annotations

from planner.domain.memo import IdentityMemo


def _counting():
    calls = []

    def compute():
        calls.append(1)
        return len(calls)

    return calls, compute


def test_equal_scalars_built_anew_hit_and_other_objects_miss():
    memo = IdentityMemo(8)
    calls, compute = _counting()
    part = (1, 2)
    assert memo.get((part, f"pipeline {len(part)}", 0.5 * 2), compute) == 1
    # an equal string and float made again, the same tuple: remembered
    assert memo.get((part, "pipeline " + str(2), float("1.0")), compute) == 1
    # an equal but different tuple: computed again
    assert memo.get((tuple([1, 2]), "pipeline 2", 1.0), compute) == 2
    assert len(calls) == 2


def test_mutable_parts_are_never_remembered_and_the_memo_starts_over_when_full():
    memo = IdentityMemo(2)
    calls, compute = _counting()
    items = [1, 2]
    memo.get((items,), compute)
    memo.get((items,), compute)
    assert len(calls) == 2
    keep = [(i,) for i in range(3)]
    for k in keep:
        memo.get((k,), compute)
    assert len(memo._entries) <= 2
