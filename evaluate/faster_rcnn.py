"""Faster R-CNN on a CaffeNet trunk, for `bench eval voc07-det --proposals rpn` (users without proposals):
Fast R-CNN (evaluate/fast_rcnn.py) with torchvision's RegionProposalNetwork on conv5, trained jointly
with the detector (approximate joint training: no gradient through the proposals' coordinates), set as
py-faster-rcnn's end-to-end model (lib/fast_rcnn/config.py, experiments/cfgs/faster_rcnn_end2end.yml):
- 9 anchors per conv5 cell, areas 128^2, 256^2, 512^2 x aspect ratios (h / w) 0.5, 1, 2;
- a 3x3 conv (256 channels, as ZF's) and 1x1 objectness / box layers, N(0, 0.01), biases 0;
- per image 256 anchors, at most half positive (IoU >= 0.7, or the best anchor of a ground-truth box),
  negatives IoU < 0.3; binary cross-entropy + smooth L1 (sigma 3) over the sampled anchors;
- anchors that cross the image's border take no part in training (anchor_target_layer.py, allowed
  border 0; torchvision's RPN trains on all of them), but do propose at test, clipped;
- proposals: NMS 0.7, best 12000 -> 2000 in training, 6000 -> 300 at test.

Anchors. torchvision's AnchorGenerator centres anchors on pixel stride * j, py-faster-rcnn on 16 j + 7.5.
Here they sit on the receptive-field centres of the conv5 cells (16 j + 17 on CaffeNet, the same
geometry as the "centres" RoI mapping), stride fixed at 16: torchvision derives it from image size //
map size, which is not 16 for every input size of a trunk with ceil-mode pooling.

Left out (recorded by voc07-det as the "proposals: rpn" deviation): py-faster-rcnn drops proposals under
16 pixels at image scale (RPN_MIN_SIZE); torchvision's RPN keeps every box of positive size."""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead

from cpfs_bench.evaluate.boxes import corners_to_pixels, pixels_to_corners
from cpfs_bench.evaluate.fast_rcnn import FastRCNN
from cpfs_bench.pretrain.alexnet import CaffeNet

ANCHOR_SIZES = (128, 256, 512)
ASPECT_RATIOS = (0.5, 1.0, 2.0)
RPN_SETTINGS = {"fg_iou_thresh": 0.7, "bg_iou_thresh": 0.3, "batch_size_per_image": 256, "positive_fraction": 0.5,
                "pre_nms_top_n": {"training": 12000, "testing": 6000},
                "post_nms_top_n": {"training": 2000, "testing": 300}, "nms_thresh": 0.7}
# py-faster-rcnn end2end normalises the detector's box targets by fixed statistics, not by the training set's
BBOX_MEANS = (0.0, 0.0, 0.0, 0.0)
BBOX_STDS = (0.1, 0.1, 0.2, 0.2)


class ReceptiveFieldAnchors(nn.Module):
    """Anchors of a feature map whose cell (i, j) is centred on input pixel (stride i + offset, stride j + offset).
    forward(images, [feature map (B, C, H, W)]) -> per image (H * W * A, 4) torchvision corners, ordered
    cell by cell (row-major) then anchor by anchor, as torchvision's RPNHead outputs are flattened."""

    def __init__(self, stride: float, offset: float, sizes=ANCHOR_SIZES, ratios=ASPECT_RATIOS):
        super().__init__()
        self.stride, self.offset = float(stride), float(offset)
        base = AnchorGenerator((tuple(sizes),), (tuple(ratios),)).generate_anchors(list(sizes), list(ratios))
        self.register_buffer("base", base, persistent=False)  # (A, 4) zero-centred, rounded as torchvision's

    @property
    def num_anchors(self) -> int:
        return len(self.base)

    def forward(self, images: ImageList, features: list[torch.Tensor]) -> list[torch.Tensor]:
        height, width = features[0].shape[-2:]
        base = self.base.to(features[0].dtype)
        # pixel p covers [p, p + 1) in corner coordinates, so its centre is p + 0.5
        xs = torch.arange(width, device=base.device, dtype=base.dtype) * self.stride + self.offset + 0.5
        ys = torch.arange(height, device=base.device, dtype=base.dtype) * self.stride + self.offset + 0.5
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        centres = torch.stack([cx, cy, cx, cy], -1).reshape(-1, 1, 4)
        anchors = (centres + base.view(1, -1, 4)).reshape(-1, 4)
        return [anchors for _ in images.image_sizes]


class InsideAnchorsRPN(RegionProposalNetwork):
    """torchvision's RegionProposalNetwork, its anchors labelled among those inside the image only (the others
    ignored, label -1), as py-faster-rcnn's anchor_target_layer: the best anchor of each ground-truth box is
    then the best inside one. Each target dict carries the image's "size" (h, w) before padding."""

    def assign_targets_to_anchors(self, anchors, targets):
        labels, matched = [], []
        for a, t in zip(anchors, targets):
            height, width = t["size"]
            inside = (a[:, 0] >= 0) & (a[:, 1] >= 0) & (a[:, 2] <= width) & (a[:, 3] <= height)
            lab, box = super().assign_targets_to_anchors([a[inside]], [t])
            labels.append(a.new_full((len(a),), -1.0).index_put((inside,), lab[0]))
            matched.append(a.new_zeros(a.shape).index_put((inside,), box[0]))
        return labels, matched


class FasterRCNN(FastRCNN):
    """FastRCNN with a region proposal network on conv5. `propose` gives each image's proposals (and, in
    training, the RPN's losses); `head` scores RoIs as Fast R-CNN's."""

    def __init__(self, trunk: CaffeNet, classes: int = 21, roi_mapping: str = "centres"):
        super().__init__(trunk, classes, roi_mapping)
        anchors = ReceptiveFieldAnchors(self.stride, self.offset)
        head = RPNHead(trunk.conv5[0].out_channels, anchors.num_anchors)
        self.rpn = InsideAnchorsRPN(anchors, head, **RPN_SETTINGS)

    def propose(self, images: torch.Tensor, sizes: list[tuple[int, int]], conv5: torch.Tensor,
                gt_boxes: list[torch.Tensor] | None = None) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        """images (B, 3, H, W) padded, sizes [(h, w)] of each image before padding, conv5 of the batch,
        gt_boxes (training only) [(G, 4) 0-based pixels] -> ([(K, 4) proposals, 0-based pixels, detached, best
        first], {"loss_objectness", "loss_rpn_box_reg"} in training, else {})."""
        targets = None if gt_boxes is None else [{"boxes": pixels_to_corners(g), "size": s}
                                                  for g, s in zip(gt_boxes, sizes)]
        # float32 even under autocast: torchvision decodes boxes in the deltas' dtype, and bfloat16 would move
        # anchors of a 1000-pixel image by up to 2 pixels
        with torch.autocast(conv5.device.type, enabled=False):
            boxes, losses = self.rpn(ImageList(images.float(), [tuple(s) for s in sizes]), {"conv5": conv5.float()},
                                     targets)
        return [corners_to_pixels(b.detach()) for b in boxes], losses
