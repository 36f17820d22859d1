"""CaffeNet-style AlexNet (96-256-384-384-256, grouped conv2/4/5, 227x227 input) with named activations.

Layer order follows Caffe's bvlc_reference_caffenet: conv1 relu pool1 norm1, conv2 relu pool2 norm2,
conv3 relu, conv4 relu, conv5 relu pool5, fc6 relu drop, fc7 relu drop. The "caffenet_bn" variant
puts a BatchNorm after every conv and fc layer (before the ReLU) and drops LRN, as common in
self-supervised AlexNets trained from scratch.

Also the trunk surgery of the era's initialisations, on CaffeNet trunks (Krähenbühl et al., ICLR 2016, reference
code philkr/magic_init, magic_init.py, read for this port): `data_dependent_init` (type "elwise") and
`equalize_gradient_ratios` (-cs, calibrateGradientRatio), and `fold_batchnorm` (deepcontext's debatchnorm.py),
which a BatchNorm trunk needs before a per-layer rescaling means what it does on a plain one.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

ARCHITECTURES = ("caffenet_bn", "caffenet")  # what `bench pretrain` trains
TRUNK_ARCHITECTURES = ARCHITECTURES + ("alexnet",)  # what the evaluations load ("alexnet" = torchvision's)
INPUT_SIZE = 227
LAYERS = ("conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5", "fc6", "fc7")
CHANNELS = {"conv1": 96, "pool1": 96, "conv2": 256, "pool2": 256, "conv3": 384, "conv4": 384,
            "conv5": 256, "pool5": 256, "fc6": 4096, "fc7": 4096}
PARAMETER_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")  # the layers with weights


def check_layers(layers) -> set[str]:
    """The requested activation names as a set; ValueError naming any that no trunk has."""
    wanted = set(layers)
    unknown = wanted - set(LAYERS)
    if unknown:
        raise ValueError(f"unknown layer(s) {sorted(unknown)}; choose from {LAYERS}")
    return wanted


class CaffeNet(nn.Module):
    """AlexNet in Caffe's layout. `forward(x)` returns fc7 (B, 4096); `activations(x, layers)` returns
    a dict of the named layers' outputs (after ReLU for conv/fc layers; pools after max pooling)."""

    def __init__(self, batch_norm: bool = True):
        super().__init__()
        self.batch_norm = batch_norm
        self.arch = "caffenet_bn" if batch_norm else "caffenet"

        def conv(cin, cout, k, stride=1, pad=0, groups=1):
            layers = [nn.Conv2d(cin, cout, k, stride, pad, groups=groups, bias=not batch_norm)]
            if batch_norm:
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.ReLU(inplace=True))
            return nn.Sequential(*layers)

        def fc(cin, cout):
            layers = [nn.Linear(cin, cout, bias=not batch_norm)]
            if batch_norm:
                layers.append(nn.BatchNorm1d(cout))
            layers += [nn.ReLU(inplace=True), nn.Dropout(0.5)]
            return nn.Sequential(*layers)

        self.conv1 = conv(3, 96, 11, stride=4)
        self.pool1 = nn.MaxPool2d(3, 2)
        self.norm1 = nn.Identity() if batch_norm else nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)
        self.conv2 = conv(96, 256, 5, pad=2, groups=2)
        self.pool2 = nn.MaxPool2d(3, 2)
        self.norm2 = nn.Identity() if batch_norm else nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)
        self.conv3 = conv(256, 384, 3, pad=1)
        self.conv4 = conv(384, 384, 3, pad=1, groups=2)
        self.conv5 = conv(384, 256, 3, pad=1, groups=2)
        self.pool5 = nn.MaxPool2d(3, 2)
        self.fc6 = fc(256 * 6 * 6, 4096)
        self.fc7 = fc(4096, 4096)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def activations(self, x: torch.Tensor, layers=LAYERS) -> dict[str, torch.Tensor]:
        """x (B, 3, 227, 227) normalised RGB -> {name: activation}; stops after the last layer asked."""
        wanted = check_layers(layers)
        last = max(LAYERS.index(name) for name in wanted)
        out = {}
        h = x
        for name in LAYERS[: last + 1]:
            if name == "pool1":
                h = self.pool1(h)
                out[name] = h
                h = self.norm1(h)
                continue
            if name == "pool2":
                h = self.pool2(h)
                out[name] = h
                h = self.norm2(h)
                continue
            if name == "fc6":
                h = torch.flatten(h, 1)
            h = getattr(self, name)(h)
            out[name] = h
        return {k: v for k, v in out.items() if k in wanted}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activations(x, ("fc7",))["fc7"]

    def feature_geometry(self) -> dict[str, tuple[float, float]]:
        """For each conv/pool layer, (stride, offset) such that feature index j is centred on input
        pixel stride * j + offset (receptive-field centres, derived from the layers' own settings)."""
        geometry = {}
        stride, offset = 1.0, 0.0
        for name in LAYERS[:8]:
            module = getattr(self, name)
            op = module[0] if isinstance(module, nn.Sequential) else module
            k = op.kernel_size[0] if isinstance(op.kernel_size, tuple) else op.kernel_size
            s = op.stride[0] if isinstance(op.stride, tuple) else op.stride
            p = op.padding[0] if isinstance(op.padding, tuple) else op.padding
            # output j is centred on input s*j - p + (k-1)/2
            offset = offset + stride * (-p + (k - 1) / 2)
            stride = stride * s
            geometry[name] = (stride, offset)
        return geometry


