"""Stage runners and the planned model: a pipeline run stage by stage, with a codec at each cut.

What crosses a cut is only the hidden states ``[B, S, H]``; the 2-D padding mask ``[B, past + S]``
and the position ids ``[1, S]`` travel beside them. Each :class:`StageRunner` owns its KV cache
(``DynamicCache(config=...)``, the 5.24 cache API) and builds its own rotary embeddings and 4-D
masks. Masks are sized from the stage's own first layer of each attention kind
(``layer_idx=`` of ``create_causal_mask``): the library's default, the model's first layer, is empty
in the cache of any stage after the first and would size decode masks wrongly.

The runtime (:mod:`planner.runtime`) runs one :class:`StageRunner` per process, with the codec's
encoder on the sending side of a cut and its decoder on the receiving side.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from torch import nn
from transformers import DynamicCache
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

from planner.executor.codec import LowRankCodec
from planner.executor.families import Family
from planner.executor.placed import PlacedExperts, Timings

_MASK_FUNCTIONS = {"full_attention": create_causal_mask, "sliding_attention": create_sliding_window_causal_mask}


class StageRunner(nn.Module):
    """Decoder layers ``[first_layer, end_layer)`` on ``device``.

    ``forward(x, attention_mask, position_ids, use_cache)``: ``x`` is token ids ``[B, S]`` on the first
    stage (which also runs the embedding), hidden states ``[B, S, H]`` elsewhere; returns hidden
    states ``[B, S, H]``, or logits ``[B, S, V]`` on the last stage (final norm + LM head).
    ``layers`` are the model's decoder layers with their experts placed (shared, not copied,
    apart from the experts).
    """

    def __init__(self, model: nn.Module, family: Family, device: str, first_layer: int, end_layer: int,
                 layers: Sequence[nn.Module], timings: Timings):
        super().__init__()
        self.device_label = device
        self.first_layer, self.end_layer = first_layer, end_layer
        self.config = model.config
        num_layers = model.config.num_hidden_layers
        self.embed = model.model.embed_tokens if first_layer == 0 else None
        self.layers = nn.ModuleList(layers)
        self.rotary = model.model.rotary_emb
        self.norm = model.model.norm if end_layer == num_layers else None
        self.lm_head = model.lm_head if end_layer == num_layers else None
        self.kinds = [family.mask_kind(model.config, i) for i in range(first_layer, end_layer)]
        self.mask_layer = {k: first_layer + self.kinds.index(k) for k in dict.fromkeys(self.kinds)}
        self._timings = timings
        self.cache: DynamicCache | None = None

    def reset_cache(self) -> None:
        self.cache = DynamicCache(config=self.config)

    def placed_experts(self) -> list[PlacedExperts]:
        return [m for m in self.modules() if isinstance(m, PlacedExperts)]

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None, position_ids: torch.Tensor,
                use_cache: bool) -> torch.Tensor:
        hidden = self.embed(x) if self.embed is not None else x
        cache = self.cache if use_cache else None
        masks = {
            kind: _MASK_FUNCTIONS[kind](config=self.config, inputs_embeds=hidden, attention_mask=attention_mask,
                                        cache=cache, position_ids=position_ids, layer_idx=layer)
            for kind, layer in self.mask_layer.items()
        }
        position_embeddings = self.rotary(hidden, position_ids)
        for offset, layer in enumerate(self.layers):
            t0 = time.perf_counter() if self._timings.enabled else 0.0
            hidden = layer(hidden, attention_mask=masks[self.kinds[offset]], position_ids=position_ids, cache=cache,
                           use_cache=use_cache, position_embeddings=position_embeddings)
            if self._timings.enabled:
                i = self.first_layer + offset
                self._timings.layer_s[i] += time.perf_counter() - t0
                self._timings.calls[i] += 1
        if self.lm_head is not None:
            hidden = self.lm_head(self.norm(hidden))
        return hidden


class PlannedModel(nn.Module):
    """A model run as one pipeline of a plan: ``stages`` in order, ``codecs[i]`` (or None) at cut ``i``
    (between stage i and i + 1).

    * ``planned(input_ids, attention_mask=None)``: logits ``[B, S, V]`` without a cache;
    * :meth:`prefill` then :meth:`decode_step`: the same path with each stage's KV cache;
      ``attention_mask`` is the 2-D padding mask over past + new tokens, as for the HF model;
    * :meth:`generate`: greedy decoding through prefill and decode steps.

    ``timings`` (enable with ``planned.timings.enabled = True``) collects per-layer seconds;
    ``gate_fits`` holds what fitting each group gate did (layer -> ``GateFit``).
    """

    def __init__(self, stages: Sequence[StageRunner], codecs: Sequence[LowRankCodec | None], timings: Timings,
                 remote: nn.Module | None = None, gate_fits: dict | None = None):
        super().__init__()
        if len(codecs) != len(stages) - 1:
            raise ValueError(f"{len(stages)} stages need {len(stages) - 1} codec entries, got {len(codecs)}")
        self.stages = nn.ModuleList(stages)
        self.codecs = nn.ModuleList([c if c is not None else nn.Identity() for c in codecs])
        self.timings = timings
        self.remote = remote
        self.gate_fits = dict(gate_fits or {})
        self.seen_tokens = 0

    @property
    def devices(self) -> list[str]:
        return [s.device_label for s in self.stages]

    def placed_experts(self) -> dict[int, PlacedExperts]:
        return {p.layer: p for s in self.stages for p in s.placed_experts()}

    def cross_cut(self, cut: int, hidden: torch.Tensor) -> torch.Tensor:
        """What arrives at stage ``cut + 1``: the hidden states [B, S, H] through the cut's codec (if any)."""
        codec = self.codecs[cut]
        return codec.decode(codec.encode(hidden)) if isinstance(codec, LowRankCodec) else hidden

    def _run(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, use_cache: bool) -> torch.Tensor:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, tokens], got shape {tuple(input_ids.shape)}")
        start = self.seen_tokens if use_cache else 0
        position_ids = (torch.arange(input_ids.shape[1], device=input_ids.device) + start).unsqueeze(0)
        out = self._stages_from(0, input_ids, attention_mask, position_ids, use_cache)
        if use_cache:
            self.seen_tokens += input_ids.shape[1]
        return out

    def _stages_from(self, first: int, x: torch.Tensor, attention_mask: torch.Tensor | None, position_ids: torch.Tensor,
                     use_cache: bool) -> torch.Tensor:
        for i in range(first, len(self.stages)):
            x = self.stages[i](x, attention_mask, position_ids, use_cache)
            if i < len(self.stages) - 1:
                x = self.cross_cut(i, x)
        return x

    def run_from(self, first_stage: int, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, S, V] of the stages from ``first_stage`` on, given the hidden states [B, S, H] that
        arrive there (positions from 0, no cache)."""
        position_ids = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)
        return self._stages_from(first_stage, hidden, attention_mask, position_ids, use_cache=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self._run(input_ids, attention_mask, use_cache=False)

    def reset(self) -> None:
        """Fresh KV caches, and replica counters and slot counts from zero."""
        for stage in self.stages:
            stage.reset_cache()
        for placed in self.placed_experts().values():
            placed.reset()
        self.seen_tokens = 0

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        self.reset()
        return self._run(input_ids, attention_mask, use_cache=True)

    def decode_step(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.seen_tokens == 0:
            raise RuntimeError("decode_step before prefill: call prefill(prompt) first")
        return self._run(input_ids, attention_mask, use_cache=True)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Greedy continuation: ``[B, S + max_new_tokens]`` token ids."""
        logits = self.prefill(input_ids, attention_mask)
        out = [input_ids]
        for step in range(max_new_tokens):
            nxt = logits[:, -1:].argmax(dim=-1)
            out.append(nxt)
            if step == max_new_tokens - 1:
                break
            if attention_mask is not None:
                attention_mask = torch.cat([attention_mask, attention_mask.new_ones(attention_mask.shape[0], 1)], dim=1)
            logits = self.decode_step(nxt, attention_mask)
        return torch.cat(out, dim=1)
