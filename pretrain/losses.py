"""CPFS losses: compare the kernel over pixel embeddings with the kernel over their optical flow.

Per image, over N sampled pixels:
    K_phi(p, q) = cos(phi_p, phi_q) / 4
    K_f(p, q)   = exp(-|f_p - f_q|^2 / (2 sigma^2))
    S_phi, S_f  = softmax of each kernel over p, for every column q
    kta    = 1 - sum K_phi K_f / sqrt(sum K_phi^2 sum K_f^2)
    ce     = -(1/N) sum_q sum_p S_f log S_phi          (flow is the target)
    ce-rev = -(1/N) sum_q sum_p S_phi log S_f
All pairs are used, p = q included; the loss is the mean over the batch.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from cpfs_bench.bench.losses import KERNEL_LOSSES, LOSSES  # noqa: F401  (the specs live in the ground)

KINDS = KERNEL_LOSSES


def squash_flow(flow: torch.Tensor, max_px: float = 50.0) -> torch.Tensor:
    """Per component sign(f) * min(log(|f| + 1) / log(max_px + 1), 1): pixels -> [-1, 1]."""
    return torch.sign(flow) * torch.clamp(torch.log1p(flow.abs()) / math.log1p(max_px), max=1.0)


def embedding_kernel(embeddings: torch.Tensor, columns: slice = slice(None)) -> torch.Tensor:
    """(B, N, D) -> K_phi (B, N, T) = cosine similarity / 4 against the pixels in `columns` (all: T = N)."""
    e = F.normalize(embeddings, dim=2)
    return e @ e[:, columns].transpose(1, 2) / 4


def flow_kernel(flow: torch.Tensor, sigma, columns: slice = slice(None)) -> torch.Tensor:
    """(B, N, 2) flow and sigma (same units) -> Gaussian RBF kernel K_f (B, N, T) against `columns`."""
    sq = (flow * flow).sum(2)
    cols = flow[:, columns]
    d2 = (sq[:, :, None] + sq[:, None, columns] - 2 * flow @ cols.transpose(1, 2)).clamp(min=0)
    return torch.exp(-d2 / (2 * sigma * sigma))


def alignment_sums(k1: torch.Tensor, k2: torch.Tensor) -> torch.Tensor:
    """(B, N, T) x2 -> (3, B): sum k1 k2, sum k1^2, sum k2^2 per image (they add over column blocks)."""
    return torch.stack([(k1 * k2).sum((1, 2)), (k1 * k1).sum((1, 2)), (k2 * k2).sum((1, 2))])


def alignment_from_sums(sums: torch.Tensor) -> torch.Tensor:
    """(3, B) alignment_sums -> (B,) alignment sum(k1 k2) / sqrt(sum k1^2 sum k2^2)."""
    num, k1_sq, k2_sq = sums
    return num / torch.sqrt(k1_sq * k2_sq).clamp(min=1e-12)


def kernel_target_alignment(k1: torch.Tensor, k2: torch.Tensor) -> torch.Tensor:
    """Alignment sum(k1 k2) / sqrt(sum k1^2 sum k2^2) per image: (B, N, N) x2 -> (B,)."""
    return alignment_from_sums(alignment_sums(k1, k2))


def _column_block_terms(embeddings, flow, sigma, start: int, stop: int, kind: str) -> torch.Tensor:
    """The loss's sums over rows p for the columns q in [start, stop): for "kta" (3, B) = sum K_phi K_f,
    sum K_phi^2, sum K_f^2; for "ce"/"ce-rev" (B,) = sum_q sum_p target * log prediction.
    Columns are independent (the softmax runs over p), so blocks add up to the whole."""
    columns = slice(start, stop)
    k_phi, k_f = embedding_kernel(embeddings, columns), flow_kernel(flow, sigma, columns)
    if kind == "kta":
        return alignment_sums(k_phi, k_f)
    log_s_phi = torch.log_softmax(k_phi, dim=1)  # softmax over p (rows) for each column q
    log_s_f = torch.log_softmax(k_f, dim=1)
    if kind == "ce":
        return (log_s_f.exp() * log_s_phi).sum((1, 2))
    return (log_s_phi.exp() * log_s_f).sum((1, 2))


@torch.no_grad()
def target_entropy(embeddings: torch.Tensor, flow: torch.Tensor, sigma, kind: str, block: int | None = None) -> torch.Tensor:
    """The column-softmax entropy of the CE loss's target, -(1/N) sum_q sum_p S log S, mean over the
    batch (0-dim): S_f for "ce", S_phi for "ce-rev". loss - target_entropy = KL(target || prediction),
    which is what the CE losses minimise: their absolute value sits near log N because both column
    softmaxes of kernels bounded in [-1/4, 1/4] and [0, 1] are close to uniform."""
    if kind not in ("ce", "ce-rev"):
        raise ValueError(f"target_entropy is defined for the CE losses, not {kind!r}")
    embeddings, flow = embeddings.float(), flow.float()
    batch, n = embeddings.shape[:2]
    block = block or max(16, BLOCK_BYTES // (4 * max(batch * n, 1)))
    total = torch.zeros(batch, device=flow.device)
    for start in range(0, n, block):
        columns = slice(start, min(start + block, n))
        k = flow_kernel(flow, sigma, columns) if kind == "ce" else embedding_kernel(embeddings, columns)
        log_s = torch.log_softmax(k, dim=1)
        total -= (log_s.exp() * log_s).sum((1, 2))
    return (total / n).mean()


@torch.no_grad()
def mean_pairwise_cosine(embeddings: torch.Tensor) -> float:
    """Mean cosine similarity over pairs p != q of each image's pixel embeddings (B, N, D), averaged
    over the batch: near 1 means the embeddings collapsed to one vector."""
    e = F.normalize(embeddings.float(), dim=2)
    n = e.shape[1]
    s = e.sum(1)  # sum_p sum_q e_p . e_q = |sum_p e_p|^2, without the N x N matrix
    pair_sum = (s * s).sum(1) - (e * e).sum((1, 2))
    return (pair_sum / max(n * (n - 1), 1)).mean().item()


# one (B, N, block) float32 kernel slice at most this big; smaller problems stay dense
BLOCK_BYTES = 256 * 2**20


def cpfs_loss(embeddings: torch.Tensor, flow: torch.Tensor, sigma, kind: str, block: int | None = None) -> torch.Tensor:
    """embeddings (B, N, D) (any norm; cosine is taken here), flow (B, N, 2), sigma float or 0-dim
    tensor in flow units, kind in {"kta", "ce", "ce-rev"} -> 0-dim loss (mean over the batch).

    The N x N kernels are built `block` columns at a time (None: as many as keep one (B, N, block)
    float32 slice within BLOCK_BYTES, so the default N=512 stays one dense block) and, when there is
    more than one block and a gradient is needed, recomputed during backward instead of kept
    (activation checkpointing): memory O(B N block + B N D) instead of O(B N^2), for one extra kernel
    evaluation. Same value and gradients as the dense computation (tested in float64)."""
    if kind not in KINDS:
        raise ValueError(f"unknown CPFS loss {kind!r}; choose from {KINDS}")
    batch, n = embeddings.shape[:2]
    if block is None:
        block = max(16, BLOCK_BYTES // (4 * max(batch * n, 1)))
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    # kernels in at least float32 even when the head ran in bf16: softmax over small cosine differences
    # needs the bits
    embeddings = embeddings.to(torch.promote_types(embeddings.dtype, torch.float32))
    flow = flow.to(torch.promote_types(flow.dtype, torch.float32))
    sigma = torch.as_tensor(sigma, dtype=flow.dtype, device=flow.device)
    bounds = [(start, min(start + block, n)) for start in range(0, n, block)]
    recompute = len(bounds) > 1 and torch.is_grad_enabled()
    terms = 0
    for start, stop in bounds:
        if recompute:
            terms = terms + checkpoint(_column_block_terms, embeddings, flow, sigma, start, stop, kind,
                                       use_reentrant=False)
        else:
            terms = terms + _column_block_terms(embeddings, flow, sigma, start, stop, kind)
    if kind == "kta":
        return (1 - alignment_from_sums(terms)).mean()
    return -terms.mean() / n


class Sigma(nn.Module):
    """The flow kernel's bandwidth, kept positive as exp(log_sigma); learned unless fixed."""

    def __init__(self, init: float = 0.06, learn: bool = True):
        super().__init__()
        if init <= 0:
            raise ValueError(f"sigma must be positive, got {init}")
        self.log_sigma = nn.Parameter(torch.tensor(math.log(init)), requires_grad=learn)

    def forward(self) -> torch.Tensor:
        return self.log_sigma.exp()


