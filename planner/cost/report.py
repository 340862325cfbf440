"""Human-readable summaries of instances, plans and solver comparisons, and the text tables they use
(the CLI's non-JSON output and the benchmarks' tables)."""

from __future__ import annotations

import math
import textwrap

from planner.domain.instance import Instance
from planner.domain.plan import Plan
from planner.domain.units import GB
from solvers.result import Result


def _fmt(x, spec=".4g") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return format(x, spec)


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(out)


def instance_summary(instance: Instance) -> str:
    m = instance.model
    tiers = {}
    for d in instance.devices:
        tiers.setdefault(d.tier, []).append(d.name)
    fleet = "; ".join(f"{t}: {', '.join(n[:6])}{' ...' if len(n) > 6 else ''}" for t, n in tiers.items())
    w = instance.workload
    return (f"instance {instance.name}: {m.name} ({m.total_params / 1e9:.1f} B params, {m.active_params / 1e9:.1f} B active, "
            f"{m.num_moe_layers}/{m.num_layers} MoE layers x {m.num_experts} experts, top-{m.top_k})\n"
            f"fleet: {len(instance.devices)} devices ({fleet}), {instance.num_links} links\n"
            f"workload: origin {w.origin}, {w.arrival_rate_per_s:.3g} req/s, {w.prompt_tokens} prompt + "
            f"{w.output_tokens} output tokens, max batch {w.max_batch}, popularity {w.popularity_kind}; objective {instance.objective}")


def plan_summary(instance: Instance, plan: Plan) -> str:
    """The plan as a newcomer reads it: stages, what crosses each cut, batching, memory, the predicted
    figures and what limits them, each with a line that says what it means."""
    mt = plan.metrics
    m, w = instance.model, instance.workload
    lines = []
    for pi, pipe in enumerate(plan.pipelines):
        head = f"pipeline {pi}" + (f" (serves {pipe.request_share:.0%} of the requests)" if len(plan.pipelines) > 1 else "")
        seqs = pipe.micro_batch_size * pipe.num_micro_batches
        lines.append(f"{head}: micro-batches of {pipe.micro_batch_size} sequence(s), {pipe.num_micro_batches} in flight at "
                     f"once: {seqs} sequence(s) decode together")
        rows = []
        for si, s in enumerate(pipe.stages):
            d = instance.device(s.device)
            rank = pipe.codec_ranks[si] if si < len(pipe.codec_ranks) else None
            cut = "-" if si + 1 == len(pipe.stages) else ("uncompressed" if rank is None else f"rank {rank}")
            rows.append([str(si), s.device, d.tier, f"{s.first_layer}-{s.end_layer - 1}", str(s.end_layer - s.first_layer), cut])
        lines.append(table(["stage", "device", "tier", "layers", "layers in all", "cut after"], rows))
        if len(pipe.stages) > 1:
            lines.append(f"  cut after: what leaves the stage for the next one, per token: \"rank R\" = a low-rank codec sends "
                         f"R numbers instead of the {m.hidden_size} of the hidden state (less traffic, a small accuracy "
                         f"loss); \"uncompressed\" = the whole hidden state")
        remote = len(pipe.expert_placement)
        if remote:
            lines.append(f"expert placement: {remote} experts placed off their layer's stage")
    mem = mt.get("memory_bytes", {})
    cap = mt.get("memory_capacity_bytes", {})
    rows = [[d, f"{mem[d] / GB:.2f}", f"{cap.get(d, 0) / GB:.2f}", f"{100 * mem[d] / cap[d]:.0f}%" if cap.get(d) else "-"]
            for d in sorted(mem)]
    lines.append("memory per device:")
    lines.append(table(["device", "used GB", "capacity GB", "use"], rows))
    full = [d for d in sorted(mem) if cap.get(d) and mem[d] >= 0.995 * cap[d]]
    if full:
        seqs = max(p.micro_batch_size * p.num_micro_batches for p in plan.pipelines)
        lines.append(f"  {', '.join(full)} at 100 % is allowed: a plan may fill a device's memory_gb, which is its usable "
                     f"memory (a catalog card leaves the runtime's share out, e.g. 80 GiB of A100 HBM kept as 80 GB). "
                     f"Used = weights + KV cache for {seqs} sequences of {w.prompt_tokens + w.output_tokens} tokens + a "
                     f"prefill workspace. For more headroom, lower memory_gb or workload.max_batch.")
    tps, rps = mt.get("throughput_tokens_per_s"), mt.get("requests_per_s")
    offered = w.arrival_rate_per_s * w.output_tokens
    lines.append(
        f"predicted capacity: {_fmt(tps)} tokens/s ({_fmt(rps)} req/s) at saturation, latency {_fmt(mt.get('latency_ms'), '.1f')} ms "
        f"(TTFT {_fmt(mt.get('ttft_ms'), '.1f')} ms, TPOT {_fmt(mt.get('tpot_ms'), '.1f')} ms), "
        f"{_fmt(mt.get('energy_j_per_token'))} J/token")
    if tps:
        verdict = (f"the plan keeps up, busy {offered / tps:.0%} of the time" if offered <= tps
                   else f"more than the plan serves: queues grow, {tps / offered:.0%} of it is served")
        lines.append(f"  capacity is what the plan serves with every slot busy; the workload offers {w.arrival_rate_per_s:.3g} "
                     f"req/s x {w.output_tokens} output tokens = {offered:.4g} tokens/s ({verdict}). "
                     f"`moeplan simulate` at the workload's rate shows about the offered rate, not the capacity.")
    bottleneck = mt.get("bottleneck", "-")
    lines.append(f"bottleneck: {bottleneck}")
    lines.append(f"  {_bottleneck_meaning(bottleneck)}")
    for link, b in sorted(mt.get("bytes_per_token", {}).items()):
        lines.append(f"  link {link}: {b:.4g} bytes per output token")
    return "\n".join(lines)


