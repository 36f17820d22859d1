import os

import pytest

from cpfs_bench.bench.world.imagenet import ImageNetWorldConfig, write_imagenet_world
from cpfs_bench.bench.world.videos import VideoWorldConfig, write_video_world
from cpfs_bench.pretrain.extract import FlowConfig, extract_flow


def pytest_xdist_auto_num_workers(config):
    """-n auto (pyproject's addopts): a process per core, at most 4 (a test holds up to a few GB)."""
    return max(1, min(os.cpu_count() or 1, 4))


def pytest_configure(config):
    """In an xdist worker, torch gets the worker's share of the cores (two 2-thread processes on 2 cores ran
    the suite in 235 s, two 1-thread ones in 186 s); OMP_NUM_THREADS carries it to the `bench` subprocesses."""
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if count:
        threads = max(1, (os.cpu_count() or 1) // count)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        import torch

        torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items):
    """The ladder's tests share one module fixture (minutes of training): one xdist process runs them all."""
    for item in items:
        if item.get_closest_marker("ladder"):
            item.add_marker(pytest.mark.xdist_group("ladder"))


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """Two 6-frame clips of the embedded video world with ground-truth flow."""
    root = tmp_path_factory.mktemp("world")
    write_video_world(VideoWorldConfig(out=str(root), seed=3, clips=2, frames=6, workers=1), progress=False)
    return root


@pytest.fixture(scope="session")
def tiny_flow(tiny_world, tmp_path_factory):
    """`bench flow` output of tiny_world (frames + DIS flow)."""
    out = tmp_path_factory.mktemp("flow")
    extract_flow(FlowConfig(videos=[str(tiny_world / "videos")], out=str(out), workers=1), progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_imagenet(tmp_path_factory):
    """An ImageNet-style tree of 3 classes x (4 train + 2 val) 64-px images."""
    root = tmp_path_factory.mktemp("inet")
    write_imagenet_world(ImageNetWorldConfig(out=str(root), classes=3, train_per_class=4, val_per_class=2, size=64,
                                             workers=1), progress=False)
    return root
