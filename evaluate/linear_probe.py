"""`bench eval linear-probe`: ImageNet per-layer linear probes on a frozen trunk (the paper's Table 2).

Protocol (FAIR self-supervision benchmark / VISSL, defaults below): the trunk is frozen in eval mode;
conv1..conv5 are average-pooled to ~9k dims (evaluate/features.py), each followed by a BatchNorm
without affine parameters and a linear classifier. All five probes train together, from one trunk
forward per batch. SGD lr 0.01, momentum 0.9, weight decay 5e-4, batch 256, 28 epochs, lr x0.1 at
epochs 8/16/24 (scaled with --epochs); resize 256, random crop 227, flip; centre crop at test.
Top-1 and top-5 on val per layer, one record per layer and metric.

The run folder holds probe_last.pt (each epoch; --resume), log.jsonl (one line per epoch: lr, mean
training loss and top-1 per layer; a last line with the val scores) and layers.png (this run's top-1
per layer beside the paper's Table 2 curves).
"""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from bench.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, set_rng_state
from evaluate.backbone import assert_trunk_unchanged, default_method_name, load_trunk, trunk_fingerprint
from evaluate.datasets import imagenet_samples
from evaluate.features import POOLINGS, PROBE_LAYERS, eval_transform, pooled_dims, pooled_features, train_transform
from pretrain.train import resolve_device

PROTOCOL = "fair-imagenet-linear-probe"
# the embedded world is tiny: a short run that still shows the layer trend, recorded as a deviation
PRESETS = {"smoke": {"epochs": 3, "batch_size": 32, "lr": 0.01}}


@dataclass
class ProbeConfig:
    ckpt: str = ""
    data: str | None = None  # ImageNet root (train/<wnid>, val/<wnid>); None = the embedded world + preset smoke
    layers: tuple[str, ...] = PROBE_LAYERS
    pooling: str = "avg"  # "bilinear" = Zhang et al.'s resize variant
    epochs: int = 28
    milestones: tuple[int, ...] = (8, 16, 24)  # in epochs of the 28-epoch schedule; scaled with epochs
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    resize: int = 256
    crop: int = 227
    preset: str | None = None
    seed: int = 0
    device: str = "auto"
    workers: int | None = None  # data-loading processes; None = 0 on CPU, 8 on CUDA
    out: str | None = None  # run folder for probe checkpoints; None = runs/linear-probe-<ckpt stem>
    resume: bool = False
    store: str | None = None  # results records; None = $CPFS_BENCH_HOME/results/records.jsonl
    method: str | None = None  # row name in the tables; None = from the checkpoint
    deviations: dict = field(default_factory=dict)  # filled by resolve()


PROTOCOL_DEFAULTS = {k: v for k, v in asdict(ProbeConfig()).items()
                     if k in ("pooling", "epochs", "milestones", "lr", "momentum", "weight_decay", "batch_size",
                              "resize", "crop")}


def resolve(cfg: ProbeConfig) -> ProbeConfig:
    """Apply the preset (the embedded world gets "smoke" unless one is named) and record deviations."""
    cfg = copy.deepcopy(cfg)
    if cfg.data is None:
        from bench.paths import default_imagenet_world

        cfg.data = str(default_imagenet_world())
        cfg.preset = cfg.preset or "smoke"
    if cfg.preset:
        if cfg.preset not in PRESETS:
            raise ValueError(f"unknown preset {cfg.preset!r}; choose from {sorted(PRESETS)}")
        for k, v in PRESETS[cfg.preset].items():
            setattr(cfg, k, v)
    unknown = set(cfg.layers) - set(PROBE_LAYERS)
    if unknown or not cfg.layers:
        raise ValueError(f"unknown layer(s) {sorted(unknown)}; choose from {PROBE_LAYERS}")
    if cfg.pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {cfg.pooling!r}; choose from {POOLINGS}")
    cfg.deviations = {k: v for k, v in asdict(cfg).items() if k in PROTOCOL_DEFAULTS and v != PROTOCOL_DEFAULTS[k]}
    if cfg.preset:
        cfg.deviations["preset"] = cfg.preset
    return cfg


