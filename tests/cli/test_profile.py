"""moeplan profile: writes and summarises a profile, checks the output before measuring."""

from __future__ import annotations

from pathlib import Path

import pytest

from planner.cli import profile as profile_cli
from planner.cli.profile import run_profile_command
from planner.domain.errors import InputError
from planner.domain.profile import HardwareProfile
from tests.helpers import synthetic_profile


def test_run_profile_command_writes_and_summarises(tmp_path, monkeypatch):
    calls = []

    def fake_measure(backend, device, quick, progress):
        calls.append((backend, device, quick))
        return synthetic_profile()

    monkeypatch.setattr(profile_cli, "measure", fake_measure)
    out = tmp_path / "mine.json"
    lines = []
    assert run_profile_command("cpu", str(out), True, None, lines.append) == 0
    assert calls == [("numpy", "cpu", True)]
    assert HardwareProfile.load(out) == synthetic_profile()
    text = "\n".join(lines)
    assert "GFLOP/s" in text and "GB/s" in text and "ratio" in text and str(out) in text


def test_run_profile_command_defaults_to_torch_on_cuda(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(profile_cli, "measure", lambda backend, device, quick, progress: calls.append(backend) or synthetic_profile())
    run_profile_command("cuda", str(tmp_path / "g.json"), False, None, lambda line: None)
    assert calls == ["torch"]


def test_run_profile_command_unwritable_output_fails_before_measuring(tmp_path, monkeypatch):
    monkeypatch.setattr(profile_cli, "measure", lambda **kw: pytest.fail("measured although the output is unwritable"))
    # /proc/x: a folder that exists and that even root cannot create a file in
    for target in (tmp_path / "missing" / "p.json", tmp_path, Path("/proc/x")):
        with pytest.raises(InputError) as exc:
            run_profile_command("cpu", str(target), True, None, lambda line: None)
        assert str(target) in str(exc.value)
