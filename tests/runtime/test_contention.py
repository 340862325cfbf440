"""More processes than cores is said, not hidden: the launcher's note and the fidelity report's
contention entry, and a measured slowdown factor applied to the stage predictions beside the plain ones."""

from __future__ import annotations

from planner.runtime import topology


def test_oversubscription_note_names_processes_and_cores(monkeypatch):
    monkeypatch.setattr(topology, "cores", lambda: 2)
    assert topology.oversubscription(2, 1) is None
    note = topology.oversubscription(3, 1)
    assert note is not None and "3 processes" in note and "2 core(s)" in note
    assert topology.oversubscription(2, 2) is not None  # threads count too
