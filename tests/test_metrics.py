"""evaluate.metrics against hand-worked numbers and independent brute-force references.

The references below are written from the definitions with plain Python loops and
exact `Fraction` arithmetic; none of them calls into evaluate.metrics.
"""
import math
import warnings
from fractions import Fraction

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, precision_recall_curve
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from cpfs_bench.evaluate.metrics import (
    classification_ap,
    confusion_matrix,
    detection_ap,
    foreground_class_accuracy,
    foreground_iou,
    mean_iou,
    per_class_iou,
    pixel_accuracy,
    voc_ap,
)

# The 11 recall thresholds exactly as py-faster-rcnn evaluates them: np.arange(0., 1.1, 0.1)
# yields k * 0.1 in floating point (0.30000000000000004, 0.6000000000000001, ...), so the
# reference takes the exact rational value of those floats rather than k/10.  For the same
# reason the references below round recall tp / npos to a double (as the devkit stores it)
# before comparing: 2/20 rounds to exactly the threshold float 0.1 and so reaches it, while
# the rational 1/10 lies just below that float.  Precision is kept exact.
VOC07_T = [Fraction(k * 0.1) for k in range(11)]


def ref_ap(recalls, precisions, use_07_metric):
    """AP of a PR curve (recall non-decreasing), from the definitions, in exact arithmetic."""
    pts = [(Fraction(r), Fraction(p)) for r, p in zip(recalls, precisions)]
    if use_07_metric:
        total = Fraction(0)
        for t in VOC07_T:
            candidates = [p for r, p in pts if r >= t]
            total += max(candidates) if candidates else 0
        return total / 11
    # Area under the interpolated step function p(r) = max{p_j : r_j >= r} over (0, 1];
    # it is constant on (a, b] between consecutive recall levels, and 0 past the last one.
    levels = sorted({r for r, _ in pts if r > 0} | {Fraction(1)})
    area, prev = Fraction(0), Fraction(0)
    for b in levels:
        candidates = [p for r, p in pts if r >= b]
        area += (b - prev) * (max(candidates) if candidates else 0)
        prev = b
    return area


def ref_classification_ap(scores, labels, use_07_metric):
    """VOCevalcls as the devkit runs it: difficult rows stay in the (stable) ranking but add nothing."""
    npos = sum(1 for l in labels if l == 1)
    order = sorted(range(len(scores)), key=lambda i: -scores[i])  # Python's sort is stable
    tp = fp = 0
    recalls, precisions = [], []
    for i in order:
        tp += labels[i] == 1
        fp += labels[i] == -1
        if tp + fp == 0:
            continue  # 0/0 in MATLAB: NaN, which max() skips
        recalls.append(Fraction(tp / npos))  # recall is a double in the devkit, see VOC07_T
        precisions.append(Fraction(tp, tp + fp))
    return ref_ap(recalls, precisions, use_07_metric)


def ref_detection_ap(detections, ground_truth, iou_threshold, use_07_metric):
    """VOCevaldet from its definition: greedy matching by descending score, +1 pixel IoU."""
    npos = 0
    for _, difficult in ground_truth.values():
        for d in difficult:
            if not d:
                npos += 1
    if npos == 0:
        return math.nan
    used = {img: [False] * len(boxes) for img, (boxes, _) in ground_truth.items()}
    order = sorted(range(len(detections)), key=lambda i: -detections[i][1])
    tp = fp = 0
    recalls, precisions = [], []
    for i in order:
        img, _, (x1, y1, x2, y2) = detections[i]
        best, best_j = None, -1
        boxes, difficult = ground_truth.get(img, ([], []))
        for j, (gx1, gy1, gx2, gy2) in enumerate(boxes):
            iw = max(min(x2, gx2) - max(x1, gx1) + 1, 0)
            ih = max(min(y2, gy2) - max(y1, gy1) + 1, 0)
            inter = Fraction(iw) * Fraction(ih)
            union = Fraction((x2 - x1 + 1) * (y2 - y1 + 1) + (gx2 - gx1 + 1) * (gy2 - gy1 + 1)) - inter
            # The devkit compares the double IoU: an IoU of exactly 3/10 rounds to the float 0.3
            # and so is not > iou_threshold=0.3, although the rational 3/10 exceeds that float.
            iou = Fraction(float(inter) / float(union))
            if best is None or iou > best:
                best, best_j = iou, j
        if best is not None and best > Fraction(iou_threshold):
            if difficult[best_j]:
                pass
            elif not used[img][best_j]:
                used[img][best_j] = True
                tp += 1
            else:
                fp += 1
        else:
            fp += 1
        recalls.append(Fraction(tp / npos))  # recall is a double in the devkit, see VOC07_T
        precisions.append(Fraction(tp, tp + fp) if tp + fp else Fraction(0))
    return ref_ap(recalls, precisions, use_07_metric)


