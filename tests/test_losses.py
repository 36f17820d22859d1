"""pretrain/losses.py against an independent float64 implementation written with explicit loops."""
import math

import numpy as np
import pytest
import torch

from cpfs_bench.pretrain.losses import (
    cpfs_loss,
    direct_cls_loss,
    fit_flow_codebook,
    flow_kernel,
    kernel_target_alignment,
    quantize_flow,
    squash_flow,
)


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


def three_motion_groups(n=512, seed=0):
    """Squashed flow of n pixels in three rigid motions (+ small noise), and their group ids."""
    g = torch.Generator().manual_seed(seed)
    groups = torch.randint(0, 3, (n,), generator=g)
    motions = torch.tensor([[4.0, 0.0], [-2.0, 3.0], [0.0, 0.0]])  # pixels per frame
    flow = motions[groups] + 0.2 * torch.randn(n, 2, generator=g)
    return squash_flow(flow)[None].double(), groups


def test_default_loss_cannot_be_minimised_by_constant_embeddings():
    from cpfs_bench.pretrain.train import PretrainConfig

    cfg = PretrainConfig()
    flow, groups = three_motion_groups()
    ideal = torch.nn.functional.one_hot(groups, cfg.embed_dim).double()[None]  # one direction per motion
    constant = torch.ones_like(ideal)
    # every sigma the default run can reach: its initial value, or any value when sigma is learned
    reachable = np.geomspace(1e-3, 1e3, 61) if cfg.learn_sigma else [cfg.sigma]
    for kind in ("kta", "ce", "ce-rev"):
        ideal_loss = cpfs_loss(ideal, flow, cfg.sigma, kind).item()
        best_constant = min(cpfs_loss(constant, flow, s, kind).item() for s in reachable)
        assert best_constant > ideal_loss + 1e-3, (kind, best_constant, ideal_loss)


def test_learned_sigma_lets_kta_collapse():
    """Why the default sigma is fixed: with sigma free, constant embeddings reach KTA's minimum."""
    flow, groups = three_motion_groups()
    ideal = torch.nn.functional.one_hot(groups, 16).double()[None]
    constant = torch.ones_like(ideal)
    sigmas = np.geomspace(0.02, 5, 30)
    best_ideal = min(cpfs_loss(ideal, flow, s, "kta").item() for s in sigmas)
    assert cpfs_loss(constant, flow, 5.0, "kta").item() < 1e-3 < best_ideal


def test_target_entropy_and_mean_cosine_against_direct_formulas():
    from cpfs_bench.pretrain.losses import mean_pairwise_cosine, target_entropy

    g = torch.Generator().manual_seed(1)
    e, f = torch.randn(2, 9, 4, generator=g, dtype=torch.float64), torch.randn(2, 9, 2, generator=g, dtype=torch.float64)
    for kind, kernel in (("ce", flow_kernel(f, 0.7)), ("ce-rev", torch.nn.functional.cosine_similarity(
            e[:, :, None], e[:, None], dim=3) / 4)):
        s = torch.softmax(kernel, dim=1)
        direct = (-(s * s.log()).sum((1, 2)) / 9).mean()
        assert torch.allclose(target_entropy(e, f, 0.7, kind, block=4).double(), direct, atol=1e-5)
        # the CE loss minus its target entropy is a KL divergence: >= 0, and 0 when the kernels agree
        assert cpfs_loss(e, f, 0.7, kind).item() - target_entropy(e, f, 0.7, kind).item() > -1e-6
    cos = torch.nn.functional.cosine_similarity(e[:, :, None], e[:, None], dim=3)
    off = (cos.sum((1, 2)) - 9) / (9 * 8)
    assert abs(mean_pairwise_cosine(e) - off.mean().item()) < 1e-6
    assert abs(mean_pairwise_cosine(torch.ones(1, 5, 3)) - 1.0) < 1e-6


def test_direct_cls_codebook_is_symmetric_under_a_flip():
    rng = np.random.default_rng(0)
    flows = rng.normal(size=(4000, 2)) * [1.0, 0.5] + [0.6, 0.0]  # lopsided: more motion to the right
    codebook = torch.from_numpy(fit_flow_codebook(flows, 16, seed=0))
    mirrored = codebook * torch.tensor([-1.0, 1.0])
    for c in mirrored:  # the codebook holds the mirror of every centre
        assert ((codebook - c).abs().sum(1) < 1e-6).any()
    f = torch.from_numpy(rng.normal(size=(500, 2))).float()
    flipped = f * torch.tensor([-1.0, 1.0])
    a, b = quantize_flow(f, codebook), quantize_flow(flipped, codebook)
    assert torch.allclose(codebook[a] * torch.tensor([-1.0, 1.0]), codebook[b])  # flip commutes with quantising
    with pytest.raises(ValueError, match="even"):
        fit_flow_codebook(flows, 15)
