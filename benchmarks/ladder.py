"""The embedded world's ladder: supervised > CPFS > random, measured end to end with the `bench` CLI.

For every method and seed: make the checkpoint (`bench baseline random|random-rescaled|supervised`, `bench pretrain
--loss ...`), run the ImageNet-world linear probes (smoke preset, as on any embedded world) and the
VOC07-world SVMs (Goyal et al.'s full cost sweep), then print top-1 / mAP per layer as mean +- sample
standard deviation over seeds, with each run's wall time. Every step is skipped when its output already exists, so an interrupted ladder continues
where it stopped; rerunning with other pretraining settings needs a fresh --out.

    python benchmarks/ladder.py --out runs/ladder --seeds 0 1 2
    python benchmarks/ladder.py --out runs/ladder --seeds 0 --methods random kta   # a partial ladder
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from cpfs_bench.results.store import read_records

LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5")
LOSSES = ("kta", "ce", "ce-rev", "direct-cls")
METHODS = ("supervised", "random", "random-rescaled", *LOSSES)


def run_step(out: Path, name: str, argv: list[str], timings: dict) -> None:
    """Run one `bench` command, its output in out/logs/<name>.log; record its wall time."""
    log = out / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"[{time.strftime('%H:%M:%S')}] {name}: bench {' '.join(argv)}", flush=True)
    start = time.perf_counter()
    with open(log, "w") as f:
        done = subprocess.run(["bench", *argv], stdout=f, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        sys.exit(f"{name} failed (exit {done.returncode}); see {log}")
    timings[name] = round(time.perf_counter() - start, 1)
    (out / "timings.json").write_text(json.dumps(timings, indent=1))


def checkpoint_of(out: Path, method: str, seed: int, args, timings: dict) -> Path:
    run = f"{method}-s{seed}"
    if method in ("random", "random-rescaled"):
        ckpt = out / f"{run}.pt"
        if not ckpt.exists():
            run_step(out, f"make-{run}", ["baseline", method, "--out", str(ckpt), "--seed", str(seed)], timings)
        return ckpt
    folder = out / run
    if not (folder / "final.pt").exists():
        if method == "supervised":
            argv = ["baseline", "supervised", "--out", str(folder), "--seed", str(seed)]
            argv += ["--epochs", str(args.epochs)] if args.epochs else []
        else:
            argv = ["pretrain", "--loss", method, "--out", str(folder), "--seed", str(seed), *args.pretrain_args]
            argv += ["--iters", str(args.iters)] if args.iters else []
        if folder.exists():  # an interrupted run: continue it
            argv.append("--resume")
        run_step(out, f"make-{run}", argv, timings)
    return folder / "final.pt"


def evaluate(out: Path, ckpt: Path, run: str, timings: dict) -> None:
    store = out / "records.jsonl"
    have = {(r["task"], r["run"]) for r in read_records(store)} if store.exists() else set()
    if ("imagenet_linear", run) not in have:
        probe = out / f"probe-{run}"
        argv = ["eval", "linear-probe", "--ckpt", str(ckpt), "--name", run, "--store", str(store), "--out", str(probe)]
        run_step(out, f"probe-{run}", argv + (["--resume"] if probe.exists() else []), timings)
    if ("voc07_svm", run) not in have:
        run_step(out, f"svm-{run}", ["eval", "voc07-svm", "--ckpt", str(ckpt), "--name", run, "--store", str(store)],
                 timings)


def ladder_table(out: Path) -> str:
    """Markdown: one row per method and benchmark, mean +- std over seeds per layer, and the wall time of
    the checkpoint's command for the fastest seed (other jobs may have shared the CPU with the rest)."""
    records = read_records(out / "records.jsonl")
    timings = json.loads((out / "timings.json").read_text()) if (out / "timings.json").exists() else {}
    metric = {"imagenet_linear": "top1", "voc07_svm": "mAP"}
    lines = ["| method | benchmark | seeds | " + " | ".join(LAYERS) + " | make, fastest seed (min) |",
             "|---|---|---|" + "---|" * (len(LAYERS) + 1)]
    for method in METHODS:
        for task, label in (("imagenet_linear", "linear probe top-1"), ("voc07_svm", "VOC07 SVM mAP")):
            rows = [r for r in records if r["task"] == task and r["metric"] == metric[task]
                    and r["run"].rsplit("-s", 1)[0] == method]
            seeds = sorted({r["run"] for r in rows})
            if not seeds:
                continue
            cells = []
            for layer in LAYERS:
                values = np.array([r["value"] for r in rows if r["layer"] == layer])
                spread = f" ± {values.std(ddof=1):.1f}" if len(values) > 1 else ""
                cells.append(f"{values.mean():.1f}{spread}" if len(values) else "-")
            made = [timings[f"make-{s}"] / 60 for s in seeds if f"make-{s}" in timings]
            lines.append(f"| {method} | {label} | {len(seeds)} | " + " | ".join(cells)
                         + (f" | {min(made):.1f} |" if made else " | - |"))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--iters", type=int, default=None, help="pretraining iterations [bench pretrain's default]")
    parser.add_argument("--epochs", type=int, default=None, help="supervised epochs [its smoke preset]")
    parser.add_argument("--pretrain-args", nargs=argparse.REMAINDER, default=[],
                        help="further `bench pretrain` options, last on the line")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    timings = json.loads((args.out / "timings.json").read_text()) if (args.out / "timings.json").exists() else {}
    if not args.table_only:
        for seed in args.seeds:
            for method in args.methods:
                ckpt = checkpoint_of(args.out, method, seed, args, timings)
                evaluate(args.out, ckpt, f"{method}-s{seed}", timings)
    table = ladder_table(args.out)
    (args.out / "ladder.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
