"""`bench eval linear-probe`: ImageNet per-layer linear probes on a frozen trunk (the paper's Table 2).

Protocol (FAIR self-supervision benchmark / VISSL, defaults below): the trunk is frozen in eval mode;
conv1..conv5 are average-pooled to ~9k dims (evaluate/features.py), each followed by a BatchNorm
without affine parameters and a linear classifier. All five probes train together, from one trunk
forward per batch. SGD lr 0.01, momentum 0.9, weight decay 5e-4, batch 256, 28 epochs, lr x0.1 at
epochs 8/16/24 (scaled with --epochs); resize 256, random crop 227, flip; centre crop at test.
Top-1 and top-5 on val per layer, one record per layer and metric.

The run folder holds last.pt (the probes' state at each epoch's end; --resume) and log.jsonl (one line
per epoch: lr, mean training loss and top-1 per layer; a last line with the val scores); `bench eval
linear-probe` also draws layers.png there (this run's top-1 per layer beside the paper's Table 2 curves)
from the records `run` returns.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from cpfs_bench.bench.checkpoint import CheckpointError
from cpfs_bench.bench.config import protocol_values, resolve
from cpfs_bench.bench.runs import TrainingRun, loader_workers, progress_bar, scheduled_lr
from cpfs_bench.bench.world.defaults import default_imagenet_world
from cpfs_bench.evaluate.backbone import assert_trunk_unchanged, trunk_fingerprint
from cpfs_bench.evaluate.configs import ProbeConfig
from cpfs_bench.evaluate.datasets import imagenet_splits
from cpfs_bench.evaluate.evaluation import prepare
from cpfs_bench.evaluate.features import (
    POOLINGS,
    PROBE_LAYERS,
    eval_transform,
    pooled_dims,
    pooled_features,
    train_transform,
)

PROTOCOL = ProbeConfig.PROTOCOL
PRESETS = ProbeConfig.PRESETS
PROTOCOL_FIELDS = ("pooling", "epochs", "milestones", "lr", "momentum", "weight_decay", "batch_size", "resize", "crop")
# a resumed probe run must agree on these
RESUME_MUST_MATCH = ("data", "layers", "pooling", "epochs", "milestones", "lr", "momentum", "weight_decay",
                     "batch_size", "resize", "crop", "seed")


def resolve_probe_config(cfg: ProbeConfig, explicit=()) -> tuple[ProbeConfig, dict]:
    """(cfg with the preset resolved, deviations from the protocol); cfg.data None = the embedded world
    (preset "smoke" unless one is named), written later by the evaluation entry. `explicit` fields are
    never overridden."""
    unknown = set(cfg.layers) - set(PROBE_LAYERS)
    if unknown or not cfg.layers:
        raise ValueError(f"unknown layer(s) {sorted(unknown)}; choose from {PROBE_LAYERS}")
    if cfg.pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {cfg.pooling!r}; choose from {POOLINGS}")
    return resolve(cfg, PRESETS, explicit, protocol_values(ProbeConfig, PROTOCOL_FIELDS), ("data",))


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


def probe_lr(cfg: ProbeConfig, epoch_float: float) -> float:
    """Step schedule; milestones are epochs of the 28-epoch protocol, so they scale with epochs."""
    return scheduled_lr("step", cfg.lr, epoch_float, cfg.epochs, milestones=tuple(m / 28 for m in cfg.milestones))


@torch.no_grad()
def evaluate_probes(trunk, probes, loader, layers, pooling, device, progress) -> dict[str, dict[str, float]]:
    probes.eval()
    correct = {layer: [0, 0] for layer in layers}
    n = 0
    for images, labels in progress_bar(loader, desc="val", unit="batch", leave=False, disable=not progress):
        images, labels = images.to(device), labels.to(device)
        logits = probes(pooled_features(trunk, images, layers, pooling))
        for layer, out in logits.items():
            top5 = out.topk(min(5, out.shape[1]), dim=1).indices
            correct[layer][0] += (top5[:, 0] == labels).sum().item()
            correct[layer][1] += (top5 == labels[:, None]).any(1).sum().item()
        n += len(labels)
    probes.train()
    return {layer: {"top1": 100 * c1 / n, "top5": 100 * c5 / n} for layer, (c1, c5) in correct.items()}


def run(cfg: ProbeConfig, progress: bool = True, explicit=()) -> dict:
    """Train and evaluate the probes; append records; returns {"scores": {layer: {top1, top5}}, "records"
    (those appended; `bench eval linear-probe` draws layers.png from them), "log",
    "dims", "store", "data", "out", "method", "run", "deviations", "seconds"}.
    `explicit`: the fields the user gave (a preset never overrides them)."""
    ev = prepare(cfg, kind="linear-probe", task="imagenet_linear", protocol=PROTOCOL,
                 resolve_config=resolve_probe_config, explicit=explicit, data_fields=("data",),
                 default_world=default_imagenet_world, progress=progress, trunk="frozen")
    cfg, device, info, trunk = ev.cfg, ev.device, ev.info, ev.trunk
    fingerprint = trunk_fingerprint(trunk)
    train_set, val_set = imagenet_splits(cfg.data, train_transform(info["mean"], info["std"], cfg.resize, cfg.crop),
                                         eval_transform(info["mean"], info["std"], cfg.resize, cfg.crop))
    classes = train_set.classes
    workers = loader_workers(cfg.workers, device)
    generator = torch.Generator().manual_seed(cfg.seed)
    train_loader = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True,
                              drop_last=len(train_set) > cfg.batch_size, num_workers=workers, generator=generator,
                              pin_memory=device.type == "cuda")
    val_loader = DataLoader(val_set, batch_size=cfg.batch_size, num_workers=workers)
    dims = pooled_dims(trunk, cfg.layers, cfg.crop, cfg.pooling)
    probes = LayerProbes(dims, len(classes)).to(device)
    # fused: the five 9k x 1000 probes make the unfused SGD step ~5x slower on CPU
    optimizer = torch.optim.SGD(probes.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                fused=True)

    # the probes are small: their state is saved at every epoch's end (ckpt_every=1, and so on a signal)
    training = TrainingRun.for_config(cfg, "eval linear-probe", must_match=RESUME_MUST_MATCH + ("trunk_sha256",),
                                      total=cfg.epochs, unit="epoch", log_key="epoch", desc="linear probes",
                                      device=device, progress=progress, trunk_sha256=info["sha256"])
    state = training.restore(optimizer)
    if state:
        if state["extra"].get("trunk_sha256") != info["sha256"]:
            raise CheckpointError(f"{training.folder.last}: was trained on another checkpoint; cannot resume")
        probes.load_state_dict(state["head"])
        generator.set_state(state["extra"]["loader_rng"])

    steps_per_epoch = len(train_loader)
    with training.start(optimizer, lambda: {"arch": info["arch"], "trunk": {}, "head": probes.state_dict(),
                                            "loss": "linear-probe", "extra": {"trunk_sha256": info["sha256"],
                                                                              "loader_rng": generator.get_state()}}):
        for epoch in training.epochs():
            bar = progress_bar(train_loader, desc=f"probe epoch {epoch + 1}/{cfg.epochs}", unit="batch", leave=False,
                               disable=not progress)
            loss_sum = {layer: torch.zeros((), device=device) for layer in cfg.layers}
            correct = {layer: torch.zeros((), device=device) for layer in cfg.layers}
            seen, epoch_start = 0, time.perf_counter()
            for i, (images, labels) in enumerate(bar):
                lr = probe_lr(cfg, epoch + i / steps_per_epoch)
                for g in optimizer.param_groups:
                    g["lr"] = lr
                images, labels = images.to(device, non_blocking=True), labels.to(device)
                features = pooled_features(trunk, images, cfg.layers, cfg.pooling)  # one forward, every probe
                logits = probes(features)
                losses = {layer: F.cross_entropy(out_, labels) for layer, out_ in logits.items()}
                loss = sum(losses.values())
                training.check_finite(loss)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                bar.set_postfix({layer: f"{v.item():.2f}" for layer, v in losses.items()})
                for layer in cfg.layers:  # summed on the device: no extra synchronisation per layer
                    loss_sum[layer] += losses[layer].detach() * len(labels)
                    correct[layer] += (logits[layer].detach().argmax(1) == labels).sum()
                seen += len(labels)
                training.raise_if_stopping(f"batch {i + 1} of epoch {epoch + 1}")  # an ImageNet epoch is long
            training.step_done({"lr": lr,  # at the last step of the epoch
                                "seconds": round(time.perf_counter() - epoch_start, 2),
                                "train_loss": {layer: loss_sum[layer].item() / seen for layer in cfg.layers},
                                "train_top1": {layer: 100 * correct[layer].item() / seen for layer in cfg.layers}})
        scores = evaluate_probes(trunk, probes, val_loader, cfg.layers, cfg.pooling, device, progress)
        assert_trunk_unchanged(trunk, fingerprint)
        training.write({"val": scores})

    ev.test_set(cfg.data, len(classes), "val", len(val_set))
    for layer in cfg.layers:
        for metric in ("top1", "top5"):
            ev.record(metric, scores[layer][metric], layer=layer,
                      extra={"input_dim": dims[layer], "classes": len(classes), "pooling": cfg.pooling,
                             "arch": info["arch"], "run_folder": str(ev.out)})
    store = ev.write()
    return ev.summary(scores=scores, records=ev.records, log=str(training.folder.log_path), dims=dims,
                      store=str(store), data=cfg.data)
