"""pretrain/head.py and pretrain/alexnet.py: hypercolumn sampling, the split first layer, geometry."""
import numpy as np
import pytest
import torch

from cpfs_bench.pretrain.alexnet import build_trunk
from cpfs_bench.pretrain.head import SOURCES, HypercolumnHead, sample_features, sample_pixel_positions


@pytest.fixture(scope="module")
def trunk():
    torch.manual_seed(0)
    return build_trunk("caffenet_bn").eval().double()


def test_activation_shapes(trunk):
    acts = trunk.activations(torch.randn(2, 3, 227, 227, dtype=torch.float64))
    shapes = {k: tuple(v.shape) for k, v in acts.items()}
    assert shapes == {"conv1": (2, 96, 55, 55), "pool1": (2, 96, 27, 27), "conv2": (2, 256, 27, 27),
                      "pool2": (2, 256, 13, 13), "conv3": (2, 384, 13, 13), "conv4": (2, 384, 13, 13),
                      "conv5": (2, 256, 13, 13), "pool5": (2, 256, 6, 6), "fc6": (2, 4096), "fc7": (2, 4096)}
    # grouped convolutions as in Caffe
    assert trunk.conv2[0].groups == 2 and trunk.conv4[0].groups == 2 and trunk.conv5[0].groups == 2
    assert trunk.conv3[0].groups == 1


def test_feature_geometry_is_receptive_field_centres(trunk):
    # worked by hand from the CaffeNet layer table: conv1 (k11 s4) output j is centred on 4j+5;
    # pool1 (k3 s2) output m on conv1 2m+1 -> 8m+9; conv2/3 keep the grid (pad = (k-1)/2);
    # pool2 output i on 2i+1 -> 16i+17 (conv3's grid); pool5 output k on 2k+1 -> 32k+33
    g = trunk.feature_geometry()
    assert g["conv1"] == (4, 5) and g["pool1"] == (8, 9) and g["conv3"] == (16, 17) and g["pool5"] == (32, 33)


def dense_bilinear(feature, stride, offset, size):
    """Independent dense upsampling: separable linear interpolation of (C, h, w) to every input pixel."""
    c, h, w = feature.shape

    def weights(n_in):
        j = np.clip((np.arange(size) - offset) / stride, 0, n_in - 1)
        j0 = np.floor(j).astype(int)
        j1 = np.minimum(j0 + 1, n_in - 1)
        m = np.zeros((size, n_in))
        m[np.arange(size), j0] += 1 - (j - j0)
        m[np.arange(size), j1] += j - j0
        return m

    wy, wx = weights(h), weights(w)
    return wy @ feature @ wx.T  # (size, h) @ (C, h, w) @ (w, size) -> (C, size, size)


@torch.no_grad()
def test_sampled_features_equal_dense_upsampling_at_integer_positions(trunk):
    acts = trunk.activations(torch.randn(2, 3, 227, 227, dtype=torch.float64), SOURCES)
    positions = torch.randint(0, 227, (2, 40, 2))
    positions[0, 0] = torch.tensor([0, 0])
    positions[0, 1] = torch.tensor([226, 226])
    for name, (stride, offset) in trunk.feature_geometry().items():
        if name not in SOURCES:
            continue
        sampled = sample_features(acts[name], positions, stride, offset).numpy()
        for b in range(2):
            dense = dense_bilinear(acts[name][b].numpy(), stride, offset, 227)
            expected = dense[:, positions[b, :, 1], positions[b, :, 0]].T
            np.testing.assert_allclose(sampled[b], expected, rtol=1e-10, atol=1e-12)


def test_split_head_equals_naive_concatenation(trunk):
    torch.manual_seed(1)
    head = HypercolumnHead(trunk.feature_geometry(), hidden=32, out_dim=16).double()
    acts = trunk.activations(torch.randn(3, 3, 227, 227, dtype=torch.float64), SOURCES)
    positions = torch.randint(0, 227, (3, 50, 2))
    hyper = head.hypercolumns(acts, positions)
    assert hyper.shape == (3, 50, 4928)
    naive = head(acts, positions, split=False)
    split = head(acts, positions, split=True)
    torch.testing.assert_close(split, naive, rtol=1e-10, atol=1e-12)
    # and the naive path really is fc1 over the concatenation
    manual = torch.nn.functional.normalize(head.fc2(torch.relu(hyper @ head.fc1.weight.T + head.fc1.bias)), dim=2)
    torch.testing.assert_close(naive, manual, rtol=1e-10, atol=1e-12)
    assert torch.allclose(split.norm(dim=2), torch.ones(3, 50, dtype=torch.float64))


def test_positions_drawn_from_valid_pixels_only():
    valid = torch.zeros(2, 20, 30, dtype=torch.bool)
    valid[0, 5:10, 5:25] = True  # 100 valid pixels
    valid[1, :, :3] = True
    g = torch.Generator().manual_seed(0)
    pos = sample_pixel_positions(valid, 64, g)
    assert pos.shape == (2, 64, 2)
    assert valid[0, pos[0, :, 1], pos[0, :, 0]].all() and valid[1, pos[1, :, 1], pos[1, :, 0]].all()
    assert len({tuple(p) for p in pos[0].tolist()}) == 64  # without replacement


def test_sampling_positions_keep_full_precision_for_low_precision_features():
    # under bf16 autocast the activations are bf16; the sampling grid must not be
    feature = torch.randn(1, 4, 55, 55).bfloat16()
    positions = torch.tensor([[[225, 3], [226, 226], [101, 57]]])
    low = sample_features(feature, positions, 4.0, 5.0)
    exact = sample_features(feature.float(), positions, 4.0, 5.0)
    torch.testing.assert_close(low, exact, rtol=0, atol=0)


def test_positions_uniform_over_valid_pixels_and_fallbacks():
    valid = torch.zeros(3, 8, 10, dtype=torch.bool)
    valid[0, 2:6, 3:8] = True  # 20 valid pixels, 5 drawn: every one equally likely
    valid[1, 0, :3] = True  # 3 valid pixels, 5 drawn: with replacement among them
    counts = torch.zeros(8, 10)
    g = torch.Generator().manual_seed(0)
    for _ in range(2000):
        pos = sample_pixel_positions(valid, 5, g)
        counts.index_put_((pos[0, :, 1], pos[0, :, 0]), torch.ones(5), accumulate=True)
        assert valid[1, pos[1, :, 1], pos[1, :, 0]].all()
    hits = counts[valid[0]]
    assert (counts[~valid[0]] == 0).all() and hits.sum() == 10_000
    assert (hits - 500).abs().max() < 5 * 500**0.5  # multinomial spread, sd ~ sqrt(500)
    assert pos[2].min() >= 0 and pos[2, :, 0].max() < 10 and pos[2, :, 1].max() < 8  # none valid: all pixels
