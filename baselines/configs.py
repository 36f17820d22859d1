"""The baselines' configs, torch-free: the command line reads their defaults without importing a model
(baselines/random_init.py, random_rescaled.py and supervised.py re-export them)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

#: the trunks a baseline can be written for (pretrain/alexnet.py builds them)
TRUNK_ARCHS = ("caffenet_bn", "caffenet")


@dataclass(frozen=True)
class RandomInitConfig:
    """`bench baseline random`: the trunk's own initialisation, seeded."""

    out: str = ""
    arch: str = "caffenet_bn"
    seed: int = 0


@dataclass(frozen=True)
class RandomRescaledConfig:
    """Krähenbühl et al.'s data-dependent rescaling of a random init (philkr/magic_init "elwise")."""

    out: str = ""
    arch: str = "caffenet_bn"
    seed: int = 0
    images: str | None = None  # a folder of images (searched recursively); None = the embedded ImageNet world's train
    batches: int = 10  # magic_init -nit
    batch_size: int = 16  # magic_init -bs
    bias: float = 0.1  # magic_init -b
    equalize_gradients: bool = False  # magic_init -cs
    size: int = 227  # images are resized (whole, no crop) to size x size, as magic_init's ImageData layer
