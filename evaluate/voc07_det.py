"""`bench eval voc07-det`: VOC2007 detection with Fast R-CNN on the pretrained AlexNet (the paper's Table 1
"Detection"), following rbgirshick/fast-rcnn (lib/fast_rcnn/{config,train,test}.py, roi_data_layer/,
datasets/pascal_voc.py) with the multi-scale schedule self-supervised papers use (../shared/PROTOCOLS.md).

Train on VOC2007 trainval and its mirror images, test on VOC2007 test:
- RoIs: selective-search proposals (`bench proposals`, or Fast R-CNN's published files) plus the
  ground-truth boxes; per image 64 RoIs, 25% foreground (IoU >= 0.5), the rest background (IoU in
  [0.1, 0.5)); 2 images per batch, each at a shorter side drawn from {480, 576, 688, 864, 1200}
  (longer side <= 2000).
- Loss: softmax over 21 classes + smooth L1 on the class's box deltas, the regression targets
  normalised by their per-class mean and std over the training RoIs (roidb.py).
- SGD momentum 0.9, lr 0.001 (biases x2, no decay), weight decay 5e-4, lr /10 every 50k, 150k
  iterations; conv1 fixed (Fast R-CNN fine-tunes CaffeNet from conv2); `--iters` scales the schedule.
- Difficult objects are left out of training (as py-faster-rcnn's use_diff False; fast-rcnn's own
  pascal_voc.py kept them); images with no other object are skipped, counted in the log.
- Test at shorter side 600 (longer <= 1000) on every proposal, class probabilities and regressed
  boxes clipped to the image, per class: score > 0.05, NMS at IoU 0.3, then at most 100 detections
  per image over all classes (test.py). Detections go to the devkit's comp4_det_test_<class>.txt
  files (1-based boxes), and AP is computed from those files (VOC07 11-point, IoU > 0.5), so the
  official devkit scores the same thing.
BatchNorm trunks run on their running statistics (2 images of different sizes per batch). The RoI to
conv5 mapping accounts for the receptive-field offset (evaluate/fast_rcnn.py); recorded, as every
difference from the protocol.

`--proposals rpn` (a deviation, for users without proposals): Faster R-CNN, a region proposal network
trained with the detector (evaluate/faster_rcnn.py). Each training step samples the detector's RoIs from
the RPN's current proposals plus the ground truth (py-faster-rcnn's proposal_target_layer) with the same
Fast R-CNN settings, its box targets normalised by py-faster-rcnn end2end's fixed statistics (means 0,
stds 0.1, 0.1, 0.2, 0.2); at test the detector scores the RPN's 300 best proposals."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader, Dataset

from cpfs_bench.bench.checkpoint import CheckpointError, load_checkpoint
from cpfs_bench.bench.config import protocol_values, resolve, scale_lr_step
from cpfs_bench.bench.runs import TrainingRun, caffe_step_lr, loader_workers, progress_bar
from cpfs_bench.bench.sampling import StepBatchSampler
from cpfs_bench.bench.voc_format import VOC_CLASSES
from cpfs_bench.bench.world.defaults import default_voc_world
from cpfs_bench.evaluate.backbone import batchnorm_on_running_statistics, finetuned_source
from cpfs_bench.evaluate.boxes import (
    apply_deltas,
    box_iou,
    clip_boxes,
    devkit_to_pixels,
    flip_boxes,
    pixels_to_devkit,
    regression_targets,
    valid_boxes,
)
from cpfs_bench.evaluate.datasets import (
    read_id_list,
    voc_detection_annotations,
    voc_image_path,
    voc_split_images,
    voc_year_dir,
)
from cpfs_bench.evaluate.configs import VOCDetConfig
from cpfs_bench.evaluate.evaluation import prepare
from cpfs_bench.evaluate.fast_rcnn import ROI_MAPPINGS, FastRCNN, fast_rcnn_loss, nms, sample_rois
from cpfs_bench.evaluate.faster_rcnn import BBOX_MEANS, BBOX_STDS, FasterRCNN
from cpfs_bench.evaluate.metrics import detection_ap
from cpfs_bench.evaluate.proposals import compute_proposals, load_proposals, proposals_name
from cpfs_bench.pretrain.alexnet import build_trunk

PROTOCOL = VOCDetConfig.PROTOCOL
PROTOCOL_ITERS = VOCDetConfig.iters
CLASSES = ("__background__", *VOC_CLASSES)
TRAIN_FROM = VOCDetConfig.TRAIN_FROM
DEDUP_SCALE = 1 / 16  # test.py: boxes that fall on the same conv5 cells are computed once
PRESETS = VOCDetConfig.PRESETS
PROTOCOL_FIELDS = ("init", "iters", "lr", "lr_step", "lr_gamma", "momentum", "weight_decay", "bias_lr_mult",
                   "images_per_batch", "rois_per_image", "fg_fraction", "fg_thresh", "bg_thresh_hi", "bg_thresh_lo",
                   "bbox_thresh", "train_scales", "train_max_size", "test_scale", "test_max_size", "flip", "nms",
                   "score_thresh", "max_per_image", "train_from", "use_difficult", "bn_mode", "train_images",
                   "test_images", "roi_mapping", "proposal_mode")
PROTOCOL_ROI_MAPPING = "fast-rcnn"  # the reference's; the default differs on purpose (evaluate/fast_rcnn.py)
RESUME_MUST_MATCH = ("voc", "proposals", *PROTOCOL_FIELDS, "init_images", "seed", "trunk_sha256")
RPN = VOCDetConfig.RPN
RPN_DEVIATION = "rpn: Faster R-CNN, region proposal network trained jointly (evaluate/faster_rcnn.py)"


def resolve_config(cfg: VOCDetConfig, explicit=()) -> tuple[VOCDetConfig, dict]:
    """(cfg with the preset and lr step resolved, deviations from the protocol); cfg.voc None = the embedded
    world (preset embedded), written later by the evaluation entry."""
    if cfg.train_from not in TRAIN_FROM:
        raise ValueError(f"unknown --train-from {cfg.train_from!r}; choose from {TRAIN_FROM}")
    if cfg.roi_mapping not in ROI_MAPPINGS:
        raise ValueError(f"unknown roi_mapping {cfg.roi_mapping!r}; choose from {ROI_MAPPINGS}")
    if cfg.bn_mode not in ("eval", "train"):
        raise ValueError(f"unknown bn_mode {cfg.bn_mode!r}; choose eval or train")
    cfg = replace(cfg, train_scales=tuple(int(s) for s in cfg.train_scales))
    protocol = {**protocol_values(VOCDetConfig, PROTOCOL_FIELDS), "roi_mapping": PROTOCOL_ROI_MAPPING}
    cfg, deviations = resolve(cfg, PRESETS, explicit, protocol, ("voc",))
    if cfg.proposals == RPN:
        deviations["proposals"] = RPN_DEVIATION
    return scale_lr_step(cfg, deviations, explicit, PROTOCOL_ITERS, PRESETS), deviations


def image_scale(height: int, width: int, target: int, max_size: int) -> float:
    """Fast R-CNN's prep_im_for_blob: shorter side to `target`, unless the longer side would exceed max_size."""
    scale = target / min(height, width)
    if round(scale * max(height, width)) > max_size:
        scale = max_size / max(height, width)
    return scale


