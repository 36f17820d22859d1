"""The configs of `bench flow` and `bench pretrain`, torch- and OpenCV-free: the command line reads their
defaults without importing a model (pretrain/extract.py and pretrain/train.py re-export them)."""
from __future__ import annotations

from dataclasses import dataclass, field

#: optical-flow methods of `bench flow` (pretrain/flow.py)
FLOW_METHODS = ("dis-medium", "dis-fast", "dis-ultrafast", "farneback")


@dataclass
class FlowConfig:
    """Options of `bench flow`. resize is (height, width) or None; stride keeps every k-th frame."""

    videos: list[str] = field(default_factory=list)
    out: str = ""
    method: str = "dis-medium"
    resize: tuple[int, int] | None = None
    stride: int = 1
    workers: int = 0  # 0 = every core
    max_frames: int | None = None


@dataclass(frozen=True)
class PretrainConfig:
    """CPFS pretraining. The paper does not publish its optimiser or schedule; these defaults are our
    choice (Adam, cosine decay) and sized so the embedded default finishes in minutes on 2 CPU cores.
    Scale up with iters and batch_size for real pretraining.

    sigma: the flow kernel's bandwidth, fixed at 0.06 in squashed-flow units by default (as the public
    re-implementation). The paper learns it (learn_sigma=True), but with a learned sigma KTA has a
    collapsed global minimum (constant embeddings, sigma -> infinity); see README "Choice of sigma"."""

    loss: str = "kta"
    data: str | None = None  # a `bench flow` folder; None = the embedded default world
    out: str | None = None  # None = runs/pretrain-<loss>
    arch: str = "caffenet_bn"
    iters: int = 800
    batch_size: int = 8
    pixels: int = 512  # sampled pixels per image (the sparsity trick)
    hidden: int = 256  # hidden width of the head's MLP (4928 -> hidden -> D)
    embed_dim: int = 16
    classes: int = 16  # direct-cls: flow codebook size (even: mirrored pairs)
    optimizer: str = "adam"
    lr: float = 1e-3
    fc_lr_mult: float = 1.0  # lr multiplier on the trunk's fc6/fc7 (the paper states none; issue 24's fc collapse)
    momentum: float = 0.9  # SGD only
    weight_decay: float = 0.0
    schedule: str = "cosine"  # cosine | step (x0.1 at 50% and 75%) | constant
    sigma: float = 0.06  # flow-kernel bandwidth (initial value when learned), squashed-flow units with squash
    learn_sigma: bool = False
    squash: bool = True  # flow -> sign(f) min(log(|f|+1)/log(51), 1) before the kernel
    crop: int = 227
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # bf16 autocast on CUDA; ignored on CPU
    workers: int | None = None  # data-loading processes; None = 0 on CPU, min(8, cores) on CUDA
    ckpt_every: int = 100  # write last.pt (resumable) every this many steps, at the end, on SIGINT/SIGTERM
    save_minutes: float = 10.0  # ... and after this much wall time since the last save
    snapshot_every: int = 0  # keep weights-only step_XXXXXX.pt every this many steps; 0 = never
    log_every: int = 1
    resume: bool = False
