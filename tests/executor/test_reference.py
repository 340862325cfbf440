"""The shipped reference model: it loads offline, matches its card and popularity file, and is trained."""

from __future__ import annotations

import math

import torch

from planner.domain import catalog
from planner.domain.data_files import read_popularity_counts
from planner.executor import family_of, load_reference, moe_parts
from planner.executor.accuracy import reference
from planner.executor.reference import corpus
from tests.helpers import REPO


def test_the_reference_model_matches_its_card_and_is_trained():
    model = load_reference()
    card = catalog.model("reference-moe")
    parts = moe_parts(model)
    assert family_of(model).name == card.family == "mixtral"
    assert (card.num_layers, card.hidden_size, card.num_experts, card.top_k) == (
        model.config.num_hidden_layers, model.config.hidden_size, parts[0].num_experts, parts[0].top_k)
    assert card.total_params == sum(p.numel() for p in model.parameters() if p.dim() > 1)
    held = torch.from_numpy(corpus.windows(corpus.read_bytes("held-out"), 4, 128))
    # Random weights give ~256 per byte; the trained model ~3.2 on 64 windows of 256 bytes.
    assert reference(model, held).perplexity < 4.5
    counts = read_popularity_counts(REPO / "instances" / "data" / "reference-moe-popularity.json", 4, 8)
    assert counts.sum() == 4 * 16384 * 2 and math.isclose(counts.sum(axis=1).std(), 0.0)