class ImageFolderDataset(Dataset):
    def __init__(self, samples, transform):
        self.samples, self.transform = samples, transform

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        path, label = self.samples[i]
        try:
            image = Image.open(path).convert("RGB")
        except Exception as e:
            raise ValueError(f"{path}: image could not be decoded ({e})") from e
        return self.transform(image), label


class LayerProbes(nn.Module):
    """One BatchNorm (no affine) + Linear per layer: {layer: (B, D)} -> {layer: (B, classes)} logits."""

    def __init__(self, dims: dict[str, int], classes: int):
        super().__init__()
        self.probes = nn.ModuleDict({layer: nn.Sequential(nn.BatchNorm1d(d, affine=False), nn.Linear(d, classes))
                                     for layer, d in dims.items()})
        for probe in self.probes.values():
            nn.init.normal_(probe[1].weight, std=0.01)
            nn.init.zeros_(probe[1].bias)

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {layer: probe(features[layer]) for layer, probe in self.probes.items()}


def lr_at(cfg: ProbeConfig, epoch_float: float) -> float:
    """Step schedule; milestones are fractions of the 28-epoch protocol, so they scale with epochs."""
    drops = sum(epoch_float >= m / 28 * cfg.epochs for m in cfg.milestones)
    return cfg.lr * 0.1**drops


@torch.no_grad()
def evaluate_probes(trunk, probes, loader, layers, pooling, device, progress) -> dict[str, dict[str, float]]:
    probes.eval()
    correct = {layer: [0, 0] for layer in layers}
    n = 0
    for images, labels in tqdm(loader, desc="val", unit="batch", leave=False, disable=not progress):
        images, labels = images.to(device), labels.to(device)
        logits = probes(pooled_features(trunk, images, layers, pooling))
        for layer, out in logits.items():
            top5 = out.topk(min(5, out.shape[1]), dim=1).indices
            correct[layer][0] += (top5[:, 0] == labels).sum().item()
            correct[layer][1] += (top5 == labels[:, None]).any(1).sum().item()
        n += len(labels)
    probes.train()
    return {layer: {"top1": 100 * c1 / n, "top5": 100 * c5 / n} for layer, (c1, c5) in correct.items()}


def _append_log(path: Path, entry: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(entry) + "\n")


