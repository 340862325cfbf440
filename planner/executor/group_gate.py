"""The group gate (EC2MoE): serve tokens routed outside a device's local experts from the local subset.

On a device that holds only ``S`` of a layer's ``E`` experts, a token whose top-k includes an
expert outside ``S`` would go to a remote holder. The group gate re-routes it over ``S`` instead:

* global gate over the subset: ``g = p[S] / sum(p[S])``, with ``p`` the router's selection scores
  (softmax probabilities; DeepSeek-V3: sigmoid + correction bias);
* local gate over the subset: ``q = softmax(log g + W x + b)``, a light linear gate ``[|S|, H]``;
* mix: ``s = (1 - a) g + a q`` with ``a = sigmoid(u . x + c)``, a per-token mixing weight;
* the token takes the ``min(k, |S|)`` experts of ``S`` with the largest ``s``, weighted by ``s``
  renormalised over them times the router's own total weight (the sum of its top-k weights) times
  a learned per-token scale ``exp(v . x + d)``.

With ``W, b, v, d = 0`` (unfitted) this is plain renormalisation over the subset: the router's
top-k among the local experts, weights renormalised to the router's total. :func:`fit_group_gate`
trains ``W, b, u, c, v, d`` on calibration tokens (Adam) to bring the layer's routed-experts output
computed from the subset close to the full model's (mean squared error), starting from plain
renormalisation and keeping whichever of the two fits the calibration tokens better.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from planner.executor.placed import ExpertShard


class GroupGate(nn.Module):
    """Group gate of one layer over ``local_experts`` (global ids) of ``num_experts``, top-``top_k``.

    ``scores(logits [N, E]) -> [N, E]`` are the router's selection scores (float32).
    ``forward(hidden [N, H], router_logits [N, E], top_k_weights [N, k])`` returns ``(top_k_index
    [N, k], weights [N, k])``: global expert ids of the subset, -1 with weight 0 where the subset has
    fewer than k experts.
    """

    def __init__(self, local_experts: list[int], num_experts: int, top_k: int, hidden_size: int,
                 scores: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        if not local_experts:
            raise ValueError("a group gate needs at least one local expert")
        self.register_buffer("local", torch.tensor(sorted(local_experts), dtype=torch.long))
        self.num_experts, self.top_k = num_experts, top_k
        self._scores = scores
        n = len(local_experts)
        self.local_gate = nn.Linear(hidden_size, n)
        self.mix = nn.Linear(hidden_size, 1)
        self.scale = nn.Linear(hidden_size, 1)
        for lin in (self.local_gate, self.mix, self.scale):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
        self.requires_grad_(False)  # trained only inside fit_group_gate
        self.fitted = False

    def mixed_scores(self, hidden: torch.Tensor, router_logits: torch.Tensor) -> torch.Tensor:
        """``s [N, |S|]``: the mix of the global gate over the subset and the local gate; rows sum to 1."""
        x = hidden.float()
        p = self._scores(router_logits)[:, self.local].clamp_min(1e-12)
        g = p / p.sum(dim=1, keepdim=True)
        q = torch.softmax(g.log() + self.local_gate(x), dim=1)
        a = torch.sigmoid(self.mix(x))
        return (1 - a) * g + a * q

    def select(self, hidden: torch.Tensor, router_logits: torch.Tensor, top_k_weights: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(positions [N, k'] into the subset, weights [N, k'])`` with ``k' = min(k, |S|)``."""
        s = self.mixed_scores(hidden, router_logits)
        kk = min(self.top_k, int(self.local.numel()))
        value, pos = s.topk(kk, dim=1)
        total = top_k_weights.float().sum(dim=1, keepdim=True) * torch.exp(self.scale(hidden.float()))
        return pos, value / value.sum(dim=1, keepdim=True) * total

    def forward(self, hidden: torch.Tensor, router_logits: torch.Tensor, top_k_weights: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        pos, w = self.select(hidden, router_logits, top_k_weights)
        idx = self.local[pos]
        pad = top_k_weights.shape[1] - idx.shape[1]
        if pad:
            idx = torch.cat([idx, idx.new_full((idx.shape[0], pad), -1)], dim=1)
            w = torch.cat([w, w.new_zeros((w.shape[0], pad))], dim=1)
        return idx, w


@dataclass(frozen=True)
class GateFit:
    """What fitting did: tokens fitted on (those with a slot outside the subset), and the relative
    squared error ``|y_hat - y|^2 / |y|^2`` of the routed-experts output, plain renormalisation
    against the fitted gate (both on the calibration tokens)."""

    tokens: int
    relative_error_renormalise: float
    relative_error_fitted: float


def _output(gate: GroupGate, x: torch.Tensor, logits: torch.Tensor, weights: torch.Tensor,
            each: torch.Tensor) -> torch.Tensor:
    pos, w = gate.select(x, logits, weights)
    chosen = each.gather(1, pos.unsqueeze(-1).expand(-1, -1, each.shape[-1]))
    return (w.unsqueeze(-1) * chosen).sum(dim=1)


def fit_group_gate(gate: GroupGate, shard: ExpertShard, hidden: torch.Tensor, router_logits: torch.Tensor,
                   top_k_index: torch.Tensor, top_k_weights: torch.Tensor, target: torch.Tensor, *,
                   steps: int = 300, lr: float = 0.01, max_tokens: int = 8192, seed: int = 0) -> GateFit:
    """Fit ``gate`` on calibration tokens of its layer: experts input ``hidden [N, H]``, ``router_logits
    [N, E]``, the router's ``top_k_index``/``top_k_weights [N, k]`` and the full routed-experts output
    ``target [N, H]``. ``shard`` holds the gate's local experts. At most ``max_tokens`` tokens (a
    seeded sample) are used."""
    off = ~torch.isin(top_k_index, gate.local).all(dim=1)
    rows = off.nonzero().squeeze(1)
    if rows.numel() > max_tokens:
        gen = torch.Generator().manual_seed(seed)
        rows = rows[torch.randperm(rows.numel(), generator=gen)[:max_tokens]]
    if rows.numel() == 0:
        gate.fitted = True
        return GateFit(0, 0.0, 0.0)
    x, logits, w, y = hidden[rows].float(), router_logits[rows].float(), top_k_weights[rows].float(), target[rows].float()
    with torch.no_grad():
        each = shard.each_expert(hidden[rows]).float()
    norm = float((y ** 2).sum()) or 1.0
    with torch.no_grad():
        base = float(((_output(gate, x, logits, w, each) - y) ** 2).sum()) / norm
    start = {k: v.clone() for k, v in gate.state_dict().items()}
    params = list(gate.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    for _ in range(steps):
        loss = ((_output(gate, x, logits, w, each) - y) ** 2).sum() / norm
        opt.zero_grad()
        loss.backward()
        opt.step()
    for p in params:
        p.requires_grad_(False)
    with torch.no_grad():
        fitted = float(((_output(gate, x, logits, w, each) - y) ** 2).sum()) / norm
    if fitted > base:
        gate.load_state_dict(start)
        fitted = base
    gate.fitted = True
    return GateFit(int(rows.numel()), base, fitted)
