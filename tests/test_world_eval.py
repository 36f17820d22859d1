"""The evaluation worlds carry class in shape alone: appearance statistics (colour and texture
histograms) are near chance, while features that see edge orientation by position are far above."""
import json

import cv2
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from cpfs_bench.bench.world.imagenet import ImageNetWorldConfig, write_imagenet_world
from cpfs_bench.bench.world.objects import still_scene
from cpfs_bench.evaluate.datasets import imagenet_samples


def appearance_features(path):
    """Where-blind appearance of a whole image."""
    return appearance_statistics(cv2.imread(str(path)))


def appearance_statistics(img, mask=None):
    """Hue/saturation histogram, edge density and texture energy at two scales (within mask)."""
    hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
    hist = cv2.calcHist([hsv], [0, 1], mask, [18, 4], [0, 180, 0, 256]).ravel()
    gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    inside = np.ones(gray.shape, bool) if mask is None else cv2.erode(mask, np.ones((5, 5), np.uint8)) > 0
    edges = cv2.Canny(gray, 80, 160)[inside].mean() / 255
    energy = [np.abs(cv2.Laplacian(gray, cv2.CV_32F, ksize=k))[inside].mean() / 255 for k in (1, 5)]
    return np.concatenate([hist / hist.sum(), [edges], energy])


def shape_features(path, cells=5, bins=8):
    """A small HOG: gradient-orientation histograms on a cells x cells grid of the blurred image."""
    gray = cv2.GaussianBlur(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2GRAY).astype(np.float32), (0, 0), 2)
    gx, gy = cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1)
    magnitude = np.hypot(gx, gy)
    orientation = np.minimum((np.arctan2(gy, gx) % np.pi / np.pi * bins).astype(int), bins - 1)
    hist = np.stack([cv2.resize(magnitude * (orientation == k), (cells, cells), interpolation=cv2.INTER_AREA)
                     for k in range(bins)], -1)
    return (hist / (np.linalg.norm(hist, axis=-1, keepdims=True) + 1e-3)).ravel()


def classify(xtr, ytr, xva, yva) -> float:
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    return LogisticRegression(max_iter=3000, C=0.1).fit((xtr - mu) / sd, ytr).score((xva - mu) / sd, yva)


def test_object_appearance_carries_no_class():
    """Colour and texture statistics of an object's own pixels (its mask given) are near chance."""
    classes, per_class = 10, 60
    rng = np.random.default_rng(0)
    x, y = [], []
    for i in range(per_class):
        for cls in range(classes):
            image, instances, _ = still_scene(rng, 160, 160, [(cls, (80.0, 80.0), 60.0)])
            x.append(appearance_statistics(image, (instances == 0).astype(np.uint8)))
            y.append(cls)
    x, y = np.stack(x), np.array(y)
    n = classes * per_class * 2 // 3
    score = classify(x[:n], y[:n], x[n:], y[n:])
    print(f"{classes}-way accuracy of object-pixel appearance on {len(y) - n} objects: {score:.3f}")
    # 200 held-out objects: a chance-level classifier stays below 0.1 + 0.08 with probability > 0.99
    assert score < 1 / classes + 0.08


def test_imagenet_world_class_is_in_shape_not_appearance(tmp_path):
    classes = 10
    write_imagenet_world(ImageNetWorldConfig(out=str(tmp_path), classes=classes, train_per_class=60, val_per_class=30,
                                             workers=2), progress=False)
    train, _ = imagenet_samples(tmp_path, "train")
    val, _ = imagenet_samples(tmp_path, "val")
    scores = {}
    for name, feat in (("appearance", appearance_features), ("shape", shape_features)):
        scores[name] = classify(np.stack([feat(p) for p, _ in train]), [k for _, k in train],
                                np.stack([feat(p) for p, _ in val]), [k for _, k in val])
    print(f"{classes}-way accuracy on {len(val)} val images: appearance {scores['appearance']:.3f}, "
          f"shape {scores['shape']:.3f} (chance {1 / classes:.3f})")
    # 300 val images: a chance-level classifier stays below 0.1 + 0.06 with probability > 0.97
    assert scores["appearance"] < 1 / classes + 0.06
    assert scores["shape"] > 1 / classes + 0.25


