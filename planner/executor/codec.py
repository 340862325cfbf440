"""The low-rank codec at a pipeline cut: hidden states [.., H] sent as [.., r] coefficients.

``encode(x) = (x - mean) @ basis``, ``decode(z) = z @ basis.T + mean``, with ``basis [H, r]`` the top
``r`` principal directions of calibration activations of that cut (the hidden states leaving the
cut's last layer), the eigenvectors of their covariance in float64. At full rank (r = H) the basis is orthogonal and the
codec is exact up to float error. A cut is named by its layer: the first layer after it.

Codecs are stored in one safetensors file (:func:`save_codecs`, :func:`load_codecs`), tensors
``cut<layer>.mean`` and ``cut<layer>.basis`` and metadata saying what they were fitted on.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn


class LowRankCodec(nn.Module):
    """Rank-``r`` PCA codec of one cut; ``mean [H]``, ``basis [H, r]`` (orthonormal columns)."""

    def __init__(self, mean: torch.Tensor, basis: torch.Tensor):
        super().__init__()
        if mean.dim() != 1 or basis.dim() != 2 or basis.shape[0] != mean.shape[0] or basis.shape[1] > basis.shape[0]:
            raise ValueError(f"a codec needs mean [H] and basis [H, r] with r <= H; got {tuple(mean.shape)}, {tuple(basis.shape)}")
        self.register_buffer("mean", mean)
        self.register_buffer("basis", basis)

    @property
    def rank(self) -> int:
        return int(self.basis.shape[1])

    @property
    def hidden_size(self) -> int:
        return int(self.basis.shape[0])

    @classmethod
    def fit(cls, activations: torch.Tensor, rank: int) -> "LowRankCodec":
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
        dtype = activations.dtype
        return cls(mean.to(dtype), vectors.flip(1)[:, :rank].contiguous().to(dtype))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) @ self.basis

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.basis.T + self.mean

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


def save_codecs(path: str | Path, codecs: dict[int, LowRankCodec], fitted_on: str = "") -> None:
    """Write ``codecs`` (cut layer -> codec) to one safetensors file."""
    tensors = {}
    for layer, codec in sorted(codecs.items()):
        tensors[f"cut{layer}.mean"] = codec.mean.contiguous()
        tensors[f"cut{layer}.basis"] = codec.basis.contiguous()
    meta = {"ranks": json.dumps({str(k): c.rank for k, c in sorted(codecs.items())}), "fitted_on": fitted_on}
    save_file(tensors, str(path), metadata=meta)


def load_codecs(path: str | Path) -> dict[int, LowRankCodec]:
    """The codecs of a file written by :func:`save_codecs`: cut layer -> codec."""
    tensors = load_file(str(path))
    layers = sorted({int(k.split(".")[0][3:]) for k in tensors})
    return {layer: LowRankCodec(tensors[f"cut{layer}.mean"], tensors[f"cut{layer}.basis"]) for layer in layers}
