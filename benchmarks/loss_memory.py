"""Peak memory and time of one CPFS loss forward + backward: dense N x N kernels vs column blocks.

Each setting runs in a fresh process. On CUDA the peak is torch.cuda.max_memory_allocated above what
the inputs hold; on CPU it is the rise of the process's peak resident memory (ru_maxrss) over its
value once the inputs exist (coarser: includes allocator slack). Target (shared/TARGETS.md): memory
grows as O(B N D), not O(B N^2); N=4096 at batch 256 fits in 10 GB of GPU memory.

    python benchmarks/loss_memory.py [--batch 8] [--pixels 512,1024,2048,4096] [--kind kta] [--device cpu]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def measure(batch: int, pixels: int, block: int | None, kind: str, device: str) -> dict:
    import torch

    from cpfs_bench.pretrain.losses import cpfs_loss

    torch.manual_seed(0)
    warm = torch.randn(2, 64, 16, device=device, requires_grad=True)  # first-call set-up out of the timing
    cpfs_loss(warm, torch.randn(2, 64, 2, device=device), 0.06, kind, block=16).backward()
    emb = torch.randn(batch, pixels, 16, device=device, requires_grad=True)
    flow = torch.randn(batch, pixels, 2, device=device) * 0.3
    sigma = torch.tensor(0.06, device=device, requires_grad=True)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t = time.perf_counter()
    loss = cpfs_loss(emb, flow, sigma, kind, block=block)
    loss.backward()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"seconds": time.perf_counter() - t, "peak_bytes": peak, "loss": loss.item()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--pixels", default="512,1024,2048,4096")
    ap.add_argument("--kind", default="kta", choices=["kta", "ce", "ce-rev"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--block", type=int, default=None, help="columns per block for the blocked rows [automatic]")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: measure one setting, print JSON
    args = ap.parse_args()
    if args.one:
        pixels, block = json.loads(args.one)
        print(json.dumps(measure(args.batch, pixels, block, args.kind, args.device)))
        return
    print(f"CPFS {args.kind} loss, forward + backward, batch {args.batch}, D 16, {args.device}")
    print(f"| {'N':>5} | {'kernels':<22} | {'peak MiB':>9} | {'B N^2 x 4 B, MiB':>16} | {'s':>6} | {'loss':>9} |")
    print(f"|{'-' * 7}|{'-' * 24}|{'-' * 11}|{'-' * 18}|{'-' * 8}|{'-' * 11}|")
    for pixels in (int(p) for p in args.pixels.split(",")):
        for name, block in (("dense (one block)", pixels), (f"column blocks ({args.block or 'auto'})", args.block)):
            cmd = [sys.executable, __file__, "--batch", str(args.batch), "--kind", args.kind, "--device", args.device,
                   "--one", json.dumps([pixels, block])]
            out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
            print(f"| {pixels:>5} | {name:<22} | {out['peak_bytes'] / 2**20:>9.0f} | "
                  f"{args.batch * pixels * pixels * 4 / 2**20:>16.0f} | {out['seconds']:>6.2f} | {out['loss']:>9.6f} |")


if __name__ == "__main__":
    main()