# ----------------------------------------------------------------------------- voc_ap

def test_voc_ap_hand_example_decreasing_precision():
    # Ranking pos, neg, pos with 2 positives: recall [1/2, 1/2, 1], precision [1, 1/2, 2/3].
    # 11-point: t = 0 .. 0.5 (6 points) see recall >= t everywhere -> max precision 1;
    #           t = 0.6 .. 1.0 (5 points) only recall 1 -> 2/3.  AP = (6 + 5 * 2/3) / 11 = 28/33.
    # all-point: envelope [1, 1, 2/3]; recall steps 0->1/2 at 1 and 1/2->1 at 2/3:
    #           AP = 1/2 + 1/3 = 5/6.
    rec, prec = [0.5, 0.5, 1.0], [1.0, 0.5, 2 / 3]
    assert voc_ap(rec, prec, use_07_metric=True) == pytest.approx(28 / 33, abs=1e-15)
    assert voc_ap(rec, prec, use_07_metric=False) == pytest.approx(5 / 6, abs=1e-15)


def test_voc_ap_hand_example_rising_precision_is_interpolated():
    # Ranking pos, neg, neg, pos, pos with 3 positives:
    # recall [1/3, 1/3, 1/3, 2/3, 1], precision [1, 1/2, 1/3, 1/2, 3/5].
    # 11-point: t = 0 .. 0.3 (4 points) -> 1; t = 0.4 .. 1.0 (7 points) -> max(1/2, 3/5) = 3/5.
    #           AP = (4 + 7 * 3/5) / 11 = 8.2 / 11 = 41/55.
    # all-point: envelope at recall 1/3, 2/3, 1 is 1, 3/5, 3/5: AP = 1/3 + 1/3 * 3/5 + 1/3 * 3/5 = 11/15.
    rec = [1 / 3, 1 / 3, 1 / 3, 2 / 3, 1.0]
    prec = [1.0, 0.5, 1 / 3, 0.5, 0.6]
    assert voc_ap(rec, prec, use_07_metric=True) == pytest.approx(41 / 55, abs=1e-15)
    assert voc_ap(rec, prec, use_07_metric=False) == pytest.approx(11 / 15, abs=1e-15)


def test_voc_ap_11_point_uses_py_faster_rcnn_float_thresholds():
    # np.arange(0., 1.1, 0.1) has 0.7000000000000001 > 0.7, so recall exactly 0.7 is credited
    # at t = 0, 0.1, ..., 0.6 only: AP = 7/11, not 8/11.  Recall 0.5 is exact: t = 0 .. 0.5 -> 6/11.
    assert list(np.arange(0.0, 1.1, 0.1)) == [k * 0.1 for k in range(11)]
    assert np.arange(0.0, 1.1, 0.1)[7] > 0.7
    assert voc_ap([0.7], [1.0], use_07_metric=True) == pytest.approx(7 / 11, abs=1e-15)
    assert voc_ap([0.5], [1.0], use_07_metric=True) == pytest.approx(6 / 11, abs=1e-15)
    # all-point: single step 0 -> 0.7 at precision 1.
    assert voc_ap([0.7], [1.0], use_07_metric=False) == pytest.approx(0.7, abs=1e-15)


