"""One FCN-32s training update (batch 1, forward, backward, SGD with momentum and weight decay) on this
machine: fc6/fc7 as oneDNN convolutions or as matrix products over unfolded patches, with the unfused SGD
step, and as evaluate/fcn.py ships them (FullyConnectedConv2d: the matrix product on the CPU up to
MATMUL_MAX_POSITIONS positions) with the fused step voc12-seg uses. Synthetic image and labels; median over
--repeats after a warm-up; all variants in the same run so their ratios are comparable.

    python benchmarks/fcn_step.py [--threads 1] [--sizes 200x200 260x320 375x500] [--repeats 5]
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from cpfs_bench.evaluate.fcn import FCN32s, FullyConnectedConv2d, segmentation_loss
from cpfs_bench.pretrain.alexnet import build_trunk


def as_plain_convolutions(model: FCN32s) -> None:
    """fc6/fc7 back to nn.Conv2d with the same weights (the implementation before FullyConnectedConv2d)."""
    for block in (model.fc6, model.fc7):
        fc = block[0]
        conv = nn.Conv2d(fc.in_channels, fc.out_channels, fc.kernel_size, bias=fc.bias is not None)
        conv.load_state_dict(fc.state_dict())
        block[0] = conv


def update_time(height: int, width: int, fc: str, fused: bool, repeats: int) -> float:
    """fc: "conv" (nn.Conv2d), "matmul" (always the matrix product) or "shipped" (FullyConnectedConv2d as is)."""
    torch.manual_seed(0)
    model = FCN32s(build_trunk("caffenet_bn"))
    if fc == "conv":
        as_plain_convolutions(model)
    if fc == "matmul":
        for block in (model.fc6, model.fc7):
            block[0].MATMUL_MAX_POSITIONS = 10 ** 9
    assert isinstance(model.fc6[0], FullyConnectedConv2d) == (fc != "conv")
    model.train()
    for m in model.modules():  # voc12-seg's bn_mode "eval"
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=5e-4, fused=fused)
    x, labels = torch.randn(1, 3, height, width), torch.randint(0, 21, (1, height, width))
    times = []
    for i in range(repeats + 2):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        segmentation_loss(model(x), labels, "pixels").backward()
        optimizer.step()
        if i >= 2:
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def fc6_positions(height: int, width: int) -> int:
    with torch.no_grad():
        model = FCN32s(build_trunk("caffenet_bn")).eval()
        h = torch.zeros(1, 3, height, width)
        for name in ("conv1", "pool1", "norm1", "conv2", "pool2", "norm2", "conv3", "conv4", "conv5", "pool5", "fc6"):
            h = getattr(model, name)(h)
    return h.shape[-2] * h.shape[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sizes", nargs="+", default=["200x200", "260x320", "375x500"], help="HxW")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    variants = [("conv", False), ("matmul", False), ("shipped", True)]
    print(f"FCN-32s (caffenet_bn) update, batch 1, {args.threads} thread(s), torch {torch.__version__}; ms, median "
          f"of {args.repeats}")
    print("| image HxW | fc6 positions | fc6/fc7 conv, SGD | matmul, SGD | shipped, fused SGD | speed-up |")
    print("|---|---:|---:|---:|---:|---:|")
    for size in args.sizes:
        height, width = map(int, size.split("x"))
        ms = [1000 * update_time(height, width, fc, fused, args.repeats) for fc, fused in variants]
        print(f"| {height}x{width} | {fc6_positions(height, width)} | {ms[0]:.0f} | {ms[1]:.0f} | {ms[2]:.0f} | {ms[0] / ms[2]:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