class TorchvisionAlexNet(nn.Module):
    """torchvision's alexnet() (64-192-384-256-256, no groups, 224x224 there; 227 works too and gives
    the same map sizes from conv2 on) as an evaluation trunk. Module names, and so state_dict keys,
    are torchvision.models.AlexNet's (features.0.weight, ..., classifier.4.bias) without the final
    1000-way layer classifier.6, which is not part of a trunk. `activations` as CaffeNet's, through
    torchvision's feature extractor (torchvision.models.feature_extraction) over the same modules."""

    arch = "alexnet"
    # the graph node whose output is the named activation (after the ReLU for conv/fc layers)
    NODES = {"conv1": "features.1", "pool1": "features.2", "conv2": "features.4", "pool2": "features.5",
             "conv3": "features.7", "conv4": "features.9", "conv5": "features.11", "pool5": "features.12",
             "fc6": "classifier.2", "fc7": "classifier.5"}

    def __init__(self):
        super().__init__()
        from torchvision.models import AlexNet

        reference = AlexNet()
        self.features = reference.features
        self.avgpool = reference.avgpool
        self.classifier = nn.Sequential(*list(reference.classifier)[:6])
        self._extractors: dict[tuple[str, ...], nn.Module] = {}

    def _extractor(self, layers: tuple[str, ...]) -> nn.Module:
        """A torchvision feature extractor for these layers, sharing this module's parameters (cached;
        the graph stops after the last layer asked)."""
        if layers not in self._extractors:
            from torchvision.models import AlexNet
            from torchvision.models.feature_extraction import create_feature_extractor

            shell = AlexNet()
            shell.features, shell.avgpool, shell.classifier = self.features, self.avgpool, self.classifier
            # kept out of the module tree: the extractor only points at this module's own layers
            object.__setattr__(self, "_extractors", {**self._extractors, layers: create_feature_extractor(
                shell, return_nodes={self.NODES[name]: name for name in layers})})
        extractor = self._extractors[layers]
        extractor.train(self.training)
        return extractor

    def activations(self, x: torch.Tensor, layers=LAYERS) -> dict[str, torch.Tensor]:
        """x (B, 3, H, W) normalised RGB -> {name: activation} (after ReLU for conv/fc layers)."""
        wanted = check_layers(layers)
        return self._extractor(tuple(name for name in LAYERS if name in wanted))(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activations(x, ("fc7",))["fc7"]


@torch.no_grad()
def fold_batchnorm(trunk: CaffeNet) -> None:
    """In place, on a "caffenet_bn" trunk: each BatchNorm's per-channel scale gamma / sqrt(var + eps) moves into
    the preceding conv / fc weights and its shift beta - mean * scale into its bias; the BatchNorm becomes
    x + bias in eval mode (running mean 0, variance 1 - eps, gamma 1). The eval-mode function is unchanged,
    and each layer's scale is now in its weights alone, so a per-layer rescaling of weight and shift (magic_init's
    calibrateGradientRatio) rescales the layer, as in deepcontext's debatchnorm.py before calibrating. A no-op
    on trunks without BatchNorm."""
    if not isinstance(trunk, CaffeNet) or not trunk.batch_norm:
        return
    for name in PARAMETER_LAYERS:
        layer, bn = getattr(trunk, name)[0], getattr(trunk, name)[1]
        scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
        shift = bn.bias.double() - bn.running_mean.double() * scale
        layer.weight.copy_(layer.weight.double() * scale.view(-1, *([1] * (layer.weight.dim() - 1))))
        bn.running_mean.zero_()
        bn.running_var.fill_(1 - bn.eps)
        bn.weight.fill_(1.0)
        bn.bias.copy_(shift)


def build_trunk(arch: str) -> nn.Module:
    """A freshly initialised trunk: "caffenet_bn" / "caffenet" (CaffeNet) or "alexnet" (torchvision's)."""
    if arch not in TRUNK_ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose from {TRUNK_ARCHITECTURES}")
    if arch == "alexnet":
        return TorchvisionAlexNet()
    return CaffeNet(batch_norm=arch == "caffenet_bn")


def linear_and_shift(trunk: CaffeNet, name: str) -> tuple[nn.Module, torch.Tensor]:
    """The layer's conv / linear module and the tensor acting as its bias (BatchNorm's shift on BN trunks)."""
    block = getattr(trunk, name)
    return block[0], (block[1].bias if trunk.batch_norm else block[0].bias)


def apply_stage(trunk: CaffeNet, name: str, h: torch.Tensor) -> torch.Tensor:
    """One named stage of the trunk (pools include the LRN that follows them; fc6 flattens its input)."""
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
def data_dependent_init(trunk: CaffeNet, batches: list[torch.Tensor], bias: float, generator: torch.Generator,
                        layers=PARAMETER_LAYERS) -> dict:
    """magic_init's "elwise" initialisation, in place, of the named `layers` (the others keep their weights and
    only carry the images on). Layer by layer from conv1, each named layer gets N(0, 1) weights; its output before
    the ReLU on `batches` (normalised images, each (B, 3, 227, 227)) gives every channel's mean mu and standard
    deviation sigma; the weights are divided by sigma and the bias set to -mu / sigma + bias, so each channel has
    mean `bias` and standard deviation 1 on those images. On BN trunks the layer's BatchNorm becomes x + bias in
    eval mode. Eval mode throughout (dropout off). Returns {layer: {"sigma": mean over channels before rescaling,
    "dead_channels": channels with sigma 0}}."""
    unknown = set(layers) - set(PARAMETER_LAYERS)
    if unknown:
        raise ValueError(f"no weights to initialise in {sorted(unknown)}; choose from {PARAMETER_LAYERS}")
    trunk.eval()
    report = {}
    h = list(batches)
    for name in LAYERS[: max(LAYERS.index(n) for n in layers) + 1]:
        if name in layers:
            layer, shift = linear_and_shift(trunk, name)
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator))
            if trunk.batch_norm:
                bn = getattr(trunk, name)[1]
                bn.running_mean.zero_()
                bn.running_var.fill_(1 - bn.eps)
                bn.weight.fill_(1.0)
            shift.zero_()
            mu, sigma = channel_statistics([_preactivation(trunk, name, b) for b in h])
            dead = sigma <= 0
            sigma = np.where(dead, 1.0, sigma)  # a channel constant on every image: leave its scale
            shape = (-1,) + (1,) * (layer.weight.dim() - 1)
            layer.weight.div_(torch.from_numpy(sigma).to(layer.weight.dtype).view(shape))
            shift.copy_(torch.from_numpy(-mu / sigma + bias).to(shift.dtype))
            report[name] = {"sigma": float(sigma.mean()), "dead_channels": int(dead.sum())}
        h = [apply_stage(trunk, name, b) for b in h]
    return report


