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


@dataclass(frozen=True)
class SupervisedConfig:
    """Supervised training of the trunk with a new fc8, torchvision references style (baselines/supervised.py)."""

    # smoke: the embedded world's default, sized for minutes on 2 cores
    PRESETS: ClassVar[dict] = {"smoke": {"epochs": 10, "batch_size": 32, "lr": 0.003, "lr_step": 7,
                                         "min_crop_scale": 0.35}}

    data: str | None = None  # ImageNet-layout root (train/<wnid>/, val/<wnid>/); None = the embedded world
    out: str = "runs/supervised"  # run folder; the checkpoint to evaluate is OUT/final.pt
    arch: str = "caffenet_bn"
    epochs: int = 90
    batch_size: int = 256
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_step: int = 30  # epochs between lr drops
    lr_gamma: float = 0.1
    crop: int = 227
    min_crop_scale: float = 0.08  # RandomResizedCrop's smallest area fraction (torchvision's default)
    resize: int = 256  # validation: shorter side, then centre crop
    preset: str | None = None  # None: "smoke" on the embedded world
    seed: int = 0
    device: str = "auto"
    workers: int | None = None
    save_minutes: float = 10.0
    resume: bool = False
