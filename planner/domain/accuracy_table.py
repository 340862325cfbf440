"""Measured accuracy of a model under the codec and the group gate: the table ``moeplan calibrate`` writes.

Torch-free: the planner reads the table to trade measured, not typed, accuracy. Format (JSON,
schema ``moeplan.accuracy/1``, see ``docs/instance-format.md``): the model it was measured on, the
data, the baseline perplexity, and two lists of points, each with the three measures against the
unmodified model on held-out tokens (``kl_nats``: mean KL divergence of next-token distributions,
nats; ``top1_agreement``: share of positions whose most likely next token is unchanged;
``perplexity_change``: relative change of held-out perplexity) and ``loss``, the quantity the
planner budgets (``loss_measure``, ``1 - top1_agreement``); ``codec_fit`` says how the codecs
were fitted (PCA, then ``fine_tuning_steps``):

* ``codec``: ``{cut_layer, rank, ...}``: a rank-``rank`` codec at the cut before layer ``cut_layer``;
* ``group_gate``: ``{local_experts, layers, coverage, method, ...}``: the MoE layers ``layers``
  keep their ``local_experts`` most popular experts (the others run unchanged); ``coverage`` is the
  share of the routing mass (top-k selections) those experts receive; ``method`` is
  ``group_gate`` (fitted) or ``renormalise`` (plain renormalisation over the subset, the baseline).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from planner.domain.data_files import read_json
from planner.domain.errors import InputError, Problem

SCHEMA = "moeplan.accuracy/1"
LOSS_MEASURES = ("1 - top1_agreement",)
GATE_METHODS = ("group_gate", "renormalise")


@dataclass(frozen=True)
class CodecPoint:
    cut_layer: int
    rank: int
    kl_nats: float
    top1_agreement: float
    perplexity_change: float
    loss: float


@dataclass(frozen=True)
class GatePoint:
    local_experts: int
    layers: tuple[int, ...]
    coverage: float
    method: str
    kl_nats: float
    top1_agreement: float
    perplexity_change: float
    loss: float


@dataclass(frozen=True)
class AccuracyTable:
    """A read table. ``hidden_size`` and ``num_experts`` are the measured model's."""

    model: str
    hidden_size: int
    num_experts: int
    loss_measure: str
    codec: tuple[CodecPoint, ...]
    group_gate: tuple[GatePoint, ...]
    path: str = ""
    # How the measured codecs were fitted: PCA, then this many fine-tuning steps (apply_plan's codec_steps).
    codec_fine_tuning_steps: int = 0

    @property
    def codec_ranks(self) -> list[int]:
        return sorted({p.rank for p in self.codec})

    def codec_loss(self, rank: int | None, cut_layer: int | None = None) -> float:
        """Loss of a rank-``rank`` codec at the cut before ``cut_layer`` (None: the worst measured cut).

        Ranks between measured ones are interpolated linearly, ranks above the largest measured one
        take its loss, a full-rank codec (``rank >= hidden_size``) or no codec costs 0; ranks below
        the smallest measured one raise :class:`ValueError` (not measured).
        """
        if rank is None or rank >= self.hidden_size:
            return 0.0
        cuts = sorted({p.cut_layer for p in self.codec}) if cut_layer is None else [cut_layer]
        losses = []
        for cut in cuts:
            points = sorted((p.rank, p.loss) for p in self.codec if p.cut_layer == cut)
            if not points:
                raise ValueError(f"{self.path or 'accuracy table'}: no codec measured at the cut before layer {cut}")
            losses.append(_interpolate(points, rank, f"rank {rank} at the cut before layer {cut}", self.path))
        return max(losses)

    def group_gate_loss(self, coverage: float, method: str = "group_gate", layer: int | None = None) -> float:
        """Loss when local subsets cover ``coverage`` (0..1) of the routing mass: of MoE layer ``layer``
        alone, or (None) of every measured MoE layer at once. Linear between measured coverages, 0 at
        coverage 1, the lowest measured coverage's loss below it. The sum of per-layer losses is a
        conservative estimate of gating those layers together (a little above it in the reference
        model's table)."""
        every = max((p.layers for p in self.group_gate), key=len, default=())
        wanted = every if layer is None else (layer,)
        points = sorted((p.coverage, p.loss) for p in self.group_gate if p.method == method and p.layers == wanted)
        if not points:
            raise ValueError(f"{self.path or 'accuracy table'}: no group-gate points with method {method!r} "
                             f"for layers {list(wanted)}")
        points.append((1.0, 0.0))
        return _interpolate(points, max(coverage, points[0][0]), f"coverage {coverage}", self.path)


