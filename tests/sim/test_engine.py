"""The discrete-event simulator against the cost model, queueing laws and its own bookkeeping."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tomli_w

from planner.cli.main import main
from planner.cost.costmodel import CostModel
from planner.cost.evaluation import Fork
from planner.domain.changes import changed_instance
from planner.domain.data_files import RequestTrace
from planner.domain.instance import load_instance
from planner.domain.plan import ExpertPlacement, Pipeline, Plan, Stage
from planner.planners.migration import migration
from planner.sim import ReplanHook, SimEvent, SimResult, simulate
from tests.helpers import LINE, REPO, assert_steps_add_up, build

# Compute-bound devices (slow FLOP/s, fast memory) joined by a fast link: the work of a decode step
# grows with the sequences in it, so the cost model's busy-time bound is what saturation reaches.
COMPUTE = {
    "name": "compute-bound",
    "model": LINE["model"],
    "devices": [
        {"name": "end", "tier": "end", "memory_gb": 1, "memory_bandwidth_gb_per_s": 1000, "power_w": 10,
         "compute_efficiency": 1.0, "bandwidth_efficiency": 1.0, "peak_tflops": {"fp16": 0.01}},
        {"name": "edge", "tier": "edge", "memory_gb": 1, "memory_bandwidth_gb_per_s": 1000, "power_w": 50,
         "compute_efficiency": 1.0, "bandwidth_efficiency": 1.0, "peak_tflops": {"fp16": 0.02}},
    ],
    "links": [{"a": "end", "b": "edge", "bandwidth_gbps": 10, "rtt_ms": 0.1}],
    "workload": {"origin": "end", "arrival_rate_per_s": 1, "prompt_tokens": 32, "output_tokens": 64, "max_batch": 16},
}


def pipeline_plan(stages, b=1, m=1, **kw) -> Plan:
    return Plan((Pipeline(tuple(Stage(*s) for s in stages), micro_batch_size=b, num_micro_batches=m, **kw),))


def remote_line_plan(b=1, m=1) -> Plan:
    """LINE: phone | codec 64 | edge; expert 5 of layer 0 on the edge, expert 3 of layer 2 half on the gpu."""
    return pipeline_plan((("phone", 0, 1), ("edge", 1, 4)), b, m, codec_ranks=(64,), expert_placement=(
        ExpertPlacement(0, 5, ("edge",), (1.0,)), ExpertPlacement(2, 3, ("edge", "gpu"), (0.5, 0.5))))


def one_request(instance, at=0.0, prompt=None, output=None) -> RequestTrace:
    w = instance.workload
    return RequestTrace(np.array([at]), np.array([prompt or w.prompt_tokens]), np.array([output or w.output_tokens]))


def at_rate(instance, plan, factor):
    """The instance with its arrival rate at ``factor`` x the plan's predicted requests/s."""
    return changed_instance(instance, arrival_rate_per_s=factor * CostModel(instance).evaluate(plan).requests_per_s)


# ----- the cost model's steps ---------------------------------------------------------------------

@pytest.mark.parametrize("prefill", [False, True])
def test_pass_steps_add_up_to_the_cost_models_pass(line, prefill):
    cm = CostModel(line)
    pipe = remote_line_plan().pipelines[0]
    tokens, context = (64.0, 32.0) if prefill else (3.0, cm.decode_context)
    steps = assert_steps_add_up(cm, pipe, tokens, context, prefill)
    forks = [s for s in steps if isinstance(s, Fork)]
    assert len(forks) == 2 and {len(f.branches) for f in forks} == {2}


# ----- one request on an idle pipeline ------------------------------------------------------------

def default_with_remote_experts(instance) -> Plan:
    """Mixtral: orin | codec 512 | a100, micro-batch 1, two experts of layer 1 served by the a100."""
    return pipeline_plan((("orin", 0, 5), ("a100", 5, 32)), codec_ranks=(512,), expert_placement=(
        ExpertPlacement(1, 0, ("a100",), (1.0,)), ExpertPlacement(1, 6, ("orin", "a100"), (0.7, 0.3))))


