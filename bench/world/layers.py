"""Layered rendering with exact flow.

Every layer (the background, an object's rigid body, each of its moving parts) is a texture carried
by an affine map A_t from texture pixel coordinates to image coordinates at frame t:

    A_t = camera_t @ motion_t @ joint_t

(joint: the part's rotation about its pivot on the object; motion: the object's pose in the scene;
camera: the view). A pixel x owned by a layer at frame t moves to A_{t+1} A_t^{-1} x at frame t + 1,
which gives the ground-truth forward flow in closed form.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np


def affine(tx: float, ty: float, angle: float, scale: float, cx: float, cy: float) -> np.ndarray:
    """3x3 map: rotate by angle (rad) and scale about texture point (cx, cy), which lands at (tx, ty)."""
    c, s = math.cos(angle) * scale, math.sin(angle) * scale
    return np.array([[c, -s, tx - c * cx + s * cy], [s, c, ty - s * cx - c * cy], [0, 0, 1]], np.float64)


@dataclass(frozen=True)
class Motion:
    """A pose over time: texture point `pivot` lands at center0 + velocity t, turned by
    angle0 + spin t and scaled by scale0 growth^t; `flip` mirrors the texture about the pivot first."""

    center0: tuple[float, float]
    velocity: tuple[float, float] = (0.0, 0.0)  # px / frame
    angle0: float = 0.0  # rad
    spin: float = 0.0  # rad / frame
    scale0: float = 1.0  # image px per texture px
    growth: float = 1.0  # scale factor / frame
    flip: bool = False

    def matrix(self, t: float, pivot: tuple[float, float]) -> np.ndarray:
        m = affine(self.center0[0] + self.velocity[0] * t, self.center0[1] + self.velocity[1] * t,
                   self.angle0 + self.spin * t, self.scale0 * self.growth**t, pivot[0], pivot[1])
        if self.flip:
            m = m @ np.array([[-1, 0, 2 * pivot[0]], [0, 1, 0], [0, 0, 1]], np.float64)
        return m

    def describe(self) -> dict:
        return {"velocity_px": [round(float(v), 3) for v in self.velocity], "spin_deg": round(math.degrees(self.spin), 3),
                "growth": round(float(self.growth), 5), "flip": self.flip}


@dataclass(frozen=True)
class Joint:
    """A part's rotation about `pivot` (texture px): angle0 + amplitude sin(speed t + phase) + spin t."""

    pivot: tuple[float, float]
    amplitude: float = 0.0  # rad
    speed: float = 0.0  # rad / frame
    phase: float = 0.0
    spin: float = 0.0  # rad / frame (wheels)
    angle0: float = 0.0

    def matrix(self, t: float) -> np.ndarray:
        angle = self.angle0 + self.amplitude * math.sin(self.speed * t + self.phase) + self.spin * t
        return affine(self.pivot[0], self.pivot[1], angle, 1.0, self.pivot[0], self.pivot[1])


@dataclass(frozen=True)
class Layer:
    texture: np.ndarray  # (h, w, 3) uint8
    mask: np.ndarray | None  # (h, w) uint8 0/255; None: the background, covers everything
    motion: Motion
    joint: Joint | None = None
    instance: int = -1  # which object the layer belongs to; -1 for the background
    camera: Motion | None = None  # maps scene to image; its pivot is its own center0

    def matrix(self, t: float) -> np.ndarray:
        h, w = self.texture.shape[:2]
        m = self.motion.matrix(t, (w / 2, h / 2))
        if self.joint is not None:
            m = m @ self.joint.matrix(t)
        if self.camera is not None:
            m = self.camera.matrix(t, self.camera.center0) @ m
        return m


def render_frame(layers: list[Layer], t: float, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame t as BGR uint8 (h, w, 3) and the index of the layer that owns each pixel (h, w) int32;
    layers are drawn in order, back to front, with anti-aliased edges."""
    image = np.zeros((h, w, 3), np.float32)
    owner = np.zeros((h, w), np.int32)
    for i, layer in enumerate(layers):
        m = layer.matrix(t)[:2]
        tex = cv2.warpAffine(layer.texture, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        if layer.mask is None:
            image[:] = tex
            owner[:] = i
            continue
        alpha = cv2.warpAffine(layer.mask, m, (w, h), flags=cv2.INTER_LINEAR).astype(np.float32) / 255
        image += alpha[..., None] * (tex.astype(np.float32) - image)
        owner[alpha > 0.5] = i
    return np.clip(image + 0.5, 0, 255).astype(np.uint8), owner


def full_masks(layers: list[Layer], t: float, h: int, w: int, pad: int) -> dict[int, np.ndarray]:
    """Each instance's whole silhouette (occluders and the image border ignored) on a canvas padded
    by `pad` px on every side: {instance: bool (h + 2 pad, w + 2 pad)}."""
    shift = np.array([[1, 0, pad], [0, 1, pad], [0, 0, 1]], np.float64)
    out: dict[int, np.ndarray] = {}
    for layer in layers:
        if layer.mask is None:
            continue
        alpha = cv2.warpAffine(layer.mask, (shift @ layer.matrix(t))[:2], (w + 2 * pad, h + 2 * pad),
                               flags=cv2.INTER_LINEAR)
        out[layer.instance] = out.get(layer.instance, np.zeros(alpha.shape, bool)) | (alpha > 127)
    return out


def ground_truth_flow(layers: list[Layer], owner: np.ndarray, t: int) -> np.ndarray:
    """Forward flow (h, w, 2) float32 in px from frame t to t + 1 of the pixels' owning layers."""
    h, w = owner.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    flow = np.zeros((h, w, 2), np.float32)
    for i, layer in enumerate(layers):
        sel = owner == i
        if not sel.any():
            continue
        step = layer.matrix(t + 1) @ np.linalg.inv(layer.matrix(t))
        x, y = xs[sel], ys[sel]
        flow[sel, 0] = step[0, 0] * x + step[0, 1] * y + step[0, 2] - x
        flow[sel, 1] = step[1, 0] * x + step[1, 1] * y + step[1, 2] - y
    return flow