def equalize_gradient_ratios(trunk: CaffeNet, batch: torch.Tensor, generator: torch.Generator,
                             rounds: int = 10) -> list[dict]:
    """magic_init's calibrateGradientRatio (-cs) on one batch (B, 3, 227, 227), in place: with random N(0, 1)
    gradients on fc7, each weighted layer is scaled by one scalar so that all share one ratio of gradient to weight
    RMS (the geometric mean of the ratios, times fc7's output std^(1/L)), each bias following its input's new
    scale; at most `rounds` rounds, until every ratio is within 1% (in log) of the target. On BN trunks the
    shift scaled is BatchNorm's, which is the layer's bias only after `fold_batchnorm`. Eval mode. Returns per
    round {"ratios": {layer: ratio}, "output_std", "target"}."""
    params = {name: linear_and_shift(trunk, name) for name in PARAMETER_LAYERS}
    trunk.eval()

    def input_scales() -> dict[str, float]:
        scales, h = {}, batch
        with torch.no_grad():
            for name in LAYERS:
                if name in PARAMETER_LAYERS:
                    scales[name] = float((torch.flatten(h, 1) if name == "fc6" else h).abs().mean())
                h = apply_stage(trunk, name, h)
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
                h = apply_stage(trunk, name, h)
        out_std = output_std()
    trunk.zero_grad(set_to_none=True)
    return history
