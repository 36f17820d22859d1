"""Wall time of `bench --help` and of each command's --help (the interpreter's start included), median of
--repeats runs: the command line imports only click and the torch-free config dataclasses.

    python benchmarks/cli_startup.py [--repeats 5]
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time

COMMANDS = ([], ["eval", "voc07-cls"], ["eval", "voc07-det"], ["eval", "voc12-seg"], ["eval", "linear-probe"],
            ["eval", "voc07-svm"], ["pretrain"], ["baseline", "supervised"], ["reproduce"], ["results"])


def seconds(argv: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    python = seconds([sys.executable, "-c", "pass"], args.repeats)
    torch = seconds([sys.executable, "-c", "import torch, torchvision"], args.repeats)
    print(f"{'command':<32} {'median s':>9}")
    print(f"{'(python -c pass)':<32} {python:>9.2f}")
    print(f"{'(import torch, torchvision)':<32} {torch:>9.2f}")
    script = shutil.which("bench")
    if script:  # the console script pip wrote, what a user types
        print(f"{'bench --help (console script)':<32} {seconds([script, '--help'], args.repeats):>9.2f}")
    for command in COMMANDS:
        t = seconds([sys.executable, "-m", "cpfs_bench.bench.cli", *command, "--help"], args.repeats)
        print(f"{' '.join(['bench', *command, '--help']):<32} {t:>9.2f}")


if __name__ == "__main__":
    main()
