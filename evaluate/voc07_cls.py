"""`bench eval voc07-cls`: Krähenbühl et al.'s VOC2007 classification fine-tuning (the paper's Table 1
"Cls."), ported from the authors' reference code (philkr/voc-classification: src/train_cls.py,
data.py, python_layers.py; ../shared/PROTOCOLS.md).

The whole AlexNet (or the layers from --train-from on) is fine-tuned on VOC2007 trainval with a new
20-way fc8 after drop7 and tested on VOC2007 test:
- SGD momentum 0.9, lr 0.001 (biases x2), batch 16, 80k iterations, lr x0.5 every 10k, weight decay
  1e-6 on every parameter, the gradient's global L2 norm clipped to 10 (before weight decay, as
  Caffe's solver does); fc8 ~ N(0, 0.01), bias 0.1.
- Augmentation: the image scaled by s ~ U[0.5, 2], a random 227 crop (an image smaller than the crop
  is padded with the mean colour), a random mirror.
- Loss: sigmoid cross-entropy summed over the labels that are not "difficult" (0 in the devkit),
  divided by the batch size.
- Test: each image 10 times through the training augmentation, fc8 scores summed; the first crop
  alone gives the 1-crop score. AP per class: the reference's (scikit-learn's, ties broken against
  the positives) and the devkit's 11-point one; both recorded, Table 1 shows the reference's.
`--iters` scales the whole schedule (the lr step with it, unless --lr-step is typed). BatchNorm
trunks fine-tune in train mode (batch statistics, batch 16); layers before --train-from are frozen
with their BatchNorm in eval mode. Every difference from the protocol is a recorded deviation.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cpfs_bench.bench.checkpoint import CheckpointError, load_checkpoint
from cpfs_bench.bench.config import protocol_values, resolve, scale_lr_step
from cpfs_bench.bench.runs import TrainingRun, caffe_step_lr, loader_workers, progress_bar
from cpfs_bench.bench.sampling import StepBatchSampler
from cpfs_bench.bench.voc_format import VOC_CLASSES
from cpfs_bench.bench.world.defaults import default_voc_world
from cpfs_bench.evaluate.backbone import batchnorm_on_running_statistics, finetuned_source
from cpfs_bench.evaluate.configs import VOCClsConfig
from cpfs_bench.evaluate.datasets import voc_classification_labels, voc_image_path, voc_split_images
from cpfs_bench.evaluate.evaluation import prepare
from cpfs_bench.evaluate.metrics import classification_ap
from cpfs_bench.pretrain.alexnet import build_trunk

PROTOCOL = VOCClsConfig.PROTOCOL
PROTOCOL_ITERS = VOCClsConfig.iters
TRAIN_FROM = VOCClsConfig.TRAIN_FROM
PRESETS = VOCClsConfig.PRESETS
PROTOCOL_FIELDS = ("init", "bn_mode", "train_from", "iters", "batch_size", "lr", "bias_lr_mult", "momentum",
                   "weight_decay", "lr_step", "lr_gamma", "clip_grad_norm", "min_scale", "max_scale", "crop", "test_crops")
RESUME_MUST_MATCH = ("voc", "init", "init_images", "bn_mode", "train_from", "iters", "batch_size", "lr", "bias_lr_mult",
                     "momentum", "weight_decay", "lr_step", "lr_gamma", "clip_grad_norm", "min_scale", "max_scale", "crop",
                     "seed", "trunk_sha256")


def resolve_config(cfg: VOCClsConfig, explicit=()) -> tuple[VOCClsConfig, dict]:
    """(cfg with the preset and lr step resolved, deviations from the protocol); cfg.voc None = the embedded
    world (preset embedded), written later by the evaluation entry."""
    if cfg.bn_mode not in ("eval", "train"):
        raise ValueError(f"unknown bn_mode {cfg.bn_mode!r}; choose eval or train")
    if cfg.train_from not in TRAIN_FROM:
        raise ValueError(f"unknown --train-from {cfg.train_from!r}; choose from {TRAIN_FROM}")
    if not 0 < cfg.min_scale <= cfg.max_scale:
        raise ValueError(f"need 0 < min_scale <= max_scale, got {cfg.min_scale} and {cfg.max_scale}")
    cfg, deviations = resolve(cfg, PRESETS, explicit, protocol_values(VOCClsConfig, PROTOCOL_FIELDS), ("voc",))
    return scale_lr_step(cfg, deviations, explicit, PROTOCOL_ITERS, PRESETS), deviations


def step_lr(cfg: VOCClsConfig, it: int) -> float:
    """Caffe's "step" policy: lr * gamma^floor(it / lr_step)."""
    return caffe_step_lr(cfg.lr, cfg.lr_gamma, cfg.lr_step, it)


