"""``moeplan profile``: measure this machine and write its profile."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from planner.cli.output import emit_json, log
from planner.cost.profiling import check_profile_against_expert_ffn, fit_framework, measure
from planner.domain.files import check_writable
from planner.domain.profile import HardwareProfile


def add_parser(subparsers) -> None:
    """Register ``profile`` on the ``moeplan`` sub-command parsers."""
    pr = subparsers.add_parser("profile", help="measure this machine (matmul, memory bandwidth, expert FFN)")
    pr.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    pr.add_argument("--backend", choices=("numpy", "torch"), default=None)
    pr.add_argument("--quick", action="store_true", help="fewer sizes (a few seconds)")
    pr.add_argument("--no-framework", action="store_true",
                    help="with --backend torch on the CPU, do not time the framework's fixed cost per layer and pass "
                         "(a tiny MoE model through the executor; measured by default there)")
    pr.add_argument("-o", "--output", required=True, metavar="PROFILE.json")
    pr.add_argument("--json", action="store_true", help="one JSON object on stdout: the profile written")
    pr.set_defaults(func=cmd_profile)


def cmd_profile(args) -> int:
    code = run_profile_command(device=args.device, output=args.output, quick=args.quick, backend=args.backend, log=log,
                               framework=not args.no_framework)
    if args.json:
        emit_json({"status": "written", "output": args.output, "profile": HardwareProfile.load(args.output).to_dict()})
    return code


def run_profile_command(device: str, output: str, quick: bool, backend: str | None,
                        log: Callable[[str], None], framework: bool = True) -> int:
    """``moeplan profile``: measure, write the profile JSON to ``output``, log a summary; returns 0.

    ``backend`` defaults to numpy on ``cpu`` and torch on CUDA. With the torch backend on the CPU
    and ``framework``, also times a tiny MoE model through the executor
    (:func:`planner.executor.framework.framework_samples`) and stores the fitted framework overhead
    (:class:`~planner.domain.profile.FrameworkOverhead`). Raises :class:`InputError` naming
    ``output`` when it cannot be written (checked before measuring), :class:`ProfileError` when the
    backend or device is missing.
    """
    check_writable(output, what="the profile", option="--output")
    backend = backend or ("numpy" if device == "cpu" else "torch")
    profile = measure(backend=backend, device=device, quick=quick, progress=log)
    if framework and backend == "torch" and device == "cpu":
        from planner.executor.framework import framework_samples, library_description, model_description

        samples = framework_samples(repeats=7 if quick else 15, progress=log)
        profile = dataclasses.replace(profile, framework=fit_framework(samples, library_description(), model_description()))
    profile.save(output)
    log(f"profile of {profile.host} ({profile.backend}, {profile.dtype}) written to {output}")
    log(f"compute: peak {profile.peak_flops_per_s / 1e9:.1f} GFLOP/s, "
        f"half of it at {profile.half_flops / 1e6:.3g} MFLOP per op")
    log(f"memory:  peak {profile.peak_bytes_per_s / 1e9:.1f} GB/s, "
        f"half of it at {profile.half_bytes / 1e6:.3g} MB per op")
    log("expert FFN, predicted by the curves (roofline) / measured:")
    for c in check_profile_against_expert_ffn(profile):
        log(f"  {c.tokens:4d} tokens: measured {c.measured_s * 1e3:8.3f} ms, "
            f"predicted {c.predicted_s * 1e3:8.3f} ms, ratio {c.ratio:.2f}")
    fw = profile.framework
    if fw is not None:
        log(f"framework ({fw.library}): {fw.layer_s * 1e3:.3f} ms per decoder layer, {fw.expert_call_s * 1e3:.3f} ms per "
            f"routed-experts call, {fw.pass_s * 1e3:.3f} ms per pass outside the layers (fixed; slopes "
            f"{fw.layer_s_per_flop * 1e12:.1f} and {fw.expert_s_per_flop * 1e12:.1f} ps per FLOP)")
    return 0
