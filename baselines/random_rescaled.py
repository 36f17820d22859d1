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
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from cpfs_bench.bench.checkpoint import MEAN, STD, save_checkpoint
from cpfs_bench.bench.runs import progress_bar
from cpfs_bench.baselines.configs import RandomRescaledConfig
from cpfs_bench.pretrain.alexnet import LAYERS, CaffeNet, build_trunk

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp")
PARAMETER_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")


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
    and normalised (x - mean) / std; fewer batches when the folder is small. Returns (batches, files used)."""
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


def _linear_and_bias(trunk: CaffeNet, name: str) -> tuple[nn.Module, torch.Tensor]:
    """The layer's conv / linear module and the tensor acting as its bias (BatchNorm's shift on BN trunks)."""
    block = getattr(trunk, name)
    bias = block[1].bias if trunk.batch_norm else block[0].bias
    return block[0], bias


def _identity_batchnorm(block: nn.Sequential) -> None:
    """BatchNorm that computes x + beta in eval mode: mean 0, variance 1 - eps, scale 1, beta 0."""
    bn = block[1]
    bn.running_mean.zero_()
    bn.running_var.fill_(1 - bn.eps)
    bn.weight.data.fill_(1.0)
    bn.bias.data.zero_()


def _stage(trunk: CaffeNet, name: str, h: torch.Tensor) -> torch.Tensor:
    """Apply one named stage of the trunk (pools include the LRN that follows them; fc6 flattens)."""
    if name in ("pool1", "pool2"):
        return getattr(trunk, "norm" + name[-1])(getattr(trunk, name)(h))
    if name == "fc6":
        h = torch.flatten(h, 1)
    return getattr(trunk, name)(h)


def _preactivation(trunk: CaffeNet, name: str, h: torch.Tensor) -> torch.Tensor:
    """The layer's output before its ReLU (conv / linear, then BatchNorm on BN trunks)."""
    if name == "fc6":
        h = torch.flatten(h, 1)
    block = getattr(trunk, name)
    out = block[0](h)
    return block[1](out) if trunk.batch_norm else out


def channel_statistics(outputs: list[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation (population, float64) over images and positions of a list of
    (B, C) or (B, C, H, W) tensors."""
    total, sums, squares = 0, 0.0, 0.0
    for out in outputs:
        flat = out.double().transpose(0, 1).reshape(out.shape[1], -1)
        total += flat.shape[1]
        sums = sums + flat.sum(1)
        squares = squares + (flat * flat).sum(1)
    mean = sums / total
    return mean.numpy(), torch.sqrt(torch.clamp(squares / total - mean * mean, min=0)).numpy()


@torch.no_grad()
def rescale(trunk: CaffeNet, batches: list[torch.Tensor], bias: float, generator: torch.Generator,
            progress: bool = False) -> dict:
    """magic_init's elwise initialisation of `trunk` in place on `batches`. Returns {layer: {"sigma": mean over
    channels of sigma before rescaling, "dead_channels": channels with sigma 0}}."""
    trunk.eval()
    report = {}
    h = list(batches)
    for name in progress_bar(LAYERS, desc="random-rescaled", unit="layer", disable=not progress):
        if name in PARAMETER_LAYERS:
            layer, shift = _linear_and_bias(trunk, name)
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator))
            if trunk.batch_norm:
                _identity_batchnorm(getattr(trunk, name))
            shift.zero_()
            mu, sigma = channel_statistics([_preactivation(trunk, name, b) for b in h])
            dead = sigma <= 0
            sigma = np.where(dead, 1.0, sigma)  # a channel constant on every image: leave its scale
            shape = (-1,) + (1,) * (layer.weight.dim() - 1)
            layer.weight.div_(torch.from_numpy(sigma).float().view(shape))
            shift.copy_(torch.from_numpy(-mu / sigma + bias).float())
            report[name] = {"sigma": float(sigma.mean()), "dead_channels": int(dead.sum())}
        h = [_stage(trunk, name, b) for b in h]
    return report


def equalize_gradient_ratios(trunk: CaffeNet, batch: torch.Tensor, generator: torch.Generator,
                             rounds: int = 10) -> list[dict]:
    """magic_init's calibrateGradientRatio on one batch, in place. Returns per round {layer: gradient / weight
    RMS ratio} and the fc7 output std."""
    params = {name: _linear_and_bias(trunk, name) for name in PARAMETER_LAYERS}
    trunk.eval()

    def input_scales() -> dict[str, float]:
        scales, h = {}, batch
        with torch.no_grad():
            for name in LAYERS:
                if name in PARAMETER_LAYERS:
                    scales[name] = float((torch.flatten(h, 1) if name == "fc6" else h).abs().mean())
                h = _stage(trunk, name, h)
        return scales

    def output_std() -> float:
        with torch.no_grad():
            return float(trunk(batch).double().std(0, unbiased=False).mean())

    bottom_scale, out_std = input_scales(), output_std()
    history = []
    for _ in range(rounds):
        trunk.zero_grad(set_to_none=True)
        out = trunk(batch)
        out.backward(torch.randn(out.shape, generator=generator))
        ratio = {n: math.sqrt(float((lin.weight.grad.double() ** 2).mean()
                                    / (lin.weight.detach().double() ** 2).mean())) for n, (lin, _) in params.items()}
        target = math.exp(np.mean(np.log(list(ratio.values())))) * out_std ** (1 / len(ratio))
        history.append({"ratios": ratio, "output_std": out_std, "target": target})
        if all(abs(math.log(r) / math.log(target) - 1) < 0.01 for r in ratio.values()):
            break
        with torch.no_grad():
            h = batch
            for name in LAYERS:
                if name in PARAMETER_LAYERS:
                    lin, shift = params[name]
                    current = float((torch.flatten(h, 1) if name == "fc6" else h).abs().mean())
                    shift.mul_(current / bottom_scale[name])  # the bias follows its input's new scale
                    bottom_scale[name] = current
                    scale = math.sqrt(ratio[name] / target)
                    lin.weight.mul_(scale)
                    shift.mul_(scale)
                h = _stage(trunk, name, h)
        out_std = output_std()
    trunk.zero_grad(set_to_none=True)
    return history


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
    layers = rescale(trunk, batches, cfg.bias, generator, progress)
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
