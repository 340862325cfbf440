"""KV caches of continuously batched micro-batches at one stage.

A request's prefill runs alone (batch 1) and leaves its keys and values in a
:class:`~transformers.DynamicCache` of its own. Its decode steps run in its micro-batch (a *slot*),
whose members change at step boundaries: :class:`SlotCache` keeps the members' caches as one
batch, each row left-padded to the longest (``keys [n, kv_heads, T, head_dim]`` per layer, a
padding mask ``valid [n, T]``), and rebuilds that batch only when the members change. Each row's
next position is its own length (``positions [n, 1]``): rotary embeddings see every sequence's true
positions, and the padding mask hides the padded columns, so a row's logits are those of the
request run alone (up to float rounding).

Only full-attention cache layers (``DynamicLayer``) are batched; a model with sliding-window or
other cache layers on a stage is refused (:func:`check_batchable`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


def check_batchable(config, layers: range) -> None:
    """Raise ``ValueError`` unless every cache layer of ``layers`` is a plain full-attention layer."""
    cache = DynamicCache(config=config)
    bad = [i for i in layers if type(cache.layers[i]) is not DynamicLayer]
    if bad:
        kinds = sorted({type(cache.layers[i]).__name__ for i in bad})
        raise ValueError(f"layers {bad} keep {', '.join(kinds)} caches; the runtime batches full-attention caches only")


def _filled_cache(config, layers: range, keys: Mapping[int, torch.Tensor], values: Mapping[int, torch.Tensor]) -> DynamicCache:
    cache = DynamicCache(config=config)
    for i in layers:
        layer = cache.layers[i]
        layer.lazy_initialization(keys[i], values[i])
        layer.keys, layer.values = keys[i], values[i]
    return cache


class SlotCache:
    """The KV caches of one slot's members at one stage (layers ``layers``), batched and left-padded.

    :meth:`arrange` sets the members of the next step (in the step's row order), taking new
    members' caches from ``joining`` (request id -> its prefill cache, removed from the mapping);
    :meth:`mask` and :meth:`positions` are the step's inputs; :meth:`advance` records the token the
    step appended to every row.
    """

    def __init__(self, config, layers: range):
        self.config = config
        self.layers = layers
        self.rows: list[int] = []
        self.lengths = torch.zeros(0, dtype=torch.long)  # [n] tokens cached per row
        self.cache: DynamicCache | None = None

    @property
    def width(self) -> int:
        """Columns of the batch (the longest row)."""
        return int(self.lengths.max()) if self.lengths.numel() else 0

    def _row_slices(self, row: int) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
        """Keys and values [1, heads, length, dim] of existing row ``row``, padding removed."""
        n = int(self.lengths[row])
        T = self.width
        return ({i: self.cache.layers[i].keys[row:row + 1, :, T - n:] for i in self.layers},
                {i: self.cache.layers[i].values[row:row + 1, :, T - n:] for i in self.layers})

    def arrange(self, rows: Sequence[int], joining: dict[int, DynamicCache]) -> None:
        """Members ``rows`` (request ids, in order) for the next step; rebuilds the batch if they changed.
        Raises ``KeyError`` naming a row that is neither a member nor in ``joining``."""
        rows = [int(r) for r in rows]
        if rows == self.rows:
            return
        pieces = []
        for r in rows:
            if r in self.rows:
                pieces.append(self._row_slices(self.rows.index(r)))
            elif r in joining:
                c = joining.pop(r)
                pieces.append(({i: c.layers[i].keys for i in self.layers}, {i: c.layers[i].values for i in self.layers}))
            else:
                raise KeyError(f"request {r} has no KV cache at this stage (no prefill reached it)")
        lengths = [next(iter(k.values())).shape[-2] for k, _ in pieces]
        T = max(lengths)

        def stack(which: int, i: int) -> torch.Tensor:
            parts = []
            for piece, n in zip(pieces, lengths):
                x = piece[which][i]
                if n < T:
                    x = torch.cat([x.new_zeros(*x.shape[:-2], T - n, x.shape[-1]), x], dim=-2)
                parts.append(x)
            return torch.cat(parts, dim=0)

        keys = {i: stack(0, i) for i in self.layers}
        values = {i: stack(1, i) for i in self.layers}
        self.cache = _filled_cache(self.config, self.layers, keys, values)
        self.rows = rows
        self.lengths = torch.tensor(lengths, dtype=torch.long)

    def mask(self) -> torch.Tensor:
        """The 2-D padding mask [n, T + 1] of a decode step (past columns and the new token)."""
        T = self.width
        cols = torch.arange(T + 1)
        return (cols.unsqueeze(0) >= (T - self.lengths).unsqueeze(1)).long()

    def positions(self) -> torch.Tensor:
        """Position ids [n, 1] of the tokens of a decode step: each row's length."""
        return self.lengths.unsqueeze(1).clone()

    def advance(self) -> None:
        self.lengths += 1
