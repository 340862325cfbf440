"""The ``moeplan`` command line (also ``python -m planner``).

Exit codes: 0 success, 1 infeasible / no plan / invalid plan, 2 bad input (the message names the
file and field). ``--json`` prints exactly one JSON object on stdout; logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path

from planner.domain.errors import InputError, MoeplanError
from planner.domain.data_files import read_json

EXIT_OK, EXIT_NO_PLAN, EXIT_BAD_INPUT = 0, 1, 2


def _clean(x):
    """JSON-safe copy: NaN/inf become null."""
    if isinstance(x, float):
        return None if not math.isfinite(x) else x
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if hasattr(x, "item") and callable(x.item):
        return _clean(x.item())
    return x


def emit_json(obj) -> None:
    sys.stdout.write(json.dumps(_clean(obj), indent=2) + "\n")


def log(msg: str) -> None:
    print(msg, file=sys.stderr)


def write_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same folder, so nothing is half-written."""
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise InputError_(path, f"folder {str(folder)!r} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, target)
    except OSError as exc:
        raise InputError_(path, f"cannot be written: {exc.strerror}") from None


def InputError_(file: str, message: str) -> InputError:
    from planner.domain.errors import Problem

    return InputError(Problem(file, "", message))


def result_json(result) -> dict:
    plan = result.solution
    return {
        "status": result.status.value,
        "solver": result.solver,
        "objective": result.objective,
        "bound": result.bound,
        "gap": result.gap,
        "solve_time_s": result.solve_time_s,
        "sense": result.sense,
        "stop_reason": result.stop_reason,
        "message": result.message,
        "plan": plan.to_dict() if plan is not None else None,
        "metrics": plan.metrics if plan is not None else None,
    }


# ----- commands -------------------------------------------------------------------------------

def cmd_solve(args) -> int:
    from planner import api
    from planner.cli import report

    instance = api.load_instance(args.instance)
    options = {}
    if args.progress:
        options["progress"] = log
    if args.export:
        if args.solver != "milp":
            raise ValueError("--export writes the MILP (.lp or .mps): use --solver milp")
        if Path(args.export).suffix.lower() not in (".lp", ".mps"):
            raise ValueError(f"--export {args.export}: the file name must end in .lp or .mps")
        options["export"] = args.export
    result = api.solve(instance, args.solver, time_limit=args.time_limit, seed=args.seed, **options)
    if args.output and result.solution is not None:
        write_atomic(args.output, result.solution.to_json() + "\n")
    if args.json:
        emit_json(result_json(result))
    else:
        print(report.instance_summary(instance))
        print(f"solver {result.solver}: {result.status.value} in {result.solve_time_s:.3f} s")
        if result.solution is not None:
            print(report.plan_summary(instance, result.solution))
            if args.output:
                print(f"plan written to {args.output}")
            if args.export:
                print(f"model written to {args.export}")
        else:
            print(result.message)
    return EXIT_OK if result.solution is not None else EXIT_NO_PLAN


def cmd_compare(args) -> int:
    from planner import api
    from planner.cli import report

    instance = api.load_instance(args.instance)
    names = [s.strip() for s in args.solvers.split(",") if s.strip()] if args.solvers else api.available_solvers()
    for n in names:
        api.registry.get(n, problem="instance")  # unknown names fail before any work
    results = []
    for n in names:
        log(f"solving with {n} ...")
        results.append(api.solve(instance, n, time_limit=args.time_limit, seed=args.seed))
    if args.json:
        emit_json({"instance": instance.name, "objective": instance.objective, "results": [result_json(r) for r in results]})
    else:
        print(report.instance_summary(instance))
        print(report.compare_table(results))
    return EXIT_OK if any(r.solution is not None for r in results) else EXIT_NO_PLAN


def cmd_validate(args) -> int:
    from planner import api
    from planner.cli import report
    from planner.domain.plan import Plan

    instance = api.load_instance(args.instance)
    out = {"instance": instance.name, "instance_ok": True}
    why = api.capacity_check(instance)
    if args.plan is None:
        if args.json:
            emit_json({**out, "capacity": why})
        else:
            print(report.instance_summary(instance))
            print("instance OK" + (f" (but {why})" if why else ""))
        return EXIT_OK
    plan = Plan.load(args.plan)
    violations = api.validate(instance, plan)
    if args.json:
        emit_json({**out, "plan_ok": not violations, "violations": [{"kind": v.kind, "message": v.message} for v in violations]})
    elif violations:
        print(f"plan {args.plan}: {len(violations)} violation(s)")
        for v in violations:
            print(f"  {v}")
    else:
        print(f"plan {args.plan}: valid")
    return EXIT_OK if not violations else EXIT_NO_PLAN


def cmd_import_hf(args) -> int:
    from planner.domain.hf_import import card_from_hf_config, write_card

    config = read_json(Path(args.config), args.config)
    if not isinstance(config, dict):
        raise InputError_(args.config, "must hold a JSON object")
    card = card_from_hf_config(config, name=args.name, file=args.config)
    write_card(card, args.output)
    if args.json:
        emit_json(card)
    else:
        m = card["model"]
        log(f"wrote {args.output}: {m['name']} ({m.get('family', '?')}), {m['num_layers']} layers, {m['num_experts']} experts, top-{m['top_k']}")
    return EXIT_OK


def cmd_profile(args) -> int:
    from planner.cost.profiling import run_profile_command

    return run_profile_command(device=args.device, output=args.output, quick=args.quick, backend=args.backend, log=log)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="moeplan", description="Plan MoE inference across heterogeneous end, edge and cloud devices.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("solve", help="plan one instance")
    s.add_argument("instance")
    s.add_argument("--solver", default="route-aware", help="solver name (see `moeplan compare`); default route-aware")
    stop = s.add_argument_group("stopping")
    stop.add_argument("--time-limit", type=float, default=None, metavar="S", help="seconds")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--progress", action="store_true", help="exact solvers: incumbent and bound over time on stderr")
    s.add_argument("--export", metavar="MODEL.lp", help="milp: write the model of the best subproblem (.lp or .mps)")
    s.add_argument("-o", "--output", metavar="PLAN.json", help="write the plan here")
    s.add_argument("--json", action="store_true", help="one JSON object on stdout")
    s.set_defaults(func=cmd_solve)

    c = sub.add_parser("compare", help="every solver (or --solvers) on one instance, one table")
    c.add_argument("instance")
    c.add_argument("--solvers", default=None, help="comma-separated names; default: all")
    c.add_argument("--time-limit", type=float, default=None, metavar="S")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_compare)

    v = sub.add_parser("validate", help="check an instance, and a plan against it")
    v.add_argument("instance")
    v.add_argument("plan", nargs="?")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=cmd_validate)

    h = sub.add_parser("import-hf", help="model card from a Hugging Face config.json")
    h.add_argument("config")
    h.add_argument("-o", "--output", required=True, metavar="CARD.toml")
    h.add_argument("--name", default=None, help="card name (default: from the config)")
    h.add_argument("--json", action="store_true")
    h.set_defaults(func=cmd_import_hf)

    pr = sub.add_parser("profile", help="measure this machine (matmul, memory bandwidth, expert FFN)")
    pr.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    pr.add_argument("--backend", choices=("numpy", "torch"), default=None)
    pr.add_argument("--quick", action="store_true", help="fewer sizes (a few seconds)")
    pr.add_argument("-o", "--output", required=True, metavar="PROFILE.json")
    pr.set_defaults(func=cmd_profile)

    from planner.bench import run as bench

    from planner.cli import place

    from planner.cli import simulate as simulate_cli

    place.add_parser(sub)
    bench.add_parser(sub)
    simulate_cli.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except InputError as exc:
        log(f"error: {len(exc.problems)} problem(s) in the input:" if len(exc.problems) > 1 else "error: bad input:")
        for problem in exc.problems:
            log(f"  {problem}")
        return EXIT_BAD_INPUT
    except ValueError as exc:  # unknown solver names, bad option values
        log(f"error: {exc}")
        return EXIT_BAD_INPUT
    except MoeplanError as exc:
        log(f"error: {exc}")
        return EXIT_NO_PLAN
