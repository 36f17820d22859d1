"""VOC07 linear SVMs per layer on a frozen trunk (Goyal et al. 2019, the FAIR self-supervision benchmark).

Pipeline (`run`), top to bottom:

1. Features. VOC2007 trainval (training) and test (testing) images, resized to 256 (shorter side),
   centre-cropped to 227, normalised with the checkpoint's mean/std; one trunk forward per batch gives
   every requested layer, average-pooled to ~9k dims as for the linear probes (evaluate/features.py).
   Pooled features are cached on disk as float32 `.npy`, one file per layer, in a folder named by a
   hash of (checkpoint sha256, dataset folder + image-file fingerprint, split, pooling, preprocessing);
   see `feature_cache_dir`. A later run with the same keys loads them instead of extracting.
2. SVMs (`svm_layer`), per layer and class, all on float64 features L2-normalised per sample as the
   reference does (x / (||x|| + 1e-5)):
   - training labels: 1 stays positive; -1 and 0 ("difficult") are negatives;
   - sklearn LinearSVC: squared hinge, L2 penalty, class_weight {1: 2, -1: 1}, tol 1e-4,
     intercept_scaling 1, random_state 0, max_iter 10000 (the reference caps at 2000: a higher cap
     changes nothing where 2000 iterations suffice and lets the solver finish where they do not;
     convergence warnings are counted and recorded), dual=True when samples <= features (always the case
     for VOC07 trainval: 5011 images, >= 9216 dims; the reference uses dual=True), else the primal solver.
     With fewer samples than dims the solver runs on the samples' coordinates in an orthonormal basis
     of their span (`row_space_coordinates`): the same problem, the same solver steps, much faster;
   - the cost C of each class is the one with the best 3-fold cross-validated AP on trainval.
     Folds: StratifiedKFold(3) without shuffling, i.e. what the reference's
     `cross_val_score(clf, x, y, cv=3, scoring="average_precision")` uses. CV AP: scikit-learn's
     `average_precision_score` (the non-interpolated step sum, as the reference's scorer) on the
     decision values, averaged over folds. Ties go to the first cost in list order (np.argmax, as the
     reference). Folds whose training or validation part holds no positive are skipped (the reference
     would fail or score 0 there; it never happens on real VOC07); a class with no usable fold (fewer
     than 2 training positives) falls back to the cost nearest to liblinear's default C = 1, and says so;
   - retrained on all of trainval with that C; test scores = decision_function;
   - test AP = VOC all-point AP (`classification_ap(..., "all-point")`, the same area under the
     monotone precision envelope as the reference's calculate_ap), difficult (0) excluded;
     mAP = mean over the classes that have test positives (others are skipped and reported).
   Classes run in parallel: joblib over (class, cost) pairs for the cross-validation, then over classes
   for the final fits; BLAS runs single-threaded inside each fit, so results are bit-identical for any
   worker count.
3. Records: one "voc07_svm" / "mAP" record per layer (percent), protocol "goyal19-voc07-svm".

Costs. The default sweep is the one of the protocol's own code: fair_self_supervision_benchmark
GETTING_STARTED.md trains the AlexNet VOC07 SVMs with
`--costs_list "0.0000001,0.000001,0.00001,0.0001,0.001,0.01,0.1,1.0,10.0,100.0"`, and its
`tools/svm/svm_helper.py::parse_cost_list` appends 0.5**4 ... 0.5**19: 26 costs, in that order
(`GOYAL19_COSTS`). VISSL's defaults.yaml has only [0.1, 0.01]; its AlexNet VOC07 SVM config
(eval_alexnet_8gpu_transfer_voc07_svm.yaml) uses `VISSL_ALEXNET_COSTS`; any other list is recorded
as a deviation.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
from joblib import Parallel, delayed
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import average_precision_score
from sklearn.model_selection import StratifiedKFold
from sklearn.svm import LinearSVC
from threadpoolctl import threadpool_limits

from cpfs_bench.bench.files import atomic_write_bytes
from cpfs_bench.bench.parallel import worker_count
from cpfs_bench.bench.runs import progress_bar
from cpfs_bench.evaluate.configs import GOYAL19_COSTS, SVMConfig
from cpfs_bench.evaluate.datasets import VOC_CLASSES, voc_classification_labels, voc_image_path, voc_year_dir
from cpfs_bench.evaluate.metrics import classification_ap

# torch (through evaluate.features) is imported only where features are extracted: the SVM worker
# processes import this module, and torch + torchvision would add seconds to each one's start-up.

PROTOCOL = SVMConfig.PROTOCOL
TASK = "voc07_svm"
YEAR = "2007"
VISSL_ALEXNET_COSTS = (0.01, 0.1, 1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 50.0, 100.0, 1000.0)
CLASS_WEIGHT = {1: 2, -1: 1}
TOL = 1e-4
MAX_ITER = 10_000
RANDOM_STATE = 0
NORM_EPS = 1e-5  # the reference's x / (||x|| + 1e-5)
RESIZE, CROP = 256, 227
CACHE_VERSION = 2  # 2: features from the channels-last trunk (last-bit differences)
CV_METRIC = "sklearn average_precision_score (non-interpolated), mean over folds"
TEST_METRIC = "all-point"


PROTOCOL_FIELDS = ("pooling", "costs", "cv_folds")
PRESETS = SVMConfig.PRESETS
SMOKE_COSTS = PRESETS["smoke"]["costs"]


def check_config(cfg: SVMConfig) -> None:
    """Validate the settings (ValueError naming the bad one)."""
    from cpfs_bench.evaluate.features import POOLINGS, PROBE_LAYERS

    if isinstance(cfg.layers, str) or len(set(cfg.layers)) != len(cfg.layers):
        raise ValueError(f"layers must be a tuple of distinct layer names, got {cfg.layers!r}")
    unknown = [layer for layer in cfg.layers if layer not in PROBE_LAYERS]
    if unknown or not cfg.layers:
        raise ValueError(f"unknown layer(s) {unknown}; choose from {PROBE_LAYERS}")
    if cfg.pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {cfg.pooling!r}; choose from {POOLINGS}")
    check_costs(cfg.costs)
    if isinstance(cfg.cv_folds, bool) or not isinstance(cfg.cv_folds, int) or cfg.cv_folds < 2:
        raise ValueError(f"cv_folds must be an integer >= 2, got {cfg.cv_folds!r}")
    if cfg.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {cfg.batch_size}")
    if cfg.workers < 0:
        raise ValueError(f"workers must be >= 0 (0 = every core), got {cfg.workers}")


def resolve_config(cfg: SVMConfig, explicit=()) -> tuple[SVMConfig, dict]:
    """(cfg checked, with the preset resolved, deviations from the protocol); cfg.voc None = the embedded
    world, written later by the evaluation entry. A VOC folder given without VOC2007 in it is a
    FileNotFoundError here, before the checkpoint is read. The embedded world keeps the protocol
    (SVMConfig.EMBEDDED_PRESET is None: the full sweep takes ~75 s there)."""
    from cpfs_bench.bench.config import protocol_values, resolve

    check_config(cfg)
    if cfg.voc is not None:
        voc_year_dir(cfg.voc, YEAR)  # FileNotFoundError naming the folder looked for
    return resolve(replace(cfg, costs=tuple(float(c) for c in cfg.costs)), PRESETS, explicit,
                   protocol_values(SVMConfig, PROTOCOL_FIELDS), ("voc",))


def check_costs(costs) -> tuple[float, ...]:
    """The C sweep as a tuple of floats, in the given order (it decides ties); ValueError if not all > 0."""
    costs = tuple(float(c) for c in costs)
    if not costs or not all(math.isfinite(c) and c > 0 for c in costs):
        raise ValueError(f"costs must be a non-empty list of positive numbers, got {list(costs)}")
    return costs


# ----------------------------------------------------------------------------------------------------
# Features: extraction and the on-disk cache
# ----------------------------------------------------------------------------------------------------

def feature_cache_dir(cache_root, checkpoint_sha256: str, voc, split: str, image_paths, pooling: str,
                      mean, std) -> Path:
    """The cache folder of one (checkpoint, VOC2007 split, pooling, preprocessing):
    <cache_root>/voc07-<split>-<16 hex digits>/, holding <layer>.npy (float32 (N, D), rows in the
    order of ImageSets/Main/<split>.txt) and key.json (the keys, for inspection).

    The hash covers the checkpoint's sha256, the VOC2007 folder (resolved), the split, a fingerprint
    of the image files (name, size, mtime of each; a regenerated dataset gets a new folder), the
    pooling, the preprocessing (resize, crop, mean, std) and CACHE_VERSION."""
    files = hashlib.sha256()
    for path in image_paths:
        st = os.stat(path)
        files.update(f"{Path(path).name} {st.st_size} {st.st_mtime_ns}\n".encode())
    key = {"version": CACHE_VERSION, "checkpoint_sha256": checkpoint_sha256,
           "dataset": str(voc_year_dir(voc, YEAR).resolve()), "split": split, "images": files.hexdigest(),
           "pooling": pooling, "preprocessing": {"resize": RESIZE, "crop": CROP, "mean": [float(m) for m in mean],
                                                 "std": [float(s) for s in std]}}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    folder = Path(cache_root) / f"voc07-{split}-{digest}"
    if not (folder / "key.json").exists():
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(folder / "key.json", json.dumps(key, indent=1).encode())
    return folder


def _load_cached(path: Path, rows: int):
    """The cached (rows, D) float32 array (memory-mapped), or None when absent or unreadable."""
    if not path.exists():
        return None
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return None
    if array.ndim != 2 or array.shape[0] != rows or array.dtype != np.float32:
        return None
    return array


def extract_split(trunk, info: dict, voc, split: str, layers, pooling: str, folder: Path, batch_size: int = 32,
                  device="cpu", loader_workers: int = 0, progress: bool = True) -> dict[str, np.ndarray]:
    """Pool `layers` for every image of VOC2007 `split` and write <folder>/<layer>.npy atomically
    (temporary file + os.replace). Returns {layer: float32 (N, D) memory-mapped array}."""
    import torch
    from torch.utils.data import DataLoader

    from cpfs_bench.evaluate.datasets import VOCClassification
    from cpfs_bench.evaluate.features import eval_transform, pooled_features

    dataset = VOCClassification(voc, YEAR, split, transform=eval_transform(info["mean"], info["std"], RESIZE, CROP))
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=loader_workers)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = {layer: folder / f".{layer}.npy.tmp{os.getpid()}" for layer in layers}
    out: dict[str, np.ndarray] = {}
    try:
        row = 0
        bar = progress_bar(loader, desc=f"features VOC2007 {split}", unit="batch", disable=not progress)
        with torch.no_grad():
            for images, _ in bar:
                pooled = pooled_features(trunk, images.to(device), layers, pooling)  # one forward, all layers
                for layer, feats in pooled.items():
                    if layer not in out:
                        out[layer] = np.lib.format.open_memmap(tmp[layer], mode="w+", dtype=np.float32,
                                                               shape=(len(dataset), feats.shape[1]))
                    out[layer][row:row + len(images)] = feats.float().cpu().numpy()
                row += len(images)
        for layer in layers:
            out[layer].flush()
            del out[layer]
            os.replace(tmp[layer], folder / f"{layer}.npy")
    finally:
        out.clear()
        for path in tmp.values():
            path.unlink(missing_ok=True)
    return {layer: np.load(folder / f"{layer}.npy", mmap_mode="r") for layer in layers}


def split_features(trunk, info: dict, voc, split: str, layers, pooling: str, cache_root, batch_size: int = 32,
                   device="cpu", loader_workers: int = 0, progress: bool = True):
    """Cached features of VOC2007 `split`: ({layer: float32 (N, D)}, labels int8 (N, 20) in {1, -1, 0},
    {layer: True where it came from the cache}). Only the missing layers are extracted."""
    ids, labels = voc_classification_labels(voc, YEAR, split)
    paths = [voc_image_path(voc, YEAR, image_id) for image_id in ids]
    folder = feature_cache_dir(cache_root, info["sha256"], voc, split, paths, pooling, info["mean"], info["std"])
    feats = {}
    for layer in layers:
        cached = _load_cached(folder / f"{layer}.npy", len(ids))
        if cached is not None:
            feats[layer] = cached
    hits = {layer: layer in feats for layer in layers}
    if feats:
        print(f"feature cache hit: VOC2007 {split} {', '.join(feats)} ({folder})", file=sys.stderr)
    missing = [layer for layer in layers if layer not in feats]
    if missing:
        print(f"extracting VOC2007 {split} features of {', '.join(missing)} into {folder}", file=sys.stderr)
        feats.update(extract_split(trunk, info, voc, split, missing, pooling, folder, batch_size, device,
                                   loader_workers, progress))
    return {layer: feats[layer] for layer in layers}, labels, hits


# ----------------------------------------------------------------------------------------------------
# The SVM stage (feature arrays in, APs out)
# ----------------------------------------------------------------------------------------------------

def l2_normalize(x) -> np.ndarray:
    """(N, D) -> float64 (N, D) rows divided by (their L2 norm + 1e-5), as the reference."""
    x = np.asarray(x, dtype=np.float64)
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + NORM_EPS)


def row_space_coordinates(train_x: np.ndarray, test_x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """train_x (N, D), test_x (M, D) float64 with N < D -> (N, N) and (M, N) coordinates in an orthonormal
    basis of the span of the training rows (train_x.T = Q R, Householder QR: train_x R-coordinates
    R.T, test_x -> test_x Q).

    Why: the dual liblinear solver sees the data only through inner products x_i . x_j, and the trained
    w = sum_i alpha_i y_i x_i lies in that span, so every inner product among training rows and every
    test decision value w . x is unchanged. The solver takes the same steps (same iterations, decision
    values equal to ~1e-14, tested) on N instead of D columns: ~80x faster on the embedded world
    (250 x 9600, measured); ~1.8x expected on VOC07 trainval (5011 x 9216, not measured).
    Cross-validation folds are subsets of the training rows, so one basis serves every fold."""
    q, r = np.linalg.qr(train_x.T)  # reduced mode: q (D, N) with orthonormal columns, r (N, N)
    return np.ascontiguousarray(r.T), test_x @ q


def make_svm(cost: float, dual: bool) -> LinearSVC:
    """The per-class classifier of the protocol at cost C."""
    return LinearSVC(C=cost, loss="squared_hinge", penalty="l2", dual=dual, class_weight=CLASS_WEIGHT, tol=TOL,
                     intercept_scaling=1.0, max_iter=MAX_ITER, random_state=RANDOM_STATE)


def _count_convergence(caught) -> int:
    return sum(issubclass(w.category, ConvergenceWarning) for w in caught)


def cross_validated_ap(x: np.ndarray, y: np.ndarray, cost: float, folds: int, dual: bool) -> tuple[float, int]:
    """x (N, D) float64, y (N,) in {1, -1} -> (mean AP over the usable folds, nan if none; convergence
    warnings). AP = sklearn average_precision_score of the decision values on the held-out fold."""
    aps = []
    with warnings.catch_warnings(record=True) as caught, threadpool_limits(1):  # see fit_and_score
        warnings.simplefilter("always")
        for train, held_out in StratifiedKFold(n_splits=folds).split(x, y):
            if not ((y[train] == 1).any() and (y[train] == -1).any() and (y[held_out] == 1).any()):
                continue  # no positive to learn from or to rank
            clf = make_svm(cost, dual).fit(x[train], y[train])
            aps.append(average_precision_score(y[held_out] == 1, clf.decision_function(x[held_out])))
    return (float(np.mean(aps)) if aps else float("nan")), _count_convergence(caught)


def fit_and_score(x: np.ndarray, y: np.ndarray, cost: float, test_x: np.ndarray, dual: bool) -> tuple[np.ndarray, int]:
    """Train on all of x (N, D), y (N,) in {1, -1}; returns (decision values (M,) of test_x (M, D),
    convergence warnings). BLAS runs single-threaded, so the decision values are bit-identical
    whatever the number of worker processes (a multi-threaded dot product sums in another order)."""
    with warnings.catch_warnings(record=True) as caught, threadpool_limits(1):
        warnings.simplefilter("always")
        clf = make_svm(cost, dual).fit(x, y)
        return clf.decision_function(test_x), _count_convergence(caught)


def _file_backed(x: np.ndarray, folder: str, name: str) -> np.ndarray:
    """x saved under folder and memory-mapped read-only: joblib hands a memmap to its workers by file
    name, where it would hash and copy an in-memory array for every task."""
    path = Path(folder) / f"{name}.npy"
    np.save(path, x)
    return np.load(path, mmap_mode="r")


def _run_jobs(parallel, jobs: list, progress: bool, desc: str) -> list:
    results = parallel(jobs)
    return list(progress_bar(results, total=len(jobs), desc=desc, unit="fit", leave=False, disable=not progress))


def svm_layer(train_x, train_labels, test_x, test_labels, costs=GOYAL19_COSTS, folds: int = 3, workers: int = 0,
              progress: bool = False, desc: str = "SVM") -> dict:
    """The SVM stage of one layer on feature arrays.

    train_x (N, D), test_x (M, D): raw features (L2-normalised here); train_labels (N, K),
    test_labels (M, K): ints in {1, -1, 0} (0 = difficult). costs: the C sweep; folds: CV folds;
    workers: processes (0 = every core).
    Returns {"ap": float64 (K,) test AP fractions in [0, 1] (nan = skipped class), "mAP": their nanmean
    (fraction; nan if every class was skipped), "best_cost": list of K floats (None = skipped),
    "cv_ap": float64 (K, len(costs)) cross-validated AP fractions, "scores": float64 (M, K) test decision
    values (nan columns = skipped), "skipped": {class index: reason}, "notes": {class index: text},
    "dual": bool, "convergence_warnings": int}."""
    costs = check_costs(costs)
    train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)
    train_x, test_x = l2_normalize(train_x), l2_normalize(test_x)
    if train_x.ndim != 2 or test_x.ndim != 2 or train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"features must be (N, D) and (M, D), got {train_x.shape} and {test_x.shape}")
    if train_labels.shape[0] != len(train_x) or test_labels.shape[0] != len(test_x) or train_labels.ndim != 2 \
            or test_labels.shape[1:] != train_labels.shape[1:]:
        raise ValueError(f"labels must be (N, K) and (M, K) for features {train_x.shape} and {test_x.shape}; "
                         f"got {train_labels.shape} and {test_labels.shape}")
    for name, labels in (("train_labels", train_labels), ("test_labels", test_labels)):
        if not np.isin(labels, (1, -1, 0)).all():
            raise ValueError(f"{name} must hold 1, -1 or 0 (difficult)")
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ValueError(f"folds must be an integer >= 2, got {folds!r}")
    if len(train_x) < folds:
        raise ValueError(f"{len(train_x)} training samples cannot be split into {folds} folds")

    classes = train_labels.shape[1]
    y = np.where(train_labels == 1, 1, -1).astype(np.int32)  # difficult (0) -> negative for training
    dual = train_x.shape[0] <= train_x.shape[1]
    if train_x.shape[0] < train_x.shape[1]:
        train_x, test_x = row_space_coordinates(train_x, test_x)
    skipped = {k: "no positive training image" for k in range(classes) if not (y[:, k] == 1).any()}
    skipped.update({k: "no negative training image" for k in range(classes) if not (y[:, k] == -1).any()})
    trainable = [k for k in range(classes) if k not in skipped]
    notes: dict[int, str] = {}
    cv_ap = np.full((classes, len(costs)), np.nan)
    best_cost: list[float | None] = [None] * classes
    scores = np.full((len(test_x), classes), np.nan)
    warned = 0

    pairs = [(k, j) for k in trainable for j in range(len(costs))]
    n_jobs = worker_count(workers, max(len(pairs), 1))
    with tempfile.TemporaryDirectory(prefix="voc07-svm-") as shared, \
            Parallel(n_jobs=n_jobs, return_as="generator") as parallel:
        if n_jobs > 1:  # workers map the features from one file instead of receiving a copy per task
            train_x, test_x = _file_backed(train_x, shared, "train"), _file_backed(test_x, shared, "test")
        cv_jobs = [delayed(cross_validated_ap)(train_x, y[:, k], costs[j], folds, dual) for k, j in pairs]
        cv = _run_jobs(parallel, cv_jobs, progress, f"{desc} cross-validation")
        for (k, j), (ap, n_warn) in zip(pairs, cv):
            cv_ap[k, j] = ap
            warned += n_warn
        for k in trainable:
            if np.isnan(cv_ap[k]).all():
                best_cost[k] = min(costs, key=lambda c: abs(math.log(c)))
                notes[k] = f"too few training positives to cross-validate; used C = {best_cost[k]:g} (nearest to 1)"
            else:
                best_cost[k] = costs[int(np.nanargmax(cv_ap[k]))]  # first maximum in list order
        fit_jobs = [delayed(fit_and_score)(train_x, y[:, k], best_cost[k], test_x, dual) for k in trainable]
        fits = _run_jobs(parallel, fit_jobs, progress, f"{desc} final fits")
        for k, (test_scores, n_warn) in zip(trainable, fits):
            scores[:, k] = test_scores
            warned += n_warn

    ap = np.full(classes, np.nan)
    for k in trainable:
        ap[k] = classification_ap(scores[:, k], test_labels[:, k], TEST_METRIC)  # difficult excluded
        if np.isnan(ap[k]):
            skipped[k] = "no positive test image"
    valid = ~np.isnan(ap)
    return {"ap": ap, "mAP": float(np.mean(ap[valid])) if valid.any() else float("nan"), "best_cost": best_cost,
            "cv_ap": cv_ap, "scores": scores, "skipped": dict(sorted(skipped.items())), "notes": notes, "dual": dual,
            "convergence_warnings": warned}


# ----------------------------------------------------------------------------------------------------
# The benchmark
# ----------------------------------------------------------------------------------------------------

def run(cfg: SVMConfig, progress: bool = True, explicit=()) -> dict:
    """Features (cached), SVMs per layer, one record per layer appended to the store.

    Returns {"mAP": {layer: percent}, "layers": {layer: {"mAP" percent, "ap": {class: percent (nan =
    skipped)}, "best_cost": {class: C or None}, "skipped": {class: reason}, "notes", "feature_dim",
    "convergence_warnings", "seconds"}}, "cache_hits": {split: {layer: bool}}, "cache_hit": bool (every
    feature came from the cache), "seconds": {"features", "svm", "total"}, "method", "deviations", "voc",
    "store"}. `explicit`: the fields the user gave (a preset never overrides them)."""
    from cpfs_bench.bench.paths import bench_home
    from cpfs_bench.bench.world.defaults import default_voc_world
    from cpfs_bench.evaluate.backbone import assert_trunk_unchanged, trunk_fingerprint
    from cpfs_bench.evaluate.evaluation import prepare

    ev = prepare(cfg, kind="voc07-svm", task=TASK, protocol=PROTOCOL, resolve_config=resolve_config,
                 explicit=explicit, data_fields=("voc",), default_world=default_voc_world, progress=progress,
                 trunk="frozen", folder=False)
    cfg, device, info, trunk, voc = ev.cfg, ev.device, ev.info, ev.trunk, ev.cfg.voc
    cache_root = Path(cfg.cache) if cfg.cache else bench_home() / "cache" / "features"
    fingerprint = trunk_fingerprint(trunk)
    # image decoding in background processes while the trunk runs (none when asked for one worker)
    loader_workers = 0 if cfg.workers == 1 else min(4, (cfg.workers or os.cpu_count() or 1) - 1)
    feats, labels, hits = {}, {}, {}
    for split in ("trainval", "test"):
        feats[split], labels[split], hits[split] = split_features(
            trunk, info, voc, split, cfg.layers, cfg.pooling, cache_root, cfg.batch_size, device, loader_workers,
            progress)
    assert_trunk_unchanged(trunk, fingerprint)
    feature_seconds = time.perf_counter() - ev.started

    # the records name the folder given (--voc); their dataset_info describes its VOC2007 folder
    ev.test_set(voc_year_dir(voc, YEAR), 20, "test", len(labels["test"]))
    ev.dataset = voc
    layers = {}
    for layer in cfg.layers:
        t0 = time.perf_counter()
        out = svm_layer(feats["trainval"][layer], labels["trainval"], feats["test"][layer], labels["test"],
                        cfg.costs, cfg.cv_folds, cfg.workers, progress, desc=f"SVM {layer}")
        if math.isnan(out["mAP"]):
            raise ValueError(f"{voc}: no VOC2007 class has both trainval and test positives; cannot compute a mAP")
        mean_ap = min(100.0, 100 * out["mAP"])  # AP <= 1; min() only absorbs float rounding
        skipped = {VOC_CLASSES[k]: why for k, why in out["skipped"].items()}
        notes = {VOC_CLASSES[k]: text for k, text in out["notes"].items()}
        best = {VOC_CLASSES[k]: c for k, c in enumerate(out["best_cost"])}
        ap = {VOC_CLASSES[k]: 100 * float(a) for k, a in enumerate(out["ap"])}
        dim = int(feats["trainval"][layer].shape[1])
        layers[layer] = {"mAP": mean_ap, "ap": ap, "best_cost": best, "skipped": skipped, "notes": notes,
                         "feature_dim": dim, "convergence_warnings": out["convergence_warnings"],
                         "seconds": time.perf_counter() - t0}
        print(f"VOC07 SVM {layer}: mAP {mean_ap:.2f} over {20 - len(skipped)} classes"
              + (f" (skipped {', '.join(f'{c}: {why}' for c, why in skipped.items())})" if skipped else ""),
              file=sys.stderr)
        ev.record("mAP", mean_ap, layer=layer, extra={
            "feature_dim": dim, "best_costs": best, "ap": {c: (None if math.isnan(a) else a) for c, a in ap.items()},
            "skipped_classes": skipped, "notes": notes, "cv_metric": CV_METRIC, "test_metric": TEST_METRIC,
            "train_images": len(labels["trainval"]), "test_images": len(labels["test"]), "pooling": cfg.pooling,
            "arch": info["arch"], "convergence_warnings": out["convergence_warnings"]})
    store = ev.write()
    total = time.perf_counter() - ev.started
    return {"mAP": {layer: v["mAP"] for layer, v in layers.items()}, "layers": layers, "cache_hits": hits,
            "cache_hit": all(all(h.values()) for h in hits.values()),
            "seconds": {"features": feature_seconds, "svm": total - feature_seconds, "total": total},
            "method": ev.method, "run": ev.run_name, "deviations": ev.deviations, "voc": voc, "store": str(store)}
