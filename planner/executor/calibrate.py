"""``moeplan calibrate MODEL -o TABLE.json``: measure the accuracy table of a model (see
:mod:`planner.executor.accuracy` for what is measured and :mod:`planner.domain.accuracy_table` for the format).

``MODEL`` is ``reference`` (the shipped reference model) or a local checkpoint folder. Text: byte
windows of the Python standard library (:mod:`planner.executor.reference.corpus`), which suits
byte-vocabulary models; any other model needs ``--tokens FILE.npz`` with integer arrays
``calibration`` and ``held_out`` of shape [windows, length]. Optionally ``--popularity FILE.json``
also writes the model's measured expert popularity on the held-out windows.

Importing this module needs no torch (so the ``moeplan`` CLI can register the command without the
extra); running it does: without it the command exits 2 saying how to install it.

    add_parser(subparsers)   # register on the moeplan CLI
    cmd_calibrate(args)      # 0 ok, 2 bad input (message names the file and field)
    main(argv)               # python -m planner.executor.calibrate ...
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from planner.domain.errors import InputError, Problem

EXIT_OK, EXIT_BAD_INPUT = 0, 2


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="'reference' (the shipped reference model) or a local checkpoint folder")
    p.add_argument("-o", "--out", required=True, metavar="TABLE.json", help="where to write the accuracy table")
    p.add_argument("--ranks", type=_int_list, default=None, metavar="R,R,...",
                   help="codec ranks (default: hidden/32, /16, /8, /4, /2, 3/4 of the hidden size)")
    p.add_argument("--cuts", type=_int_list, default=None, metavar="L,L,...",
                   help="cut layers: a cut before each (default: every layer boundary)")
    p.add_argument("--codec-steps", type=int, default=60, metavar="N",
                   help="fine-tuning steps after PCA for each codec (default 60; 0: PCA alone)")
    p.add_argument("--subset-sizes", type=_int_list, default=None, metavar="N,N,...",
                   help="local experts per MoE layer for the group gate (default 1 .. experts - 1)")
    p.add_argument("--windows", type=int, default=64, help="held-out (and calibration) windows (default 64)")
    p.add_argument("--length", type=int, default=256, help="tokens per window (default 256)")
    p.add_argument("--tokens", metavar="FILE.npz", help="token ids: arrays calibration and held_out [windows, length]")
    p.add_argument("--popularity", metavar="FILE.json", help="also write the measured expert popularity (held-out)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")


def add_parser(subparsers) -> None:
    """Register ``calibrate`` on the ``moeplan`` sub-command parsers."""
    p = subparsers.add_parser("calibrate", help="measure a model's accuracy table (codec ranks, group gate); needs the torch extra")
    _add_arguments(p)
    p.set_defaults(func=cmd_calibrate)


def _token_windows(args, vocab_size: int):
    import numpy as np
    import torch

    if args.tokens:
        label = args.tokens
        try:
            data = np.load(args.tokens)
        except (OSError, ValueError) as exc:
            raise InputError(Problem(label, "", f"cannot be read as .npz: {exc}")) from None
        out = []
        for key in ("calibration", "held_out"):
            if key not in data:
                raise InputError(Problem(label, key, "missing: the file needs arrays calibration and held_out"))
            arr = data[key]
            if arr.ndim != 2 or arr.shape[1] < 2 or not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0 or arr.max() >= vocab_size:
                raise InputError(Problem(label, key, f"must be integer token ids [windows, length >= 2] below {vocab_size}"))
            out.append(torch.from_numpy(arr.astype(np.int64)))
        return out[0], out[1], {"source": f"token ids from {label}"}
    from planner.executor.reference import corpus
    if vocab_size != corpus.VOCAB_SIZE:
        raise InputError(Problem(args.model, "vocab_size",
                                 f"is {vocab_size}; the built-in text is byte-level (256): pass --tokens FILE.npz"))
    calib = corpus.windows(corpus.read_bytes("calibration"), args.windows, args.length, seed=args.seed)
    held = corpus.windows(corpus.read_bytes("held-out"), args.windows, args.length)
    return torch.from_numpy(calib), torch.from_numpy(held), corpus.describe()


def cmd_calibrate(args) -> int:
    try:
        import torch
    except ImportError:
        print("error: moeplan calibrate needs the torch extra: pip install 'moeplan[torch]'", file=sys.stderr)
        return EXIT_BAD_INPUT
    from planner.executor.accuracy import measure_table, popularity_file
    from planner.executor.families import moe_parts
    from planner.executor.models import REFERENCE_DIR, load_local

    try:
        torch.set_num_threads(args.threads)
        torch.manual_seed(args.seed)
        folder = REFERENCE_DIR if args.model == "reference" else Path(args.model)
        model = load_local(folder)
        name = "reference-moe" if args.model == "reference" else folder.name
        hidden, layers = int(model.config.hidden_size), int(model.config.num_hidden_layers)
        experts = next(iter(moe_parts(model).values())).num_experts
        ranks = args.ranks or sorted({max(1, hidden * f // 32) for f in (1, 2, 4, 8, 16, 24)})
        cuts = args.cuts or list(range(1, layers))
        sizes = args.subset_sizes or list(range(1, experts))
        for option, values, limit in (("--ranks", ranks, hidden), ("--cuts", cuts, layers - 1), ("--subset-sizes", sizes, experts)):
            if max(values) > limit:
                raise InputError(Problem(option, "", f"values must be at most {limit} for this model, got {max(values)}"))
        calib, held, source = _token_windows(args, int(model.config.vocab_size))
        if args.codec_steps < 0:
            raise InputError(Problem("--codec-steps", "", f"must be >= 0, got {args.codec_steps}"))
        table = measure_table(model, calib, held, name=name, cut_layers=cuts, ranks=ranks, subset_sizes=sizes,
                              measured_on=source | {"seed": args.seed}, codec_steps=args.codec_steps)
        Path(args.out).write_text(json.dumps(table, indent=1) + "\n", encoding="utf-8")
        if args.popularity:
            pop = popularity_file(model, held)
            Path(args.popularity).write_text(json.dumps(pop) + "\n", encoding="utf-8")
    except InputError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:
        print(f"error: {exc.filename or args.out}: {exc.strerror}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="moeplan calibrate", description=__doc__.split("\n\n")[0])
    _add_arguments(parser)
    return cmd_calibrate(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