def test_voc_ap_11_point_sums_like_py_faster_rcnn():
    # py-faster-rcnn accumulates `ap = ap + p / 11.` point by point; eleven 1/11 in double add up
    # to 1.0000000000000002, not 1.0 -- a perfect ranking reports that value there.
    assert voc_ap([1.0], [1.0], use_07_metric=True) == 1.0000000000000002
    assert voc_ap([1.0], [1.0], use_07_metric=False) == 1.0


def test_voc_ap_empty_curve_is_zero_and_returns_float():
    for use07 in (True, False):
        ap = voc_ap(np.array([]), np.array([]), use_07_metric=use07)
        assert type(ap) is float and ap == 0.0


def test_voc_ap_matches_brute_force_on_random_curves():
    rng = np.random.default_rng(0)
    for trial in range(60):
        n = int(rng.integers(1, 25))
        rec = np.sort(rng.uniform(0, 1, n))
        if trial % 3 == 0:  # repeated recall levels, as after false positives
            rec = np.sort(rng.choice(rec, n))
        if trial % 5 == 0:
            rec[-1] = 1.0
        prec = rng.uniform(0, 1, n)
        for use07 in (True, False):
            expected = float(ref_ap(rec.tolist(), prec.tolist(), use07))
            assert voc_ap(rec, prec, use_07_metric=use07) == pytest.approx(expected, abs=1e-12), (trial, use07)


def test_voc_ap_rejects_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        voc_ap([0.5, 1.0], [1.0], use_07_metric=True)
    with pytest.raises(ValueError, match="NaN"):
        voc_ap([0.5, np.nan], [1.0, 1.0], use_07_metric=False)


# ----------------------------------------------------------------------------- classification_ap

def test_classification_sklearn_metric_is_the_reference_codes():
    """Kraehenbuehl et al.'s code: sklearn's AP over non-difficult images of score - 1e-5 * label."""
    rng = np.random.default_rng(1)
    for trial in range(20):
        n = 40
        labels = rng.choice([1, -1, 0], n, p=[0.3, 0.55, 0.15])
        labels[0] = 1
        scores = rng.normal(size=n)
        if trial % 2:
            scores = np.round(scores, 1)  # ties: sklearn groups them into one threshold
        keep = labels != 0
        positive = labels[keep] == 1
        expected = average_precision_score(positive, scores[keep] - 1e-5 * positive)
        assert classification_ap(scores, labels, "sklearn") == pytest.approx(expected, abs=1e-15)
    # sklearn already scores a tie as one threshold, which the shift leaves as it is; what the shift
    # changes is a positive less than 1e-5 above a negative: it drops below it (AP 1 -> 1/2)
    assert average_precision_score([1, 0], [1.000005, 1.0]) == 1.0
    assert classification_ap([1.000005, 1.0], [1, -1], "sklearn") == pytest.approx(0.5, abs=1e-12)


