"""Frozen-trunk features per layer, pooled to ~9k dimensions as in the linear-probe protocols.

FAIR benchmark / VISSL ("avg") on CaffeNet: average pooling conv1 k19 s4 -> 10x10, conv2 k12 s3 -> 6x6,
conv3/conv4 k9 s1 -> 5x5, conv5 k8 s1 -> 6x6 (at 227x227 input: 9600, 9216, 9600, 9600, 9216 dims).
Zhang et al.'s Caffe version ("bilinear"): bilinear resize of each map to the same spatial sizes.

torchvision's AlexNet has other widths (64-192-384-256-256), for which no protocol fixes the pooling;
ours brings each layer to ~9k dims the same way, with kernels chosen so 224 and 227 inputs give the
same sizes: conv1 k11 s4 -> 12x12 (9216), conv2 k9 s3 -> 7x7 (9408), conv3 k9 s1 -> 5x5 (9600),
conv4/conv5 k8 s1 -> 6x6 (9216).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision import transforms

from cpfs_bench.evaluate.configs import LAYERS as PROBE_LAYERS
from cpfs_bench.evaluate.configs import ProbeConfig
# {trunk family: {layer: (avg-pool kernel, stride, output size)}}
PROBE_POOLING = {
    "caffenet": {"conv1": (19, 4, 10), "conv2": (12, 3, 6), "conv3": (9, 1, 5), "conv4": (9, 1, 5), "conv5": (8, 1, 6)},
    "alexnet": {"conv1": (11, 4, 12), "conv2": (9, 3, 7), "conv3": (9, 1, 5), "conv4": (8, 1, 6), "conv5": (8, 1, 6)},
}
POOLINGS = ProbeConfig.POOLINGS


def probe_pooling(arch: str) -> dict[str, tuple[int, int, int]]:
    """The pooling table of a trunk architecture ("caffenet_bn", "caffenet", "alexnet")."""
    family = "alexnet" if arch == "alexnet" else "caffenet" if arch.startswith("caffenet") else None
    if family is None:
        raise ValueError(f"no probe pooling defined for architecture {arch!r}")
    return PROBE_POOLING[family]


def pool_layer(activation: torch.Tensor, layer: str, pooling: str = "avg", arch: str = "caffenet_bn") -> torch.Tensor:
    """(B, C, h, w) activation of `layer` of an `arch` trunk -> (B, C * s * s) pooled and flattened."""
    kernel, stride, size = probe_pooling(arch)[layer]
    if pooling == "avg":
        out = F.avg_pool2d(activation, kernel, stride)
    elif pooling == "bilinear":
        out = F.interpolate(activation, size=(size, size), mode="bilinear", align_corners=False)
    else:
        raise ValueError(f"unknown pooling {pooling!r}; choose from {POOLINGS}")
    return out.flatten(1)


@torch.no_grad()
def pooled_features(trunk, images: torch.Tensor, layers=PROBE_LAYERS, pooling: str = "avg") -> dict[str, torch.Tensor]:
    """One trunk forward, every requested layer pooled: images (B, 3, 227, 227) -> {layer: (B, D)}."""
    acts = trunk.activations(images.contiguous(memory_format=torch.channels_last), layers)  # see load_trunk
    return {layer: pool_layer(acts[layer], layer, pooling, trunk.arch) for layer in layers}


def pooled_dims(trunk, layers=PROBE_LAYERS, crop: int = 227, pooling: str = "avg") -> dict[str, int]:
    """Each layer's pooled feature dimension, from a forward of one blank crop x crop image."""
    blank = torch.zeros(1, 3, crop, crop, device=next(trunk.parameters()).device)
    return {layer: f.shape[1] for layer, f in pooled_features(trunk, blank, layers, pooling).items()}


def train_transform(mean, std, resize: int = 256, crop: int = 227):
    """Resize the shorter side, random crop, horizontal flip (the probe protocols' training augmentation)."""
    return transforms.Compose([transforms.Resize(resize), transforms.RandomCrop(crop), transforms.RandomHorizontalFlip(),
                               transforms.ToTensor(), transforms.Normalize(mean, std)])


def eval_transform(mean, std, resize: int = 256, crop: int = 227):
    """Resize the shorter side, centre crop."""
    return transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(crop), transforms.ToTensor(),
                               transforms.Normalize(mean, std)])