def run(cfg: ProbeConfig, progress: bool = True) -> dict:
    """Train and evaluate the probes; append records; returns {layer: {top1, top5}} plus run info."""
    from results.plots import plot_linear_probes
    from results.store import append_records, default_store, make_record

    cfg = resolve(cfg)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    trunk, info = load_trunk(cfg.ckpt, device)
    fingerprint = trunk_fingerprint(trunk)
    train_samples, classes = imagenet_samples(cfg.data, "train")
    val_samples, val_classes = imagenet_samples(cfg.data, "val")
    if val_classes != classes:
        raise ValueError(f"{cfg.data}: train and val have different class folders")
    workers = cfg.workers if cfg.workers is not None else (8 if device.type == "cuda" else 0)
    generator = torch.Generator().manual_seed(cfg.seed)
    train_loader = DataLoader(ImageFolderDataset(train_samples, train_transform(info["mean"], info["std"], cfg.resize, cfg.crop)),
                              batch_size=cfg.batch_size, shuffle=True, drop_last=len(train_samples) > cfg.batch_size,
                              num_workers=workers, generator=generator, pin_memory=device.type == "cuda")
    val_loader = DataLoader(ImageFolderDataset(val_samples, eval_transform(info["mean"], info["std"], cfg.resize, cfg.crop)),
                            batch_size=cfg.batch_size, num_workers=workers)
    dims = pooled_dims(trunk, cfg.layers, cfg.crop, cfg.pooling)
    probes = LayerProbes(dims, len(classes)).to(device)
    # fused: the five 9k x 1000 probes make the unfused SGD step ~5x slower on CPU
    optimizer = torch.optim.SGD(probes.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                fused=True)

    out = Path(cfg.out or f"runs/linear-probe-{Path(cfg.ckpt).stem}")
    last = out / "probe_last.pt"
    start_epoch = 0
    if last.exists() and not cfg.resume:
        raise FileExistsError(f"{out} already holds a probe run ({last}); pass --resume or choose another --out")
    if cfg.resume:
        state = load_checkpoint(last)
        if state["extra"].get("trunk_sha256") != info["sha256"] or state["config"]["layers"] != list(cfg.layers):
            raise CheckpointError(f"{last}: was trained on another checkpoint or other layers; cannot resume")
        probes.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = state["step"]
        set_rng_state(state["rng"])
        generator.set_state(state["extra"]["loader_rng"])
    out.mkdir(parents=True, exist_ok=True)

    steps_per_epoch = len(train_loader)
    start = time.perf_counter()
    log = out / "log.jsonl"
    for epoch in range(start_epoch, cfg.epochs):
        bar = tqdm(train_loader, desc=f"probe epoch {epoch + 1}/{cfg.epochs}", unit="batch", disable=not progress)
        loss_sum = {layer: torch.zeros((), device=device) for layer in cfg.layers}
        correct = {layer: torch.zeros((), device=device) for layer in cfg.layers}
        seen, epoch_start = 0, time.perf_counter()
        for i, (images, labels) in enumerate(bar):
            lr = lr_at(cfg, epoch + i / steps_per_epoch)
            for g in optimizer.param_groups:
                g["lr"] = lr
            images, labels = images.to(device, non_blocking=True), labels.to(device)
            features = pooled_features(trunk, images, cfg.layers, cfg.pooling)  # one forward feeds every probe
            logits = probes(features)
            losses = {layer: F.cross_entropy(out_, labels) for layer, out_ in logits.items()}
            loss = sum(losses.values())
            if not math.isfinite(loss.item()):
                raise RuntimeError(f"probe loss became {loss.item()} at epoch {epoch + 1}; try a lower --lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            bar.set_postfix({layer: f"{v.item():.2f}" for layer, v in losses.items()})
            for layer in cfg.layers:  # summed on the device: no extra synchronisation per layer
                loss_sum[layer] += losses[layer].detach() * len(labels)
                correct[layer] += (logits[layer].detach().argmax(1) == labels).sum()
            seen += len(labels)
        save_checkpoint(last, arch=info["arch"], trunk={}, head=probes.state_dict(), loss="linear-probe",
                        step=epoch + 1, config={**asdict(cfg), "layers": list(cfg.layers)},
                        optimizer=optimizer.state_dict(),
                        extra={"trunk_sha256": info["sha256"], "loader_rng": generator.get_state()})
        _append_log(log, {"epoch": epoch + 1, "lr": lr,  # at the last step of the epoch
                          "seconds": round(time.perf_counter() - epoch_start, 2),
                          "train_loss": {layer: loss_sum[layer].item() / seen for layer in cfg.layers},
                          "train_top1": {layer: 100 * correct[layer].item() / seen for layer in cfg.layers}})
    scores = evaluate_probes(trunk, probes, val_loader, cfg.layers, cfg.pooling, device, progress)
    assert_trunk_unchanged(trunk, fingerprint)

    method = cfg.method or default_method_name(info, cfg.ckpt)
    records = [make_record("imagenet_linear", metric, scores[layer][metric], method=method, protocol=PROTOCOL,
                           layer=layer, deviations=cfg.deviations, checkpoint=cfg.ckpt, checkpoint_sha256=info["sha256"],
                           dataset=cfg.data, split="val",
                           extra={"input_dim": dims[layer], "classes": len(classes), "pooling": cfg.pooling,
                                  "arch": info["arch"]})
               for layer in cfg.layers for metric in ("top1", "top5")]
    store = Path(cfg.store) if cfg.store else default_store()
    append_records(store, records)
    _append_log(log, {"val": scores})
    figure = plot_linear_probes([r for r in records if r["metric"] == "top1"], out / "layers.png")
    return {"scores": scores, "figure": str(figure), "log": str(log), "dims": dims, "method": method,
            "store": str(store), "out": str(out),
            "seconds": time.perf_counter() - start, "deviations": cfg.deviations, "data": cfg.data}