@pytest.mark.parametrize("case", ["line-remote-codec", "line-gpu-only", "default-remote-codec"])
def test_one_request_takes_exactly_the_cost_models_latency(case):
    if case == "default-remote-codec":
        inst = load_instance(REPO / "instances" / "default.toml")
        plan = default_with_remote_experts(inst)
    else:
        inst = build(LINE)
        plan = remote_line_plan() if case == "line-remote-codec" else pipeline_plan((("gpu", 0, 4),))
    ev = CostModel(inst).evaluate(plan)
    res = simulate(inst, plan, trace=one_request(inst, at=3.0))
    assert res.finished.all()
    assert res.ttft_s[0] == pytest.approx(ev.ttft_s, rel=1e-9)
    assert res.tpot_s[0] == pytest.approx(ev.tpot_s, rel=1e-9)
    assert res.latency_s[0] == pytest.approx(ev.latency_s, rel=1e-9)
    assert res.metrics()["latency_ms"]["p99"] == pytest.approx(ev.latency_s * 1e3, rel=1e-9)


def test_long_prompts_are_priced_within_a_tenth_of_a_percent():
    """Prompts above 256 tokens are interpolated on a grid; the instance's own prompt is exact."""
    inst = load_instance(REPO / "instances" / "default.toml")
    plan = default_with_remote_experts(inst)
    cm = CostModel(inst)
    for prompt in (300, 1104, 5001):
        res = simulate(inst, plan, trace=one_request(inst, prompt=prompt, output=1))
        exact = sum(s.latency_s for s in cm.pass_steps(plan.pipelines[0], float(prompt), prompt / 2.0, True))
        assert res.ttft_s[0] == pytest.approx(exact, rel=1e-3)
        assert res.latency_s[0] == res.ttft_s[0]  # one output token: the prefill gives it


