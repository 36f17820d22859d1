"""evaluate/fast_rcnn.py: RoI pooling geometry against the trunk's own pool5, Fast R-CNN's sampling,
its loss in float64, and NMS against torchvision's."""
import numpy as np
import pytest
import torch
from torchvision.ops import nms as tv_nms

from cpfs_bench.evaluate.fast_rcnn import FastRCNN, fast_rcnn_loss, nms, sample_rois
from cpfs_bench.pretrain.alexnet import CaffeNet


@pytest.mark.parametrize("batch_norm", [True, False])
def test_whole_input_box_pools_exactly_pool5(batch_norm):
    torch.manual_seed(0)
    trunk = CaffeNet(batch_norm=batch_norm).eval()
    x = torch.randn(2, 3, 227, 227)
    with torch.no_grad():
        expected = trunk.activations(x, ("pool5", "fc7"))
        model = FastRCNN(trunk).eval()
        assert (model.stride, model.offset) == (16, 17)  # conv5 cell j is centred on pixel 16 j + 17
        rois = torch.tensor([[0, 0, 0, 226, 226], [1, 0, 0, 226, 226]], dtype=torch.float32)
        conv5 = trunk.activations(x, ("conv5",))["conv5"]
        from torchvision.ops import roi_pool

        pooled = roi_pool(conv5, model.roi_cells(rois, 13, 13), (6, 6), 1.0)
        assert torch.equal(pooled, expected["pool5"])
        scores, deltas = model(x, rois)
        fc7 = trunk.fc7(trunk.fc6(pooled.flatten(1)))
        assert torch.allclose(fc7, expected["fc7"], atol=1e-5)
        assert scores.shape == (2, 21) and deltas.shape == (2, 84)
        # the reference's round(x / 16) maps the same box to cells 0..14 of a 13-cell map: not pool5
        reference = FastRCNN(CaffeNet(batch_norm=batch_norm), roi_mapping="fast-rcnn")
        other = roi_pool(conv5, reference.roi_cells(rois, 13, 13), (6, 6), 1.0)
        assert not torch.equal(other, expected["pool5"])


def test_a_box_maps_to_the_cells_centred_inside_it():
    model = FastRCNN(CaffeNet())
    # cells centred on 17, 33, ..., 209: a box over pixels 33..81 covers the centres of cells 1..4
    cells = model.roi_cells(torch.tensor([[0, 33., 40, 81, 500]]), 13, 13)
    assert cells[0].tolist() == [0, 1, 1, 4, 12]  # y2 clamped to the last cell


def test_sampling_follows_fast_rcnn():
    rng = np.random.default_rng(0)
    overlaps = np.concatenate([np.full(40, 0.7), np.full(100, 0.3), np.full(50, 0.05), [1.0, 0.5, 0.1]])
    keep, n_fg = sample_rois(overlaps, 64, 0.25, 0.5, 0.5, 0.1, rng)
    assert n_fg == 16 and len(keep) == 64 and len(set(keep.tolist())) == 64
    assert (overlaps[keep[:16]] >= 0.5).all()
    assert ((overlaps[keep[16:]] >= 0.1) & (overlaps[keep[16:]] < 0.5)).all()
    # few foreground: all of them, the rest background; too few background: fewer RoIs
    keep, n_fg = sample_rois(np.array([0.9, 0.8, 0.2, 0.2, 0.0]), 64, 0.25, 0.5, 0.5, 0.1, rng)
    assert n_fg == 2 and sorted(keep[:2].tolist()) == [0, 1] and sorted(keep[2:].tolist()) == [2, 3]


def test_loss_matches_float64_formula():
    rng = np.random.default_rng(1)
    r, c = 12, 21
    scores, deltas = rng.normal(size=(r, c)), rng.normal(size=(r, 4 * c)) * 2
    labels = np.array([3, 0, 7, 0, 0, 20, 1, 0, 0, 0, 5, 0])
    targets = rng.normal(size=(r, 4))
    loss_cls, loss_box = fast_rcnn_loss(torch.tensor(scores), torch.tensor(deltas), torch.tensor(labels),
                                        torch.tensor(targets))
    log_softmax = scores - np.log(np.exp(scores).sum(1, keepdims=True))
    expected_cls = -np.mean(log_softmax[np.arange(r), labels])
    # SmoothL1Loss with loss weights 1 on the RoI's own class' 4 deltas, summed, divided by the batch size
    weights = np.zeros((r, 4 * c))
    expanded = np.zeros((r, 4 * c))
    for i, k in enumerate(labels):
        if k > 0:
            weights[i, 4 * k:4 * k + 4] = 1
            expanded[i, 4 * k:4 * k + 4] = targets[i]
    d = weights * (deltas - expanded)
    expected_box = np.where(np.abs(d) < 1, 0.5 * d ** 2, np.abs(d) - 0.5).sum() / r
    assert loss_cls.item() == pytest.approx(expected_cls, rel=1e-12)
    assert loss_box.item() == pytest.approx(expected_box, rel=1e-12)


def test_nms_matches_torchvision_on_inclusive_boxes():
    rng = np.random.default_rng(2)
    corner = rng.uniform(0, 100, (200, 2))
    boxes = np.concatenate([corner, corner + rng.uniform(2, 40, (200, 2))], 1).round()
    scores = rng.permutation(200).astype(np.float64)  # distinct scores: one right order
    keep = nms(boxes, scores, 0.3)
    # torchvision counts x2 - x1; inclusive pixel boxes are [x1, x2 + 1) in its terms
    expected = tv_nms(torch.tensor(np.concatenate([boxes[:, :2], boxes[:, 2:] + 1], 1)), torch.tensor(scores), 0.3)
    assert keep.tolist() == expected.tolist()
