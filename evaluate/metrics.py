"""Evaluation metrics that reproduce the PASCAL VOC devkit / py-faster-rcnn / FCN numbers.

Every function here mirrors a specific reference implementation, down to its
quirks, because published numbers in the self-supervised literature were
produced by those codes and a "cleaner" formula would not be comparable:

* `voc_ap`              -- py-faster-rcnn ``lib/datasets/voc_eval.py::voc_ap``
* `classification_ap`   -- VOC devkit ``VOCevalcls.m`` (and sklearn, as used by
                           the Kraehenbuehl et al. fine-tuning reference code)
* `detection_ap`        -- py-faster-rcnn ``voc_eval`` (VOC devkit ``VOCevaldet.m``)
* `confusion_matrix`, `mean_iou`, `per_class_iou`, `pixel_accuracy`
                        -- FCN ``score.py`` (``fast_hist`` / ``compute_hist``)
"""
from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "voc_ap",
    "classification_ap",
    "detection_ap",
    "confusion_matrix",
    "per_class_iou",
    "mean_iou",
    "pixel_accuracy",
]

CLASSIFICATION_METRICS = ("voc07", "all-point", "sklearn")

# py-faster-rcnn iterates over np.arange(0., 1.1, 0.1), whose float values are
# k * 0.1: 0.30000000000000004, 0.6000000000000001 and 0.7000000000000001 lie
# one ulp above the decimals, so a recall of exactly 3/10, 6/10 or 7/10 does NOT
# reach those thresholds.  MATLAB's 0:0.1:1 (the devkit) builds 0.6 and 0.7 from
# the upper end and so differs there; we follow py-faster-rcnn bit for bit.
_VOC07_THRESHOLDS = np.arange(0.0, 1.1, 0.1)


