"""`bench baseline supervised`: train the trunk with an N-way classifier on an ImageNet-layout folder
(the paper's "Krizhevsky et al." rows), plain and top to bottom, in the style of torchvision's
references/classification/train.py (SGD with momentum, step schedule, random-resized crops and
flips; resize + centre crop at validation), on the shared run plumbing (bench/runs.py).

Defaults follow torchvision's reference recipe for AlexNet (lr 0.01, momentum 0.9, weight decay
1e-4, batch 32 per GPU x 8 = 256 here, 90 epochs, lr x0.1 every 30 epochs) at CaffeNet's 227 crop.
The classifier is a new fc8 (4096 -> classes) on fc7; it is saved as the checkpoint's head. On the
embedded world the "smoke" preset shortens the run (10 epochs of batch 32, lr drop after 7; about
9 minutes on 2 cores), lowers lr to 0.003 and keeps random-resized crops to >= 35% of the image.
Measured on the embedded ImageNet world (20 shape classes, 100 training images each), 4 epochs at a
constant lr: the recipe's lr 0.01 diverged at batch 32 (training loss 4.3 -> 6.5, top-1 at chance);
0.003 with the recipe's crops (8-100% of the area) reached 28.7% validation top-1, with crops of
35-100% 52.8%: small crops there often miss the object whose shape is the class. What you type
always wins and every difference from the recipe is recorded in the checkpoint.
"""
from __future__ import annotations

import sys
import time
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from torchvision import transforms

from cpfs_bench.baselines.configs import SupervisedConfig
from cpfs_bench.bench.checkpoint import MEAN, STD, save_checkpoint
from cpfs_bench.bench.config import preset_line, protocol_values, resolve
from cpfs_bench.bench.runs import TrainingRun, loader_workers, progress_bar, resolve_device, scheduled_lr
from cpfs_bench.bench.world.defaults import default_imagenet_world
from cpfs_bench.evaluate.datasets import imagenet_splits
from cpfs_bench.pretrain.alexnet import ARCHITECTURES, build_trunk

PRESETS = SupervisedConfig.PRESETS
PROTOCOL_FIELDS = ("epochs", "batch_size", "lr", "momentum", "weight_decay", "lr_step", "lr_gamma", "crop",
                   "min_crop_scale", "resize")
RESUME_MUST_MATCH = ("data", "arch", "epochs", "batch_size", "lr", "momentum", "weight_decay", "lr_step", "lr_gamma",
                     "crop", "min_crop_scale", "resize", "seed")


