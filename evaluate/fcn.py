"""FCN-32s on a CaffeNet trunk, as the FCN authors' voc-fcn-alexnet (shelhamer/fcn.berkeleyvision.org):
conv1 padded by 100, fc6 as a 6x6 convolution and fc7 as a 1x1 one holding the trunk's fc weights,
dropout, a 21-way 1x1 score layer (zero-initialised, Caffe's default filler), a fixed bilinear x32
upsampling (deconvolution, kernel 63, stride 32, no bias) and a crop back to the input at the offset
the layer geometry gives (18 for this net, as their prototxt says)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cpfs_bench.pretrain.alexnet import CaffeNet

UPSAMPLE_KERNEL, UPSAMPLE_STRIDE = 63, 32
CONV1_PAD = 100


def bilinear_kernel(size: int) -> np.ndarray:
    """(size, size) bilinear interpolation weights, FCN's upsample_filt."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = np.arange(size)
    line = 1 - np.abs(og - center) / factor
    return np.outer(line, line)


def crop_offset(layers) -> int:
    """Where the upsampled score map's pixel 0 lies relative to the input's pixel 0, from the layers'
    geometry: `layers` lists (kernel, stride, pad) from the input to the score layer; the
    deconvolution (UPSAMPLE_KERNEL, UPSAMPLE_STRIDE, pad 0) follows. A layer's output j is centred on
    input stride * j - pad + (kernel - 1) / 2; the deconvolution's input j on its output
    stride * j + (kernel - 1) / 2; the crop starts where both centres agree."""
    stride, offset = 1.0, 0.0
    for k, s, p in layers:
        offset += stride * (-p + (k - 1) / 2)
        stride *= s
    if stride != UPSAMPLE_STRIDE:
        raise ValueError(f"the score map's stride is {stride}, the upsampling's {UPSAMPLE_STRIDE}")
    start = (UPSAMPLE_KERNEL - 1) / 2 - offset
    if start != int(start) or start < 0:
        raise ValueError(f"the upsampled map cannot be cropped onto the input (start {start})")
    return int(start)


def _conv_geometry(module: nn.Module) -> tuple[int, int, int]:
    op = module[0] if isinstance(module, nn.Sequential) else module
    first = (lambda v: v[0] if isinstance(v, tuple) else v)
    return first(op.kernel_size), first(op.stride), first(op.padding)


class FullyConnectedConv2d(nn.Conv2d):
    """A fully connected layer slid over a feature map: a stride-1, unpadded, ungrouped Conv2d.
    x (B, in, H, W) -> (B, out, H - k + 1, W - k + 1); the same weights and state-dict keys as nn.Conv2d.

    On the CPU, over at most MATMUL_MAX_POSITIONS output positions, it is computed as one matrix product over
    the unfolded k x k patches (the same function up to float rounding): FCN's fc6 (6x6 over 256 channels ->
    4096) and fc7 (1x1, 4096 -> 4096) see ~50-100 positions on the embedded world's 200-320 px images, where
    oneDNN's convolution runs far below GEMM speed. One batch-1 FCN update on one core (benchmarks/fcn_step.py,
    unfused SGD): 200x200 731 -> 574 ms, 260x320 943 -> 826 ms, but 375x500 (~190 positions) 1,266 -> 1,336 ms,
    so larger maps, and other devices, keep the convolution."""

    MATMUL_MAX_POSITIONS = 128

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel_size[0]
        height, width = x.shape[-2] - k + 1, x.shape[-1] - k + 1
        if height < 1 or width < 1:
            raise RuntimeError(f"input {tuple(x.shape[-2:])} smaller than the {k}x{k} kernel")
        if x.device.type != "cpu" or height * width > self.MATMUL_MAX_POSITIONS:
            return super().forward(x)
        patches = x.flatten(2) if k == 1 else F.unfold(x, k)  # (B, in * k * k, positions)
        out = self.weight.flatten(1) @ patches  # (B, out, positions)
        if self.bias is not None:
            out = out + self.bias[:, None]
        return out.view(x.shape[0], self.out_channels, height, width)


