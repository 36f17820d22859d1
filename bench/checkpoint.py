"""The one checkpoint format of cpfs-bench, loadable with torch.load(weights_only=True).

A checkpoint is a dict of tensors, numbers, strings, lists and dicts only:
    format            "cpfs-bench-checkpoint"
    format_version    FORMAT_VERSION
    arch              trunk architecture name ("caffenet_bn", "caffenet")
    trunk             trunk state_dict
    head              head state_dict (may be empty, e.g. for baselines)
    loss              the pretraining loss, or the baseline's name
    step              optimisation steps done
    config            the full config of the command that wrote it (a plain dict)
    optimizer         optimizer state_dict (absent or empty where nothing is resumed)
    rng               RNG states: torch_cpu, torch_cuda (list), numpy, python
    extra             method-specific tensors/values (sigma, flow codebook, input normalisation)
Writes go to a temporary file in the same folder, then are renamed over the target: a crash never
leaves a half-written checkpoint.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

FORMAT = "cpfs-bench-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    pass


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch_cpu": torch.get_rng_state(),
        "torch_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": [list(random.getstate()[1]), random.getstate()[2]],
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch_cpu"])
    if state.get("torch_cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["torch_cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    keys, gauss = state["python"]
    random.setstate((3, tuple(keys), gauss))


def save_checkpoint(path, *, arch: str, trunk: dict, head: dict, loss: str, step: int, config: dict,
                    optimizer: dict | None = None, extra: dict | None = None) -> Path:
    """Atomically write one checkpoint; returns its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": arch,
        "trunk": trunk,
        "head": head,
        "loss": loss,
        "step": int(step),
        "config": config,
        "optimizer": optimizer or {},
        "rng": rng_state(),
        "extra": extra or {},
    }
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load_checkpoint(path, map_location="cpu") -> dict:
    """Load and validate a checkpoint; CheckpointError naming the file if it is not one of ours."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: not a loadable cpfs-bench checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a cpfs-bench checkpoint (no '{FORMAT}' format tag)")
    if ckpt.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {ckpt.get('format_version')} is not supported "
            f"(this cpfs-bench reads version {FORMAT_VERSION})")
    return ckpt
