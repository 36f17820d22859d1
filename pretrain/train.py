"""`bench pretrain`: the CPFS training loop (trunk + hypercolumn head + loss), plain and top to bottom."""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from bench.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, set_rng_state
from pretrain.alexnet import ARCHITECTURES, build_trunk
from pretrain.curves import plot_training_log
from pretrain.data import MEAN, STD, FlowFrames, StepBatchSampler
from pretrain.head import SOURCES, HypercolumnHead, sample_pixel_positions
from pretrain.losses import LOSSES, Sigma, cpfs_loss, direct_cls_loss, fit_flow_codebook, squash_flow
from pretrain.flow import read_flow_png

# settings that define the model or the objective: a resumed run must agree on them
MODEL_FIELDS = ("loss", "arch", "pixels", "hidden", "embed_dim", "classes", "squash", "crop")


@dataclass
class PretrainConfig:
    """CPFS pretraining. The paper does not publish its optimiser or schedule; these defaults are our
    choice (Adam, cosine decay) and sized so the embedded default finishes in minutes on 2 CPU cores.
    Scale up with --iters and --batch-size for real pretraining."""

    loss: str = "kta"
    data: str | None = None  # a `bench flow` folder; None = the embedded default world
    out: str | None = None  # None = runs/pretrain-<loss>
    arch: str = "caffenet_bn"
    iters: int = 100
    batch_size: int = 8
    pixels: int = 512  # sampled pixels per image (the sparsity trick)
    hidden: int = 256  # hidden width of the head's MLP (4928 -> hidden -> D)
    embed_dim: int = 16
    classes: int = 16  # direct-cls: flow codebook size
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9  # SGD only
    weight_decay: float = 0.0
    schedule: str = "cosine"  # cosine | step (x0.1 at 50% and 75%) | constant
    sigma: float = 0.06  # initial flow-kernel bandwidth, in squashed-flow units when squash is on
    learn_sigma: bool = True
    squash: bool = True  # flow -> sign(f) min(log(|f|+1)/log(51), 1) before the kernel
    crop: int = 227
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # bf16 autocast on CUDA; ignored on CPU
    workers: int | None = None  # data-loading processes; None = 0 on CPU (no spare core), 8 on CUDA
    ckpt_every: int = 100  # write last.pt (resumable) every this many steps, and at the end
    snapshot_every: int = 100  # keep step_XXXXXX.pt (weights only) every this many steps; 0 = never
    log_every: int = 1
    resume: bool = False


class TrainingDiverged(RuntimeError):
    pass


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA device is available")
    return torch.device(name)


def lr_at(cfg: PretrainConfig, step: int) -> float:
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * step / max(cfg.iters, 1)))
    if cfg.schedule == "step":
        return cfg.lr * 0.1 ** sum(step >= f * cfg.iters for f in (0.5, 0.75))
    if cfg.schedule == "constant":
        return cfg.lr
    raise ValueError(f"unknown schedule {cfg.schedule!r}; choose cosine, step or constant")


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
    out_dim = cfg.classes if cfg.loss == "direct-cls" else cfg.embed_dim
    head = HypercolumnHead(trunk.feature_geometry(), cfg.hidden, out_dim, normalize=cfg.loss != "direct-cls")
    return trunk, head


def check_config(cfg: PretrainConfig) -> None:
    if cfg.loss not in LOSSES:
        raise ValueError(f"unknown loss {cfg.loss!r}; choose from {LOSSES}")
    if cfg.arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {cfg.arch!r}; choose from {ARCHITECTURES}")
    if cfg.optimizer not in ("adam", "sgd"):
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}; choose adam or sgd")
    lr_at(cfg, 0)
    if min(cfg.iters, cfg.batch_size, cfg.pixels, cfg.ckpt_every, cfg.log_every) < 1:
        raise ValueError("iters, batch size, pixels, ckpt/log intervals must be >= 1")


