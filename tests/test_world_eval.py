"""The evaluation worlds carry class in shape alone: appearance statistics (colour and texture
histograms) are near chance, while features that see edge orientation by position are far above."""
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from cpfs_bench.bench.parallel import call_concurrently
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


# The ladder at the scale CI can afford (.ci/run: <= 35 min in all on 2 cores). Each setting below was
# measured on 2 cores (seed 0); benchmarks/ladder_transfer.py runs the longer settings these replace.
SUPERVISED = dict(epochs=6, lr_step=4)  # smoke preset: 10 epochs, lr drop at 7
KTA_ITERS = 800  # the default pretraining; at 200 steps KTA's probes were only 3.5 points above random's
CLS = dict()  # the embedded preset: 300 iterations at lr 0.01, --init reinit-fc, 1 crop (at 150 KTA led by only 0.5)
DET = dict()  # the embedded preset: 120 iterations at lr 2e-3, 120 / 100 images at 227, --init reinit-fc
TRUNKS = ("supervised", "kta", "random")
# voc12-seg is not a CI rung: the shortest setting that separates CPFS-KTA from random (2,000 updates on a world
# with 500 SBD train images) costs ~20 min of the 35; benchmarks/ladder_transfer.py runs it (README "The ladder").


def side_by_side(*calls, at_once: int = 2):
    """[fn(*args, **kwargs) for (fn, args, kwargs) in calls] in `at_once` processes sharing the cores (at least one
    thread each): on 2 cores two 1-thread runs do ~1.3x the work per second of one 2-thread run
    (measured on a batch-1 FCN update: 470 ms on 2 threads, 728 ms on 1 with a second beside it: segmentation
    1,120 -> 906 s, before fc6/fc7 became matrix products); batched trainings gain nothing (the trunks: 503 ->
    496 s). Three fine-tunings at once on 2 cores finish in ~1.5x the time of one (voc07-cls, 150 iterations:
    149-152 s each, against ~100 s for two side by side), so three trunks run at once rather than 2 + 1."""
    return call_concurrently(list(calls), workers=at_once, threads=max(1, (os.cpu_count() or 2) // at_once))


def finetune_side_by_side(run, config, settings: dict, checkpoints: dict, tmp, kind: str, names=("supervised", "random"),
                          **fields) -> dict:
    """One fine-tuning `run(config(...))` per trunk in names, all at once, each in tmp/KIND-NAME with the shared
    records file; settings are passed as the user's explicit values (the rest is the embedded world's preset).
    Returns {name: run's result}."""
    calls = [(run, (config(ckpt=str(checkpoints[name]), out=str(tmp / f"{kind}-{name}"), store=str(tmp / "records.jsonl"),
                           **fields, **settings),), dict(progress=False, explicit=tuple(settings))) for name in names]
    return dict(zip(names, side_by_side(*calls, at_once=len(names))))


@pytest.fixture(scope="module")
def ladder_checkpoints(tmp_path_factory):
    """The ladder's three trunks at reduced scale, one seed, through the same entry points as `bench`: CPFS-KTA
    pretrained for KTA_ITERS steps, the supervised baseline for SUPERVISED, random init; the two trainings side by
    side. Measured (2 cores): the three trunks and the worlds they need 503 s one after the other, 496 s side by
    side (.ci/run, 2026-12-06); supervised val top-1 64.5, side by side 64.7. Returns ({name: checkpoint},
    supervised val top-1, folder)."""
    from cpfs_bench.baselines.random_init import write_random_checkpoint
    from cpfs_bench.baselines.supervised import SupervisedConfig
    from cpfs_bench.baselines.supervised import run as train_supervised
    from cpfs_bench.pretrain.train import PretrainConfig
    from cpfs_bench.pretrain.train import run as pretrain

    tmp = tmp_path_factory.mktemp("ladder")
    supervised, kta = side_by_side(
        (train_supervised, (SupervisedConfig(out=str(tmp / "supervised"), **SUPERVISED),),
         dict(progress=False, explicit=tuple(SUPERVISED))),
        (pretrain, (PretrainConfig(loss="kta", out=str(tmp / "kta"), iters=KTA_ITERS),), dict(progress=False)))
    checkpoints = {"random": write_random_checkpoint(tmp / "random.pt", seed=0), "kta": kta["checkpoint"],
                   "supervised": supervised["checkpoint"]}
    return checkpoints, supervised["val_top1"], tmp


@pytest.mark.slow
@pytest.mark.ladder
def test_ladder_supervised_above_cpfs_above_random(ladder_checkpoints):
    """Linear probes (smoke preset, 3 epochs) at conv3..conv5 on the embedded ImageNet world (benchmarks/ladder.py
    measures the full-scale ladder over seeds, README "The ladder"), and an appearance-only classifier on the same
    world. Measured (seed 0, .ci/run 2026-12-06 at 1c22006, trunks trained side by side, probes one after the
    other): mean top-1 over conv3..conv5 supervised 46.2, CPFS-KTA 35.8 (39.9 / 34.3 / 33.1), random 23.5, probes
    116 s; in the run before, probes side by side: KTA 33.4 (39.8 / 32.7 / 27.6), 127 s. On trunks trained
    one after the other on 2 threads (supervised 49.5, KTA 36.8, random 23.5), probing one after the other took
    104 s and side by side 120 s, the same numbers either way, so the probes run one after the other. 2026-12-04,
    all one after the other: supervised 49.5, CPFS-KTA 36.0 (37.1 / 34.9 / 35.9), random 23.5 (3 seeds of the full
    ladder: KTA 36.9 +- 2); supervised val top-1 64.5, appearance-only 5.6 (chance 5.0); trunks 503 s, probes 104 s.
    KTA pretrained for only 200 steps reached 27.0 (31.1 / 25.2 / 24.6): its lead over random is at conv1/conv2
    first, and its upper layers learn least (README, issue 24), so the pretraining is not shortened here."""
    from cpfs_bench.bench.world.defaults import default_imagenet_world
    from cpfs_bench.evaluate.linear_probe import ProbeConfig
    from cpfs_bench.evaluate.linear_probe import run as probe

    checkpoints, supervised_val_top1, tmp = ladder_checkpoints
    layers = ("conv3", "conv4", "conv5")
    top1 = {}
    # one after the other on every core: side by side the third probe runs alone on one thread (120 s vs 104)
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
    assert mean["supervised"] > mean["kta"] + 5 and mean["kta"] > mean["random"] + 5, top1
    assert supervised_val_top1 > appearance + 30 and mean["supervised"] > appearance + 30


@pytest.mark.slow
@pytest.mark.ladder
def test_ladder_voc07_cls_finetuning(ladder_checkpoints):
    """`bench eval voc07-cls` on the embedded VOC world with its embedded preset (CLS: 300 iterations at lr 0.01,
    fc6/fc7 drawn again on each trunk's pool5 by --init reinit-fc, 1 crop; recorded as deviations), the three trunks
    at once: supervised > CPFS-KTA > random. Measured at the preset (one thread each, two at once, ~200 s a run):
    the trunks of a .ci/run (2026-12-07 at 5817a91) supervised 14.10, KTA 11.78, random 10.78 (seed 0, the
    ladder's); scratch trunks over 3 trunk seeds KTA 12.56 +- 0.34, random 11.11 +- 0.29, supervised (seed 0) 15.6.
    At half length (150 iterations) that .ci/run gave supervised 14.50, KTA 11.86, random 11.36 (scratch trunks
    15.2, 12.6, 11.4): too close for the margin, so the rung runs the preset itself. At the protocol's lr 0.001
    every trunk but the supervised one stays at the label prior whatever else is changed (60-600 iterations, every
    --init, --train-from fc6: KTA 10.9-11.9, random 9.7-11.3; README "The ladder"), so the lr is the preset's main
    change. .ci/run at 2efcf7d: supervised 14.10, KTA 12.76, random 10.78."""
    from cpfs_bench.evaluate.voc07_cls import VOCClsConfig
    from cpfs_bench.evaluate.voc07_cls import run as voc07_cls

    checkpoints, _, tmp = ladder_checkpoints
    outs = finetune_side_by_side(voc07_cls, VOCClsConfig, CLS, checkpoints, tmp, "cls", names=TRUNKS)
    mean_ap = {name: out["mAP"]["reference"] for name, out in outs.items()}
    print(f"voc07-cls mAP (reference metric): {mean_ap}")
    for out in outs.values():
        assert {"preset": "embedded", "init": "reinit-fc", "lr": 0.01}.items() <= out["deviations"].items()
    # one seed each: in the two .ci/runs of the preset (KTA's trunk differs a little run to run) KTA led random by
    # 1.0 and 2.0, supervised led KTA by 2.3 and 1.3
    assert mean_ap["supervised"] > mean_ap["kta"] + 1, mean_ap
    assert mean_ap["kta"] > mean_ap["random"] + 0.5, mean_ap


@pytest.mark.slow
@pytest.mark.ladder
def test_ladder_voc07_det_finetuning(ladder_checkpoints):
    """`bench eval voc07-det` (Fast R-CNN) with the embedded world's preset (DET: the first 120 trainval / 100 test
    images at shorter side 227, 120 iterations at lr 2e-3, fc6/fc7 drawn again on each trunk's conv layers by
    --init reinit-fc; recorded as deviations), the three trunks at once: the loss falls and supervised > CPFS-KTA >
    random. Measured with the same settings (scratch trunks of 2026-12-06, one thread each, two at once):
    supervised 9.6, CPFS-KTA 6.8 +- 0.3 over fine-tuning seeds 0-2, random 2.7 +- 0.2; over 3 trunk seeds KTA 7.9 +-
    0.8, random 1.9 +- 0.9. In .ci/run (2026-12-07 at 444922f, two at once): KTA 6.77, random 2.50; at 5817a91
    (three at once, 0.8-0.9 s per iteration): supervised 8.17, KTA 5.23, random 2.50. As-is (the protocol's init)
    KTA is level with random (1.9 vs 1.7; 3 trunk seeds 1.4 +- 0.4 vs 1.0 +- 0.7): its pretrained fc6/fc7 collapse
    (README "The ladder"), while supervised as-is gives 8.6-8.7. The longer setting (300 iterations, 250 / 100 images
    at 300: supervised 10.9, random 0.9) is in benchmarks/ladder_transfer.py."""
    from cpfs_bench.evaluate.voc07_det import VOCDetConfig
    from cpfs_bench.evaluate.voc07_det import run as voc07_det

    checkpoints, _, tmp = ladder_checkpoints
    outs = finetune_side_by_side(voc07_det, VOCDetConfig, DET, checkpoints, tmp, "det", names=TRUNKS)
    mean_ap = {}
    for name, out in outs.items():
        mean_ap[name] = out["mAP"]
        assert {"preset": "embedded", "init": "reinit-fc"}.items() <= out["deviations"].items()
        log = Path(out["out"]) / "log.jsonl"
        losses = [json.loads(line)["loss"] for line in log.read_text().splitlines()[1:]]
        print(f"voc07-det {name}: mAP {out['mAP']:.2f}, loss first 20 {np.mean(losses[:20]):.3f}, "
              f"last 20 {np.mean(losses[-20:]):.3f}, {out['seconds_per_iter']:.2f} s/iteration")
        assert np.mean(losses[-20:]) < np.mean(losses[:20]) - 0.2, name
    # one seed each. The fine-tuning seed's spread on the same trunks is 0.3 points or less, but KTA's trunk is not
    # the same from one CI host to the next (its pretraining repeats exactly on one host and thread count): .ci/runs
    # gave KTA 6.77, 5.23 and 4.32 against random 2.50 each time (3 scratch trunk seeds: KTA 7.9 +- 0.8)
    assert mean_ap["supervised"] > mean_ap["kta"] + 1, mean_ap
    assert mean_ap["kta"] > mean_ap["random"] + 1, mean_ap
