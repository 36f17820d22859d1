"""`bench baseline random-rescaled`: Krähenbühl et al.'s data-dependent rescaling of a Gaussian random
trunk (ICLR 2016; the paper's "Random rescaled" rows), following their reference code
(philkr/magic_init, magic_init.py, type "elwise", read for this port):

Layer by layer from conv1 to fc7, each conv / fully connected layer gets N(0, 1) weights; its output
(before the ReLU) on real images gives every channel's mean mu and standard deviation sigma over
images and positions; the weights are divided by sigma and the bias set to -mu / sigma + bias
(default 0.1), so each channel has mean `bias` and standard deviation 1 on those images. The next
layer is measured on the rescaled outputs. magic_init uses 10 batches of 16 images resized to the
input size (-nit 10, -bs 16); so do we by default.

`equalize_gradients` (magic_init -cs, calibrateGradientRatio): with random N(0, 1) gradients on fc7,
scale each layer so that all layers have the same ratio of gradient to weight RMS (the geometric mean
of the ratios, times output std^(1/L)), biases following their input's scale; at most 10 rounds, until
every ratio is within 1% (in log) of the target.

Differences from the reference (recorded in the checkpoint): statistics in eval mode (magic_init builds
the net in Caffe's TRAIN phase, so fc7 was measured on dropped-out fc6); the checkpoint's input
normalisation (RGB, ImageNet mean/std) instead of BGR 0-255 minus (104, 117, 123), which only rescales
conv1's input and so leaves the rescaled network's activations unchanged up to the random draw;
images drawn at random (seeded) from the folder, not its first N. On "caffenet_bn" trunks each
BatchNorm is set to the identity (running mean 0, running variance 1 - eps, scale 1) and takes the
layer's bias, so in eval mode the trunk computes exactly the rescaled network.
The procedures themselves live with the model (pretrain/alexnet.py), where the fine-tuning evaluations'
`--init` reuses them on loaded trunks.
"""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import torch

from cpfs_bench.baselines.configs import RandomRescaledConfig
from cpfs_bench.bench.checkpoint import MEAN, STD, save_checkpoint
from cpfs_bench.bench.images import image_files, load_batches
from cpfs_bench.pretrain.alexnet import CaffeNet, build_trunk, data_dependent_init, equalize_gradient_ratios


def write_random_rescaled_checkpoint(cfg: RandomRescaledConfig, progress: bool = True) -> dict:
    """Build the baseline and write its checkpoint to cfg.out. Returns {"checkpoint", "images", "seconds",
    "layers" (per-layer report), "equalization" (rounds, or None)}."""
    out = Path(cfg.out)
    if not cfg.out or out.is_dir():
        raise ValueError(f"{cfg.out or '--out'}: --out names the checkpoint file to write (e.g. random-rescaled.pt)")
    start = time.perf_counter()
    folder = cfg.images
    if folder is None:
        from cpfs_bench.bench.world.defaults import default_imagenet_world

        folder = default_imagenet_world(progress=progress) / "train"
    batches, used = load_batches(image_files(folder), cfg.batches, cfg.batch_size, cfg.size, seed=cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    torch_state = torch.get_rng_state()
    torch.manual_seed(cfg.seed)
    try:
        trunk = build_trunk(cfg.arch)
    finally:
        torch.set_rng_state(torch_state)
    if not isinstance(trunk, CaffeNet):
        raise ValueError(f"random-rescaled is defined here on CaffeNet trunks (caffenet_bn, caffenet), not {cfg.arch}")
    layers = data_dependent_init(trunk, batches, cfg.bias, generator)
    equalization = equalize_gradient_ratios(trunk, batches[0], generator) if cfg.equalize_gradients else None
    differences = ["statistics in eval mode (magic_init: Caffe TRAIN phase, dropout on)",
                   "input RGB normalised by ImageNet mean/std (magic_init: BGR 0-255 minus 104, 117, 123)",
                   "images drawn at random (seeded) from the folder (magic_init: its first N)"]
    if cfg.arch == "caffenet_bn":
        differences.append("BatchNorm set to the identity, its shift holding the layer's bias")
    if cfg.batches * cfg.batch_size != 160:
        differences.append(f"{len(used)} images (magic_init: 10 batches of 16)")
    config = {"baseline": "random-rescaled", **asdict(cfg), "images": str(folder), "images_used": len(used),
              "reference": "philkr/magic_init elwise" + (" -cs" if cfg.equalize_gradients else ""),
              "differences": differences}
    path = save_checkpoint(out, arch=cfg.arch, trunk=trunk.state_dict(), head={}, loss="random-rescaled", step=0,
                           config=config, with_rng=False,
                           extra={"normalization": {"mean": list(MEAN), "std": list(STD)}, "layers": layers,
                                  "equalization": equalization})
    return {"checkpoint": str(path), "images": len(used), "seconds": time.perf_counter() - start, "layers": layers,
            "equalization": equalization}
