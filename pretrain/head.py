"""Hypercolumn head: sample trunk activations at a sparse set of pixels and project them with an MLP.

The hypercolumn of pixel p concatenates conv1, pool1, conv3, pool5 (bilinearly interpolated at p,
using each layer's receptive-field geometry) and fc7 (one vector per image): 96 + 96 + 384 + 256 +
4096 = 4928 channels. Since the first MLP layer is linear, its product with the concatenation equals
the sum of per-source products; the fc7 part is therefore computed once per image rather than once
per pixel ("split" mode), which is what makes the head cheap.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cpfs_bench.pretrain.alexnet import CHANNELS

SOURCES = ("conv1", "pool1", "conv3", "pool5", "fc7")


def sample_features(feature: torch.Tensor, positions: torch.Tensor, stride: float, offset: float) -> torch.Tensor:
    """Bilinearly sample feature (B, C, h, w) at input-pixel positions (B, N, 2) given as (x, y).

    Feature index j is centred on input pixel stride * j + offset; positions beyond the outermost
    centres take the border value. Returns (B, N, C)."""
    b, c, h, w = feature.shape
    # positions in at least float32: in bf16 (autocast) pixel 227 is not even representable
    dtype = torch.promote_types(feature.dtype, torch.float32)
    j = (positions.to(dtype) - offset) / stride  # feature-grid coordinates (x, y)
    size = torch.tensor([w - 1, h - 1], dtype=dtype, device=feature.device).clamp(min=1)
    grid = (2 * j / size - 1).unsqueeze(1)  # (B, 1, N, 2), align_corners=True convention
    sampled = F.grid_sample(feature.to(dtype), grid, mode="bilinear", padding_mode="border", align_corners=True)
    return sampled[:, :, 0, :].transpose(1, 2)


class HypercolumnHead(nn.Module):
    """Hypercolumn -> Linear(4928, hidden) -> ReLU -> Linear(hidden, out_dim) [-> L2 normalise].

    `forward(activations, positions)`: activations from CaffeNet.activations (must hold SOURCES),
    positions (B, N, 2) input-pixel (x, y). Returns (B, N, out_dim). With normalize=False the outputs
    are logits (the direct-cls baseline)."""

    def __init__(self, geometry: dict[str, tuple[float, float]], hidden: int = 256, out_dim: int = 16,
                 normalize: bool = True, sources=SOURCES):
        super().__init__()
        self.sources = tuple(sources)
        self.geometry = {k: geometry[k] for k in self.sources if k != "fc7"}
        self.in_channels = sum(CHANNELS[s] for s in self.sources)
        self.fc1 = nn.Linear(self.in_channels, hidden)
        self.fc2 = nn.Linear(hidden, out_dim)
        self.normalize = normalize
        # column ranges of fc1.weight that belong to the per-pixel sources and to fc7
        self.pixel_sources = tuple(s for s in self.sources if s != "fc7")
        self.n_pixel_channels = sum(CHANNELS[s] for s in self.pixel_sources)

    def hypercolumns(self, activations: dict, positions: torch.Tensor) -> torch.Tensor:
        """The full concatenated hypercolumn (B, N, 4928), global sources broadcast to every pixel."""
        parts = []
        for s in self.sources:
            if s == "fc7":
                parts.append(activations[s][:, None, :].expand(-1, positions.shape[1], -1))
            else:
                parts.append(sample_features(activations[s], positions, *self.geometry[s]))
        return torch.cat(parts, dim=2)

    def first_layer(self, activations: dict, positions: torch.Tensor, split: bool = True) -> torch.Tensor:
        """fc1 applied to the hypercolumns, (B, N, hidden); split=False builds the concatenation."""
        if not split:
            return self.fc1(self.hypercolumns(activations, positions))
        pixel = torch.cat([sample_features(activations[s], positions, *self.geometry[s]) for s in self.pixel_sources], 2)
        w = self.fc1.weight
        out = pixel @ w[:, : self.n_pixel_channels].t()
        if "fc7" in self.sources:
            out = out + (activations["fc7"] @ w[:, self.n_pixel_channels:].t())[:, None, :]
        return out + self.fc1.bias

    def forward(self, activations: dict, positions: torch.Tensor, split: bool = True) -> torch.Tensor:
        h = F.relu(self.first_layer(activations, positions, split))
        out = self.fc2(h)
        return F.normalize(out, dim=2) if self.normalize else out


def sample_pixel_positions(valid: torch.Tensor, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw n pixel positions per image among valid pixels, on valid's device in a few batched calls
    (no per-image loop on the host). valid (B, H, W) bool -> (B, N, 2) long (x, y).

    Uniformly without replacement where an image has at least n valid pixels (the n smallest of
    uniform random keys over its valid pixels); with replacement among its valid pixels where it has
    fewer; an image with none falls back to all pixels (its flow is then zero, which the caller should
    have masked). `generator` must live on valid's device."""
    b, h, w = valid.shape
    flat = valid.reshape(b, -1)
    counts = flat.sum(1)
    keys = torch.rand(flat.shape, generator=generator, device=valid.device)
    keys = keys.masked_fill(~flat, 2.0)  # invalid pixels sort after every valid one
    short = counts < n
    if n <= h * w:
        idx = keys.topk(n, dim=1, largest=False).indices
    else:
        idx = torch.zeros(b, n, dtype=torch.long, device=valid.device)
    if bool(short.any()):  # rare: too few valid pixels, draw with replacement among them
        weights = torch.where(counts[:, None] > 0, flat.float(), torch.ones_like(flat, dtype=torch.float))
        idx[short] = torch.multinomial(weights[short], n, replacement=True, generator=generator)
    return torch.stack([idx % w, idx // w], dim=2)
