"""The embedded default data of the evaluations (VOC2007/VOC2012/SBD and an ImageNet-style tree),
written on first use under $CPFS_BENCH_HOME/world/. The readers (evaluate/datasets.py) never know."""
from __future__ import annotations

from pathlib import Path

from cpfs_bench.bench.paths import cached_world
from cpfs_bench.bench.world.objects import WORLD_VERSION


def default_voc_world(seed: int = 0, progress: bool = True) -> Path:
    """The embedded VOC2007/VOC2012/SBD world; pass it as a VOCdevkit root."""
    from cpfs_bench.bench.world.voc import VOCWorldConfig, write_voc_world

    return cached_world(f"voc-v{WORLD_VERSION}-seed{seed}", lambda root: write_voc_world(
        VOCWorldConfig(out=str(root), seed=seed), progress=progress))


def default_imagenet_world(seed: int = 0, progress: bool = True) -> Path:
    """The embedded ImageNet-style world: train/<wnid>/, val/<wnid>/."""
    from cpfs_bench.bench.world.imagenet import ImageNetWorldConfig, write_imagenet_world

    return cached_world(f"imagenet-v{WORLD_VERSION}-seed{seed}", lambda root: write_imagenet_world(
        ImageNetWorldConfig(out=str(root), seed=seed), progress=progress))


def describe_dataset(root, classes: int, split: str, images: int) -> dict:
    """A cell's dataset identity: {"name", "classes", "split", "images", "embedded"}. `embedded` marks
    the synthetic default world (written by bench world), whose numbers are never comparable with
    the paper's; the name is the dataset folder's."""
    root = Path(root).resolve()
    world = next((d for d in (root, *root.parents[:2]) if (d / "world.json").exists()), None)
    name = f"embedded {world.name}" if world is not None else root.name
    return {"name": name, "classes": int(classes), "split": split, "images": int(images), "embedded": world is not None}