class ScaleCropMirror:
    """The reference's augmentation on a PIL image: scale by s ~ U[min_scale, max_scale], pad to at least
    crop x crop with the mean colour, random crop, random mirror; -> normalised (3, crop, crop).
    Draws from `generator` (torch), so test crops are reproducible per image."""

    def __init__(self, mean, std, min_scale: float = 0.5, max_scale: float = 2.0, crop: int = 227):
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)
        self.min_scale, self.max_scale, self.crop = min_scale, max_scale, crop

    def __call__(self, image: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        u = torch.rand(4, generator=generator).tolist()
        s = self.min_scale + (self.max_scale - self.min_scale) * u[0]
        w, h = image.size
        image = image.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BILINEAR)
        x = torch.from_numpy(np.asarray(image, np.float32) / 255).permute(2, 0, 1)
        x = (x - self.mean) / self.std  # padding with zeros below = padding with the mean colour
        _, h, w = x.shape
        if h < self.crop or w < self.crop:
            x = F.pad(x, (0, max(0, self.crop - w), 0, max(0, self.crop - h)))
            _, h, w = x.shape
        top, left = int(u[1] * (h - self.crop + 1)), int(u[2] * (w - self.crop + 1))
        x = x[:, top:top + self.crop, left:left + self.crop]
        return x.flip(-1) if u[3] < 0.5 else x


class VOCClassification(Dataset):
    """One VOC split's images with their image-level labels: item i -> (image tensor, labels int8 (20,) in
    {1, -1, 0}). With `crops` > 1 an item is `crops` augmented views (crops, 3, H, W), drawn from a
    generator seeded by (seed, i): the same test crops on every run."""

    def __init__(self, root, year: str, split: str, transform: ScaleCropMirror, crops: int = 0, seed: int = 0):
        self.root, self.year = root, year
        self.ids, self.labels = voc_classification_labels(root, year, split)
        self.transform, self.crops, self.seed = transform, crops, seed

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, key):
        """key: i (test views, or one view from the global RNG) or (i, seed) from StepBatchSampler."""
        i, seed = key if isinstance(key, tuple) else (key, None)
        image = Image.open(voc_image_path(self.root, self.year, self.ids[i])).convert("RGB")
        labels = torch.from_numpy(self.labels[i].astype(np.int64))
        if not self.crops:
            return self.transform(image, None if seed is None else torch.Generator().manual_seed(seed)), labels
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        return torch.stack([self.transform(image, generator) for _ in range(self.crops)]), labels


def multilabel_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sigmoid cross-entropy summed over the labels that are not difficult, / batch size.
    logits (B, C) float; labels (B, C) in {1, -1, 0} (0 = difficult: ignored)."""
    target = (labels == 1).to(logits.dtype)
    keep = (labels != 0).to(logits.dtype)
    return (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * keep).sum() / len(logits)


class VOCClassifier(nn.Module):
    """Trunk up to drop7 -> a new fc8 (4096 -> 20), N(0, 0.01) weights and bias 0.1 as in the reference."""

    def __init__(self, trunk: nn.Module, classes: int = len(VOC_CLASSES)):
        super().__init__()
        self.trunk = trunk
        self.fc8 = nn.Linear(4096, classes)
        nn.init.normal_(self.fc8.weight, std=0.01)
        nn.init.constant_(self.fc8.bias, 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc8(self.trunk(x))


def frozen_modules(trunk: nn.Module, train_from: str) -> list[nn.Module]:
    """The trunk's modules that stay fixed when training from `train_from` (conv1: none; fc6: the
    convolutions; fc8: the whole trunk)."""
    if train_from == "conv1":
        return []
    if train_from == "fc8":
        return [trunk]
    if trunk.arch == "alexnet":
        return [trunk.features]
    return [getattr(trunk, name) for name in ("conv1", "conv2", "conv3", "conv4", "conv5")]


def parameter_groups(model: VOCClassifier, cfg: VOCClsConfig) -> list[dict]:
    """Trainable parameters in two SGD groups: biases at lr x bias_lr_mult, the rest at lr; weight decay
    on both (Caffe's decay_mult 1 for weights and biases)."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [{"params": [p for n, p in params if not n.endswith("bias")], "lr_mult": 1.0},
            {"params": [p for n, p in params if n.endswith("bias")], "lr_mult": cfg.bias_lr_mult}]


