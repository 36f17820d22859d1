"""Embedded ImageNet-style world (`bench world imagenet`): train/<wnid>/*.JPEG and val/<wnid>/*.JPEG.

Each image shows one large object of its class (the 20 shape classes of bench/world/shapes.py, with
colour and texture drawn per instance, bench/world/objects.py) and sometimes a smaller distractor of
another class behind it, over a background drawn from the same appearance distribution. Class folders
use made-up WordNet-style ids (n9xxxxxxx), which no real synset has.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np

from cpfs_bench.bench.parallel import parallel_map, worker_count
from cpfs_bench.bench.runs import progress_bar
from cpfs_bench.bench.world.configs import ImageNetWorldConfig
from cpfs_bench.bench.voc_format import VOC_CLASSES
from cpfs_bench.bench.world.objects import WORLD_VERSION, still_scene
from cpfs_bench.bench.world.shapes import CLASS_PARTS


def wnid(k: int) -> str:
    return f"n9{k:07d}"


def draw_image(rng: np.random.Generator, cls: int, n_classes: int, size: int) -> np.ndarray:
    """One BGR image (size, size, 3) of class `cls`."""
    placements = []
    if rng.random() < 0.3:  # a smaller distractor of another class behind the main object
        other = int((cls + rng.integers(1, n_classes)) % n_classes) if n_classes > 1 else cls
        placements.append((other, (float(rng.uniform(0, size)), float(rng.uniform(0, size))),
                           float(rng.uniform(0.12, 0.2) * size)))
    placements.append((cls, (float(rng.uniform(0.4, 0.6) * size), float(rng.uniform(0.4, 0.6) * size)),
                       float(rng.uniform(0.45, 0.6) * size)))
    image, _, _ = still_scene(rng, size, size, placements)
    return image


def write_one(args) -> None:
    cfg, split, cls, index, path = args
    cv2.setNumThreads(1)
    rng = np.random.default_rng([cfg.seed, 0 if split == "train" else 1, cls, index])
    cv2.imwrite(path, draw_image(rng, cls, cfg.classes, cfg.size), [cv2.IMWRITE_JPEG_QUALITY, 90])


def write_imagenet_world(cfg: ImageNetWorldConfig, progress: bool = True) -> Path:
    """Write the class-folder tree (see the module docstring); returns cfg.out."""
    if not 1 <= cfg.classes <= len(CLASS_PARTS):
        raise ValueError(f"classes must be 1..{len(CLASS_PARTS)} (the world's shape classes), got {cfg.classes}")
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
    (out / "world.json").write_text(json.dumps({"kind": "imagenet", "world_version": WORLD_VERSION, "config": asdict(cfg),
                                                "classes": {wnid(k): VOC_CLASSES[k] for k in range(cfg.classes)}}, indent=1))
    return out