class Classifier(nn.Module):
    """Trunk (fc7, 4096) -> dropout-free linear fc8: the AlexNet classifier the reference trains."""

    def __init__(self, trunk: nn.Module, classes: int):
        super().__init__()
        self.trunk = trunk
        self.fc8 = nn.Linear(4096, classes)
        nn.init.normal_(self.fc8.weight, std=0.01)
        nn.init.zeros_(self.fc8.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc8(self.trunk(x))


def resolve_config(cfg: SupervisedConfig, explicit=()) -> tuple[SupervisedConfig, dict]:
    """(cfg with the preset resolved, deviations from the reference recipe); cfg.data None = the embedded
    world (preset "smoke" unless one is named), written by `run` once the config is checked."""
    if cfg.arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {cfg.arch!r}; choose from {ARCHITECTURES}")
    return resolve(cfg, PRESETS, explicit, protocol_values(SupervisedConfig, PROTOCOL_FIELDS), ("data",))


@torch.no_grad()
def evaluate(model, loader, device) -> float:
    """Top-1 % on a loader."""
    model.eval()
    correct = seen = 0
    for images, labels in loader:
        logits = model(images.to(device))
        correct += (logits.argmax(1).cpu() == labels).sum().item()
        seen += len(labels)
    model.train()
    return 100 * correct / max(seen, 1)


def run(cfg: SupervisedConfig, progress: bool = True, explicit=()) -> dict:
    """Train; write OUT/last.pt (resumable) and OUT/final.pt (trunk + fc8 head, loss "supervised")."""
    cfg, deviations = resolve_config(cfg, explicit)
    device = resolve_device(cfg.device)
    embedded = cfg.data is None
    if embedded:  # only now: a bad option must not first cost the world's minutes
        cfg = replace(cfg, data=str(default_imagenet_world(progress=progress)))
    if progress:
        print(preset_line("baseline supervised", deviations, embedded), file=sys.stderr, flush=True)
    training = TrainingRun.for_config(cfg, "baseline supervised", must_match=RESUME_MUST_MATCH, total=cfg.epochs,
                                      unit="epoch", log_key="epoch", desc="supervised baseline", device=device,
                                      progress=progress)
    torch.manual_seed(cfg.seed)
    train_set, val_set = imagenet_splits(cfg.data, transforms.Compose([
        transforms.RandomResizedCrop(cfg.crop, scale=(cfg.min_crop_scale, 1.0)), transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(MEAN, STD)]), transforms.Compose([
        transforms.Resize(cfg.resize), transforms.CenterCrop(cfg.crop), transforms.ToTensor(),
        transforms.Normalize(MEAN, STD)]))
    model = Classifier(build_trunk(cfg.arch), len(train_set.classes)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                fused=True)
    generator = torch.Generator().manual_seed(cfg.seed)
    workers = loader_workers(cfg.workers, device)
    train_loader = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, generator=generator,
                              drop_last=len(train_set) > cfg.batch_size, num_workers=workers,
                              pin_memory=device.type == "cuda")
    val_loader = DataLoader(val_set, batch_size=cfg.batch_size, num_workers=workers)
    state = training.restore(optimizer)
    if state:
        model.trunk.load_state_dict(state["trunk"])
        model.fc8.load_state_dict(state["head"])
        generator.set_state(state["extra"]["loader_rng"])
    milestones = tuple(e / cfg.epochs for e in range(cfg.lr_step, cfg.epochs, cfg.lr_step))
    extra = {"normalization": {"mean": list(MEAN), "std": list(STD)}, "classes": list(train_set.classes),
             "deviations": deviations}

    def parts(resumable: bool = True) -> dict:
        """The checkpoint's model parts; the resumable last.pt also keeps the loader's shuffling state."""
        return {"arch": cfg.arch, "trunk": model.trunk.state_dict(), "head": model.fc8.state_dict(),
                "loss": "supervised", "extra": {**extra, "loader_rng": generator.get_state()} if resumable else extra}

    start = time.perf_counter()
    model.train()
    with training.start(optimizer, parts):
        for epoch in training.epochs():
            lr = scheduled_lr("step", cfg.lr, epoch, cfg.epochs, milestones, cfg.lr_gamma)
            for g in optimizer.param_groups:
                g["lr"] = lr
            bar = progress_bar(train_loader, desc=f"supervised epoch {epoch + 1}/{cfg.epochs}", unit="batch",
                               leave=False, disable=not progress)
            loss_sum, correct, seen = 0.0, 0, 0
            for i, (images, labels) in enumerate(bar):
                images, labels = images.to(device, non_blocking=True), labels.to(device)
                logits = model(images)
                loss = F.cross_entropy(logits, labels)
                value = training.check_finite(loss)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += value * len(labels)
                correct += (logits.detach().argmax(1) == labels).sum().item()
                seen += len(labels)
                bar.set_postfix(loss=f"{value:.3f}")
                training.raise_if_stopping(f"batch {i + 1} of epoch {epoch + 1}")
            training.step_done({"lr": lr, "train_loss": loss_sum / max(seen, 1),
                                "train_top1": 100 * correct / max(seen, 1)})
        val_top1 = evaluate(model, val_loader, device)
        training.write({"val_top1": val_top1})
    # weights only (no optimizer, RNG or loader state): what the evaluations take
    save_checkpoint(training.folder.final, step=training.step, config=training.config, optimizer=None, with_rng=False,
                    **parts(resumable=False))
    return {"out": str(training.out), "checkpoint": str(training.folder.final), "val_top1": val_top1,
            "epochs": cfg.epochs, "seconds": time.perf_counter() - start, "deviations": deviations, "data": cfg.data}
