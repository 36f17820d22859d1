"""The one object model of every embedded world (videos, VOC, ImageNet).

A class is a silhouette made of parts (bench/world/shapes.py); classes differ only in shape: their
parts, proportions and which parts move on their own (limbs swing, wheels spin). Colour and texture
are drawn per instance from one distribution shared by every class and by the background, with
texture scales fixed in image pixels, so appearance statistics carry no class information and an
object's extent is hard to see in a still frame but obvious when it moves.

An instance becomes layers (bench/world/layers.py): its rigid parts on one layer, each moving part
on its own, all sharing the instance's texture.
"""
from __future__ import annotations

import functools
import math

import cv2
import numpy as np

from cpfs_bench.bench.world.layers import Joint, Layer, Motion, render_frame
from cpfs_bench.bench.world.shapes import CANVAS_EXTENT, CLASS_PARTS, Part

# changes whenever what a seed draws changes; part of the default worlds' cache keys and world.json
WORLD_VERSION = 4  # 4: the default VOC world has 1,500 VOC2012 trainval images (bench/world/configs.py)
# object texture canvas side, px; object units [-CANVAS_EXTENT, CANVAS_EXTENT] span it
CANVAS = 160
# how far a texture's three colours stray from its base colour (0..255 per channel)
TEXTURE_SPREAD = 45.0


def make_texture(rng: np.random.Generator, h: int, w: int, scale: float = 1.0) -> np.ndarray:
    """A colourful multi-scale noise texture, uint8 (h, w, 3), of texture pixels that will be shown at
    `scale` image px each. Feature sizes are drawn in image pixels, so a texture looks statistically
    the same whatever it covers (background, a large object or a small one)."""
    field = np.zeros((h, w), np.float32)
    coarsest = rng.uniform(60, 200)  # image px
    for octave, weight in enumerate((1.0, 0.6, 0.45, 0.3)):
        period = coarsest / 3**octave / scale  # texture px
        cells_h, cells_w = max(2, round(h / period) + 1), max(2, round(w / period) + 1)
        small = rng.standard_normal((cells_h, cells_w)).astype(np.float32)
        field += weight * cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    if rng.random() < 0.5:  # stripes give some textures an oriented pattern
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        angle, period = rng.uniform(0, np.pi), rng.uniform(6, 20) / scale
        field += 0.5 * np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    field = (field - field.min()) / (np.ptp(field) + 1e-6)
    # three colours near one base colour, blended by the field: a texture's own contrast is moderate,
    # so the strongest edges are where one texture meets another (an object's outline)
    base = rng.uniform(TEXTURE_SPREAD, 255 - TEXTURE_SPREAD, size=3)
    palette = (base + rng.uniform(-TEXTURE_SPREAD, TEXTURE_SPREAD, size=(3, 3))).astype(np.float32)
    t = field[..., None]
    img = np.where(t < 0.5, palette[0] * (1 - 2 * t) + palette[1] * 2 * t,
                   palette[1] * (2 - 2 * t) + palette[2] * (2 * t - 1))
    return np.clip(img, 0, 255).astype(np.uint8)


def to_canvas(u: float, v: float) -> tuple[float, float]:
    """Object units -> texture canvas px."""
    k = CANVAS / (2 * CANVAS_EXTENT)
    return (u + CANVAS_EXTENT) * k, (v + CANVAS_EXTENT) * k


def draw_part(mask: np.ndarray, part: Part) -> None:
    """Fill one part (object units) into a (CANVAS, CANVAS) uint8 mask with 255."""
    k = CANVAS / (2 * CANVAS_EXTENT)
    cx, cy = to_canvas(part.cx, part.cy)
    rx, ry = part.rx * k, part.ry * k
    if part.kind == "ellipse":
        cv2.ellipse(mask, (round(cx * 16), round(cy * 16)), (round(rx * 16), round(ry * 16)), part.angle, 0, 360,
                    255, -1, cv2.LINE_8, 4)
        return
    if part.kind == "box":
        pts = np.array([[-rx, -ry], [rx, -ry], [rx, ry], [-rx, ry]])
    elif part.kind == "tri":  # apex up, base down, before rotation
        pts = np.array([[0, -ry], [rx, ry], [-rx, ry]])
    else:
        raise ValueError(f"unknown part kind {part.kind!r}")
    a = math.radians(part.angle)
    rot = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
    pts = pts @ rot + [cx, cy]
    cv2.fillPoly(mask, [np.round(pts * 16).astype(np.int32)], 255, cv2.LINE_8, 4)


