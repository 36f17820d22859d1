"""Which layers of a trunk carry VOC class information, and how many directions do they use?

For each checkpoint: features of VOC2007 trainval and test (images resized to 227 x 227, conv layers average-
pooled to 3 x 3, every layer L2-normalised), one balanced logistic regression per class (C = 10) fit on
trainval, test AP (scikit-learn, difficult images left out), mean over the 20 classes; and the effective rank
(exp of the entropy of the normalised squared singular values) of the centred features of the first 200 test
images. A diagnostic, not a protocol: the VOC07 SVMs (`bench eval voc07-svm`) are the benchmark.

    python benchmarks/voc_layer_diagnostics.py --voc VOCdevkit kta=runs/pretrain-kta/final.pt random=runs/random.pt
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score
from torchvision import transforms

from cpfs_bench.evaluate.backbone import load_trunk
from cpfs_bench.evaluate.datasets import VOCClassification

LAYERS = ("conv3", "conv5", "fc6", "fc7")


def features(trunk, info, root, split, batch=50):
    """{layer: (N, F) L2-normalised}, labels (N, 20) in {1, -1, 0}."""
    prepare = transforms.Compose([transforms.Resize((227, 227)), transforms.ToTensor(),
                                  transforms.Normalize(info["mean"], info["std"])])
    images = VOCClassification(root, "2007", split, prepare)
    out, labels = {name: [] for name in LAYERS}, []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            items = [images[i] for i in range(start, min(start + batch, len(images)))]
            x = torch.stack([image for image, _ in items]).contiguous(memory_format=torch.channels_last)
            for name, value in trunk.activations(x, LAYERS).items():
                if value.dim() == 4:
                    value = F.adaptive_avg_pool2d(value, 3)
                out[name].append(F.normalize(value.flatten(1).float(), dim=1).numpy())
            labels += [label for _, label in items]
    return {name: np.concatenate(v) for name, v in out.items()}, np.stack(labels)


def mean_ap(train, y_train, test, y_test) -> float:
    aps = []
    for c in range(y_train.shape[1]):
        fit, score = y_train[:, c] != 0, y_test[:, c] != 0
        classifier = LogisticRegression(C=10.0, max_iter=2000, class_weight="balanced")
        classifier.fit(train[fit], y_train[fit, c] == 1)
        aps.append(average_precision_score(y_test[score, c] == 1, classifier.decision_function(test[score])))
    return 100 * float(np.mean(aps))


def effective_rank(x: np.ndarray) -> float:
    x = torch.from_numpy(x).double()
    s = torch.linalg.svdvals(x - x.mean(0))
    p = s**2 / (s**2).sum()
    return float(torch.exp(-(p * torch.log(p + 1e-30)).sum()))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voc", required=True, help="VOCdevkit folder holding VOC2007")
    parser.add_argument("checkpoints", nargs="+", help="name=path")
    args = parser.parse_args()
    print(f"{'trunk':<18}" + "".join(f"{name + ' AP':>10}" for name in LAYERS)
          + "".join(f"{name + ' rank':>11}" for name in LAYERS) + "  seconds")
    for item in args.checkpoints:
        name, _, path = item.partition("=")
        start = time.perf_counter()
        trunk, info = load_trunk(path)
        train, y_train = features(trunk, info, args.voc, "trainval")
        test, y_test = features(trunk, info, args.voc, "test")
        aps = [mean_ap(train[n], y_train, test[n], y_test) for n in LAYERS]
        ranks = [effective_rank(test[n][:200]) for n in LAYERS]
        print(f"{name:<18}" + "".join(f"{v:10.1f}" for v in aps) + "".join(f"{v:11.1f}" for v in ranks)
              + f"  {time.perf_counter() - start:7.0f}", flush=True)


if __name__ == "__main__":
    main()
