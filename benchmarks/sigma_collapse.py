"""Long pretraining runs per loss and sigma rule: does sigma drift, do the embeddings collapse?

Runs `bench pretrain` (the real loop) for each LOSS:RULE given (rule = learned | fixed) and prints,
per window of steps, the mean sigma, the embeddings' mean pairwise cosine, the loss and, for the CE
losses, the KL to their target (loss - target entropy), read from each run's log.jsonl.

    python benchmarks/sigma_collapse.py --iters 2000 --batch-size 4 --pixels 256 \
        kta:learned ce:learned ce-rev:learned kta:fixed ce:fixed

Each run uses the embedded video world unless --data is given; one CPU thread per run by default
(--threads), so the measurement can run beside other work. About 0.5 s per step at batch 4 / 256
pixels on one core of the 2-core VM.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from cpfs_bench.pretrain.train import PretrainConfig, run


def summarise(log: Path, window: int) -> list[dict]:
    records = [json.loads(line) for line in log.read_text().splitlines()]
    rows = []
    for start in range(0, len(records), window):
        chunk = records[start:start + window]
        row = {"steps": f"{chunk[0]['step']}-{chunk[-1]['step']}"}
        for key in ("sigma", "mean_cos", "loss", "kl"):
            if key in chunk[0]:
                row[key] = float(np.mean([r[key] for r in chunk]))
        rows.append(row)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="LOSS:RULE, e.g. kta:learned")
    parser.add_argument("--iters", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--pixels", type=int, default=256)
    parser.add_argument("--window", type=int, default=250, help="Steps per row of the table.")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data", default=None)
    parser.add_argument("--out", default=None, help="Folder for the runs [a temporary one].")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(args.out or tempfile.mkdtemp(prefix="sigma-collapse-"))
    for spec in args.runs:
        loss, rule = spec.split(":")
        out = root / f"{loss}-{rule}"
        run(PretrainConfig(loss=loss, learn_sigma=rule == "learned", iters=args.iters, batch_size=args.batch_size,
                           pixels=args.pixels, data=args.data, out=str(out), device="cpu"), progress=False)
        print(f"\n{loss}, sigma {rule} ({args.iters} steps, batch {args.batch_size}, {args.pixels} pixels)")
        print("| steps | sigma | mean cosine | loss | KL |")
        print("|---|---|---|---|---|")
        for row in summarise(out / "log.jsonl", args.window):
            kl = f"{row['kl']:.4f}" if "kl" in row else "-"
            print(f"| {row['steps']} | {row['sigma']:.4f} | {row['mean_cos']:.3f} | {row['loss']:.4f} | {kl} |")


if __name__ == "__main__":
    main()
