"""Embedded video world: textured objects moving over a moving textured background, with exact flow.

Every layer (the background and each object) is a texture carried by an affine map A_t from texture
pixel coordinates to image coordinates at frame t. A pixel x owned by layer L at frame t therefore
moves to A_{t+1} A_t^{-1} x at frame t + 1, which gives the ground-truth forward flow in closed form.

Layout written by `write_video_world(out)`:

    out/videos/clip_000.mp4 ...            H.264 (yuv420p), 240x320, 32 frames by default
    out/gt_flow/clip_000/000000.png ...    forward flow frame i -> i + 1, KITTI 16-bit PNG
    out/previews/clip_000.jpg ...          first frame beside its colour-coded ground-truth flow
    out/world.json                         seed, sizes and each clip's motions
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from cpfs_bench.bench.flowio import flow_to_image, write_flow_png
from cpfs_bench.bench.parallel import parallel_map, worker_count
from cpfs_bench.bench.runs import progress_bar


@dataclass
class VideoWorldConfig:
    out: str = ""
    seed: int = 0
    clips: int = 24
    frames: int = 32
    height: int = 240
    width: int = 320
    fps: int = 25
    workers: int = 0  # 0 = every core


def make_texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A colourful multi-scale noise texture, uint8 (h, w, 3); rich enough for DIS to track."""
    field = np.zeros((h, w), np.float32)
    for cells, weight in ((4, 1.0), (12, 0.6), (40, 0.45), (120, 0.3)):
        small = rng.standard_normal((max(2, cells * h // max(h, w)), max(2, cells * w // max(h, w))))
        field += weight * cv2.resize(small.astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    if rng.random() < 0.5:  # stripes give some layers an oriented pattern
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        angle, period = rng.uniform(0, np.pi), rng.uniform(6, 20)
        field += 0.8 * np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    field = (field - field.min()) / (np.ptp(field) + 1e-6)
    palette = rng.uniform(0, 255, size=(3, 3)).astype(np.float32)  # three colours, blended by the field
    t = field[..., None]
    img = np.where(t < 0.5, palette[0] * (1 - 2 * t) + palette[1] * 2 * t, palette[1] * (2 - 2 * t) + palette[2] * (2 * t - 1))
    return np.clip(img, 0, 255).astype(np.uint8)


def make_shape_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """A filled ellipse, rectangle or convex polygon centred in a (size, size) uint8 mask (0/255)."""
    mask = np.zeros((size, size), np.uint8)
    c = size / 2
    kind = rng.integers(3)
    if kind == 0:
        axes = (int(rng.uniform(0.25, 0.48) * size), int(rng.uniform(0.25, 0.48) * size))
        cv2.ellipse(mask, (int(c), int(c)), axes, float(rng.uniform(0, 180)), 0, 360, 255, -1)
    elif kind == 1:
        hw, hh = rng.uniform(0.2, 0.45, size=2) * size
        cv2.rectangle(mask, (int(c - hw), int(c - hh)), (int(c + hw), int(c + hh)), 255, -1)
    else:
        angles = np.sort(rng.uniform(0, 2 * np.pi, size=rng.integers(5, 9)))
        radii = rng.uniform(0.3, 0.48, size=angles.size) * size
        pts = np.stack([c + radii * np.cos(angles), c + radii * np.sin(angles)], 1).astype(np.int32)
        cv2.fillConvexPoly(mask, cv2.convexHull(pts), 255)
    return mask


def affine(tx: float, ty: float, angle: float, scale: float, cx: float, cy: float) -> np.ndarray:
    """3x3 map: texture pixel -> image pixel; rotate by angle (rad) and scale about texture point
    (cx, cy), which lands at image point (tx, ty)."""
    c, s = math.cos(angle) * scale, math.sin(angle) * scale
    return np.array([[c, -s, tx - c * cx + s * cy], [s, c, ty - s * cx - c * cy], [0, 0, 1]], np.float64)


@dataclass
class Layer:
    texture: np.ndarray
    mask: np.ndarray | None  # None: the background, covers everything
    center0: tuple[float, float]  # image position of the texture centre at frame 0
    velocity: tuple[float, float]  # px / frame
    angle0: float
    spin: float  # rad / frame
    scale0: float
    growth: float  # scale factor / frame

    def matrix(self, t: int) -> np.ndarray:
        h, w = self.texture.shape[:2]
        return affine(self.center0[0] + self.velocity[0] * t, self.center0[1] + self.velocity[1] * t,
                      self.angle0 + self.spin * t, self.scale0 * self.growth**t, w / 2, h / 2)

    def describe(self) -> dict:
        return {"kind": "background" if self.mask is None else "object", "velocity_px": list(self.velocity),
                "spin_deg": math.degrees(self.spin), "growth": self.growth}


def make_clip_layers(rng: np.random.Generator, cfg: VideoWorldConfig) -> list[Layer]:
    h, w, n = cfg.height, cfg.width, cfg.frames
    bg_size = int(1.6 * max(h, w))
    layers = [Layer(make_texture(rng, bg_size, bg_size), None, (w / 2, h / 2),
                    tuple(rng.uniform(-2.0, 2.0, size=2)), rng.uniform(-0.1, 0.1),
                    rng.uniform(-0.004, 0.004), 1.0, float(rng.uniform(0.997, 1.003)))]
    for _ in range(rng.integers(2, 5)):
        size = int(rng.uniform(0.25, 0.5) * min(h, w))
        velocity = tuple(rng.uniform(-3.5, 3.5, size=2))
        mid = (rng.uniform(0.25, 0.75) * w, rng.uniform(0.25, 0.75) * h)
        # start so that the object passes its mid point half way through the clip: it stays in view
        start = (mid[0] - velocity[0] * n / 2, mid[1] - velocity[1] * n / 2)
        motion = rng.integers(3)  # each object favours translation, rotation or scaling
        spin = rng.uniform(-0.05, 0.05) if motion == 1 else rng.uniform(-0.01, 0.01)
        growth = rng.uniform(0.985, 1.015) if motion == 2 else rng.uniform(0.997, 1.003)
        layers.append(Layer(make_texture(rng, size, size), make_shape_mask(rng, size), start, velocity,
                            rng.uniform(0, 2 * np.pi), spin, 1.0, growth))
    return layers


def render_frame(layers: list[Layer], t: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame t as BGR uint8 (h, w, 3) and the index of the layer that owns each pixel (h, w)."""
    image = np.zeros((h, w, 3), np.float32)
    owner = np.zeros((h, w), np.int32)
    for i, layer in enumerate(layers):
        m = layer.matrix(t)[:2]
        tex = cv2.warpAffine(layer.texture, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        if layer.mask is None:
            image[:] = tex
            continue
        alpha = cv2.warpAffine(layer.mask, m, (w, h), flags=cv2.INTER_LINEAR).astype(np.float32) / 255
        image += alpha[..., None] * (tex.astype(np.float32) - image)
        owner[alpha > 0.5] = i
    return np.clip(image + 0.5, 0, 255).astype(np.uint8), owner


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


def write_clip(args) -> dict:
    """Render, encode and write one clip with its ground-truth flow; returns its description."""
    index, cfg = args
    cv2.setNumThreads(1)
    import av

    rng = np.random.default_rng([cfg.seed, index])
    layers = make_clip_layers(rng, cfg)
    out = Path(cfg.out)
    name = f"clip_{index:03d}"
    flow_dir = out / "gt_flow" / name
    flow_dir.mkdir(parents=True, exist_ok=True)
    video_path = out / "videos" / f"{name}.mp4"
    tmp_path = video_path.with_name(f".{name}.tmp.mp4")
    with av.open(str(tmp_path), "w") as container:
        stream = container.add_stream("libx264", rate=cfg.fps)
        stream.width, stream.height, stream.pix_fmt = cfg.width, cfg.height, "yuv420p"
        # near-lossless: compression artefacts would otherwise dominate the flow error we measure
        stream.options = {"crf": "12", "preset": "veryfast"}
        for t in range(cfg.frames):
            frame, owner = render_frame(layers, t, cfg.height, cfg.width)
            if t + 1 < cfg.frames:
                flow = ground_truth_flow(layers, owner, t)
                write_flow_png(flow_dir / f"{t:06d}.png", flow)
                if t == 0:
                    cv2.imwrite(str(out / "previews" / f"{name}.jpg"), np.concatenate([frame, flow_to_image(flow)], 1))
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp_path, video_path)
    return {"name": name, "layers": [layer.describe() for layer in layers]}


def write_video_world(cfg: VideoWorldConfig, progress: bool = True) -> Path:
    """Write cfg.clips clips into cfg.out (see the module docstring); returns cfg.out."""
    out = Path(cfg.out)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    (out / "previews").mkdir(exist_ok=True)
    jobs = [(i, cfg) for i in range(cfg.clips)]
    clips = list(progress_bar(parallel_map(write_clip, jobs, worker_count(cfg.workers, len(jobs))), total=len(jobs),
                              desc="world videos", unit="clip", disable=not progress))
    (out / "world.json").write_text(json.dumps({"kind": "videos", "config": asdict(cfg), "clips": clips}, indent=1))
    return out