def _as_1d_float(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    return arr


def voc_ap(recall, precision, use_07_metric: bool) -> float:
    """Average precision of a precision/recall curve, exactly as py-faster-rcnn's ``voc_ap``.

    recall, precision: 1-D float arrays of the same length (n,), fractions in [0, 1],
    one entry per rank of the sorted detections/scores (recall non-decreasing).
    use_07_metric: True -> VOC2007 11-point interpolated AP (thresholds 0, 0.1, ..., 1.0,
    see `_VOC07_THRESHOLDS` for their exact float values); False -> VOC2010+ all-point area
    under the monotone (interpolated) precision envelope.
    Returns the AP as a Python float; n == 0 gives 0.0.  The 11-point sum is
    accumulated like py-faster-rcnn's, so a perfect curve gives 1.0000000000000002
    (eleven 1/11 added in double), bit-identical to it rather than clipped to 1.
    """
    rec = _as_1d_float(recall, "recall")
    prec = _as_1d_float(precision, "precision")
    if rec.shape != prec.shape:
        raise ValueError(f"recall and precision must have the same shape, got {rec.shape} and {prec.shape}")
    if np.isnan(rec).any() or np.isnan(prec).any():
        # NaN would silently poison np.maximum below and yield a NaN AP.
        raise ValueError("recall and precision must not contain NaN")

    if use_07_metric:
        ap = 0.0
        for t in _VOC07_THRESHOLDS:
            above = rec >= t
            p = float(np.max(prec[above])) if above.any() else 0.0
            # Accumulate p / 11 one point at a time (not np.mean) so the float
            # result is bit-identical to py-faster-rcnn.
            ap = ap + p / 11.0
        return float(ap)

    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    # Right-to-left running max == py-faster-rcnn's backwards np.maximum loop (max is exact).
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def classification_ap(scores, labels, metric: str) -> float:
    """Average precision of one class for image classification (VOC ``VOCevalcls``).

    scores: float array (n,), higher = more confident the image contains the class.
    labels: int array (n,) with values in {1, -1, 0}: 1 positive, -1 negative,
        0 "difficult" (ignored: counts neither as positive nor as negative).
    metric: "voc07" (devkit 11-point), "all-point" (VOC2010+ area) or "sklearn"
        (sklearn.metrics.average_precision_score on score - 1e-5 * is_positive,
        as the Kraehenbuehl et al. fine-tuning code reports it: a positive less
        than 1e-5 above a negative ranks below it; exact ties stay one threshold).
    Returns the AP as a Python float (see `voc_ap` for the 11-point sum), or
    float("nan") when there is no positive example (AP is undefined then; nan keeps
    it out of a nanmean over classes).

    "voc07"/"all-point" rank with a stable sort on descending score, as MATLAB's
    ``sort`` does, so tied scores keep their input order; "sklearn" instead treats
    tied scores as a single threshold, so the three can disagree on ties.
    """
    if metric not in CLASSIFICATION_METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {CLASSIFICATION_METRICS}")
    s = _as_1d_float(scores, "scores")
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {y.shape}")
    if s.shape != y.shape:
        raise ValueError(f"scores and labels must have the same shape, got {s.shape} and {y.shape}")
    bad = ~np.isin(y, (1, -1, 0))
    if bad.any():
        raise ValueError(f"labels must be in {{1, -1, 0}}; found {np.unique(y[bad]).tolist()}")
    if np.isnan(s).any():
        raise ValueError("scores must not contain NaN")

    # The devkit keeps difficult entries in the ranking, but they only repeat the
    # previous (recall, precision) point -- or give 0/0 before the first
    # non-difficult one -- which cannot change the AP; dropping them first gives
    # the same number without the 0/0.
    keep = y != 0
    s, y = s[keep], y[keep].astype(np.int64)
    npos = int(np.sum(y == 1))
    if npos == 0:
        return float("nan")

    if metric == "sklearn":
        from sklearn.metrics import average_precision_score

        positive = y == 1
        return float(average_precision_score(positive, s - 1e-5 * positive))

    order = np.argsort(-s, kind="stable")
    y = y[order]
    tp = np.cumsum(y > 0)
    fp = np.cumsum(y < 0)
    rec = tp / npos
    prec = tp / (fp + tp)
    return voc_ap(rec, prec, use_07_metric=(metric == "voc07"))


def _box_array(boxes: Any, what: str) -> np.ndarray:
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{what} must have shape (K, 4) as [xmin, ymin, xmax, ymax], got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{what} must be finite")
    if (arr[:, 2] < arr[:, 0]).any() or (arr[:, 3] < arr[:, 1]).any():
        # With xmax < xmin the +1 "area" can be <= 0 and the IoU meaningless.
        raise ValueError(f"{what} must satisfy xmax >= xmin and ymax >= ymin")
    return arr


def detection_ap(
    detections: Sequence[tuple[Hashable, float, Sequence[float]]],
    ground_truth: Mapping[Hashable, tuple[Any, Any]],
    iou_threshold: float = 0.5,
    use_07_metric: bool = True,
) -> float:
    """Detection AP of one class, exactly as py-faster-rcnn's ``voc_eval``.

    detections: list of (image_id, score, [xmin, ymin, xmax, ymax]).
    ground_truth: dict image_id -> (boxes (K, 4), difficult bool (K,)); boxes in the
        devkit's 1-based inclusive pixel coordinates (a box [1, 1, 10, 10] is 10x10
        pixels, hence the +1 in widths, heights and intersections).
    iou_threshold: a detection matches a ground-truth box only if IoU > threshold (strict).
    use_07_metric: VOC2007 11-point AP (True) or all-point area (False); see `voc_ap`.
    Returns the AP as a Python float; float("nan") when there is no non-difficult
    ground-truth box (recall undefined), 0.0 when there are none but no detections.

    Detections are ranked by a stable sort on descending score (ties keep list
    order).  py-faster-rcnn uses ``np.argsort(-confidence)``, which is not stable,
    so on tied scores its order -- and possibly its AP -- is arbitrary.
    Detections on images absent from ground_truth are false positives (the image
    has no object of this class).
    """
    gt: dict[Hashable, tuple[np.ndarray, np.ndarray]] = {}
    npos = 0
    for image_id, entry in ground_truth.items():
        try:
            boxes, difficult = entry
        except (TypeError, ValueError):
            raise ValueError(f"ground_truth[{image_id!r}] must be a (boxes, difficult) pair") from None
        b = _box_array(boxes, f"ground_truth[{image_id!r}] boxes")
        d = np.asarray(difficult)
        if d.size == 0:
            d = d.reshape(0)
        if d.ndim != 1 or d.shape[0] != b.shape[0]:
            raise ValueError(
                f"ground_truth[{image_id!r}] difficult must have shape ({b.shape[0]},) to match its boxes, "
                f"got {d.shape}"
            )
        d = d.astype(bool)
        gt[image_id] = (b, d)
        npos += int(np.sum(~d))
    if npos == 0:
        return float("nan")

    nd = len(detections)
    image_ids: list[Hashable] = []
    conf = np.empty(nd, dtype=np.float64)
    bb = np.empty((nd, 4), dtype=np.float64)
    for k, det in enumerate(detections):
        try:
            image_id, score, box = det
        except (TypeError, ValueError):
            raise ValueError(f"detections[{k}] must be (image_id, score, [xmin, ymin, xmax, ymax])") from None
        image_ids.append(image_id)
        try:
            conf[k] = float(score)
        except (TypeError, ValueError):
            raise ValueError(f"detections[{k}] score must be a number, got {score!r}") from None
        box_arr = np.asarray(box, dtype=np.float64)
        if box_arr.shape != (4,):
            raise ValueError(f"detections[{k}] box must have shape (4,), got {box_arr.shape}")
        bb[k] = _box_array(box_arr[None], f"detections[{k}] box")[0]
    if np.isnan(conf).any():
        raise ValueError("detection scores must not contain NaN")

    order = np.argsort(-conf, kind="stable")
    matched = {image_id: np.zeros(len(d), dtype=bool) for image_id, (_, d) in gt.items()}
    tp = np.zeros(nd)
    fp = np.zeros(nd)
    for rank, k in enumerate(order):
        image_id = image_ids[k]
        box = bb[k]
        ovmax = -np.inf
        jmax = -1
        if image_id in gt and gt[image_id][0].shape[0] > 0:
            g = gt[image_id][0]
            iw = np.maximum(np.minimum(g[:, 2], box[2]) - np.maximum(g[:, 0], box[0]) + 1.0, 0.0)
            ih = np.maximum(np.minimum(g[:, 3], box[3]) - np.maximum(g[:, 1], box[1]) + 1.0, 0.0)
            inters = iw * ih
            uni = (box[2] - box[0] + 1.0) * (box[3] - box[1] + 1.0) + (g[:, 2] - g[:, 0] + 1.0) * (
                g[:, 3] - g[:, 1] + 1.0
            ) - inters
            overlaps = inters / uni
            jmax = int(np.argmax(overlaps))  # first maximum on ties, as np.argmax in voc_eval
            ovmax = overlaps[jmax]

        if ovmax > iou_threshold:
            difficult = gt[image_id][1]
            if not difficult[jmax]:
                if not matched[image_id][jmax]:
                    tp[rank] = 1.0
                    matched[image_id][jmax] = True
                else:
                    fp[rank] = 1.0
            # A match to a difficult object is neither TP nor FP.
        else:
            fp[rank] = 1.0

    fp = np.cumsum(fp)
    tp = np.cumsum(tp)
    rec = tp / float(npos)
    # eps only matters while every detection so far matched a difficult object
    # (tp + fp == 0); precision is then 0 instead of 0/0.
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return voc_ap(rec, prec, use_07_metric)


def _label_array(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor, without importing torch
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype == bool:
        return arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"{name} must hold integer class indices, got dtype {arr.dtype}")
        if not (np.isfinite(arr).all() and (arr == np.round(arr)).all()):
            raise ValueError(f"{name} must hold integer class indices, got non-integral values")
    # int64 before num_classes * target: uint8 labels would overflow.
    return arr.astype(np.int64)


def confusion_matrix(pred, target, num_classes: int, ignore_index: int | None = 255) -> np.ndarray:
    """Pixel confusion matrix, FCN's ``fast_hist``.

    pred, target: integer class maps of identical shape (any shape; numpy arrays or
        torch tensors), flattened internally.
    num_classes: K; valid classes are 0..K-1.
    ignore_index: pixels whose target equals it are skipped (their pred is not checked);
        None disables ignoring.
    Returns an int64 array (K, K) of pixel counts, rows = ground truth (target),
    columns = prediction.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    num_classes = int(num_classes)
    p = _label_array(pred, "pred")
    t = _label_array(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"pred and target must have the same shape, got {p.shape} and {t.shape}")
    p = p.ravel()
    t = t.ravel()
    if ignore_index is not None:
        keep = t != ignore_index
        p, t = p[keep], t[keep]
    # Checked explicitly: an out-of-range value would land in another cell of the
    # bincount (or make it too long) and silently corrupt the matrix.
    if t.size and (t.min() < 0 or t.max() >= num_classes):
        raise ValueError(f"target values must be in [0, {num_classes}) or ignore_index={ignore_index}; "
                         f"found range [{t.min()}, {t.max()}]")
    if p.size and (p.min() < 0 or p.max() >= num_classes):
        raise ValueError(f"pred values must be in [0, {num_classes}) on non-ignored pixels; "
                         f"found range [{p.min()}, {p.max()}]")
    counts = np.bincount(num_classes * t + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def _square(confusion: Any) -> np.ndarray:
    hist = np.asarray(confusion)
    if hist.ndim != 2 or hist.shape[0] != hist.shape[1]:
        raise ValueError(f"confusion must be a square (K, K) matrix, got shape {hist.shape}")
    return hist.astype(np.float64)


def per_class_iou(confusion) -> np.ndarray:
    """Per-class IoU from a (K, K) confusion matrix (rows = target, cols = pred).

    Returns a float64 array (K,): diag / (row_sum + col_sum - diag), nan for classes
    with zero union (absent from both target and prediction).
    """
    hist = _square(confusion)
    diag = np.diag(hist)
    union = hist.sum(1) + hist.sum(0) - diag
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, diag / union, np.nan)


def mean_iou(confusion) -> float:
    """Mean IoU over classes (FCN's ``mean_iu``), a fraction in [0, 1].

    confusion: (K, K) matrix from `confusion_matrix`. Classes with zero union are
    excluded from the mean (nanmean); a class present in the target but never
    predicted correctly counts as 0. Returns nan if no class has a non-zero union.
    """
    iou = per_class_iou(confusion)
    valid = ~np.isnan(iou)
    # Guarded so an all-empty matrix gives nan without nanmean's "Mean of empty slice" warning.
    return float(np.nanmean(iou)) if valid.any() else float("nan")


def foreground_iou(confusion, background: int = 0) -> float:
    """IoU of "any object" against the background class, the object classes merged, a fraction in [0, 1].

    A diagnostic beside mIoU (not a published metric): it says whether a model finds the objects at all,
    whatever class it gives them. confusion: (K, K), rows = target, cols = pred. nan when neither the
    target nor the prediction holds an object pixel.
    """
    hist = _square(confusion)
    objects = np.arange(hist.shape[0]) != background
    both = hist[np.ix_(objects, objects)].sum()
    union = hist[objects, :].sum() + hist[:, objects].sum() - both
    return float(both / union) if union > 0 else float("nan")


def foreground_class_accuracy(confusion, background: int = 0) -> float:
    """Of the pixels that are an object in both target and prediction, the fraction given the right class.

    The other half of mIoU's story beside `foreground_iou`: a model can find objects and still name them
    at chance. confusion: (K, K), rows = target, cols = pred. nan when no such pixel exists.
    """
    hist = _square(confusion)
    objects = np.arange(hist.shape[0]) != background
    block = hist[np.ix_(objects, objects)]
    total = block.sum()
    return float(np.trace(block) / total) if total > 0 else float("nan")


def pixel_accuracy(confusion) -> float:
    """Overall pixel accuracy, trace / total, a fraction in [0, 1]; nan for an empty matrix."""
    hist = _square(confusion)
    total = hist.sum()
    return float(np.trace(hist) / total) if total > 0 else float("nan")
