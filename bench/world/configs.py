"""The embedded worlds' configs (`bench world videos|voc|imagenet`), free of OpenCV and numpy: the command
line reads their defaults without importing the writers (videos.py, voc.py, imagenet.py re-export them)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class VideoWorldConfig:
    out: str = ""
    seed: int = 0
    clips: int = 24
    frames: int = 32
    height: int = 240
    width: int = 320
    fps: int = 25
    workers: int = 0  # 0 = every core


@dataclass
class VOCWorldConfig:
    out: str = ""
    seed: int = 0
    voc07_trainval: int = 500
    voc07_test: int = 500
    # 1,500 (world version 4; 250 before): ~600 with masks, ~500 SBD train and ~140 seg11valid. With 84 SBD
    # train images no trunk's FCN learned more than the background prior in the updates 2 cores can afford
    voc12_trainval: int = 1500
    seg_fraction: float = 0.4  # share of images with segmentation masks
    min_size: int = 200  # image sides are drawn in [min_size, max_size]
    max_size: int = 320
    # Scene layout (world version 3). Photographs put their subject near the centre; with centres uniform
    # over the image, small and 1-4 per image (version 2), pooled features of a supervised trunk reached
    # only 20% SVM mAP at conv5 (random 15%); centre-biased, larger, 1-3 objects: 28% (random 15%).
    max_objects: int = 3  # objects per image drawn in [1, max_objects]
    object_size: tuple[float, float] = (0.3, 0.7)  # an object's extent, as a fraction of the shorter side
    center_spread: float = 0.15  # centres normal about the image centre, this std (fraction of the side);
    #                              0 = uniform over [0.05, 0.95]
    workers: int = 0


@dataclass
class ImageNetWorldConfig:
    out: str = ""
    seed: int = 0
    classes: int = 20  # at most the 20 shape classes
    train_per_class: int = 100
    val_per_class: int = 50
    size: int = 160  # square images; the readers resize them as ImageNet's
    workers: int = 0