def load_image(path, scale: float, mean, std, flipped: bool = False) -> torch.Tensor:
    """An image file -> normalised (3, round(H s), round(W s)), bilinear (cv2.resize INTER_LINEAR, as Fast R-CNN)."""
    import cv2

    image = np.asarray(Image.open(path).convert("RGB"), np.float32) / 255
    if flipped:
        image = image[:, ::-1]
    image = cv2.resize(np.ascontiguousarray(image), None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    x = torch.from_numpy(image).permute(2, 0, 1)
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


@dataclass
class RoIEntry:
    """One training image (or its mirror) with its RoIs: ground truth first, then proposals, 0-based."""
    image_id: str
    path: Path
    height: int
    width: int
    flipped: bool
    boxes: np.ndarray  # (K, 4)
    max_overlaps: np.ndarray  # (K,) IoU with the best ground-truth box
    labels: np.ndarray  # (K,) that box's class 1..20, 0 where no overlap
    targets: np.ndarray  # (K, 4) raw regression targets, 0 where max_overlaps < bbox_thresh


def image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.height, image.width


def roi_entries(voc, ids, annotations, proposals, cfg: VOCDetConfig) -> tuple[list[RoIEntry], dict]:
    """Fast R-CNN's training roidb (pascal_voc.py, imdb.py, roidb.py): ground truth merged with the
    proposals, overlaps, targets, mirrored copies. Returns (entries, counts of what was dropped)."""
    counts = {"images_without_objects": 0, "boxes_clipped": 0, "degenerate_dropped": 0, "difficult_left_out": 0}
    entries = []
    for image_id, props in zip(ids, proposals):
        path = voc_image_path(voc, "2007", image_id)
        height, width = image_size(path)
        boxes, labels, difficult = annotations[image_id]
        keep = np.ones(len(labels), bool) if cfg.use_difficult else ~difficult
        counts["difficult_left_out"] += int((~keep).sum())
        gt, gt_labels = devkit_to_pixels(boxes[keep]), labels[keep] + 1
        if not len(gt):
            counts["images_without_objects"] += 1
            continue
        all_boxes = np.concatenate([gt, props])
        clipped = clip_boxes(all_boxes, height, width)
        ok = valid_boxes(clipped)
        if not ok[:len(gt)].all():
            raise ValueError(f"{voc_year_dir(voc, '2007') / 'Annotations' / f'{image_id}.xml'}: object boxes "
                             f"{boxes[keep][~ok[:len(gt)]].tolist()} lie outside the {width}x{height} image")
        counts["boxes_clipped"] += int((clipped != all_boxes).any(1).sum())
        counts["degenerate_dropped"] += int((~ok).sum())
        for flipped in (False, True) if cfg.flip else (False,):
            b = flip_boxes(clipped[ok], width) if flipped else clipped[ok]
            g = b[:len(gt)]
            iou = box_iou(b, g)
            best = iou.argmax(1)
            max_overlaps = iou.max(1)
            roi_labels = np.where(max_overlaps > 0, gt_labels[best], 0)
            targets = np.zeros((len(b), 4))
            ex = max_overlaps >= cfg.bbox_thresh
            targets[ex] = regression_targets(b[ex], g[best[ex]])
            entries.append(RoIEntry(image_id, path, height, width, flipped, b, max_overlaps, roi_labels, targets))
    return entries, counts


def target_statistics(entries: list[RoIEntry], bbox_thresh: float, classes: int = len(CLASSES)):
    """Per-class mean and std of the regression targets over every training RoI with IoU >= bbox_thresh
    (roidb.py add_bbox_regression_targets). Returns float64 (classes, 4) means, stds; background row 0."""
    eps = 1e-14
    count = np.zeros((classes, 1)) + eps
    sums, squares = np.zeros((classes, 4)), np.zeros((classes, 4))
    for e in entries:
        ex = e.max_overlaps >= bbox_thresh
        np.add.at(count, e.labels[ex], 1)
        np.add.at(sums, e.labels[ex], e.targets[ex])
        np.add.at(squares, e.labels[ex], e.targets[ex] ** 2)
    means = sums / count
    stds = np.sqrt(np.maximum(squares / count - means ** 2, 0))
    means[0], stds[0] = 0, 0
    return means, stds


def training_image(e: RoIEntry, cfg: VOCDetConfig, rng: np.random.Generator, mean, std) -> tuple[torch.Tensor, float]:
    """The entry's image at a training scale drawn from rng (shorter side from cfg.train_scales, longer side at
    most cfg.train_max_size), mirrored if the entry is: (image (3, H, W) normalised, scale)."""
    target = cfg.train_scales[int(rng.integers(len(cfg.train_scales)))]
    scale = image_scale(e.height, e.width, target, cfg.train_max_size)
    return load_image(e.path, scale, mean, std, e.flipped), scale


class DetectionMinibatches(Dataset):
    """Training images with their sampled RoIs: item (i, seed) -> (image (3, H, W), rois (R, 4) at that
    scale, labels (R,), normalised targets (R, 4)). The scale and the RoI sample are drawn from `seed`."""

    def __init__(self, entries: list[RoIEntry], means, stds, cfg: VOCDetConfig, mean, std):
        self.entries, self.means, self.stds, self.cfg = entries, means, stds, cfg
        self.mean, self.std = mean, std

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, key):
        i, seed = key
        rng = np.random.default_rng(seed)
        e, cfg = self.entries[i], self.cfg
        image, scale = training_image(e, cfg, rng, self.mean, self.std)
        keep, n_fg = sample_rois(e.max_overlaps, cfg.rois_per_image, cfg.fg_fraction, cfg.fg_thresh,
                                 cfg.bg_thresh_hi, cfg.bg_thresh_lo, rng)
        labels = e.labels[keep].copy()
        labels[n_fg:] = 0
        targets = np.zeros((len(keep), 4))
        fg = labels > 0
        targets[fg] = (e.targets[keep][fg] - self.means[labels[fg]]) / self.stds[labels[fg]]
        return (image, torch.from_numpy(e.boxes[keep] * scale).float(), torch.from_numpy(labels.astype(np.int64)),
                torch.from_numpy(targets).float())


