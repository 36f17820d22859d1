"""CaffeNet-style AlexNet (96-256-384-384-256, grouped conv2/4/5, 227x227 input) with named activations.

Layer order follows Caffe's bvlc_reference_caffenet: conv1 relu pool1 norm1, conv2 relu pool2 norm2,
conv3 relu, conv4 relu, conv5 relu pool5, fc6 relu drop, fc7 relu drop. The "caffenet_bn" variant
puts a BatchNorm after every conv and fc layer (before the ReLU) and drops LRN, as common in
self-supervised AlexNets trained from scratch.
"""
from __future__ import annotations

import torch
from torch import nn

ARCHITECTURES = ("caffenet_bn", "caffenet")  # what `bench pretrain` trains
TRUNK_ARCHITECTURES = ARCHITECTURES + ("alexnet",)  # what the evaluations load ("alexnet" = torchvision's)
INPUT_SIZE = 227
LAYERS = ("conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5", "fc6", "fc7")
CHANNELS = {"conv1": 96, "pool1": 96, "conv2": 256, "pool2": 256, "conv3": 384, "conv4": 384,
            "conv5": 256, "pool5": 256, "fc6": 4096, "fc7": 4096}


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
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"):
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