def fit_flow_codebook(flows: np.ndarray, k: int = 16, seed: int = 0) -> np.ndarray:
    """k-means codebook (k, 2) over flow vectors (M, 2), in the units the classifier will see,
    symmetric under a horizontal flip: for every centre (u, v) the codebook holds (-u, v).

    Fitted on the training videos themselves, so every class is populated on whatever footage is
    used (a fixed polar grid leaves most bins empty on real video, where small motions dominate).
    Training flips frames (negating u), so the k/2 centres are fitted to the flow folded onto u >= 0
    and mirrored: a flipped pixel's class is the mirror of the unflipped one's."""
    from sklearn.cluster import KMeans

    if k < 2 or k % 2:
        raise ValueError(f"the direct-cls codebook size must be even (mirrored pairs), got {k}")
    flows = np.asarray(flows, np.float64).reshape(-1, 2)
    if len(flows) < k // 2:
        raise ValueError(f"need at least {k // 2} flow vectors to fit a {k}-entry codebook, got {len(flows)}")
    folded = np.stack([np.abs(flows[:, 0]), flows[:, 1]], 1)
    half = KMeans(n_clusters=k // 2, n_init=3, random_state=seed).fit(folded).cluster_centers_
    centres = np.concatenate([half, half * np.array([-1.0, 1.0])])
    order = np.lexsort((centres[:, 1], centres[:, 0]))  # stable class ids: sorted by (u, v)
    return centres[order].astype(np.float32)


def quantize_flow(flow: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """(..., 2) flow -> (...) long index of the nearest codebook entry (codebook (C, 2))."""
    d = ((flow[..., None, :] - codebook) ** 2).sum(-1)
    return d.argmin(-1)


def direct_cls_loss(logits: torch.Tensor, flow: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """logits (B, N, C), flow (B, N, 2), codebook (C, 2) -> 0-dim cross-entropy against quantised flow."""
    target = quantize_flow(flow.float(), codebook.to(flow.device))
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1))
