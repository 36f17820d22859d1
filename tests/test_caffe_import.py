"""Caffe import (baselines/caffe_import.py on bench/caffe_proto.py). The .caffemodel and .binaryproto files are
written in Caffe's wire format by our own tiny protobuf encoder (tests/caffe_files.py), independent of
bench/caffe_proto.py, so a wrong field number or type in the schema fails these tests."""
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from caffe_files import (
    CAFFENET,
    DEPLOY_HEAD,
    SHAPES,
    V1_TRAIN_VAL_HEAD,
    V1_TRAIN_VAL_TAIL,
    binaryproto_mean,
    caffemodel,
    caffenet_weights,
    prototxt,
)

from cpfs_bench.baselines.caffe_import import BVLC_ILSVRC12_MEAN_BGR, import_caffe, input_convention, net_layers
from cpfs_bench.bench import caffe_proto
from cpfs_bench.bench.caffe_proto import CaffeImportError, read_prototxt
from cpfs_bench.bench.checkpoint import load_checkpoint
from cpfs_bench.evaluate.backbone import load_trunk
from cpfs_bench.pretrain.alexnet import LAYERS, CaffeNet


@pytest.fixture(scope="module")
def weights():
    return caffenet_weights(0)


def reference_activations(weights, x: torch.Tensor, mean_bgr, scale: float) -> dict[str, torch.Tensor]:
    """The Caffe model's activations: our trunk's layers with the Caffe weights as they are (conv1 reads BGR),
    fed Caffe's input (255 x_bgr - mean_bgr) * scale."""
    net = CaffeNet(batch_norm=False).eval()
    net.load_state_dict({f"{step}.0.{part}": torch.from_numpy(array) for step, (w, b) in weights.items()
                         if step != "fc8" for part, array in (("weight", w), ("bias", b))})
    caffe_input = (255.0 * x[:, [2, 1, 0]] - torch.tensor(mean_bgr, dtype=torch.float32)[:, None, None]) * scale
    with torch.no_grad():
        return net.activations(caffe_input, LAYERS)


def imported_activations(path, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict]:
    """What an evaluation computes from the imported checkpoint: RGB [0, 1] normalised by info mean/std."""
    trunk, info = load_trunk(path)
    mean, std = (torch.tensor(info[k], dtype=torch.float32)[:, None, None] for k in ("mean", "std"))
    with torch.no_grad():
        return trunk.activations((x - mean) / std, LAYERS), info


def images() -> torch.Tensor:
    """Two RGB images in [0, 1] whose channels differ (a BGR/RGB mix-up changes the activations)."""
    g = torch.Generator().manual_seed(1)
    ramp = torch.linspace(0, 1, 227)
    base = torch.stack([ramp[None, :].expand(227, 227), ramp[:, None].expand(227, 227), 0.5 * torch.ones(227, 227)])
    return (0.6 * base[None] + 0.4 * torch.rand(2, 3, 227, 227, generator=g)).clamp(0, 1)


def assert_same_activations(got: dict, want: dict) -> None:
    for name in LAYERS:
        scale = want[name].abs().max().item()
        assert scale > 0, name
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-4 * scale,
                                   msg=lambda m, name=name: f"{name}: {m}")


# ---- the full-size imports --------------------------------------------------------------------------------


def test_import_modern_layer_format_with_explicit_mean_and_scale(tmp_path, weights):
    """`layer` fields, Input layer, blobs with shape.dim, conv1 and every bias as unpacked floats; mean values and
    a non-1 scale given at import; layer names that are not conv1..fc7 (matched by position, copied by name)."""
    names = {"conv1": "conv1_caffe", "conv3": "c3", "fc6": "fc6-full", "fc7": "fc7_x", "fc8": "fc8_imagenet"}
    (tmp_path / "deploy.prototxt").write_text(prototxt(names))
    unpacked = ("conv1.weight",) + tuple(f"{step}.bias" for step in SHAPES)
    (tmp_path / "model.caffemodel").write_bytes(caffemodel(weights, names, unpacked=unpacked))
    mean_bgr, scale = [90.0, 120.0, 150.0], 0.017
    out = import_caffe(tmp_path / "deploy.prototxt", tmp_path / "model.caffemodel", tmp_path / "caffenet.pt",
                       mean_values=mean_bgr, scale=scale)

    x = images()
    got, info = imported_activations(out, x)
    assert_same_activations(got, reference_activations(weights, x, mean_bgr, scale))
    assert info["arch"] == "caffenet" and info["loss"] == "caffe-import"
    np.testing.assert_allclose(info["mean"], [150 / 255, 120 / 255, 90 / 255])
    np.testing.assert_allclose(info["std"], [1 / (255 * scale)] * 3)
    ckpt = load_checkpoint(out)
    convention = ckpt["extra"]["input_convention"]
    assert convention["mean_values_bgr"] == mean_bgr and convention["scale"] == pytest.approx(scale)
    assert convention["channel_order"] == "BGR" and "flipped" in convention["conv1_channels"]
    assert ckpt["config"]["layers"]["conv1"] == "conv1_caffe" and ckpt["config"]["layers"]["fc6"] == "fc6-full"
    assert ckpt["config"]["ignored_layers"] == ["fc8_imagenet", "prob"]
    assert len(ckpt["config"]["caffemodel_sha256"]) == 64


