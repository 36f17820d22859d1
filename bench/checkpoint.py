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
Writes go through bench.files.atomic_write (fsync'd temporary file, then rename): a crash never
leaves a half-written checkpoint.
"""
from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import torch

from cpfs_bench.bench.files import atomic_write

FORMAT = "cpfs-bench-checkpoint"
FORMAT_VERSION = 1


# ImageNet RGB statistics: the input normalisation of every checkpoint written here (recorded in it)
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


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
                    optimizer: dict | None = None, extra: dict | None = None, with_rng: bool = True) -> Path:
    """Atomically write one checkpoint (fsync'd temporary file, then rename); returns its path.
    Weights-only files (final.pt, snapshots) pass no optimizer and with_rng=False."""
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
        "rng": rng_state() if with_rng else {},
        "extra": extra or {},
    }
    return atomic_write(path, lambda f: torch.save(payload, f))


def torch_load(path, map_location="cpu"):
    """torch.load(weights_only=True) with errors a user can act on: CheckpointError naming the file
    and what it holds instead (not a PyTorch file, truncated, or pickled code)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder; pass the checkpoint file in it (e.g. {path}/final.pt)")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic[:2] != b"PK" and magic[:1] != b"\x80":
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (torch.save writes a zip archive; this file "
                              f"starts with {magic!r})")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: holds pickled Python objects, not only tensors (for example a whole model saved with "
            f"torch.save(model)); cpfs-bench never unpickles code. Save the weights instead: "
            f"torch.save(model.state_dict(), path) [{str(e).splitlines()[0][:120]}]") from None
    except Exception as e:
        # one line: torch's own text for a cut file is a paragraph about miniz
        reason = str(e).strip().splitlines()[0].split(". ")[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: could not be read as a PyTorch checkpoint (truncated or corrupt? "
                              f"{path.stat().st_size:,} bytes): {reason}") from None


def load_checkpoint(path, map_location="cpu") -> dict:
    """Load and validate a checkpoint; CheckpointError naming the file if it is not one of ours."""
    return validate_checkpoint(path, torch_load(path, map_location))


def validate_checkpoint(path, ckpt) -> dict:
    """ckpt (what torch_load gave for path) if it is one of ours in a version we read, else CheckpointError."""
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a cpfs-bench checkpoint (no '{FORMAT}' format tag; "
                              f"written by `bench pretrain` or `bench baseline`)")
    if ckpt.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {ckpt.get('format_version')} is not supported "
            f"(this cpfs-bench reads version {FORMAT_VERSION})")
    return ckpt