# ----- steady state -------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["busy-bound", "latency-loop"])
def test_saturated_throughput_is_the_cost_models(case):
    """Arrivals at 3x capacity; throughput over the finishes from the 20th to the 80th percentile."""
    if case == "busy-bound":
        inst = build(COMPUTE)
        plan = pipeline_plan((("end", 0, 2), ("edge", 2, 4)), b=4, m=4)
    else:
        inst = build(LINE)
        plan = pipeline_plan((("phone", 0, 1), ("gpu", 1, 4)), b=1, m=8)
    ev = CostModel(inst).evaluate(plan)
    assert ev.bottleneck.startswith("latency loop") == (case == "latency-loop")
    n = 2000
    res = simulate(at_rate(inst, plan, 3.0), plan, num_requests=n, seed=1)
    ends = np.sort(res.finish_s)
    measured = res.throughput_between(ends[n // 5], ends[4 * n // 5])
    assert measured == pytest.approx(ev.throughput_tokens_per_s, rel=0.02)


def test_littles_law_holds_below_saturation(line):
    plan = pipeline_plan((("phone", 0, 1), ("edge", 1, 4)), b=4, m=2)
    res = simulate(at_rate(line, plan, 0.6), plan, num_requests=4000, seed=3)
    assert res.finished.all()
    t0, t1 = np.quantile(res.arrival_s, [0.1, 0.9])
    start, end = res.arrival_s, res.finish_s
    in_system = np.clip(np.minimum(end, t1) - np.maximum(start, t0), 0.0, None).sum() / (t1 - t0)  # mean N
    inside = (start >= t0) & (start < t1)
    rate = inside.sum() / (t1 - t0)
    assert in_system == pytest.approx(rate * (end - start)[inside].mean(), rel=0.02)


# ----- bookkeeping --------------------------------------------------------------------------------

def test_every_request_finishes_or_is_dropped_with_a_reason(line):
    plan = remote_line_plan(b=2, m=2)
    events = [SimEvent(0.5, "device_down", "edge"), SimEvent(1.5, "device_up", "edge")]
    res = simulate(at_rate(line, plan, 2.0), plan, num_requests=600, seed=2, events=events, timeout_s=0.4,
                   max_retries=1)
    m = res.metrics()
    assert m["requests_total"] == 600 == m["requests_finished"] + m["requests_dropped"]
    assert sum(m["drop_reasons"].values()) == m["requests_dropped"] > 0
    assert set(m["drop_reasons"]) <= {"timeout", "device failure"}
    dropped = res.dropped != ""
    assert np.array_equal(dropped, np.isnan(res.finish_s)) and np.array_equal(dropped, ~np.isnan(res.dropped_s))
    assert json.loads(json.dumps(m)) == m  # JSON-safe


def test_timeouts_drop_requests_when_their_wait_runs_out(line):
    plan = pipeline_plan((("phone", 0, 1), ("edge", 1, 4)), b=2, m=1)
    res = simulate(at_rate(line, plan, 3.0), plan, num_requests=300, seed=0, timeout_s=0.2)
    late = res.dropped == "timeout"
    assert late.sum() > 0 and res.metrics()["drop_reasons"] == {"timeout": int(late.sum())}
    assert np.allclose(res.dropped_s[late] - res.arrival_s[late], 0.2)


def test_same_seed_same_run_other_seed_other_arrivals(line):
    plan = remote_line_plan(b=2, m=2)
    a, b = (simulate(line, plan, num_requests=300, seed=7) for _ in range(2))
    c = simulate(line, plan, num_requests=300, seed=8)
    ma, mb = a.metrics(), b.metrics()
    ma.pop("wall_time_s"), mb.pop("wall_time_s")
    assert ma == mb
    assert np.array_equal(a.finish_s, b.finish_s)
    assert not np.array_equal(a.arrival_s, c.arrival_s)


def test_a_trace_repeats_shifted_by_its_span_plus_a_mean_gap(line):
    trace = RequestTrace(np.array([0.0, 1.0, 2.0]), np.array([10, 20, 30]), np.array([3, 4, 5]))
    res = simulate(line, remote_line_plan(), trace=trace, num_requests=7)
    assert res.arrival_s.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert res.output_tokens.tolist() == [3, 4, 5, 3, 4, 5, 3]
    assert simulate(line, remote_line_plan(), trace=trace, duration_s=4.5).arrival_s.size == 5
    poisson = simulate(line, remote_line_plan(), duration_s=20.0, seed=1)
    assert poisson.arrival_s.max() < 20.0 and poisson.arrival_s.size > 20


def test_a_rate_event_compresses_later_arrivals(line):
    plan = remote_line_plan()
    base = simulate(line, plan, num_requests=200, seed=4)
    t = float(base.arrival_s[100])
    fast = simulate(line, plan, num_requests=200, seed=4, events=[SimEvent(t, "rate", value=2.0)])
    after = base.arrival_s > t
    assert np.array_equal(fast.arrival_s[~after], base.arrival_s[~after])
    assert np.allclose(fast.arrival_s[after], t + (base.arrival_s[after] - t) / 2.0)


def test_timeline_holds_resource_intervals(line):
    res = simulate(line, remote_line_plan(b=2, m=2), num_requests=50, record_timeline=True, timeline_cap=400)
    assert 0 < len(res.timeline) <= 400
    names = {"phone", "edge", "gpu", "edge<->phone", "edge<->gpu"}
    for resource, start, end, what in res.timeline:
        assert resource in names and start < end and what


# ----- network, failures, re-planning -------------------------------------------------------------

def test_halving_a_link_slows_the_transfers_after_the_change(tiny):
    plan = pipeline_plan((("cloud", 0, 1),))
    trace = RequestTrace(np.array([0.0, 100.0]), np.array([10, 10]), np.array([4, 4]))
    res = simulate(tiny, plan, trace=trace, events=[SimEvent(50.0, "bandwidth", ("cloud", "end"), 0.5)])
    before = CostModel(tiny).evaluate(plan).latency_s
    after = CostModel(changed_instance(tiny, bandwidth_factor=0.5)).evaluate(plan).latency_s
    assert after > before
    assert res.latency_s == pytest.approx([before, after], rel=1e-9)


def test_a_bandwidth_series_is_read_per_second_and_cycled(tiny):
    plan = pipeline_plan((("cloud", 0, 1),))
    bw = tiny.links[0].bandwidth_bytes_per_s
    series = np.array([bw] * 50 + [bw / 2] * 50)  # bytes/s per second; 100 s, then again
    trace = RequestTrace(np.array([10.0, 60.0, 160.0]), np.array([10] * 3), np.array([4] * 3))
    res = simulate(tiny, plan, trace=trace, bandwidth_series=series)
    full = CostModel(tiny).evaluate(plan).latency_s
    half = CostModel(changed_instance(tiny, bandwidth_factor=0.5)).evaluate(plan).latency_s
    assert res.latency_s == pytest.approx([full, half, half], rel=1e-9)


def test_a_failed_device_stops_its_pipeline_and_recovery_resumes_it(line):
    plan = pipeline_plan((("phone", 0, 1), ("edge", 1, 4)), b=2, m=2)
    down, up = 1.0, 3.0
    events = [SimEvent(down, "device_down", "edge"), SimEvent(up, "device_up", "edge")]
    inst = at_rate(line, plan, 0.7)
    res = simulate(inst, plan, num_requests=400, seed=5, events=events, record_timeline=True)
    m = res.metrics()
    assert m["requests_retried"] > 0 and m["requests_finished"] == 400
    assert not any(r == "edge" and s < up and e > down for r, s, e, _ in res.timeline)
    assert (res.finish_s > up).any()
    # Without retries, the requests in flight at the failure are dropped.
    strict = simulate(inst, plan, num_requests=400, seed=5, events=events, max_retries=0)
    assert strict.metrics()["drop_reasons"] == {"device failure": m["requests_retried"]}
    # A device that never comes back leaves the rest unserved.
    lost = simulate(inst, plan, num_requests=400, seed=5, events=events[:1])
    assert lost.metrics()["drop_reasons"]["device failure"] > 0
    assert lost.metrics()["requests_finished"] + lost.metrics()["requests_dropped"] == 400


def test_a_replan_hook_is_called_and_its_migration_charged(line):
    first = pipeline_plan((("phone", 0, 1), ("edge", 1, 4)), b=2, m=2)
    second = pipeline_plan((("phone", 0, 2), ("edge", 2, 4)), b=2, m=2)
    calls = []

    def policy(observed, current):
        calls.append(current)
        return second if current == first else None

    inst = at_rate(line, first, 0.5)
    res = simulate(inst, first, num_requests=600, seed=6, replan=ReplanHook(every_s=2.0, policy=policy, decision_s=0.5))
    m = res.metrics()
    nbytes = migration(first, second, inst)[0]
    assert calls[0] == first and len(calls) >= 2
    assert m["replans"] == 1 and m["migration_bytes"] == pytest.approx(nbytes) and nbytes > 0
    applied = next(r for r in m["replan_log"] if r["outcome"] == "applied")
    link = line.links[0].bandwidth_bytes_per_s  # phone<->edge: every copy crosses it
    assert applied["time_s"] == 2.0 and applied["effective_s"] >= 2.0 + 0.5 + nbytes / link
    assert res.plans == [first, second]
    later = res.arrival_s > applied["effective_s"]
    assert (res.plan_index[later] == 1).all() and (res.plan_index[res.arrival_s < 2.0] == 0).all()
    assert m["requests_finished"] == 600


def test_the_hook_sees_the_instance_as_observed(line):
    seen = []

    def policy(observed, current):
        seen.append(observed)

    plan = remote_line_plan()
    events = [SimEvent(0.5, "bandwidth", ("edge", "phone"), 0.5), SimEvent(0.7, "rate", value=3.0),
              SimEvent(0.8, "bandwidth", ("edge", "phone"), 0.45), SimEvent(0.9, "device_down", "gpu")]
    res = simulate(line, plan, num_requests=100, events=events,
                   replan=ReplanHook(on_bandwidth_change=0.25, policy=policy))
    # The halving and the device loss call the hook; 0.5 -> 0.45 is within 25 % of the last call.
    assert [r["trigger"] for r in res.replan_log] == ["bandwidth change", "device gpu down"]
    assert all(r["outcome"] == "kept" for r in res.replan_log)
    halved, lost = seen
    link = {frozenset((l.a, l.b)): l.bandwidth_bytes_per_s for l in halved.links}[frozenset(("edge", "phone"))]
    assert link == pytest.approx(0.5 * line.links[0].bandwidth_bytes_per_s)
    assert "gpu" not in lost.device_index
    assert lost.workload.arrival_rate_per_s == pytest.approx(3.0 * line.workload.arrival_rate_per_s)


def test_the_hook_can_see_the_harmonic_mean_bandwidth_of_a_window(line):
    key = ("edge", "phone")
    bw = {frozenset((l.a, l.b)): l.bandwidth_bytes_per_s for l in line.links}[frozenset(key)]
    series = np.array([bw] * 10 + [bw / 4] * 10)  # cycled: 10 s fast, 10 s slow
    trace = RequestTrace(np.arange(0.0, 40.0, 2.0), np.array([16] * 20), np.array([2] * 20))
    plan = remote_line_plan()
    seen = {}
    for window in (0.0, 10.0):
        calls = []

        def policy(observed, current, calls=calls):
            calls.append({frozenset((l.a, l.b)): l.bandwidth_bytes_per_s for l in observed.links}[frozenset(key)])

        simulate(line, plan, trace=trace, bandwidth_series={key: series},
                 replan=ReplanHook(every_s=15.0, on_bandwidth_change=None, policy=policy, bandwidth_window_s=window))
        seen[window] = calls[0]  # the call at 15 s
    assert seen[0.0] == pytest.approx(bw / 4)
    # Seconds 6..15: four at bw, six at bw / 4; their harmonic mean.
    assert seen[10.0] == pytest.approx(10 / (4 / bw + 6 * 4 / bw))
    with pytest.raises(ValueError, match="bandwidth_window_s"):
        ReplanHook(bandwidth_window_s=-1.0)


def test_the_default_hook_replans_around_a_lost_device(line):
    plan = pipeline_plan((("phone", 0, 1), ("gpu", 1, 4)), b=1, m=8)
    res = simulate(at_rate(line, plan, 0.5), plan, num_requests=300, seed=1,
                   events=[SimEvent(1.0, "device_down", "gpu")], replan=ReplanHook())
    m = res.metrics()
    assert m["replans"] == 1 and m["migration_bytes"] > 0
    assert "gpu" not in res.plans[1].devices
    assert m["requests_finished"] == 300 and m["requests_retried"] > 0


def test_bad_options_are_value_errors(line):
    plan = remote_line_plan()
    with pytest.raises(ValueError, match="every_s must be at least"):
        ReplanHook(every_s=0.01)  # shorter than the default decision time, 0.02 s
    with pytest.raises(ValueError, match="at most"):
        simulate(line, plan, duration_s=1e300)
    with pytest.raises(ValueError, match="num_requests"):
        simulate(line, plan, num_requests=10 ** 9)
    with pytest.raises(ValueError, match="device"):
        simulate(line, plan, events=[SimEvent(1.0, "device_down", "nope")])
    with pytest.raises(ValueError, match="kind"):
        simulate(line, plan, events=[SimEvent(1.0, "meteor")])
    with pytest.raises(ValueError, match="cannot run"):
        simulate(line, pipeline_plan((("phone", 0, 2),)))
    with pytest.raises(ValueError, match="num_requests"):
        simulate(line, plan, num_requests=0)
    with pytest.raises(ValueError, match="not a link"):
        simulate(line, plan, bandwidth_series={("phone", "gpu"): np.ones(3)})
    assert isinstance(simulate(line, plan, num_requests=3), SimResult)


# ----- command line -------------------------------------------------------------------------------

@pytest.fixture
def files(tmp_path):
    inst = tmp_path / "line.toml"
    inst.write_bytes(tomli_w.dumps(LINE).encode())
    plan = tmp_path / "plan.json"
    plan.write_text(remote_line_plan(b=2, m=2).to_json())
    return inst, plan


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_json(capsys, files, tmp_path):
    inst, plan = files
    bw = tmp_path / "bw.csv"
    bw.write_text("mbps\n100\n50\n")
    code, out, _ = run(capsys, "simulate", inst, plan, "--requests", 50, "--seed", 3, "--bandwidth-trace", bw,
                       "--link", "edge,phone", "--json")
    assert code == 0
    obj = json.loads(out)
    assert {"instance", "plan", "arrivals", "seed", "predicted", "metrics"} <= obj.keys()
    m = obj["metrics"]
    for key in ("requests_total", "requests_finished", "requests_dropped", "drop_reasons", "requests_retried",
                "throughput_tokens_per_s", "requests_per_s", "slo_attainment", "utilisation", "replans",
                "migration_bytes", "sim_time_s", "wall_time_s", "events_processed"):
        assert key in m
    for key in ("ttft_ms", "tpot_ms", "latency_ms"):
        assert set(m[key]) == {"mean", "p50", "p95", "p99"}
    assert m["requests_total"] == 50 and "edge<->phone" in m["utilisation"]


def test_cli_table_with_a_trace(capsys, files, tmp_path):
    inst, plan = files
    trace = tmp_path / "t.jsonl"
    trace.write_text("".join(json.dumps({"t": i * 0.1, "in": 20 + i, "out": 5}) + "\n" for i in range(30)))
    code, out, _ = run(capsys, "simulate", inst, plan, "--trace", trace, "--trace-columns",
                       "timestamp=t,prompt=in,output=out", "--replan-every", 1.0)
    assert code == 0 and "tokens/s" in out and "30 requests" in out and "re-plans" in out
    # the predicted column is capacity; the trace offers 30 requests over 2.9 s x 5 tokens = 50 tokens/s
    assert "predicted tokens/s is the plan's capacity at saturation; these arrivals offer about 50 tokens/s" in out


def test_cli_invalid_plan_exits_1_listing_violations(capsys, files, tmp_path):
    inst, _ = files
    plan = tmp_path / "bad.json"
    plan.write_text(pipeline_plan((("phone", 0, 4),)).to_json())  # the phone cannot hold the model
    code, out, err = run(capsys, "simulate", inst, plan)
    assert code == 1 and "memory" in err and out == ""
    code, out, _ = run(capsys, "simulate", inst, plan, "--json")
    assert code == 1 and json.loads(out)["violations"][0]["kind"] == "memory"


@pytest.mark.parametrize("bad", ["missing-trace", "bad-trace", "bad-columns", "bad-link", "bad-count", "negative-seed",
                                 "too-many", "too-long", "replan-too-often"])
def test_cli_bad_input_exits_2_naming_it(capsys, files, tmp_path, bad):
    inst, plan = files
    broken = tmp_path / "broken.csv"
    broken.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n0,10,x\n")
    bw = tmp_path / "bw.csv"
    bw.write_text("mbps\n100\n")
    argv, named = {
        "missing-trace": (["--trace", tmp_path / "nope.csv"], "nope.csv"),
        "bad-trace": (["--trace", broken], "broken.csv: line 2"),
        "bad-columns": (["--trace", broken, "--trace-columns", "when=ts"], "--trace-columns"),
        "bad-link": (["--bandwidth-trace", bw, "--link", "phone,gpu"], "--link"),
        "bad-count": (["--requests", 0], "--requests"),
        "negative-seed": (["--seed", -1], "--seed"),
        "too-many": (["--requests", 10 ** 9], "--requests"),
        "too-long": (["--duration", 1e300], "--duration"),
        "replan-too-often": (["--replan-every", 1e-300], "--replan-every"),
    }[bad]
    code, out, err = run(capsys, "simulate", inst, plan, *argv, "--json")
    assert code == 2 and json.loads(out)["status"] == "error" and named in err


@pytest.mark.parametrize("header,used", [
    ("TIMESTAMP,ContextTokens,GeneratedTokens", "timestamp = 'TIMESTAMP', prompt = 'ContextTokens', output = 'GeneratedTokens'"),
    ("arrival_time,input_tokens,output_tokens", "timestamp = 'arrival_time', prompt = 'input_tokens', output = 'output_tokens'"),
    ("Timestamp,Request tokens,Response tokens", "timestamp = 'Timestamp', prompt = 'Request tokens', output = 'Response tokens'"),
    ("created_at,prompt_len,completion_tokens", "timestamp = 'created_at', prompt = 'prompt_len', output = 'completion_tokens'"),
])
def test_cli_trace_columns_are_recognised_and_named(capsys, files, tmp_path, header, used):
    inst, plan = files
    trace = tmp_path / "trace.csv"
    trace.write_text(header + "\n" + "".join(f"{i * 0.5},{20 + i},5\n" for i in range(10)))
    code, out, err = run(capsys, "simulate", inst, plan, "--trace", trace)
    assert code == 0 and "10 requests" in out
    assert f"trace {trace}: 10 requests; columns {used}" in err


def test_cli_trace_jsonl_keys_are_recognised(capsys, files, tmp_path):
    inst, plan = files
    trace = tmp_path / "t.jsonl"
    trace.write_text("".join(json.dumps({"timestamp": i * 0.1, "prompt_tokens": 20, "output_tokens": 5}) + "\n" for i in range(8)))
    code, _, err = run(capsys, "simulate", inst, plan, "--trace", trace)
    assert code == 0 and "columns timestamp = 'timestamp', prompt = 'prompt_tokens', output = 'output_tokens'" in err


def test_cli_trace_with_unknown_columns_says_what_to_do(capsys, files, tmp_path):
    inst, plan = files
    trace = tmp_path / "odd.csv"
    trace.write_text("t,p,o\n0,10,2\n")
    code, _, err = run(capsys, "simulate", inst, plan, "--trace", trace)
    assert code == 2 and "No column has a known name for timestamp, prompt, output: name them with --trace-columns" in err
    code, _, err = run(capsys, "simulate", inst, plan, "--trace", trace, "--trace-columns", "timestamp=t,prompt=p,output=o")
    assert code == 0 and "columns timestamp = 't', prompt = 'p', output = 'o'" in err


def test_bench_runs_on_a_few_requests(capsys):
    from planner.bench import simulator as bench_simulator

    assert bench_simulator.main(["--requests", "300", "--load", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "requests simulated 300" in out and "events processed" in out


def test_a_large_fleet_gets_resources_for_the_links_it_uses_only():
    from planner import api
    from planner.bench.scale import scale_instance
    from planner.sim.engine import EVERY_LINK_MAX

    inst = scale_instance("olmoe-1b-7b", 200)
    assert inst.num_links > EVERY_LINK_MAX
    plan = api.solve(inst, "dp").solution
    res = simulate(inst, plan, num_requests=5, seed=0)
    assert res.finished.sum() == 5
    links = [k for k in res.busy_s if "<->" in k]
    used = set(zip(plan.pipelines[0].devices, plan.pipelines[0].devices[1:]))
    assert 0 < len(links) <= 2 * (len(used) + 2)  # the stage-to-stage hops and the origin's, not 19,900 pairs
    assert len(res.busy_s) == len(inst.devices) + len(links)
