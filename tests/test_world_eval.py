"""The evaluation worlds are learnable: features that see colour and texture beat random ones."""
import cv2
import numpy as np
from sklearn.linear_model import LogisticRegression

from cpfs_bench.bench.world.imagenet import ImageNetWorldConfig, write_imagenet_world
from cpfs_bench.evaluate.datasets import imagenet_samples


def colour_texture_features(path):
    img = cv2.imread(str(path))
    hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
    hist = cv2.calcHist([hsv], [0, 1], None, [18, 4], [0, 180, 0, 256]).ravel()
    edges = cv2.Canny(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), 80, 160).mean()
    return np.append(hist / hist.sum(), edges / 255)


def random_features(path, projection):
    img = cv2.resize(cv2.imread(str(path)), (16, 16)).astype(np.float32).ravel() / 255
    return np.maximum(projection @ (img - 0.5), 0)  # a random one-layer ReLU network


def test_imagenet_world_rewards_better_features(tmp_path):
    write_imagenet_world(ImageNetWorldConfig(out=str(tmp_path), classes=8, train_per_class=30, val_per_class=12,
                                             size=96, workers=2), progress=False)
    train, _ = imagenet_samples(tmp_path, "train")
    val, _ = imagenet_samples(tmp_path, "val")
    projection = np.random.default_rng(0).standard_normal((73, 16 * 16 * 3)).astype(np.float32) / 16
    scores = {}
    for name, feat in (("colour", colour_texture_features), ("random", lambda p: random_features(p, projection))):
        xtr = np.stack([feat(p) for p, _ in train])
        xva = np.stack([feat(p) for p, _ in val])
        mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
        clf = LogisticRegression(max_iter=2000).fit((xtr - mu) / sd, [k for _, k in train])
        scores[name] = clf.score((xva - mu) / sd, [k for _, k in val])
    print(f"8-way accuracy: colour/texture features {scores['colour']:.2f}, random features {scores['random']:.2f}")
    assert scores["colour"] > 0.6  # chance is 0.125
    assert scores["colour"] > scores["random"] + 0.15
