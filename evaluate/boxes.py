"""Box coordinates for detection, converted in this one place.

Three conventions meet in VOC07 detection:
- devkit: 1-based inclusive pixels (xmin, ymin, xmax, ymax), as in Annotations/*.xml and the
  comp4_det_test_<class>.txt result files; a box [1, 1, 10, 10] covers 10 x 10 pixels.
- pixels: 0-based inclusive (x1, y1, x2, y2) = devkit - 1, what Fast R-CNN uses internally
  (pascal_voc.py subtracts 1 on reading, test.py adds it back on writing) and what torchvision's
  RoIPool expects (it rounds both ends and counts end - start + 1 cells).
- proposal .mat: 1-based (y1, x1, y2, x2), the layout of Fast R-CNN's published selective-search
  files (pascal_voc.py reads them as boxes[:, (1, 0, 3, 2)] - 1).
- corners: torchvision's continuous (x1, y1, x2, y2) with x2, y2 exclusive = pixels + (0, 0, 1, 1),
  what its RegionProposalNetwork matches, encodes and clips in (evaluate/faster_rcnn.py).

Everything below works in "pixels" unless its name says otherwise. IoU counts pixels (+1 on each side,
Fast R-CNN's bbox_overlaps); the regression parametrisation does not (roidb.py / test.py use
x2 - x1 + eps for widths), and neither is changed here.
"""
from __future__ import annotations

import numpy as np
import torch

EPS = 1e-14  # Fast R-CNN's cfg.EPS in widths and heights of the regression parametrisation


def devkit_to_pixels(boxes) -> np.ndarray:
    """(K, 4) devkit (1-based xmin, ymin, xmax, ymax) -> float64 0-based (x1, y1, x2, y2)."""
    return np.asarray(boxes, np.float64).reshape(-1, 4) - 1


def pixels_to_devkit(boxes) -> np.ndarray:
    """(K, 4) 0-based (x1, y1, x2, y2) -> float64 devkit (1-based xmin, ymin, xmax, ymax)."""
    return np.asarray(boxes, np.float64).reshape(-1, 4) + 1


def mat_to_pixels(boxes) -> np.ndarray:
    """(K, 4) proposal .mat rows (1-based y1, x1, y2, x2) -> float64 0-based (x1, y1, x2, y2)."""
    return np.asarray(boxes, np.float64).reshape(-1, 4)[:, (1, 0, 3, 2)] - 1


def pixels_to_mat(boxes) -> np.ndarray:
    """(K, 4) 0-based (x1, y1, x2, y2) -> float64 proposal .mat rows (1-based y1, x1, y2, x2)."""
    return np.asarray(boxes, np.float64).reshape(-1, 4)[:, (1, 0, 3, 2)] + 1


def pixels_to_corners(boxes):
    """(K, 4) 0-based inclusive pixels -> torchvision corners (x2, y2 exclusive); a tensor stays a tensor."""
    if isinstance(boxes, torch.Tensor):
        return boxes + boxes.new_tensor([0, 0, 1, 1])
    return np.asarray(boxes, np.float64).reshape(-1, 4) + [0, 0, 1, 1]


def corners_to_pixels(boxes):
    """(K, 4) torchvision corners -> 0-based inclusive pixels; a tensor stays a tensor."""
    if isinstance(boxes, torch.Tensor):
        return boxes - boxes.new_tensor([0, 0, 1, 1])
    return np.asarray(boxes, np.float64).reshape(-1, 4) - [0, 0, 1, 1]


def box_iou(a, b) -> np.ndarray:
    """IoU of every box in a (N, 4) with every box in b (M, 4), inclusive pixels (+1 on each side, as
    Fast R-CNN's bbox_overlaps and the devkit). Returns float64 (N, M)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + 1
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + 1
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area_a = (a[:, 2] - a[:, 0] + 1) * (a[:, 3] - a[:, 1] + 1)
    area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def flip_boxes(boxes, width: int) -> np.ndarray:
    """Boxes of an image mirrored left-right (imdb.append_flipped_images): x1' = W - x2 - 1."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4).copy()
    x1 = boxes[:, 0].copy()
    boxes[:, 0] = width - boxes[:, 2] - 1
    boxes[:, 2] = width - x1 - 1
    return boxes


def clip_boxes(boxes, height: int, width: int) -> np.ndarray:
    """Boxes (K, 4 * n) clipped to the image: 0 <= x <= W - 1, 0 <= y <= H - 1 (test.py's _clip_boxes)."""
    boxes = np.asarray(boxes, np.float64).copy()
    boxes[:, 0::4] = np.clip(boxes[:, 0::4], 0, width - 1)
    boxes[:, 1::4] = np.clip(boxes[:, 1::4], 0, height - 1)
    boxes[:, 2::4] = np.clip(boxes[:, 2::4], 0, width - 1)
    boxes[:, 3::4] = np.clip(boxes[:, 3::4], 0, height - 1)
    return boxes


def valid_boxes(boxes) -> np.ndarray:
    """bool (K,): x2 >= x1 and y2 >= y1 (at least one pixel), the rest are degenerate."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return (boxes[:, 2] >= boxes[:, 0]) & (boxes[:, 3] >= boxes[:, 1])


def regression_targets(rois, gt) -> np.ndarray:
    """(dx, dy, dw, dh) taking each roi (K, 4) to its ground-truth box gt (K, 4), Fast R-CNN's
    parametrisation (roidb.py _compute_targets): widths x2 - x1 + eps, centres x1 + w / 2,
    dx = (gx - x) / w, dw = log(gw / w). Returns float64 (K, 4)."""
    rois = np.asarray(rois, np.float64).reshape(-1, 4)
    gt = np.asarray(gt, np.float64).reshape(-1, 4)
    w, h = rois[:, 2] - rois[:, 0] + EPS, rois[:, 3] - rois[:, 1] + EPS
    gw, gh = gt[:, 2] - gt[:, 0] + EPS, gt[:, 3] - gt[:, 1] + EPS
    return np.stack([(gt[:, 0] + 0.5 * gw - rois[:, 0] - 0.5 * w) / w, (gt[:, 1] + 0.5 * gh - rois[:, 1] - 0.5 * h) / h,
                     np.log(gw / w), np.log(gh / h)], 1)


def apply_deltas(boxes, deltas) -> np.ndarray:
    """boxes (K, 4) moved by deltas (K, 4 * n) (test.py's _bbox_pred, the inverse of
    `regression_targets`). Returns float64 (K, 4 * n)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    deltas = np.asarray(deltas, np.float64)
    if boxes.shape[0] == 0:
        return np.zeros((0, deltas.shape[1]))
    w, h = boxes[:, 2] - boxes[:, 0] + EPS, boxes[:, 3] - boxes[:, 1] + EPS
    cx, cy = boxes[:, 0] + 0.5 * w, boxes[:, 1] + 0.5 * h
    px = deltas[:, 0::4] * w[:, None] + cx[:, None]
    py = deltas[:, 1::4] * h[:, None] + cy[:, None]
    pw = np.exp(deltas[:, 2::4]) * w[:, None]
    ph = np.exp(deltas[:, 3::4]) * h[:, None]
    out = np.zeros(deltas.shape)
    out[:, 0::4], out[:, 1::4] = px - 0.5 * pw, py - 0.5 * ph
    out[:, 2::4], out[:, 3::4] = px + 0.5 * pw, py + 0.5 * ph
    return out
