"""The evaluation worlds carry class in shape alone: appearance statistics (colour and texture
histograms) are near chance, while features that see edge orientation by position are far above."""
import cv2
import numpy as np
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
