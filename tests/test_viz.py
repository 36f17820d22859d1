"""pretrain/viz.py (`bench viz`): a PNG of the expected size for a checkpoint of each loss, kernel rows against
formulas written here, and the dense embedding equal to the training path at sampled pixels."""
from dataclasses import asdict

import numpy as np
import pytest
import torch
from PIL import Image

from cpfs_bench.bench.checkpoint import MEAN, STD, save_checkpoint
from cpfs_bench.bench.flowio import write_flow_png
from cpfs_bench.pretrain.losses import LOSSES, Sigma
from cpfs_bench.pretrain.train import PretrainConfig, build_model
from cpfs_bench.pretrain.viz import (
    centre_crop,
    dense_embeddings,
    embedding_figure,
    kernel_rows,
    load_pretrained,
    pick_pixels,
    video_strip,
)


def pretrain_checkpoint(path, loss: str):
    """A freshly initialised CPFS model saved as `bench pretrain` saves it."""
    torch.manual_seed(0)
    cfg = PretrainConfig(loss=loss)
    trunk, head = build_model(cfg)
    extra = {"normalization": {"mean": list(MEAN), "std": list(STD)}, "sigma": Sigma(0.08, learn=False).state_dict()}
    return save_checkpoint(path, arch=cfg.arch, trunk=trunk.state_dict(), head=head.state_dict(), loss=loss, step=0,
                           config=asdict(cfg), extra=extra, with_rng=False)


@pytest.fixture(scope="module")
def frame_and_flow(tmp_path_factory):
    """A 240 x 320 frame with a square that moves 3 px right over a still background, and that flow."""
    root = tmp_path_factory.mktemp("viz")
    rng = np.random.default_rng(0)
    image = (rng.uniform(0, 255, (240, 320, 3)) * 0.3 + 90).astype(np.uint8)
    image[80:160, 120:200] = (200, 40, 40)
    flow = np.zeros((240, 320, 2), np.float32)
    flow[80:160, 120:200, 0] = 3.0
    Image.fromarray(image).save(root / "frame.png")
    write_flow_png(root / "flow.png", flow)
    return root / "frame.png", root / "flow.png", image, flow


@pytest.mark.parametrize("loss", LOSSES)
def test_figure_for_each_loss(loss, frame_and_flow, tmp_path):
    frame, flow, _, _ = frame_and_flow
    ckpt = pretrain_checkpoint(tmp_path / f"{loss}.pt", loss)
    out = embedding_figure(ckpt, frame, flow, tmp_path / "fig.png")
    with Image.open(out) as png:
        assert png.size == (900, 1200)  # 3 columns x (1 + 3 picked pixels) rows of 3 x 3 inches at 100 dpi
        assert np.asarray(png.convert("L")).std() > 10  # not blank
    if loss == "kta":  # without flow: no K_f, and the pixels given
        out = embedding_figure(ckpt, frame, None, tmp_path / "noflow.png", pixels=[(5, 5)])
        with Image.open(out) as png:
            assert png.size == (900, 600)


def test_kernel_rows_dense_embeddings_and_picked_pixels(frame_and_flow, tmp_path):
    frame, _, image, flow = frame_and_flow
    trunk, head, info = load_pretrained(pretrain_checkpoint(tmp_path / "kta.pt", "kta"))
    assert info["sigma"] == pytest.approx(0.08) and info["squash"]
    crop, flow_crop = centre_crop(image, flow, 227)
    np.testing.assert_array_equal(crop, image[6:233, 46:273])
    emb = dense_embeddings(trunk, head, crop, info["mean"], info["std"])
    # the dense path equals the training path (activations once, head at sampled positions)
    x = torch.from_numpy(crop.astype(np.float32) / 255).permute(2, 0, 1)
    x = (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    points = [(0, 0), (100, 37), (226, 226)]
    with torch.no_grad():
        direct = head(trunk.activations(x[None], tuple(head.sources)), torch.tensor([points], dtype=torch.float32))[0]
    np.testing.assert_allclose(np.stack([emb[y, px] for px, y in points]), direct.numpy(), atol=1e-5)
    # kernel rows, written another way in float64
    p = (100, 37)
    f = np.sign(flow_crop) * np.minimum(np.log1p(np.abs(flow_crop)) / np.log(51), 1)
    k_phi, k_f = kernel_rows(emb, f, p, 0.08)
    e = emb.astype(np.float64)
    cos = (e * e[p[1], p[0]]).sum(-1) / np.linalg.norm(e, axis=-1) / np.linalg.norm(e[p[1], p[0]])
    np.testing.assert_allclose(k_phi, cos / 4, atol=1e-6)
    d = f.astype(np.float64) - f[p[1], p[0]]
    np.testing.assert_allclose(k_f, np.exp(-(d[..., 0] ** 2 + d[..., 1] ** 2) / (2 * 0.08 ** 2)), rtol=1e-6)
    fastest, slowest, _ = pick_pixels(flow_crop, 227)
    assert flow_crop[fastest[1], fastest[0], 0] == 3 and flow_crop[slowest[1], slowest[0], 0] == 0


def test_video_strip_and_refusals(tmp_path):
    from cpfs_bench.baselines.random_init import write_random_checkpoint
    from cpfs_bench.bench.checkpoint import CheckpointError

    frames = tmp_path / "clip"
    frames.mkdir()
    rng = np.random.default_rng(1)
    background = rng.uniform(60, 120, (240, 320, 3)).astype(np.uint8)
    for t in range(6):
        image = background.copy()
        image[80:140, 60 + 4 * t:120 + 4 * t] = (220, 200, 30)
        Image.fromarray(image).save(frames / f"{t:06d}.jpg")
    out = video_strip(pretrain_checkpoint(tmp_path / "ce.pt", "ce"), frames, tmp_path / "strip.png", frames=3)
    with Image.open(out) as png:
        assert png.size == (900, 900)
    with pytest.raises(CheckpointError, match="random.pt: not a `bench pretrain` checkpoint"):
        load_pretrained(write_random_checkpoint(tmp_path / "random.pt"))
    with pytest.raises(ValueError, match="outside the 227 x 227 crop"):
        embedding_figure(tmp_path / "ce.pt", frames / "000000.jpg", None, tmp_path / "x.png", pixels=[(300, 5)])
