"""evaluate/boxes.py: the one place where devkit, 0-based and proposal-file coordinates meet."""
import numpy as np
import pytest

from cpfs_bench.evaluate.boxes import (
    apply_deltas,
    box_iou,
    clip_boxes,
    devkit_to_pixels,
    flip_boxes,
    mat_to_pixels,
    pixels_to_devkit,
    pixels_to_mat,
    regression_targets,
    valid_boxes,
)


def test_conversions_round_trip_and_follow_each_format():
    devkit = np.array([[1, 1, 10, 10], [48, 240, 195, 371]], float)  # xmin ymin xmax ymax, 1-based
    pixels = devkit_to_pixels(devkit)
    assert pixels.tolist() == [[0, 0, 9, 9], [47, 239, 194, 370]]
    assert np.array_equal(pixels_to_devkit(pixels), devkit)
    mat = pixels_to_mat(pixels)  # 1-based (y1, x1, y2, x2), Fast R-CNN's proposal files
    assert mat.tolist() == [[1, 1, 10, 10], [240, 48, 371, 195]]
    assert np.array_equal(mat_to_pixels(mat), pixels)


def test_iou_counts_pixels_inclusively():
    a = np.array([[0, 0, 9, 9]], float)  # 10 x 10 pixels
    assert box_iou(a, a)[0, 0] == 1.0
    # one pixel to the right: 9 x 10 shared, 110 in the union
    assert box_iou(a, a + [1, 0, 1, 0])[0, 0] == pytest.approx(90 / 110, abs=1e-15)
    # one pixel right and down: 9 x 9 shared, 200 - 81 in the union
    assert box_iou(a, a + 1)[0, 0] == pytest.approx(81 / 119, abs=1e-15)
    assert box_iou(a, a + 10)[0, 0] == 0.0  # touching corners share no pixel
    # against a float64 brute force over pixel masks
    rng = np.random.default_rng(0)
    xy = rng.integers(0, 30, (20, 2))
    boxes = np.concatenate([xy, xy + rng.integers(0, 15, (20, 2))], 1).astype(float)
    masks = np.zeros((20, 50, 50), bool)
    for k, (x1, y1, x2, y2) in enumerate(boxes.astype(int)):
        masks[k, y1:y2 + 1, x1:x2 + 1] = True
    inter = (masks[:, None] & masks[None]).sum((2, 3))
    union = (masks[:, None] | masks[None]).sum((2, 3))
    assert np.allclose(box_iou(boxes, boxes), inter / union, atol=1e-15, rtol=0)


def test_flip_clip_and_degenerate():
    boxes = np.array([[0, 5, 9, 20], [90, 0, 99, 9]], float)
    flipped = flip_boxes(boxes, width=100)
    assert flipped.tolist() == [[90, 5, 99, 20], [0, 0, 9, 9]]
    assert np.array_equal(flip_boxes(flipped, 100), boxes)
    assert clip_boxes(np.array([[-5, -1, 120, 60]], float), height=50, width=100).tolist() == [[0, 0, 99, 49]]
    assert valid_boxes(np.array([[0, 0, 0, 0], [5, 0, 4, 3], [0, 5, 3, 4]], float)).tolist() == [True, False, False]


def test_regression_targets_and_deltas_invert_each_other():
    rng = np.random.default_rng(1)
    corner = rng.uniform(0, 300, (50, 2))
    rois = np.concatenate([corner, corner + rng.uniform(1, 100, (50, 2))], 1)
    gt = rois + rng.normal(0, 5, rois.shape)
    gt[:, 2:] = np.maximum(gt[:, 2:], gt[:, :2] + 1)
    targets = regression_targets(rois, gt)
    assert np.allclose(apply_deltas(rois, targets), gt, atol=1e-9)
    # Fast R-CNN's parametrisation: centre offsets in widths, log size ratios, widths x2 - x1 (no +1)
    roi, box = np.array([[10, 20, 30, 60]], float), np.array([[12, 20, 42, 60]], float)
    dx, dy, dw, dh = regression_targets(roi, box)[0]
    assert (dx, dy) == pytest.approx(((27 - 20) / 20, 0.0)) and (dw, dh) == pytest.approx((np.log(30 / 20), 0.0))
    # per class: deltas (K, 4 * n) move each box once per class
    two = apply_deltas(roi, np.concatenate([np.zeros((1, 4)), [[dx, dy, dw, dh]]], 1))
    assert two[0, :4] == pytest.approx(roi[0]) and two[0, 4:] == pytest.approx(box[0])