def test_classification_all_point_is_interpolated_sklearn_curve_without_ties():
    # sklearn's AP is the *uninterpolated* sum (R_n - R_{n-1}) P_n, so it coincides with the
    # VOC all-point AP only when precision never rises along the ranking.  Verified here: on
    # tie-free data, all-point equals the interpolated area of sklearn's own PR curve, is
    # never below sklearn's AP, and differs from it for the rising-precision ranking.
    rng = np.random.default_rng(2)
    n_differ = 0
    for trial in range(30):
        n = int(rng.integers(5, 60))
        labels = np.where(rng.random(n) < 0.35, 1, -1)
        labels[0] = 1
        scores = rng.permutation(n).astype(float) + rng.random(n) * 0.5  # distinct
        precision, recall, _ = precision_recall_curve(labels == 1, scores)
        expected, prev = 0.0, 0.0
        for r in sorted(set(recall[recall > 0].tolist())):
            expected += (r - prev) * precision[recall >= r].max()
            prev = r
        ap = classification_ap(scores, labels, "all-point")
        sk = average_precision_score(labels == 1, scores)
        assert ap == pytest.approx(expected, abs=1e-12), trial
        assert ap >= sk - 1e-12, trial
        n_differ += not math.isclose(ap, sk, abs_tol=1e-12)
    assert n_differ > 0  # the two definitions really are different on random rankings

    # pos, neg, pos: precision at the hits 1, 2/3 (non-increasing) -> both give 1/2 + 1/2 * 2/3 = 5/6.
    s3, l3 = [3.0, 2.0, 1.0], [1, -1, 1]
    assert classification_ap(s3, l3, "all-point") == pytest.approx(5 / 6, abs=1e-15)
    assert classification_ap(s3, l3, "sklearn") == pytest.approx(5 / 6, abs=1e-15)
    # pos, neg, neg, pos, pos: hits at precision 1, 1/2, 3/5 -> sklearn (1 + 1/2 + 3/5) / 3 = 0.7,
    # all-point interpolates 1/2 up to 3/5: (1 + 3/5 + 3/5) / 3 = 11/15.
    s5, l5 = [5.0, 4.0, 3.0, 2.0, 1.0], [1, -1, -1, 1, 1]
    assert classification_ap(s5, l5, "sklearn") == pytest.approx(0.7, abs=1e-15)
    assert classification_ap(s5, l5, "all-point") == pytest.approx(11 / 15, abs=1e-15)
    assert classification_ap(s5, l5, "voc07") == pytest.approx(41 / 55, abs=1e-15)


@pytest.mark.parametrize("ties", [False, True])
def test_classification_voc_metrics_match_brute_force(ties):
    rng = np.random.default_rng(3 + ties)
    for trial in range(25):
        n = int(rng.integers(3, 80))  # > 16 exercises numpy's non-stable default sort on ties
        labels = rng.choice([1, -1, 0], n, p=[0.3, 0.5, 0.2])
        labels[rng.integers(n)] = 1
        scores = rng.integers(0, 5, n) / 4 if ties else rng.normal(size=n)
        for metric, use07 in (("voc07", True), ("all-point", False)):
            expected = float(ref_classification_ap(scores.tolist(), labels.tolist(), use07))
            got = classification_ap(scores, labels, metric)
            assert got == pytest.approx(expected, abs=1e-12), (trial, metric)


def test_classification_ties_keep_input_order_like_matlab_sort():
    # Tied scores: the stable sort ranks the first-listed entry first.
    # neg then pos: recall [0, 1], precision [0, 1/2] -> every threshold sees 1/2 -> AP 0.5.
    # pos then neg: recall [1, 1], precision [1, 1/2] -> AP 1.
    # sklearn treats the tie as one threshold (precision 1/2 at recall 1) in both orders.
    for metric in ("voc07", "all-point"):
        assert classification_ap([0.5, 0.5], [-1, 1], metric) == pytest.approx(0.5, abs=1e-15)
        assert classification_ap([0.5, 0.5], [1, -1], metric) == pytest.approx(1.0, abs=1e-15)
    assert classification_ap([0.5, 0.5], [-1, 1], "sklearn") == pytest.approx(0.5)
    assert classification_ap([0.5, 0.5], [1, -1], "sklearn") == pytest.approx(0.5)
    # A long all-tied run: the stable order is the input order, so the single positive
    # listed last is ranked last (AP 11-point = 1/40 at every threshold).
    labels = np.array([-1] * 39 + [1])
    assert classification_ap(np.zeros(40), labels, "voc07") == pytest.approx(1 / 40, abs=1e-15)


def test_classification_difficult_entries_are_ignored():
    rng = np.random.default_rng(5)
    for trial in range(10):
        n = 30
        labels = rng.choice([1, -1], n, p=[0.4, 0.6])
        labels[0] = 1
        scores = np.round(rng.normal(size=n), 1)
        base = {m: classification_ap(scores, labels, m) for m in ("voc07", "all-point", "sklearn")}
        # Difficult entries anywhere in the list, scored above everything, tied with existing
        # scores, and at the bottom.
        extra = np.concatenate([[scores.max() + 1, scores.max() + 2], rng.choice(scores, 6), [scores.min() - 1]])
        pos = np.sort(rng.integers(0, n + 1, extra.size))
        s2 = np.insert(scores, pos, extra)
        l2 = np.insert(labels, pos, 0)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # leading difficult entries must not produce 0/0
            for m, v in base.items():
                assert classification_ap(s2, l2, m) == v, (trial, m)


