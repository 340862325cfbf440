"""Experts as a plan places them: shards per holder device, replica shares, the remote-experts seam.

A plan keeps a layer's routed experts on its stage's device unless an expert placement moves or
replicates one elsewhere. :class:`PlacedExperts` replaces a layer's fused experts module (same call:
``(hidden [T, H], top_k_index [T, k], top_k_weights [T, k]) -> [T, H]``) and serves each of a
token's k slots at the slot's holder: the stage's own :class:`ExpertShard`, or a
:class:`RemoteExperts` callable for every other device. In one process :class:`InProcessExperts`
holds the other devices' shards; the multi-process runtime replaces it with send/recv.

Replica shares (deterministic): the slots that pick a replicated expert are numbered in the order
they arrive (row-major over [tokens, k] within a call, calls in order since the last
:meth:`PlacedExperts.reset`); slot ``j`` goes to the first replica ``r`` whose cumulative share
exceeds ``frac((j + 1) * 0.618...)`` (a golden-ratio Weyl sequence). Over any run of ``n`` slots
each replica gets ``n x share`` slots up to a few, and the rule needs no randomness. Replicas of an
expert hold identical weights, so the split never changes the output.
"""

from __future__ import annotations

import copy
import math
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def _shell(module: nn.Module) -> nn.Module:
    """A shallow copy of ``module`` whose dicts (parameters, buffers, submodules, hooks) are its own, so
    that replacing or slicing entries in the copy leaves the original untouched (``copy.copy`` alone
    shares them)."""
    c = copy.copy(module)
    for key, value in vars(module).items():
        if isinstance(value, (dict, set, list)):
            setattr(c, key, type(value)(value))
    return c


def expert_subset(experts: nn.Module, expert_ids: Sequence[int]) -> nn.Module:
    """A copy of a fused experts module holding only ``expert_ids`` (in that order): every parameter and
    buffer whose first dimension is the expert is sliced; anything else (activation, config) is shared.
    Slots that name no expert of the subset must carry the sentinel ``len(expert_ids)`` and weight 0,
    with the module in transformers' expert-parallel mode (``_is_expert_parallel``), which skips them."""
    num = int(experts.num_experts)
    index = torch.as_tensor(list(expert_ids), dtype=torch.long)
    shard = _shell(experts)
    for name, param in experts.named_parameters(recurse=False):
        if param.dim() >= 1 and param.shape[0] == num:
            shard._parameters[name] = nn.Parameter(param.detach()[index].clone(), requires_grad=False)
    for name, buf in experts.named_buffers(recurse=False):
        if buf.dim() >= 1 and buf.shape[0] == num:
            shard._buffers[name] = buf[index].clone()
    shard.num_experts = len(index)
    return shard


