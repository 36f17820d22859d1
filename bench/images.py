"""Small batches of whole images for data-dependent initialisation (magic_init's -nit x -bs images): a folder's
image files, and batches of them resized to the network's input and normalised."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cpfs_bench.bench.checkpoint import MEAN, STD

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp")


def image_files(folder) -> list[Path]:
    """Every image file under folder, sorted; ValueError naming the folder when there is none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a folder of images")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)}) in it or below it")
    return files


def load_batches(files: list[Path], batches: int, batch_size: int, size: int, mean=MEAN, std=STD,
                 seed: int = 0) -> tuple[list[torch.Tensor], list[Path]]:
    """`batches` batches (batch_size, 3, size, size) of images drawn without replacement (seeded), resized whole
    and normalised (x - mean) / std; fewer batches when there are fewer files. Returns (batches, files used)."""
    if not files:
        raise ValueError("no image files to draw initialisation batches from")
    n = min(len(files), batches * batch_size)
    chosen = [files[i] for i in np.random.default_rng(seed).choice(len(files), n, replace=False)]
    mean, std = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    tensors = []
    for path in chosen:
        try:
            image = Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR)
        except OSError as e:
            raise ValueError(f"{path}: not a readable image ({e})") from None
        x = torch.from_numpy(np.asarray(image, np.float32) / 255).permute(2, 0, 1)
        tensors.append((x - mean) / std)
    return [torch.stack(tensors[i:i + batch_size]) for i in range(0, n, batch_size)], chosen