def _interpolate(points: list[tuple[float, float]], x: float, what: str, path: str) -> float:
    if x < points[0][0]:
        raise ValueError(f"{path or 'accuracy table'}: {what} is below the measured range (from {points[0][0]})")
    for x0, y0 in points:
        if x == x0:
            return y0
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 < x < x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return points[-1][1]


def _number(value, where: str, label: str, problems: list[Problem], *, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not lo <= value <= hi:
        problems.append(Problem(label, where, f"must be a number between {lo:g} and {hi:g}, got {value!r}"))
        return math.nan
    return float(value)


def _integer(value, where: str, label: str, problems: list[Problem], *, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        problems.append(Problem(label, where, f"must be an integer >= {lo}, got {value!r}"))
        return lo
    return value


def accuracy_table_from_dict(data, label: str = "<accuracy table>") -> AccuracyTable:
    """Check and build a table from its JSON form; :class:`InputError` lists every bad field."""
    if not isinstance(data, dict):
        raise InputError(Problem(label, "", "an accuracy table must be a JSON object"))
    if data.get("schema") != SCHEMA:
        raise InputError(Problem(label, "schema", f"must be {SCHEMA!r}, got {data.get('schema')!r}"))
    problems: list[Problem] = []
    model = data.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("name"), str):
        raise InputError(Problem(label, "model", "must be an object with name, hidden_size and num_experts"))
    hidden = _integer(model.get("hidden_size"), "model.hidden_size", label, problems, lo=1)
    experts = _integer(model.get("num_experts"), "model.num_experts", label, problems, lo=0)
    measure = data.get("loss_measure")
    if measure not in LOSS_MEASURES:
        problems.append(Problem(label, "loss_measure", f"must be one of {LOSS_MEASURES}, got {measure!r}"))

    def measures(entry: dict, where: str) -> dict:
        return {
            "kl_nats": _number(entry.get("kl_nats"), f"{where}.kl_nats", label, problems, lo=0, hi=1e6),
            "top1_agreement": _number(entry.get("top1_agreement"), f"{where}.top1_agreement", label, problems, lo=0, hi=1),
            "perplexity_change": _number(entry.get("perplexity_change"), f"{where}.perplexity_change", label, problems, lo=-1, hi=1e6),
            "loss": _number(entry.get("loss"), f"{where}.loss", label, problems, lo=0, hi=1),
        }

    codec, gate = [], []
    for key, out in (("codec", codec), ("group_gate", gate)):
        entries = data.get(key, [])
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            problems.append(Problem(label, key, "must be a list of objects"))
            continue
        for i, e in enumerate(entries):
            where = f"{key}[{i}]"
            if key == "codec":
                out.append(CodecPoint(_integer(e.get("cut_layer"), f"{where}.cut_layer", label, problems, lo=1),
                                      _integer(e.get("rank"), f"{where}.rank", label, problems, lo=1), **measures(e, where)))
            else:
                method = e.get("method")
                if method not in GATE_METHODS:
                    problems.append(Problem(label, f"{where}.method", f"must be one of {GATE_METHODS}, got {method!r}"))
                layers = e.get("layers")
                if not isinstance(layers, list) or not layers or not all(
                        isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in layers):
                    problems.append(Problem(label, f"{where}.layers", f"must be a non-empty list of MoE layer indices, got {layers!r}"))
                    layers = []
                out.append(GatePoint(_integer(e.get("local_experts"), f"{where}.local_experts", label, problems, lo=1),
                                     tuple(layers),
                                     _number(e.get("coverage"), f"{where}.coverage", label, problems, lo=0, hi=1),
                                     str(method), **measures(e, where)))
    fit = data.get("codec_fit", {"method": "pca", "fine_tuning_steps": 0})
    steps = 0
    if not isinstance(fit, dict) or fit.get("method") != "pca":
        problems.append(Problem(label, "codec_fit", f"must be {{method: 'pca', fine_tuning_steps: N}}, got {fit!r}"))
    else:
        steps = _integer(fit.get("fine_tuning_steps", 0), "codec_fit.fine_tuning_steps", label, problems, lo=0)
    if problems:
        raise InputError(problems)
    return AccuracyTable(model["name"], hidden, experts, measure, tuple(codec), tuple(gate), label, steps)


def read_accuracy_table(path: str | Path) -> AccuracyTable:
    """Read and check the table at ``path`` (:class:`InputError` naming the file and field)."""
    label = str(path)
    return accuracy_table_from_dict(read_json(Path(path), label), label)