def run(cfg: PretrainConfig, progress: bool = True, stop_after: int | None = None) -> dict:
    """Train; returns a summary (out, steps, first/last loss, seconds). Raises TrainingDiverged on a
    non-finite loss (last good checkpoint kept) and CheckpointError on an incompatible --resume.
    stop_after: leave after that step with last.pt written, as a preempted job would (resumable)."""
    check_config(cfg)
    if cfg.data is None:
        from bench.paths import default_flow_data

        cfg.data = str(default_flow_data(progress=progress))
    out = Path(cfg.out or f"runs/pretrain-{cfg.loss}")
    cfg.out = str(out)
    last = out / "last.pt"
    if last.exists() and not cfg.resume:
        raise FileExistsError(f"{out} already holds a run ({last}); pass --resume to continue it or choose another --out")
    if cfg.resume and not last.exists():
        raise CheckpointError(f"--resume: {last} does not exist")
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    dataset = FlowFrames(cfg.data, cfg.crop)
    trunk, head = build_model(cfg)
    sigma = Sigma(cfg.sigma, cfg.learn_sigma)
    start_step = 0
    ckpt = None
    if cfg.resume:
        ckpt = load_checkpoint(last)
        saved = ckpt["config"]
        clash = {k: (saved.get(k), getattr(cfg, k)) for k in MODEL_FIELDS if saved.get(k) != getattr(cfg, k)}
        if ckpt["arch"] != cfg.arch or clash:
            raise CheckpointError(f"{last}: cannot resume, the checkpoint was trained with different settings "
                                  f"(saved vs asked: {clash or {'arch': (ckpt['arch'], cfg.arch)}})")
        trunk.load_state_dict(ckpt["trunk"])
        head.load_state_dict(ckpt["head"])
        sigma.load_state_dict(ckpt["extra"]["sigma"])
        start_step = ckpt["step"]
    if cfg.loss == "direct-cls":
        codebook = (ckpt["extra"]["codebook"] if ckpt else
                    torch.from_numpy(fit_flow_codebook(sample_codebook_flows(dataset, cfg.squash, cfg.seed), cfg.classes, cfg.seed)))
        codebook = codebook.to(device)
    trunk.to(device).train()
    head.to(device).train()
    sigma.to(device)
    params = list(trunk.parameters()) + list(head.parameters())
    groups = [{"params": params, "weight_decay": cfg.weight_decay}]
    if cfg.learn_sigma and cfg.loss != "direct-cls":
        groups.append({"params": list(sigma.parameters()), "weight_decay": 0.0})
    # fused kernels: on 2 CPU cores the unfused Adam step over AlexNet's 61M weights costs ~0.6 s
    if cfg.optimizer == "adam":
        optimizer = torch.optim.Adam(groups, lr=cfg.lr, fused=True)
    else:
        optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, fused=True)
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        set_rng_state(ckpt["rng"])  # last: building the model above consumed the global RNG
    out.mkdir(parents=True, exist_ok=True)

    sampler = StepBatchSampler(len(dataset), cfg.batch_size, cfg.seed, start_step, cfg.iters)
    workers = cfg.workers if cfg.workers is not None else (min(8, os.cpu_count() or 1) if device.type == "cuda" else 0)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=workers, pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(cfg.seed))  # keeps the global RNG untouched
    use_amp = cfg.amp and device.type == "cuda"
    extra = {"normalization": {"mean": list(MEAN), "std": list(STD)}, "sources": list(SOURCES)}
    if cfg.loss == "direct-cls":
        extra["codebook"] = codebook.cpu()

    def save(step: int, path: Path, with_optimizer: bool = True) -> None:
        save_checkpoint(path, arch=cfg.arch, trunk=trunk.state_dict(), head=head.state_dict(), loss=cfg.loss,
                        step=step, config=asdict(cfg), optimizer=optimizer.state_dict() if with_optimizer else None,
                        extra={**extra, "sigma": sigma.state_dict()})

    log = open(out / "log.jsonl", "a")
    bar = tqdm(total=cfg.iters, initial=start_step, desc=f"pretrain {cfg.loss}", unit="step", disable=not progress)
    first_loss = last_loss = None
    start = time.perf_counter()
    step = start_step
    try:
        for image, flow, valid in loader:
            t0 = time.perf_counter()
            lr = lr_at(cfg, step)
            for g in optimizer.param_groups:
                g["lr"] = lr
            image, flow, valid = image.to(device, non_blocking=True), flow.to(device), valid.to(device)
            # pixel positions: a pure function of (seed, step), on the CPU, for exact resumes
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
            positions = sample_pixel_positions(valid.cpu(), cfg.pixels, gen).to(device)
            target = gather_flow(flow, positions)
            if cfg.squash:
                target = squash_flow(target)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                activations = trunk.activations(image, SOURCES)
                output = head(activations, positions)
            if cfg.loss == "direct-cls":
                loss = direct_cls_loss(output, target, codebook)
            else:
                loss = cpfs_loss(output, target, sigma(), cfg.loss)
            value = loss.item()
            if not math.isfinite(value):
                raise TrainingDiverged(
                    f"loss became {value} at step {step}; stopped. The last good checkpoint is "
                    f"{last if last.exists() else '(none written yet)'}; try a lower --lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            dt = time.perf_counter() - t0
            sigma_value = sigma.log_sigma.detach().exp().item()
            first_loss = value if first_loss is None else first_loss
            last_loss = value
            if step % cfg.log_every == 0 or step == cfg.iters:
                record = {"step": step, "loss": value, "sigma": sigma_value, "lr": lr,
                          "images_per_s": cfg.batch_size / dt, "time": time.time()}
                log.write(json.dumps(record) + "\n")
                log.flush()
            bar.set_postfix(loss=f"{value:.4f}", sigma=f"{sigma_value:.4f}", img_s=f"{cfg.batch_size / dt:.1f}")
            bar.update(1)
            if cfg.snapshot_every and step % cfg.snapshot_every == 0:
                save(step, out / f"step_{step:06d}.pt", with_optimizer=False)
            if step % cfg.ckpt_every == 0 or step == cfg.iters or step == stop_after:
                save(step, last)
            if step == stop_after:
                break
    finally:
        bar.close()
        log.close()
    if step > start_step:
        plot_training_log(out / "log.jsonl", out / "loss.png", f"CPFS {cfg.loss} ({cfg.arch})")
    return {"out": str(out), "checkpoint": str(last), "start_step": start_step, "steps": step,
            "first_loss": first_loss, "last_loss": last_loss, "seconds": time.perf_counter() - start,
            "data": cfg.data, "device": str(device)}
