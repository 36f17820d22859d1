"""Pretraining step time on this machine: trunk alone vs trunk + naive / split hypercolumn head + loss.

One optimiser step (forward, backward, fused Adam) on synthetic tensors, median over --repeats after a
warm-up; all variants measured in the same run so their ratios are comparable.

    python benchmarks/pretrain_step.py [--batch-size 8] [--pixels 512] [--device cpu]
"""
from __future__ import annotations

import argparse
import time

import torch

from cpfs_bench.pretrain.alexnet import build_trunk
from cpfs_bench.pretrain.head import SOURCES, HypercolumnHead
from cpfs_bench.pretrain.losses import cpfs_loss


def step_time(device, batch, pixels, variant, repeats, loss_kind="kta"):
    torch.manual_seed(0)
    trunk = build_trunk("caffenet_bn").to(device).train()
    head = HypercolumnHead(trunk.feature_geometry()).to(device)
    params = list(trunk.parameters()) + (list(head.parameters()) if variant != "trunk" else [])
    opt = torch.optim.Adam(params, 1e-4, fused=True)
    x = torch.randn(batch, 3, 227, 227, device=device)
    positions = torch.randint(0, 227, (batch, pixels, 2), device=device)
    flow = torch.randn(batch, pixels, 2, device=device) * 0.1
    times = []
    for i in range(repeats + 2):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        if variant == "trunk":
            loss = trunk(x).square().mean()
        else:
            emb = head(trunk.activations(x, SOURCES), positions, split=variant == "split")
            loss = cpfs_loss(emb, flow, 0.06, loss_kind)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2] * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--pixels", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    rows = [(v, step_time(device, args.batch_size, args.pixels, v, args.repeats)) for v in ("trunk", "naive", "split")]
    print(f"\nbatch {args.batch_size}, {args.pixels} pixels/image, 227x227, KTA, {device}, {torch.get_num_threads()} threads")
    print(f"| {'variant':<58} | {'ms/step':>8} | {'images/s':>8} |")
    print(f"|{'-' * 60}|{'-' * 10}|{'-' * 10}|")
    names = {"trunk": "trunk only (forward + backward, no head or loss)",
             "naive": "naive head (concatenated hypercolumn, fc7 per pixel) + KTA",
             "split": "split head (fc7 projected once per image) + KTA"}
    for v, ms in rows:
        print(f"| {names[v]:<58} | {ms:8.0f} | {args.batch_size / ms * 1e3:8.1f} |")
    t = dict(rows)
    print(f"\nsplit vs naive: {t['naive'] / t['split']:.2f}x faster; split step = {t['split'] / t['trunk']:.2f}x the trunk alone")


if __name__ == "__main__":
    main()