def test_classification_no_positives_is_nan():
    for metric in ("voc07", "all-point", "sklearn"):
        assert math.isnan(classification_ap([0.3, 0.2], [-1, -1], metric))
        assert math.isnan(classification_ap([0.3, 0.2, 0.9], [-1, 0, 0], metric))  # difficult are not positives
        assert math.isnan(classification_ap([], [], metric))


def test_classification_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\{1, -1, 0\}"):
        classification_ap([0.1, 0.2], [1, 2], "voc07")
    with pytest.raises(ValueError, match="same shape"):
        classification_ap([0.1, 0.2, 0.3], [1, -1], "voc07")
    with pytest.raises(ValueError, match="unknown metric"):
        classification_ap([0.1, 0.2], [1, -1], "voc12")
    with pytest.raises(ValueError, match="1-D"):
        classification_ap(np.zeros((2, 2)), np.ones((2, 2), int), "sklearn")


# ----------------------------------------------------------------------------- detection_ap

def _gt(*boxes, difficult=None):
    boxes = np.asarray(boxes, dtype=float).reshape(-1, 4)
    return boxes, np.zeros(len(boxes), bool) if difficult is None else np.asarray(difficult, bool)


def test_detection_single_perfect_detection():
    gt = {"a": _gt([1, 1, 10, 10])}
    for use07 in (True, False):
        assert detection_ap([("a", 0.9, [1, 1, 10, 10])], gt, use_07_metric=use07) == pytest.approx(1.0, abs=1e-15)
    assert detection_ap([("a", 0.9, [1, 1, 10, 10])], gt, use_07_metric=False) == 1.0


def test_detection_duplicate_is_false_positive():
    # Two objects (images a, b).  Ranked: a-hit (TP), a-duplicate (FP), b-hit (TP):
    # recall [1/2, 1/2, 1], precision [1, 1/2, 2/3] -> 11-point (6 * 1 + 5 * 2/3) / 11 = 28/33,
    # all-point 1/2 * 1 + 1/2 * 2/3 = 5/6 (same curve as the voc_ap hand example).
    gt = {"a": _gt([1, 1, 10, 10]), "b": _gt([5, 5, 20, 20])}
    dets = [("a", 0.9, [1, 1, 10, 10]), ("a", 0.8, [1, 1, 10, 10]), ("b", 0.7, [5, 5, 20, 20])]
    assert detection_ap(dets, gt, use_07_metric=True) == pytest.approx(28 / 33, abs=1e-15)
    assert detection_ap(dets, gt, use_07_metric=False) == pytest.approx(5 / 6, abs=1e-15)
    # Without the duplicate both objects are found at precision 1.
    assert detection_ap([dets[0], dets[2]], gt) == pytest.approx(1.0, abs=1e-15)


def test_detection_matching_difficult_object_is_ignored():
    gt = {"a": _gt([1, 1, 10, 10], [21, 21, 30, 30], difficult=[False, True]), "b": _gt([1, 1, 10, 10])}
    others = [("a", 0.9, [1, 1, 10, 10]), ("a", 0.7, [50, 50, 60, 60]), ("b", 0.6, [1, 1, 10, 10])]
    # Without any detection on the difficult box: TP, FP, TP -> 28/33 and 5/6 as above.
    for use07, expected in ((True, 28 / 33), (False, 5 / 6)):
        assert detection_ap(others, gt, use_07_metric=use07) == pytest.approx(expected, abs=1e-15)
        for score in (0.95, 0.8, 0.1):  # first (0 / eps precision), middle, last
            dets = others + [("a", score, [21, 21, 30, 30]), ("a", score / 2, [21, 21, 30, 29])]
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                assert detection_ap(dets, gt, use_07_metric=use07) == pytest.approx(expected, abs=1e-15)
    # Only difficult objects: recall is undefined.
    all_difficult = {"a": _gt([1, 1, 10, 10], difficult=[True])}
    assert math.isnan(detection_ap([("a", 0.9, [1, 1, 10, 10])], all_difficult))


