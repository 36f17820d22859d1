"""The embedded default data of `bench pretrain`: the video world and its extracted flow, made on
first use under $CPFS_BENCH_HOME/world/."""
from __future__ import annotations

import json
from pathlib import Path

import click

from cpfs_bench.bench.paths import bench_home, cached_world, locked
from cpfs_bench.bench.world.objects import WORLD_VERSION


def default_video_world(seed: int = 0, progress: bool = True) -> Path:
    """The embedded video world: a folder with videos/ and gt_flow/."""
    from cpfs_bench.bench.world.videos import VideoWorldConfig, write_video_world

    return cached_world(f"videos-v{WORLD_VERSION}-seed{seed}", lambda root: write_video_world(
        VideoWorldConfig(out=str(root), seed=seed), progress=progress))


def default_flow_data(seed: int = 0, method: str = "dis-medium", progress: bool = True) -> Path:
    """Frames + flow of the embedded video world (extracted on first use), ready for `bench pretrain`."""
    from cpfs_bench.pretrain.extract import FlowConfig, extract_flow

    world = default_video_world(seed, progress)
    root = bench_home() / "world" / f"flow-v{WORLD_VERSION}-seed{seed}-{method}"
    with locked(bench_home() / "world" / ".flow.lock"):
        manifest = root / "manifest.json"
        expected = len(json.loads((world / "world.json").read_text())["clips"])
        if not manifest.exists() or len(json.loads(manifest.read_text())["videos"]) < expected:
            click.echo(f"Extracting flow of the embedded videos into {root} (once; reused afterwards)", err=True)
            summary = extract_flow(FlowConfig(videos=[str(world / "videos")], out=str(root), method=method), progress)
            if summary["failed"]:
                raise RuntimeError(f"flow extraction of the embedded world failed; see {root / 'failures.txt'}")
    return root
