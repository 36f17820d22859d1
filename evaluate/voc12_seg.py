"""`bench eval voc12-seg`: VOC2012 semantic segmentation with FCN-32s on the pretrained AlexNet (the
paper's Table 1 "Seg."), as the FCN authors' voc-fcn-alexnet (solver.prototxt, net.py, solve.py,
score.py; ../shared/PROTOCOLS.md).

Train on SBD train (whole images, no augmentation, shuffled), test on seg11valid (VOC2011 val images
not in SBD train). SGD momentum 0.9, fixed lr 1e-4, weight decay 5e-4 (the score layer's bias: lr x2,
no decay), 100,000 iterations of 20 images each (batch 1, gradients accumulated; as Caffe's iter_size,
the accumulated gradient is divided by 20); softmax loss, 255 ignored.

The reference contradicts itself on the loss: net.py sums it over the pixels (normalize: false) while
solver.prototxt gives lr 1e-4 as the "lr for normalized softmax". Summed over a whole image (~10^5
pixels) at lr 1e-4 the first updates move the logits by thousands and training diverges (measured on
the embedded world, see the README), so the default divides by the labelled pixels (normalize: true),
which is what the lr was set for; `loss_normalization="none"` gives net.py's sum. Every run records
this as a deviation from net.py.

mIoU = mean over 21 classes of the confusion matrix accumulated over the whole test set (FCN's
score.py), with per-class IoU and pixel accuracy. BatchNorm trunks run on their running statistics (eval
mode; with one image per forward, batch statistics are per image), recorded.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from cpfs_bench.bench.checkpoint import CheckpointError, load_checkpoint
from cpfs_bench.bench.config import protocol_values, resolve
from cpfs_bench.bench.runs import TrainingRun, loader_workers, progress_bar
from cpfs_bench.bench.sampling import StepBatchSampler
from cpfs_bench.bench.voc_format import VOC_CLASSES, voc_palette
from cpfs_bench.bench.world.defaults import default_voc_world
from cpfs_bench.evaluate.backbone import batchnorm_on_running_statistics, finetuned_source
from cpfs_bench.evaluate.datasets import (
    DatasetFormatError,
    read_sbd_segmentation,
    read_segmentation_mask,
    sbd_dir,
    sbd_ids,
    voc_image_path,
    voc_segmentation_ids,
    voc_year_dir,
)
from cpfs_bench.evaluate.configs import VOCSegConfig
from cpfs_bench.evaluate.evaluation import prepare
from cpfs_bench.evaluate.fcn import FCN32s, segmentation_loss
from cpfs_bench.evaluate.metrics import (confusion_matrix, foreground_class_accuracy, foreground_iou, mean_iou,
                                         per_class_iou, pixel_accuracy)
from cpfs_bench.pretrain.alexnet import build_trunk

PROTOCOL = VOCSegConfig.PROTOCOL
CLASSES = ("background", *VOC_CLASSES)
PRESETS = VOCSegConfig.PRESETS
PROTOCOL_FIELDS = ("init", "iters", "iter_size", "lr", "momentum", "weight_decay", "train_split", "test_split",
                   "bn_mode", "loss_normalization")
# net.py's loss; the default differs on purpose (see the module docstring), so every run records it
PROTOCOL_LOSS_NORMALIZATION = "none"
RESUME_MUST_MATCH = ("sbd", "voc", "init", "init_images", "iters", "iter_size", "lr", "momentum", "weight_decay",
                     "train_split", "seed", "bn_mode", "loss_normalization", "trunk_sha256")


def resolve_config(cfg: VOCSegConfig, explicit=()) -> tuple[VOCSegConfig, dict]:
    """(cfg with the preset resolved, deviations from the protocol); a None data folder (cfg.sbd, cfg.voc) = the
    embedded world (preset smoke), written later by the evaluation entry."""
    if cfg.bn_mode not in ("eval", "train"):
        raise ValueError(f"unknown bn_mode {cfg.bn_mode!r}; choose eval or train")
    if cfg.loss_normalization not in ("pixels", "none"):
        raise ValueError(f"unknown loss_normalization {cfg.loss_normalization!r}; choose pixels or none")
    protocol = {**protocol_values(VOCSegConfig, PROTOCOL_FIELDS), "loss_normalization": PROTOCOL_LOSS_NORMALIZATION}
    return resolve(cfg, PRESETS, explicit, protocol, ("sbd", "voc"))


def voc_segmentation_year(root) -> str:
    """The year folder holding the segmentation lists: VOC2012, else VOC2011 (FCN's own layout)."""
    for year in ("2012", "2011"):
        try:
            voc_year_dir(root, year)
            return year
        except FileNotFoundError:
            continue
    raise FileNotFoundError(f"{root}: neither VOC2012 nor VOC2011 found (looked for VOC2012/, VOCdevkit/VOC2012/, "
                            f"and the same for VOC2011)")


class SegmentationImages(Dataset):
    """Whole images with their class maps: item -> (image (3, H, W) normalised, labels int64 (H, W)).
    kind "sbd": SBD img/*.jpg + cls/*.mat; kind "voc": JPEGImages + SegmentationClass PNGs."""

    def __init__(self, kind: str, root, split: str, mean, std):
        self.kind, self.root = kind, root
        if kind == "sbd":
            self.dir = sbd_dir(root)
            self.ids = sbd_ids(root, split)
        else:
            self.year = voc_segmentation_year(root)
            self.ids = voc_segmentation_ids(root, self.year, split)
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.ids)

    def paths(self, i: int) -> tuple[Path, Path]:
        image_id = self.ids[i]
        if self.kind == "sbd":
            return self.dir / "img" / f"{image_id}.jpg", self.dir / "cls" / f"{image_id}.mat"
        return (voc_image_path(self.root, self.year, image_id),
                voc_year_dir(self.root, self.year) / "SegmentationClass" / f"{image_id}.png")

    def __getitem__(self, key):
        """key: i, or (i, seed) from StepBatchSampler (no augmentation: the seed is not used)."""
        i = key[0] if isinstance(key, tuple) else key
        image_path, label_path = self.paths(i)
        if not image_path.exists():
            raise FileNotFoundError(f"{image_path}: image listed in the split file is missing")
        image = np.asarray(Image.open(image_path).convert("RGB"), np.float32) / 255
        labels = read_sbd_segmentation(label_path) if self.kind == "sbd" else read_segmentation_mask(label_path)
        bad = np.setdiff1d(np.unique(labels), [*range(len(CLASSES)), 255])
        if bad.size:
            raise DatasetFormatError(f"{label_path}: class indices {bad.tolist()} outside 0..{len(CLASSES) - 1} "
                                     f"(255 = void)")
        if labels.shape != image.shape[:2]:
            raise ValueError(f"{label_path}: labels are {labels.shape[1]}x{labels.shape[0]}, the image "
                             f"{image_path} is {image.shape[1]}x{image.shape[0]}")
        x = (torch.from_numpy(image).permute(2, 0, 1) - self.mean) / self.std
        return x, torch.from_numpy(labels.astype(np.int64))