def test_detection_iou_exactly_at_threshold_is_not_a_match():
    # +1 convention: gt [1,1,10,10] is 10 x 10 = 100 px; det [1,1,10,5] is 10 x 5 = 50 px and lies
    # inside it, so IoU = 50 / (100 + 50 - 50) = 1/2 exactly -> not > 0.5 -> FP -> AP 0.
    # det [1,1,10,6]: 60 / 100 = 3/5 > 1/2 -> TP -> AP 1.
    def iou(a, b):
        iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
        ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
        inter = Fraction(iw * ih)
        return inter / ((a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - inter)

    g = [1, 1, 10, 10]
    assert iou(g, [1, 1, 10, 5]) == Fraction(1, 2)
    assert iou(g, [1, 1, 10, 6]) == Fraction(3, 5)
    gt = {"a": _gt(g)}
    assert detection_ap([("a", 1.0, [1, 1, 10, 5])], gt, iou_threshold=0.5) == 0.0
    assert detection_ap([("a", 1.0, [1, 1, 10, 6])], gt, iou_threshold=0.5) == pytest.approx(1.0, abs=1e-15)
    # The +1 convention matters: det [2,2,10,10] has IoU 81/100 with it, but only 64/81 ~ 0.79
    # with continuous (x2 - x1) areas, so at threshold 0.8 it must match.
    assert iou(g, [2, 2, 10, 10]) == Fraction(81, 100)
    assert detection_ap([("a", 1.0, [2, 2, 10, 10])], gt, iou_threshold=0.8) == pytest.approx(1.0, abs=1e-15)
    assert detection_ap([("a", 1.0, [2, 2, 10, 10])], gt, iou_threshold=0.81) == 0.0


def test_detection_on_image_without_ground_truth_is_false_positive():
    # Ranked: ghost-image FP (0.9), then the TP: recall [0, 1], precision [0, 1/2];
    # every 11-point threshold sees precision 1/2 -> 0.5; all-point 1 * 1/2 = 0.5.
    gt = {"a": _gt([1, 1, 10, 10]), "empty": _gt()}
    for ghost in ("absent", "empty"):
        dets = [(ghost, 0.9, [1, 1, 10, 10]), ("a", 0.5, [1, 1, 10, 10])]
        for use07 in (True, False):
            assert detection_ap(dets, gt, use_07_metric=use07) == pytest.approx(0.5, abs=1e-15)


def test_detection_empty_and_degenerate_inputs():
    gt = {"a": _gt([1, 1, 10, 10])}
    for use07 in (True, False):
        assert detection_ap([], gt, use_07_metric=use07) == 0.0
    assert math.isnan(detection_ap([("a", 1.0, [1, 1, 10, 10])], {}))
    assert math.isnan(detection_ap([], {"a": _gt()}))


def test_detection_rejects_bad_shapes():
    gt = {"a": _gt([1, 1, 10, 10])}
    with pytest.raises(ValueError, match=r"detections\[0\] box"):
        detection_ap([("a", 1.0, [1, 1, 10])], gt)
    with pytest.raises(ValueError, match=r"ground_truth\['a'\] boxes"):
        detection_ap([], {"a": (np.zeros((2, 3)), np.zeros(2, bool))})
    with pytest.raises(ValueError, match="difficult"):
        detection_ap([], {"a": (np.ones((2, 4)), np.zeros(3, bool))})
    with pytest.raises(ValueError, match="xmax >= xmin"):
        detection_ap([("a", 1.0, [10, 1, 1, 10])], gt)
    with pytest.raises(ValueError, match=r"detections\[1\]"):
        detection_ap([("a", 1.0, [1, 1, 10, 10]), ("a", 1.0)], gt)


@pytest.mark.parametrize("use07", [True, False])
@pytest.mark.parametrize("iou_threshold", [0.5, 0.3])
def test_detection_matches_brute_force_on_random_scenes(use07, iou_threshold):
    rng = np.random.default_rng(10 + 2 * use07 + int(iou_threshold * 10))
    for trial in range(25):
        ground_truth, py_gt, dets = {}, {}, []
        for img in range(int(rng.integers(1, 6))):
            k = int(rng.integers(0, 5))
            xy = rng.integers(1, 60, (k, 2))
            wh = rng.integers(0, 25, (k, 2))
            boxes = np.concatenate([xy, xy + wh], axis=1)
            difficult = rng.random(k) < 0.25
            ground_truth[img] = (boxes.astype(float), difficult)
            py_gt[img] = (boxes.tolist(), difficult.tolist())
            for b in boxes:  # a few jittered detections per object (duplicates included)
                for _ in range(int(rng.integers(0, 3))):
                    x = np.sort(b[[0, 2]] + rng.integers(-4, 5, 2))
                    y = np.sort(b[[1, 3]] + rng.integers(-4, 5, 2))
                    dets.append((img, [int(x[0]), int(y[0]), int(x[1]), int(y[1])]))
            for _ in range(int(rng.integers(0, 3))):  # background false positives
                x, y = np.sort(rng.integers(1, 80, 2)), np.sort(rng.integers(1, 80, 2))
                dets.append((img, [int(x[0]), int(y[0]), int(x[1]), int(y[1])]))
        dets.append((99, [1, 1, 20, 20]))  # image absent from ground truth
        scores = rng.permutation(len(dets)) + rng.random(len(dets)) * 0.5  # no ties
        detections = [(img, float(s), box) for (img, box), s in zip(dets, scores)]
        expected = ref_detection_ap(detections, py_gt, iou_threshold, use07)
        got = detection_ap(detections, ground_truth, iou_threshold=iou_threshold, use_07_metric=use07)
        if isinstance(expected, float) and math.isnan(expected):
            assert math.isnan(got), trial
        else:
            assert got == pytest.approx(float(expected), abs=1e-12), trial


# ----------------------------------------------------------------------------- segmentation

def _random_maps(rng, k, shape=(3, 17, 23)):
    target = rng.integers(0, k, shape)
    pred = np.where(rng.random(shape) < 0.6, target, rng.integers(0, k, shape))
    ignored = rng.random(shape) < 0.15
    target[ignored] = 255
    pred[ignored & (rng.random(shape) < 0.5)] = 200  # garbage under ignored pixels is allowed
    return pred, target


def test_confusion_matrix_matches_sklearn():
    rng = np.random.default_rng(20)
    for k in (2, 5, 21):
        pred, target = _random_maps(rng, k)
        keep = target != 255
        expected = sk_confusion_matrix(target[keep], pred[keep], labels=list(range(k)))
        cm = confusion_matrix(pred, target, k)
        assert cm.dtype == np.int64 and cm.shape == (k, k)
        np.testing.assert_array_equal(cm, expected)
        # Torch tensors and uint8 maps (where k * target would overflow uint8) give the same.
        np.testing.assert_array_equal(confusion_matrix(torch.from_numpy(pred), torch.from_numpy(target), k), expected)
        np.testing.assert_array_equal(confusion_matrix(pred.astype(np.uint8), target.astype(np.uint8), k), expected)
        assert pixel_accuracy(cm) == pytest.approx(np.mean(pred[keep] == target[keep]), abs=1e-15)


def test_mean_iou_matches_per_class_loop():
    rng = np.random.default_rng(21)
    for k in (3, 8):
        pred, target = _random_maps(rng, k)
        keep = target != 255
        p, t = pred[keep], target[keep]
        ious = []
        for c in range(k):
            tp = fp = fn = 0
            for pi, ti in zip(p.tolist(), t.tolist()):
                tp += pi == c and ti == c
                fp += pi == c and ti != c
                fn += pi != c and ti == c
            if tp + fp + fn:
                ious.append(tp / (tp + fp + fn))
        cm = confusion_matrix(pred, target, k)
        assert mean_iou(cm) == pytest.approx(sum(ious) / len(ious), abs=1e-12)


def test_mean_iou_excludes_absent_class_but_counts_missed_class():
    # K = 4, class 3 absent from both maps.
    # class 0: TP 1 (px0), FP 1 (px4), FN 1 (px1) -> 1/3
    # class 1: TP 2 (px2, px3), FP 1 (px1)        -> 2/3
    # class 2: TP 0, FN 1 (px4)                   -> 0   (in target, never predicted: counted)
    # class 3: union 0                            -> nan (excluded)
    # mean = (1/3 + 2/3 + 0) / 3 = 1/3; pixel accuracy 3/5.
    target = np.array([0, 0, 1, 1, 2, 255])
    pred = np.array([0, 1, 1, 1, 0, 3])
    cm = confusion_matrix(pred, target, 4)
    iou = per_class_iou(cm)
    np.testing.assert_allclose(iou[:3], [1 / 3, 2 / 3, 0.0], atol=1e-15)
    assert np.isnan(iou[3])
    assert mean_iou(cm) == pytest.approx(1 / 3, abs=1e-15)
    assert pixel_accuracy(cm) == pytest.approx(3 / 5, abs=1e-15)
    # Everything ignored: no class has a union, and no warnings.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        empty = confusion_matrix(pred, np.full(6, 255), 4)
        assert empty.sum() == 0 and math.isnan(mean_iou(empty)) and math.isnan(pixel_accuracy(empty))


def test_foreground_diagnostics_match_masks_on_the_label_maps():
    """foreground_iou / foreground_class_accuracy against boolean masks over the raw maps (not the matrix)."""
    rng = np.random.default_rng(5)
    for k in (2, 4, 21):
        pred, target = _random_maps(rng, k)
        keep = target != 255
        p, t = pred[keep], target[keep]
        cm = confusion_matrix(pred, target, k)
        both = (p > 0) & (t > 0)
        assert foreground_iou(cm) == pytest.approx(both.sum() / ((p > 0) | (t > 0)).sum(), abs=1e-15)
        assert foreground_class_accuracy(cm) == pytest.approx((both & (p == t)).sum() / both.sum(), abs=1e-15)
    # edge values: perfect is exactly 1, and no object pixel anywhere is nan, not 0 and not a warning
    target = np.array([0, 3, 3, 1, 255])
    perfect = confusion_matrix(target.clip(0, 3), target, 4)
    assert foreground_iou(perfect) == 1.0 and foreground_class_accuracy(perfect) == 1.0
    found_but_misnamed = confusion_matrix(np.array([0, 3, 1, 3, 0]), target, 4)
    assert foreground_iou(found_but_misnamed) == 1.0 and foreground_class_accuracy(found_but_misnamed) == 1 / 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        background = confusion_matrix(np.zeros(3, int), np.zeros(3, int), 4)
        assert math.isnan(foreground_iou(background)) and math.isnan(foreground_class_accuracy(background))
        # objects in the target, none predicted: IoU 0, class accuracy undefined
        missed = confusion_matrix(np.zeros(5, int), target, 4)
        assert foreground_iou(missed) == 0.0 and math.isnan(foreground_class_accuracy(missed))


def test_confusion_matrix_rejects_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        confusion_matrix(np.zeros((2, 3), int), np.zeros((3, 2), int), 2)
    with pytest.raises(ValueError, match="target values"):
        confusion_matrix(np.array([0, 1]), np.array([0, 2]), 2)
    with pytest.raises(ValueError, match="pred values"):
        confusion_matrix(np.array([0, 2]), np.array([0, 1]), 2)
    with pytest.raises(ValueError, match="pred values"):
        confusion_matrix(np.array([-1, 0]), np.array([0, 1]), 2)
    with pytest.raises(ValueError, match="integer"):
        confusion_matrix(np.array([0.5, 1.0]), np.array([0, 1]), 2)
    with pytest.raises(ValueError, match="square"):
        mean_iou(np.zeros((2, 3)))