def _bottleneck_meaning(bottleneck: str) -> str:
    if "latency loop" in bottleneck:
        return ("no device or link is saturated: throughput is the sequences in flight divided by the time each takes "
                "(in flight / latency); more in flight (a larger workload.max_batch, when memory allows) would raise it")
    if bottleneck.startswith("link") or "link " in bottleneck:
        return "this link is busy all the time at capacity: a faster link, or a smaller codec rank at its cut, would raise throughput"
    return "this device is busy all the time at capacity: moving layers or experts off it would raise throughput"


DEFAULT_FIRST = "route-aware"  # planner.api.DEFAULT_SOLVER: listed first among equal objectives


def best_result(results: list[Result]) -> Result | None:
    """The result with the best objective among those with a plan, or None. Among equal objectives
    the default solver, else the first given: never the fastest, so the same input gives the same
    answer from run to run."""
    ranked = _ranked(results)
    return ranked[0] if ranked and ranked[0].solution is not None else None


def _ranked(results: list[Result]) -> list[Result]:
    """Results with a plan by objective, best first, equal objectives (within 1e-9) with the default
    solver first and the others in the given order; then those without a plan, in the given order."""
    with_plan = [r for r in results if r.solution is not None and not math.isnan(r.objective)]
    sign = -1.0 if any(r.sense == "max" for r in with_plan) else 1.0
    groups: list[list[Result]] = []
    for r in sorted(with_plan, key=lambda r: sign * r.objective):
        if groups and math.isclose(r.objective, groups[-1][0].objective, rel_tol=1e-9):
            groups[-1].append(r)
        else:
            groups.append([r])
    ranked = [r for group in groups for r in sorted(group, key=lambda r: r.solver != DEFAULT_FIRST)]
    return ranked + [r for r in results if r not in with_plan]


def status_text(r: Result) -> str:
    """The status, with "optimal" qualified by the solver's space: an exact solver proves its
    optimum over the plans it considers, not over every plan."""
    return f"optimal in {r.solver}'s space" if r.status.value == "optimal" else r.status.value


def result_row(r: Result) -> list[str]:
    mt = r.solution.metrics if r.solution is not None else {}
    return [r.solver, status_text(r), _fmt(r.objective), _fmt(r.bound), _fmt(r.gap, ".2%") if not math.isnan(r.gap) else "-",
            f"{r.solve_time_s:.3f}", _fmt(mt.get("throughput_tokens_per_s")), _fmt(mt.get("latency_ms"), ".1f"),
            r.stop_reason or "-"]


def compare_table(results: list[Result]) -> str:
    """Every result, best objective first, the best marked ``*``; then each message in full."""
    ranked = _ranked(results)
    best = best_result(results)
    rows = []
    for r in ranked:
        tie = best is not None and r.solution is not None and math.isclose(r.objective, best.objective, rel_tol=1e-9)
        rows.append(["*" if tie else "", *result_row(r)])
    lines = [table(["", "solver", "status", "objective", "bound", "gap", "time s", "tokens/s", "latency ms", "stopped"], rows)]
    if best is not None:
        lines.append(f"* best objective ({instance_objective_words(best)}): {best.solver}"
                     + (" and its equals" if sum(1 for r in rows if r[0]) > 1 else ""))
    if any(r.status.value == "optimal" for r in results):
        lines.append("optimal in X's space: no better plan exists among the plans solver X considers (docs/solvers.md); "
                     "a plan outside that space may be better")
    notes = [r for r in ranked if r.message]
    if notes:
        lines.append("notes:")
        for r in notes:
            lines.append(textwrap.fill(r.message, width=110, initial_indent=f"  {r.solver}: ", subsequent_indent="    "))
    return "\n".join(lines)


def instance_objective_words(r: Result) -> str:
    return "highest" if r.sense == "max" else "lowest"
