"""The reference rows' checkpoints (issue 13) in every evaluation: random-rescaled, a Caffe import and a
torchvision import each go through one tiny run of each evaluation command, so the tables can show them."""
import pytest
import torch
from caffe_files import write_caffenet

from cpfs_bench.baselines.caffe_import import import_caffe
from cpfs_bench.baselines.random_rescaled import RandomRescaledConfig, write_random_rescaled_checkpoint
from cpfs_bench.baselines.torchvision_weights import import_torchvision
from cpfs_bench.bench.world.voc import VOCWorldConfig, write_voc_world
from cpfs_bench.results.store import read_records

pytestmark = [pytest.mark.slow, pytest.mark.long]


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    root = tmp_path_factory.mktemp("rows-voc")
    write_voc_world(VOCWorldConfig(out=str(root), seed=1, voc07_trainval=12, voc07_test=8, voc12_trainval=40,
                                   workers=1), progress=False)
    return root


@pytest.fixture(scope="module")
def checkpoints(tiny_imagenet, tmp_path_factory):
    from torchvision.models import alexnet

    root = tmp_path_factory.mktemp("rows-ckpt")
    torch.manual_seed(0)
    torch.save(alexnet(weights=None).state_dict(), root / "alexnet.pth")
    return {
        "random-rescaled": write_random_rescaled_checkpoint(RandomRescaledConfig(
            out=str(root / "rr.pt"), images=str(tiny_imagenet / "train"), batches=2, batch_size=4),
            progress=False)["checkpoint"],
        "caffe-import": import_caffe(*write_caffenet(root / "caffe"), root / "caffe.pt"),
        "torchvision-import": import_torchvision(root / "alexnet.pth", root / "tv.pt"),
    }


@pytest.mark.parametrize("kind", ["random-rescaled", "caffe-import", "torchvision-import"])
def test_every_evaluation_takes_the_checkpoint(kind, checkpoints, voc, tiny_imagenet, tmp_path):
    from cpfs_bench.evaluate.linear_probe import ProbeConfig
    from cpfs_bench.evaluate.linear_probe import run as probe
    from cpfs_bench.evaluate.voc07_cls import VOCClsConfig
    from cpfs_bench.evaluate.voc07_cls import run as cls
    from cpfs_bench.evaluate.voc07_det import VOCDetConfig
    from cpfs_bench.evaluate.voc07_det import run as det
    from cpfs_bench.evaluate.voc07_svm import SVMConfig
    from cpfs_bench.evaluate.voc07_svm import run as svm
    from cpfs_bench.evaluate.voc12_seg import VOCSegConfig
    from cpfs_bench.evaluate.voc12_seg import run as seg

    ckpt, store = str(checkpoints[kind]), str(tmp_path / "records.jsonl")
    probe(ProbeConfig(ckpt=ckpt, data=str(tiny_imagenet), epochs=1, batch_size=4, out=str(tmp_path / "probe"),
                      store=store), progress=False, explicit={"epochs", "batch_size"})
    svm(SVMConfig(ckpt=ckpt, voc=str(voc), layers=("conv5",), costs=(1.0,), workers=1, cache=str(tmp_path / "cache"),
                  store=store), progress=False)
    cls(VOCClsConfig(ckpt=ckpt, voc=str(voc), iters=1, batch_size=2, test_crops=1, out=str(tmp_path / "cls"),
                     store=store, workers=0), progress=False, explicit=("iters", "batch_size", "test_crops"))
    fine_tuning = {"det": lambda: det(VOCDetConfig(ckpt=ckpt, voc=str(voc), iters=1, train_scales=(227,),
                                                   test_scale=227, out=str(tmp_path / "det"), store=store),
                                      progress=False, explicit=("iters", "train_scales", "test_scale")),
                   "seg": lambda: seg(VOCSegConfig(ckpt=ckpt, sbd=str(voc), voc=str(voc), iters=1, iter_size=1,
                                                   out=str(tmp_path / "seg"), store=store, workers=0),
                                      progress=False, explicit=("iters", "iter_size"))}
    if kind == "torchvision-import":  # Fast R-CNN and the FCN are defined on CaffeNet's geometry
        for run in fine_tuning.values():
            with pytest.raises(ValueError, match="CaffeNet"):
                run()
    else:
        for run in fine_tuning.values():
            run()
    tasks = {r["task"] for r in read_records(store)}
    expected = {"imagenet_linear", "voc07_svm", "voc07_cls"}
    assert tasks == (expected if kind == "torchvision-import" else expected | {"voc07_det", "voc12_seg"})
    assert {r["method"] for r in read_records(store)} == {kind}
