"""`bench baseline random`: the project's initialisation of a trunk, seeded, as a checkpoint every
evaluation accepts (the paper's "Random" rows)."""
from __future__ import annotations

from pathlib import Path

import torch

from cpfs_bench.baselines.configs import RandomInitConfig
from cpfs_bench.bench.checkpoint import MEAN, STD, save_checkpoint
from cpfs_bench.pretrain.alexnet import ARCHITECTURES, build_trunk


def write_random_checkpoint(out, arch: str = RandomInitConfig.arch, seed: int = RandomInitConfig.seed) -> Path:
    """A freshly initialised `arch` trunk (torch seeded with `seed`; the same seed gives the same
    weights) written to `out` in the project's checkpoint format; loss "random", step 0."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose from {ARCHITECTURES}")
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"{out}: is a folder; --out names the checkpoint file to write (e.g. {out}/random.pt)")
    generator_state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        trunk = build_trunk(arch)
    finally:
        torch.set_rng_state(generator_state)  # the caller's random stream is left as it was
    return save_checkpoint(out, arch=arch, trunk=trunk.state_dict(), head={}, loss="random", step=0,
                           config={"baseline": "random", "arch": arch, "seed": seed}, with_rng=False,
                           extra={"normalization": {"mean": list(MEAN), "std": list(STD)}})
