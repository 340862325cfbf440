"""``moeplan validate``: check an instance, and a plan against it."""

from __future__ import annotations

from planner import api
from planner.cli.output import EXIT_NO_PLAN, EXIT_OK, emit_json, progress_while
from planner.cost import report
from planner.domain.plan import Plan


def add_parser(subparsers) -> None:
    """Register ``validate`` on the ``moeplan`` sub-command parsers."""
    v = subparsers.add_parser("validate", help="check an instance, and a plan against it")
    v.add_argument("instance")
    v.add_argument("plan", nargs="?")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=cmd_validate)


def cmd_validate(args) -> int:
    with progress_while(f"checking {args.instance}"):
        instance = api.load_instance(args.instance)
        why = api.capacity_check(instance)
    out = {"instance": instance.name, "instance_ok": True}
    if args.plan is None:
        if args.json:
            emit_json({"status": "valid", "stop_reason": None, "message": why or "instance OK", **out, "capacity": why})
        else:
            print(report.instance_summary(instance))
            print("instance OK" + (f" (but {why})" if why else ""))
        return EXIT_OK
    plan = Plan.load(args.plan)
    with progress_while(f"checking {args.plan} against {instance.name}"):
        violations = api.validate(instance, plan)
    if args.json:
        emit_json({"status": "invalid" if violations else "valid", "stop_reason": None,
                   "message": f"{len(violations)} violation(s)" if violations else "plan valid", **out,
                   "plan_ok": not violations, "violations": [{"kind": v.kind, "message": v.message} for v in violations]})
    elif violations:
        print(f"plan {args.plan}: {len(violations)} violation(s)")
        for v in violations:
            print(f"  {v}")
    else:
        print(f"plan {args.plan}: valid")
    return EXIT_OK if not violations else EXIT_NO_PLAN
