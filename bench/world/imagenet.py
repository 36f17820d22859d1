"""Embedded ImageNet-style world (`bench world imagenet`): train/<wnid>/*.JPEG and val/<wnid>/*.JPEG.

Each image shows one large object of its class (the class's shape, colour and texture statistics,
bench/world/objects.py) and sometimes a smaller distractor of another class, over clutter. Class
folders use made-up WordNet-style ids (n9xxxxxxx), which no real synset has.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from cpfs_bench.bench.parallel import parallel_map, worker_count
from cpfs_bench.bench.runs import progress_bar
from cpfs_bench.bench.world.objects import background, class_appearance, object_mask, object_texture

# offset so the ImageNet world's classes look different from the VOC world's 20
CLASS_SEED_OFFSET = 1000


@dataclass
class ImageNetWorldConfig:
    out: str = ""
    seed: int = 0
    classes: int = 20
    train_per_class: int = 60
    val_per_class: int = 15
    size: int = 160  # square images, like ImageNet's after the usual resize
    workers: int = 0


def wnid(k: int) -> str:
    return f"n9{k:07d}"


def draw_image(rng: np.random.Generator, seed: int, cls: int, n_classes: int, size: int) -> np.ndarray:
    image = background((size, size), rng)
    layers = [cls]
    if rng.random() < 0.3:
        layers.insert(0, int(rng.integers(n_classes)))  # a distractor behind the main object
    for i, c in enumerate(layers):
        main = i == len(layers) - 1
        appearance = class_appearance(seed + CLASS_SEED_OFFSET, c)
        extent = float(rng.uniform(0.45, 0.8) if main else rng.uniform(0.15, 0.3)) * size
        center = (float(rng.uniform(0.35, 0.65) * size), float(rng.uniform(0.35, 0.65) * size)) if main else \
            (float(rng.uniform(0, size)), float(rng.uniform(0, size)))
        mask = object_mask(appearance, (size, size), center, extent, float(rng.normal(0, 0.3)), rng)
        image[mask] = object_texture(appearance, (size, size), center, extent, rng)[mask]
    return image


def write_one(args) -> None:
    cfg, split, cls, index, path = args
    cv2.setNumThreads(1)
    rng = np.random.default_rng([cfg.seed, 0 if split == "train" else 1, cls, index])
    cv2.imwrite(path, draw_image(rng, cfg.seed, cls, cfg.classes, cfg.size), [cv2.IMWRITE_JPEG_QUALITY, 90])


def write_imagenet_world(cfg: ImageNetWorldConfig, progress: bool = True) -> Path:
    out = Path(cfg.out)
    jobs = []
    val_counter = 0
    for k in range(cfg.classes):
        for split, n in (("train", cfg.train_per_class), ("val", cfg.val_per_class)):
            folder = out / split / wnid(k)
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                if split == "train":
                    name = f"{wnid(k)}_{i + 1}.JPEG"
                else:
                    val_counter += 1
                    name = f"ILSVRC2012_val_{val_counter:08d}.JPEG"
                jobs.append((cfg, split, k, i, str(folder / name)))
    images = parallel_map(write_one, jobs, worker_count(cfg.workers, len(jobs)), ordered=False, chunksize=16)
    for _ in progress_bar(images, total=len(jobs), desc="world imagenet", unit="image", disable=not progress):
        pass
    (out / "world.json").write_text(json.dumps({"kind": "imagenet", "config": asdict(cfg),
                                                "classes": [wnid(k) for k in range(cfg.classes)]}, indent=1))
    return out