@functools.cache
def class_size(cls: int) -> float:
    """The size of class `cls`'s silhouette at rest, canvas px: the geometric mean of its square root
    of area and its box's half diagonal, so that thin classes (chair, table) and compact ones (bus)
    drawn at one size differ moderately in both area and extent."""
    mask = np.zeros((CANVAS, CANVAS), np.uint8)
    for part in CLASS_PARTS[cls]:
        draw_part(mask, part)
    ys, xs = np.nonzero(mask > 127)
    half_diagonal = math.hypot(np.ptp(xs) + 1, np.ptp(ys) + 1) / 2
    return math.sqrt(math.sqrt(float(xs.size)) * half_diagonal)


def instance_layers(rng: np.random.Generator, cls: int, instance: int, center: tuple[float, float],
                    size_px: float, motion: dict | None = None, animate: bool = False,
                    camera: Motion | None = None) -> list[Layer]:
    """The layers of one instance of class `cls` (index into CLASS_PARTS) of size `size_px` (image
    px; see class_size: about the square root of its area), centred at `center` (image px) at t = 0, mirrored at random, with its
    own texture; rigid parts on one layer, each moving part on its own (behind or in front).

    motion: extra Motion fields (velocity, spin, growth) for videos. animate: moving parts swing and
    wheels spin over time (videos); otherwise each is drawn at a random point of its motion."""
    scale = size_px / class_size(cls)
    texture = make_texture(rng, CANVAS, CANVAS, scale)
    pose = Motion(center0=(float(center[0]), float(center[1])), angle0=float(rng.normal(0, 0.2)), scale0=scale,
                  flip=bool(rng.random() < 0.5), **(motion or {}))
    swing_speed = float(rng.uniform(0.15, 0.4)) if animate else 0.0  # rad / frame
    rigid = np.zeros((CANVAS, CANVAS), np.uint8)
    behind, front = [], []
    for part in CLASS_PARTS[cls]:
        if part.pivot is None and part.spin == 0:
            draw_part(rigid, part)
            continue
        mask = np.zeros((CANVAS, CANVAS), np.uint8)
        draw_part(mask, part)
        if part.pivot is not None:
            joint = Joint(pivot=to_canvas(*part.pivot), amplitude=math.radians(part.swing), speed=swing_speed,
                          phase=float(rng.uniform(0, 2 * math.pi)))
        else:  # a wheel
            joint = Joint(pivot=to_canvas(part.cx, part.cy), angle0=float(rng.uniform(0, 2 * math.pi)),
                          spin=part.spin * float(rng.choice([-1, 1])) if animate else 0.0)
        (front if part.front else behind).append(Layer(texture, mask, pose, joint, instance, camera))
    return behind + [Layer(texture, rigid, pose, None, instance, camera)] + front


def still_scene(rng: np.random.Generator, h: int, w: int,
                placements: list[tuple[int, tuple[float, float], float]]) -> tuple[np.ndarray, np.ndarray, list[Layer]]:
    """A still image of objects over a background: placements are (class, centre px, size px), back
    to front. Returns BGR uint8 (h, w, 3), the instance owning each pixel (h, w) int32 (-1 for the
    background; instance i is placements[i]) and the layers (for full_masks)."""
    background = Layer(make_texture(rng, h + 16, w + 16), None, Motion(center0=(w / 2, h / 2)))
    layers = [background]
    for i, (cls, center, size) in enumerate(placements):
        layers += instance_layers(rng, cls, i, center, size)
    image, owner = render_frame(layers, 0, h, w)
    instances = np.array([layer.instance for layer in layers], np.int32)[owner]
    return image, instances, layers