def set_modes(model: FCN32s, bn_mode: str) -> None:
    """Train mode (dropout on); BatchNorm layers on running statistics when bn_mode is "eval"."""
    model.train()
    if bn_mode == "eval":
        batchnorm_on_running_statistics(model)


def parameter_groups(model: FCN32s, cfg: VOCSegConfig) -> list[dict]:
    """FCN's lr/decay multipliers: everything lr x1 with weight decay; the score layer's bias lr x2 without;
    the upsampling is fixed (not in any group)."""
    rest = [p for n, p in model.named_parameters() if p.requires_grad and n != "score_fr.bias"]
    return [{"params": rest, "lr_mult": 1.0, "weight_decay": cfg.weight_decay},
            {"params": [model.score_fr.bias], "lr_mult": 2.0, "weight_decay": 0.0}]


def save_prediction(folder: Path, image_id: str, image_path: Path, prediction: np.ndarray,
                    truth: np.ndarray) -> None:
    """prediction as a VOC palette PNG (the image's size), and image | truth | prediction side by side."""
    palette = voc_palette()
    pred = Image.fromarray(prediction.astype(np.uint8), mode="P")
    pred.putpalette(palette)
    pred.save(folder / f"{image_id}.png")
    gt = Image.fromarray(truth.astype(np.uint8), mode="P")
    gt.putpalette(palette)
    image = Image.open(image_path).convert("RGB")
    w, h = image.size
    strip = Image.new("RGB", (3 * w + 8, h), "white")
    for k, part in enumerate((image, gt.convert("RGB"), pred.convert("RGB"))):
        strip.paste(part, (k * (w + 4), 0))
    strip.save(folder / f"{image_id}_side_by_side.jpg", quality=90)


