"""Wall time of training all five layer probes together vs a single-layer probe, same data.

One SGD step per batch on synthetic 227x227 images through the frozen trunk (eval mode, no grad), as
evaluate/linear_probe.py does, at the protocol's batch size (256). Target (shared/TARGETS.md): five
layers <= 1.3x one layer. Each setting runs --repeats times, interleaved, and the table shows the
fastest run of each (a shared 2-core VM varies by +-20% from run to run; the minimum is the least
disturbed measurement of the same work).

    python benchmarks/linear_probe_layers.py [--batch-size 256] [--batches 2] [--repeats 3] [--classes 1000]
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from cpfs_bench.evaluate.backbone import freeze
from cpfs_bench.evaluate.features import PROBE_LAYERS, pooled_dims, pooled_features
from cpfs_bench.evaluate.linear_probe import LayerProbes
from cpfs_bench.pretrain.alexnet import build_trunk


def probe_epoch(trunk, layers, images, labels, classes):
    probes = LayerProbes(pooled_dims(trunk, layers), classes)
    opt = torch.optim.SGD(probes.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, fused=True)
    t = time.perf_counter()
    for x, y in zip(images, labels):
        feats = pooled_features(trunk, x, layers)  # one forward, no grad
        loss = sum(F.cross_entropy(out, y) for out in probes(feats).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--batches", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--classes", type=int, default=1000)
    args = ap.parse_args()
    torch.manual_seed(0)
    trunk = freeze(build_trunk("caffenet_bn"))  # as evaluate.backbone.load_trunk prepares it
    images = [torch.randn(args.batch_size, 3, 227, 227) for _ in range(args.batches)]
    labels = [torch.randint(0, args.classes, (args.batch_size,)) for _ in range(args.batches)]
    probe_epoch(trunk, ("conv5",), images[:1], labels[:1], args.classes)  # warm-up
    settings = {"conv5 only": ("conv5",), "conv1 only": ("conv1",), "all five layers, one pass": PROBE_LAYERS}
    times = {name: [] for name in settings}
    for _ in range(args.repeats):
        for name, layers in settings.items():
            times[name].append(probe_epoch(trunk, layers, images, labels, args.classes))
    rows = [(name, min(t)) for name, t in times.items()]
    n = args.batch_size * args.batches
    print(f"\n{n} images of 227x227 per run, batch {args.batch_size}, {args.classes} classes, "
          f"{torch.get_num_threads()} threads, CPU; fastest of {args.repeats} runs")
    print(f"| {'probes':<28} | {'s':>7} | {'images/s':>9} | {'all runs, s':<20} |")
    print(f"|{'-' * 30}|{'-' * 9}|{'-' * 11}|{'-' * 22}|")
    for name, s in rows:
        runs = " ".join(f"{t:.2f}" for t in times[name])
        print(f"| {name:<28} | {s:7.2f} | {n / s:9.1f} | {runs:<20} |")
    print(f"\nfive layers / conv5 alone: {rows[2][1] / rows[0][1]:.2f}x (target <= 1.3)")


if __name__ == "__main__":
    main()
