"""Training pairs (frame, flow) from a `bench flow` output folder, with crop/flip applied to both.

Randomness is a pure function of (seed, sample position in the run), never of a global RNG, so a run
resumed at step s draws exactly the batches and augmentations of an uninterrupted one.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from cpfs_bench.bench.checkpoint import MEAN, STD
from cpfs_bench.bench.flowio import read_flow_png


class NoFlowDataError(ValueError):
    pass


def list_pairs(root) -> list[tuple[Path, Path]]:
    """All (frame JPEG, flow PNG) pairs under a `bench flow` output folder, in a fixed order."""
    root = Path(root)
    how = (f"expected a folder written by `bench flow` ({root}/<video>/meta.json, frames/000000.jpg, "
           f"flow/000000.png); make one with `bench flow --videos YOUR_VIDEOS --out {root}`")
    if not root.is_dir():
        raise NoFlowDataError(f"{root}: no such folder; {how}")
    pairs = []
    for meta_path in sorted(root.glob("*/meta.json")):
        video = meta_path.parent
        try:
            meta = json.loads(meta_path.read_text())
            n = int(meta["pairs"])
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{meta_path}: unreadable video metadata ({e})") from e
        for i in range(n):
            pairs.append((video / "frames" / f"{i:06d}.jpg", video / "flow" / f"{i:06d}.png"))
    if not pairs:
        raise NoFlowDataError(f"{root}: no frame/flow pairs found; {how}")
    return pairs


def read_frame(path: Path) -> np.ndarray:
    """RGB uint8 (H, W, 3); ValueError naming the file if it cannot be decoded."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: frame listed in the video's meta.json is missing")
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"{path}: image could not be decoded")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def resize_to_cover(image: np.ndarray, flow: np.ndarray | None, valid: np.ndarray | None, crop: int):
    """A frame smaller than crop x crop resized up (shorter side to `crop`), its flow (pixels) scaled with it and
    its valid mask resized; larger frames unchanged. flow / valid may be None."""
    h, w = image.shape[:2]
    if min(h, w) >= crop:
        return image, flow, valid
    s = crop / min(h, w)
    nw, nh = max(crop, round(w * s)), max(crop, round(h * s))
    image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    if flow is not None:
        flow = cv2.resize(flow, (nw, nh), interpolation=cv2.INTER_NEAREST) * np.array([nw / w, nh / h], np.float32)
    if valid is not None:
        valid = cv2.resize(valid.astype(np.uint8), (nw, nh), interpolation=cv2.INTER_NEAREST).astype(bool)
    return image, flow, valid


def random_crop_flip(image: np.ndarray, flow: np.ndarray, valid: np.ndarray, crop: int, rng: np.random.Generator):
    """The same random crop (crop x crop) and horizontal flip for the frame and its flow.

    Frames smaller than the crop are first resized up (`resize_to_cover`); a flip mirrors the flow
    field and negates u."""
    image, flow, valid = resize_to_cover(image, flow, valid, crop)
    h, w = image.shape[:2]
    y = int(rng.integers(0, h - crop + 1))
    x = int(rng.integers(0, w - crop + 1))
    image, flow, valid = image[y:y + crop, x:x + crop], flow[y:y + crop, x:x + crop], valid[y:y + crop, x:x + crop]
    if rng.random() < 0.5:
        image, flow, valid = image[:, ::-1], flow[:, ::-1].copy(), valid[:, ::-1]
        flow[..., 0] = -flow[..., 0]
    return image, flow, valid


class FlowFrames(Dataset):
    """Index with (i, seed): returns image (3, crop, crop) float normalised, flow (2, crop, crop) px,
    valid (crop, crop) bool."""

    def __init__(self, root, crop: int = 227):
        self.root = Path(root)
        self.pairs = list_pairs(root)
        self.crop = crop
        self.mean = np.array(MEAN, np.float32) * 255
        self.std = np.array(STD, np.float32) * 255

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key):
        index, seed = key
        frame_path, flow_path = self.pairs[index]
        image = read_frame(frame_path)
        if not flow_path.exists():
            raise FileNotFoundError(f"{flow_path}: flow listed in the video's meta.json is missing")
        flow, valid = read_flow_png(flow_path)
        if flow.shape[:2] != image.shape[:2]:
            raise ValueError(f"{flow_path}: flow size {flow.shape[:2]} differs from frame {frame_path} {image.shape[:2]}")
        image, flow, valid = random_crop_flip(image, flow, valid, self.crop, np.random.default_rng(seed))
        image = (image.astype(np.float32) - self.mean) / self.std
        return (torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
                torch.from_numpy(np.ascontiguousarray(flow.transpose(2, 0, 1))),
                torch.from_numpy(np.ascontiguousarray(valid)))
