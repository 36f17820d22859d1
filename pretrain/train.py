"""`bench pretrain`: the CPFS training loop (trunk + hypercolumn head + loss), plain and top to bottom,
on the shared step driver (bench.runs.TrainingRun)."""
from __future__ import annotations

import sys
import time
from collections import deque
from dataclasses import replace

import numpy as np
import torch
from torch.utils.data import DataLoader

from cpfs_bench.bench.checkpoint import MEAN, STD
from cpfs_bench.bench.config import preset_line, resolve
from cpfs_bench.bench.curves import plot_training_log
from cpfs_bench.bench.flowio import read_flow_png
from cpfs_bench.bench.losses import loss_spec
from cpfs_bench.bench.runs import (  # noqa: F401  (TrainingDiverged: raised by run.check_finite, imported from here)
    SCHEDULES,
    RunInterrupted,
    TrainingDiverged,
    TrainingRun,
    loader_workers,
    resolve_device,
    scheduled_lr,
)
from cpfs_bench.bench.sampling import StepBatchSampler
from cpfs_bench.pretrain.alexnet import ARCHITECTURES, build_trunk
from cpfs_bench.pretrain.configs import PretrainConfig
from cpfs_bench.pretrain.data import FlowFrames
from cpfs_bench.pretrain.head import SOURCES, HypercolumnHead, sample_pixel_positions
from cpfs_bench.pretrain.losses import (
    Sigma,
    cpfs_loss,
    direct_cls_loss,
    fit_flow_codebook,
    mean_pairwise_cosine,
    squash_flow,
    target_entropy,
)

# a resumed run must agree on these: they define the model, the objective or the data order
RESUME_MUST_MATCH = ("loss", "data", "arch", "batch_size", "pixels", "hidden", "embed_dim", "classes", "optimizer",
                     "fc_lr_mult", "sigma", "learn_sigma", "squash", "crop", "seed")
# what the paper states (seed/cpfs-paper-notes.txt); our defaults that differ are recorded as deviations
PAPER = {"learn_sigma": True, "embed_dim": 16}
# embeddings whose mean pairwise cosine stays above this (after COLLAPSE_AFTER steps) have collapsed
COLLAPSE_COSINE = 0.95
COLLAPSE_AFTER = 200


def gather_flow(flow: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """flow (B, 2, H, W), positions (B, N, 2) long (x, y) -> (B, N, 2) flow at those pixels."""
    b, _, h, w = flow.shape
    idx = (positions[..., 1] * w + positions[..., 0])[:, None, :].expand(-1, 2, -1)
    return flow.reshape(b, 2, h * w).gather(2, idx).transpose(1, 2)


def sample_codebook_flows(dataset: FlowFrames, squash: bool, seed: int, images: int = 200, per_image: int = 500):
    """Flow vectors drawn from the training set for fitting the direct-cls codebook: (M, 2)."""
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(dataset.pairs), size=min(images, len(dataset.pairs)), replace=False)
    vectors = []
    for i in picks:
        flow, valid = read_flow_png(dataset.pairs[i][1])
        v = flow[valid]
        vectors.append(v[rng.choice(len(v), size=min(per_image, len(v)), replace=False)])
    vectors = torch.from_numpy(np.concatenate(vectors))
    return (squash_flow(vectors) if squash else vectors).numpy()


def build_model(cfg: PretrainConfig):
    trunk = build_trunk(cfg.arch)
    spec = loss_spec(cfg.loss)
    head = HypercolumnHead(trunk.feature_geometry(), cfg.hidden, spec.head_outputs(cfg.embed_dim, cfg.classes),
                           normalize=spec.kernel)
    return trunk, head


