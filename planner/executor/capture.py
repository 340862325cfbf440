"""Calibration activations of the unmodified model, recorded with forward hooks that are removed after.

:func:`capture` runs the model on calibration token ids and keeps, flattened over tokens:

* at each cut layer ``c`` (a cut before layer ``c``): the hidden states leaving layer ``c - 1``, [N, H];
* at each MoE layer ``l``: the experts' input [N, H], the router's logits [N, E], its top-k index
  and weights [N, k], and the routed experts' output [N, H] (shared experts not included).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from planner.executor.families import decoder_layers, moe_parts


@dataclass
class MoECapture:
    hidden: torch.Tensor
    router_logits: torch.Tensor
    top_k_index: torch.Tensor
    top_k_weights: torch.Tensor
    output: torch.Tensor


@dataclass
class Captured:
    cuts: dict[int, torch.Tensor] = field(default_factory=dict)
    moe: dict[int, MoECapture] = field(default_factory=dict)


@torch.no_grad()
def capture(model: nn.Module, input_ids: torch.Tensor, *, cut_layers: Iterable[int] = (), moe_layers: Iterable[int] = (),
            batch_size: int = 8) -> Captured:
    """Activations of ``model`` on ``input_ids [B, S]`` (no padding), run ``batch_size`` rows at a time."""
    cut_layers, moe_layers = sorted(set(cut_layers)), sorted(set(moe_layers))
    layers = decoder_layers(model)
    parts = moe_parts(model)
    cuts: dict[int, list[torch.Tensor]] = {c: [] for c in cut_layers}
    moe: dict[int, dict[str, list[torch.Tensor]]] = {l: {k: [] for k in MoECapture.__dataclass_fields__} for l in moe_layers}
    handles = []

    def keep_cut(c):
        return lambda module, args, out: cuts[c].append(out.reshape(-1, out.shape[-1]).clone())

    def keep_router(l):
        return lambda module, args, out: moe[l]["router_logits"].append(out[0].reshape(-1, out[0].shape[-1]).float().clone())

    def keep_experts(l):
        def hook(module, args, out):
            hidden, idx, w = args[:3]
            moe[l]["hidden"].append(hidden.clone())
            moe[l]["top_k_index"].append(idx.clone())
            moe[l]["top_k_weights"].append(w.clone())
            moe[l]["output"].append(out.clone())
        return hook

    try:
        for c in cut_layers:
            handles.append(layers[c - 1].register_forward_hook(keep_cut(c)))
        for l in moe_layers:
            handles.append(parts[l].router.register_forward_hook(keep_router(l)))
            handles.append(parts[l].experts.register_forward_hook(keep_experts(l)))
        for batch in input_ids.split(batch_size):
            model(input_ids=batch, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return Captured(
        {c: torch.cat(v) for c, v in cuts.items()},
        {l: MoECapture(**{k: torch.cat(v) for k, v in d.items()}) for l, d in moe.items()},
    )
