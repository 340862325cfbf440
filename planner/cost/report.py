"""Human-readable summaries of instances, plans and solver comparisons, and the text tables they use
(the CLI's non-JSON output and the benchmarks' tables)."""

from __future__ import annotations

import math

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
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
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
            f"fleet: {len(instance.devices)} devices ({fleet}), {len(instance.links)} links\n"
            f"workload: origin {w.origin}, {w.arrival_rate_per_s:.3g} req/s, {w.prompt_tokens} prompt + "
            f"{w.output_tokens} output tokens, max batch {w.max_batch}, popularity {w.popularity_kind}; objective {instance.objective}")


def plan_summary(instance: Instance, plan: Plan) -> str:
    mt = plan.metrics
    lines = []
    for pi, pipe in enumerate(plan.pipelines):
        head = f"pipeline {pi}" + (f" (share {pipe.request_share:.2f})" if len(plan.pipelines) > 1 else "")
        lines.append(f"{head}: micro-batch {pipe.micro_batch_size} x {pipe.num_micro_batches} in flight")
        rows = []
        for si, s in enumerate(pipe.stages):
            d = instance.device(s.device)
            rank = pipe.codec_ranks[si] if si < len(pipe.codec_ranks) else None
            cut = "-" if si + 1 == len(pipe.stages) else ("uncompressed" if rank is None else f"rank {rank}")
            rows.append([str(si), s.device, d.tier, f"{s.first_layer}-{s.end_layer - 1}", str(s.end_layer - s.first_layer), cut])
        lines.append(table(["stage", "device", "tier", "layers", "n", "cut after"], rows))
        remote = len(pipe.expert_placement)
        if remote:
            lines.append(f"expert placement: {remote} experts placed off their layer's stage")
    mem = mt.get("memory_bytes", {})
    cap = mt.get("memory_capacity_bytes", {})
    rows = [[d, f"{mem[d] / GB:.2f}", f"{cap.get(d, 0) / GB:.2f}", f"{100 * mem[d] / cap[d]:.0f}%" if cap.get(d) else "-"]
            for d in sorted(mem)]
    lines.append("memory per device:")
    lines.append(table(["device", "used GB", "capacity GB", "use"], rows))
    lines.append(
        f"predicted: {_fmt(mt.get('throughput_tokens_per_s'))} tokens/s ({_fmt(mt.get('requests_per_s'))} req/s), "
        f"latency {_fmt(mt.get('latency_ms'), '.1f')} ms (TTFT {_fmt(mt.get('ttft_ms'), '.1f')} ms, "
        f"TPOT {_fmt(mt.get('tpot_ms'), '.1f')} ms), {_fmt(mt.get('energy_j_per_token'))} J/token; bottleneck: {mt.get('bottleneck', '-')}"
    )
    for link, b in sorted(mt.get("bytes_per_token", {}).items()):
        lines.append(f"  link {link}: {b:.4g} bytes per output token")
    return "\n".join(lines)


def result_row(r: Result) -> list[str]:
    mt = r.solution.metrics if r.solution is not None else {}
    return [r.solver, r.status.value, _fmt(r.objective), _fmt(r.bound), _fmt(r.gap, ".2%") if not math.isnan(r.gap) else "-",
            f"{r.solve_time_s:.3f}", _fmt(mt.get("throughput_tokens_per_s")), _fmt(mt.get("latency_ms"), ".1f"),
            r.message[:80] if r.solution is None else ""]


def compare_table(results: list[Result]) -> str:
    return table(["solver", "status", "objective", "bound", "gap", "time s", "tokens/s", "latency ms", "note"],
                 [result_row(r) for r in results])