def test_import_v1_layers_format_with_mean_file(tmp_path, weights):
    """V1 `layers` (type enums), legacy num/channels/height/width blobs (conv2's weights unpacked), a train_val
    prototxt whose Data layer names a mean_file next to it (averaged per channel), scale 1 by default."""
    names = {step: f"{step[:-1]}_{step[-1]}" for step in SHAPES}  # conv_1 ... fc_8
    (tmp_path / "train_val.prototxt").write_text(prototxt(names, v1=True, head=V1_TRAIN_VAL_HEAD,
                                                          tail=V1_TRAIN_VAL_TAIL))
    (tmp_path / "weights.caffemodel").write_bytes(caffemodel(weights, names, v1=True, unpacked=("conv2.weight",)))
    rng = np.random.default_rng(2)
    mean_image = (np.array([104.0, 117.0, 123.0], np.float32)[:, None, None]
                  + 20 * rng.standard_normal((3, 256, 256), dtype=np.float32))
    (tmp_path / "imagenet_mean.binaryproto").write_bytes(binaryproto_mean(mean_image))
    out = import_caffe(tmp_path / "train_val.prototxt", tmp_path / "weights.caffemodel", tmp_path / "v1.pt")

    mean_bgr = mean_image.reshape(3, -1).astype(np.float64).mean(axis=1)
    x = images()
    got, info = imported_activations(out, x)
    assert_same_activations(got, reference_activations(weights, x, mean_bgr.tolist(), 1.0))
    np.testing.assert_allclose(info["mean"], mean_bgr[::-1] / 255, rtol=1e-6)
    np.testing.assert_allclose(info["std"], [1 / 255] * 3)
    convention = load_checkpoint(out)["extra"]["input_convention"]
    assert convention["mean_source"].startswith("mean_file") and "averaged per channel" in convention["mean_source"]
    assert load_checkpoint(out)["config"]["ignored_layers"] == ["fc_8", "accuracy", "loss"]


# ---- refusals -----------------------------------------------------------------------------------------------


@pytest.fixture
def partial_model(tmp_path, weights):
    """deploy.prototxt (our order) and a caffemodel holding only conv1 and conv2 (small and quick)."""
    (tmp_path / "deploy.prototxt").write_text(prototxt())
    (tmp_path / "partial.caffemodel").write_bytes(
        caffemodel({step: weights[step] for step in ("conv1", "conv2")}))
    return tmp_path / "deploy.prototxt", tmp_path / "partial.caffemodel"


def _refused(prototxt_path, caffemodel_path, out, pattern: str, **kwargs) -> str:
    with pytest.raises(CaffeImportError, match=pattern) as e:
        import_caffe(prototxt_path, caffemodel_path, out, **kwargs)
    assert not Path(out).exists()
    return str(e.value)


def test_refuses_an_unsupported_layer_naming_it(partial_model, tmp_path):
    spec = CAFFENET[:1] + [("bn1", "BatchNorm", "conv1", "")] + CAFFENET[1:]
    (tmp_path / "bn.prototxt").write_text(prototxt(spec=spec))
    _refused(tmp_path / "bn.prototxt", partial_model[1], tmp_path / "x.pt", r"^bn1: a BatchNorm layer")


def test_refuses_a_wrong_kernel_size_naming_the_layer(partial_model, tmp_path):
    (tmp_path / "k7.prototxt").write_text(prototxt().replace("kernel_size: 11", "kernel_size: 7"))
    _refused(tmp_path / "k7.prototxt", partial_model[1], tmp_path / "x.pt",
             r"^conv1: kernel_size 7, our caffenet trunk has 11$")


def test_refuses_bvlc_alexnet_order(partial_model, tmp_path):
    """bvlc_alexnet normalises before pooling (conv1 relu1 norm1 pool1); our trunk pools first."""
    order = {step: (kind, bottom, settings) for step, kind, bottom, settings in CAFFENET}
    spec = CAFFENET[:2] + [("norm1", "LRN", "conv1", order["norm1"][2]), ("pool1", "Pooling", "norm1",
                                                                         order["pool1"][2])]
    spec += [("conv2", "Convolution", "pool1", order["conv2"][2])] + CAFFENET[5:]
    (tmp_path / "alexnet.prototxt").write_text(prototxt(spec=spec))
    message = _refused(tmp_path / "alexnet.prototxt", partial_model[1], tmp_path / "x.pt", r"^norm1: LRN before")
    assert "differs from our caffenet trunk" in message