def collate_minibatch(items):
    """Images zero-padded (= the mean colour) at the bottom and right to one size (im_list_to_blob); RoIs
    prefixed by their image's index in the batch."""
    height = max(x.shape[1] for x, *_ in items)
    width = max(x.shape[2] for x, *_ in items)
    images = torch.stack([F.pad(x, (0, width - x.shape[2], 0, height - x.shape[1])) for x, *_ in items])
    rois = torch.cat([torch.cat([torch.full((len(r), 1), float(k)), r], 1) for k, (_, r, _, _) in enumerate(items)])
    return images, rois, torch.cat([it[2] for it in items]), torch.cat([it[3] for it in items])


class DetectionImages(Dataset):
    """Training images with their ground truth (entries from `roi_entries` without proposals), for Faster R-CNN,
    whose RoIs are sampled in the training step from the RPN's proposals: item (i, seed) -> (image (3, H, W),
    boxes (G, 4) at that scale, labels (G,) 1..20)."""

    def __init__(self, entries: list[RoIEntry], cfg: VOCDetConfig, mean, std):
        self.entries, self.cfg, self.mean, self.std = entries, cfg, mean, std

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, key):
        i, seed = key
        e = self.entries[i]
        image, scale = training_image(e, self.cfg, np.random.default_rng(seed), self.mean, self.std)
        # the entries are built without proposals: every box is a ground-truth box
        return image, torch.from_numpy(e.boxes * scale).float(), torch.from_numpy(e.labels.astype(np.int64))


