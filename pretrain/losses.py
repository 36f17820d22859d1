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

KINDS = ("kta", "ce", "ce-rev")
LOSSES = KINDS + ("direct-cls",)


def squash_flow(flow: torch.Tensor, max_px: float = 50.0) -> torch.Tensor:
    """Per component sign(f) * min(log(|f| + 1) / log(max_px + 1), 1): pixels -> [-1, 1]."""
    return torch.sign(flow) * torch.clamp(torch.log1p(flow.abs()) / math.log1p(max_px), max=1.0)


def embedding_kernel(embeddings: torch.Tensor) -> torch.Tensor:
    """(B, N, D) -> K_phi (B, N, N) = cosine similarity / 4."""
    e = F.normalize(embeddings, dim=2)
    return e @ e.transpose(1, 2) / 4


def flow_kernel(flow: torch.Tensor, sigma) -> torch.Tensor:
    """(B, N, 2) flow and sigma (same units) -> Gaussian RBF kernel K_f (B, N, N)."""
    sq = (flow * flow).sum(2)
    d2 = (sq[:, :, None] + sq[:, None, :] - 2 * flow @ flow.transpose(1, 2)).clamp(min=0)
    return torch.exp(-d2 / (2 * sigma * sigma))


def kernel_target_alignment(k1: torch.Tensor, k2: torch.Tensor) -> torch.Tensor:
    """Alignment sum(k1 k2) / sqrt(sum k1^2 sum k2^2) per image: (B, N, N) x2 -> (B,)."""
    num = (k1 * k2).sum((1, 2))
    return num / torch.sqrt((k1 * k1).sum((1, 2)) * (k2 * k2).sum((1, 2))).clamp(min=1e-12)


def cpfs_loss(embeddings: torch.Tensor, flow: torch.Tensor, sigma, kind: str) -> torch.Tensor:
    """embeddings (B, N, D) (any norm; cosine is taken here), flow (B, N, 2), sigma float or 0-dim
    tensor in flow units, kind in {"kta", "ce", "ce-rev"} -> 0-dim loss (mean over the batch)."""
    if kind not in KINDS:
        raise ValueError(f"unknown CPFS loss {kind!r}; choose from {KINDS}")
    # kernels in at least float32 even under autocast: softmax over small cosine differences needs the bits
    k_phi = embedding_kernel(embeddings.to(torch.promote_types(embeddings.dtype, torch.float32)))
    k_f = flow_kernel(flow.to(torch.promote_types(flow.dtype, torch.float32)), sigma)
    if kind == "kta":
        return (1 - kernel_target_alignment(k_phi, k_f)).mean()
    n = k_phi.shape[1]
    log_s_phi = torch.log_softmax(k_phi, dim=1)  # softmax over p (rows) for each column q
    log_s_f = torch.log_softmax(k_f, dim=1)
    if kind == "ce":
        return -(log_s_f.exp() * log_s_phi).sum((1, 2)).mean() / n
    return -(log_s_phi.exp() * log_s_f).sum((1, 2)).mean() / n


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
    """k-means codebook (k, 2) over flow vectors (M, 2), in the units the classifier will see.

    Fitted on the training videos themselves, so every class is populated on whatever footage is
    used (a fixed polar grid leaves most bins empty on real video, where small motions dominate)."""
    from sklearn.cluster import KMeans

    flows = np.asarray(flows, np.float64).reshape(-1, 2)
    if len(flows) < k:
        raise ValueError(f"need at least {k} flow vectors to fit a {k}-entry codebook, got {len(flows)}")
    km = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(flows)
    centres = km.cluster_centers_
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
