"""pretrain/losses.py against an independent float64 implementation written with explicit loops."""
import math

import numpy as np
import pytest
import torch

from cpfs_bench.pretrain.losses import (cpfs_loss, direct_cls_loss, fit_flow_codebook, flow_kernel, kernel_target_alignment,
                             quantize_flow, squash_flow)


def reference_loss(emb, flow, sigma, kind):
    """Loops over images, pixel pairs and columns, in float64 numpy."""
    total = 0.0
    b, n, _ = emb.shape
    for i in range(b):
        k_phi = np.zeros((n, n))
        k_f = np.zeros((n, n))
        for p in range(n):
            for q in range(n):
                k_phi[p, q] = emb[i, p] @ emb[i, q] / (np.linalg.norm(emb[i, p]) * np.linalg.norm(emb[i, q])) / 4
                k_f[p, q] = math.exp(-np.sum((flow[i, p] - flow[i, q]) ** 2) / (2 * sigma**2))
        if kind == "kta":
            total += 1 - np.sum(k_phi * k_f) / math.sqrt(np.sum(k_phi**2) * np.sum(k_f**2))
            continue
        loss = 0.0
        for q in range(n):
            s_phi = np.exp(k_phi[:, q]) / np.exp(k_phi[:, q]).sum()
            s_f = np.exp(k_f[:, q]) / np.exp(k_f[:, q]).sum()
            target, pred = (s_f, s_phi) if kind == "ce" else (s_phi, s_f)
            loss -= sum(target[p] * math.log(pred[p]) for p in range(n))
        total += loss / n
    return total / b


def numeric_grad(fn, x, h=1e-6):
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        g[idx] = (fn(xp) - fn(xm)) / (2 * h)
    return g


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(2, 7, 5)) * rng.uniform(0.5, 3, size=(2, 7, 1))  # any norm
    flow = rng.normal(scale=0.3, size=(2, 7, 2))
    return emb, flow, 0.25


# block 3 splits the 7 pixels' kernel columns 3 + 3 + 1 and recomputes them during backward
@pytest.mark.parametrize("block", [512, 3], ids=["dense", "column-blocks"])
@pytest.mark.parametrize("kind", ["kta", "ce", "ce-rev"])
def test_loss_value_matches_reference(batch, kind, block):
    emb, flow, sigma = batch
    ours = cpfs_loss(torch.tensor(emb), torch.tensor(flow), sigma, kind, block=block)
    assert ours.dim() == 0
    assert ours.item() == pytest.approx(reference_loss(emb, flow, sigma, kind), rel=1e-10, abs=1e-12)
    ours32 = cpfs_loss(torch.tensor(emb, dtype=torch.float32), torch.tensor(flow, dtype=torch.float32),
                       torch.tensor(sigma), kind, block=block)
    assert ours32.item() == pytest.approx(reference_loss(emb, flow, sigma, kind), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("block", [512, 3], ids=["dense", "column-blocks"])
@pytest.mark.parametrize("kind", ["kta", "ce", "ce-rev"])
def test_loss_gradients_match_finite_differences(batch, kind, block):
    emb, flow, sigma = batch
    e = torch.tensor(emb, requires_grad=True)
    f = torch.tensor(flow, requires_grad=True)
    s = torch.tensor(sigma, dtype=torch.float64, requires_grad=True)
    cpfs_loss(e, f, s, kind, block=block).backward()
    np.testing.assert_allclose(e.grad.numpy(), numeric_grad(lambda x: reference_loss(x, flow, sigma, kind), emb),
                               rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(f.grad.numpy(), numeric_grad(lambda x: reference_loss(emb, x, sigma, kind), flow),
                               rtol=1e-5, atol=1e-8)
    ds = numeric_grad(lambda x: reference_loss(emb, flow, float(x[0]), kind), np.array([sigma]))[0]
    assert s.grad.item() == pytest.approx(ds, rel=1e-5, abs=1e-8)


def test_kta_zero_for_identical_kernels_and_scale_invariant():
    rng = np.random.default_rng(1)
    k = torch.tensor(rng.uniform(0, 1, size=(3, 6, 6)))
    k2 = torch.tensor(rng.uniform(0, 1, size=(3, 6, 6)))
    assert torch.allclose(1 - kernel_target_alignment(k, k), torch.zeros(3, dtype=torch.float64), atol=1e-14)
    a = kernel_target_alignment(k, k2)
    assert torch.allclose(kernel_target_alignment(7.5 * k, k2), a, atol=1e-14)
    assert torch.allclose(kernel_target_alignment(k, 0.01 * k2), a, atol=1e-14)
    assert (a < 1).all()


def test_kta_zero_when_embedding_kernel_equals_flow_kernel():
    # embeddings whose cosine/4 kernel is exactly a Gaussian flow kernel: alignment 1, loss 0
    flow = torch.zeros(1, 4, 2)
    flow[0, 2:] = 100.0  # two groups far apart: K_f is block-diagonal ones
    emb = torch.tensor([[[1.0, 0], [1, 0], [0, 1], [0, 1]]])  # orthogonal groups: K_phi = K_f / 4
    assert cpfs_loss(emb, flow, 0.1, "kta").item() == pytest.approx(0.0, abs=1e-7)


def test_flow_kernel_matches_pairwise_formula():
    rng = np.random.default_rng(2)
    f = rng.normal(size=(2, 9, 2))
    k = flow_kernel(torch.tensor(f), 0.7).numpy()
    d2 = ((f[:, :, None, :] - f[:, None, :, :]) ** 2).sum(-1)
    np.testing.assert_allclose(k, np.exp(-d2 / (2 * 0.49)), rtol=1e-12, atol=1e-12)


def test_squash_flow_formula():
    f = np.array([-100.0, -50, -3, -0.2, 0, 0.2, 3, 50, 100])
    expected = np.array([np.sign(x) * min(math.log(abs(x) + 1) / math.log(51), 1) for x in f])
    np.testing.assert_allclose(squash_flow(torch.tensor(f)).numpy(), expected, rtol=1e-12)


def test_unknown_kind_rejected():
    with pytest.raises(ValueError, match="unknown CPFS loss"):
        cpfs_loss(torch.zeros(1, 2, 3), torch.zeros(1, 2, 2), 1.0, "mse")


def test_direct_cls_codebook_populated_and_quantisation_nearest():
    rng = np.random.default_rng(3)
    # flow like real footage: mostly small motions, a few large ones
    flows = np.concatenate([rng.normal(scale=0.05, size=(4000, 2)), rng.normal(scale=0.5, size=(500, 2))])
    codebook = fit_flow_codebook(flows, k=16, seed=0)
    assert codebook.shape == (16, 2)
    labels = quantize_flow(torch.tensor(flows, dtype=torch.float32), torch.tensor(codebook)).numpy()
    assert len(np.unique(labels)) == 16  # every class populated
    brute = np.array([np.argmin([np.sum((v - c) ** 2) for c in codebook]) for v in flows[:200]])
    np.testing.assert_array_equal(labels[:200], brute)
    logits = torch.zeros(1, 5, 16)
    loss = direct_cls_loss(logits, torch.tensor(flows[None, :5], dtype=torch.float32), torch.tensor(codebook))
    assert loss.item() == pytest.approx(math.log(16), rel=1e-6)  # uniform logits