def check_config(cfg: PretrainConfig) -> None:
    """ValueError naming the first bad setting (the CLI's option types catch most of these first)."""
    loss_spec(cfg.loss)  # ValueError naming the losses for an unknown one
    if cfg.arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {cfg.arch!r}; choose from {ARCHITECTURES}")
    if cfg.optimizer not in ("adam", "sgd"):
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}; choose adam or sgd")
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {cfg.schedule!r}; choose from {SCHEDULES}")
    for name in ("iters", "batch_size", "pixels", "ckpt_every", "log_every"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.sigma <= 0 or cfg.lr <= 0 or cfg.fc_lr_mult <= 0 or cfg.save_minutes <= 0:
        raise ValueError("sigma, lr, fc_lr_mult and save_minutes must be > 0")


def paper_deviations(cfg: PretrainConfig) -> dict:
    """Every setting that departs from what the paper states (recorded in the checkpoint)."""
    return resolve(cfg, None, (), PAPER)[1]


def run(cfg: PretrainConfig, progress: bool = True, stop_after: int | None = None) -> dict:
    """Train; returns a summary (out, steps, first/last loss, seconds). Raises TrainingDiverged on a
    non-finite loss (last good checkpoint kept), CheckpointError on an incompatible --resume and
    RunInterrupted after SIGINT/SIGTERM (state saved first).
    stop_after: leave after that step with last.pt written, as a preempted job would (resumable)."""
    check_config(cfg)
    spec = loss_spec(cfg.loss)
    embedded = cfg.data is None
    if embedded:
        from cpfs_bench.pretrain.default_data import default_flow_data

        cfg = replace(cfg, data=str(default_flow_data(progress=progress)))
    if progress:  # the paper publishes no schedule: what differs from what it states
        print(preset_line(f"pretrain {cfg.loss}", paper_deviations(cfg), embedded).replace("protocol", "paper"),
              file=sys.stderr, flush=True)
    cfg = replace(cfg, out=cfg.out or f"runs/pretrain-{cfg.loss}")
    device = resolve_device(cfg.device)
    run = TrainingRun.for_config(cfg, "pretrain", must_match=RESUME_MUST_MATCH, total=cfg.iters, unit="step",
                                 log_key="step", desc=f"pretrain {cfg.loss}", device=device, progress=progress,
                                 stop_after=stop_after)
    torch.manual_seed(cfg.seed)
    dataset = FlowFrames(cfg.data, cfg.crop)
    trunk, head = build_model(cfg)  # draws from the global RNG: before run.restore sets it
    sigma = Sigma(cfg.sigma, cfg.learn_sigma)
    trunk.to(device).train()
    head.to(device).train()
    sigma.to(device)
    params = list(trunk.parameters()) + list(head.parameters())
    groups = [{"params": params, "weight_decay": cfg.weight_decay, "lr_mult": 1.0}]
    if cfg.fc_lr_mult != 1.0:  # a group of its own only then: runs saved before the option resume unchanged
        fc = {id(p) for name in ("fc6", "fc7") for p in getattr(trunk, name).parameters()}
        groups = [{"params": [p for p in params if id(p) not in fc], "weight_decay": cfg.weight_decay, "lr_mult": 1.0},
                  {"params": [p for p in params if id(p) in fc], "weight_decay": cfg.weight_decay,
                   "lr_mult": cfg.fc_lr_mult}]
    if cfg.learn_sigma and spec.kernel:
        groups.append({"params": list(sigma.parameters()), "weight_decay": 0.0, "lr_mult": 1.0})
    # fused kernels: on 2 CPU cores the unfused Adam step over AlexNet's 61M weights costs ~0.6 s
    if cfg.optimizer == "adam":
        optimizer = torch.optim.Adam(groups, lr=cfg.lr, fused=True)
    else:
        optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, fused=True)
    state = run.restore(optimizer)  # None for a fresh run; else optimizer, RNG and step restored
    if state:
        trunk.load_state_dict(state["trunk"])
        head.load_state_dict(state["head"])
        sigma.load_state_dict(state["extra"]["sigma"])
    extra = {"normalization": {"mean": list(MEAN), "std": list(STD)}, "sources": list(SOURCES),
             "paper_deviations": paper_deviations(cfg), "sigma_rule": "learned" if cfg.learn_sigma else "fixed"}
    if not spec.kernel:  # direct cls: the flow codebook, fitted once and kept in every checkpoint
        codebook = (state["extra"]["codebook"] if state else torch.from_numpy(
            fit_flow_codebook(sample_codebook_flows(dataset, cfg.squash, cfg.seed), cfg.classes, cfg.seed)))
        extra["codebook"] = codebook.cpu()
        codebook = codebook.to(device)

    sampler = StepBatchSampler(len(dataset), cfg.batch_size, cfg.seed, run.step, cfg.iters)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=loader_workers(cfg.workers, device),
                        pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(cfg.seed))  # keeps the global RNG untouched
    first_loss = last_loss = None
    recent_cosines: deque[float] = deque(maxlen=50)
    warned_collapse = False
    start = time.perf_counter()
    with run.start(optimizer, lambda: {"arch": cfg.arch, "trunk": trunk.state_dict(), "head": head.state_dict(),
                                       "loss": cfg.loss, "extra": {**extra, "sigma": sigma.state_dict()}}):
        for image, flow, valid in run.batches(loader):
            t0 = time.perf_counter()
            step = run.step + 1  # the step this batch makes (run.step: the steps done)
            lr = scheduled_lr(cfg.schedule, cfg.lr, run.step, cfg.iters)
            for g in optimizer.param_groups:
                g["lr"] = lr * g["lr_mult"]
            image = image.to(device, non_blocking=True)
            flow, valid = flow.to(device, non_blocking=True), valid.to(device, non_blocking=True)
            # pixel positions: a pure function of (seed, step), drawn on the device, for exact resumes
            gen = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + run.step)
            positions = sample_pixel_positions(valid, cfg.pixels, gen)
            target = gather_flow(flow, positions)
            if cfg.squash:
                target = squash_flow(target)
            with run.autocast():
                activations = trunk.activations(image, SOURCES)
                output = head(activations, positions)
            if spec.kernel:
                loss = cpfs_loss(output, target, sigma(), cfg.loss)
            else:
                loss = direct_cls_loss(output, target, codebook)
            value = run.check_finite(loss)  # TrainingDiverged: the step, the last good checkpoint, the resume
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            dt = time.perf_counter() - t0
            sigma_value = sigma.log_sigma.detach().exp().item()
            first_loss = value if first_loss is None else first_loss
            last_loss = value
            record = {"loss": value, "sigma": sigma_value, "lr": lr, "images_per_s": cfg.batch_size / dt,
                      "time": time.time()}  # step_done logs "step" first
            postfix = {"loss": f"{value:.4f}"}
            if spec.kernel:
                record["mean_cos"] = mean_pairwise_cosine(output)
                postfix["cos"] = f"{record['mean_cos']:.2f}"
                recent_cosines.append(record["mean_cos"])
                if spec.logs_kl:
                    record["kl"] = value - target_entropy(output, target, sigma(), cfg.loss).item()
                    postfix["kl"] = f"{record['kl']:.2e}"
                if (not warned_collapse and step >= COLLAPSE_AFTER and len(recent_cosines) == 50
                        and min(recent_cosines) > COLLAPSE_COSINE):
                    warned_collapse = True
                    run.bar.write(f"warning: the embeddings are collapsing (mean pairwise cosine > {COLLAPSE_COSINE} "
                                  f"for the last 50 steps, now {record['mean_cos']:.3f}; sigma {sigma_value:.4f}); "
                                  f"see README 'Choice of sigma'")
            postfix.update(sigma=f"{sigma_value:.4f}", img_s=f"{cfg.batch_size / dt:.1f}")
            due = cfg.snapshot_every and step % cfg.snapshot_every == 0
            snapshot = run.out / f"step_{step:06d}.pt" if due else None
            try:  # log, progress bar, last.pt when due; RunInterrupted after a signal
                run.step_done(record, postfix, log=step % cfg.log_every == 0 or step == cfg.iters)
            except RunInterrupted:  # stopped after this step: its snapshot is still due (the resume starts after it)
                if snapshot:
                    run.save(snapshot, resumable=False)
                raise
            if snapshot:
                run.save(snapshot, resumable=False)
    run.finish(plot_title=f"CPFS {cfg.loss} ({cfg.arch})", plot=plot_training_log)
    final, last = run.folder.final, run.folder.last
    return {"out": str(run.out), "checkpoint": str(final if final.exists() else last),
            "start_step": run.start_step, "steps": run.step, "first_loss": first_loss, "last_loss": last_loss,
            "seconds": time.perf_counter() - start, "data": cfg.data, "device": str(device),
            "collapsed": warned_collapse}