@pytest.fixture(scope="module")
def ladder_checkpoints(tmp_path_factory):
    """The ladder's three trunks at reduced scale, one seed, through the same entry points as `bench`:
    CPFS-KTA with the default pretraining, the supervised baseline shortened to 6 epochs, random init.
    Returns ({name: checkpoint}, supervised val top-1, folder)."""
    from cpfs_bench.baselines.random_init import write_random_checkpoint
    from cpfs_bench.baselines.supervised import SupervisedConfig
    from cpfs_bench.baselines.supervised import run as train_supervised
    from cpfs_bench.pretrain.train import PretrainConfig
    from cpfs_bench.pretrain.train import run as pretrain

    tmp = tmp_path_factory.mktemp("ladder")
    supervised = train_supervised(SupervisedConfig(out=str(tmp / "supervised"), epochs=6, lr_step=4),
                                  progress=False, explicit=("epochs", "lr_step"))
    kta = pretrain(PretrainConfig(loss="kta", out=str(tmp / "kta")), progress=False)
    checkpoints = {"random": write_random_checkpoint(tmp / "random.pt", seed=0), "kta": kta["checkpoint"],
                   "supervised": supervised["checkpoint"]}
    return checkpoints, supervised["val_top1"], tmp


@pytest.mark.slow
@pytest.mark.ladder
def test_ladder_supervised_above_cpfs_above_random(ladder_checkpoints):
    """Linear probes at conv3..conv5 on the embedded ImageNet world (benchmarks/ladder.py measures them
    over seeds, README "The ladder"), and an appearance-only classifier on the same world. Measured
    (seed 0): mean top-1 over conv3..conv5 supervised 47.3, CPFS-KTA 36.3, random 23.4; supervised val
    top-1 66.7, appearance-only 5.6 (chance 5.0). The three checkpoints and these probes take about 23
    CPU-minutes per core (49 min wall while another job shared the 2 cores), so the ladder tests are
    marked `ladder`: left out of the default run and run by .ci/run after the suite."""
    from cpfs_bench.bench.world.defaults import default_imagenet_world
    from cpfs_bench.evaluate.linear_probe import ProbeConfig
    from cpfs_bench.evaluate.linear_probe import run as probe

    checkpoints, supervised_val_top1, tmp = ladder_checkpoints
    layers = ("conv3", "conv4", "conv5")
    top1 = {}
    for name, ckpt in checkpoints.items():
        out = probe(ProbeConfig(ckpt=str(ckpt), layers=layers, out=str(tmp / f"probe-{name}"),
                                store=str(tmp / "records.jsonl")), progress=False)
        top1[name] = {layer: out["scores"][layer]["top1"] for layer in layers}
    mean = {name: float(np.mean(list(scores.values()))) for name, scores in top1.items()}

    world = default_imagenet_world(progress=False)
    train, _ = imagenet_samples(world, "train")
    val, classes = imagenet_samples(world, "val")
    appearance = 100 * classify(np.stack([appearance_features(p) for p, _ in train]), [k for _, k in train],
                                np.stack([appearance_features(p) for p, _ in val]), [k for _, k in val])
    print(f"probe top-1 conv3..conv5: {top1}; means {mean}; supervised val top-1 {supervised_val_top1:.1f}; "
          f"appearance-only {appearance:.1f} (chance {100 / len(classes):.1f})")
    # full-scale ladder, 3 seeds (README): 58-77 / 35-40 / 22-25 at conv3..conv5, spreads <= 3.7
    assert mean["supervised"] > mean["kta"] + 5 and mean["kta"] > mean["random"] + 5, top1
    assert supervised_val_top1 > appearance + 30 and mean["supervised"] > appearance + 30


@pytest.mark.slow
@pytest.mark.ladder
def test_ladder_voc07_cls_finetuning(ladder_checkpoints):
    """`bench eval voc07-cls` at its smoke preset on the embedded VOC world, from the supervised and the
    random trunk of the ladder: fine-tuning from the supervised trunk beats fine-tuning from random init.
    Measured with the ladder's seed-0 checkpoints (benchmarks/ladder.py): mAP (reference metric, 2 crops)
    supervised 25.0, random 10.6; the SVMs on the same world give 28.2 / 14.8 at conv5. CPFS-KTA scores
    11.0, level with random, as it does for segmentation and detection (README, "The ladder"): an open
    defect, so it is not fine-tuned here (it would add 2 minutes and assert nothing)."""
    from cpfs_bench.evaluate.voc07_cls import VOCClsConfig
    from cpfs_bench.evaluate.voc07_cls import run as voc07_cls

    checkpoints, _, tmp = ladder_checkpoints
    mean_ap = {}
    for name in ("supervised", "random"):
        out = voc07_cls(VOCClsConfig(ckpt=str(checkpoints[name]), out=str(tmp / f"cls-{name}"),
                                     store=str(tmp / "records.jsonl")), progress=False)
        mean_ap[name] = out["mAP"]["reference"]
    print(f"voc07-cls smoke mAP (reference metric): {mean_ap}")
    # one seed each; the measured gap is 14 points
    assert mean_ap["supervised"] > mean_ap["random"] + 5, mean_ap