@torch.no_grad()
def evaluate(model: FCN32s, dataset: SegmentationImages, device, save: int, folder: Path,
             progress: bool) -> np.ndarray:
    """Confusion matrix (21, 21) over the whole test set (rows truth, columns prediction)."""
    model.eval()
    hist = np.zeros((len(CLASSES), len(CLASSES)), np.int64)
    if save:
        folder.mkdir(parents=True, exist_ok=True)
    for i in progress_bar(range(len(dataset)), desc="voc12-seg test", unit="image", disable=not progress):
        x, labels = dataset[i]
        prediction = model(x[None].to(device)).argmax(1)[0].cpu().numpy()
        hist += confusion_matrix(prediction, labels.numpy(), len(CLASSES))
        if i < save:
            save_prediction(folder, dataset.ids[i], dataset.paths(i)[0], prediction, labels.numpy())
    return hist


def train(cfg: VOCSegConfig, model: FCN32s, info: dict, train_set: SegmentationImages, deviations: dict, device,
          progress: bool, stop_after: int | None = None) -> bool:
    """The training loop in cfg.out (resumable); True when complete, False when stopped early."""
    # fused: the unfused step over FCN's 57M weights with weight decay costs ~0.12 s of a ~0.7 s batch-1
    # update on one CPU core (benchmarks/fcn_step.py)
    optimizer = torch.optim.SGD(parameter_groups(model, cfg), lr=cfg.lr, momentum=cfg.momentum, fused=True)
    run = TrainingRun.for_config(cfg, "eval voc12-seg", must_match=RESUME_MUST_MATCH, total=cfg.iters, unit="update",
                                 log_key="iter", desc="voc12-seg FCN-32s", device=device, progress=progress,
                                 stop_after=stop_after, trunk_sha256=info["sha256"])
    state = run.restore(optimizer)  # RNG too: dropout draws from the global one
    if state:
        model.load_state_dict(state["head"])
    # images in an order fixed by (seed, position): a resumed run sees what the uninterrupted one would
    sampler = StepBatchSampler(len(train_set), 1, cfg.seed, run.step * cfg.iter_size, cfg.iters * cfg.iter_size)
    images = iter(DataLoader(train_set, batch_sampler=sampler, num_workers=loader_workers(cfg.workers, device),
                             generator=torch.Generator().manual_seed(cfg.seed)))  # keeps the global RNG for dropout
    extra = {"normalization": {"mean": list(info["mean"]), "std": list(info["std"])}, "classes": list(CLASSES),
             "trunk_sha256": info["sha256"], "deviations": deviations, "finetuned_from": info["path"],
             "finetuned_from_step": info["step"], "crop_offset": model.offset}
    for g in optimizer.param_groups:
        g["lr"] = cfg.lr * g["lr_mult"]
    set_modes(model, cfg.bn_mode)
    # the whole FCN is the head; trunk left empty
    with run.start(optimizer, lambda: {"arch": info["arch"], "trunk": {}, "head": model.state_dict(),
                                       "loss": "voc12-seg-fcn32s", "extra": extra}):
        while not run.done:  # one update: iter_size images, one at a time, their gradients accumulated
            optimizer.zero_grad(set_to_none=True)
            loss_sum, summed, pixels = 0.0, 0.0, 0
            for _ in range(cfg.iter_size):
                x, labels = next(images)
                with run.autocast():
                    scores = model(x.to(device))
                loss = segmentation_loss(scores.float(), labels.to(device), cfg.loss_normalization)
                value = run.check_finite(loss)
                (loss / cfg.iter_size).backward()  # Caffe divides the accumulated gradient by iter_size
                labelled = int((labels != 255).sum())
                loss_sum += value
                summed += value * (max(labelled, 1) if cfg.loss_normalization == "pixels" else 1)
                pixels += labelled
            optimizer.step()
            per_pixel = summed / max(pixels, 1)
            run.step_done({"loss": loss_sum / cfg.iter_size, "loss_per_pixel": per_pixel},
                          postfix={"loss_per_pixel": f"{per_pixel:.3f}"})
    return run.finish(plot_title=f"voc12-seg FCN-32s ({info['arch']})", plot_value="loss_per_pixel")


