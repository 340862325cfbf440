"""The low-rank codec at a cut: exact at full rank, better with rank, stored and reloaded with its rank."""

from __future__ import annotations

import pytest
import torch

from planner.executor import LowRankCodec, apply_plan, load_codecs, save_codecs

from .conftest import cached_tiny, plan_of


def _ids(rows, seed):
    return torch.randint(0, 128, (rows, 24), generator=torch.Generator().manual_seed(seed))


def test_full_rank_codec_is_exact_up_to_float_error():
    model = cached_tiny("mixtral")
    planned = apply_plan(model, None, plan_of([("a", 0, 2), ("b", 2, 4)], ranks=[64]), calibration_ids=_ids(8, 3))
    ids = _ids(2, 4)
    with torch.no_grad():
        diff = float((planned(ids) - model(input_ids=ids).logits).abs().max())
    assert planned.codecs[0].rank == 64
    assert diff <= 1e-4


def test_error_falls_with_rank_and_the_codec_is_used_in_decode():
    model = cached_tiny("qwen3_moe")
    calib, ids = _ids(16, 5), _ids(2, 6)
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        errors = []
        for rank in (4, 16, 48):
            planned = apply_plan(model, None, plan_of([("a", 0, 1), ("b", 1, 4)], ranks=[rank]), calibration_ids=calib)
            errors.append(float((planned(ids) - ref).abs().mean()))
        assert errors[0] > errors[1] > errors[2] > 0
        # Decode goes through the same codec: cached steps equal the uncached forward.
        prefix = planned.prefill(ids[:, :-1])
        step = planned.decode_step(ids[:, -1:])
        full = planned(ids)
    assert float((torch.cat([prefix, step], 1) - full).abs().max()) <= 1e-5


def test_codecs_round_trip_through_safetensors(tmp_path):
    x = torch.randn(200, 16, generator=torch.Generator().manual_seed(0))
    codecs = {2: LowRankCodec.fit(x, 4), 3: LowRankCodec.fit(x, 8)}
    save_codecs(tmp_path / "c.safetensors", codecs, fitted_on="random")
    back = load_codecs(tmp_path / "c.safetensors")
    assert {k: c.rank for k, c in back.items()} == {2: 4, 3: 8}
    assert torch.equal(back[2].encoder, codecs[2].encoder) and torch.equal(back[2].decoder, codecs[2].decoder)
    # A stored codec is used as given; its rank must match the plan's.
    model = cached_tiny("olmoe")
    stored = {1: LowRankCodec.fit(torch.randn(100, 64), 8)}
    planned = apply_plan(model, None, plan_of([("a", 0, 1), ("b", 1, 4)], ranks=[8]), codecs=stored)
    assert planned.codecs[0] is stored[1]
    with pytest.raises(Exception, match=r"codec_ranks\[0\]"):
        apply_plan(model, None, plan_of([("a", 0, 1), ("b", 1, 4)], ranks=[16]), codecs=stored)


def test_fit_checks_its_rank():
    with pytest.raises(ValueError, match="between 1 and the hidden size 16"):
        LowRankCodec.fit(torch.randn(10, 16), 17)


def test_fine_tuning_brings_the_next_token_distributions_closer():
    model = cached_tiny("mixtral")
    calib, held = _ids(16, 8), _ids(8, 9)
    plan = plan_of([("a", 0, 2), ("b", 2, 4)], ranks=[8])
    with torch.no_grad():
        ref = torch.log_softmax(model(input_ids=held).logits, -1)

    def kl(planned):
        with torch.no_grad():
            lq = torch.log_softmax(planned(held), -1)
        return float((ref.exp() * (ref - lq)).sum(-1).mean())

    pca = apply_plan(model, None, plan, calibration_ids=calib)
    tuned = apply_plan(model, None, plan, calibration_ids=calib, codec_steps=40)
    assert kl(tuned) < kl(pca)
    assert not any(p.requires_grad for p in tuned.codecs[0].parameters())
    assert all(p.requires_grad for p in model.parameters())