@pytest.mark.slow
@pytest.mark.ladder
def test_ladder_voc12_seg_finetuning(ladder_checkpoints):
    """`bench eval voc12-seg` from the supervised and the random trunk of the ladder: the supervised one
    segments objects, the random one only background. The default world's SBD split (84 training
    images, a few objects per class) is too small for any trunk to learn more than the background prior
    in the minutes a test can spend, so this test writes a VOC world with 500 SBD training images and 140
    seg11valid ones and runs 1,000 updates of one image at lr 1e-3 (instead of 100k x 20 at 1e-4; all
    recorded as deviations). Measured: with this fixture's supervised trunk (6 epochs) mIoU 4.36, IoU
    above 1% on cat 7.3, sofa 6.2, train 1.7, horse 1.2; random 3.46, background only. With the ladder's full seed-0
    trunks: supervised 6.8, random 3.4 (the background prior); after 300 updates both were at the prior."""
    from cpfs_bench.bench.world.voc import VOCWorldConfig, write_voc_world
    from cpfs_bench.evaluate.voc12_seg import VOCSegConfig
    from cpfs_bench.evaluate.voc12_seg import run as voc12_seg

    checkpoints, _, tmp = ladder_checkpoints
    world = tmp / "voc-seg-world"
    write_voc_world(VOCWorldConfig(out=str(world), voc07_trainval=2, voc07_test=2, voc12_trainval=1500, workers=2),
                    progress=False)
    miou, objects = {}, {}
    for name in ("supervised", "random"):
        cfg = VOCSegConfig(ckpt=str(checkpoints[name]), sbd=str(world), voc=str(world), iters=1000, iter_size=1,
                           lr=1e-3, out=str(tmp / f"seg-{name}"), store=str(tmp / "records.jsonl"))
        out = voc12_seg(cfg, progress=False, explicit=("iters", "iter_size", "lr"))
        miou[name] = out["mIoU"]
        objects[name] = sorted(c for c, v in out["iou"].items() if c != "background" and v > 1)
        print(f"voc12-seg {name}: mIoU {out['mIoU']:.2f}, per class {out['iou']}, {out['seconds']:.0f} s")
    # one seed each: the random trunk stays at the background prior, the supervised one finds objects
    assert miou["supervised"] > miou["random"] + 0.5, miou
    assert len(objects["supervised"]) >= len(objects["random"]) + 2, objects


@pytest.mark.slow
@pytest.mark.ladder
def test_ladder_voc07_det_finetuning(ladder_checkpoints):
    """`bench eval voc07-det` (Fast R-CNN) from the supervised and the random trunk of the ladder, on the
    first 250 trainval / 100 test images of the embedded world at shorter side 300, 300 iterations:
    the loss falls and the supervised trunk detects better. Measured with this fixture's checkpoints
    (supervised 6 epochs): mAP supervised 10.9, random 0.9, loss (mean of the first and last 20
    iterations) 2.01 -> 1.55 and 2.70 -> 1.87; with the ladder's full seed-0 supervised trunk 25.2.
    About 2 s per iteration with other jobs on the cores."""
    from cpfs_bench.evaluate.voc07_det import VOCDetConfig
    from cpfs_bench.evaluate.voc07_det import run as voc07_det

    checkpoints, _, tmp = ladder_checkpoints
    mean_ap = {}
    for name in ("supervised", "random"):
        cfg = VOCDetConfig(ckpt=str(checkpoints[name]), iters=300, train_images=250, test_images=100,
                           out=str(tmp / f"det-{name}"), store=str(tmp / "records.jsonl"))
        out = voc07_det(cfg, progress=False, explicit=("iters", "train_images", "test_images"))
        mean_ap[name] = out["mAP"]
        losses = [json.loads(line)["loss"] for line in (tmp / f"det-{name}" / "log.jsonl").read_text().splitlines()[1:]]
        print(f"voc07-det {name}: mAP {out['mAP']:.2f}, loss first 20 {np.mean(losses[:20]):.3f}, "
              f"last 20 {np.mean(losses[-20:]):.3f}, {out['seconds_per_iter']:.2f} s/iteration")
        assert np.mean(losses[-20:]) < np.mean(losses[:20]) - 0.2, name
    # one seed each
    assert mean_ap["supervised"] > mean_ap["random"] + 5, mean_ap
