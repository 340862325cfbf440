"""The low-rank codec at a pipeline cut: hidden states [.., H] sent as [.., r] coefficients.

``encode(x) = (x - mean) @ encoder``, ``decode(z) = z @ decoder + bias``, ``encoder [H, r]``,
``decoder [r, H]``. :meth:`LowRankCodec.fit` is PCA: ``encoder = decoder.T`` = the top ``r``
principal directions of calibration activations of that cut (the hidden states leaving the cut's
last layer), the eigenvectors of their covariance in float64, and ``bias = mean``. At full rank
(r = H) the basis is orthogonal and the codec is exact up to float error.
:func:`fine_tune_codec` then optionally trains encoder, decoder and bias for a few steps so that
the model's next-token distributions after the cut stay close to the unmodified model's (keeping
the PCA codec where training does not improve it on the calibration windows).
A cut is named by its layer: the first layer after it.

Codecs are stored in one safetensors file (:func:`save_codecs`, :func:`load_codecs`): tensors
``cut<layer>.{mean,encoder,decoder,bias}`` and metadata saying what they were fitted on.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

_TENSORS = ("mean", "encoder", "decoder", "bias")


class LowRankCodec(nn.Module):
    """Rank-``r`` codec of one cut: ``mean [H]``, ``encoder [H, r]``, ``decoder [r, H]``, ``bias [H]``."""

    def __init__(self, mean: torch.Tensor, encoder: torch.Tensor, decoder: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        h = mean.shape[0] if mean.dim() == 1 else -1
        if (encoder.dim() != 2 or encoder.shape[0] != h or decoder.shape != encoder.T.shape or bias.shape != mean.shape
                or encoder.shape[1] > h):
            raise ValueError(f"a codec needs mean [H], encoder [H, r], decoder [r, H], bias [H] with r <= H; got "
                             f"{tuple(mean.shape)}, {tuple(encoder.shape)}, {tuple(decoder.shape)}, {tuple(bias.shape)}")
        self.mean = nn.Parameter(mean, requires_grad=False)
        self.encoder = nn.Parameter(encoder, requires_grad=False)
        self.decoder = nn.Parameter(decoder, requires_grad=False)
        self.bias = nn.Parameter(bias, requires_grad=False)

    @property
    def rank(self) -> int:
        return int(self.encoder.shape[1])

    @property
    def hidden_size(self) -> int:
        return int(self.encoder.shape[0])

    @classmethod
    def fit(cls, activations: torch.Tensor, rank: int) -> LowRankCodec:
        """PCA of ``activations [N, H]`` (N tokens of the cut); ``rank`` in 1..H."""
        x = activations.reshape(-1, activations.shape[-1]).double()
        h = x.shape[1]
        if not 1 <= rank <= h:
            raise ValueError(f"codec rank must be between 1 and the hidden size {h}, got {rank}")
        if x.shape[0] < 2:
            raise ValueError(f"fitting a codec needs at least 2 calibration tokens, got {x.shape[0]}")
        mean = x.mean(dim=0)
        centred = x - mean
        # Eigenvectors of the covariance [H, H] = principal directions; eigh sorts them by increasing variance.
        _, vectors = torch.linalg.eigh(centred.T @ centred)
        basis = vectors.flip(1)[:, :rank].contiguous().to(activations.dtype)
        mean = mean.to(activations.dtype)
        return cls(mean, basis, basis.T.contiguous(), mean.clone())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) @ self.encoder

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.decoder + self.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


def fine_tune_codec(codec: LowRankCodec, hidden: torch.Tensor, downstream: Callable[[torch.Tensor], torch.Tensor],
                    target_log_probs: torch.Tensor, *, steps: int = 50, lr: float = 1e-3, batch_size: int = 16
                    ) -> tuple[float, float]:
    """Train ``codec`` for ``steps`` Adam steps to minimise KL(target || model after the cut).

    ``hidden [B, S, H]``: the unmodified model's hidden states at the cut on calibration windows;
    ``downstream(x [b, S, H]) -> logits [b, S, V]`` runs the layers after the cut (without a cache);
    ``target_log_probs [B, S, V]``: the unmodified model's log-probabilities on the same windows.
    Windows are taken ``batch_size`` at a time, in order, cycling. The codec keeps whichever of its
    starting point and the trained one has the lower KL over all the windows; returns both KLs (nats).
    """
    def kl(rows: torch.Tensor) -> torch.Tensor:
        lq = torch.log_softmax(downstream(codec(hidden[rows])).float(), dim=-1)
        lp = target_log_probs[rows]
        return (lp.exp() * (lp - lq)).sum(-1).mean()

    def kl_all() -> float:
        with torch.no_grad():
            parts = [float(kl(rows)) * len(rows) for rows in torch.arange(hidden.shape[0]).split(batch_size)]
        return sum(parts) / hidden.shape[0]

    before = kl_all()
    start = {k: v.clone() for k, v in codec.state_dict().items()}
    params = list(codec.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    try:
        windows = hidden.shape[0]
        take = min(batch_size, windows)
        for step in range(steps):
            loss = kl(torch.arange(step * take, (step + 1) * take) % windows)
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        for p in params:
            p.requires_grad_(False)
    after = kl_all()
    if after > before:
        codec.load_state_dict(start)
    return before, min(after, before)


def save_codecs(path: str | Path, codecs: dict[int, LowRankCodec], fitted_on: str = "") -> None:
    """Write ``codecs`` (cut layer -> codec) to one safetensors file."""
    tensors = {f"cut{layer}.{name}": getattr(codec, name).detach().contiguous()
               for layer, codec in sorted(codecs.items()) for name in _TENSORS}
    meta = {"ranks": json.dumps({str(k): c.rank for k, c in sorted(codecs.items())}), "fitted_on": fitted_on}
    save_file(tensors, str(path), metadata=meta)


def load_codecs(path: str | Path) -> dict[int, LowRankCodec]:
    """The codecs of a file written by :func:`save_codecs`: cut layer -> codec."""
    tensors = load_file(str(path))
    layers = sorted({int(k.split(".")[0][3:]) for k in tensors})
    return {layer: LowRankCodec(*(tensors[f"cut{layer}.{name}"] for name in _TENSORS)) for layer in layers}