def _fc_as_conv(fc: nn.Sequential, in_channels: int, kernel: int) -> nn.Sequential:
    """A CaffeNet fc block (Linear [+ BatchNorm1d], ReLU, Dropout) as a convolution [+ BatchNorm2d], ReLU,
    Dropout with the same weights, reshaped (out, in * k * k) -> (out, in, k, k)."""
    linear = fc[0]
    conv = FullyConnectedConv2d(in_channels, linear.out_features, kernel, bias=linear.bias is not None)
    with torch.no_grad():
        conv.weight.copy_(linear.weight.view(linear.out_features, in_channels, kernel, kernel))
        if linear.bias is not None:
            conv.bias.copy_(linear.bias)
    layers = [conv]
    if isinstance(fc[1], nn.BatchNorm1d):
        bn1, bn2 = fc[1], nn.BatchNorm2d(linear.out_features, eps=fc[1].eps, momentum=fc[1].momentum)
        bn2.load_state_dict(bn1.state_dict())
        layers.append(bn2)
    return nn.Sequential(*layers, nn.ReLU(inplace=True), nn.Dropout(0.5))


class FCN32s(nn.Module):
    """x (B, 3, H, W) normalised -> scores (B, classes, H, W)."""

    def __init__(self, trunk: CaffeNet, classes: int = 21):
        super().__init__()
        if not isinstance(trunk, CaffeNet):
            raise ValueError(f"FCN-32s is defined on CaffeNet trunks; got {getattr(trunk, 'arch', type(trunk))}")
        self.arch = trunk.arch
        conv1 = trunk.conv1[0]
        self.conv1 = trunk.conv1
        conv1.padding = (CONV1_PAD, CONV1_PAD)
        for name in ("pool1", "norm1", "conv2", "pool2", "norm2", "conv3", "conv4", "conv5", "pool5"):
            setattr(self, name, getattr(trunk, name))
        for pool in (self.pool1, self.pool2, self.pool5):
            pool.ceil_mode = True  # Caffe's pooling rounds up; on 227 inputs both agree, on whole images not
        self.fc6 = _fc_as_conv(trunk.fc6, 256, 6)
        self.fc7 = _fc_as_conv(trunk.fc7, 4096, 1)
        self.score_fr = nn.Conv2d(4096, classes, 1)
        nn.init.zeros_(self.score_fr.weight)
        nn.init.zeros_(self.score_fr.bias)
        self.upscore = nn.ConvTranspose2d(classes, classes, UPSAMPLE_KERNEL, UPSAMPLE_STRIDE, bias=False)
        weight = torch.zeros(classes, classes, UPSAMPLE_KERNEL, UPSAMPLE_KERNEL)
        weight[range(classes), range(classes)] = torch.from_numpy(bilinear_kernel(UPSAMPLE_KERNEL)).float()
        self.upscore.weight.data.copy_(weight)
        self.upscore.weight.requires_grad_(False)  # fixed interpolation (lr_mult 0)
        geometry = [_conv_geometry(getattr(self, n)) for n in
                    ("conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5", "fc6", "fc7", "score_fr")]
        self.offset = crop_offset(geometry)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for name in ("conv1", "pool1", "norm1", "conv2", "pool2", "norm2", "conv3", "conv4", "conv5", "pool5", "fc6",
                     "fc7", "score_fr"):
            h = getattr(self, name)(h)
        up = self.upscore(h)
        o, (height, width) = self.offset, x.shape[-2:]
        if up.shape[-2] < o + height or up.shape[-1] < o + width:
            raise RuntimeError(f"upsampled map {tuple(up.shape[-2:])} too small for input {height}x{width}")
        return up[..., o:o + height, o:o + width]


def segmentation_loss(scores: torch.Tensor, labels: torch.Tensor, normalization: str = "none") -> torch.Tensor:
    """Softmax cross-entropy over the labelled pixels, 255 ignored. scores (B, C, H, W), labels (B, H, W) int64.

    normalization "none": summed (Caffe's SoftmaxWithLoss normalize: false, as voc-fcn-alexnet's net.py);
    "pixels": divided by the number of labelled pixels (Caffe's normalize: true, the "normalized softmax"
    its solver.prototxt sets lr 1e-4 for). A batch with no labelled pixel gives 0 either way."""
    total = F.cross_entropy(scores, labels, ignore_index=255, reduction="sum")
    if normalization == "none":
        return total
    if normalization == "pixels":
        return total / (labels != 255).sum().clamp(min=1)
    raise ValueError(f"unknown loss normalization {normalization!r}; choose none or pixels")
