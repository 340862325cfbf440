"""Benchmark inputs: the synthetic and measured cellular series, the Azure request excerpt rescaled."""

import numpy as np
import pytest

from planner.bench import inputs as bench_inputs


def test_synthetic_series_matches_the_published_summary_and_its_seed(tmp_path):
    missing = tmp_path / "no-such-file.csv"
    a = bench_inputs.cellular_series("TMobile-LTE-short.up", seed=3, shared_file=missing)
    b = bench_inputs.cellular_series("TMobile-LTE-short.up", seed=3, shared_file=missing)
    c = bench_inputs.cellular_series("TMobile-LTE-short.up", seed=4, shared_file=missing)
    summary = bench_inputs.CELLULAR["TMobile-LTE-short.up"]
    assert a.synthetic and a.source == "synthetic series (seed 3)"
    assert np.array_equal(a.mbps, b.mbps) and not np.array_equal(a.mbps, c.mbps)
    assert a.mbps.size == summary.duration_s - 1
    assert a.mbps.mean() == pytest.approx(summary.mean_mbps, rel=1e-9)
    assert (a.mbps > 0).all()
    p10, p90 = np.percentile(a.mbps, [10, 90])
    assert summary.p10_mbps / 3 < p10 < summary.mean_mbps < p90 < 3 * summary.p90_mbps
    assert np.allclose(a.bytes_per_s, a.mbps * 1e6 / 8)


def test_unknown_cellular_trace_names_the_known_ones():
    with pytest.raises(ValueError, match="TMobile-LTE-short.up"):
        bench_inputs.cellular_series("nope")


@pytest.mark.skipif(not bench_inputs.SHARED_SERIES.is_file(), reason="../shared/data is not beside this repository")
def test_measured_series_is_read_from_shared_data_without_its_partial_last_second():
    s = bench_inputs.cellular_series("TMobile-LTE-short.up")
    summary = bench_inputs.CELLULAR["TMobile-LTE-short.up"]
    assert not s.synthetic and "mahimahi" in s.source
    assert s.mbps.size == summary.duration_s - 1
    assert s.mbps.mean() == pytest.approx(summary.mean_mbps, rel=0.02)


@pytest.mark.parametrize("text, where", [
    ("trace,second\nx,1\n", "header"),
    ("trace,second,mbps\nTMobile-LTE-short.up,1,fast\n", "line 2"),
    ("trace,second,mbps\nTMobile-LTE-short.up,1,-3\n", "line 2"),
])
def test_a_malformed_shared_series_is_an_input_error_naming_file_and_line(tmp_path, text, where):
    from planner.domain.errors import InputError

    bad = tmp_path / "series.csv"
    bad.write_text(text)
    with pytest.raises(InputError) as err:
        bench_inputs.cellular_series("TMobile-LTE-short.up", shared_file=bad)
    assert str(bad) in str(err.value) and where in str(err.value)
    # A file that does not hold the trace falls back to the synthetic series.
    other = tmp_path / "other.csv"
    other.write_text("trace,second,mbps\nVerizon-LTE-short.up,1,3.0\n")
    assert bench_inputs.cellular_series("TMobile-LTE-short.up", shared_file=other).synthetic


def test_azure_requests_are_rescaled_to_rate_and_token_means():
    t = bench_inputs.azure_requests(200, 0.5, 512, 128, seed=1)
    assert len(t.arrival_s) == 200 and t.arrival_s[0] == 0 and np.all(np.diff(t.arrival_s) >= 0)
    assert t.rate_per_s == pytest.approx(0.5)
    assert t.prompt_tokens.mean() == pytest.approx(512, rel=0.01)
    assert t.output_tokens.mean() == pytest.approx(128, rel=0.01)
    assert t.prompt_tokens.min() >= 1 and t.output_tokens.min() >= 1
    same = bench_inputs.azure_requests(200, 0.5, 512, 128, seed=1)
    assert np.array_equal(t.arrival_s, same.arrival_s)