class ExpertShard(nn.Module):
    """The experts ``expert_ids`` of layer ``layer`` held by one device.

    Called with global expert ids: ``(hidden [N, H], expert_ids [N, k], weights [N, k]) -> [N, H]``,
    the weighted sum over the slots whose expert this shard holds; slots with id -1 or an expert it
    does not hold add nothing.
    """

    def __init__(self, experts: nn.Module, layer: int, expert_ids: Sequence[int]):
        super().__init__()
        self.layer = layer
        self.expert_ids = tuple(int(e) for e in expert_ids)
        self.module = expert_subset(experts, self.expert_ids)
        local_of = torch.full((int(experts.num_experts),), -1, dtype=torch.long)
        local_of[list(self.expert_ids)] = torch.arange(len(self.expert_ids))
        self.register_buffer("local_of", local_of, persistent=False)

    def forward(self, hidden: torch.Tensor, expert_ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        local = torch.where(expert_ids >= 0, self.local_of[expert_ids.clamp(min=0)], -1)
        mine = local >= 0
        if bool(mine.all()):
            # No slot to skip: the plain path, without the expert-parallel sentinel masks (~15 % of a
            # prefill's time on CPU).
            self.module._is_expert_parallel = False
            return self.module(hidden, local, weights)
        if getattr(self.module.config, "_experts_implementation", None) == "eager":
            # Some families' eager paths (gpt-oss) cannot skip a sentinel slot: point other holders'
            # slots at the first held expert with weight 0 instead (computed, then multiplied by 0).
            return self.module(hidden, torch.where(mine, local, 0), torch.where(mine, weights, 0.0))
        self.module._is_expert_parallel = True
        sentinel = len(self.expert_ids)
        return self.module(hidden, torch.where(mine, local, sentinel), torch.where(mine, weights, 0.0))

    def each_expert(self, hidden: torch.Tensor) -> torch.Tensor:
        """Every held expert applied to every token with weight 1: [N, n_experts, H] (for fitting gates)."""
        n = len(self.expert_ids)
        outs = []
        for j in range(n):
            ids = torch.full((hidden.shape[0], 1), self.expert_ids[j], dtype=torch.long, device=hidden.device)
            outs.append(self(hidden, ids, torch.ones(ids.shape, dtype=hidden.dtype, device=hidden.device)))
        return torch.stack(outs, dim=1)


class PendingExperts(Protocol):
    """A remote holder's answer still on its way: :meth:`result` waits for it ([N, H])."""

    def result(self) -> torch.Tensor: ...


class RemoteExperts(Protocol):
    """Serve slots of layer ``layer`` at ``device``: ``(hidden [N, H], expert_ids [N, k] global ids, -1 =
    not this device's, weights [N, k]) -> [N, H]``, or a :class:`PendingExperts` whose ``result()``
    gives it later (the remote holders of a layer are called before its local experts run, and their
    pending results are collected after). The seam the multi-process runtime replaces."""

    def __call__(self, device: str, layer: int, hidden: torch.Tensor, expert_ids: torch.Tensor,
                 weights: torch.Tensor) -> torch.Tensor | PendingExperts: ...


class InProcessExperts(nn.Module):
    """Remote holders in the same process: the shards of every (device, layer) that is not a stage's own."""

    def __init__(self):
        super().__init__()
        self.shards = nn.ModuleDict()

    @staticmethod
    def key(device: str, layer: int) -> str:
        return f"{device}|{layer}"

    def add(self, device: str, shard: ExpertShard) -> None:
        self.shards[self.key(device, shard.layer)] = shard

    def __call__(self, device: str, layer: int, hidden: torch.Tensor, expert_ids: torch.Tensor,
                 weights: torch.Tensor) -> torch.Tensor:
        return self.shards[self.key(device, layer)](hidden, expert_ids, weights)


@dataclass
class Timings:
    """Seconds per decoder layer, split as the cost model splits a layer: the whole layer and its
    routed experts (non-expert part = layer - routed experts). Off unless ``enabled``."""

    enabled: bool = False
    layer_s: dict[int, float] = field(default_factory=lambda: defaultdict(float))
    routed_experts_s: dict[int, float] = field(default_factory=lambda: defaultdict(float))
    calls: dict[int, int] = field(default_factory=lambda: defaultdict(int))

    def clear(self) -> None:
        self.layer_s.clear()
        self.routed_experts_s.clear()
        self.calls.clear()

    def non_expert_s(self, layer: int) -> float:
        return self.layer_s[layer] - self.routed_experts_s.get(layer, 0.0)


class SlotRouting:
    """Which holder serves each slot of one layer: ``holders(top_k_index [T, k]) -> [T, k]`` indices
    into the layer's holder list (0 = the stage's device), with the replica rule of the module doc."""

    def __init__(self, num_experts: int, expert_holders: dict[int, tuple[list[int], list[float]]]):
        holder_of = torch.zeros(num_experts, dtype=torch.long)
        self.replicas: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for e, (hs, shares) in expert_holders.items():
            if len(hs) == 1:
                holder_of[e] = hs[0]
            else:
                cum = torch.tensor(shares, dtype=torch.float64).cumsum(0)
                cum[-1] = 1.0
                self.replicas[e] = (torch.tensor(hs, dtype=torch.long), cum)
        self.holder_of = holder_of
        self.served = torch.zeros(num_experts, dtype=torch.long)

    @property
    def all_local(self) -> bool:
        return not self.replicas and bool((self.holder_of == 0).all())

    def reset(self) -> None:
        self.served.zero_()

    def holders(self, top_k_index: torch.Tensor) -> torch.Tensor:
        holder = self.holder_of.to(top_k_index.device)[top_k_index]
        flat_ids, flat = top_k_index.reshape(-1), holder.view(-1)
        for e, (hs, cum) in self.replicas.items():
            pos = (flat_ids == e).nonzero().squeeze(1)
            if pos.numel() == 0:
                continue
            j = self.served[e] + torch.arange(1, pos.numel() + 1, dtype=torch.float64)
            self.served[e] += pos.numel()
            u = torch.frac(j * GOLDEN)
            r = torch.searchsorted(cum, u, right=True).clamp(max=len(hs) - 1)
            flat[pos] = hs[r].to(flat.device)
        return holder


class RouterTap(nn.Module):
    """Calls the family's router unchanged and keeps its logits [T, E] of the last call for the group gate."""

    def __init__(self, router: nn.Module):
        super().__init__()
        self.router = router
        self.last_logits: torch.Tensor | None = None

    def forward(self, hidden: torch.Tensor):
        out = self.router(hidden)
        self.last_logits = out[0]
        return out


class PlacedExperts(nn.Module):
    """Drop-in for layer ``layer``'s fused experts on stage device ``holders[0]``: each slot is served by
    its holder (``local`` for the stage's device, ``remote(device, ...)`` for the others), or, where a
    ``group_gate`` is set, every token with a slot off this device is re-routed over the local subset.

    ``slot_counts[h]`` counts the slots served by ``holders[h]`` since the last :meth:`reset`;
    ``regated_tokens`` the tokens the group gate served locally instead of remotely.
    """

    def __init__(self, layer: int, holders: list[str], local: ExpertShard | None, remote: RemoteExperts,
                 routing: SlotRouting, timings: Timings, group_gate: nn.Module | None = None,
                 router_tap: RouterTap | None = None):
        super().__init__()
        self.layer = layer
        self.holders = list(holders)
        self.local = local
        self._remote = remote
        self.routing = routing
        self._timings = timings
        self.group_gate = group_gate
        self._tap = router_tap
        self.slot_counts = torch.zeros(len(holders), dtype=torch.long)
        self.regated_tokens = 0

    def reset(self) -> None:
        self.routing.reset()
        self.slot_counts.zero_()
        self.regated_tokens = 0

    def forward(self, hidden: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter() if self._timings.enabled else 0.0
        out = self._serve(hidden, top_k_index, top_k_weights)
        if self._timings.enabled:
            self._timings.routed_experts_s[self.layer] += time.perf_counter() - t0
        return out

    def _serve(self, hidden: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
        if self.routing.all_local:
            self.slot_counts[0] += top_k_index.numel()
            return self.local(hidden, top_k_index, top_k_weights)
        holder = self.routing.holders(top_k_index)
        if self.group_gate is not None:
            # Under the group gate an expert with a replica here is always served here.
            holder = torch.where(self.local.local_of[top_k_index] >= 0, 0, holder)
            off = (holder != 0).any(dim=1)
            if off.any():
                rows = off.nonzero().squeeze(1)
                idx, w = self.group_gate(hidden[rows], self._tap.last_logits[rows], top_k_weights[rows])
                top_k_index, top_k_weights, holder = top_k_index.clone(), top_k_weights.clone(), holder.clone()
                top_k_index[rows], top_k_weights[rows], holder[rows] = idx, w.to(top_k_weights.dtype), 0
                self.regated_tokens += int(rows.numel())
        self.slot_counts += torch.bincount(holder.reshape(-1), minlength=len(self.holders)).cpu()
        calls = []
        for h in range(len(self.holders)):
            mine = holder == h
            rows = mine.any(dim=1).nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            ids = torch.where(mine[rows], top_k_index[rows], -1)
            w = torch.where(mine[rows], top_k_weights[rows], 0.0)
            calls.append((h, rows, ids, w))
        # Remote holders are called first: a remote that answers with a pending result (see
        # RemoteExperts) works while the local experts run. Parts are added in holder order.
        remote = {h: self._remote(self.holders[h], self.layer, hidden[rows], ids, w) for h, rows, ids, w in calls if h != 0}
        out = torch.zeros_like(hidden)
        for h, rows, ids, w in calls:
            part = self.local(hidden[rows], ids, w) if h == 0 else remote[h]
            if not isinstance(part, torch.Tensor):
                part = part.result()
            out.index_add_(0, rows, part.to(out.dtype))
        return out
