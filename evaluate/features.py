"""Frozen-trunk features per layer, pooled to ~9k dimensions as in the linear-probe protocols.

FAIR benchmark / VISSL ("avg"): average pooling conv1 k19 s4 -> 10x10, conv2 k12 s3 -> 6x6,
conv3/conv4 k9 s1 -> 5x5, conv5 k8 s1 -> 6x6 (at 227x227 input: 9600, 9216, 9600, 9600, 9216 dims).
Zhang et al.'s Caffe version ("bilinear"): bilinear resize of each map to the same spatial sizes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision import transforms

PROBE_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5")
AVG_POOL = {"conv1": (19, 4), "conv2": (12, 3), "conv3": (9, 1), "conv4": (9, 1), "conv5": (8, 1)}
POOLED_SIZE = {"conv1": 10, "conv2": 6, "conv3": 5, "conv4": 5, "conv5": 6}
POOLINGS = ("avg", "bilinear")


def pool_layer(activation: torch.Tensor, layer: str, pooling: str = "avg") -> torch.Tensor:
    """(B, C, h, w) activation of `layer` -> (B, C * s * s) pooled and flattened."""
    if pooling == "avg":
        k, s = AVG_POOL[layer]
        out = F.avg_pool2d(activation, k, s)
    elif pooling == "bilinear":
        size = POOLED_SIZE[layer]
        out = F.interpolate(activation, size=(size, size), mode="bilinear", align_corners=False)
    else:
        raise ValueError(f"unknown pooling {pooling!r}; choose from {POOLINGS}")
    return out.flatten(1)


@torch.no_grad()
def pooled_features(trunk, images: torch.Tensor, layers=PROBE_LAYERS, pooling: str = "avg") -> dict[str, torch.Tensor]:
    """One trunk forward, every requested layer pooled: images (B, 3, 227, 227) -> {layer: (B, D)}."""
    acts = trunk.activations(images, layers)
    return {layer: pool_layer(acts[layer], layer, pooling) for layer in layers}


def train_transform(mean, std, resize: int = 256, crop: int = 227):
    """Resize the shorter side, random crop, horizontal flip (the probe protocols' training augmentation)."""
    return transforms.Compose([transforms.Resize(resize), transforms.RandomCrop(crop), transforms.RandomHorizontalFlip(),
                               transforms.ToTensor(), transforms.Normalize(mean, std)])


def eval_transform(mean, std, resize: int = 256, crop: int = 227):
    """Resize the shorter side, centre crop."""
    return transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(crop), transforms.ToTensor(),
                               transforms.Normalize(mean, std)])
