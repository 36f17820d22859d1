"""Wall time of the VOC07 SVM stage (evaluate.voc07_svm.svm_layer) with one worker vs every core.

Synthetic features shaped like one pooled AlexNet layer on VOC07 (by default 500 train / 500 test images
x 9216 dims, 20 classes, about 10% positives per class, ~3% "difficult"), the default cost sweep
(26 costs, Goyal et al. 2019) and 3-fold cross-validation. The worker pool is started before timing
(its start-up, paid once per process, is printed separately); both runs must give identical APs.
The defaults take about 10 minutes on 2 cores; pass --classes/--costs for a quicker look.

    python benchmarks/svm_parallel.py [--train 500] [--test 500] [--dim 9216] [--classes 20] [--costs 0.01,0.1,1]
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from cpfs_bench.evaluate.voc07_svm import GOYAL19_COSTS, svm_layer


def synthetic_layer(n_train: int, n_test: int, dim: int, classes: int, seed: int = 0):
    """Non-negative (ReLU-like) features with a class-dependent component, labels in {1, -1, 0}:
    train_x (n_train, dim), train_labels (n_train, classes), test_x, test_labels."""
    rng = np.random.default_rng(seed)
    prototypes = np.abs(rng.standard_normal((classes, dim)))
    n = n_train + n_test
    present = rng.random((n, classes)) < 0.1
    x = np.abs(rng.standard_normal((n, dim))) + 0.05 * present @ prototypes
    labels = np.where(present, 1, -1).astype(np.int8)
    labels[present & (rng.random((n, classes)) < 0.3)] = 0  # difficult instances
    return (x[:n_train].astype(np.float32), labels[:n_train], x[n_train:].astype(np.float32), labels[n_train:])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=500)
    ap.add_argument("--test", type=int, default=500)
    ap.add_argument("--dim", type=int, default=9216)
    ap.add_argument("--classes", type=int, default=20)
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--costs", default=None, help="comma-separated costs (default: the 26 of Goyal et al. 2019)")
    args = ap.parse_args()
    costs = tuple(float(c) for c in args.costs.split(",")) if args.costs else GOYAL19_COSTS
    cores = os.cpu_count() or 1
    data = synthetic_layer(args.train, args.test, args.dim, args.classes)

    t = time.perf_counter()  # start the reusable worker pool (and its imports) outside the timed runs
    warm_labels = np.where(np.arange(30) % 3 == 0, 1, -1).reshape(-1, 1)  # one class, 10 positives
    warm_x = np.random.default_rng(1).random((30, 8))
    svm_layer(warm_x, warm_labels, warm_x, warm_labels, costs=tuple(float(c + 1) for c in range(cores)),
              folds=args.folds, workers=0)  # one job per worker
    pool_start = time.perf_counter() - t

    timings, results = {}, {}
    for workers in (1, cores):
        t = time.perf_counter()
        results[workers] = svm_layer(*data, costs=costs, folds=args.folds, workers=workers)
        timings[workers] = time.perf_counter() - t
    same = all(np.array_equal(results[1][k], results[cores][k], equal_nan=True) for k in ("ap", "cv_ap", "scores"))

    fits = args.classes * len(costs) * args.folds + args.classes
    print(f"SVM stage: {args.train} train / {args.test} test x {args.dim} dims, {args.classes} classes, "
          f"{len(costs)} costs, {args.folds} folds = {fits} LinearSVC fits; {cores} cores")
    print(f"{'workers':>8} | {'wall s':>8} | {'speed-up':>8} | {'mAP %':>6}")
    print(f"{'-' * 8}-+-{'-' * 8}-+-{'-' * 8}-+-{'-' * 6}")
    for workers in (1, cores):
        print(f"{workers:>8} | {timings[workers]:>8.1f} | {timings[1] / timings[workers]:>7.2f}x | "
              f"{100 * results[workers]['mAP']:>6.2f}")
    print(f"worker pool start-up (once per process, not in the times above): {pool_start:.1f} s")
    print(f"identical APs, CV APs and scores for 1 and {cores} workers: {same}")
    if not same:
        raise SystemExit("results differ between worker counts")


if __name__ == "__main__":
    main()