def load_trained(path, device) -> tuple[FCN32s, dict, dict]:
    """A `final.pt` written by voc12-seg -> (FCN, info of the checkpoint it was trained from, its run config)."""
    state = load_checkpoint(path)
    if state.get("loss") != "voc12-seg-fcn32s":
        raise CheckpointError(f"{path}: not a voc12-seg model (its loss is {state.get('loss')!r}); --model takes "
                              f"the final.pt of a `bench eval voc12-seg` run")
    model = FCN32s(build_trunk(state["arch"]))
    model.load_state_dict(state["head"])
    return model.to(device), finetuned_source(state), state.get("config") or {}


def train_images(cfg) -> list[Path]:
    """The SBD training split's image files (what --init measures)."""
    return [sbd_dir(cfg.sbd) / "img" / f"{i}.jpg" for i in sbd_ids(cfg.sbd, cfg.train_split)]


def run(cfg: VOCSegConfig, progress: bool = True, explicit=(), stop_after: int | None = None) -> dict:
    """Train FCN-32s (or, with cfg.model, load a trained one), test, append records. Returns {"mIoU",
    "pixel_accuracy", "iou" {class: %}, "out", "model", "predictions", "store", "method", "run", "deviations",
    "seconds", "iters"}, or {"out", "stopped_at"} when stop_after (updates) left the run early, resumable."""
    trained = {}  # the run config of the --model checkpoint

    def load_model(path, device):
        model, info, trained["config"] = load_trained(path, device)
        return model, info

    ev = prepare(cfg, kind="voc12-seg", task="voc12_seg", protocol=PROTOCOL, resolve_config=resolve_config,
                 explicit=explicit, data_fields=("sbd", "voc"), default_world=default_voc_world, progress=progress,
                 trunk="trainable", load_model=load_model,
                 init_images=train_images)
    cfg, device, info = ev.cfg, ev.device, ev.info
    if ev.eval_only:
        model = ev.model
    else:
        if info["arch"] not in ("caffenet", "caffenet_bn"):
            raise ValueError(f"{cfg.ckpt}: FCN-32s (voc-fcn-alexnet) is defined on the CaffeNet layout; this "
                             f"checkpoint is {info['arch']!r}")
        model = FCN32s(ev.trunk).to(device)
    test_set = SegmentationImages("voc", cfg.voc, cfg.test_split, info["mean"], info["std"])
    if not len(test_set):
        raise ValueError(f"{cfg.voc}: the VOC {cfg.test_split} list is empty")
    if ev.eval_only:
        model_path = Path(cfg.model)
        config = trained["config"]
        train_description = f"SBD {config.get('train_split', '?')} in {config.get('sbd', '?')}"
    else:
        train_set = SegmentationImages("sbd", cfg.sbd, cfg.train_split, info["mean"], info["std"])
        if not len(train_set):
            raise ValueError(f"{cfg.sbd}: the SBD {cfg.train_split} list is empty")
        train_description = f"SBD {cfg.train_split} ({len(train_set)} images)"
        if not train(cfg, model, info, train_set, ev.deviations, device, progress, stop_after):
            return {"out": cfg.out, "stopped_at": stop_after}
        model_path = ev.out / "final.pt"

    predictions = ev.out / "predictions"
    hist = evaluate(model, test_set, device, cfg.save_predictions, predictions, progress)
    np.save(ev.out / "confusion.npy", hist)
    iou = {c: float(100 * v) for c, v in zip(CLASSES, per_class_iou(hist))}
    scores = {"mIoU": 100 * mean_iou(hist), "pixel_accuracy": 100 * pixel_accuracy(hist)}
    # diagnostics, not the protocol's metric: does the model find objects, and does it name them
    diagnostics = {"foreground_IoU": 100 * foreground_iou(hist),
                   "foreground_class_accuracy": 100 * foreground_class_accuracy(hist)}

    ev.test_set(cfg.voc, len(CLASSES), cfg.test_split, len(test_set))
    ev.record("mIoU", scores["mIoU"], extra={"iou": {c: (None if math.isnan(v) else v) for c, v in iou.items()},
                                             "bn_mode": cfg.bn_mode, "arch": info["arch"], "run_folder": str(ev.out),
                                             "train": train_description})
    ev.record("pixel_accuracy", scores["pixel_accuracy"])
    for metric, v in diagnostics.items():
        if not math.isnan(v):
            ev.record(metric, v)
    for c, v in iou.items():
        if not math.isnan(v):
            ev.record(f"IoU_{c}", v)
    store = ev.write()
    return ev.summary(**scores, **diagnostics, iou=iou, model=str(model_path),
                      predictions=str(predictions) if cfg.save_predictions else None, store=str(store),
                      iters=cfg.iters)
