"""Fast R-CNN on a CaffeNet trunk, as rbgirshick/fast-rcnn trains its CaffeNet model: conv1..conv5
(stride 16), RoI max pooling to 6 x 6, the trunk's fc6 and fc7 (with their dropout), a new 21-way
classifier (N(0, 0.01)) and a class-specific box regressor (N(0, 0.001)), biases 0.

RoI mapping. Fast R-CNN maps an image box to conv5 cells by round(x / 16) (spatial_scale 1/16): cell j
stands for pixel 16 j. In CaffeNet the receptive field of conv5 cell j is centred on pixel 16 j + 17
(`CaffeNet.feature_geometry`), so that mapping is about one cell off. The default here ("centres")
subtracts the offset first: a box maps to the cells whose centres are nearest its edges,
round((x - 17) / 16), clamped to the map. Then a box covering a whole 227 x 227 input pools exactly
what pool5 computes (tested). "fast-rcnn" gives the reference's mapping; the choice is recorded.

Pooling layers round their output size up, as Caffe's do (on 227 inputs both agree)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_pool

from cpfs_bench.evaluate.boxes import box_iou
from cpfs_bench.evaluate.configs import VOCDetConfig
from cpfs_bench.pretrain.alexnet import CaffeNet

POOLED = 6
ROI_MAPPINGS = VOCDetConfig.ROI_MAPPINGS


class FastRCNN(nn.Module):
    """images (B, 3, H, W) normalised, rois (R, 5) [image index, x1, y1, x2, y2] in 0-based pixels of
    the input -> (class scores (R, classes), box deltas (R, 4 * classes))."""

    def __init__(self, trunk: CaffeNet, classes: int = 21, roi_mapping: str = "centres"):
        super().__init__()
        if not isinstance(trunk, CaffeNet):
            arch = getattr(trunk, "arch", type(trunk))
            raise ValueError(f"Fast R-CNN is defined here on CaffeNet trunks; got {arch}")
        if roi_mapping not in ROI_MAPPINGS:
            raise ValueError(f"unknown roi_mapping {roi_mapping!r}; choose from {ROI_MAPPINGS}")
        self.trunk, self.roi_mapping = trunk, roi_mapping
        for pool in (trunk.pool1, trunk.pool2):
            pool.ceil_mode = True
        self.stride, self.offset = trunk.feature_geometry()["conv5"]
        self.cls_score = nn.Linear(4096, classes)
        self.bbox_pred = nn.Linear(4096, 4 * classes)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def roi_cells(self, rois: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """rois (R, 5) in pixels -> (R, 5) in conv5 cell coordinates for roi_pool at spatial scale 1."""
        boxes = rois[:, 1:]
        if self.roi_mapping == "fast-rcnn":
            cells = boxes / self.stride  # roi_pool rounds, as Caffe's ROIPooling does with spatial_scale 1/16
        else:
            cells = torch.floor((boxes - self.offset) / self.stride + 0.5)
            limit = boxes.new_tensor([width - 1, height - 1, width - 1, height - 1])
            cells = torch.minimum(cells.clamp(min=0), limit)
        return torch.cat([rois[:, :1], cells], 1)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) -> conv5 (B, 256, H', W'), computed once per image at test time."""
        return self.trunk.activations(images, ("conv5",))["conv5"]

    def head(self, conv5: torch.Tensor, rois: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """conv5 of the batch and its rois (R, 5) in pixels -> (class scores, box deltas)."""
        cells = self.roi_cells(rois.to(conv5.dtype), conv5.shape[-2], conv5.shape[-1])
        pooled = roi_pool(conv5, cells, (POOLED, POOLED), 1.0)
        h = self.trunk.fc7(self.trunk.fc6(pooled.flatten(1)))
        return self.cls_score(h), self.bbox_pred(h)

    def forward(self, images: torch.Tensor, rois: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.features(images), rois)


def sample_rois(max_overlaps: np.ndarray, rois_per_image: int, fg_fraction: float, fg_thresh: float,
                bg_thresh_hi: float, bg_thresh_lo: float, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Fast R-CNN's minibatch sampling of one image (minibatch.py _sample_rois): up to
    round(fg_fraction * rois_per_image) foreground RoIs (max IoU >= fg_thresh), the rest background
    (max IoU in [bg_thresh_lo, bg_thresh_hi)), both without replacement.
    Returns (indices into the image's RoIs, foreground first; number of foreground)."""
    fg = np.flatnonzero(max_overlaps >= fg_thresh)
    n_fg = int(min(np.round(fg_fraction * rois_per_image), fg.size))
    if n_fg:
        fg = rng.choice(fg, n_fg, replace=False)
    bg = np.flatnonzero((max_overlaps < bg_thresh_hi) & (max_overlaps >= bg_thresh_lo))
    n_bg = int(min(rois_per_image - n_fg, bg.size))
    if n_bg:
        bg = rng.choice(bg, n_bg, replace=False)
    return np.concatenate([fg[:n_fg], bg[:n_bg]]).astype(np.int64), n_fg


def smooth_l1(x: torch.Tensor) -> torch.Tensor:
    """Fast R-CNN's smooth L1 (sigma 1): 0.5 x^2 where |x| < 1, |x| - 0.5 elsewhere."""
    a = x.abs()
    return torch.where(a < 1, 0.5 * x * x, a - 0.5)


def fast_rcnn_loss(class_scores: torch.Tensor, box_deltas: torch.Tensor, labels: torch.Tensor,
                   targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(softmax loss averaged over the R RoIs, smooth-L1 box loss summed over the foreground RoIs' own-class
    deltas and divided by R), as train.prototxt's SoftmaxWithLoss and SmoothL1Loss (whose loss weights are 1
    on the 4 deltas of the RoI's class, 0 elsewhere). class_scores (R, C), box_deltas (R, 4C), labels (R,)
    int64, targets (R, 4) normalised (rows of background RoIs are ignored)."""
    loss_cls = F.cross_entropy(class_scores, labels)
    fg = torch.nonzero(labels > 0).flatten()
    own = box_deltas.view(len(labels), -1, 4)[fg, labels[fg]]
    loss_box = smooth_l1(own - targets[fg]).sum() / max(len(labels), 1)
    return loss_cls, loss_box


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression, as Fast R-CNN's (IoU with +1 pixel extents; a box is dropped when
    its IoU with a kept, higher-scoring box is > threshold). Returns kept indices, best first."""
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        if order.size == 1:
            break
        iou = box_iou(boxes[i:i + 1], boxes[order[1:]])[0]
        order = order[1:][iou <= threshold]
    return np.array(keep, np.int64)