def collate_images(items):
    """Images zero-padded at the bottom and right to one size; (images, their sizes before padding,
    [boxes (G, 4)], [labels (G,)])."""
    height = max(x.shape[1] for x, *_ in items)
    width = max(x.shape[2] for x, *_ in items)
    images = torch.stack([F.pad(x, (0, width - x.shape[2], 0, height - x.shape[1])) for x, *_ in items])
    return images, [tuple(x.shape[1:]) for x, *_ in items], [it[1] for it in items], [it[2] for it in items]


def proposal_minibatch(proposals: np.ndarray, gt: np.ndarray, gt_labels: np.ndarray, cfg: VOCDetConfig,
                       rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """py-faster-rcnn's proposal_target_layer for one image: the ground truth (G, 4) added to the RPN's proposals
    (K, 4), both pixels at the training scale, then Fast R-CNN's RoI sampling and box targets normalised by
    BBOX_MEANS / BBOX_STDS. Returns (rois (R, 4), labels (R,) int64, targets (R, 4))."""
    boxes = np.concatenate([gt, proposals])
    iou = box_iou(boxes, gt)
    best, max_overlaps = iou.argmax(1), iou.max(1)
    keep, n_fg = sample_rois(max_overlaps, cfg.rois_per_image, cfg.fg_fraction, cfg.fg_thresh, cfg.bg_thresh_hi,
                             cfg.bg_thresh_lo, rng)
    labels = gt_labels[best[keep]].astype(np.int64)
    labels[n_fg:] = 0
    targets = np.zeros((len(keep), 4))
    fg = keep[:n_fg]
    targets[:n_fg] = (regression_targets(boxes[fg], gt[best[fg]]) - BBOX_MEANS) / BBOX_STDS
    return boxes[keep], labels, targets


def set_modes(model: FastRCNN, cfg: VOCDetConfig) -> None:
    """Train mode (dropout on); BatchNorm on running statistics when bn_mode is "eval"; conv1 fixed
    (eval mode, no gradients) when training from conv2."""
    model.train()
    if cfg.bn_mode == "eval":
        batchnorm_on_running_statistics(model)
    if cfg.train_from == "conv2":
        model.trunk.conv1.eval()


def parameter_groups(model: FastRCNN, cfg: VOCDetConfig) -> list[dict]:
    """Weights at lr with weight decay, biases at lr x bias_lr_mult without (BatchNorm scales count as
    weights); conv1 left out when training from conv2, and what --init froze (a folded BatchNorm's scale)."""
    fixed = {id(p) for p in model.trunk.conv1.parameters()} if cfg.train_from == "conv2" else set()
    params = [(n, p) for n, p in model.named_parameters() if id(p) not in fixed and p.requires_grad]
    return [{"params": [p for n, p in params if not n.endswith("bias")], "lr_mult": 1.0,
             "weight_decay": cfg.weight_decay},
            {"params": [p for n, p in params if n.endswith("bias")], "lr_mult": cfg.bias_lr_mult, "weight_decay": 0.0}]


def training_losses(model: FastRCNN, batch, cfg: VOCDetConfig, device, it: int) -> tuple[dict, torch.Tensor]:
    """One minibatch's losses ({"loss_cls", "loss_bbox"}, with a FasterRCNN also the RPN's "loss_rpn_cls",
    "loss_rpn_bbox"; all weighted 1 as in the reference prototxts) and the RoIs' labels (R,)."""
    if not isinstance(model, FasterRCNN):
        images, rois, labels, targets = batch
        scores, deltas = model(images.to(device, non_blocking=True), rois.to(device))
        loss_cls, loss_box = fast_rcnn_loss(scores.float(), deltas.float(), labels.to(device), targets.to(device))
        return {"loss_cls": loss_cls, "loss_bbox": loss_box}, labels
    images, sizes, gt_boxes, gt_labels = batch
    images = images.to(device, non_blocking=True)
    conv5 = model.features(images)
    proposals, rpn_losses = model.propose(images, sizes, conv5, [g.to(device) for g in gt_boxes])
    rng = np.random.default_rng([cfg.seed, it])  # the RoI draw of step `it`, the same after a resume
    rois, labels, targets = [], [], []
    for k, (props, gt, gl) in enumerate(zip(proposals, gt_boxes, gt_labels)):
        r, lab, t = proposal_minibatch(props.float().cpu().double().numpy(), gt.double().numpy(), gl.numpy(), cfg,
                                       rng)
        rois.append(np.concatenate([np.full((len(r), 1), k), r], 1))
        labels.append(lab)
        targets.append(t)
    rois = torch.from_numpy(np.concatenate(rois)).float().to(device)
    labels = torch.from_numpy(np.concatenate(labels))
    scores, deltas = model.head(conv5, rois)
    loss_cls, loss_box = fast_rcnn_loss(scores.float(), deltas.float(), labels.to(device),
                                        torch.from_numpy(np.concatenate(targets)).float().to(device))
    return {"loss_cls": loss_cls, "loss_bbox": loss_box, "loss_rpn_cls": rpn_losses["loss_objectness"].float(),
            "loss_rpn_bbox": rpn_losses["loss_rpn_box_reg"].float()}, labels


def train(cfg: VOCDetConfig, model: FastRCNN, info: dict, data: DetectionMinibatches | DetectionImages, counts: dict,
          means: np.ndarray, stds: np.ndarray, device, progress: bool, stop_after: int | None = None) -> bool:
    """The training loop in cfg.out (resumable); True when complete, False when stopped early."""
    if cfg.train_from == "conv2":
        model.trunk.conv1.requires_grad_(False)
    optimizer = torch.optim.SGD(parameter_groups(model, cfg), lr=cfg.lr, momentum=cfg.momentum, fused=True)
    run = TrainingRun.for_config(cfg, "eval voc07-det", must_match=RESUME_MUST_MATCH, total=cfg.iters, unit="iteration",
                                 log_key="iter", desc="voc07-det Fast R-CNN", device=device, progress=progress,
                                 stop_after=stop_after, trunk_sha256=info["sha256"])
    state = run.restore(optimizer)  # RNG too: dropout draws from the global one
    if state:
        model.trunk.load_state_dict(state["trunk"])
        model.load_state_dict({**model.state_dict(), **state["head"]})
    sampler = StepBatchSampler(len(data), cfg.images_per_batch, cfg.seed, run.step, cfg.iters)
    loader = DataLoader(data, batch_sampler=sampler,
                        collate_fn=collate_images if isinstance(model, FasterRCNN) else collate_minibatch,
                        num_workers=loader_workers(cfg.workers, device), pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(cfg.seed))
    extra = {"normalization": {"mean": list(info["mean"]), "std": list(info["std"])}, "classes": list(CLASSES),
             "trunk_sha256": info["sha256"], "finetuned_from": info["path"], "finetuned_from_step": info["step"],
             "bbox_means": means.tolist(), "bbox_stds": stds.tolist(), "roidb_counts": counts,
             "roi_mapping": cfg.roi_mapping, "proposals": cfg.proposals or f"selective-search-{cfg.proposal_mode}"}

    def parts() -> dict:
        head = {k: v for k, v in model.state_dict().items() if not k.startswith("trunk.")}
        return {"arch": info["arch"], "trunk": model.trunk.state_dict(), "head": head, "loss": "voc07-det-fast-rcnn",
                "extra": extra}

    set_modes(model, cfg)
    with run.start(optimizer, parts):
        if state is None:
            run.write({"iter": 0, **counts, "training_images": len(data)})
        for batch in run.batches(loader):
            lr = caffe_step_lr(cfg.lr, cfg.lr_gamma, cfg.lr_step, run.step)
            for g in optimizer.param_groups:
                g["lr"] = lr * g["lr_mult"]
            with run.autocast():
                losses, labels = training_losses(model, batch, cfg, device, run.step)
            loss = sum(losses.values())
            value = run.check_finite(loss)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            run.step_done({"loss": value, **{k: v.item() for k, v in losses.items()}, "lr": lr,
                           "foreground": int((labels > 0).sum()), "rois": len(labels)},
                          postfix={"loss": f"{value:.3f}", "lr": f"{lr:.2g}"})
    kind = "Faster R-CNN" if isinstance(model, FasterRCNN) else "Fast R-CNN"
    return run.finish(plot_title=f"voc07-det {kind} ({info['arch']})")


@torch.no_grad()
def detect(model: FastRCNN, path, proposals: np.ndarray | None, cfg: VOCDetConfig, mean, std, means, stds, device,
           chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """One test image: (class probabilities (K, 21), regressed boxes (K, 84) clipped, 0-based) for its K
    proposals, once clipped to the image and rid of degenerate boxes (test.py im_detect, with its
    duplicate-RoI shortcut). proposals (K, 4) 0-based pixels, or None with a FasterRCNN: its RPN's."""
    height, width = image_size(Path(path))
    scale = image_scale(height, width, cfg.test_scale, cfg.test_max_size)
    image = load_image(path, scale, mean, std)[None].to(device)
    conv5 = model.features(image)
    if proposals is None:
        proposals = model.propose(image, [tuple(image.shape[-2:])], conv5)[0][0].float().cpu().double().numpy() / scale
    proposals = clip_boxes(proposals, height, width)
    proposals = proposals[valid_boxes(proposals)]
    rois = proposals * scale
    _, index, inverse = np.unique(np.round(rois * DEDUP_SCALE), axis=0, return_index=True, return_inverse=True)
    unique = proposals[index]
    scores, deltas = [], []
    for s in range(0, len(index), chunk):
        part = rois[index[s:s + chunk]]
        batch_rois = torch.from_numpy(np.concatenate([np.zeros((len(part), 1)), part], 1)).float().to(device)
        class_scores, box_deltas = model.head(conv5, batch_rois)
        scores.append(F.softmax(class_scores.float(), 1).cpu().double().numpy())
        deltas.append(box_deltas.float().cpu().double().numpy())
    if not len(index):
        return np.zeros((0, len(CLASSES))), np.zeros((0, 4 * len(CLASSES)))
    deltas = np.concatenate(deltas) * stds.reshape(1, -1) + means.reshape(1, -1)
    boxes = clip_boxes(apply_deltas(unique, deltas), height, width)
    inverse = inverse.reshape(-1)
    return np.concatenate(scores)[inverse], boxes[inverse]


def image_detections(scores: np.ndarray, boxes: np.ndarray, cfg: VOCDetConfig) -> dict[int, np.ndarray]:
    """{class 1..20: (N, 5) x1, y1, x2, y2, score} after the score threshold, per-class NMS and the
    per-image cap (test.py test_net)."""
    out = {}
    for c in range(1, len(CLASSES)):
        keep = np.flatnonzero(scores[:, c] > cfg.score_thresh)
        dets = np.concatenate([boxes[keep, 4 * c:4 * c + 4], scores[keep, c:c + 1]], 1)
        out[c] = dets[nms(dets[:, :4], dets[:, 4], cfg.nms)] if len(dets) else np.zeros((0, 5))
    if cfg.max_per_image > 0:
        all_scores = np.concatenate([d[:, 4] for d in out.values()])
        if len(all_scores) > cfg.max_per_image:
            threshold = np.sort(all_scores)[-cfg.max_per_image]
            out = {c: d[d[:, 4] >= threshold] for c, d in out.items()}
    return out


def write_comp4(folder: Path, ids, detections: list[dict[int, np.ndarray]]) -> list[Path]:
    """The devkit's result files, comp4_det_test_<class>.txt: `image_id score xmin ymin xmax ymax` per
    line, 1-based boxes (test.py's format: score %.3f, coordinates %.1f)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for c, name in enumerate(CLASSES[1:], start=1):
        lines = []
        for image_id, dets in zip(ids, detections):
            for x1, y1, x2, y2, score in np.concatenate([pixels_to_devkit(dets[c][:, :4]), dets[c][:, 4:]], 1):
                lines.append(f"{image_id} {score:.3f} {x1:.1f} {y1:.1f} {x2:.1f} {y2:.1f}\n")
        path = folder / f"comp4_det_test_{name}.txt"
        path.write_text("".join(lines))
        paths.append(path)
    return paths


def read_comp4(path) -> list[tuple[str, float, list[float]]]:
    """A comp4_det_test_<class>.txt -> [(image id, score, [xmin, ymin, xmax, ymax] 1-based)]."""
    out = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        parts = line.split()
        if len(parts) != 6:
            raise ValueError(f"{path}:{n}: expected 'image_id score xmin ymin xmax ymax', got {line!r}")
        out.append((parts[0], float(parts[1]), [float(v) for v in parts[2:]]))
    return out


def score_comp4(folder: Path, annotations: dict) -> dict[str, float]:
    """VOC07 11-point AP (IoU > 0.5) of every class from the comp4 files in folder; {class: AP in percent}."""
    ap = {}
    for k, name in enumerate(VOC_CLASSES):
        truth = {image_id: (boxes[labels == k], difficult[labels == k])
                 for image_id, (boxes, labels, difficult) in annotations.items()}
        ap[name] = 100 * detection_ap(read_comp4(folder / f"comp4_det_test_{name}.txt"), truth, 0.5, True)
    return ap


def draw_detections(path, dets: dict[int, np.ndarray], out: Path, threshold: float = 0.3, top: int = 10) -> None:
    """The image with its best detections (score >= threshold, at most `top`) drawn, class and score."""
    image = Image.open(path).convert("RGB")
    draw = ImageDraw.Draw(image)
    rows = sorted(((d[4], c, d[:4]) for c, ds in dets.items() for d in ds if d[4] >= threshold), key=lambda r: -r[0])
    for score, c, (x1, y1, x2, y2) in rows[:top]:
        draw.rectangle([x1, y1, x2, y2], outline=(255, 40, 40), width=2)
        draw.text((x1 + 2, y1 + 1), f"{CLASSES[c]} {score:.2f}", fill=(255, 255, 0))
    image.save(out)


def split_proposals(cfg: VOCDetConfig, split: str, ids: list[str], progress: bool) -> tuple[list[np.ndarray], str]:
    """Proposals of the split's first len(ids) images: from cfg.proposals (Fast R-CNN's files for the whole
    split) or computed by selective search (cached). Returns (boxes per image, the file read)."""
    split_file = voc_year_dir(cfg.voc, "2007") / "ImageSets" / "Main" / f"{split}.txt"
    if cfg.proposals:
        path = Path(cfg.proposals) / proposals_name("2007", split)
        boxes = load_proposals(path, read_id_list(split_file), split_file)
        return boxes[:len(ids)], str(path)
    path = compute_proposals(cfg.voc, "2007", split, image_ids=ids, mode=cfg.proposal_mode, workers=cfg.workers,
                             progress=progress)
    return load_proposals(path, ids, split_file), str(path)


def split_ids(voc, split: str, limit: int | None) -> list[str]:
    ids = read_id_list(voc_year_dir(voc, "2007") / "ImageSets" / "Main" / f"{split}.txt")
    return ids[:limit] if limit else ids


def trainval_images(cfg) -> list[Path]:
    """The trainval image files the detector trains on (what --init measures)."""
    return voc_split_images(cfg.voc, "2007", "trainval", cfg.train_images)


def load_trained(path, device) -> tuple[FastRCNN, dict, dict]:
    """A `final.pt` written by voc07-det -> (model, info of the checkpoint it was trained from, its extra)."""
    state = load_checkpoint(path)
    if state.get("loss") != "voc07-det-fast-rcnn":
        raise CheckpointError(f"{path}: not a voc07-det model (its loss is {state.get('loss')!r}); --model takes "
                              f"the final.pt of a `bench eval voc07-det` run")
    extra = state.get("extra") or {}
    detector = FasterRCNN if extra.get("proposals") == RPN else FastRCNN
    model = detector(build_trunk(state["arch"]), roi_mapping=extra.get("roi_mapping", "centres"))
    model.trunk.load_state_dict(state["trunk"])
    model.load_state_dict({**model.state_dict(), **state["head"]})
    return model.to(device), finetuned_source(state), extra


def run(cfg: VOCDetConfig, progress: bool = True, explicit=(), stop_after: int | None = None) -> dict:
    """Train Fast R-CNN (or, with cfg.model, load a trained one), test, write comp4 files, append records.
    Returns {"mAP", "ap" {class: %}, "out", "model", "comp4", "store", "method", "run", "deviations",
    "seconds", "seconds_per_iter", "iters", "counts"}, or {"out", "stopped_at"} when stop_after left the
    run early, resumable."""
    trained = {}  # the extra of the --model checkpoint

    def load_model(path, device):
        model, info, trained["extra"] = load_trained(path, device)
        return model, info

    ev = prepare(cfg, kind="voc07-det", task="voc07_det", protocol=PROTOCOL, resolve_config=resolve_config,
                 explicit=explicit, default_world=default_voc_world, progress=progress, trunk="trainable",
                 load_model=load_model, init_images=trainval_images)
    cfg, device, info = ev.cfg, ev.device, ev.info
    counts, seconds_per_iter = {}, None
    if ev.eval_only:
        model, extra = ev.model, trained["extra"]
        if cfg.proposals == RPN and not isinstance(model, FasterRCNN):
            raise ValueError(f"{cfg.model}: trained with proposals {extra.get('proposals')!r}, it has no RPN to "
                             f"propose with; give --proposals a folder, or leave it out for selective search")
        if isinstance(model, FasterRCNN) and cfg.proposals is None:
            cfg = replace(cfg, proposals=RPN)
            ev.deviations["proposals"] = RPN_DEVIATION
        means, stds = np.array(extra["bbox_means"]), np.array(extra["bbox_stds"])
        counts = extra.get("roidb_counts", {})
        model_path = Path(cfg.model)
    else:
        detector = FasterRCNN if cfg.proposals == RPN else FastRCNN
        model = detector(ev.trunk, roi_mapping=cfg.roi_mapping).to(device)
        ids = split_ids(cfg.voc, "trainval", cfg.train_images)
        if cfg.proposals == RPN:
            proposals = [np.zeros((0, 4))] * len(ids)
        else:
            proposals, _ = split_proposals(cfg, "trainval", ids, progress)
        entries, counts = roi_entries(cfg.voc, ids, voc_detection_annotations(cfg.voc, "2007", "trainval"), proposals,
                                      cfg)
        if not entries:
            raise ValueError(f"{cfg.voc}: no trainval image has a usable object")
        if cfg.proposals == RPN:
            means = np.tile(BBOX_MEANS, (len(CLASSES), 1))
            stds = np.tile(BBOX_STDS, (len(CLASSES), 1))
            data = DetectionImages(entries, cfg, info["mean"], info["std"])
        else:
            means, stds = target_statistics(entries, cfg.bbox_thresh)
            data = DetectionMinibatches(entries, means, stds, cfg, info["mean"], info["std"])
        train_start = time.perf_counter()
        if not train(cfg, model, info, data, counts, means, stds, device, progress, stop_after):
            return {"out": cfg.out, "stopped_at": stop_after}
        seconds_per_iter = (time.perf_counter() - train_start) / cfg.iters
        model_path = ev.out / "final.pt"

    out = ev.out
    test_ids = split_ids(cfg.voc, "test", cfg.test_images)
    if cfg.proposals == RPN:
        test_proposals, proposal_file = [None] * len(test_ids), RPN
    else:
        test_proposals, proposal_file = split_proposals(cfg, "test", test_ids, progress)
    annotations = voc_detection_annotations(cfg.voc, "2007", "test")
    annotations = {i: annotations[i] for i in test_ids}
    model.eval()
    detections = []
    if cfg.save_predictions:
        (out / "predictions").mkdir(parents=True, exist_ok=True)
    for n, (image_id, props) in enumerate(progress_bar(list(zip(test_ids, test_proposals)), desc="voc07-det test",
                                                       unit="image", disable=not progress)):
        path = voc_image_path(cfg.voc, "2007", image_id)
        scores, boxes = detect(model, path, props, cfg, info["mean"], info["std"], means, stds, device)
        detections.append(image_detections(scores, boxes, cfg))
        if n < cfg.save_predictions:
            draw_detections(path, detections[-1], out / "predictions" / f"{image_id}.png")
    comp4 = out / "comp4"
    write_comp4(comp4, test_ids, detections)
    ap = score_comp4(comp4, annotations)
    valid = [v for v in ap.values() if not math.isnan(v)]
    mean_ap = float(np.mean(valid)) if valid else float("nan")

    ev.test_set(cfg.voc, len(VOC_CLASSES), "test", len(test_ids))
    per_class = {c: None if math.isnan(v) else v for c, v in ap.items()}
    ev.record("mAP", mean_ap, extra={"ap_metric": "devkit VOC07 11-point, IoU > 0.5, from the comp4 files",
                                     "ap": per_class, "comp4": str(comp4), "run_folder": str(out),
                                     "model": str(model_path), "arch": info["arch"], "test_proposals": proposal_file,
                                     "roidb_counts": counts, "train_from": cfg.train_from,
                                     "roi_mapping": cfg.roi_mapping})
    for c, v in per_class.items():
        if v is not None:
            ev.record(f"AP_{c}", v, extra={"ap_metric": "devkit VOC07 11-point"})
    store = ev.write()
    return ev.summary(mAP=mean_ap, ap=ap, model=str(model_path), comp4=str(comp4), store=str(store),
                      seconds_per_iter=seconds_per_iter, iters=cfg.iters, counts=counts)