def test_refuses_missing_weights_naming_the_layer(partial_model, tmp_path):
    message = _refused(*partial_model, tmp_path / "x.pt", r"^conv3: no weights in .*partial\.caffemodel")
    assert "['conv1', 'conv2']" in message


def test_refuses_a_file_that_is_not_a_caffemodel(partial_model, tmp_path):
    prototxt_path = partial_model[0]
    # a text file (here the prototxt itself) and a PyTorch checkpoint, both easy mix-ups
    torch.save({"w": torch.zeros(3)}, tmp_path / "model.pt")
    for wrong in (prototxt_path, tmp_path / "model.pt"):
        message = _refused(prototxt_path, wrong, tmp_path / "x.pt", re.escape(str(wrong)) + ": not a Caffe caffemodel")
        assert message.startswith(str(wrong))
    _refused(prototxt_path, tmp_path / "absent.caffemodel", tmp_path / "x.pt", "absent.caffemodel: no such caffemodel")


def test_refuses_models_that_do_not_take_colour_images(partial_model, tmp_path):
    text = DEPLOY_HEAD.replace("dim: 3", "dim: 1")  # e.g. a colorization net reading the L of Lab
    (tmp_path / "gray.prototxt").write_text(prototxt(head=text))
    message = _refused(tmp_path / "gray.prototxt", partial_model[1], tmp_path / "x.pt", "1-channel input")
    assert "Lab" in message


def test_refuses_a_blob_of_the_wrong_shape(partial_model, tmp_path, weights):
    w, b = weights["conv2"]
    wrong = {"conv1": weights["conv1"], "conv2": (w[:, :24], b)}  # as if conv2 had no groups... of half the width
    (tmp_path / "wrong.caffemodel").write_bytes(caffemodel(wrong))
    _refused(partial_model[0], tmp_path / "wrong.caffemodel", tmp_path / "x.pt",
             r"^conv2: weight blob has shape \(256, 24, 5, 5\), our caffenet trunk needs \(256, 48, 5, 5\)")


def test_missing_mean_file_asks_for_one(partial_model, tmp_path):
    (tmp_path / "tv.prototxt").write_text(prototxt(head=V1_TRAIN_VAL_HEAD.replace("layers {", "layer {").replace(
        "type: DATA", 'type: "Data"').replace("include: { phase: TEST }", "")))
    _refused(tmp_path / "tv.prototxt", partial_model[1], tmp_path / "x.pt", "--mean-file PATH or --mean-values")


# ---- schema and conventions ---------------------------------------------------------------------------------


def test_assumed_mean_when_nothing_names_one(tmp_path):
    (tmp_path / "deploy.prototxt").write_text(prototxt())
    layers = net_layers(read_prototxt(tmp_path / "deploy.prototxt"), tmp_path / "deploy.prototxt")
    convention = input_convention(layers, tmp_path / "deploy.prototxt")
    assert convention["mean_values_bgr"] == list(BVLC_ILSVRC12_MEAN_BGR) and convention["scale"] == 1.0
    assert convention["mean_source"].startswith("assumed")
    rgb = input_convention(layers, tmp_path / "deploy.prototxt", mean_values=[1, 2, 3], channel_order="RGB")
    assert rgb["mean_values_bgr"] == [3.0, 2.0, 1.0] and rgb["conv1_channels"].startswith("unchanged")


def test_prototxt_syntax_error_names_file_and_line(tmp_path):
    (tmp_path / "bad.prototxt").write_text('name: "x"\nlayer {\n  name: "conv1"\n  type: "Convolution"\n'
                                           "  convolution_param { num_output: -96 }\n}\n")
    with pytest.raises(CaffeImportError, match=r"bad\.prototxt: not a valid Caffe prototxt, line 5"):
        read_prototxt(tmp_path / "bad.prototxt")


def test_schema_defaults_and_the_readable_subset():
    """proto2 defaults as in caffe.proto, and bench/caffe_subset.proto (documentation) is the schema in use."""
    assert caffe_proto.PoolingParameter().pool == caffe_proto.PoolingParameter.PoolMethod.Value("MAX")
    assert caffe_proto.PoolingParameter().stride == 1 and caffe_proto.ConvolutionParameter().group == 1
    lrn = caffe_proto.LRNParameter()
    assert (lrn.local_size, lrn.alpha, lrn.beta, lrn.k) == (5, 1.0, 0.75, 1.0)
    assert caffe_proto.TransformationParameter().scale == 1.0 and caffe_proto.ConvolutionParameter().bias_term
    doc = Path(caffe_proto.__file__).with_name("caffe_subset.proto").read_text()
    assert "\n".join(line for line in doc.splitlines() if not line.startswith("//")) + "\n" == caffe_proto.proto_text()
