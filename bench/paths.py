"""Where the embedded default data lives: $CPFS_BENCH_HOME, else the user cache folder."""
from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from pathlib import Path

import click


def bench_home() -> Path:
    home = os.environ.get("CPFS_BENCH_HOME")
    if home:
        return Path(home)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cpfs-bench"


@contextmanager
def _locked(path: Path):
    """An exclusive file lock, so two commands never build the same default data at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def cached_world(name: str, write, progress: bool = True) -> Path:
    """bench_home()/world/<name>, written by write(root) on first use (complete once world.json exists)."""
    root = bench_home() / "world" / name
    with _locked(bench_home() / "world" / f".{name}.lock"):
        if not (root / "world.json").exists():
            click.echo(f"Writing the embedded {name} world to {root} (once; reused afterwards)", err=True)
            write(root)
    return root


def default_video_world(seed: int = 0, progress: bool = True) -> Path:
    """The embedded video world: a folder with videos/ and gt_flow/."""
    from bench.world.videos import VideoWorldConfig, write_video_world

    return cached_world(f"videos-seed{seed}", lambda root: write_video_world(
        VideoWorldConfig(out=str(root), seed=seed), progress=progress), progress)


def default_voc_world(seed: int = 0, progress: bool = True) -> Path:
    """The embedded VOC2007/VOC2012/SBD world; pass it as a VOCdevkit root."""
    from bench.world.voc import VOCWorldConfig, write_voc_world

    return cached_world(f"voc-seed{seed}", lambda root: write_voc_world(
        VOCWorldConfig(out=str(root), seed=seed), progress=progress), progress)


def default_imagenet_world(seed: int = 0, progress: bool = True) -> Path:
    """The embedded ImageNet-style world: train/<wnid>/, val/<wnid>/."""
    from bench.world.imagenet import ImageNetWorldConfig, write_imagenet_world

    return cached_world(f"imagenet-seed{seed}", lambda root: write_imagenet_world(
        ImageNetWorldConfig(out=str(root), seed=seed), progress=progress), progress)


def default_flow_data(seed: int = 0, method: str = "dis-medium", progress: bool = True) -> Path:
    """Frames + flow of the embedded video world (extracted on first use), ready for `bench pretrain`."""
    from pretrain.extract import FlowConfig, extract_flow

    world = default_video_world(seed, progress)
    root = bench_home() / "world" / f"flow-seed{seed}-{method}"
    with _locked(bench_home() / "world" / ".flow.lock"):
        manifest = root / "manifest.json"
        expected = len(json.loads((world / "world.json").read_text())["clips"])
        if not manifest.exists() or len(json.loads(manifest.read_text())["videos"]) < expected:
            click.echo(f"Extracting flow of the embedded videos into {root} (once; reused afterwards)", err=True)
            summary = extract_flow(FlowConfig(videos=[str(world / "videos")], out=str(root), method=method), progress)
            if summary["failed"]:
                raise RuntimeError(f"flow extraction of the embedded world failed; see {root / 'failures.txt'}")
    return root
