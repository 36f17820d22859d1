"""Embedded video world: objects of the 20 shape classes (bench/world/objects.py) moving over a
textured background under a moving camera, with exact flow (bench/world/layers.py). Objects
translate, turn and change scale, their limbs swing and wheels spin, and they occlude each other.

Layout written by `write_video_world(out)`:

    out/videos/clip_000.mp4 ...            H.264 (yuv420p), 240x320, 32 frames by default
    out/gt_flow/clip_000/000000.png ...    forward flow frame i -> i + 1, KITTI 16-bit PNG
    out/previews/clip_000.jpg ...          first frame beside its colour-coded ground-truth flow
    out/world.json                         world version, seed, sizes and each clip's objects and motions
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np

from cpfs_bench.bench.flowio import flow_to_image, write_flow_png
from cpfs_bench.bench.parallel import parallel_map, worker_count
from cpfs_bench.bench.runs import progress_bar
from cpfs_bench.bench.world.configs import VideoWorldConfig
from cpfs_bench.bench.voc_format import VOC_CLASSES
from cpfs_bench.bench.world.layers import Layer, Motion, ground_truth_flow, render_frame
from cpfs_bench.bench.world.objects import WORLD_VERSION, instance_layers, make_texture
from cpfs_bench.bench.world.shapes import CLASS_PARTS


def make_clip_layers(rng: np.random.Generator, cfg: VideoWorldConfig) -> tuple[list[Layer], dict]:
    """One clip's layers (background first) and a description: {"camera": ..., "objects": [...]}."""
    h, w, n = cfg.height, cfg.width, cfg.frames
    camera = Motion(center0=(w / 2, h / 2), velocity=tuple(float(v) for v in rng.uniform(-2.0, 2.0, size=2)),
                    spin=float(rng.uniform(-0.004, 0.004)), growth=float(rng.uniform(0.997, 1.003)))
    bg_size = int(1.6 * max(h, w))
    layers = [Layer(make_texture(rng, bg_size, bg_size), None, Motion(center0=(w / 2, h / 2)), camera=camera)]
    objects = []
    for instance in range(int(rng.integers(2, 5))):
        cls = int(rng.integers(len(CLASS_PARTS)))
        size = float(rng.uniform(0.2, 0.38) * min(h, w))
        velocity = rng.uniform(-3.5, 3.5, size=2)
        mid = np.array([rng.uniform(0.25, 0.75) * w, rng.uniform(0.25, 0.75) * h])
        start = mid - velocity * n / 2  # passes its mid point half way through the clip: it stays in view
        kind = int(rng.integers(3))  # each object favours translation, rotation or scaling
        motion = {"velocity": (float(velocity[0]), float(velocity[1])),
                  "spin": float(rng.uniform(-0.04, 0.04) if kind == 1 else rng.uniform(-0.01, 0.01)),
                  "growth": float(rng.uniform(0.985, 1.015) if kind == 2 else rng.uniform(0.997, 1.003))}
        parts = instance_layers(rng, cls, instance, (float(start[0]), float(start[1])), size, motion, animate=True,
                                camera=camera)
        layers += parts
        objects.append({"class": VOC_CLASSES[cls], "size_px": round(size, 2), "layers": len(parts),
                        **parts[0].motion.describe()})
    return layers, {"camera": camera.describe(), "objects": objects}


def write_clip(args) -> dict:
    """Render, encode and write one clip with its ground-truth flow; returns its description."""
    index, cfg = args
    cv2.setNumThreads(1)
    import av

    rng = np.random.default_rng([cfg.seed, index])
    layers, description = make_clip_layers(rng, cfg)
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
    return {"name": name, **description}


def write_video_world(cfg: VideoWorldConfig, progress: bool = True) -> Path:
    """Write cfg.clips clips into cfg.out (see the module docstring); returns cfg.out."""
    out = Path(cfg.out)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    (out / "previews").mkdir(exist_ok=True)
    jobs = [(i, cfg) for i in range(cfg.clips)]
    clips = list(progress_bar(parallel_map(write_clip, jobs, worker_count(cfg.workers, len(jobs))), total=len(jobs),
                              desc="world videos", unit="clip", disable=not progress))
    (out / "world.json").write_text(json.dumps({"kind": "videos", "world_version": WORLD_VERSION, "config": asdict(cfg), "clips": clips}, indent=1))
    return out