@torch.no_grad()
def test_scores(model: VOCClassifier, dataset: VOCClassification, batch_size: int, device, workers: int,
                progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """(scores summed over the dataset's crops (n, 20), first-crop scores (n, 20)), model in eval mode."""
    model.eval()
    loader = DataLoader(dataset, batch_size=max(1, batch_size // dataset.crops), num_workers=workers)
    summed, first = [], []
    for views, _ in progress_bar(loader, desc=f"voc07-cls test ({dataset.crops} crops)", unit="batch",
                                 disable=not progress):
        b, k = views.shape[:2]
        out = model(views.flatten(0, 1).to(device)).float().view(b, k, -1).cpu()
        summed.append(out.sum(1))
        first.append(out[:, 0])
    return torch.cat(summed).numpy(), torch.cat(first).numpy()


def average_precisions(scores: np.ndarray, labels: np.ndarray, metric: str) -> list[float]:
    """Per-class AP in percent; scores (n, 20), labels (n, 20) in {1, -1, 0}."""
    return [100 * classification_ap(scores[:, c], labels[:, c], metric) for c in range(labels.shape[1])]


def _per_class(values: list[float]) -> dict:
    """{class: AP percent, or None where the test split has no positive (AP undefined)}."""
    return {c: None if math.isnan(v) else v for c, v in zip(VOC_CLASSES, values)}


def write_scores(path: Path, ids, scores: np.ndarray) -> None:
    """image id and the 20 class scores per line (CSV with a header)."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", *VOC_CLASSES])
        for image_id, row in zip(ids, scores):
            writer.writerow([image_id, *(f"{v:.6g}" for v in row)])


def finetune(cfg: VOCClsConfig, trunk: nn.Module, info: dict, device, progress: bool,
             stop_after: int | None = None) -> VOCClassifier | None:
    """The fine-tuning loop in cfg.out (resumable); the model, or None when stopped early."""
    model = VOCClassifier(trunk).to(device)
    fixed = frozen_modules(trunk, cfg.train_from)
    for module in fixed:
        module.requires_grad_(False)
    optimizer = torch.optim.SGD(parameter_groups(model, cfg), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay, fused=True)
    run = TrainingRun.for_config(cfg, "eval voc07-cls", must_match=RESUME_MUST_MATCH, total=cfg.iters, unit="iteration",
                                 log_key="iter", desc="voc07-cls fine-tuning", device=device, progress=progress,
                                 stop_after=stop_after, trunk_sha256=info["sha256"])
    state = run.restore(optimizer)  # RNG too: dropout draws from the global one
    if state:
        model.trunk.load_state_dict(state["trunk"])
        model.fc8.load_state_dict(state["head"])
    augment = ScaleCropMirror(info["mean"], info["std"], cfg.min_scale, cfg.max_scale, cfg.crop)
    train_set = VOCClassification(cfg.voc, "2007", "trainval", augment)
    # batches by iteration, augmentation seeded per sample: a resumed run sees what the uninterrupted one would
    sampler = StepBatchSampler(len(train_set), cfg.batch_size, cfg.seed, run.step, cfg.iters)
    loader = DataLoader(train_set, batch_sampler=sampler, num_workers=loader_workers(cfg.workers, device),
                        pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(cfg.seed))
    # (its own generator: creating the iterator would otherwise draw from the global RNG, which dropout uses)
    extra = {"normalization": {"mean": list(info["mean"]), "std": list(info["std"])}, "classes": list(VOC_CLASSES),
             "trunk_sha256": info["sha256"], "finetuned_from": info["path"], "finetuned_from_step": info["step"],
             "train_from": cfg.train_from}
    model.train()
    if cfg.bn_mode == "eval":
        batchnorm_on_running_statistics(model)
    for module in fixed:  # frozen layers keep their BatchNorm statistics
        module.eval()
    trainable = [p for g in optimizer.param_groups for p in g["params"]]
    with run.start(optimizer, lambda: dict(arch=info["arch"], trunk=model.trunk.state_dict(),
                                           head=model.fc8.state_dict(), loss="voc07-cls", extra=extra)):
        for images, labels in run.batches(loader):
            lr = step_lr(cfg, run.step)
            for g in optimizer.param_groups:
                g["lr"] = lr * g["lr_mult"]
            with run.autocast():
                logits = model(images.to(device, non_blocking=True))
            loss = multilabel_loss(logits.float(), labels.to(device))
            value = run.check_finite(loss)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(trainable, cfg.clip_grad_norm)
            optimizer.step()
            run.step_done({"loss": value, "lr": lr, "grad_norm": float(grad_norm)},
                          postfix={"loss": f"{value:.3f}", "lr": f"{lr:.2g}"})
    if not run.finish(plot_title=f"voc07-cls fine-tuning ({info['arch']})"):
        return None
    return model


def load_finetuned(path, device) -> tuple[VOCClassifier, dict]:
    """A `final.pt` written by voc07-cls -> (model, info of the checkpoint it was fine-tuned from)."""
    state = load_checkpoint(path)
    if state.get("loss") != "voc07-cls":
        raise CheckpointError(f"{path}: not a voc07-cls fine-tuned model (its loss is {state.get('loss')!r}); "
                              f"--model takes the final.pt of a `bench eval voc07-cls` run")
    trunk = build_trunk(state["arch"])
    trunk.load_state_dict(state["trunk"])
    model = VOCClassifier(trunk)
    model.fc8.load_state_dict(state["head"])
    return model.to(device), finetuned_source(state)


def trainval_images(cfg) -> list[Path]:
    """The VOC2007 trainval image files (what --init measures)."""
    return voc_split_images(cfg.voc, "2007", "trainval")


def run(cfg: VOCClsConfig, progress: bool = True, explicit=(), stop_after: int | None = None) -> dict:
    """Fine-tune (or, with cfg.model, load a fine-tuned model), test, append records. Returns {"mAP":
    {"reference", "voc07", "reference_1crop"}, "ap": {metric: [20]}, "out", "model", "scores", "store",
    "method", "run", "deviations", "seconds", "voc", "test_crops", "iters"}, or {"out", "stopped_at"}
    when stop_after (iterations) left the run early, resumable, as a preempted job would."""
    ev = prepare(cfg, kind="voc07-cls", task="voc07_cls", protocol=PROTOCOL, resolve_config=resolve_config,
                 explicit=explicit, default_world=default_voc_world, progress=progress, trunk="trainable",
                 load_model=load_finetuned, init_images=trainval_images)
    cfg, device, info = ev.cfg, ev.device, ev.info
    if ev.eval_only:  # re-score a saved fine-tuned model
        model, model_path = ev.model, Path(cfg.model)
    else:
        model = finetune(cfg, ev.trunk, info, device, progress, stop_after)
        if model is None:
            return {"out": cfg.out, "stopped_at": stop_after}
        model_path = ev.out / "final.pt"

    augment = ScaleCropMirror(info["mean"], info["std"], cfg.min_scale, cfg.max_scale, cfg.crop)
    test_set = VOCClassification(cfg.voc, "2007", "test", augment, crops=cfg.test_crops, seed=cfg.seed)
    summed, first = test_scores(model, test_set, cfg.batch_size, device, loader_workers(cfg.workers, device), progress)
    write_scores(ev.out / "scores_test.csv", test_set.ids, summed)
    ap = {"reference": average_precisions(summed, test_set.labels, "sklearn"),
          "voc07": average_precisions(summed, test_set.labels, "voc07"),
          "reference_1crop": average_precisions(first, test_set.labels, "sklearn")}
    maps = {k: float(np.nanmean(v)) for k, v in ap.items()}

    ev.test_set(cfg.voc, len(VOC_CLASSES), "test", len(test_set))
    ev.record("mAP", maps["reference"], extra={
        "ap_metric": "sklearn (reference code, score - 1e-5 x label)", "test_crops": cfg.test_crops,
        "ap": _per_class(ap["reference"]), "mAP_voc07_11pt": maps["voc07"], "mAP_1crop": maps["reference_1crop"],
        "train_from": cfg.train_from, "bn_mode": cfg.bn_mode, "run_folder": str(ev.out), "model": str(model_path),
        "arch": info["arch"]})
    ev.record("mAP_voc07_11pt", maps["voc07"], extra={"ap_metric": "devkit 11-point", "test_crops": cfg.test_crops,
                                                      "ap": _per_class(ap["voc07"])})
    for c, v in _per_class(ap["reference"]).items():
        if v is not None:
            ev.record(f"AP_{c}", v, extra={"ap_metric": "sklearn (reference code)"})
    store = ev.write()
    return ev.summary(mAP=maps, ap=ap, model=str(model_path), scores=str(ev.out / "scores_test.csv"),
                      store=str(store), voc=cfg.voc, test_crops=cfg.test_crops, iters=cfg.iters)
