"""Procedural object classes: each class has its own shape, colour and texture statistics, so a better
feature extractor can tell them apart; instances vary in size, pose, colour and pattern phase."""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

SHAPES = ("ellipse", "rectangle", "triangle", "star", "hexagon", "cross", "crescent")


@dataclass(frozen=True)
class ClassAppearance:
    shape: str
    aspect: float  # width / height of the shape's box
    hue: float  # OpenCV hue 0..180
    saturation: float
    value: float
    pattern: str  # "stripes", "dots", "checks", "plain-noise"
    period: float  # pattern period in object-size units
    pattern_angle: float  # radians
    contrast: float


def class_appearance(seed: int, index: int) -> ClassAppearance:
    """The appearance statistics of class `index` of a world drawn with `seed` (deterministic)."""
    rng = np.random.default_rng([seed, 7919, index])
    return ClassAppearance(
        shape=SHAPES[index % len(SHAPES)],
        aspect=float(np.exp(rng.uniform(-0.6, 0.6))),
        hue=float((index * 53 + rng.uniform(0, 20)) % 180),
        saturation=float(rng.uniform(120, 250)),
        value=float(rng.uniform(110, 240)),
        pattern=("stripes", "dots", "checks", "plain-noise")[(index // len(SHAPES) + index) % 4],
        period=float(rng.uniform(0.08, 0.3)),
        pattern_angle=float(rng.uniform(0, math.pi)),
        contrast=float(rng.uniform(0.25, 0.6)),
    )


def shape_polygon(shape: str, rng: np.random.Generator) -> np.ndarray | None:
    """Outline of a shape in the unit box [-1, 1]^2 as (K, 2) points; None for an ellipse."""
    if shape == "ellipse":
        return None
    if shape == "rectangle":
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float)
    if shape == "triangle":
        return np.array([[0, -1], [1, 1], [-1, 1]], float)
    if shape == "hexagon":
        a = np.arange(6) * math.pi / 3
        return np.stack([np.cos(a), np.sin(a)], 1)
    if shape == "star":
        a = np.arange(10) * math.pi / 5 - math.pi / 2
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return np.stack([r * np.cos(a), r * np.sin(a)], 1)
    if shape == "cross":
        t = 0.35
        return np.array([[-t, -1], [t, -1], [t, -t], [1, -t], [1, t], [t, t], [t, 1], [-t, 1], [-t, t], [-1, t],
                         [-1, -t], [-t, -t]], float)
    if shape == "crescent":
        a = np.linspace(-math.pi / 2, math.pi / 2, 16)
        outer = np.stack([np.cos(a), np.sin(a)], 1)
        inner = np.stack([0.35 * np.cos(a[::-1]), np.sin(a[::-1])], 1)
        return np.concatenate([outer, inner])
    raise ValueError(shape)


def object_mask(appearance: ClassAppearance, shape_hw: tuple[int, int], center, size: float, angle: float,
                rng: np.random.Generator) -> np.ndarray:
    """Boolean mask (H, W) of one instance: box of height `size` px, rotated by `angle` rad."""
    h, w = shape_hw
    mask = np.zeros((h, w), np.uint8)
    half_w = size * appearance.aspect / 2
    half_h = size / 2
    poly = shape_polygon(appearance.shape, rng)
    if poly is None:
        cv2.ellipse(mask, (int(round(center[0])), int(round(center[1]))), (int(half_w), int(half_h)),
                    math.degrees(angle), 0, 360, 1, -1)
        return mask.astype(bool)
    pts = poly * [half_w, half_h]
    c, s = math.cos(angle), math.sin(angle)
    pts = pts @ np.array([[c, s], [-s, c]]) + np.asarray(center, float)
    cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    return mask.astype(bool)


def object_texture(appearance: ClassAppearance, shape_hw: tuple[int, int], center, size: float,
                   rng: np.random.Generator) -> np.ndarray:
    """BGR uint8 (H, W, 3) texture filling the whole canvas with the class's colour and pattern."""
    h, w = shape_hw
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    u = (xs - center[0]) / size
    v = (ys - center[1]) / size
    a = appearance.pattern_angle + rng.normal(0, 0.15)
    along = u * math.cos(a) + v * math.sin(a)
    across = -u * math.sin(a) + v * math.cos(a)
    f = 2 * math.pi / appearance.period
    phase = rng.uniform(0, 2 * math.pi)
    if appearance.pattern == "stripes":
        p = np.sin(along * f + phase)
    elif appearance.pattern == "dots":
        p = np.sin(along * f + phase) * np.sin(across * f + phase) > 0.5
        p = p.astype(np.float32) * 2 - 1
    elif appearance.pattern == "checks":
        p = np.sign(np.sin(along * f + phase) * np.sin(across * f))
    else:
        small = rng.standard_normal((max(2, h // 12), max(2, w // 12))).astype(np.float32)
        p = np.clip(cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC), -1.5, 1.5) / 1.5
    hue = (appearance.hue + rng.normal(0, 4)) % 180
    sat = np.clip(appearance.saturation + rng.normal(0, 15), 0, 255)
    val = np.clip(appearance.value * (1 + appearance.contrast * p) + rng.normal(0, 10), 0, 255)
    hsv = np.empty((h, w, 3), np.uint8)
    hsv[..., 0] = int(hue)
    hsv[..., 1] = int(sat)
    hsv[..., 2] = val.astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def background(shape_hw: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Cluttered smooth colour-noise background, BGR uint8 (H, W, 3)."""
    h, w = shape_hw
    img = np.zeros((h, w, 3), np.float32)
    for cells, weight in ((3, 60.0), (10, 30.0), (40, 12.0)):
        small = rng.standard_normal((cells, max(2, cells * w // max(h, 1)), 3)).astype(np.float32)
        img += weight * cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    img += rng.uniform(70, 170, size=3).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)
