"""``moeplan import-hf``: a model card from a Hugging Face ``config.json``."""

from __future__ import annotations

from pathlib import Path

from planner.cli.output import EXIT_OK, emit_json, log
from planner.domain.errors import InputError, Problem
from planner.domain.files import check_writable, read_json
from planner.domain.hf_import import card_from_hf_config, write_card


def add_parser(subparsers) -> None:
    """Register ``import-hf`` on the ``moeplan`` sub-command parsers."""
    h = subparsers.add_parser("import-hf", help="model card from a Hugging Face config.json")
    h.add_argument("config")
    h.add_argument("-o", "--output", required=True, metavar="CARD.toml")
    h.add_argument("--name", default=None, help="card name (default: from the config)")
    h.add_argument("--json", action="store_true")
    h.set_defaults(func=cmd_import_hf)


def cmd_import_hf(args) -> int:
    check_writable(args.output, what="the model card", option="--output")
    config = read_json(Path(args.config), args.config)
    if not isinstance(config, dict):
        raise InputError(Problem(args.config, "", "must hold a JSON object"))
    card = card_from_hf_config(config, name=args.name, file=args.config)
    write_card(card, args.output)
    if args.json:
        emit_json({"status": "written", "output": args.output, **card})
    else:
        m = card["model"]
        log(f"wrote {args.output}: {m['name']} ({m.get('family', '?')}), {m['num_layers']} layers, "
            f"{m['num_experts']} experts, top-{m['top_k']}")
    return EXIT_OK
