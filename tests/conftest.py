import pytest

from cpfs_bench.bench.world.imagenet import ImageNetWorldConfig, write_imagenet_world
from cpfs_bench.bench.world.videos import VideoWorldConfig, write_video_world
from cpfs_bench.pretrain.extract import FlowConfig, extract_flow


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
