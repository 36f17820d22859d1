"""evaluate/initialization.py (`--init` of the fine-tuning evaluations), each mode against a formula written here:
- rescale on a BatchNorm trunk: the network stays the same function up to one positive factor per layer, the
  product of the reported weight scales (ReLU and max pooling are positively homogeneous, BatchNorm is folded, so
  scaling a layer's weights and bias by s_l and its input by C_{l-1} scales its output by C_l = s_l C_{l-1}), and
  a fresh random gradient then has nearly one gradient / weight ratio in every layer (magic_init -cs);
- reinit-fc: conv1-conv5 (weights and BatchNorm) bit-identical, fc6 / fc7 pre-activations with mean 0.1 and
  standard deviation 1 per channel on the images measured, computed in float64 from the weights.
"""
import copy

import numpy as np
import pytest
import torch
from PIL import Image

from cpfs_bench.bench.checkpoint import MEAN, STD
from cpfs_bench.bench.images import load_batches
from cpfs_bench.evaluate.initialization import check_init, initialize_trunk
from cpfs_bench.pretrain.alexnet import PARAMETER_LAYERS, build_trunk

CONV = ("conv1", "conv2", "conv3", "conv4", "conv5")


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """32 smooth random images of varied sizes (what the trunk measures needs only be image-like)."""
    root = tmp_path_factory.mktemp("init-images")
    rng = np.random.default_rng(0)
    for i in range(32):
        small = rng.uniform(0, 255, (8, 10, 3)).astype(np.uint8)
        Image.fromarray(small).resize((120 + 4 * i, 100 + 3 * i), Image.BILINEAR).save(root / f"{i:03d}.jpg")
    return sorted(root.glob("*.jpg"))


def trained_like_bn_trunk(seed=0):
    """A caffenet_bn trunk whose BatchNorm layers hold non-trivial statistics and affine parameters."""
    torch.manual_seed(seed)
    trunk = build_trunk("caffenet_bn")
    for m in trunk.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(0.3, 3)
            m.weight.data.uniform_(0.5, 2)
            m.bias.data.normal_(0, 0.3)
    return trunk


def test_rescale_scales_each_layer_by_the_product_of_the_reported_factors(image_folder):
    trunk = trained_like_bn_trunk()
    before = copy.deepcopy(trunk).eval()
    state = torch.get_rng_state()
    report = initialize_trunk(trunk, "rescale", image_folder, MEAN, STD, images=32, seed=0)
    assert torch.equal(torch.get_rng_state(), state)  # its own generator: the fine-tuning's draws are unchanged
    assert trunk.training and report["folded_batchnorm"] and report["images"] == 32 and report["fc"] is None
    first, last = report["ratio_spread"]
    assert first > 2 and last < first and 1 < report["rounds"] <= 10

    x = torch.randn(2, 3, 227, 227, generator=torch.Generator().manual_seed(5))
    trunk.eval()
    with torch.no_grad():
        old, new = before.activations(x, PARAMETER_LAYERS), trunk.activations(x, PARAMETER_LAYERS)
    factor = 1.0
    for name in PARAMETER_LAYERS:
        factor *= report["weight_scale"][name]
        active = old[name].abs() > 1e-3 * old[name].abs().max()
        assert active.sum() > 100, name
        ratio = (new[name][active] / old[name][active]).double()
        assert float(ratio.std() / ratio.mean()) < 2e-3, name  # one factor per layer
        assert float(ratio.mean()) == pytest.approx(factor, rel=2e-3), name

    # and a fresh random gradient now sees nearly one gradient / weight ratio in every layer
    batch = load_batches(image_folder, 2, 16, 227, MEAN, STD, seed=0)[0][0]
    out = trunk(batch)
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(9)))
    ratios = [float((getattr(trunk, n)[0].weight.grad.double().pow(2).mean()
                     / getattr(trunk, n)[0].weight.detach().double().pow(2).mean()).sqrt()) for n in PARAMETER_LAYERS]
    print(f"ratio spread before {first:.2f}, after (fresh gradient) {max(ratios) / min(ratios):.3f}")
    assert max(ratios) / min(ratios) < 1.2, ratios


def fc_preactivations(trunk, x: torch.Tensor) -> dict[str, np.ndarray]:
    """fc6 and fc7 before their ReLU, float64, from the weights and BatchNorm buffers (eval mode, no dropout)."""
    with torch.no_grad():
        h = trunk.activations(x, ("pool5",))["pool5"].flatten(1).double().numpy()
    out = {}
    for name in ("fc6", "fc7"):
        linear, bn = getattr(trunk, name)[0], getattr(trunk, name)[1]
        w, gamma, beta = (t.detach().double().numpy() for t in (linear.weight, bn.weight, bn.bias))
        scale = gamma / np.sqrt(bn.running_var.double().numpy() + bn.eps)
        out[name] = (h @ w.T - bn.running_mean.double().numpy()) * scale + beta
        h = np.maximum(out[name], 0)
    return out


def test_reinit_fc_keeps_the_convolutions_and_normalises_fc6_fc7_on_the_images(image_folder):
    trunk = trained_like_bn_trunk(1)
    loaded = {k: v.clone() for k, v in trunk.state_dict().items()}
    report = initialize_trunk(trunk, "reinit-fc", image_folder, MEAN, STD, images=32, seed=3)
    assert set(report["fc"]) == {"fc6", "fc7"} and not report["folded_batchnorm"] and report["ratio_spread"] is None
    state = trunk.state_dict()
    assert all(torch.equal(state[k], v) for k, v in loaded.items() if k.startswith(CONV))
    assert not torch.equal(state["fc6.0.weight"], loaded["fc6.0.weight"])

    images = torch.cat(load_batches(image_folder, 2, 16, 227, MEAN, STD, seed=3)[0])  # the images it measured
    trunk.eval()
    for name, z in fc_preactivations(trunk, images).items():
        np.testing.assert_allclose(z.mean(0), 0.1, atol=2e-3, err_msg=name)
        np.testing.assert_allclose(z.std(0), 1.0, atol=2e-3, err_msg=name)
    # seeded: the same draw again
    again = trained_like_bn_trunk(1)
    initialize_trunk(again, "reinit-fc", image_folder, MEAN, STD, images=32, seed=3)
    assert torch.equal(again.fc7[0].weight, trunk.fc7[0].weight)


def test_as_is_changes_nothing_and_bad_combinations_name_the_checkpoint(image_folder):
    trunk = trained_like_bn_trunk()
    state = {k: v.clone() for k, v in trunk.state_dict().items()}
    assert initialize_trunk(trunk, "as-is", image_folder, MEAN, STD) is None
    assert all(torch.equal(trunk.state_dict()[k], v) for k, v in state.items())
    with pytest.raises(ValueError, match="x.pt: --init rescale folds .* --bn-mode eval"):
        check_init("rescale", "caffenet_bn", "train", "x.pt")
    check_init("rescale", "caffenet_bn", "eval", "x.pt")
    check_init("rescale", "caffenet", "train", "x.pt")  # no BatchNorm to fold
    check_init("reinit-fc", "caffenet_bn", "train", "x.pt")
    with pytest.raises(ValueError, match="tv.pt: --init reinit-fc is defined on CaffeNet"):
        check_init("reinit-fc", "alexnet", "eval", "tv.pt")
    with pytest.raises(ValueError, match="unknown --init 'magic'"):
        check_init("magic", "caffenet", "eval", "x.pt")
